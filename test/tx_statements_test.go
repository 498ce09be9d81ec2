package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Statements in transaction mode (issue 6, points 1-3): a client's Parse is
// answered by the server for the schema of that moment, its unnamed
// statement is its own, and a statement without a result is not held to a
// result type. Pools are smaller than the client count, so backends are
// shared; each scenario runs directly too and the outcomes are compared.

// txTypeNames describes OIDs by name, looked up at once (a dropped type's
// OID says nothing later, and OIDs differ between the direct and the proxy
// run).
func txTypeNames(ctx context.Context, admin *pgconn.PgConn, oids []uint32) string {
	names := make([]string, len(oids))
	for i, o := range oids {
		v, err := txOne(ctx, admin, fmt.Sprintf("SELECT coalesce(format_type(%d, NULL), '?')", o))
		if err != nil {
			v = "lookup: " + sqlState(err)
		}
		names[i] = v
	}
	return strings.Join(names, ",")
}

// txDescribe prepares name on c and returns "params -> fields" by type name,
// or the error's SQLSTATE.
func txDescribe(ctx context.Context, c, admin *pgconn.PgConn, name, sql string) string {
	sd, err := c.Prepare(ctx, name, sql, nil)
	if err != nil {
		return "prepare ERROR " + sqlState(err)
	}
	fields := make([]uint32, len(sd.Fields))
	for i, f := range sd.Fields {
		fields[i] = f.DataTypeOID
	}
	return txTypeNames(ctx, admin, sd.ParamOIDs) + " -> " + txTypeNames(ctx, admin, fields)
}

// txExecText executes name with text parameters and returns the rows (first
// column, comma-separated) and the result type, or the SQLSTATE.
func txExecText(ctx context.Context, c, admin *pgconn.PgConn, name string, params ...string) string {
	ps := make([][]byte, len(params))
	for i, p := range params {
		ps[i] = []byte(p)
	}
	r := c.ExecPrepared(ctx, name, ps, nil, nil).Read()
	if r.Err != nil {
		return "ERROR " + sqlState(r.Err)
	}
	var vals []string
	for _, row := range r.Rows {
		vals = append(vals, string(row[0]))
	}
	var types []uint32
	for _, f := range r.FieldDescriptions {
		types = append(types, f.DataTypeOID)
	}
	return strings.Join(vals, ",") + " :: " + txTypeNames(ctx, admin, types)
}

