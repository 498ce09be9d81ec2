package e2e

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// drainLogTime returns the time of the proxy's "draining:" log line: the
// proxy sets its drain state before it writes that line, so no transaction
// may start on the server after it (beyond the latency of one request
// already forwarded).
func drainLogTime(t *testing.T, p *Proxy) time.Time {
	t.Helper()
	for _, l := range p.Logs.JSONLines() {
		if strings.HasPrefix(str(l, "msg"), "draining:") {
			at, err := time.Parse(time.RFC3339Nano, str(l, "time"))
			if err != nil {
				t.Fatalf("drain log line time %q: %v", str(l, "time"), err)
			}
			return at
		}
	}
	t.Fatal("the proxy never logged that it was draining")
	return time.Time{}
}

// expectShutdownRefusal connects a new client during a drain and checks
// that it is refused with 57P03 "the proxy is shutting down".
func expectShutdownRefusal(ctx context.Context, t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, url)
	if err == nil {
		c.Close(ctx)
		t.Fatal("a new client could log in during the drain")
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P03" || !strings.Contains(pe.Message, "the proxy is shutting down") {
		t.Fatalf("a new client during the drain got %v; want FATAL 57P03 \"the proxy is shutting down\"", err)
	}
}

// expectRefused checks that nothing listens on addr any more.
func expectRefused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after the drain", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect to %s after the drain: %v; want connection refused", addr, err)
	}
}

// receiveFatal reads from r until an ErrorResponse and checks it is FATAL
// with code; a connection closed without one fails the test.
func receiveFatal(t *testing.T, r *rawClient, code string, within time.Duration) *pgproto3.ErrorResponse {
	t.Helper()
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("waiting for FATAL %s: %v (a bare close)", code, err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Severity != "FATAL" || e.Code != code {
				t.Fatalf("got %s %s %q; want FATAL %s", e.Severity, e.Code, e.Message, code)
			}
			return e
		}
	}
}

// drainLoopResult is how one busy client's loop ended.
type drainLoopResult struct {
	commits int
	where   string // "begin", "insert" or "commit": the step that failed
	err     error
}

// drainLoop runs transactions (BEGIN; INSERT; COMMIT, three round trips)
// on conn until one fails or 20 s pass, recording each in table with its
// start time now().
func drainLoop(ctx context.Context, conn *pgx.Conn, table string, client int, commits *int64, mu *sync.Mutex) drainLoopResult {
	var r drainLoopResult
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			r.where, r.err = "begin", err
			return r
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+table+"(client, began, xid) VALUES ($1, now(), txid_current())", client); err != nil {
			r.where, r.err = "insert", err
			return r
		}
		if err := tx.Commit(ctx); err != nil {
			r.where, r.err = "commit", err
			return r
		}
		r.commits++
		mu.Lock()
		*commits++
		mu.Unlock()
	}
	r.err = errors.New("loop ended without the proxy closing the client")
	return r
}

// TestSIGTERMDrainUnderLoad drains a proxy, in each mode, while four
// clients run short transactions back to back and a fifth holds one open
// across the SIGTERM: the server sees no transaction begin after the drain
// started, the open transaction commits, every client is closed with
// 57P01 at a transaction boundary (never inside a transaction), a client
// connecting meanwhile gets 57P03, and the proxy exits 0 about when the
// open transaction ends, far before shutdown_timeout. Then the port
// refuses connections.
func TestSIGTERMDrainUnderLoad(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) { testDrainUnderLoad(t, mode) })
	}
}

