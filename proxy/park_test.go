package proxy

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// testParkAfter is the parker's sweep interval in this package's tests:
// a client parks 10-20 ms after it went idle.
const testParkAfter = 10 * time.Millisecond

func parkFast(c *Config) { c.parkAfter = testParkAfter }

// waitParked waits until n clients are parked.
func (e *fakeEnv) waitParked(t testing.TB, n int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d parked clients", n), func() bool { return e.srv.Stats().ClientsParked == n })
}

// TestParkedClientWakes: an idle client parks (no goroutine reads it),
// then its next query wakes it and is answered; parking again and waking
// again works the same, and the client's prepared statement outlives the
// parks. A client that closes while parked is gone from the clients and
// the parked count.
func TestParkedClientWakes(t *testing.T) {
	script := beScript{
		queryResult("SELECT 1", "SELECT 1", 'I', "1"),
		queryResult("SELECT 2", "SELECT 1", 'I', "2"),
		queryResult("SELECT 3", "SELECT 1", 'I', "3"),
	}
	e := startFake(t, fakeOpts{config: parkFast}, script)
	needParking(t, e)
	rc := e.dialRaw(t)
	for i := 1; i <= 3; i++ {
		e.waitParked(t, 1)
		rc.query(t, fmt.Sprintf("SELECT %d", i))
		rows, errResp, status := rc.readResult(t)
		if errResp != nil || len(rows) != 1 || rows[0] != fmt.Sprint(i) || status != 'I' {
			t.Fatalf("query %d after a park: rows %v, error %v, status %c", i, rows, errResp, status)
		}
	}
	e.waitParked(t, 1)
	if e.srv.cancels.lookup(rc.pid, rc.secret) == nil || e.pool.Stats().Clients != 1 {
		t.Fatal("a parked client's cancel key or pool gauge is gone")
	}
	rc.conn.Close()
	// Everything connEnd gives back, given back once: the clients, the
	// parked count, the cancel key, the pool's gauge, the slot.
	waitFor(t, "the parked client to leave", func() bool {
		st := e.srv.Stats()
		return st.ClientsTotal == 0 && st.ClientsParked == 0 && len(e.srv.Clients()) == 0 &&
			e.srv.cancels.lookup(rc.pid, rc.secret) == nil && e.pool.Stats().Clients == 0 && e.srv.slots.Load() == 0
	})
	time.Sleep(5 * testParkAfter) // nothing is given back twice
	if st := e.srv.Stats(); st.ClientsTotal != 0 || st.ClientsParked != 0 || e.pool.Stats().Clients != 0 || e.srv.slots.Load() != 0 {
		t.Fatalf("after the parked client left: %+v, pool clients %d, slots %d", st, e.pool.Stats().Clients, e.srv.slots.Load())
	}
}

// needParking skips the test where clients cannot park (no epoll) and
// waits for e's parker to run (Serve starts it).
func needParking(t testing.TB, e *fakeEnv) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("idle clients park on Linux only (epoll)")
	}
	waitFor(t, "the parker to run", func() bool { return parkingSupported(e.srv) })
}

// parkingSupported reports whether s could open its epoll set.
func parkingSupported(s *Server) bool {
	s.park.mu.Lock()
	defer s.park.mu.Unlock()
	return s.park.on
}

// TestParkedClientsWokenByServer: the wake-ups that do not come from the
// client reach parked clients: closeWith (a timeout, KILL), Shutdown's
// drain (57P01) and Close, each exactly once.
func TestParkedClientsWokenByServer(t *testing.T) {
	t.Run("closeWith", func(t *testing.T) {
		e := startFake(t, fakeOpts{config: parkFast}, beScript{queryResult("SELECT 1", "SELECT 1", 'I', "1")})
		needParking(t, e)
		rc := e.dialRaw(t)
		rc.query(t, "SELECT 1")
		rc.readResult(t)
		e.waitParked(t, 1)
		n, err := e.srv.Kill("")
		if err != nil || n != 1 {
			t.Fatalf("Kill: %d, %v", n, err)
		}
		if code := rc.readFatal(t); code != "57P01" {
			t.Fatalf("a parked client told to go: %q, want 57P01", code)
		}
		waitFor(t, "the client to leave", func() bool { return e.srv.Stats().ClientsTotal == 0 })
	})
	t.Run("Shutdown", func(t *testing.T) {
		e := startFake(t, fakeOpts{config: parkFast}, beScript{})
		needParking(t, e)
		var rcs []*rawClient
		for range 3 {
			rcs = append(rcs, e.dialRaw(t))
		}
		e.waitParked(t, 3)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		for i, rc := range rcs {
			if code := rc.readFatal(t); code != "57P01" {
				t.Fatalf("client %d at the drain: %q, want 57P01", i, code)
			}
		}
		if st := e.srv.Stats(); st.ClientsParked != 0 || st.ClientsTotal != 0 {
			t.Fatalf("after Shutdown: %+v", st)
		}
	})
	t.Run("Close", func(t *testing.T) {
		e := startFake(t, fakeOpts{config: parkFast}, beScript{})
		needParking(t, e)
		for range 3 {
			e.dialRaw(t)
		}
		e.waitParked(t, 3)
		e.srv.Close() // waits for the parked clients; goleak checks the goroutines
		if st := e.srv.Stats(); st.ClientsParked != 0 || st.ClientsTotal != 0 {
			t.Fatalf("after Close: %+v", st)
		}
	})
}

