package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Attacks on the proxy's lifecycle and limits: drains, reloads and admin
// commands while clients wait for a saturated pool, timeouts on clients
// the event loop serves, and connect floods.

// alWaiters logs in n raw clients through p, each parked after a first
// query, so that the event loop reads their next request.
func alWaiters(t *testing.T, p *Proxy, n int) []*rawClient {
	t.Helper()
	rs := make([]*rawClient, n)
	for i := range rs {
		rs[i] = dialRaw(t, txProxyURL(p))
		rs[i].query(t, "SELECT 1")
	}
	return rs
}

// TestDrainEndsEveryWait: SIGTERM while requests wait for a backend of a
// saturated pool (one backend, held by an open transaction) ends every
// wait at once with FATAL 57P01, as the README says ("a client waiting for
// a backend gets 57P01 instead of one"), wherever the request waits: in
// the event loop's own queue (its first 100 ms), or on a goroutine in the
// pool's queue after that, or in the queue of a paused pool. None of the
// waiting requests runs; the open transaction commits and its client gets
// 57P01 at its end; the proxy exits 0 right after, far before
// shutdown_timeout and acquire_timeout.
func TestDrainEndsEveryWait(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // how long the requests wait before SIGTERM
		pause bool
	}{
		{"loop queue", 0, false},
		{"pool queue", 500 * time.Millisecond, false},
		{"paused pool", 500 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const waiters = 6
			table := "e2e_al_drainwait"
			if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(i int)"); err != nil {
				t.Fatalf("setup: %v", err)
			}
			p := txStartProxy(t, "transaction", 1,
				WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", "20s"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			holder := dialRaw(t, txProxyURL(p))
			rs := alWaiters(t, p, waiters)
			if _, status := holder.query(t, "BEGIN; INSERT INTO "+table+" VALUES (-1)"); status != 'T' {
				t.Fatalf("holder: status %q", status)
			}
			if tc.pause {
				con := connect(t, consoleURL(p, "app", "app"))
				paused := make(chan error, 1)
				go func() { paused <- consoleExec(ctx, con, "PAUSE app") }() // returns at the holder's COMMIT, or ctx's end
				t.Cleanup(func() { cancel(); <-paused })
				waitFor(t, 5*time.Second, "the pool paused", func() bool { return p.Logs.Contains("pool paused") })
			}
			for i, r := range rs {
				r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO %s VALUES (%d)", table, i)})
			}
			waitFor(t, 10*time.Second, "every request waiting", func() bool {
				return clientsStat(t, p, "clients_waiting") == waiters
			})
			time.Sleep(tc.after)
			p.Signal(syscall.SIGTERM)
			signalled := time.Now()
			for i, r := range rs {
				e := receiveFatal(t, r, "57P01", 15*time.Second)
				if took := time.Since(signalled); took > 3*time.Second {
					t.Errorf("waiter %d got 57P01 %v after SIGTERM (%q): it waited for the backend instead", i, took.Round(time.Millisecond), e.Message)
				}
			}
			if _, status := holder.query(t, "COMMIT"); status != 'I' {
				t.Fatalf("COMMIT: status %q", status)
			}
			receiveFatal(t, holder, "57P01", 5*time.Second)
			if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
				t.Fatalf("proxy exit: %d %v", code, err)
			}
			if took := time.Since(signalled); took > 10*time.Second {
				t.Errorf("the drain took %v", took)
			}
			admin := connect(t, pg.AdminURLDB(txAppDB))
			var n int
			if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE i >= 0").Scan(&n); err != nil || n != 0 {
				t.Errorf("waiting requests that ran after SIGTERM: %d %v; want 0", n, err)
			}
		})
	}
}

