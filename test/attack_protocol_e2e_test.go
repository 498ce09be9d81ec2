package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A differential harness for the extended and simple protocol: a scripted
// sequence of frontend messages is sent by a raw client straight to
// PostgreSQL, then through the proxy in transaction mode on a pool of two
// (once as a plain-TCP client, whose requests the event loop relays, once
// over TLS, which the loop never serves), and every reply (message types,
// SQLSTATEs and messages, row values, ReadyForQuery statuses) must be the
// same. A second client interleaves its own traffic on the same backends
// between the steps: before the step on the backend the first client just
// released (the pool hands out the last released backend first), or
// holding a transaction open across the step so that the first client's
// next request runs on the other backend. Its own replies are compared
// with its direct twin's as well.

// apStep is one write of a script: the messages, sent in one write, and
// SQL an administrator runs directly before it (DDL between executions).
type apStep struct {
	admin string
	msgs  []pgproto3.FrontendMessage
	// ready, when not 0, is the number of ReadyForQuery the step is
	// answered with, where apExpectReady would count wrong (a Query the
	// server skips in a failed batch gets none).
	ready int
}

// apScript is a sequence of steps and the SQL that puts the database in
// its starting state, run directly before each of the script's runs.
type apScript struct {
	name  string
	setup string
	steps []apStep
}

// apRaw is a message given as its encoded bytes, for input pgproto3 would
// not encode (an unknown Describe subtype).
type apRaw []byte

func (r apRaw) Frontend()                         {}
func (r apRaw) Decode(src []byte) error           { return errors.New("apRaw: not decodable") }
func (r apRaw) Encode(dst []byte) ([]byte, error) { return append(dst, r...), nil }

// Shorthands for the messages scripts are made of.
func apParse(name, sql string, oids ...uint32) *pgproto3.Parse {
	return &pgproto3.Parse{Name: name, Query: sql, ParameterOIDs: oids}
}

func apBind(portal, stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}

func apExec(portal string, maxRows uint32) *pgproto3.Execute {
	return &pgproto3.Execute{Portal: portal, MaxRows: maxRows}
}

func apDescribe(kind byte, name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: kind, Name: name}
}

func apClose(kind byte, name string) *pgproto3.Close {
	return &pgproto3.Close{ObjectType: kind, Name: name}
}

func apQuery(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }

var (
	apSync  = &pgproto3.Sync{}
	apFlush = &pgproto3.Flush{}
)

// apMsgs builds a step without administrator SQL.
func apMsgs(msgs ...pgproto3.FrontendMessage) apStep { return apStep{msgs: msgs} }

// apExpectReady is the number of ReadyForQuery a step's messages are
// answered with, errors included: one per Sync, Query and FunctionCall.
func apExpectReady(msgs []pgproto3.FrontendMessage) (n int, tail bool) {
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query, *pgproto3.FunctionCall:
			n++
			tail = false
		default:
			tail = true
		}
	}
	return n, tail
}

// apString is a reply as comparable text: what a client can see, without
// what differs between two runs of the same script (a table's OID, the
// server's source file and line of an error).
func apString(m pgproto3.BackendMessage) string {
	switch m := m.(type) {
	case *pgproto3.ErrorResponse:
		// Not the hint: the proxy adds one to the errors it makes itself
		// (README, "Comparison with PgBouncer": SQLSTATE + message + hint).
		return fmt.Sprintf("Error %s %s %q detail=%q pos=%d", m.Severity, m.Code, m.Message, m.Detail, m.Position)
	case *pgproto3.NoticeResponse:
		return fmt.Sprintf("Notice %s %s %q detail=%q hint=%q", m.Severity, m.Code, m.Message, m.Detail, m.Hint)
	case *pgproto3.DataRow:
		var vals []string
		for _, v := range m.Values {
			if v == nil {
				vals = append(vals, "NULL")
			} else {
				vals = append(vals, fmt.Sprintf("%q", v))
			}
		}
		return "DataRow " + strings.Join(vals, ",")
	case *pgproto3.RowDescription:
		var fs []string
		for _, f := range m.Fields {
			fs = append(fs, fmt.Sprintf("%s:%d/%d/%d", f.Name, f.DataTypeOID, f.TypeModifier, f.Format))
		}
		return "RowDescription " + strings.Join(fs, ",")
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
	case *pgproto3.CommandComplete:
		return "CommandComplete " + string(m.CommandTag)
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus)
	case *pgproto3.ParameterStatus:
		return "ParameterStatus " + m.Name + "=" + m.Value
	case *pgproto3.FunctionCallResponse:
		return fmt.Sprintf("FunctionCallResponse %q", m.Result)
	default:
		return strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.")
	}
}

