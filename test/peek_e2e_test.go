package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 8: pool.peek_after_idle skips the acquire-time socket peek for a
// backend released less than that long ago (one system call per
// transaction). A pooled backend that died unseen in that window must
// still be hidden from the client: the proxy finds it dead by its first
// reply (the FATAL, EOF or a reset) before any reply byte reached the
// client, and sends the request to another backend (proxy/replay.go).
// These tests run with the peek off for every acquire (peek_after_idle
// 1h) and without validation_query (which would find the dead backends
// by itself), so only the replay stands between the dead backends and
// the client.

// peekOffProxy starts a transaction-mode proxy that hands out idle
// backends without the peek or a validation query.
func peekOffProxy(t *testing.T, maxSize int, opts ...ProxyOption) *Proxy {
	t.Helper()
	return StartProxy(t, append([]ProxyOption{
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(maxSize)),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
		WithEnv("PGSIDECAR_POOL__PEEK_AFTER_IDLE", "1h"),
		WithEnv("PGSIDECAR_POOL__VALIDATION_QUERY", ""),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info")}, opts...)...)
}

// peekClient is one client protocol: run sends its statement, which
// returns the pid of the backend that ran it.
type peekClient struct {
	name string
	run  func(ctx context.Context) (string, error)
}

// peekClients connects one client per protocol to url and runs each
// statement once, so that the named statements exist before the
// backends die:
//   - simple: a simple Query;
//   - extended: pgx's exec mode, an unnamed Parse/Bind/Describe/Execute/Sync batch;
//   - pgx cached: pgx's default mode, a named statement prepared once;
//   - prepared: pgbench -M prepared's shape, Bind/Execute/Sync of a
//     statement the client prepared earlier (pgconn Prepare + ExecPrepared).
func peekClients(ctx context.Context, t *testing.T, url string) []peekClient {
	t.Helper()
	simple := txConnect(ctx, t, url, nil)
	exec := txConnectPgx(ctx, t, url, pgx.QueryExecModeExec)
	cached := txConnectPgx(ctx, t, url, pgx.QueryExecModeCacheStatement)
	prepared := txConnect(ctx, t, url, nil)
	if _, err := prepared.Prepare(ctx, "peek_pid", "SELECT pg_backend_pid() + $1::int", nil); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	pgxPID := func(c *pgx.Conn) func(context.Context) (string, error) {
		return func(ctx context.Context) (string, error) {
			var pid int32
			err := c.QueryRow(ctx, "SELECT pg_backend_pid() + $1::int", 0).Scan(&pid)
			return strconv.Itoa(int(pid)), err
		}
	}
	clients := []peekClient{
		{"simple", func(ctx context.Context) (string, error) { return txOne(ctx, simple, "SELECT pg_backend_pid()") }},
		{"extended", pgxPID(exec)},
		{"pgx cached", pgxPID(cached)},
		{"prepared", func(ctx context.Context) (string, error) {
			res := prepared.ExecPrepared(ctx, "peek_pid", [][]byte{[]byte("0")}, nil, nil).Read()
			if res.Err != nil {
				return "", res.Err
			}
			if len(res.Rows) != 1 {
				return "", fmt.Errorf("%d rows", len(res.Rows))
			}
			return string(res.Rows[0][0]), nil
		}},
	}
	for _, c := range clients {
		if _, err := c.run(ctx); err != nil {
			t.Fatalf("%s: first statement: %v", c.name, err)
		}
	}
	return clients
}

// TestUnpeekedTerminatedBackendHidden: with the peek skipped, idle pooled
// backends ended by pg_terminate_backend (all of them, each already gone:
// its FATAL and FIN wait on the proxy's socket) are handed out; the next
// statement of a connected client still succeeds on a live backend, for
// each protocol, because the dead ones never answered. A direct
// connection terminated the same way gets the FATAL 57P01.
func TestUnpeekedTerminatedBackendHidden(t *testing.T) {
	const n = 3
	p := peekOffProxy(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := adminConn(t)
	clients := peekClients(ctx, t, p.AppURL())
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			// The maintainer peeks idle sockets every second, and may get
			// to the dead backends first: then the replay was not needed,
			// and the scenario runs again (bounded).
			for attempt := 1; ; attempt++ {
				pids := fillPool(ctx, t, p, n)
				direct := txConnect(ctx, t, txDirectURL(), nil)
				directPID := strconv.Itoa(int(direct.PID()))
				replaysBefore := poolRetired(t, p, "error")
				terminate(ctx, t, admin.PgConn(), append(slices.Clone(pids), directPID))

				pid, err := c.run(ctx)
				if err != nil {
					t.Fatalf("statement after pg_terminate_backend of every idle backend: %v (SQLSTATE %s)", err, sqlState(err))
				}
				if slices.Contains(pids, pid) {
					t.Fatalf("served by backend %s, which was terminated", pid)
				}
				_, derr := txOne(ctx, direct, "SELECT 1")
				if derr == nil {
					t.Fatalf("a direct connection terminated the same way still answered")
				}
				replays := poolRetired(t, p, "error") - replaysBefore
				t.Logf("attempt %d: served by %s after %v replays; direct: %v (SQLSTATE %s)", attempt, pid, replays, derr, sqlState(derr))
				if replays > 0 {
					break
				}
				if attempt == 3 {
					t.Fatalf("in %d attempts no dead backend was handed out: the peek was not skipped", attempt)
				}
			}
			if code, _ := p.Health(t); code != 200 {
				t.Errorf("health %d after the replays, want 200", code)
			}
		})
	}
}