// TestReloadResizesUnderWaiters: SIGHUP changes pool.max_size while
// requests wait for the saturated pool. Grown, the waiting requests are
// served by the new backends at once, without waiting for the transaction
// that holds the only old one; shrunk while every backend is held, the
// surplus backends close as their transactions end, the pool settles at
// the new size with every later request served, and the backends left
// are clean. acquire_timeout lowered by the same reload applies to
// requests that wait after it: 53300 with the new value in the message.
func TestReloadResizesUnderWaiters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	write := func(maxSize int, acquireTimeout string) {
		t.Helper()
		yaml := fmt.Sprintf("pool:\n  mode: transaction\n  min_size: 1\n  max_size: %d\n  acquire_timeout: %s\n", maxSize, acquireTimeout)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(1, "20s")
	p := StartProxy(t, WithArgs("-config", path))
	reloads := 0
	reload := func() {
		t.Helper()
		reloads++
		p.Signal(syscall.SIGHUP)
		waitFor(t, 5*time.Second, "the reload", func() bool {
			return p.Logs.Count("configuration reloaded") >= reloads
		})
	}

	const waiters = 6
	holder := dialRaw(t, txProxyURL(p))
	rs := alWaiters(t, p, waiters)
	if _, status := holder.query(t, "BEGIN; SELECT 1"); status != 'T' {
		t.Fatalf("holder: status %q", status)
	}
	for i, r := range rs {
		r.send(t, &pgproto3.Query{String: fmt.Sprintf("SELECT %d", i)})
	}
	waitFor(t, 10*time.Second, "every request waiting", func() bool {
		return clientsStat(t, p, "clients_waiting") == waiters
	})
	time.Sleep(300 * time.Millisecond) // past the event loop's queue: in the pool's

	write(4, "20s")
	reload()
	for i, r := range rs {
		vals, status := readyRows(t, r)
		if len(vals) != 1 || vals[0] != fmt.Sprint(i) || status != 'I' {
			t.Fatalf("waiter %d after the pool grew: %v %q", i, vals, status)
		}
	}
	// Every backend held by an open transaction, then the pool shrinks.
	for _, r := range rs[:3] {
		if _, status := r.query(t, "BEGIN; SELECT 1"); status != 'T' {
			t.Fatalf("BEGIN: %q", status)
		}
	}
	waitFor(t, 10*time.Second, "four backends held", func() bool { return poolStat(t, p, "active") == 4 })
	write(1, "1s")
	reload()
	late := rs[3]
	late.send(t, &pgproto3.Query{String: "SELECT 'late'"})
	start := time.Now()
	if e, ok := receiveUntilAny(t, late).(*pgproto3.ErrorResponse); !ok || e.Code != "53300" || !strings.Contains(e.Message, "1s") {
		t.Fatalf("a request waiting past the reloaded acquire_timeout 1s got %#v; want 53300", e)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the reloaded acquire_timeout of 1s fired after %v", took)
	}
	receiveUntil[*pgproto3.ReadyForQuery](t, late)
	holder.query(t, "COMMIT")
	for _, r := range rs[:3] {
		r.query(t, "COMMIT")
	}
	waitFor(t, 10*time.Second, "the pool back at max_size 1", func() bool {
		return poolStat(t, p, "total") <= 1 && poolStat(t, p, "active") == 0
	})
	for i, r := range rs {
		if vals, status := r.query(t, fmt.Sprintf("SELECT %d, txid_current_if_assigned() IS NULL", i)); len(vals) != 1 || vals[0][0] != fmt.Sprint(i) || vals[0][1] != "t" || status != 'I' {
			t.Fatalf("client %d after the shrink: %v %q", i, vals, status)
		}
	}
	if n := poolStat(t, p, "total"); n > 1 {
		t.Errorf("%d backends open after max_size shrank to 1", n)
	}
	lgCleanBackends(ctx, t, p, 1)
}

// receiveUntilAny reads until an ErrorResponse or a ReadyForQuery.
func receiveUntilAny(t *testing.T, r *rawClient) pgproto3.BackendMessage {
	t.Helper()
	for {
		switch m := r.receive(t).(type) {
		case *pgproto3.ErrorResponse, *pgproto3.ReadyForQuery:
			return m
		}
	}
}