// TestTxStatementsAfterDDL: after ALTER TABLE ... TYPE, DROP/CREATE TYPE
// and a re-created table, a new client preparing the text, and an old one
// that deallocates and prepares again, get the new parameter and result
// types, and an old client that does not re-prepare gets what PostgreSQL
// gives its old statement. Pool of 1 and three clients: every statement of
// every client is on the one backend, where the old code answered the new
// Parses with the first client's stale copy.
func TestTxStatementsAfterDDL(t *testing.T) {
	type scenario struct {
		name, setup, ddl, sql string
		param                 string // text parameter for the executions
		binary                []byte // a binary parameter of the new type, for the new client
	}
	int8Param := binary.BigEndian.AppendUint64(nil, 20)
	scenarios := []scenario{
		{name: "alter column type", setup: "DROP TABLE IF EXISTS tx_st_t; CREATE TABLE tx_st_t (id int, c int); INSERT INTO tx_st_t VALUES (1, 10), (2, 20)",
			ddl: "ALTER TABLE tx_st_t ALTER COLUMN c TYPE bigint", sql: "SELECT c FROM tx_st_t WHERE c = $1", param: "20", binary: int8Param},
		{name: "alter column type, result unchanged", setup: "DROP TABLE IF EXISTS tx_st_t; CREATE TABLE tx_st_t (id int, c int); INSERT INTO tx_st_t VALUES (1, 10), (2, 20)",
			ddl: "ALTER TABLE tx_st_t ALTER COLUMN c TYPE bigint", sql: "SELECT id FROM tx_st_t WHERE c = $1", param: "20", binary: int8Param},
		{name: "enum dropped and created again", setup: "DROP TABLE IF EXISTS tx_st_m; DROP TYPE IF EXISTS tx_st_mood; CREATE TYPE tx_st_mood AS ENUM ('sad', 'ok'); CREATE TABLE tx_st_m (x tx_st_mood); INSERT INTO tx_st_m VALUES ('ok')",
			ddl: "DROP TABLE tx_st_m; DROP TYPE tx_st_mood; CREATE TYPE tx_st_mood AS ENUM ('sad', 'ok', 'happy'); CREATE TABLE tx_st_m (x tx_st_mood); INSERT INTO tx_st_m VALUES ('happy')",
			sql: "SELECT x FROM tx_st_m WHERE x <> $1", param: "sad"},
		{name: "composite dropped and created again", setup: "DROP FUNCTION IF EXISTS tx_st_f; DROP TYPE IF EXISTS tx_st_pair; CREATE TYPE tx_st_pair AS (a int, b text); CREATE FUNCTION tx_st_f(int) RETURNS tx_st_pair LANGUAGE sql AS $$ SELECT ($1, 'x')::tx_st_pair $$",
			ddl: "DROP FUNCTION tx_st_f; DROP TYPE tx_st_pair; CREATE TYPE tx_st_pair AS (a bigint, b text, c int); CREATE FUNCTION tx_st_f(int) RETURNS tx_st_pair LANGUAGE sql AS $$ SELECT ($1, 'y', 3)::tx_st_pair $$",
			sql: "SELECT tx_st_f($1)", param: "7"},
		{name: "table re-created", setup: "DROP TABLE IF EXISTS tx_st_t; CREATE TABLE tx_st_t (id int, c int); INSERT INTO tx_st_t VALUES (1, 10), (2, 20)",
			ddl: "DROP TABLE tx_st_t; CREATE TABLE tx_st_t (id int, c text); INSERT INTO tx_st_t VALUES (2, 'twenty')", sql: "SELECT c FROM tx_st_t WHERE id = $1", param: "2"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	run := func(url string, sc scenario) []string {
		txMustExec(ctx, t, admin, sc.setup)
		a := txConnect(ctx, t, url, nil)
		b := txConnect(ctx, t, url, nil)
		var out []string
		add := func(step, res string) { out = append(out, step+": "+res) }
		add("A prepares", txDescribe(ctx, a, admin, "s", sc.sql))
		add("B prepares", txDescribe(ctx, b, admin, "s", sc.sql))
		add("A executes", txExecText(ctx, a, admin, "s", sc.param))
		txMustExec(ctx, t, admin, sc.ddl)
		n := txConnect(ctx, t, url, nil)
		add("new client prepares", txDescribe(ctx, n, admin, "s", sc.sql))
		add("new client executes", txExecText(ctx, n, admin, "s", sc.param))
		if sc.binary != nil {
			r := n.ExecPrepared(ctx, "s", [][]byte{sc.binary}, []int16{1}, nil).Read()
			res := fmt.Sprintf("%d rows", len(r.Rows))
			if r.Err != nil {
				res = "ERROR " + sqlState(r.Err)
			}
			add("new client executes with a binary parameter", res)
		}
		if err := a.Deallocate(ctx, "s"); err != nil {
			add("A deallocates", "ERROR "+sqlState(err))
		}
		add("A prepares again", txDescribe(ctx, a, admin, "s", sc.sql))
		add("A executes", txExecText(ctx, a, admin, "s", sc.param))
		add("B executes its old statement", txExecText(ctx, b, admin, "s", sc.param))
		add("B executes its old statement again", txExecText(ctx, b, admin, "s", sc.param))
		add("new client executes again", txExecText(ctx, n, admin, "s", sc.param))
		return out
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			direct := run(txDirectURL(), sc)
			proxied := run(txProxyURL(p), sc)
			for i := range direct {
				if i >= len(proxied) || direct[i] != proxied[i] {
					got := "(missing)"
					if i < len(proxied) {
						got = proxied[i]
					}
					t.Errorf("directly %q, through the proxy %q", direct[i], got)
				} else {
					t.Log(direct[i])
				}
			}
		})
	}
}