// TestUnpeekedTerminatedBackendHiddenSession: session mode binds a
// backend at login; with the peek skipped a login can be given an idle
// backend that pg_terminate_backend ended, and the client's first
// statement must still succeed on a live one.
func TestUnpeekedTerminatedBackendHiddenSession(t *testing.T) {
	const n = 3
	p := peekOffProxy(t, n, WithEnv("PGSIDECAR_POOL__MODE", "session"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)
	for attempt := 1; ; attempt++ {
		pids := fillPool(ctx, t, p, n)
		replaysBefore := poolRetired(t, p, "error")
		terminate(ctx, t, admin.PgConn(), pids)
		c := txConnect(ctx, t, p.AppURL(), nil)
		pid, err := txOne(ctx, c, "SELECT pg_backend_pid()")
		if err != nil {
			t.Fatalf("first statement after login, all idle backends terminated: %v (SQLSTATE %s)", err, sqlState(err))
		}
		if slices.Contains(pids, pid) {
			t.Fatalf("served by backend %s, which was terminated", pid)
		}
		txClosePgconn(c)
		replays := poolRetired(t, p, "error") - replaysBefore
		t.Logf("attempt %d: served by %s after %v replays", attempt, pid, replays)
		if replays > 0 {
			return
		}
		if attempt == 3 {
			t.Fatalf("in %d attempts no dead backend was handed out: the peek was not skipped", attempt)
		}
	}
}

// TestUnpeekedTerminatedBackendAtLogin: a login with a startup parameter
// the server has not yet accepted (here a new application_name) is checked
// on a pooled backend before the client is greeted; with the peek skipped
// that backend can be one pg_terminate_backend ended. The check must go
// to another backend, and the login succeed, as it does directly.
func TestUnpeekedTerminatedBackendAtLogin(t *testing.T) {
	const n = 3
	p := peekOffProxy(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)
	for attempt := 1; ; attempt++ {
		pids := fillPool(ctx, t, p, n)
		replaysBefore := poolRetired(t, p, "error")
		terminate(ctx, t, admin.PgConn(), pids)
		app := fmt.Sprintf("peek-login-%d", time.Now().UnixNano())
		cfg, err := pgconn.ParseConfig(p.AppURL())
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = app
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("login with application_name %q, all idle backends terminated: %v (SQLSTATE %s)", app, err, sqlState(err))
		}
		got, err := txOne(ctx, c, "SELECT current_setting('application_name')")
		txClosePgconn(c)
		if err != nil || got != app {
			t.Fatalf("after the login: application_name %q, %v; want %q", got, err, app)
		}
		replays := poolRetired(t, p, "error") - replaysBefore
		t.Logf("attempt %d: logged in after %v backends found dead", attempt, replays)
		if replays > 0 {
			return
		}
		if attempt == 3 {
			t.Fatalf("in %d attempts no dead backend was handed out: the peek was not skipped", attempt)
		}
	}
}