// TestKillEndsEveryWait: admin KILL while the pool's one backend is held
// by an open transaction and requests wait for it, some in the event
// loop's own queue and some, past its 100 ms, in the pool's queue, and
// one client is parked idle: every client gets FATAL 57P01 with KILL's
// message, none of the waiting requests runs, the open transaction is
// rolled back, and the pool then serves a new client on a clean backend
// with nothing left waiting or held.
func TestKillEndsEveryWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	table := "e2e_al_killwait"
	if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(i int)"); err != nil {
		t.Fatalf("setup: %v", err)
	}
	p := txStartProxy(t, "transaction", 1, WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))
	con := connect(t, consoleURL(p, "app", "app"))
	holder := dialRaw(t, txProxyURL(p))
	idle := dialRaw(t, txProxyURL(p))
	idle.query(t, "SELECT 1")
	rs := alWaiters(t, p, 6)
	if _, status := holder.query(t, "BEGIN; INSERT INTO "+table+" VALUES (-1)"); status != 'T' {
		t.Fatalf("holder: status %q", status)
	}
	for i, r := range rs[:3] {
		r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO %s VALUES (%d)", table, i)})
	}
	waitFor(t, 10*time.Second, "three requests waiting", func() bool { return clientsStat(t, p, "clients_waiting") == 3 })
	time.Sleep(300 * time.Millisecond) // those three wait in the pool's queue now
	for i, r := range rs[3:] {
		r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO %s VALUES (%d)", table, 3+i)})
	}
	waitFor(t, 10*time.Second, "six requests waiting", func() bool { return clientsStat(t, p, "clients_waiting") == 6 })
	start := time.Now()
	if err := consoleExec(ctx, con, "KILL app"); err != nil {
		t.Fatal(err)
	}
	for i, r := range append([]*rawClient{holder, idle}, rs...) {
		e := receiveFatal(t, r, "57P01", 10*time.Second)
		if !strings.Contains(e.Message, "KILL") {
			t.Errorf("client %d: FATAL 57P01 %q; want KILL's message", i, e.Message)
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("KILL took %v to reach every client", took)
	}
	waitFor(t, 10*time.Second, "no client left, none waiting, no backend held", func() bool {
		return clientsStat(t, p, "clients_total") == 0 && clientsStat(t, p, "clients_waiting") == 0 && poolStat(t, p, "active") == 0
	})
	admin := connect(t, pg.AdminURLDB(txAppDB))
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows after KILL: %d %v; want 0 (the open transaction rolled back, no waiting request run)", n, err)
	}
	lgCleanBackends(ctx, t, p, 1)
	lgLogLoop(t, p)
}

// alFlood is one hostile connection of TestSlowlorisLogins and what it
// does before it stalls.
type alFlood struct {
	kind string
	conn net.Conn
}

// alStartup is a StartupMessage for app/app, encoded.
func alStartup(t *testing.T) []byte {
	t.Helper()
	return encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": txAppUser, "database": txAppDB}})
}