func testDrainUnderLoad(t *testing.T, mode string) {
	const (
		shutdownTimeout = 10 * time.Second
		loopers         = 4
		holdAfterSignal = time.Second // the open transaction commits this long after SIGTERM
	)
	table := "e2e_drain_" + mode
	if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+
		"(id bigserial PRIMARY KEY, client int NOT NULL, began timestamptz NOT NULL, xid bigint NOT NULL)"); err != nil {
		t.Fatalf("setup: %v", err)
	}
	// Transaction mode: fewer backends than clients, so some clients wait
	// for one when the drain begins. Session mode needs one per client.
	maxSize := 3
	if mode == "session" {
		maxSize = loopers + 2
	}
	p := txStartProxy(t, mode, maxSize, WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", shutdownTimeout.String()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	open := dialRaw(t, p.AppURL())
	if _, status := open.query(t, "BEGIN; INSERT INTO "+table+"(client, began, xid) VALUES (-1, now(), txid_current())"); status != 'T' {
		t.Fatalf("open transaction: status %q", status)
	}

	conns := make([]*pgx.Conn, loopers)
	for i := range conns {
		conns[i] = connect(t, p.AppURL())
	}
	var (
		mu      sync.Mutex
		commits int64
		wg      sync.WaitGroup
		results = make([]drainLoopResult, loopers)
	)
	for i, c := range conns {
		wg.Add(1)
		go func() { // ends when the proxy closes the client, or after 20 s
			defer wg.Done()
			results[i] = drainLoop(ctx, c, table, i, &commits, &mu)
		}()
	}
	defer wg.Wait()
	waitFor(t, 10*time.Second, "the clients to be busy", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return commits >= 50
	})

	p.Signal(syscall.SIGTERM)
	signalled := time.Now()
	waitFor(t, 2*time.Second, "/health to answer 503 while draining", func() bool {
		code, _, err := p.FetchHealth()
		return err == nil && code == 503
	})
	if code, body := getProbe(t, p, "/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/readyz during the drain: %d %s; want 503 draining", code, body)
	}
	if code, body := getProbe(t, p, "/livez"); code != 200 {
		t.Errorf("/livez during the drain: %d %s; want 200 (the process serves until it exits)", code, body)
	}
	expectShutdownRefusal(ctx, t, p.AppURL())

	// The open transaction carries on after the signal and commits.
	time.Sleep(holdAfterSignal - time.Since(signalled))
	if _, status := open.query(t, "INSERT INTO "+table+"(client, began, xid) VALUES (-1, now(), txid_current())"); status != 'T' {
		t.Fatalf("INSERT in the open transaction after SIGTERM: status %q", status)
	}
	if _, status := open.query(t, "COMMIT"); status != 'I' {
		t.Fatalf("COMMIT after SIGTERM: status %q", status)
	}
	committedAt := time.Now()
	receiveFatal(t, open, "57P01", 5*time.Second)

	wg.Wait()
	for i, r := range results {
		if r.where != "begin" || sqlState(r.err) != "57P01" {
			t.Errorf("busy client %d (%d commits) ended at %q with %v; want 57P01 at BEGIN (a transaction boundary)", i, r.commits, r.where, r.err)
		}
	}
	code, err := p.Wait(shutdownTimeout)
	exited := time.Since(signalled)
	if err != nil || code != 0 {
		t.Fatalf("proxy exit after SIGTERM: code %d, %v", code, err)
	}
	if exited > shutdownTimeout/2 {
		t.Errorf("the drain took %v; want about the open transaction's %v, far below shutdown_timeout %v", exited, holdAfterSignal, shutdownTimeout)
	}
	expectRefused(t, p.Addr)

	// The server's view: which transactions began when.
	drainAt := drainLogTime(t, p)
	admin := connect(t, pg.AdminURLDB(txAppDB))
	var total, after, late, openRows int
	var lastBegan time.Time
	if err := admin.QueryRow(ctx, `SELECT count(*),
			count(*) FILTER (WHERE began > $1),
			count(*) FILTER (WHERE began > $1::timestamptz + interval '100 ms'),
			count(*) FILTER (WHERE client = -1),
			max(began) FILTER (WHERE client >= 0)
		FROM `+table, drainAt).Scan(&total, &after, &late, &openRows, &lastBegan); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	acked := commits
	mu.Unlock()
	t.Logf("%s mode: %d transactions committed by the busy clients (%d acknowledged); last one began %v after the drain started; "+
		"%d began after the drain log line (forwarded before it), %d more than 100ms after; drain took %v (open transaction committed %v after SIGTERM)",
		mode, total-openRows, acked, lastBegan.Sub(drainAt).Round(time.Microsecond), after, late,
		exited.Round(time.Millisecond), committedAt.Sub(signalled).Round(time.Millisecond))
	if late != 0 {
		t.Errorf("%d transactions began on the server more than 100ms after the drain started", late)
	}
	if int64(total-openRows) != acked {
		t.Errorf("%d rows from the busy clients on the server, %d commits acknowledged", total-openRows, acked)
	}
	if openRows != 2 {
		t.Errorf("the transaction open across SIGTERM left %d rows; want its 2 committed", openRows)
	}
	for i := range loopers {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE client = $1", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != results[i].commits {
			t.Errorf("busy client %d: %d rows on the server, %d commits acknowledged", i, n, results[i].commits)
		}
	}
}

// TestSIGTERMDrainDeadline: clients still inside a transaction when
// shutdown_timeout runs out, one idle in it and one running a long query,
// are told FATAL 57P01 (not just disconnected); their transactions are
// rolled back and their backends end (the running query is cancelled),
// and the proxy exits 0 right after the timeout.
func TestSIGTERMDrainDeadline(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) { testDrainDeadline(t, mode) })
	}
}

