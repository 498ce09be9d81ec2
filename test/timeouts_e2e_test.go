package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The client timeouts (pool.query_timeout, idle_transaction_timeout,
// client_idle_timeout, client_login_timeout). The proxy checks them a tenth
// of the shortest timeout apart, so each fires between the timeout and
// about 1.1 times it; the tests allow generous slack above that for a
// loaded machine, and none below.

// readyRows reads up to ReadyForQuery after a query sent with send, and
// returns the DataRows' first fields and the transaction status; an
// ErrorResponse fails the test.
func readyRows(t *testing.T, r *rawClient) (vals []string, status byte) {
	t.Helper()
	for {
		switch m := r.receive(t).(type) {
		case *pgproto3.DataRow:
			vals = append(vals, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			t.Fatalf("unexpected error %s: %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return vals, m.TxStatus
		}
	}
}

// elapsedWithin fails the test unless d is in [lo, hi].
func elapsedWithin(t *testing.T, what string, d, lo, hi time.Duration) {
	t.Helper()
	if d < lo || d > hi {
		t.Errorf("%s after %v; want between %v and %v", what, d.Round(time.Millisecond), lo, hi)
	}
}

// TestQueryTimeout: with pool.query_timeout a query running longer is
// cancelled on the server and the client gets 57014, as PostgreSQL's
// statement_timeout gives it directly, in the simple and the extended
// protocol, in and outside a transaction; the session and its backend go
// on (a pool of one keeps serving the same backend), and shorter queries
// are untouched.
func TestQueryTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	direct := txConnect(ctx, t, txDirectURL(), nil)
	if _, err := direct.Exec(ctx, "SET statement_timeout = '1s'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err := direct.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
	wantCode := sqlState(err)
	if wantCode != "57014" {
		t.Fatalf("direct statement_timeout: %v", err)
	}

	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			// Transaction mode: one backend, which the cancels must not cost.
			// Session mode: one per client (c and px below).
			size := 1
			if mode == "session" {
				size = 2
			}
			p := txStartProxy(t, mode, size, WithEnv("PGSIDECAR_POOL__QUERY_TIMEOUT", limit.String()))
			c := txConnect(ctx, t, txProxyURL(p), nil)
			pid := backendPID(ctx, t, c)

			start := time.Now()
			_, err := c.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
			took := time.Since(start)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != wantCode || !strings.Contains(pe.Message, "query_timeout") {
				t.Fatalf("a query longer than query_timeout: %v; want %s naming query_timeout", err, wantCode)
			}
			t.Logf("simple query: %s %q after %v", pe.Code, pe.Message, took.Round(time.Millisecond))
			elapsedWithin(t, "the cancel", took, limit, limit+2*time.Second)

			// Inside a transaction: the transaction is aborted, as directly.
			if _, err := c.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			_, err = c.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
			if sqlState(err) != wantCode || c.TxStatus() != 'E' {
				t.Fatalf("in a transaction: %v, status %q; want %s and 'E'", err, c.TxStatus(), wantCode)
			}
			if _, err := c.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
				t.Fatal(err)
			}

			// A query shorter than the timeout runs to its end.
			if _, err := c.Exec(ctx, "SELECT pg_sleep(0.3)").ReadAll(); err != nil {
				t.Fatalf("a query shorter than query_timeout: %v", err)
			}
			if got := backendPID(ctx, t, c); got != pid {
				t.Errorf("backend pid %s after the timeouts, %s before: the backend was replaced", got, pid)
			}

			// The extended protocol (pgx, prepared statement).
			px := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
			start = time.Now()
			_, err = px.Exec(ctx, "SELECT pg_sleep($1)", 5)
			if !errors.As(err, &pe) || pe.Code != wantCode || !strings.Contains(pe.Message, "query_timeout") {
				t.Fatalf("extended protocol: %v; want %s naming query_timeout", err, wantCode)
			}
			elapsedWithin(t, "the extended-protocol cancel", time.Since(start), limit, limit+2*time.Second)
			var one int
			if err := px.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("after the cancel: %d %v", one, err)
			}
			if !p.Logs.ContainsWithin("query ran longer than pool.query_timeout", 2*time.Second) {
				t.Error("the cancel was not logged")
			}
		})
	}
}