// TestManyParkedClientsWakeAtOnce: parked clients all sending at once
// are all woken and all answered.
func TestManyParkedClientsWakeAtOnce(t *testing.T) {
	const n = 200
	script := beScript{}
	for range n {
		script = append(script, queryResult("SELECT 1", "SELECT 1", 'I', "1"))
	}
	e := startFake(t, fakeOpts{config: func(c *Config) {
		parkFast(c)
		c.MaxClientConn, c.MaxStartupConn = n+10, n+10
	}}, script)
	needParking(t, e)
	var rcs []*rawClient
	for range n {
		rcs = append(rcs, e.dialRaw(t))
	}
	e.waitParked(t, n)
	for _, rc := range rcs {
		rc.query(t, "SELECT 1")
	}
	for i, rc := range rcs {
		rows, errResp, _ := rc.readResult(t)
		if errResp != nil || len(rows) != 1 || rows[0] != "1" {
			t.Fatalf("client %d: rows %v, error %v", i, rows, errResp)
		}
	}
}

// readFatal reads up to the ErrorResponse a client gets before it is
// closed and returns its code.
func (rc *rawClient) readFatal(t testing.TB) string {
	t.Helper()
	for {
		if m, ok := rc.receive(t).(*pgproto3.ErrorResponse); ok {
			return m.Code
		}
	}
}

// TestParkAllocatesNothing: parking a client and taking it back out of
// the epoll set allocate nothing (unparking then only starts its
// goroutine).
func TestParkAllocatesNothing(t *testing.T) {
	e := startFake(t, fakeOpts{config: parkFast}, beScript{})
	needParking(t, e)
	_, sock := tcpPair(t)
	// Not in the server's clients: the sweep never looks at it, and the
	// peer never writes, so the parker never wakes it.
	c := &clientConn{srv: e.srv, conn: sock, sock: sock, policy: ModeTransaction.policy(), log: e.srv.log, exchange: exchange{txStatus: 'I'}}
	if c.idle.open(c.conn, c.sock) { // as readClient sets it up
		c.idle.read = c.readIdle
		c.park.setUp(c.idle.raw, &e.srv.park.rt, c.conn)
	}
	if !c.park.can {
		t.Fatal("a plain TCP client in transaction mode cannot park")
	}
	p := &e.srv.park
	cycle := func() {
		c.loop.bufCache(c.srv).lendReadBuffer(&c.in) // as a woken reader has
		if !c.tryPark(false) {
			t.Fatal("an idle client did not park")
		}
		p.mu.Lock()
		p.takeLocked(c)
		p.mu.Unlock()
	}
	cycle() // the map's first entry
	if allocs := testing.AllocsPerRun(100, cycle); allocs != 0 {
		t.Fatalf("%.1f allocations per park and unpark, want 0", allocs)
	}
}

// TestHalfMessageNeverParks: a client that sent part of a message is not
// idle: it is not parked however long the rest takes, and the message is
// answered once whole.
func TestHalfMessageNeverParks(t *testing.T) {
	e := startFake(t, fakeOpts{config: parkFast}, beScript{queryResult("SELECT 1", "SELECT 1", 'I', "1")})
	needParking(t, e)
	rc := e.dialRaw(t)
	e.waitParked(t, 1)
	msg := append([]byte{'Q', 0, 0, 0, 13}, "SELECT 1\x00"...)
	if _, err := rc.conn.Write(msg[:3]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client woken by its first bytes", func() bool { return e.srv.Stats().ClientsParked == 0 })
	time.Sleep(10 * testParkAfter) // several sweeps
	if n := e.srv.Stats().ClientsParked; n != 0 {
		t.Fatalf("a client in the middle of a message was parked (%d parked)", n)
	}
	if _, err := rc.conn.Write(msg[3:]); err != nil {
		t.Fatal(err)
	}
	if rows, errResp, _ := rc.readResult(t); errResp != nil || len(rows) != 1 || rows[0] != "1" {
		t.Fatalf("the message completed: rows %v, error %v", rows, errResp)
	}
	e.waitParked(t, 1) // idle again
}

// TestParkedClientEndedByBackendReader: a backend reader whose write to
// the client fails ends the client's connection (clientGone) without
// owning its socket: the client may have parked meanwhile (its backend
// was released just before that write, replyAndRelease). The client must
// still leave. A close there freed the parked socket's descriptor under
// the parker: epoll forgot it, nothing reported the end, and the client
// stayed parked, holding its max_client_conn slot, until the proxy
// stopped (which then logged that it could not give the socket back).
func TestParkedClientEndedByBackendReader(t *testing.T) {
	e, _, _ := echoLoopEnv(t, 1, false)
	rc := e.dialRaw(t)
	rc.mustQuery(t, "SELECT 1", "1")
	e.waitParked(t, 1)
	c := e.onlyClient(t)
	// What the backend reader does when its write to the client fails.
	c.clientGone(syscall.ECONNRESET, false)
	waitFor(t, "the client to leave", func() bool {
		st := e.srv.Stats()
		return st.ClientsParked == 0 && st.ClientsTotal == 0
	})
	rc.conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
	if _, err := rc.conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client's connection is still open")
	}
}