// TestSlowlorisLogins: connections that stall their login (send nothing,
// half a startup packet, an SSLRequest and nothing after it, or a whole
// startup packet and no answer to the SCRAM challenge) below
// pool.max_startup_conn, in three rounds: a real client still logs in and
// runs a query meanwhile; each stalled connection is closed at
// pool.client_login_timeout (those stalled in authentication told FATAL
// 08006 as PostgreSQL's authentication_timeout does), never held; and
// after each round no connection counts as logging in and every
// max_client_conn slot is free again: max_client_conn real clients log in
// at once.
func TestSlowlorisLogins(t *testing.T) {
	const (
		maxClients   = 6
		loginTimeout = time.Second
	)
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MAX_STARTUP_CONN", "8"),
		WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", fmt.Sprint(maxClients)),
		WithEnv("PGSIDECAR_POOL__CLIENT_LOGIN_TIMEOUT", loginTimeout.String()),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	loggingIn := func() int { return clientsStat(t, p, "clients_logging_in") }
	waitFor(t, 5*time.Second, "no connection logging in", func() bool { return loggingIn() == 0 })
	startup := alStartup(t)

	for round := range 3 {
		var floods []alFlood
		dial := func(kind string, first []byte) net.Conn {
			c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if len(first) > 0 {
				if _, err := c.Write(first); err != nil {
					t.Fatal(err)
				}
			}
			floods = append(floods, alFlood{kind, c})
			return c
		}
		dial("silent", nil)
		dial("silent", nil)
		dial("half startup", startup[:len(startup)/2])
		dial("half startup", startup[:5])
		ssl := dial("SSLRequest, then nothing", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
		one := make([]byte, 1)
		_ = ssl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(ssl, one); err != nil || one[0] != 'N' {
			t.Fatalf("SSLRequest: %q %v; want N (tls.mode disable)", one, err)
		}
		for range 2 {
			c := dial("no answer to the SCRAM challenge", startup)
			fe := pgproto3.NewFrontend(c, c)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			msg, err := fe.Receive()
			if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
				t.Fatalf("after the startup packet: %#v %v; want AuthenticationSASL", msg, err)
			}
		}
		start := time.Now()
		waitFor(t, 5*time.Second, "the stalled connections counted", func() bool { return loggingIn() == len(floods) })
		// A real client logs in past them and works.
		real := connect(t, p.AppURL())
		if _, err := real.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("round %d: a real client under the limits: %v", round, err)
		}
		for _, f := range floods {
			_ = f.conn.SetReadDeadline(time.Now().Add(loginTimeout + 4*time.Second))
			b, err := io.ReadAll(f.conn)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("round %d, %s: still open %v after its login began: %v", round, f.kind, took.Round(time.Millisecond), err)
			}
			if took < loginTimeout-100*time.Millisecond {
				t.Errorf("round %d, %s: closed after %v, before client_login_timeout %v", round, f.kind, took, loginTimeout)
			}
			if strings.HasPrefix(f.kind, "no answer") && !strings.Contains(string(b), "C08006") {
				t.Errorf("round %d, %s: got %q; want FATAL 08006", round, f.kind, b)
			}
		}
		waitFor(t, 5*time.Second, "no connection logging in after the round", func() bool { return loggingIn() == 0 })
		// Every slot is free again: max_client_conn clients at once,
		// the real one included.
		full := []*pgx.Conn{real}
		for i := 1; i < maxClients; i++ {
			c := connect(t, p.AppURL())
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("round %d: client %d of max_client_conn %d: %v", round, i+1, maxClients, err)
			}
			full = append(full, c)
		}
		if _, err := pgconn.Connect(ctx, p.AppURL()); sqlState(err) != "53300" {
			t.Fatalf("round %d: a client past max_client_conn: %v; want 53300", round, err)
		}
		for _, c := range full {
			c.Close(ctx)
		}
		waitFor(t, 5*time.Second, "the round's clients gone", func() bool { return clientsStat(t, p, "clients_total") == 0 })
	}
}

// TestIdleTimeoutSparesQueuedRequests: pool.client_idle_timeout closes a
// client idle outside a transaction, never one whose request waits for a
// backend (README, "Client timeouts": a client waiting for a backend is
// under acquire_timeout, not these). The timeout here (60 ms) is shorter
// than the event loop's own queue (100 ms), so a request waiting there is
// seen by the sweeper for longer than the timeout: it must get its answer
// when the holder of the pool's one backend commits, and 57P05 only after
// that, once idle.
func TestIdleTimeoutSparesQueuedRequests(t *testing.T) {
	const idleTimeout = 60 * time.Millisecond
	p := txStartProxy(t, "transaction", 1,
		WithEnv("PGSIDECAR_POOL__CLIENT_IDLE_TIMEOUT", idleTimeout.String()),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))
	holder := dialRaw(t, txProxyURL(p))
	if _, status := holder.query(t, "BEGIN"); status != 'T' { // idle in a transaction: not client_idle_timeout's
		t.Fatalf("holder: %q", status)
	}
	const waiters = 3
	rs := make([]*rawClient, waiters)
	for i := range rs {
		// Each request right after the login (whose empty query, pgconn's
		// SyncConn, is answered without a backend and parks the client,
		// so the event loop reads the request): the client is never idle
		// as long as the timeout before it waits.
		rs[i] = dialRaw(t, txProxyURL(p))
		rs[i].send(t, &pgproto3.Query{String: fmt.Sprintf("SELECT 'waited %d'", i)})
	}
	time.Sleep(400 * time.Millisecond) // the requests wait in the loop's queue, then in the pool's
	holder.query(t, "COMMIT")
	for i, r := range rs {
		switch m := receiveUntilAny(t, r).(type) {
		case *pgproto3.ErrorResponse:
			t.Errorf("waiter %d: %s %s %q while its request waited for a backend; want its answer", i, m.Severity, m.Code, m.Message)
			continue
		}
		receiveFatal(t, r, "57P05", 5*time.Second) // idle after its answer: closed
	}
	receiveFatal(t, holder, "57P05", 5*time.Second)
	lgLogLoop(t, p)
}