// TestIdleTransactionTimeout: a client idle inside a transaction longer
// than pool.idle_transaction_timeout gets FATAL 25P03, as PostgreSQL's
// idle_in_transaction_session_timeout gives directly; its transaction is
// rolled back and its backend returned to the pool and reused. In
// transaction mode four clients forgetting a BEGIN on a pool of two do not
// exhaust it: two wait, get the freed backends, and are cut in turn, and a
// client busy in a transaction is not cut.
func TestIdleTransactionTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	direct := dialRaw(t, txDirectURL())
	direct.query(t, "SET idle_in_transaction_session_timeout = '500ms'")
	direct.query(t, "BEGIN")
	want := receiveFatal(t, direct, "25P03", 5*time.Second)
	t.Logf("direct: FATAL %s %q", want.Code, want.Message)

	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			table := "e2e_idle_tx_" + mode
			if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(x int)"); err != nil {
				t.Fatal(err)
			}
			// Session mode holds a backend per client: one per forgetful client.
			size, forgetful := 2, 4
			if mode == "session" {
				size, forgetful = 2, 2
			}
			p := txStartProxy(t, mode, size,
				WithEnv("PGSIDECAR_POOL__IDLE_TRANSACTION_TIMEOUT", limit.String()),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))

			clients := make([]*rawClient, forgetful)
			for i := range clients {
				clients[i] = dialRaw(t, p.AppURL())
			}
			start := time.Now()
			for i, c := range clients {
				c.send(t, &pgproto3.Query{String: "BEGIN; INSERT INTO " + table + " VALUES (" + strconv.Itoa(i) + "); SELECT pg_backend_pid()"})
			}
			pids := map[string]bool{}
			for i, c := range clients {
				vals, status := readyRows(t, c)
				if status != 'T' || len(vals) != 1 {
					t.Fatalf("client %d: %v %q", i, vals, status)
				}
				pids[vals[0]] = true
				e := receiveFatal(t, c, "25P03", 3*limit+5*time.Second)
				t.Logf("client %d (backend %s): FATAL %s %q after %v", i, vals[0], e.Code, e.Message, time.Since(start).Round(time.Millisecond))
			}
			if took := time.Since(start); took < time.Duration(forgetful/size)*limit {
				t.Errorf("%d clients on %d backends were all cut after %v; each should have had %v", forgetful, size, took, limit)
			}
			if len(pids) > size {
				t.Errorf("the forgetful clients used %d backends on a pool of %d", len(pids), size)
			}

			// A client active inside its transaction is not cut.
			busy := txConnect(ctx, t, txProxyURL(p), nil)
			if _, err := busy.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			for range 5 {
				time.Sleep(limit / 3)
				if _, err := busy.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
					t.Fatalf("a client active in its transaction was cut: %v", err)
				}
			}
			if _, err := busy.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				t.Fatalf("COMMIT: %v", err)
			}
			// The backends were rolled back and reused, not closed.
			next := txConnect(ctx, t, txProxyURL(p), nil)
			res, err := next.Exec(ctx, "SELECT pg_backend_pid(), (SELECT count(*) FROM "+table+"), txid_current_if_assigned() IS NULL").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			row := res[0].Rows[0]
			if !pids[string(row[0])] || string(row[1]) != "0" || string(row[2]) != "t" {
				t.Errorf("next client: backend %s (the cut clients had %v), %s rows left, no xid %s; want a reused backend, 0 rows, no xid",
					row[0], pids, row[1], row[2])
			}
			pools := statsPools(p.Stats(t))
			retired, _ := pools[0]["retired"].(map[string]any)
			if errs, _ := num(retired, "error"); errs != 0 {
				t.Errorf("%v backends closed as broken; want the cut clients' backends reused", errs)
			}
		})
	}
}

// TestClientIdleTimeout: a client idle outside a transaction longer than
// pool.client_idle_timeout is closed with FATAL 57P05, as PostgreSQL's
// idle_session_timeout does directly; a client that keeps querying, and a
// client idle inside a transaction, are not.
func TestClientIdleTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	direct := dialRaw(t, txDirectURL())
	direct.query(t, "SET idle_session_timeout = '500ms'")
	want := receiveFatal(t, direct, "57P05", 5*time.Second)
	t.Logf("direct: FATAL %s %q", want.Code, want.Message)

	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := txStartProxy(t, mode, 3, WithEnv("PGSIDECAR_POOL__CLIENT_IDLE_TIMEOUT", limit.String()))
			inTx := txConnect(ctx, t, txProxyURL(p), nil)
			if _, err := inTx.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			idle := dialRaw(t, p.AppURL())
			idle.query(t, "SELECT 1")
			start := time.Now()
			e := receiveFatal(t, idle, "57P05", 5*time.Second)
			took := time.Since(start)
			t.Logf("idle client: FATAL %s %q after %v", e.Code, e.Message, took.Round(time.Millisecond))
			elapsedWithin(t, "the idle client was closed", took, limit, limit+2*time.Second)

			// Idle inside a transaction for as long: not this timeout's business.
			if _, err := inTx.Exec(ctx, "SELECT 1; COMMIT").ReadAll(); err != nil {
				t.Fatalf("a client idle inside a transaction was cut by client_idle_timeout: %v", err)
			}
			active := txConnect(ctx, t, txProxyURL(p), nil)
			for range 6 {
				time.Sleep(limit / 3)
				if _, err := active.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
					t.Fatalf("a client querying every %v was cut: %v", limit/3, err)
				}
			}
		})
	}
}