// TestUnpeekedBackendsAcrossFastRestart: a fast restart of the database
// ends every pooled backend at once. With the peek skipped a client's next
// statement (sent as soon as the backends are gone, while the server is
// still shutting down) goes to the dead backends first; each is found dead
// by its first reply and the statement goes on to another backend, then
// waits in pool.hold_on_restart for the database to come back. The client
// sees no error, for each protocol. A direct connection opened before the
// restart is lost.
func TestUnpeekedBackendsAcrossFastRestart(t *testing.T) {
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	const n = 3
	p := peekOffProxy(t, n, WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", "10s"))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clients := peekClients(ctx, t, p.AppURL())
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				pids := fillPool(ctx, t, p, n)
				direct := txConnect(ctx, t, txDirectURL(), nil)
				replaysBefore := poolRetired(t, p, "error")

				stopped := make(chan error, 1)
				go func() { stopped <- pg.Stop() }() // ends when the postmaster has exited
				waitFor(t, 10*time.Second, "the pooled backends to exit", func() bool {
					return !slices.ContainsFunc(pids, processAlive)
				})
				done := make(chan error, 1)
				go func() { // ends when its statement does (ctx bounds it)
					pid, err := c.run(ctx)
					switch {
					case err != nil:
						done <- fmt.Errorf("statement across the restart: %w (SQLSTATE %s)", err, sqlState(err))
					case slices.Contains(pids, pid):
						done <- fmt.Errorf("served by backend %s, which the restart ended", pid)
					default:
						done <- nil
					}
				}()
				if err := <-stopped; err != nil {
					t.Fatalf("fast shutdown: %v", err)
				}
				if err := pg.Start(); err != nil {
					t.Fatalf("start after the fast shutdown: %v", err)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				_, derr := txOne(ctx, direct, "SELECT 1")
				if derr == nil {
					t.Errorf("a direct connection opened before the restart still answered")
				}
				replays := poolRetired(t, p, "error") - replaysBefore
				t.Logf("attempt %d: %v backends found dead under the client (replays); direct: %v", attempt, replays, derr)
				if replays > 0 {
					break
				}
				if attempt == 3 {
					t.Fatalf("in %d restarts no dead backend was handed out: the peek was not skipped", attempt)
				}
			}
			// And the pool serves on.
			if _, err := c.run(ctx); err != nil {
				t.Errorf("statement after the restart: %v", err)
			}
		})
	}
}