// TestQueryTimeoutCancelsOnlyItsQuery: pool.query_timeout cancels, by a
// cancel request to the server, a slow query of clients the event loop
// serves, while other clients' fast queries run on the same two backends
// right before and after: every slow query gets 57014 naming the option,
// and no fast query is ever hit by a cancel meant for another (a cancel
// request sent late, once the backend went to the next client, would
// cancel that client's query instead).
func TestQueryTimeoutCancelsOnlyItsQuery(t *testing.T) {
	const (
		clients = 8
		rounds  = 12
	)
	p := txStartProxy(t, "transaction", 2,
		WithEnv("PGSIDECAR_POOL__QUERY_TIMEOUT", "100ms"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conns := make([]*pgconn.PgConn, clients)
	for i := range conns {
		conns[i] = txConnect(ctx, t, txProxyURL(p), nil)
	}
	var (
		mu             sync.Mutex
		slowOK, fastOK int
		problems       []string
		wg             sync.WaitGroup
	)
	deadline := time.Now().Add(30 * time.Second)
	for i, c := range conns {
		wg.Add(1)
		go func() { // ends after rounds rounds, or at deadline
			defer wg.Done()
			for r := 0; r < rounds && time.Now().Before(deadline); r++ {
				slow := (i+r)%2 == 0
				sql := fmt.Sprintf("SELECT %d", r)
				if slow {
					sql = "SELECT pg_sleep(0.4)"
				}
				_, err := c.Exec(ctx, sql).ReadAll()
				mu.Lock()
				switch {
				case slow && sqlState(err) == "57014" && strings.Contains(err.Error(), "query_timeout"):
					slowOK++
				case !slow && err == nil:
					fastOK++
				default:
					problems = append(problems, fmt.Sprintf("client %d round %d (slow %v): %v", i, r, slow, err))
				}
				mu.Unlock()
				if c.IsClosed() {
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d slow queries cancelled by query_timeout, %d fast ones answered", slowOK, fastOK)
	for _, pr := range problems {
		t.Error(pr)
	}
	if slowOK+fastOK != clients*rounds {
		t.Errorf("%d of %d queries ended as they should", slowOK+fastOK, clients*rounds)
	}
	lgCleanBackends(ctx, t, p, 2)
	lgLogLoop(t, p)
}

// TestDrainSaturatedWithCopy: SIGTERM while 20 clients run one-statement
// transactions through a pool of two backends (one of them held by a
// client in the middle of COPY FROM STDIN, so the rest wait for the other
// in the event loop's queue and the pool's), and one client is parked
// idle. The idle client and every busy client get 57P01 at a transaction
// boundary, every acknowledged row is there and no other; the COPY goes
// on after the signal, ends with its rows committed, then 57P01; the
// proxy exits 0. With a second SIGTERM while the COPY is still open
// instead, the proxy closes everything at once and exits 0, and the
// unfinished COPY leaves nothing behind: no row, no backend on the server.
func TestDrainSaturatedWithCopy(t *testing.T) {
	for _, second := range []bool{false, true} {
		name := "copy finishes"
		if second {
			name = "second SIGTERM"
		}
		t.Run(name, func(t *testing.T) { testDrainSaturatedWithCopy(t, second) })
	}
}

func testDrainSaturatedWithCopy(t *testing.T, second bool) {
	const loopers = 20
	table := "e2e_al_drainsat"
	if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(client int, n int)"); err != nil {
		t.Fatalf("setup: %v", err)
	}
	p := txStartProxy(t, "transaction", 2,
		WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", "15s"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := connect(t, pg.AdminURLDB(txAppDB))

	idle := dialRaw(t, txProxyURL(p))
	idle.query(t, "SELECT 1")
	cp := dialRaw(t, txProxyURL(p))
	cp.send(t, &pgproto3.Query{String: "COPY " + table + "(client, n) FROM STDIN"})
	receiveUntil[*pgproto3.CopyInResponse](t, cp)
	cp.send(t, &pgproto3.CopyData{Data: []byte("-1\t1\n")})

	conns := make([]*pgx.Conn, loopers)
	for i := range conns {
		conns[i] = connect(t, p.AppURL())
	}
	var (
		mu      sync.Mutex
		total   int
		acked   = make([]int, loopers)
		ends    = make([]error, loopers)
		wg      sync.WaitGroup
		started = time.Now()
	)
	for i, c := range conns {
		wg.Add(1)
		go func() { // ends at the first error, or after 5000 statements or 20 s
			defer wg.Done()
			for n := 0; n < 5000 && time.Since(started) < 20*time.Second; n++ {
				if _, err := c.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", i, n); err != nil {
					ends[i] = err
					return
				}
				mu.Lock()
				acked[i]++
				total++
				mu.Unlock()
			}
		}()
	}
	defer wg.Wait()
	waitFor(t, 10*time.Second, "the clients busy", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return total >= 100
	})
	waiting := clientsStat(t, p, "clients_waiting")
	p.Signal(syscall.SIGTERM)
	signalled := time.Now()
	receiveFatal(t, idle, "57P01", 5*time.Second)
	wg.Wait()
	for i, err := range ends {
		if sqlState(err) != "57P01" {
			t.Errorf("busy client %d (%d acknowledged) ended with %v; want 57P01", i, acked[i], err)
		}
	}
	t.Logf("%d statements acknowledged, %d clients waiting at SIGTERM; busy clients told 57P01 within %v",
		total, waiting, time.Since(signalled).Round(time.Millisecond))
	if took := time.Since(signalled); took > 5*time.Second {
		t.Errorf("the busy clients were told 57P01 %v after SIGTERM", took)
	}

	copyRows := 0
	if second {
		p.Signal(syscall.SIGTERM)
		_ = cp.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := cp.fe.Receive(); err != nil {
				break // closed at once (or told why first)
			}
		}
	} else {
		cp.send(t, &pgproto3.CopyData{Data: []byte("-1\t2\n")}, &pgproto3.CopyDone{})
		if cc := receiveUntil[*pgproto3.CommandComplete](t, cp); string(cc.CommandTag) != "COPY 2" {
			t.Errorf("COPY after SIGTERM: %q", cc.CommandTag)
		}
		if z := receiveUntil[*pgproto3.ReadyForQuery](t, cp); z.TxStatus != 'I' {
			t.Errorf("after the COPY: status %q", z.TxStatus)
		}
		receiveFatal(t, cp, "57P01", 5*time.Second)
		copyRows = 2
	}
	if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("proxy exit: %d %v", code, err)
	}
	t.Logf("proxy exited 0 %v after the first SIGTERM", time.Since(signalled).Round(time.Millisecond))
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE client = -1").Scan(&n); err != nil || n != copyRows {
		t.Errorf("COPY rows: %d %v; want %d", n, err, copyRows)
	}
	for i := range loopers {
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE client = $1", i).Scan(&n); err != nil || n != acked[i] {
			t.Errorf("busy client %d: %d rows, %d acknowledged (%v)", i, n, acked[i], err)
		}
	}
	waitFor(t, 10*time.Second, "no backend of the proxy left on the server", func() bool {
		var left int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND pid <> pg_backend_pid()", txAppDB, txAppUser).Scan(&left)
		return err == nil && left == 0
	})
}

