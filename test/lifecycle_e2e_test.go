package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
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

// rawClient is a client that logs in through pgconn and then speaks the
// protocol by hand on the socket, so a test can misbehave the way a dying
// application does: stop mid-message, mid-COPY, or close without Terminate.
type rawClient struct {
	pc   *pgconn.PgConn
	conn net.Conn
	fe   *pgproto3.Frontend
}

// dialRaw logs in to url and returns the client ready for raw messages.
func dialRaw(t *testing.T, url string) *rawClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(url), err)
	}
	// pgconn may still have a background read in flight from the login
	// (its write-read deadlock guard), which would swallow the first reply
	// the test reads raw: SyncConn stops it.
	if err := pc.SyncConn(ctx); err != nil {
		t.Fatalf("sync %s: %v", redact(url), err)
	}
	conn := pc.Conn()
	r := &rawClient{pc: pc, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	t.Cleanup(func() { _ = conn.Close() })
	return r
}

// encodeMsgs encodes msgs back to back, for a test that writes them
// itself (split, interleaved with other bytes, or all at once).
func encodeMsgs(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatalf("encode %T: %v", m, err)
		}
	}
	return buf
}

// send encodes and writes msgs in one write.
func (r *rawClient) send(t *testing.T, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	r.write(t, encodeMsgs(t, msgs...))
}

func (r *rawClient) write(t *testing.T, b []byte) {
	t.Helper()
	_ = r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.conn.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// query sends one simple Query and reads up to its ReadyForQuery. It
// returns the text of every DataRow's fields and the transaction status.
func (r *rawClient) query(t *testing.T, sql string) (rows [][]string, status byte) {
	t.Helper()
	r.send(t, &pgproto3.Query{String: sql})
	for {
		msg := r.receive(t)
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			var row []string
			for _, v := range m.Values {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s %s", sql, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return rows, m.TxStatus
		}
	}
}

// receiveUntil reads messages until one of type T arrives.
func receiveUntil[T pgproto3.BackendMessage](t *testing.T, r *rawClient) T {
	t.Helper()
	for {
		msg := r.receive(t)
		if m, ok := msg.(T); ok {
			return m
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("unexpected error %s: %s", e.Code, e.Message)
		}
	}
}

func (r *rawClient) receive(t *testing.T) pgproto3.BackendMessage {
	t.Helper()
	_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := r.fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return msg
}

// vanish closes the socket abruptly: no Terminate, and a TCP RST rather
// than a FIN, as when a client process is killed or its host goes away.
func (r *rawClient) vanish(t *testing.T) {
	t.Helper()
	if tc, ok := r.conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	if err := r.conn.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// halfQuery is the start of a Query message that announces 1000 bytes and
// delivers 24.
func halfQuery() []byte {
	b := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], 1000)
	return append(b, "SELECT 'never finished'"...)
}

