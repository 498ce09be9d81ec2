package proxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestParamsInSyncFastPath: once a backend's values were found in sync
// with a client's, the check answers from memory - for that client and
// for any other whose wanted values have the same content - without
// walking the maps or allocating, until either side changes.
func TestParamsInSyncFastPath(t *testing.T) {
	defaults := map[string]paramValue{"timezone": {val: "UTC"}, "application_name": {val: ""}}
	have := &paramSet{vals: maps.Clone(defaults)}
	want1 := newParamSet()
	want1.set("application_name", paramValue{val: "pgbench"})
	have.set("application_name", paramValue{val: "pgbench"})
	if !paramsInSync(want1, have, defaults) {
		t.Fatal("in sync, reported not")
	}
	if n := testing.AllocsPerRun(100, func() { paramsInSync(want1, have, defaults) }); n != 0 {
		t.Fatalf("paramsInSync of an unchanged pair: %v allocations, want 0", n)
	}

	// Proof that the walk is skipped: a map changed behind the set's back
	// (which no code does: see TestParamSetWritesGoThroughMethods) goes
	// unnoticed, for this client and for another with the same content.
	have.vals["search_path"] = paramValue{val: "x", raw: true}
	want2 := newParamSet()
	want2.set("application_name", paramValue{val: "pgbench"})
	if !paramsInSync(want1, have, defaults) || !paramsInSync(want2, have, defaults) {
		t.Fatal("an unchanged pair (or an equal client) was not answered from memory")
	}
	delete(have.vals, "search_path")

	// Any change through the set is seen, on either side.
	want2.set("search_path", paramValue{val: "x", raw: true})
	if paramsInSync(want2, have, defaults) {
		t.Fatal("a client that wants more was found in sync")
	}
	if !paramsInSync(want1, have, defaults) {
		t.Fatal("the first client is still in sync")
	}
	have.set("timezone", paramValue{val: "Europe/Paris"})
	if paramsInSync(want1, have, defaults) {
		t.Fatal("a backend value changed, yet found in sync")
	}
	have.set("timezone", paramValue{val: "UTC"})
	if !paramsInSync(want1, have, defaults) {
		t.Fatal("changed back, yet not in sync")
	}
	have.del("application_name")
	if paramsInSync(want1, have, defaults) {
		t.Fatal("a deleted backend value went unnoticed")
	}
	have.replace(map[string]paramValue{"timezone": {val: "UTC"}, "application_name": {val: "pgbench"}})
	if !paramsInSync(want1, have, defaults) {
		t.Fatal("replaced with matching values, yet not in sync")
	}
	have.resetTo(defaults)
	if paramsInSync(want1, have, defaults) {
		t.Fatal("reset to the defaults, yet found in sync")
	}
	want1.del("application_name")
	if !paramsInSync(want1, have, defaults) {
		t.Fatal("a client that wants nothing special on a backend at its defaults: not in sync")
	}
}

// TestParamSetContentKey: two sets have the same key exactly when they
// have the same content.
func TestParamSetContentKey(t *testing.T) {
	set := func(kv ...any) *paramSet {
		p := newParamSet()
		for i := 0; i < len(kv); i += 2 {
			p.set(kv[i].(string), kv[i+1].(paramValue))
		}
		return p
	}
	pv := func(v string) paramValue { return paramValue{val: v} }
	same := [][2]*paramSet{
		{set(), set()},
		{set("a", pv("1"), "b", pv("2")), set("b", pv("2"), "a", pv("1"))},
	}
	for i, p := range same {
		if p[0].contentKey() != p[1].contentKey() {
			t.Errorf("same content %d: different keys", i)
		}
	}
	differ := [][2]*paramSet{
		{set(), set("a", pv(""))},
		{set("a", pv("1")), set("a", paramValue{val: "1", raw: true})},
		{set("ab", pv("c")), set("a", pv("bc"))},
		{set("a", pv("1"), "b", pv("2")), set("a", pv("1b"), "", pv("2"))},
		{set("a", pv("1")), set("a", pv("2"))},
	}
	for i, p := range differ {
		if p[0].contentKey() == p[1].contentKey() {
			t.Errorf("different content %d: same key", i)
		}
	}
	p := set("a", pv("1"))
	k, ver := p.contentKey(), p.ver
	p.set("a", pv("1"))
	if p.ver != ver {
		t.Error("setting the value a set already has counted as a change")
	}
	p.del("missing")
	if p.ver != ver {
		t.Error("deleting a missing key counted as a change")
	}
	p.set("a", pv("2"))
	p.set("a", pv("1"))
	if p.ver == ver || p.contentKey() != k {
		t.Errorf("changed and changed back: ver %d (was %d), key equal %v", p.ver, ver, p.contentKey() == k)
	}
}

