package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Backend and server faults in the middle of the relay: a backend killed
// (pg_terminate_backend from the admin connection) or stopped (SIGSTOP)
// at a chosen moment of a client's exchange. Each test compares the
// proxy with a direct connection where PostgreSQL has the behaviour, and
// checks that a fault costs at most the transaction it hit: one clear
// error or a replay that cannot run anything twice, other clients
// untouched, the dead backend never handed on.

// afCount returns the number of rows of table, read on a direct
// connection.
func afCount(ctx context.Context, t *testing.T, admin *pgconn.PgConn, table string) string {
	t.Helper()
	return txMustOne(ctx, t, admin, "SELECT count(*) FROM "+table)
}

// afActivePID waits until one session runs a query containing marker and
// returns its pid.
func afActivePID(ctx context.Context, t *testing.T, admin *pgconn.PgConn, marker string) string {
	t.Helper()
	var pids []string
	waitFor(t, 10*time.Second, "the statement marked "+marker+" running", func() bool {
		pids = lgActive(ctx, t, admin, marker)
		return len(pids) == 1
	})
	return pids[0]
}

// TestTerminateAfterCommitInsideRequest: a request that commits work of
// its own before it answers (a DO block or a procedure with COMMIT, CREATE
// INDEX CONCURRENTLY, run as the first statement of a transaction) and
// whose backend is then terminated within the replay window (replay.go's
// replayWindow, a second after the acquire). The backend's first reply is
// the FATAL 57P01 (none of these sends anything before it ends), which is
// what a backend that was dying when it was handed out sends; but this
// one ran the request and committed part of it, so sending it again runs
// it twice: the DO block's and the procedure's row is committed twice
// (the client sees success), and CREATE INDEX CONCURRENTLY, whose invalid
// index is committed, fails with 42P07 on the replay. Directly, and
// through the proxy, the client gets FATAL 57P01 and the work is there
// once.
func TestTerminateAfterCommitInsideRequest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	setup := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, setup, `DROP TABLE IF EXISTS af_commit, af_cic; CREATE TABLE af_commit(id serial, via text);
		CREATE TABLE af_cic(i int);
		CREATE OR REPLACE PROCEDURE af_commit_proc(via text) LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO af_commit(via) VALUES (via); COMMIT; PERFORM pg_sleep(3); END $$`)
	rows := func(tag string) string {
		return txMustOne(ctx, t, admin, "SELECT count(*) FROM af_commit WHERE via = '"+tag+"'")
	}
	indexes := func(tag string) string {
		return txMustOne(ctx, t, admin, "SELECT count(*) FROM pg_class WHERE relname = 'af_cic_"+strings.ReplaceAll(tag, "-", "_")+"'")
	}
	cases := []struct {
		name, sql string
		done      func(tag string) string // "1" once the request's own commit happened
		blocker   bool                    // keep a transaction open on af_cic meanwhile (CREATE INDEX CONCURRENTLY waits for it)
		prepared  bool                    // sql is prepared as a named statement in a transaction before, then run by Bind/Execute/Sync with tag
	}{
		{"do", `DO $$ BEGIN INSERT INTO af_commit(via) VALUES ('%[1]s'); COMMIT; PERFORM pg_sleep(3); END $$ /* %[2]s */`, rows, false, false},
		{"call", `CALL af_commit_proc('%[1]s') /* %[2]s */`, rows, false, false},
		{"cic", `CREATE INDEX CONCURRENTLY af_cic_%[3]s ON af_cic(i) /* %[2]s */`, indexes, true, false},
		{"prepared", `CALL af_commit_proc($1) /* %[2]s */`, rows, false, true},
	}
	for _, tc := range cases {
		for _, via := range []struct{ name, url string }{{"direct", txDirectURL()}, {"proxy", txProxyURL(p)}} {
			tag := tc.name + "-" + via.name
			marker := "af-commit-" + tag
			var blocker *pgconn.PgConn
			if tc.blocker {
				blocker = txConnect(ctx, t, txDirectURL(), nil)
				txMustExec(ctx, t, blocker, "BEGIN; INSERT INTO af_cic VALUES (1)")
			}
			c := txConnect(ctx, t, via.url, nil)
			txMustOne(ctx, t, c, "SELECT 1") // logged in; the next request acquires afresh
			sql := fmt.Sprintf(tc.sql, tag, marker, strings.ReplaceAll(tag, "-", "_"))
			var res <-chan txQueryResult
			start := time.Now()
			if tc.prepared {
				if _, err := c.Prepare(ctx, "af_prepared", sql, nil); err != nil {
					t.Fatalf("%s: prepare: %v", tag, err)
				}
				ch := make(chan txQueryResult, 1)
				res = ch
				start = time.Now()
				go func() {
					r := c.ExecPrepared(ctx, "af_prepared", [][]byte{[]byte(tag)}, nil, nil).Read()
					ch <- txQueryResult{err: r.Err}
				}()
			} else {
				res = txRunAsync(ctx, c, sql)
			}
			pid := afActivePID(ctx, t, admin, marker)
			waitFor(t, 10*time.Second, tag+": the request's own commit", func() bool { return tc.done(tag) == "1" })
			terminate(ctx, t, admin, []string{pid})
			killedAt := time.Since(start)
			var r txQueryResult
			select {
			case r = <-res:
			case <-time.After(15 * time.Second):
				t.Fatalf("%s: no answer 15s after its backend was terminated", tag)
			}
			if blocker != nil {
				txMustExec(ctx, t, blocker, "ROLLBACK")
			}
			got := tc.done(tag)
			t.Logf("%s: terminated %v after the request was sent: %v (SQLSTATE %s); committed %s times",
				tag, killedAt.Round(time.Millisecond), r.err, sqlState(r.err), got)
			if killedAt > time.Second {
				t.Fatalf("%s: the termination came %v after the request, past the replay window: the probe proves nothing", tag, killedAt)
			}
			if got != "1" {
				t.Errorf("%s: the request's work was committed %s times, want once (it was run again on another backend)", tag, got)
			}
			var pe *pgconn.PgError
			if !errors.As(r.err, &pe) || pe.Code != "57P01" {
				t.Errorf("%s: %v, want FATAL 57P01 as directly", tag, r.err)
			}
		}
	}
	// The pool still serves: a new client runs a transaction on a live
	// backend and sees each proxy request's row once.
	fresh := txConnect(ctx, t, txProxyURL(p), nil)
	if got, err := txOne(ctx, fresh, "SELECT count(*) FROM af_commit WHERE via LIKE '%-proxy'"); err != nil || got != "3" {
		t.Errorf("a new client after the faults: %q rows, %v; want 3", got, err)
	}
}