// TestClientLoginTimeout: a login that has to wait for a backend (to check
// a startup parameter the proxy has not seen, while a pool of one is held)
// gets FATAL 53300 with a hint naming pool.client_login_timeout when that
// runs out, well before acquire_timeout, instead of a silent close; once
// the backend is free the same login works. In session mode the login
// does not wait for the held backend at all (a session may hold it for
// ever, and its client may wait for this login): it goes through at once
// unchecked, and its parameter is set when the backend comes free
// (TestSessionLoginWithNewParameterNeverWaits).
func TestClientLoginTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := txStartProxy(t, mode, 1,
				WithEnv("PGSIDECAR_POOL__CLIENT_LOGIN_TIMEOUT", limit.String()),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "30s"))
			holder := txConnect(ctx, t, txProxyURL(p), nil)
			if _, err := holder.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				t.Fatal(err)
			}
			params := map[string]string{"statement_timeout": "4321"}
			cfg, err := pgconn.ParseConfig(txProxyURL(p))
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams["statement_timeout"] = params["statement_timeout"]
			start := time.Now()
			c, err := pgconn.ConnectConfig(ctx, cfg)
			took := time.Since(start)
			if mode == "session" {
				if err != nil {
					// A login that waited would get client_login_timeout's 53300.
					t.Fatalf("session-mode login with the only backend held: %v after %v; want it at once, unchecked", err, took)
				}
				txClosePgconn(holder) // its backend goes to c
				res, err := c.Exec(ctx, "SHOW statement_timeout").ReadAll()
				if err != nil || string(res[0].Rows[0][0]) != "4321ms" {
					t.Fatalf("the session-mode login's parameter once it has a backend: %v %v", res, err)
				}
				txClosePgconn(c)
				return
			}
			if err == nil {
				c.Close(ctx)
				t.Fatal("the login succeeded while the only backend was held")
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "53300" || pe.Severity != "FATAL" || !strings.Contains(pe.Hint, "client_login_timeout") {
				t.Fatalf("login waiting for a backend: %v; want FATAL 53300 with a hint naming client_login_timeout", err)
			}
			t.Logf("login: %s %q hint %q after %v", pe.Code, pe.Message, pe.Hint, took.Round(time.Millisecond))
			elapsedWithin(t, "the login refusal", took, limit-50*time.Millisecond, limit+3*time.Second)

			if _, err := holder.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				t.Fatal(err)
			}
			late := txConnect(ctx, t, txProxyURL(p), params)
			res, err := late.Exec(ctx, "SHOW statement_timeout").ReadAll()
			if err != nil || string(res[0].Rows[0][0]) != "4321ms" {
				t.Fatalf("the same login with a free backend: %v %v", res, err)
			}
		})
	}
}

// TestTimeoutsReload: the timeouts change live on SIGHUP, from off to on.
func TestTimeoutsReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	write := func(query, idleTx, idle string) {
		t.Helper()
		yaml := "pool:\n  query_timeout: " + query + "\n  idle_transaction_timeout: " + idleTx + "\n  client_idle_timeout: " + idle + "\n"
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0s", "0s", "0s")
	p := StartProxy(t, WithArgs("-config", path))
	c := txConnect(ctx, t, txProxyURL(p), nil)
	if _, err := c.Exec(ctx, "SELECT pg_sleep(1.2)").ReadAll(); err != nil {
		t.Fatalf("no query_timeout yet: %v", err)
	}

	write("500ms", "700ms", "900ms")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the reload", func() bool { return p.Logs.Contains("configuration reloaded") })
	_, err := c.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
	if sqlState(err) != "57014" {
		t.Fatalf("query_timeout after the reload: %v; want 57014", err)
	}
	inTx := dialRaw(t, p.AppURL())
	inTx.query(t, "BEGIN")
	idle := dialRaw(t, p.AppURL())
	idle.query(t, "SELECT 1")
	receiveFatal(t, inTx, "25P03", 5*time.Second)
	receiveFatal(t, idle, "57P05", 5*time.Second)
}