// TestClientVanishes: with a pool of one backend, a client that disappears
// mid-transaction, mid-message or mid-COPY leaves no trace: the next client
// gets a clean session (no transaction, no transaction-local setting, no
// temp table, no lock held) and the pool stays healthy.
func TestClientVanishes(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
	if _, err := runPsql(t, pg.URL("app", "app", "app"), "-c", `
		DROP TABLE IF EXISTS e2e_vanish, e2e_vanish_copy;
		CREATE TABLE e2e_vanish(id int PRIMARY KEY, v int);
		INSERT INTO e2e_vanish VALUES (1, 0);
		CREATE TABLE e2e_vanish_copy(x int)`); err != nil {
		t.Fatalf("setup: %v", err)
	}

	inTransaction := func(t *testing.T, a *rawClient) {
		rows, status := a.query(t, `BEGIN;
			SET LOCAL statement_timeout = '123s';
			CREATE TEMP TABLE e2e_vanish_tmp(x int);
			SELECT id FROM e2e_vanish WHERE id = 1 FOR UPDATE;
			SELECT txid_current(), pg_backend_pid()`)
		if status != 'T' || len(rows) != 2 {
			t.Fatalf("setup transaction: status %q rows %v", status, rows)
		}
		t.Logf("vanishing client's backend pid %s, xid %s", rows[1][1], rows[1][0])
	}
	for _, tc := range []struct {
		name   string
		before func(t *testing.T, a *rawClient)
	}{
		{"mid-transaction", inTransaction},
		{"mid-message in a transaction", func(t *testing.T, a *rawClient) {
			inTransaction(t, a)
			a.write(t, halfQuery())
		}},
		{"mid-message outside a transaction", func(t *testing.T, a *rawClient) {
			a.write(t, halfQuery())
		}},
		{"mid-COPY FROM STDIN", func(t *testing.T, a *rawClient) {
			a.send(t, &pgproto3.Query{String: "COPY e2e_vanish_copy FROM STDIN"})
			receiveUntil[*pgproto3.CopyInResponse](t, a)
			a.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n3\n")}, &pgproto3.CopyData{Data: []byte("4\n5\n")})
			// and half of one more CopyData
			a.write(t, []byte{'d', 0, 0, 0, 100, '6', '\n'})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := dialRaw(t, p.AppURL())
			tc.before(t, a)
			// Let the proxy relay what was sent before the socket dies.
			time.Sleep(100 * time.Millisecond)
			a.vanish(t)
			checkCleanSession(t, p)
		})
	}
	waitClientsGone(t, p, 5*time.Second)
	pools := statsPools(p.Stats(t))
	if len(pools) != 1 || str(pools[0], "state") != "HEALTHY" {
		t.Fatalf("pools after the vanishing clients: %v", pools)
	}
}

// checkCleanSession connects a new client through p (pool of one) and
// checks that it is not inherited anything from the vanished one.
func checkCleanSession(t *testing.T, p *Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b := connect(t, p.AppURL()).PgConn()
	res, err := b.Exec(ctx, `SELECT txid_current_if_assigned() IS NULL,
		current_setting('statement_timeout'),
		to_regclass('pg_temp.e2e_vanish_tmp') IS NULL,
		(SELECT count(*) FROM e2e_vanish_copy),
		pg_backend_pid()`).ReadAll()
	if err != nil {
		t.Fatalf("next client's first query: %v (SQLSTATE %s)", err, sqlState(err))
	}
	row := res[0].Rows[0]
	got := fmt.Sprintf("no xid=%s statement_timeout=%s no temp table=%s copied rows=%s",
		row[0], row[1], row[2], row[3])
	want := "no xid=t statement_timeout=0 no temp table=t copied rows=0"
	if got != want || b.TxStatus() != 'I' {
		t.Fatalf("next client (backend pid %s) sees %q, status %q; want %q, status 'I'", row[4], got, b.TxStatus(), want)
	}
	t.Logf("next client got backend pid %s", row[4])

	// No lock left behind: another session can update the row at once.
	admin := adminConn(t)
	if _, err := admin.Exec(ctx, "SET lock_timeout = '3s'"); err != nil {
		t.Fatal(err)
	}
	direct := connect(t, pg.URL("app", "app", "app"))
	if _, err := direct.Exec(ctx, "SET lock_timeout = '3s'"); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Exec(ctx, "UPDATE e2e_vanish SET v = v + 1 WHERE id = 1"); err != nil {
		t.Fatalf("row lock still held after the client vanished: %v (SQLSTATE %s)", err, sqlState(err))
	}
	var locks, idleInTx int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
		WHERE c.relname IN ('e2e_vanish', 'e2e_vanish_copy')`).Scan(&locks); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = 'app' AND state LIKE 'idle in transaction%'`).Scan(&idleInTx); err != nil {
		t.Fatal(err)
	}
	if locks != 0 || idleInTx != 0 {
		t.Fatalf("after the client vanished: %d locks on the test tables, %d backends idle in transaction", locks, idleInTx)
	}
}