// apRead reads r's replies until ready ReadyForQuery have come, then (for
// a step that ends without Sync) tail more messages, or, when tail is -1,
// whatever comes until the connection is quiet for quiet. A closed
// connection or a missing reply ends the read with a marker.
func apRead(r *rawClient, ready, tail int, quiet time.Duration) (out []string) {
	defer r.conn.SetReadDeadline(time.Time{})
	recv := func(d time.Duration) (string, bool) {
		_ = r.conn.SetReadDeadline(time.Now().Add(d))
		m, err := r.fe.Receive()
		if err != nil {
			if isTimeout(err) {
				return "<no reply>", false
			}
			return "<connection closed>", false
		}
		return apString(m), true
	}
	for n := 0; n < ready; {
		s, ok := recv(10 * time.Second)
		out = append(out, s)
		if !ok {
			return out
		}
		if strings.HasPrefix(s, "ReadyForQuery") {
			n++
		}
	}
	if tail >= 0 {
		for range tail {
			s, ok := recv(10 * time.Second)
			out = append(out, s)
			if !ok {
				return out
			}
		}
		return out
	}
	for range 1000 {
		s, ok := recv(quiet)
		if !ok {
			if s != "<no reply>" {
				out = append(out, s)
			}
			return out
		}
		out = append(out, s)
	}
	return out
}

// apNoise is the interleaving client's traffic: the unnamed statement and
// a named one under the first client's names, parsed and left on the
// backend, and a setting of its own.
func apNoise(i int) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{
		apParse("s1", "SELECT 'noise s1'::text, $1::int", 23), apBind("", "s1", strconv.Itoa(i)), apExec("", 0), apClose('S', "s1"), apSync,
		apParse("S1", "SELECT 'noise S1'::text"), apParse("s2", "SELECT 'noise s2'::text"), apSync,
		apClose('S', "S1"), apClose('S', "s2"), apSync,
		apQuery("SET work_mem = '3MB'; SET application_name = 'noise'"),
		apParse("", "SELECT 'noise unnamed'::text, 42"), apBind("", ""), apExec("", 0), apSync,
		apParse("", "SELECT 'noise left over'::text, 43, 44"), apSync,
	}
}

// apRun is one run of a script: main runs its steps on its connection and
// noise, a second one on the same server or proxy, interleaves. It returns
// each step's replies, main's then noise's, and the tails it saw (for
// runs that read a given count).
type apRun struct {
	steps [][]string
	noise [][]string
	tails []int
}

func apRunScript(ctx context.Context, t *testing.T, sc apScript, dial func() *rawClient, tails []int) apRun {
	t.Helper()
	admin := txConnect(ctx, t, txDirectURL(), nil)
	defer txClosePgconn(admin)
	if sc.setup != "" {
		txMustExec(ctx, t, admin, sc.setup)
	}
	main, noise := dial(), dial()
	defer main.conn.Close()
	defer noise.conn.Close()
	var run apRun
	noiseStep := func(msgs ...pgproto3.FrontendMessage) {
		noise.send(t, msgs...)
		n, _ := apExpectReady(msgs)
		run.noise = append(run.noise, apRead(noise, n, 0, 0))
	}
	for i, st := range sc.steps {
		if st.admin != "" {
			txMustExec(ctx, t, admin, st.admin)
		}
		// Step by step the second client runs its traffic first (on the
		// backend the first client released last), holds a transaction
		// across the first client's step (which then runs on the other
		// backend), or does nothing.
		hold := false
		switch i % 3 {
		case 0:
			noiseStep(apNoise(i)...)
		case 1:
			noiseStep(apQuery("BEGIN; SELECT 'noise holds'"))
			hold = true
		}
		main.send(t, st.msgs...)
		n, tail := apExpectReady(st.msgs)
		if st.ready != 0 {
			n = st.ready
		}
		want := 0
		switch {
		case !tail:
		case tails == nil:
			want = -1
		default:
			want = tails[i]
		}
		got := apRead(main, n, want, 300*time.Millisecond)
		run.steps = append(run.steps, got)
		tailSeen := 0
		for j := len(got) - 1; j >= 0 && !strings.HasPrefix(got[j], "ReadyForQuery"); j-- {
			tailSeen++
		}
		run.tails = append(run.tails, tailSeen)
		if hold {
			noiseStep(apQuery("COMMIT"))
		}
		if len(got) > 0 && strings.HasPrefix(got[len(got)-1], "<") {
			break
		}
	}
	// Nothing may come after the last reply.
	if extra := apRead(main, 0, -1, 200*time.Millisecond); len(extra) > 0 {
		run.steps = append(run.steps, append([]string{"(after the script)"}, extra...))
	}
	noiseStep(apQuery("SHOW work_mem; SHOW application_name"))
	return run
}

// apCompare fails t with the first few steps whose replies differ.
func apCompare(t *testing.T, what string, got, want [][]string) bool {
	t.Helper()
	diffs := 0
	for i := range max(len(got), len(want)) {
		var g, w []string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if strings.Join(g, "\n") != strings.Join(w, "\n") {
			t.Errorf("%s: step %d differs:\n  through the proxy:\n    %s\n  directly:\n    %s",
				what, i, strings.Join(g, "\n    "), strings.Join(w, "\n    "))
			if diffs++; diffs == 3 {
				break
			}
		}
	}
	return diffs == 0
}