// afStop sends SIGSTOP to the backend pid and makes sure the test's end
// sends SIGCONT, so that no stopped process is left in the shared cluster.
// cont sends SIGCONT now.
func afStop(t *testing.T, pid string) (cont func()) {
	t.Helper()
	n, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatalf("pid %q: %v", pid, err)
	}
	if err := syscall.Kill(n, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", n, err)
	}
	var once sync.Once
	cont = func() { once.Do(func() { syscall.Kill(n, syscall.SIGCONT) }) }
	t.Cleanup(cont)
	return cont
}

// TestStoppedBackendQueryTimeout: the backend running a client's
// statement is stopped (SIGSTOP: alive, its socket open, silent, as a
// database host cut off by the network). pool.query_timeout (1s) sends a
// cancel request, which a stopped process never acts on; the client must
// not wait for the backend past that: it gets an error from the proxy
// (08006 naming query_timeout, with a hint) within serverOpTimeout (5s)
// of the cancel, its backend is closed, never handed on (new clients run
// on other backends at once), and /stats comes back to no backend active.
// Directly, with statement_timeout, the client would wait for the stopped
// process as long as it stays stopped: the proxy's own timeout is the one
// that can bound it, as PgBouncer's query_timeout does (it closes the
// server connection).
func TestStoppedBackendQueryTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_POOL__QUERY_TIMEOUT", limit.String()))
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	c := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, c, "SELECT 1")
	res := txRunAsync(ctx, c, "SELECT pg_sleep(20) /* af-stopped */")
	pid := afActivePID(ctx, t, admin, "af-stopped")
	stopped := time.Now()
	cont := afStop(t, pid)
	var r txQueryResult
	select {
	case r = <-res:
	case <-time.After(limit + 8*time.Second):
		cont()
		r = <-res
		t.Fatalf("the client still waited %v after its backend stopped, query_timeout %v; after SIGCONT: %v (SQLSTATE %s)",
			time.Since(stopped).Round(time.Millisecond), limit, r.err, sqlState(r.err))
	}
	t.Logf("stopped backend: the client got %v (SQLSTATE %s) %v after the stop", r.err, sqlState(r.err), time.Since(stopped).Round(time.Millisecond))
	var pe *pgconn.PgError
	if !errors.As(r.err, &pe) || pe.Code != "08006" || !strings.Contains(pe.Message, "query_timeout") || pe.Hint == "" {
		t.Errorf("%v, want 08006 naming query_timeout, with a hint", r.err)
	}
	// The stopped backend is never handed on: with it still stopped, new
	// clients are served at once, by other backends.
	for i := range 3 {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := pgconn.Connect(qctx, txProxyURL(p))
		if err != nil {
			qcancel()
			t.Fatalf("client %d: connect: %v", i, err)
		}
		got, err := txOne(qctx, n, "SELECT pg_backend_pid()")
		n.Close(context.Background())
		qcancel()
		if err != nil || got == pid {
			t.Errorf("client %d after the stop: pid %s (stopped: %s), %v", i, got, pid, err)
		}
	}
	if n := strings.Count(p.Logs.String(), "did not answer the pool.query_timeout cancel"); n != 1 {
		t.Errorf("the unanswered cancel was logged %d times, want once", n)
	}
	cont()
	waitFor(t, 10*time.Second, "no backend active in /stats", func() bool { return poolNum(t, p, "active") == 0 })
	waitFor(t, 10*time.Second, "the stopped backend gone once continued", func() bool { return !processAlive(pid) })
}