// processAlive reports whether the process pid (a decimal string) exists
// and is not a zombie.
func processAlive(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestUnpeekedBackendKilledInsideTransaction: what the replay cannot
// hide. A backend killed while its client is inside an explicit
// transaction has done the client's work (now rolled back): the client
// gets an error, as directly, and its transaction is gone. The proxy stays
// healthy: another connected client and a new one go on, and the client
// itself (when its connection survives) starts a new transaction.
func TestUnpeekedBackendKilledInsideTransaction(t *testing.T) {
	p := peekOffProxy(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)

	inTx := func(url string) (*pgconn.PgConn, string) {
		c := txConnect(ctx, t, url, nil)
		txMustExec(ctx, t, c, "BEGIN")
		return c, txMustOne(ctx, t, c, "SELECT pg_backend_pid()")
	}
	other := txConnect(ctx, t, p.AppURL(), nil)
	if _, err := txOne(ctx, other, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	viaProxy, proxyPID := inTx(p.AppURL())
	direct, directPID := inTx(txDirectURL())
	terminate(ctx, t, admin.PgConn(), []string{proxyPID, directPID})

	_, perr := txOne(ctx, viaProxy, "SELECT 1")
	_, derr := txOne(ctx, direct, "SELECT 1")
	t.Logf("inside a transaction, after pg_terminate_backend: proxy %v (SQLSTATE %s); direct %v (SQLSTATE %s)",
		perr, sqlState(perr), derr, sqlState(derr))
	if derr == nil {
		t.Fatal("the direct connection answered after its backend was terminated")
	}
	if perr == nil {
		t.Fatal("the client inside a transaction saw no error after its backend was terminated: its transaction's work is gone")
	}
	if sqlState(perr) != sqlState(derr) && sqlState(perr) != "08006" {
		t.Errorf("proxy SQLSTATE %q, want the server's %q (or 08006 naming the lost server connection)", sqlState(perr), sqlState(derr))
	}
	if !viaProxy.IsClosed() {
		// Its session survived: the next transaction runs on a live backend.
		if pid, err := txOne(ctx, viaProxy, "SELECT pg_backend_pid()"); err != nil || pid == proxyPID {
			t.Errorf("the same client's next transaction: pid %s, %v", pid, err)
		}
	}
	if pid, err := txOne(ctx, other, "SELECT pg_backend_pid()"); err != nil || pid == proxyPID {
		t.Errorf("another connected client: pid %s, %v", pid, err)
	}
	fresh := txConnect(ctx, t, p.AppURL(), nil)
	if _, err := fresh.Exec(ctx, "BEGIN; SELECT 1; COMMIT").ReadAll(); err != nil {
		t.Errorf("a new client's transaction: %v", err)
	}
	if code, _ := p.Health(t); code != 200 {
		t.Errorf("health %d, want 200", code)
	}
}

// TestUnpeekedPgbenchUnderTerminations: pgbench -S -M prepared (named
// statements: Bind/Execute/Sync per transaction, the proxy preparing them
// on each new backend) through the proxy with the peek skipped, while
// every pooled backend is ended by pg_terminate_backend again and again:
// the pool is paused (PAUSE waits for the transactions in flight, so every
// backend is idle in the pool), all its backends are terminated, and the
// pool resumed, so the waiting clients are handed dead backends. Each is
// found dead by its first reply and the transaction replayed on another
// one: pgbench reports no failure and aborts no client. (Directly, every
// terminated connection would abort its client.) A backend terminated
// while it runs a statement is not part of this test: once the server has
// answered part of a request, the client gets the FATAL, as directly.
func TestUnpeekedPgbenchUnderTerminations(t *testing.T) {
	ensurePgbenchTables(t)
	p := peekOffProxy(t, 4, WithEnv("PGSIDECAR_LOG__LEVEL", "warn"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := adminConn(t)
	con := connect(t, consoleURL(p, "app", "app"))
	replaysBefore := poolRetired(t, p, "error")
	bench := startPgbench(t, p.AppURL(), "-n", "-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", "3")
	killed, rounds := 0, 0
	for !bench.exited() {
		if err := consoleExec(ctx, con, "PAUSE app"); err != nil {
			t.Fatalf("PAUSE: %v", err)
		}
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))::int FROM pg_stat_activity
			WHERE usename = 'app' AND backend_type = 'client backend' AND state = 'idle'`).Scan(&n)
		if err != nil {
			t.Fatalf("pg_terminate_backend: %v", err)
		}
		if err := consoleExec(ctx, con, "RESUME app"); err != nil {
			t.Fatalf("RESUME: %v", err)
		}
		killed += n
		rounds++
		select {
		case <-bench.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
	out, _, err := bench.wait()
	m := processedRE.FindStringSubmatch(out)
	replays := poolRetired(t, p, "error") - replaysBefore
	t.Logf("%d rounds, %d backends terminated under pgbench; %v found dead under a client (replays); pgbench: %v\n%s",
		rounds, killed, replays, err, out)
	if err != nil || m == nil || m[1] == "0" {
		t.Fatalf("pgbench -S -M prepared under terminations: %v\n%s", err, out)
	}
	if fm := failedRE.FindStringSubmatch(out); fm != nil && fm[1] != "0" {
		t.Errorf("%s failed transactions, want 0", fm[1])
	}
	if abortedRE.MatchString(out) {
		t.Errorf("pgbench aborted a client")
	}
	if killed == 0 || replays == 0 {
		t.Errorf("%d terminations, %v replays: the run proved nothing", killed, replays)
	}
}

// TestTerminateRunawayStatement: pg_terminate_backend of the backend
// running a client's first statement of a transaction, a second or more
// into it, ends that statement with the server's FATAL 57P01, as
// directly, once: the replay (replay.go) is for backends that were dying
// when they were handed out, not for a statement an operator kills
// (before replayWindow, 17 terminations were needed: one per replay).
func TestTerminateRunawayStatement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	for _, via := range []struct{ name, url string }{{"direct", txDirectURL()}, {"proxy", txProxyURL(p)}} {
		c := txConnect(ctx, t, via.url, nil)
		txMustOne(ctx, t, c, "SELECT 1")
		marker := "runaway-" + via.name
		res := txRunAsync(ctx, c, "SELECT pg_sleep(20) /* "+marker+" */")
		pids := waitActive(ctx, t, admin, marker, 1, 10*time.Second)
		time.Sleep(1200 * time.Millisecond) // past replayWindow
		terminate(ctx, t, admin, pids)
		select {
		case r := <-res:
			var pe *pgconn.PgError
			if !errors.As(r.err, &pe) || pe.Code != "57P01" {
				t.Fatalf("%s: after one pg_terminate_backend: %v, want FATAL 57P01", via.name, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the statement went on after pg_terminate_backend (pids now %v)", via.name, activePIDs(ctx, t, admin, marker))
		}
	}
}