// TestTxUnnamedStatementIsPrivate: pgx's describe-then-execute mode
// prepares the unnamed statement in one round trip and binds it in the
// next. With two clients on one backend, client 2's unnamed Parse lands
// between client 1's two round trips; client 1 must still run its own
// statement. Then 20 pgx clients in that mode on a pool of 2 each check
// that every row is their own.
func TestTxUnnamedStatementIsPrivate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)

	steps := func(url string) []string {
		c1 := txConnect(ctx, t, url, nil)
		c2 := txConnect(ctx, t, url, nil)
		var out []string
		if _, err := c1.Prepare(ctx, "", "SELECT 'c1 private: ' || $1::text", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c2.Prepare(ctx, "", "SELECT 'c2 private: ' || ($1::int + 1)", nil); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*pgconn.PgConn{c1, c2} {
			r := c.ExecPrepared(ctx, "", [][]byte{[]byte("40")}, nil, nil).Read()
			if r.Err != nil {
				out = append(out, "ERROR "+sqlState(r.Err))
			} else {
				out = append(out, string(r.Rows[0][0]))
			}
		}
		// A simple Query drops the unnamed statement: binding it is 26000.
		txMustExec(ctx, t, c1, "SELECT 1")
		r := c1.ExecPrepared(ctx, "", [][]byte{[]byte("40")}, nil, nil).Read()
		if r.Err != nil {
			out = append(out, "after a Query: ERROR "+sqlState(r.Err))
		} else {
			out = append(out, "after a Query: "+string(r.Rows[0][0]))
		}
		// A client pinned to its backend (a session advisory lock), whose
		// unnamed statement's text makes the proxy check the session's
		// state (a Query) between the two round trips.
		txMustExec(ctx, t, c2, "SELECT pg_advisory_lock(4242)")
		if _, err := c2.Prepare(ctx, "", "SELECT 'pg_advisory_unlock kept: ' || $1::text", nil); err != nil {
			t.Fatal(err)
		}
		r = c2.ExecPrepared(ctx, "", [][]byte{[]byte("1")}, nil, nil).Read()
		if r.Err != nil {
			out = append(out, "pinned: ERROR "+sqlState(r.Err))
		} else {
			out = append(out, "pinned: "+string(r.Rows[0][0]))
		}
		txMustExec(ctx, t, c2, "SELECT pg_advisory_unlock(4242)")
		// A client that never parsed one.
		c3 := txConnect(ctx, t, url, nil)
		r = c3.ExecPrepared(ctx, "", nil, nil, nil).Read()
		if r.Err != nil {
			out = append(out, "never parsed: ERROR "+sqlState(r.Err))
		} else {
			out = append(out, fmt.Sprintf("never parsed: %q", r.Rows))
		}
		return out
	}
	direct, proxied := steps(txDirectURL()), steps(txProxyURL(p))
	if strings.Join(direct, "|") != strings.Join(proxied, "|") {
		t.Errorf("directly %q\nthrough the proxy %q", direct, proxied)
	} else {
		t.Logf("%q", proxied)
	}

	// Concurrent describe-exec clients on a pool of 2.
	p2 := txStartProxy(t, "transaction", 2)
	const clients, rounds = 20, 30
	errs := newTxErrors()
	var wg sync.WaitGroup
	for i := range clients {
		conn := txConnectPgx(ctx, t, txProxyURL(p2), pgx.QueryExecModeDescribeExec)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				// Each client's text differs, and so do its types.
				sql := fmt.Sprintf("SELECT 'client %d: ' || $1::text, $2::int + %d", i, i)
				var s string
				var n int
				if err := conn.QueryRow(ctx, sql, fmt.Sprint(r), r).Scan(&s, &n); err != nil {
					errs.add("client %d round %d: %v", i, r, err)
					return
				}
				if want := fmt.Sprintf("client %d: %d", i, r); s != want || n != r+i {
					errs.add("client %d round %d: got %q, %d; want %q, %d", i, r, s, n, want, r+i)
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "describe-exec clients")
}

// TestTxPreparedFetchAcrossBackends: a prepared FETCH is described as
// returning no data (its cursor does not exist yet) or the rows of the
// cursor it first ran on; run later on another backend, over a cursor of
// another shape, it works as it does directly (PostgreSQL never checks a
// FETCH's result type). Pool of 2 with a third client holding one backend.
func TestTxPreparedFetchAcrossBackends(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	url := txProxyURL(p)
	run := func(c *pgconn.PgConn, hold func() func()) []string {
		var out []string
		exec := func(what string) {
			r := c.ExecPrepared(ctx, "f", nil, nil, nil).Read()
			if r.Err != nil {
				out = append(out, what+": ERROR "+sqlState(r.Err))
				return
			}
			var vals []string
			for _, row := range r.Rows {
				for _, v := range row {
					vals = append(vals, string(v))
				}
			}
			out = append(out, what+": "+strings.Join(vals, ","))
		}
		sd, err := c.Prepare(ctx, "f", "FETCH 1 FROM tx_cur", nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("described with %d fields", len(sd.Fields)))
		for k, cursor := range []string{"SELECT 1 AS a", "SELECT 'two'::text AS b, 2.5::float8 AS c", "SELECT now() IS NOT NULL AS d"} {
			release := hold()
			txMustExec(ctx, t, c, "BEGIN; DECLARE tx_cur CURSOR FOR "+cursor)
			exec(fmt.Sprintf("cursor %d", k))
			txMustExec(ctx, t, c, "COMMIT")
			release()
		}
		return out
	}
	direct := run(txConnect(ctx, t, txDirectURL(), nil), func() func() { return func() {} })
	// Alternate the backend the client runs on by holding one or none.
	n := 0
	proxied := run(txConnect(ctx, t, url, nil), func() func() {
		n++
		if n%2 == 0 {
			return func() {}
		}
		_, release := txHold(ctx, t, url)
		return release
	})
	if strings.Join(direct, "|") != strings.Join(proxied, "|") {
		t.Errorf("directly %q\nthrough the proxy %q", direct, proxied)
	} else {
		t.Logf("%q", proxied)
	}
}

// TestTxReprepareAfterDDL: a statement prepared before an ALTER TABLE and
// run afterwards on each of the two backends (its old copy on one, a copy
// the proxy prepares afresh on the other) behaves as the client's one
// statement does directly: it keeps its parameter types (a binary int4
// parameter still works after the column became bigint), and one whose
// result type changed fails with 0A000 on both.
func TestTxReprepareAfterDDL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	url := txProxyURL(p)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	int4 := binary.BigEndian.AppendUint32(nil, 20)
	run := func(c *pgconn.PgConn, onEach func(func())) []string {
		txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS tx_rp_t; CREATE TABLE tx_rp_t (id int, c int); INSERT INTO tx_rp_t VALUES (1, 10), (2, 20)")
		var out []string
		for name, sql := range map[string]string{"same": "SELECT id FROM tx_rp_t WHERE c = $1", "changed": "SELECT c FROM tx_rp_t WHERE c = $1"} {
			if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
				t.Fatal(err)
			}
		}
		txMustExec(ctx, t, admin, "ALTER TABLE tx_rp_t ALTER COLUMN c TYPE bigint")
		for _, name := range []string{"same", "changed"} {
			onEach(func() {
				r := c.ExecPrepared(ctx, name, [][]byte{int4}, []int16{1}, nil).Read()
				if r.Err != nil {
					out = append(out, name+": ERROR "+sqlState(r.Err))
				} else {
					out = append(out, fmt.Sprintf("%s: %q", name, r.Rows))
				}
			})
		}
		return out
	}
	direct := run(txConnect(ctx, t, txDirectURL(), nil), func(f func()) { f(); f() })
	proxied := run(txConnect(ctx, t, url, nil), func(f func()) {
		// Both backends held, then each freed in turn for the client.
		pid1, release1 := txHold(ctx, t, url)
		pid2, release2 := txHold(ctx, t, url)
		if pid1 == pid2 {
			t.Fatalf("two holds share backend %s", pid1)
		}
		release1()
		f() // on backend 1
		_, release1 = txHold(ctx, t, url)
		release2()
		f() // on backend 2
		release1()
	})
	if strings.Join(direct, "|") != strings.Join(proxied, "|") {
		t.Errorf("directly %q\nthrough the proxy %q", direct, proxied)
	} else {
		t.Logf("%q", proxied)
	}
}