// TestClientsReturnToZero: /stats counts clients while they are connected
// and returns to zero clients and zero busy backends once they have all
// left, whether they said goodbye, vanished, or were mid-transaction.
func TestClientsReturnToZero(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "5"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 30
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		c, err := pgx.Connect(ctx, p.AppURL())
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns[i] = c
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	// Three clients hold transactions open; one more vanishes inside one.
	for _, c := range conns[:3] {
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
	}
	raw := dialRaw(t, p.AppURL())
	raw.query(t, "BEGIN; SELECT 1")
	if got := clientCount(t, p.Stats(t)); got != n+1 {
		t.Fatalf("/stats clients_total = %v with %d clients connected", got, n+1)
	}
	raw.vanish(t)
	for _, c := range conns {
		if err := c.Close(ctx); err != nil {
			t.Fatalf("close: %v", err)
		}
	}
	waitClientsGone(t, p, 5*time.Second)
}

// TestDatabaseRestart stops the shared cluster under a running proxy:
// /health turns 503 with the pool UNHEALTHY and queries fail fast; after
// the cluster starts again /health returns to 200 HEALTHY and queries work,
// on a client that stayed connected and on new ones, without restarting
// the proxy. It must not run in parallel with other tests.
func TestDatabaseRestart(t *testing.T) {
	p := StartProxy(t,
		// Fail fast while the database is down: no hold (hold_e2e_test.go
		// covers the hold).
		WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", "0"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF", "200ms"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF_MAX", "1s"),
		WithEnv("PGSIDECAR_POOL__CONNECT_TIMEOUT", "2s"))
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	stayer := connect(t, p.AppURL())
	if _, err := stayer.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	waitHealth(t, p, 15*time.Second, 200, "HEALTHY")

	if err := pg.Stop(); err != nil {
		t.Fatalf("stop cluster: %v", err)
	}
	stoppedAt := time.Now()
	// Try like an application would while the database is down: each
	// try is a new client running one query. They must fail, and fast
	// once the pool knows the upstream is down (not after acquire_timeout).
	var tryErrs []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		start := time.Now()
		err := oneQuery(ctx, p.AppURL())
		took := time.Since(start)
		if err == nil {
			t.Fatalf("a query through the proxy succeeded while the database was stopped")
		}
		if len(tryErrs) < 3 {
			tryErrs = append(tryErrs, fmt.Sprintf("%v after %v", err, took.Round(time.Millisecond)))
		}
		code, body, herr := p.FetchHealth()
		if herr == nil && code == 503 && anyPoolState(body, "UNHEALTHY") {
			if took > 6*time.Second {
				t.Errorf("a query while UNHEALTHY took %v to fail; want fast failure", took)
			}
			t.Logf("UNHEALTHY %v after the stop; errors of the tries: %s", time.Since(stoppedAt).Round(time.Millisecond), strings.Join(tryErrs, "; "))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health did not report 503 UNHEALTHY within 30s of the stop; last: %d %v %v; tries: %s",
				code, body, herr, strings.Join(tryErrs, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Fail fast while the circuit is open.
	start := time.Now()
	err := oneQuery(ctx, p.AppURL())
	if err == nil {
		t.Fatal("query succeeded while the database was stopped")
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("query while UNHEALTHY took %v to fail (%v); want fast failure", took, err)
	}
	t.Logf("query while UNHEALTHY: %v (SQLSTATE %s) after %v", err, sqlState(err), time.Since(start).Round(time.Millisecond))

	if err := pg.Start(); err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	startedAt := time.Now()
	waitHealth(t, p, 30*time.Second, 200, "HEALTHY")
	t.Logf("HEALTHY %v after the start", time.Since(startedAt).Round(time.Millisecond))
	if err := oneQuery(ctx, p.AppURL()); err != nil {
		t.Fatalf("new client after the restart: %v", err)
	}
	var n int
	if err := stayer.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("client connected across the restart: %d %v", n, err)
	}
}

// oneQuery connects a new client to url and runs one query, bounded by 10s.
func oneQuery(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		return fmt.Errorf("query: unexpected result %v", res)
	}
	return nil
}