// apStartProxy starts a proxy in transaction mode on a pool of two that
// accepts plain and TLS clients, and returns how to dial it each way.
func apStartProxy(t *testing.T) (p *Proxy, plain, overTLS func() *rawClient) {
	t.Helper()
	s := newTLSSetup(t)
	p = startTLSProxy(t, s, "allow",
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "2"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
	plain = func() *rawClient { return dialRaw(t, txProxyURL(p)) }
	overTLS = func() *rawClient {
		r := dialRaw(t, tlsURL(p, map[string]string{"sslmode": "require"}))
		if _, ok := r.conn.(*tls.Conn); !ok {
			t.Fatalf("the TLS client's connection is %T, not TLS", r.conn)
		}
		return r
	}
	return p, plain, overTLS
}

// apCheck runs each script directly, then through p as a plain client and
// as a TLS client, and compares; afterwards both backends must serve a
// clean transaction.
func apCheck(t *testing.T, scripts ...apScript) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p, plain, overTLS := apStartProxy(t)
	for _, sc := range scripts {
		direct := apRunScript(ctx, t, sc, func() *rawClient { return dialRaw(t, txDirectURL()) }, nil)
		for _, via := range []struct {
			name string
			dial func() *rawClient
		}{{"event loop (plain TCP)", plain}, {"goroutine (TLS)", overTLS}} {
			got := apRunScript(ctx, t, sc, via.dial, direct.tails)
			what := sc.name + ", " + via.name
			apCompare(t, what, got.steps, direct.steps)
			apCompare(t, what+", the interleaving client", got.noise, direct.noise)
		}
		if t.Failed() {
			for i, s := range direct.steps {
				t.Logf("%s directly, step %d: %s", sc.name, i, strings.Join(s, " | "))
			}
		}
		lgCleanBackends(ctx, t, p, 2)
	}
	lgLogLoop(t, p)
}