// TestParamWritersInvalidateInSync drives every writer of the parameter
// sets - a SET, RESET and RESET ALL the client runs, a ParameterStatus
// from the server, the proxy's own SETs at acquire (syncTo), DISCARD ALL /
// RESET ALL at release, a SET in a transaction that is rolled back and
// the session-state check that then tells the truth - and checks after
// each that the remembered answers agree with a walk of the maps (and
// with the expected pairs), for every pair of three clients and three
// backends. c3 and b3 never change: each step moves c1/b1 or c2/b2 away
// from a pair that was in sync with them, so a writer that did not count
// as a change would show as a stale "in sync".
func TestParamWritersInvalidateInSync(t *testing.T) {
	c1, b1 := testRelay(ModeTransaction, 10)
	c2, b2 := testRelay(ModeTransaction, 10)
	c3, b3 := testRelay(ModeTransaction, 10)
	cs := map[string]*clientConn{"c1": c1, "c2": c2, "c3": c3}
	bs := map[string]*backend{"b1": b1, "b2": b2, "b3": b3}
	check := func(step string, inSync []string) {
		t.Helper()
		for cn, c := range cs {
			for bn, b := range bs {
				got := paramsInSync(c.params.want, b.params, b.defaults)
				walk := paramMapsInSync(c.params.want.vals, b.params.vals, b.defaults)
				if want := slices.Contains(inSync, cn+bn); got != walk || got != want {
					t.Fatalf("%s: %s on %s: paramsInSync %v, map walk %v, want %v (want %v have %v)",
						step, cn, bn, got, walk, want, c.params.want.vals, b.params.vals)
				}
			}
		}
	}
	query := func(c *clientConn, b *backend, sql string, reply ...pgproto3.Message) {
		t.Helper()
		pumpClient(t, c, b, enc(&pgproto3.Query{String: sql}), 0)
		pumpServer(t, c, b, enc(reply...), 0)
	}
	rfq := func(s byte) pgproto3.Message { return &pgproto3.ReadyForQuery{TxStatus: s} }
	set := &pgproto3.CommandComplete{CommandTag: []byte("SET")}
	reset := &pgproto3.CommandComplete{CommandTag: []byte("RESET")}
	var (
		all = []string{"c1b1", "c1b2", "c1b3", "c2b1", "c2b2", "c2b3", "c3b1", "c3b2", "c3b3"}
		// c1 and b1 agree on something the others do not have.
		c1b1Apart = []string{"c1b1", "c2b2", "c2b3", "c3b2", "c3b3"}
		// ... and so do c2 and b2.
		bothApart = []string{"c1b1", "c2b2", "c3b3"}
	)

	check("start", all)
	query(c1, b1, "SET search_path TO app", set, rfq('I'))
	check("SET", c1b1Apart)
	query(c1, b1, "RESET search_path", reset, rfq('I'))
	check("RESET", all)
	query(c1, b1, "SET search_path TO app", set, rfq('I'))
	check("SET again", c1b1Apart)
	query(c1, b1, "RESET ALL", reset, rfq('I'))
	check("RESET ALL", all)

	// A reported parameter follows ParameterStatus.
	query(c1, b1, "SET timezone TO 'Europe/Paris'",
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Europe/Paris"}, set, rfq('I'))
	check("ParameterStatus", c1b1Apart)

	// At release, DISCARD ALL puts b1 back to its defaults.
	b1.resetToDefaults(true)
	check("reset at release", []string{"c2b1", "c2b2", "c2b3", "c3b1", "c3b2", "c3b3"})

	// At acquire, the proxy's SETs bring b1 to c1's values.
	next := maps.Clone(b1.params.vals)
	if sql := paramSyncSQL(c1.params.want, next, b1.defaults); sql == "" {
		t.Fatal("no sync SQL for a backend out of sync")
	}
	(&request{kind: reqQuery, syncTo: next}).applySucceeded(b1, &c1.params)
	check("sync at acquire", c1b1Apart)

	// c2 runs a SET in a transaction and rolls it back: the proxy follows
	// the SET, then the state check tells it what the server has.
	query(c2, b2, "BEGIN", &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, rfq('T'))
	query(c2, b2, "SET search_path TO x", set, rfq('T'))
	check("SET in a transaction", bothApart)
	query(c2, b2, "ROLLBACK", &pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")}, rfq('I'))
	c2.params.trackCheckedSettings(b2, map[string]string{})
	check("rolled back", c1b1Apart)
	c2.params.trackCheckedSettings(b2, map[string]string{"search_path": "y"})
	check("state check found a setting", bothApart)
	c2.params.trackCheckedSettings(b2, map[string]string{})
	check("state check found it gone", c1b1Apart)
}

// TestParamSetWritesGoThroughMethods: no code outside paramSet's own
// methods writes a paramSet's map or version directly (an assignment to
// x.vals[k], x.vals, x.ver, or delete / clear / maps.Copy on x.vals), so
// every change bumps ver and paramsInSync's memory stays exact.
func TestParamSetWritesGoThroughMethods(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if ok && fd.Recv != nil && len(fd.Recv.List) == 1 {
				if st, ok := fd.Recv.List[0].Type.(*ast.StarExpr); ok {
					if id, ok := st.X.(*ast.Ident); ok && id.Name == "paramSet" {
						continue // the methods that write and bump ver
					}
				}
			}
			for _, bad := range paramSetWrites(d) {
				t.Errorf("%s: writes a paramSet directly; use set, del, replace or resetTo", fset.Position(bad))
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked %d files: not run in the proxy package directory?", checked)
	}
}

// paramSetWrites returns the positions in n that write a paramSet's vals
// or ver field.
func paramSetWrites(n ast.Node) []token.Pos {
	field := func(e ast.Expr) bool {
		if ix, ok := e.(*ast.IndexExpr); ok {
			e = ix.X
		}
		sel, ok := e.(*ast.SelectorExpr)
		return ok && (sel.Sel.Name == "vals" || sel.Sel.Name == "ver")
	}
	var bad []token.Pos
	ast.Inspect(n, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			for _, l := range n.Lhs {
				if field(l) {
					bad = append(bad, l.Pos())
				}
			}
		case *ast.IncDecStmt:
			if field(n.X) {
				bad = append(bad, n.X.Pos())
			}
		case *ast.CallExpr:
			name := ""
			switch f := n.Fun.(type) {
			case *ast.Ident:
				name = f.Name
			case *ast.SelectorExpr:
				if pkg, ok := f.X.(*ast.Ident); ok && pkg.Name == "maps" {
					name = "maps." + f.Sel.Name
				}
			}
			switch name {
			case "delete", "clear", "maps.Copy", "maps.DeleteFunc", "maps.Insert":
				if len(n.Args) > 0 && field(n.Args[0]) {
					bad = append(bad, n.Pos())
				}
			}
		}
		return true
	})
	return bad
}

// BenchmarkParamsInSync compares the acquire-time check answered from
// memory with the walk of the maps it replaces, for a pgbench-like client
// (application_name set at startup) on a backend that already has its
// values and PostgreSQL's settable reported parameters.
func BenchmarkParamsInSync(b *testing.B) {
	defaults := map[string]paramValue{
		"application_name": {val: ""}, "client_encoding": {val: "UTF8"}, "datestyle": {val: "ISO, MDY"},
		"default_transaction_read_only": {val: "off"}, "intervalstyle": {val: "postgres"},
		"standard_conforming_strings": {val: "on"}, "timezone": {val: "UTC"},
	}
	have := &paramSet{vals: maps.Clone(defaults)}
	have.set("application_name", paramValue{val: "pgbench"})
	want := newParamSet()
	want.set("application_name", paramValue{val: "pgbench"})
	want.set("client_encoding", paramValue{val: "UTF8"})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			if !paramMapsInSync(want.vals, have.vals, defaults) {
				b.Fatal("not in sync")
			}
		}
	})
	b.Run("remembered", func(b *testing.B) {
		for b.Loop() {
			if !paramsInSync(want, have, defaults) {
				b.Fatal("not in sync")
			}
		}
	})
}