// TestDrainWithStalledLogins: SIGTERM while connections stall their login
// (silent, half a startup packet, no answer to the SCRAM challenge; the
// login timeout far away) and an admin console session and a client
// inside a transaction are open: the stalled logins do not hold the drain
// up, and are not left hanging: once the transaction ends, those in
// authentication are told FATAL 57P03 and every one is closed; the proxy
// exits 0 right after the transaction, not at client_login_timeout or
// shutdown_timeout.
func TestDrainWithStalledLogins(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__CLIENT_LOGIN_TIMEOUT", "30s"),
		WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", "20s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	startup := alStartup(t)
	var stalled []alFlood
	for _, f := range []struct {
		kind  string
		first []byte
	}{{"silent", nil}, {"half startup", startup[:7]}, {"no answer to SCRAM", startup}, {"no answer to SCRAM", startup}} {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if len(f.first) > 0 {
			if _, err := c.Write(f.first); err != nil {
				t.Fatal(err)
			}
		}
		stalled = append(stalled, alFlood{f.kind, c})
	}
	con := connect(t, consoleURL(p, "app", "app"))
	if _, err := con.Exec(ctx, "SHOW VERSION"); err != nil {
		t.Fatal(err)
	}
	tx := dialRaw(t, p.AppURL())
	if _, status := tx.query(t, "BEGIN; SELECT 1"); status != 'T' {
		t.Fatalf("BEGIN: %q", status)
	}
	waitFor(t, 5*time.Second, "the stalled logins counted", func() bool { return clientsStat(t, p, "clients_logging_in") == len(stalled) })

	p.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	if _, status := tx.query(t, "COMMIT"); status != 'I' {
		t.Fatalf("COMMIT: %q", status)
	}
	committed := time.Now()
	receiveFatal(t, tx, "57P01", 5*time.Second)
	for _, f := range stalled {
		_ = f.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(f.conn)
		if err != nil {
			t.Errorf("%s: not closed by the drain: %v", f.kind, err)
			continue
		}
		if strings.HasPrefix(f.kind, "no answer") && !strings.Contains(string(b), "C57P03") {
			t.Errorf("%s: got %q before the close; want FATAL 57P03", f.kind, b)
		}
	}
	if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("proxy exit: %d %v", code, err)
	}
	if took := time.Since(committed); took > 5*time.Second {
		t.Errorf("the proxy exited %v after the last transaction ended", took)
	}
}