func TestAttackProtocolDiffExtended(t *testing.T) {
	apCheck(t,
		apScript{name: "Flush without Sync, then Sync", steps: []apStep{
			apMsgs(apParse("s1", "SELECT $1::int + 1"), apDescribe('S', "s1"), apFlush),
			apMsgs(apBind("p1", "s1", "41"), apExec("p1", 0), apFlush),
			apMsgs(apSync),
			apMsgs(apBind("", "s1", "1"), apExec("", 0), apSync),
			apMsgs(apParse("", "SELECT 1/0"), apBind("", ""), apExec("", 0), apFlush),
			apMsgs(apBind("", "s1", "2"), apExec("", 0), apFlush),
			apMsgs(apSync),
			apMsgs(apBind("", "s1", "3"), apExec("", 0), apSync),
		}},
		apScript{name: "Describe and Close of what does not exist", steps: []apStep{
			apMsgs(apDescribe('S', "nope"), apSync),
			apMsgs(apDescribe('P', "nope"), apSync),
			apMsgs(apDescribe('S', ""), apSync),
			apMsgs(apDescribe('P', ""), apSync),
			apMsgs(apClose('S', "nope"), apSync),
			apMsgs(apClose('P', "nope"), apSync),
			apMsgs(apClose('S', ""), apClose('P', ""), apSync),
			apMsgs(apExec("nope", 0), apSync),
			apMsgs(apExec("", 0), apSync),
			apMsgs(apBind("", "nope"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 1"), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
		}},
		apScript{name: "Bind to a statement closed in the same batch", steps: []apStep{
			apMsgs(apParse("s2", "SELECT 2"), apClose('S', "s2"), apBind("", "s2"), apExec("", 0), apSync),
			apMsgs(apBind("", "s2"), apExec("", 0), apSync),
			apMsgs(apParse("s2", "SELECT 22"), apBind("", "s2"), apExec("", 0), apClose('S', "s2"), apSync),
			apMsgs(apParse("s2", "SELECT 222"), apSync),
			apMsgs(apBind("", "s2"), apExec("", 0), apSync),
			apMsgs(apClose('S', "s2"), apParse("s2", "SELECT 2222"), apBind("", "s2"), apExec("", 0), apSync),
		}},
		apScript{name: "Execute with a row limit, across transaction boundaries", steps: []apStep{
			apMsgs(apParse("g", "SELECT generate_series(1, 5)"), apBind("p1", "g"), apExec("p1", 2), apExec("p1", 2), apSync),
			apMsgs(apExec("p1", 2), apSync),
			apMsgs(apQuery("BEGIN")),
			apMsgs(apBind("p1", "g"), apExec("p1", 2), apSync),
			apMsgs(apExec("p1", 2), apSync),
			apMsgs(apExec("p1", 0), apSync),
			apMsgs(apExec("p1", 0), apSync),
			apMsgs(apBind("p2", "g"), apExec("p2", 1), apSync),
			apMsgs(apQuery("COMMIT")),
			apMsgs(apExec("p2", 1), apSync),
			apMsgs(apBind("p3", "g"), apExec("p3", 3), apFlush),
			apMsgs(apExec("p3", 3), apFlush),
			apMsgs(apSync),
			apMsgs(apExec("p3", 3), apSync),
		}},
		apScript{name: "the same name parsed twice", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 1"), apParse("s1", "SELECT 2"), apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 3"), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("", "SELECT 4"), apParse("", "SELECT 5"), apBind("", ""), apExec("", 0), apSync),
			apMsgs(apParse("S1", "SELECT 6"), apBind("", "S1"), apExec("", 0), apBind("", "s1"), apExec("", 0), apSync),
		}},
		apScript{name: "the unnamed statement across Syncs", steps: []apStep{
			apMsgs(apParse("", "SELECT 'main unnamed'::text, $1::int", 23), apSync),
			apMsgs(apBind("", "", "1"), apExec("", 0), apSync),
			apMsgs(apBind("", "", "2"), apExec("", 0), apSync),
			apMsgs(apDescribe('S', ""), apSync),
			apMsgs(apBind("", "", "3"), apExec("", 0), apSync),
			apMsgs(apQuery("SELECT 'simple query'")),
			apMsgs(apBind("", "", "4"), apExec("", 0), apSync),
			apMsgs(apParse("", "SELECT 'again'::text"), apSync),
			apMsgs(apClose('S', ""), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			apMsgs(apParse("", "SELECT 'once more'::text"), apBind("", ""), apSync),
			apMsgs(apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffErrorMidBatch: after an error the server skips
// every message up to Sync, Parse, Bind, Close and a simple Query alike;
// what it skipped changed nothing. A Close of a named statement, of the
// unnamed one, or of one the backend at hand does not hold, skipped so,
// leaves the statement usable directly, and must through the proxy.
func TestAttackProtocolDiffErrorMidBatch(t *testing.T) {
	apCheck(t,
		apScript{name: "an error in the middle of a batch", steps: []apStep{
			apMsgs(apParse("a", "SELECT 1"), apBind("", "a"), apExec("", 0),
				apParse("bad", "SELECT 1/0"), apBind("", "bad"), apExec("", 0),
				apParse("b", "SELECT 2"), apBind("", "b"), apExec("", 0), apDescribe('S', "a"), apClose('S', "a"), apSync),
			apMsgs(apBind("", "b"), apExec("", 0), apSync),
			apMsgs(apBind("", "bad"), apExec("", 0), apSync),
			apMsgs(apBind("", "a"), apExec("", 0), apSync),
			apMsgs(apParse("b", "SELECT 'b'"), apSync),
			apMsgs(apParse("c", "SELECT nosuchcolumn"), apParse("d", "SELECT 4"), apSync),
			apMsgs(apBind("", "d"), apExec("", 0), apSync),
			apMsgs(apQuery("BEGIN"), apParse("e", "SELECT 5"), apBind("", "e"), apExec("", 0), apBind("", "bad"), apExec("", 0), apSync),
			apMsgs(apBind("", "e"), apExec("", 0), apSync),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apBind("", "e"), apExec("", 0), apSync),
			// A Close the server skips leaves the statement: named, the
			// unnamed one, and one the backend at hand does not have.
			apMsgs(apParse("", "SELECT 'unnamed kept'::text"), apSync),
			apMsgs(apBind("", "bad"), apExec("", 0), apClose('S', ""), apClose('S', "e"), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apBind("", "e"), apExec("", 0), apSync),
			// A simple Query inside a failed batch is skipped too.
			{ready: 1, msgs: []pgproto3.FrontendMessage{apParse("", "SELECT nosuchcolumn"), apQuery("SELECT 'skipped'"), apSync}},
			apMsgs(apBind("", "e"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffDeallocate: DEALLOCATE and DISCARD ALL in the
// simple and the extended protocol, spelled as clients spell them, in
// and out of transactions, failing and succeeding.
func TestAttackProtocolDiffDeallocate(t *testing.T) {
	apCheck(t,
		apScript{name: "DEALLOCATE name", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 's1'::text"), apParse("S1", "SELECT 'S1'::text"), apSync),
			apMsgs(apQuery(`DEALLOCATE "S1"`)),
			apMsgs(apBind("", "S1"), apExec("", 0), apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("deallocate prepare S1")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 's1 again'::text"), apSync),
			apMsgs(apQuery("DEALLOCATE s1;")),
			apMsgs(apParse("s1", "SELECT 's1 third'::text"), apSync),
			apMsgs(apQuery("DEALLOCATE nosuch")),
		}},
		apScript{name: "DEALLOCATE of a statement whose table is gone", setup: "DROP TABLE IF EXISTS ap_dealloc; CREATE TABLE ap_dealloc (a int)", steps: []apStep{
			apMsgs(apParse("s3", "SELECT a FROM ap_dealloc"), apSync),
			apMsgs(apParse("s4", "SELECT a FROM ap_dealloc"), apSync),
			{admin: "DROP TABLE ap_dealloc", msgs: []pgproto3.FrontendMessage{apQuery("DEALLOCATE s3")}},
			apMsgs(apQuery("DEALLOCATE s4")),
			apMsgs(apParse("s3", "SELECT 's3 again'::text"), apBind("", "s3"), apExec("", 0), apSync),
		}},
		apScript{name: "DEALLOCATE that fails deallocates nothing", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 's1'::text"), apSync),
			apMsgs(apQuery("BEGIN")),
			apMsgs(apQuery("SELECT 1/0")),
			apMsgs(apQuery("DEALLOCATE s1")),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("BEGIN")),
			apMsgs(apQuery("DEALLOCATE s1")),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
		}},
		apScript{name: "DEALLOCATE ALL and DISCARD ALL", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 's1'::text"), apParse("s2", "SELECT 's2'::text"), apSync),
			apMsgs(apQuery("DEALLOCATE ALL")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 's1 new'::text"), apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("SET work_mem = '5MB'")),
			apMsgs(apQuery("BEGIN")),
			apMsgs(apQuery("DISCARD ALL")),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("DISCARD ALL")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apParse("s1", "SELECT 's1 after discard'::text"), apBind("", "s1"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffProbes: settings carried across backends, simple
// Queries of several statements (failing in the middle, with and without
// BEGIN/COMMIT inside), empty queries, parameter formats and counts (65535
// parameters, binary ones), and a statement whose result type changes
// under it, each compared with PostgreSQL on both relay paths with a
// second client on the same backends. They found nothing wrong; they
// guard the event loop and the goroutine relay against each other and
// against PostgreSQL where the tx_* tests check one path and pgx's view.
func TestAttackProtocolDiffProbes(t *testing.T) {
	many := make([]string, 0, 65535)
	var sb strings.Builder
	sb.WriteString("SELECT $1::int")
	for i := 1; i <= 65535; i++ {
		many = append(many, strconv.Itoa(i))
		if i > 1 {
			fmt.Fprintf(&sb, " + $%d::int", i)
		}
	}
	manyBind := apBind("", "many", many...)
	bin := &pgproto3.Bind{PreparedStatement: "bin", ParameterFormatCodes: []int16{1, 0},
		Parameters: [][]byte{{0, 0, 0, 7}, []byte("8")}, ResultFormatCodes: []int16{1}}
	apCheck(t,
		apScript{name: "settings across backends", steps: []apStep{
			apMsgs(apQuery("SET work_mem = '7MB'")),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("BEGIN; SET LOCAL work_mem = '9MB'; SHOW work_mem")),
			apMsgs(apQuery("SHOW work_mem; COMMIT")),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("BEGIN; SET work_mem = '11MB'; ROLLBACK")),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apParse("", "SET work_mem = '12MB'"), apBind("", ""), apExec("", 0), apSync),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("SET application_name = 'ap main'; SET statement_timeout = '17s'")),
			apMsgs(apQuery("SHOW application_name; SHOW statement_timeout")),
			apMsgs(apQuery("RESET work_mem")),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("RESET ALL")),
			apMsgs(apQuery("SHOW application_name; SHOW statement_timeout; SHOW work_mem")),
			apMsgs(apQuery("SELECT set_config('work_mem', '13MB', false)")),
			apMsgs(apQuery("SHOW work_mem")),
		}},
		apScript{name: "several statements in one Query, empty queries", steps: []apStep{
			apMsgs(apQuery("SELECT 1; SELECT 1/0; SELECT 3")),
			apMsgs(apQuery("BEGIN; SELECT 1; SELECT 1/0; COMMIT")),
			apMsgs(apQuery("SELECT 'in failed tx'")),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apQuery("SELECT 1; BEGIN; SELECT 2")),
			apMsgs(apQuery("SELECT 3; COMMIT; SELECT 1/0")),
			apMsgs(apQuery("COMMIT; BEGIN; SELECT 4")),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apQuery("")),
			apMsgs(apQuery(";")),
			apMsgs(apQuery(" -- nothing but a comment")),
			apMsgs(apQuery("SELECT 5;;")),
			apMsgs(apParse("", ""), apBind("", ""), apDescribe('P', ""), apExec("", 0), apSync),
			apMsgs(apParse("e", ""), apBind("", "e"), apExec("", 0), apSync),
			apMsgs(apSync, apSync, apFlush, apSync),
		}},
		apScript{name: "parameter formats and counts", steps: []apStep{
			apMsgs(apParse("bin", "SELECT $1::int4 + $2::int4", 23, 23), apSync),
			apMsgs(bin, apExec("", 0), apSync),
			apMsgs(apParse("many", sb.String()), apSync),
			apMsgs(manyBind, apExec("", 0), apSync),
			apMsgs(apBind("", "many", "1", "2"), apExec("", 0), apSync),
			apMsgs(&pgproto3.Bind{PreparedStatement: "bin", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 7}, {0, 0, 0, 1}}}, apExec("", 0), apSync),
			apMsgs(&pgproto3.Bind{PreparedStatement: "bin", ParameterFormatCodes: []int16{0, 0, 0}, Parameters: [][]byte{[]byte("1"), []byte("2")}}, apExec("", 0), apSync),
			apMsgs(apParse("", "SELECT $65536::int"), apSync),
		}},
		apScript{name: "result type changes under a prepared statement", setup: "DROP TABLE IF EXISTS ap_alter; CREATE TABLE ap_alter (a int); INSERT INTO ap_alter VALUES (1)", steps: []apStep{
			apMsgs(apParse("s1", "SELECT * FROM ap_alter"), apDescribe('S', "s1"), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			{admin: "ALTER TABLE ap_alter ADD COLUMN b text DEFAULT 'x'", msgs: []pgproto3.FrontendMessage{apBind("", "s1"), apExec("", 0), apSync}},
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apClose('S', "s1"), apParse("s1", "SELECT * FROM ap_alter"), apBind("", "s1"), apExec("", 0), apSync),
			{admin: "ALTER TABLE ap_alter ALTER COLUMN a TYPE bigint", msgs: []pgproto3.FrontendMessage{apBind("", "s1"), apExec("", 0), apSync}},
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffDeallocateAll: DEALLOCATE ALL and DISCARD ALL sent
// through the extended protocol (pgjdbc runs every statement so) or in a
// Query of several statements drop every statement of the session, as a
// single DEALLOCATE ALL Query does: the client's names are free again,
// and no backend keeps claiming statements the server no longer has.
func TestAttackProtocolDiffDeallocateAll(t *testing.T) {
	apCheck(t,
		apScript{name: "DEALLOCATE ALL and DISCARD ALL, extended and in several statements", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 's1'::text"), apSync),
			apMsgs(apParse("", "DEALLOCATE ALL"), apBind("", ""), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 's1 b'::text"), apSync),
			apMsgs(apQuery("SELECT 1; DEALLOCATE ALL")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("s1", "SELECT 's1 c'::text"), apSync),
			apMsgs(apQuery("SET work_mem = '6MB'")),
			apMsgs(apParse("", "DISCARD ALL"), apBind("", ""), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apQuery("SHOW work_mem")),
			apMsgs(apQuery("DEALLOCATE s1")),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffHostileSubtypes: a Describe or Close with a subtype
// PostgreSQL does not know gets its 08P01, and the fast-path function
// call works, on both relay paths.
func TestAttackProtocolDiffHostileSubtypes(t *testing.T) {
	apCheck(t,
		apScript{name: "hostile subtypes and the fast path", steps: []apStep{
			apMsgs(apRaw{'D', 0, 0, 0, 6, 'X', 0}, apSync),
			apMsgs(apRaw{'C', 0, 0, 0, 6, 'X', 0}, apSync),
			apMsgs(apParse("s1", "SELECT 1"), apSync),
			apMsgs(apRaw{'C', 0, 0, 0, 7, 'X', 's', '1'}, apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("40"), []byte("2")}, ResultFormatCode: 0}),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolSkippedCloseThenReprepare: a Close of s1 the server
// skips (an error earlier in its batch) and, pipelined behind it in the
// same write, a new Parse of s1. Directly the Parse fails (42P05: s1 still
// exists) and s1 keeps its old text. Through the proxy the Parse was
// built before the error came back, so it is prepared under a new server
// name and answered ParseComplete; the skipped Close's undo then gave s1
// its old statement back, and the client's next Bind of s1 ran the
// statement it had replaced: a silent wrong result. Whatever the Parse was
// answered, what a Bind of s1 runs must be what the client was told s1 is:
// "2" after a ParseComplete, "1" after a 42P05 (as directly).
func TestAttackProtocolSkippedCloseThenReprepare(t *testing.T) {
	_, plain, overTLS := apStartProxy(t)
	direct := func() *rawClient { return dialRaw(t, txDirectURL()) }
	for _, path := range []struct {
		name string
		dial func() *rawClient
	}{{"direct", direct}, {"event loop", plain}, {"TLS", overTLS}} {
		c := path.dial()
		c.send(t, apParse("s1", "SELECT 1"), apSync)
		if got := apRead(c, 1, 0, 0); len(got) != 2 || got[0] != "ParseComplete" {
			t.Fatalf("%s: Parse s1: %q", path.name, got)
		}
		c.send(t, apParse("", "SELEC 1"), apClose('S', "s1"), apSync, apParse("s1", "SELECT 2"), apSync)
		replies := apRead(c, 2, 0, 0)
		reparsed := slices.Contains(replies, "ParseComplete")
		c.send(t, apBind("", "s1"), apExec("", 0), apSync)
		ran := apRead(c, 1, 0, 0)
		want := `DataRow "1"`
		if reparsed {
			want = `DataRow "2"`
		}
		if !slices.Contains(ran, want) {
			t.Errorf("%s: the batch got %q (re-prepared: %v), then Bind s1 ran %q; want %s", path.name, replies, reparsed, ran, want)
		}
		c.conn.Close()
	}
}

// TestAttackProtocolDiffDeallocateAllPipelined: DEALLOCATE ALL or DISCARD
// ALL drops the statements prepared before it in the stream, never those
// a client prepares behind it in the same write, before its reply came
// back: directly a Parse pipelined behind a DEALLOCATE ALL makes a
// statement the next Bind runs. A Close behind it that the server skips
// (an error earlier in its batch) must not bring a dropped statement back
// either. A Parse behind it of a name it frees succeeds, and a DEALLOCATE
// behind it of a statement it dropped fails naming the client's statement:
// the proxy holds either until everything ahead is answered.
func TestAttackProtocolDiffDeallocateAllPipelined(t *testing.T) {
	apCheck(t,
		apScript{name: "Parse pipelined behind DEALLOCATE ALL and DISCARD ALL", steps: []apStep{
			apMsgs(apParse("s1", "SELECT 's1'::text"), apSync),
			apMsgs(apQuery("DEALLOCATE ALL"), apParse("s2", "SELECT 's2'::text"), apSync),
			apMsgs(apBind("", "s2"), apExec("", 0), apSync),
			apMsgs(apBind("", "s1"), apExec("", 0), apSync),
			apMsgs(apParse("", "DEALLOCATE ALL"), apBind("", ""), apExec("", 0),
				apParse("s3", "SELECT 's3'::text"), apBind("", "s3"), apExec("", 0), apSync),
			apMsgs(apBind("", "s3"), apExec("", 0), apSync),
			apMsgs(apBind("", "s2"), apExec("", 0), apSync),
			apMsgs(apQuery("DISCARD ALL"), apParse("s4", "SELECT 's4'::text"), apSync),
			apMsgs(apBind("", "s4"), apExec("", 0), apSync),
			apMsgs(apBind("", "s3"), apExec("", 0), apSync),
			apMsgs(apQuery("SELECT 1; DEALLOCATE ALL"), apParse("s5", "SELECT 's5'::text"), apBind("", "s5"), apExec("", 0), apSync,
				apParse("s6", "SELECT 's6'::text"), apSync),
			apMsgs(apBind("", "s5"), apExec("", 0), apSync),
			apMsgs(apBind("", "s6"), apExec("", 0), apSync),
			apMsgs(apBind("", "s4"), apExec("", 0), apSync),
			// A skipped Close of a statement the DEALLOCATE ALL dropped.
			apMsgs(apQuery("DEALLOCATE ALL"), apParse("", "SELEC 1"), apClose('S', "s5"), apSync),
			apMsgs(apBind("", "s5"), apExec("", 0), apSync),
			apMsgs(apBind("", "s6"), apExec("", 0), apSync),
			// Parsed, closed and parsed again behind it.
			apMsgs(apQuery("DEALLOCATE ALL"), apParse("s7", "SELECT 's7 a'::text"), apClose('S', "s7"),
				apParse("s7", "SELECT 's7 b'::text"), apSync),
			apMsgs(apBind("", "s7"), apExec("", 0), apSync),
			// A DEALLOCATE behind it of a statement it dropped: the error
			// names the client's statement, not the proxy's copy.
			apMsgs(apQuery("DEALLOCATE ALL"), apQuery("DEALLOCATE s7")),
			apMsgs(apBind("", "s7"), apExec("", 0), apSync),
			// A Parse behind it of a name it frees, simple and extended.
			apMsgs(apParse("s8", "SELECT 's8 a'::text"), apSync),
			apMsgs(apQuery("DEALLOCATE ALL"), apParse("s8", "SELECT 's8 b'::text"), apBind("", "s8"), apExec("", 0), apSync),
			apMsgs(apBind("", "s8"), apExec("", 0), apSync),
			apMsgs(apParse("", "DEALLOCATE ALL"), apBind("", ""), apExec("", 0),
				apParse("s8", "SELECT 's8 c'::text"), apBind("", "s8"), apExec("", 0), apSync),
			apMsgs(apBind("", "s8"), apExec("", 0), apSync),
			// Without a DEALLOCATE ALL ahead the name stays taken: 42P05,
			// after what went before it is answered.
			apMsgs(apBind("", "s8"), apExec("", 0), apParse("s8", "SELECT 's8 d'::text"), apSync),
			apMsgs(apBind("", "s8"), apExec("", 0), apSync),
			// In an aborted transaction the Parse is refused for that
			// first (25P02), alone and behind the statement that failed.
			apMsgs(apQuery("BEGIN")),
			apMsgs(apQuery("SELECT 1/0")),
			apMsgs(apParse("s8", "SELECT 's8 e'::text"), apSync),
			apMsgs(apQuery("ROLLBACK")),
			apMsgs(apQuery("BEGIN"), apQuery("SELECT 1/0"), apParse("s8", "SELECT 's8 f'::text"), apSync, apQuery("ROLLBACK")),
			apMsgs(apBind("", "s8"), apExec("", 0), apSync),
			// A Close the server skips, then a Parse of its name in the
			// next batch of the same write: the name is still taken.
			apMsgs(apParse("s9", "SELECT 's9 a'::text"), apSync),
			apMsgs(apBind("", "nope"), apClose('S', "s9"), apSync, apParse("s9", "SELECT 's9 b'::text"), apSync),
			apMsgs(apBind("", "s9"), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolDiffSkippedUnnamedParse: a Parse of the unnamed
// statement that the server skips (an error earlier in its batch) changes
// nothing: directly the unnamed statement is still the one parsed before
// it, and the next Bind or Describe of it runs or describes that one. A
// Parse that fails leaves none; one that succeeds before a later error in
// its batch stays. A simple Query the server skips does not drop it
// either. A Bind or Describe of the unnamed statement pipelined in a
// later batch of the same write as the skipped Parse uses the one before it
// too: the proxy holds it until the Parse's batch is answered.
func TestAttackProtocolDiffSkippedUnnamedParse(t *testing.T) {
	apCheck(t,
		apScript{name: "a skipped Parse of the unnamed statement", steps: []apStep{
			apMsgs(apParse("", "SELECT 'first'::text, $1::int", 23), apSync),
			apMsgs(apBind("", "nope"), apExec("", 0), apParse("", "SELECT 'second'::text"), apSync),
			apMsgs(apBind("", "", "1"), apExec("", 0), apSync),
			apMsgs(apDescribe('S', ""), apSync),
			apMsgs(apBind("", "", "2"), apExec("", 0), apSync),
			// Several skipped behind one that ran.
			apMsgs(apParse("", "SELECT 'x'::text"), apSync, apParse("", "SELECT 'y'::text"), apBind("", "nope"),
				apParse("", "SELECT 'z'::text"), apParse("", "SELECT 'w'::text"), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			// The error is the unnamed statement's own Execute.
			apMsgs(apParse("", "SELECT 1/0"), apBind("", ""), apExec("", 0), apParse("", "SELECT 'skipped'::text"), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			// A Parse that fails leaves none.
			apMsgs(apParse("", "SELECT 'kept'::text"), apSync),
			apMsgs(apParse("", "SELEC 1"), apParse("", "SELECT 'skipped'::text"), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			// Skipped, then parsed in the next batch of the same write.
			apMsgs(apBind("", "nope"), apParse("", "SELECT 'skipped'::text"), apSync, apParse("", "SELECT 'next'::text"), apSync),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			// A simple Query drops the unnamed statement, one the server
			// skips does not.
			apMsgs(apParse("", "SELECT 'before the Query'::text"), apSync),
			{ready: 1, msgs: []pgproto3.FrontendMessage{apBind("", "nope"), apQuery("SELECT 'skipped'"), apSync}},
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			apMsgs(apBind("", "nope"), apParse("", "SELECT 'skipped'::text"), apSync, apQuery("SELECT 'ran'")),
			apMsgs(apBind("", ""), apExec("", 0), apSync),
			// Skipped, and used in the next batch of the same write.
			apMsgs(apParse("", "SELECT 'the one before'::text"), apSync),
			apMsgs(apBind("", "nope"), apParse("", "SELECT 'skipped'::text"), apSync, apBind("", ""), apExec("", 0), apSync),
			apMsgs(apBind("", "nope"), apParse("", "SELECT 'skipped'::text"), apSync, apDescribe('S', ""), apSync),
			// Parsed in one batch and used in the next: it runs.
			apMsgs(apParse("", "SELECT 'parsed, then used'::text"), apSync, apBind("", ""), apExec("", 0), apSync),
		}},
	)
}

// TestAttackProtocolSkippedUnnamedParseNotAnotherClients: a Parse of the
// unnamed statement that the server skips (an error earlier in its batch)
// and, pipelined behind it in the same write, a Bind of the unnamed
// statement in the next batch. The proxy builds the Bind before it knows
// the Parse is skipped; on a pool of one backend, whose unnamed statement
// another client parsed in between, the Bind must never run that
// client's statement. Directly it runs the statement parsed before the
// skipped one; through the proxy it may run the skipped one's text (the
// proxy parses the client's statement again in the Bind's batch), never
// the other client's.
func TestAttackProtocolSkippedUnnamedParseNotAnotherClients(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "allow",
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"))
	for _, path := range []struct {
		name string
		dial func() *rawClient
	}{
		{"direct", func() *rawClient { return dialRaw(t, txDirectURL()) }},
		{"event loop", func() *rawClient { return dialRaw(t, txProxyURL(p)) }},
		{"TLS", func() *rawClient { return dialRaw(t, tlsURL(p, map[string]string{"sslmode": "require"})) }},
	} {
		main, other := path.dial(), path.dial()
		main.send(t, apParse("", "SELECT 'main A'::text"), apSync)
		apRead(main, 1, 0, 0)
		other.send(t, apParse("", "SELECT 'other client'::text"), apBind("", ""), apExec("", 0), apSync)
		apRead(other, 1, 0, 0)
		main.send(t, apBind("", "nope"), apParse("", "SELECT 'main B'::text"), apSync, apBind("", ""), apExec("", 0), apSync)
		got := apRead(main, 2, 0, 0)
		ran := ""
		for _, m := range got {
			if strings.HasPrefix(m, "DataRow") {
				ran = m
			}
		}
		if ran != `DataRow "main A"` && (path.name == "direct" || ran != `DataRow "main B"`) {
			t.Errorf("%s: the Bind behind the skipped Parse ran %q (%q); want main A (directly) or main B, never another client's statement", path.name, ran, got)
		}
		main.conn.Close()
		other.conn.Close()
	}
}