// waitHealth polls /health until it answers code and every pool is in
// state, or fails the test after timeout.
func waitHealth(t *testing.T, p *Proxy, timeout time.Duration, code int, state string) {
	t.Helper()
	var (
		gotCode int
		body    map[string]any
		err     error
	)
	deadline := time.Now().Add(timeout)
	for {
		gotCode, body, err = p.FetchHealth()
		if err == nil && gotCode == code && allPoolsState(body, state) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health not %d with pools %s after %v; last: %d %v %v", code, state, timeout, gotCode, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func anyPoolState(body map[string]any, state string) bool {
	for _, pl := range statsPools(body) {
		if str(pl, "state") == state {
			return true
		}
	}
	return false
}

func allPoolsState(body map[string]any, state string) bool {
	pools := statsPools(body)
	for _, pl := range pools {
		if str(pl, "state") != state {
			return false
		}
	}
	return len(pools) > 0
}

// TestSIGTERMDrain: on SIGTERM the proxy refuses new clients and reports
// 503, closes an idle client with 57P01, lets a client inside a transaction
// finish it, and exits 0 within shutdown_timeout.
func TestSIGTERMDrain(t *testing.T) {
	const shutdownTimeout = 10 * time.Second
	p := StartProxy(t, WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", shutdownTimeout.String()))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	var wg sync.WaitGroup
	// Cancel first, so the transaction goroutine below ends, then wait for it.
	defer func() { cancel(); wg.Wait() }()

	idle := dialRaw(t, p.AppURL())
	if rows, _ := idle.query(t, "SELECT 1"); len(rows) != 1 {
		t.Fatalf("idle client: %v", rows)
	}
	busy := connect(t, p.AppURL()).PgConn()
	if _, err := busy.Exec(ctx, "BEGIN; CREATE TEMP TABLE drain(x int) ON COMMIT DROP").ReadAll(); err != nil {
		t.Fatalf("BEGIN: %v", err)
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, err := busy.Exec(ctx, "INSERT INTO drain SELECT 1 FROM pg_sleep(2); SELECT count(*) FROM drain").ReadAll()
		if err != nil {
			done <- result{err: fmt.Errorf("sleep: %w", err)}
			return
		}
		if _, err := busy.Exec(ctx, "COMMIT").ReadAll(); err != nil {
			done <- result{err: fmt.Errorf("COMMIT: %w", err)}
			return
		}
		done <- result{out: string(res[1].Rows[0][0])}
	}()
	admin := adminConn(t)
	waitFor(t, 5*time.Second, "the pg_sleep to be running", func() bool {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE state = 'active' AND query LIKE 'INSERT INTO drain%'`).Scan(&n)
		return err == nil && n == 1
	})

	p.Signal(syscall.SIGTERM)
	signalled := time.Now()

	waitFor(t, 2*time.Second, "/health to answer 503 while draining", func() bool {
		code, _, err := p.FetchHealth()
		return err == nil && code == 503
	})
	if err := oneQuery(ctx, p.AppURL()); err == nil {
		t.Fatal("a new client could connect and query after SIGTERM")
	} else {
		t.Logf("new client after SIGTERM: %v", err)
	}

	// The idle client is told why it is being closed.
	_ = idle.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	msg, err := idle.fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "57P01" {
		t.Fatalf("idle client after SIGTERM got %#v, %v; want ErrorResponse 57P01", msg, err)
	}

	select {
	case r := <-done:
		if r.err != nil || r.out != "1" {
			t.Fatalf("the transaction in flight at SIGTERM: %q %v; want it to finish", r.out, r.err)
		}
	case <-time.After(shutdownTimeout):
		t.Fatalf("the transaction in flight at SIGTERM did not finish within %v", shutdownTimeout)
	}
	code, err := p.Wait(shutdownTimeout + 2*time.Second)
	if err != nil || code != 0 {
		t.Fatalf("proxy exit after SIGTERM: code %d, %v", code, err)
	}
	if took := time.Since(signalled); took > shutdownTimeout {
		t.Fatalf("proxy took %v to exit after SIGTERM; shutdown_timeout is %v", took, shutdownTimeout)
	}
	t.Logf("proxy exited 0, %v after SIGTERM", time.Since(signalled).Round(time.Millisecond))
	if err := busy.Close(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("close the drained client: %v", err)
	}
}
