package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Parked clients (issue 8, idle memory): a plain-TCP client idle for
// about a second in transaction mode waits without a goroutine of its own
// (proxy/park.go), and /stats counts it under clients_parked. These tests
// park clients (waiting for clients_parked) and check that everything a
// client can meet while idle reaches it, and behaves as it does over a
// direct connection.

// parkWait bounds the wait for clients to park: they park 0.5-1 s after
// going idle (proxy idleParkAfter), later on a loaded machine.
const parkWait = 10 * time.Second

// parkedClients reads clients_parked from /stats.
func parkedClients(t *testing.T, p *Proxy) int {
	t.Helper()
	return clientsStat(t, p, "clients_parked")
}

// waitParked waits until n clients are parked.
func waitParked(t *testing.T, p *Proxy, n int) {
	t.Helper()
	waitFor(t, parkWait, fmt.Sprintf("%d parked clients", n), func() bool { return parkedClients(t, p) == n })
}

// TestParkedClientsBehaveAsBefore: clients idle past the parking point
// then run statements exactly as a direct connection does: their
// prepared statements (protocol-level and pgx's statement cache) and the
// settings they SET survive parks, and so does a second park.
func TestParkedClientsBehaveAsBefore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)

	proxyPc := txConnect(ctx, t, txProxyURL(p), nil)
	directPc := txConnect(ctx, t, txDirectURL(), nil)
	proxyPgx := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
	directPgx := txConnectPgx(ctx, t, txDirectURL(), pgx.QueryExecModeCacheStatement)

	for _, c := range []*pgconn.PgConn{proxyPc, directPc} {
		if _, err := c.Prepare(ctx, "park_add", "SELECT $1::int + 1, current_setting('statement_timeout')", nil); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		txMustExec(ctx, t, c, "SET statement_timeout = '123s'")
	}
	// run returns what the client answers to each step, for comparing.
	run := func(pc *pgconn.PgConn, conn *pgx.Conn, round int) []string {
		t.Helper()
		var out []string
		rr := pc.ExecPrepared(ctx, "park_add", [][]byte{[]byte(strconv.Itoa(round))}, nil, nil).Read()
		if rr.Err != nil {
			t.Fatalf("round %d: ExecPrepared: %v", round, rr.Err)
		}
		for _, row := range rr.Rows {
			out = append(out, string(row[0])+"|"+string(row[1]))
		}
		rows, err := txSimple(ctx, pc, "SHOW statement_timeout; SELECT 'plain'")
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		out = append(out, rows...)
		var n int
		var s string
		if err := conn.QueryRow(ctx, "SELECT $1::int * 2, $2::text", round, "cached").Scan(&n, &s); err != nil {
			t.Fatalf("round %d: pgx cached statement: %v", round, err)
		}
		return append(out, fmt.Sprint(n, s))
	}
	run(proxyPc, proxyPgx, 0) // pgx prepares its cached statement
	run(directPc, directPgx, 0)
	for round := 1; round <= 2; round++ {
		waitParked(t, p, 2) // both proxy clients
		got, want := run(proxyPc, proxyPgx, round), run(directPc, directPgx, round)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("round %d after a park: through the proxy %q, directly %q", round, got, want)
		}
	}
}

// TestParkedClientGetsNotifications: a LISTENing client that is parked
// between transactions gets each notification as a direct listener does
// (same channel, payload and sender PID), without sending anything.
func TestParkedClientGetsNotifications(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	l := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeSimpleProtocol)
	d := txConnectPgx(ctx, t, txDirectURL(), pgx.QueryExecModeSimpleProtocol)
	sender := txConnect(ctx, t, txDirectURL(), nil)
	for _, c := range []*pgx.Conn{l, d} {
		if _, err := c.Exec(ctx, "LISTEN park_chan"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		waitParked(t, p, 1)
		txMustExec(ctx, t, sender, fmt.Sprintf("NOTIFY park_chan, 'n%d'", i))
		got, err := txNote(ctx, l, 5*time.Second)
		if err != nil {
			t.Fatalf("notification %d to a parked client: %v", i, err)
		}
		want, err := txNote(ctx, d, 5*time.Second)
		if err != nil {
			t.Fatalf("notification %d directly: %v", i, err)
		}
		if got != want {
			t.Errorf("notification %d: through the proxy %q, directly %q", i, got, want)
		}
	}
	// Still a working client after its notifications woke it.
	var v int
	if err := l.QueryRow(ctx, "SELECT 7").Scan(&v); err != nil || v != 7 {
		t.Fatalf("query after notifications: %d %v", v, err)
	}
}