func testDrainDeadline(t *testing.T, mode string) {
	const shutdownTimeout = 2 * time.Second
	table := "e2e_drain_deadline_" + mode
	if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(client int)"); err != nil {
		t.Fatalf("setup: %v", err)
	}
	p := txStartProxy(t, mode, 4, WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", shutdownTimeout.String()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	idle := dialRaw(t, p.AppURL())
	rows, status := idle.query(t, "BEGIN; INSERT INTO "+table+" VALUES (1); SELECT pg_backend_pid()")
	if status != 'T' || len(rows) != 1 {
		t.Fatalf("idle client: %v %q", rows, status)
	}
	idlePID := rows[0][0]
	sleeper := dialRaw(t, p.AppURL())
	rows, status = sleeper.query(t, "BEGIN; INSERT INTO "+table+" VALUES (2); SELECT pg_backend_pid()")
	if status != 'T' || len(rows) != 1 {
		t.Fatalf("sleeping client: %v %q", rows, status)
	}
	sleeperPID := rows[0][0]
	sleeper.send(t, &pgproto3.Query{String: "SELECT pg_sleep(60)"})
	admin := connect(t, pg.AdminURLDB(txAppDB))
	waitFor(t, 5*time.Second, "the pg_sleep to run", func() bool {
		var n int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", sleeperPID).Scan(&n)
		return err == nil && n == 1
	})

	p.Signal(syscall.SIGTERM)
	signalled := time.Now()
	for _, c := range []struct {
		name string
		r    *rawClient
	}{{"idle in transaction", idle}, {"running pg_sleep", sleeper}} {
		e := receiveFatal(t, c.r, "57P01", shutdownTimeout+5*time.Second)
		took := time.Since(signalled)
		t.Logf("client %s: FATAL 57P01 %q %v after SIGTERM", c.name, e.Message, took.Round(time.Millisecond))
		if took < shutdownTimeout-100*time.Millisecond {
			t.Errorf("client %s was closed %v after SIGTERM, before shutdown_timeout %v", c.name, took, shutdownTimeout)
		}
	}
	code, err := p.Wait(10 * time.Second)
	exited := time.Since(signalled)
	if err != nil || code != 0 {
		t.Fatalf("proxy exit: code %d, %v", code, err)
	}
	t.Logf("proxy exited 0 %v after SIGTERM (shutdown_timeout %v)", exited.Round(time.Millisecond), shutdownTimeout)
	if exited > shutdownTimeout+3*time.Second {
		t.Errorf("proxy took %v to exit; shutdown_timeout is %v", exited, shutdownTimeout)
	}
	expectRefused(t, p.Addr)

	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows of the transactions cut at the deadline: %d %v; want 0 (rolled back)", n, err)
	}
	waitFor(t, 5*time.Second, "the cut clients' backends to end", func() bool {
		var left int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid::text IN ($1, $2)", idlePID, sleeperPID).Scan(&left)
		return err == nil && left == 0
	})
	if t.Failed() {
		return
	}
	if !p.Logs.ContainsWithin("shutdown_timeout reached", 2*time.Second) {
		t.Error("the proxy did not log that shutdown_timeout was reached")
	}
}

// TestSIGTERMDrainPipelined: a request a client pipelines after SIGTERM
// behind one still running outside a transaction would start a new
// transaction once that one ends: the running one finishes and answers,
// the pipelined one is refused with 57P01 and never reaches the server.
func TestSIGTERMDrainPipelined(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			table := "e2e_drain_pipelined_" + mode
			if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(x int)"); err != nil {
				t.Fatalf("setup: %v", err)
			}
			p := txStartProxy(t, mode, 2)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			admin := connect(t, pg.AdminURLDB(txAppDB))

			c := dialRaw(t, p.AppURL())
			c.send(t, &pgproto3.Query{String: "SELECT 'slept' FROM pg_sleep(1)"})
			waitFor(t, 5*time.Second, "the pg_sleep to run", func() bool {
				var n int
				err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT ''slept''%'").Scan(&n)
				return err == nil && n == 1
			})
			p.Signal(syscall.SIGTERM)
			waitFor(t, 2*time.Second, "/health to answer 503 while draining", func() bool {
				code, _, err := p.FetchHealth()
				return err == nil && code == 503
			})
			c.send(t, &pgproto3.Query{String: "INSERT INTO " + table + " VALUES (1)"})

			vals, status := readyRows(t, c)
			if len(vals) != 1 || vals[0] != "slept" || status != 'I' {
				t.Fatalf("the query running at SIGTERM: %v %q; want it answered", vals, status)
			}
			receiveFatal(t, c, "57P01", 5*time.Second)
			if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
				t.Fatalf("proxy exit: %d %v", code, err)
			}
			var n int
			if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows inserted by the request pipelined after SIGTERM: %d %v; want 0", n, err)
			}
		})
	}
}