// TestCancelStormHitsOnlyItsClient: three clients cancel their own
// short queries at random moments (while the request waits in the event
// loop's queue or the pool's, runs, or has just been answered) while
// three others run quick queries on the same two backends: a cancelled
// client gets its answer or 57014, and never a wrong result; a bystander
// is never cancelled (a cancel forwarded to a backend its client no
// longer holds would cancel another client's query); the backends are
// clean after.
func TestCancelStormHitsOnlyItsClient(t *testing.T) {
	const rounds = 60
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu                  sync.Mutex
		cancelled, answered int
		problems            []string
		wg                  sync.WaitGroup
	)
	deadline := time.Now().Add(20 * time.Second)
	for i := range 6 {
		c := txConnect(ctx, t, txProxyURL(p), nil)
		canceller := i < 3
		wg.Add(1)
		go func() { // ends after rounds queries, or at deadline
			defer wg.Done()
			for r := 0; r < rounds && time.Now().Before(deadline); r++ {
				want := fmt.Sprintf("%d-%d", i, r)
				sql := fmt.Sprintf("SELECT '%s'", want)
				if canceller {
					sql = fmt.Sprintf("SELECT '%s' FROM pg_sleep(0.02)", want)
				}
				done := make(chan struct{})
				if canceller {
					go func() { // ends after its one cancel request
						defer close(done)
						time.Sleep(time.Duration((i*7+r*13)%40) * time.Millisecond)
						_ = c.CancelRequest(ctx)
					}()
				} else {
					close(done)
				}
				res, err := c.Exec(ctx, sql).ReadAll()
				<-done
				mu.Lock()
				switch {
				case err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == want:
					answered++
				case canceller && sqlState(err) == "57014":
					cancelled++
				default:
					problems = append(problems, fmt.Sprintf("client %d (canceller %v) round %d: %v %v", i, canceller, r, res, err))
				}
				mu.Unlock()
				if c.IsClosed() {
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d answered, %d cancelled", answered, cancelled)
	for _, pr := range problems {
		t.Error(pr)
	}
	if cancelled == 0 {
		t.Error("no query was cancelled: the storm cancelled nothing")
	}
	lgCleanBackends(ctx, t, p, 2)
	lgLogLoop(t, p)
}