// TestParkedClientTimeoutAndDrain: client_idle_timeout and a SIGTERM drain
// reach parked clients: FATAL 57P05 and 57P01, as for any idle client.
func TestParkedClientTimeoutAndDrain(t *testing.T) {
	t.Run("client_idle_timeout", func(t *testing.T) {
		// Long enough that the client parks (0.5-1 s) well before it.
		const limit = 3 * time.Second
		p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_POOL__CLIENT_IDLE_TIMEOUT", limit.String()))
		idle := dialRaw(t, p.AppURL())
		idle.query(t, "SELECT 1")
		start := time.Now()
		waitFor(t, limit, "the idle client to park before its client_idle_timeout", func() bool { return parkedClients(t, p) == 1 })
		receiveFatal(t, idle, "57P05", limit+5*time.Second)
		elapsedWithin(t, "the parked client was closed", time.Since(start), limit, limit+2*time.Second)
		waitFor(t, 5*time.Second, "the timed-out client gone", func() bool { return parkedClients(t, p) == 0 })
	})
	t.Run("SIGTERM", func(t *testing.T) {
		p := txStartProxy(t, "transaction", 2)
		var rcs []*rawClient
		for range 3 {
			rc := dialRaw(t, p.AppURL())
			rc.query(t, "SELECT 1")
			rcs = append(rcs, rc)
		}
		waitParked(t, p, 3)
		p.Signal(syscall.SIGTERM)
		for i, rc := range rcs {
			e := receiveFatal(t, rc, "57P01", 5*time.Second)
			t.Logf("parked client %d: FATAL %s %q", i, e.Code, e.Message)
		}
		if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
			t.Fatalf("proxy exit: code %d, %v", code, err)
		}
	})
}

// TestParkedClientLeavesAndCancels: a cancel request for a parked client
// changes nothing (the client goes on working); a client that disconnects
// while parked is gone from SHOW CLIENTS and /stats.
func TestParkedClientLeavesAndCancels(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	con := connect(t, consoleURL(p, "app", "app"))
	app := txConnect(ctx, t, txProxyURL(p), nil)
	txMustExec(ctx, t, app, "SELECT 1")
	gone := dialRaw(t, p.AppURL())
	gone.query(t, "SELECT 1")
	waitParked(t, p, 2)
	if _, rows := consoleRows(ctx, t, con, "SHOW CLIENTS"); len(rows) != 2 {
		t.Fatalf("SHOW CLIENTS with two parked clients: %v", rows)
	}

	if err := app.CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	if v := txMustOne(ctx, t, app, "SELECT 'after cancel'"); v != "after cancel" {
		t.Fatalf("after a cancel request while parked: %q", v)
	}

	waitParked(t, p, 2)
	gone.vanish(t)
	waitFor(t, 5*time.Second, "the client that left while parked to be gone", func() bool {
		clients, _ := p.Stats(t)["clients"].(map[string]any)
		total, _ := num(clients, "clients_total")
		parked, _ := num(clients, "clients_parked")
		_, rows := consoleRows(ctx, t, con, "SHOW CLIENTS")
		return total == 1 && parked == 1 && len(rows) == 1
	})
	if v := txMustOne(ctx, t, app, "SELECT 'still here'"); v != "still here" {
		t.Fatalf("the other client: %q", v)
	}
}

// TestParkedClientsWakeTogether: many parked clients all sending at once
// are all woken and all answered (a bounded count, bounded in time).
func TestParkedClientsWakeTogether(t *testing.T) {
	const n, dialers = 1500, 16
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 4,
		WithEnv("PGSIDECAR_AUTH__METHOD", "trust"),
		WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", strconv.Itoa(n+10)),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	conns := make([]*pgconn.PgConn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range dialers {
		wg.Add(1)
		go func() { // ends when next is closed
			defer wg.Done()
			for i := range next {
				c, err := pgconn.Connect(ctx, p.AppURL())
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				txClosePgconn(c)
			}
		}
	})
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	waitParked(t, p, n)

	start := make(chan struct{})
	for i, c := range conns {
		wg.Add(1)
		go func() { // ends when its query is answered (bounded by ctx)
			defer wg.Done()
			<-start
			got, err := txOne(ctx, c, fmt.Sprintf("SELECT %d", i))
			if err != nil || got != strconv.Itoa(i) {
				errs <- fmt.Errorf("client %d: %q, %v", i, got, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d parked clients woken at once got no right answer", failed, n)
	}
}
