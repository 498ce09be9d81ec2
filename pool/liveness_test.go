package pool

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// idlePool starts a pool on a fakeDB with real sockets and leaves n idle
// backends in it (the first connect's one among them), returned coldest
// first. It runs inside a synctest bubble: time only moves when every
// goroutine waits, so nothing the maintainer does on a timer happens
// between two statements of the test.
func idlePool(t *testing.T, db *fakeDB, cfg Config, n int) (*Pool, []*fakeServer) {
	t.Helper()
	db.sockets = true
	p := startPool(t, cfg)
	conns := make([]Conn, n)
	for i := range conns {
		conns[i] = mustAcquire(t, p)
	}
	servers := make([]*fakeServer, n)
	for i, c := range conns {
		servers[i] = fake(c)
		c.Release()
	}
	if s := p.Stats(); s.Idle != n || s.Total != n {
		t.Fatalf("setup: idle %d total %d, want %d", s.Idle, s.Total, n)
	}
	return p, servers
}

// Issue 7, point 3: after pg_terminate_backend of every idle backend, an
// Acquire must discard all of them, however many, and connect; it used to
// hand over the 4th dead one. Half of them have sent the FATAL but not
// yet the FIN (a backend terminated a moment ago): the peek must catch a
// pending ErrorResponse as well as EOF.
func TestAcquireDiscardsEveryDeadIdleBackend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 8
		cfg.ValidateAfterIdle = time.Hour // the repro: used less than a second before, so no validation query
		p, servers := idlePool(t, db, cfg, 8)
		for i, s := range servers {
			s.terminate(t, i%2 == 0)
		}
		// No time passes in the bubble until Acquire blocks, so no tick
		// comes first; only a maintainer run already under way (poked by
		// a connect) may take some of them: Acquire must deal with the
		// rest.
		c := mustAcquire(t, p)
		defer c.Release()
		// A maintainer run that a connect's poke started may have found
		// some of them first and be closing them: let it finish.
		synctest.Wait()
		got := fake(c)
		for _, s := range servers {
			if got == s {
				t.Fatalf("handed out pid %d, which the server terminated", s.pid)
			}
			if !s.closed.Load() {
				t.Fatalf("terminated pid %d was not closed", s.pid)
			}
		}
		st := p.Stats()
		if st.Retired.Validation != 8 || st.Total != 1 || st.Idle != 0 || st.Active != 1 {
			t.Fatalf("after the acquire: retired %+v total %d idle %d active %d", st.Retired, st.Total, st.Idle, st.Active)
		}
		if st.State != StateHealthy {
			t.Fatalf("state %s (%s), want HEALTHY: the database was fine", st.State, st.StateReason)
		}
	})
}

// A dead backend among live ones: Acquire skips it and takes the next
// idle one instead of connecting.
func TestAcquireSkipsDeadTakesNextIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 3
		p, servers := idlePool(t, db, cfg, 3)
		servers[2].terminate(t, false) // the warmest: the one LIFO picks first
		_, _, before, _ := db.stats()
		c := mustAcquire(t, p)
		defer c.Release()
		if fake(c) != servers[1] {
			t.Fatalf("got pid %d, want the next warmest %d", fake(c).pid, servers[1].pid)
		}
		if _, _, after, _ := db.stats(); after != before {
			t.Fatalf("%d connects, want none: a live idle backend was there", after-before)
		}
	})
}

// Issue 7, point 3: the maintainer peeks idle sockets every tick, so a
// backend the server closed leaves the idle list without a client.
func TestMaintainerDropsBackendsTheServerClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 4
		cfg.IdleCheckInterval = 0 // the peek alone
		p, servers := idlePool(t, db, cfg, 4)
		servers[0].terminate(t, false) // idle_session_timeout: FATAL and FIN
		servers[3].terminate(t, true)  // FATAL only, FIN still on its way
		time.Sleep(maxTick)
		synctest.Wait()
		st := p.Stats()
		if st.Idle != 2 || st.Total != 2 || st.Retired.Validation != 2 {
			t.Fatalf("after a tick: idle %d total %d retired %+v, want the 2 dead ones gone", st.Idle, st.Total, st.Retired)
		}
		if !servers[0].closed.Load() || !servers[3].closed.Load() || servers[1].closed.Load() || servers[2].closed.Load() {
			t.Fatal("the wrong backends were closed")
		}
	})
}

// With min_size 0, a pool whose every idle backend the server closed
// connects once to learn whether the database is still there: after a
// shutdown the state must say so without a client.
func TestAllBackendsClosedByServerRevealsDownDatabase(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 2
		cfg.IdleCheckInterval = 0
		p, servers := idlePool(t, db, cfg, 2)
		db.setDown(errors.New("fake: connection refused"))
		for _, s := range servers {
			s.terminate(t, false) // a fast shutdown closes them all
		}
		time.Sleep(maxTick)
		synctest.Wait()
		if st := p.Stats(); st.State != StateUnhealthy || st.Total != 0 {
			t.Fatalf("state %s total %d after the server closed everything and refuses connects, want UNHEALTHY 0", st.State, st.Total)
		}
	})
}

// Issue 7, point 4: with no traffic, a database that stops answering
// (no FIN: a partition, a frozen host) makes the pool UNHEALTHY within
// idle_check_interval + connect_timeout, and Acquire fails fast. When
// it answers again the pool recovers on its own.
func TestIdleCheckFindsSilentDatabase(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		log := newLogRecorder()
		cfg := testConfig(db, log)
		cfg.MinSize = 2
		cfg.MaxSize = 3
		cfg.IdleCheckInterval = 5 * time.Second
		cfg.ConnectTimeout = 2 * time.Second
		cfg.BackoffInitial = time.Second
		cfg.BackoffMax = 2 * time.Second
		db.sockets = true
		p := startPool(t, cfg)
		waitFor(t, "min_size warm", func() bool { return p.Stats().Idle == 2 })
		c := mustAcquire(t, p)
		c.Release() // the last sign of life
		quietSince := time.Now()
		db.hang.Store(true)
		gate := make(chan struct{})
		db.setGate(gate) // connects hang too

		for p.State() != StateUnhealthy {
			if time.Since(quietSince) > time.Minute {
				t.Fatalf("still %s a minute after the database went silent", p.State())
			}
			time.Sleep(100 * time.Millisecond)
		}
		took := time.Since(quietSince)
		// The state changes under the pool's lock; the log line is written
		// after it (p.later). Let the checking goroutine finish first.
		synctest.Wait()
		if limit := cfg.IdleCheckInterval + cfg.ConnectTimeout + 100*time.Millisecond; took > limit {
			t.Fatalf("UNHEALTHY %v after the last sign of life, want within %v", took, limit)
		}
		if took < cfg.IdleCheckInterval {
			t.Fatalf("UNHEALTHY after %v, before any check was due", took)
		}
		st := p.Stats()
		if st.Idle != 0 || st.Validations != 1 || !strings.Contains(st.LastConnectError, "idle check") {
			t.Fatalf("after the failed check: %+v", st)
		}
		if len(log.find("idle check failed")) != 1 {
			t.Fatal("the failed idle check was not logged once")
		}
		start := time.Now()
		_, err := p.Acquire(context.Background())
		asAcquireError(t, err, pgwire.CodeConnectionFailure)
		if time.Since(start) > 0 {
			t.Fatalf("Acquire took %v while UNHEALTHY, want fail-fast", time.Since(start))
		}

		// The database answers again.
		db.hang.Store(false)
		close(gate)
		db.setGate(nil)
		waitFor(t, "recovery", func() bool { return p.State() == StateHealthy && p.Stats().Idle == 2 })
		c = mustAcquire(t, p)
		c.Release()
	})
}

// A connect that hangs on the silent database fails first and makes the
// pool DEGRADED (an idle backend is still open); the idle check must
// still run on that backend, or the pool would stay DEGRADED, and
// /readyz 200, for as long as the database is frozen.
func TestIdleCheckRunsWhileConnectsFail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MinSize = 1
		cfg.MaxSize = 3
		cfg.IdleCheckInterval = 5 * time.Second
		cfg.ConnectTimeout = 2 * time.Second
		cfg.BackoffInitial = time.Second
		cfg.BackoffMax = 2 * time.Second
		p := startPool(t, cfg)
		c := mustAcquire(t, p)
		c.Release()
		quietSince := time.Now()
		db.hang.Store(true)
		db.setGate(make(chan struct{})) // never opened: connects hang
		cfg.MinSize = 2
		p.Reconfigure(cfg) // a warm-up connect starts now and hangs
		time.Sleep(cfg.ConnectTimeout + 10*time.Millisecond)
		if st := p.State(); st != StateDegraded {
			t.Fatalf("state %s after the warm-up connect failed, want DEGRADED (an idle backend is open)", st)
		}
		for p.State() != StateUnhealthy {
			if time.Since(quietSince) > time.Minute {
				t.Fatalf("still %s a minute after the database went silent", p.State())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if took, limit := time.Since(quietSince), cfg.IdleCheckInterval+cfg.ConnectTimeout+100*time.Millisecond; took > limit {
			t.Fatalf("UNHEALTHY %v after the last sign of life, want within %v", took, limit)
		}
		db.hang.Store(false)
		db.setGate(nil)
	})
}

// The idle check runs every interval while nothing else shows the
// database alive, only then, and never keeps a backend from its max_idle
// retirement (it goes back with its idle time unchanged).
func TestIdleCheckOnlyWithoutTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 2
		cfg.IdleCheckInterval = time.Second
		p := startPool(t, cfg)
		a, b := mustAcquire(t, p), mustAcquire(t, p)
		a.Release()
		b.Release()
		base := p.Stats().Validations

		// Traffic every half interval: no check.
		for range 10 {
			time.Sleep(500 * time.Millisecond)
			c := mustAcquire(t, p)
			c.Release()
		}
		if n := p.Stats().Validations - base; n != 0 {
			t.Fatalf("%d idle checks under traffic, want 0", n)
		}
		// Quiet: one check per interval.
		time.Sleep(5*time.Second + 100*time.Millisecond)
		synctest.Wait()
		if n := p.Stats().Validations - base; n != 5 {
			t.Fatalf("%d idle checks in 5 quiet intervals, want 5", n)
		}
		st := p.Stats()
		if st.Idle != 2 || st.State != StateHealthy {
			t.Fatalf("after the checks: idle %d state %s", st.Idle, st.State)
		}

		// max_idle still retires them: the checks did not make them young.
		cfg.MaxIdle = 8 * time.Second
		p.Reconfigure(cfg)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if st := p.Stats(); st.Retired.Idle != 2 {
			t.Fatalf("retired %+v 8.6s after the last use with max_idle 8s, want both idle", st.Retired)
		}
	})
}

// A server error on the idle check (the backend was terminated while the
// query ran) loses that backend only: the database answered.
func TestIdleCheckServerErrorClosesOnlyThatBackend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 3
		cfg.IdleCheckInterval = time.Second
		p := startPool(t, cfg)
		a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
		coldest := fake(a)
		a.Release()
		b.Release()
		c.Release()
		db.mu.Lock()
		db.failExec = func(s *fakeServer) error {
			if s == coldest {
				return &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
			}
			return nil
		}
		db.mu.Unlock()
		time.Sleep(cfg.IdleCheckInterval + 10*time.Millisecond)
		synctest.Wait()
		st := p.Stats()
		if !coldest.closed.Load() || st.Idle != 2 || st.State != StateHealthy || st.Retired.Validation != 1 {
			t.Fatalf("after a server error on the check: closed %v idle %d state %s retired %+v",
				coldest.closed.Load(), st.Idle, st.State, st.Retired)
		}
	})
}

// idle_check_interval 0 runs no check; turning it on by Reconfigure
// (SIGHUP) takes effect at once.
func TestIdleCheckOffThenLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.IdleCheckInterval = 0
		p := startPool(t, cfg)
		c := mustAcquire(t, p)
		c.Release()
		time.Sleep(time.Minute)
		if n := p.Stats().Validations; n != 0 {
			t.Fatalf("%d checks with the idle check off", n)
		}
		cfg.IdleCheckInterval = 2 * time.Second
		p.Reconfigure(cfg)
		synctest.Wait()
		if n := p.Stats().Validations; n != 1 {
			t.Fatalf("%d checks right after turning it on a minute after the last use, want 1", n)
		}
	})
}

// Closing the pool while an idle check hangs ends the check and closes
// its backend (goleak in TestMain checks the goroutine is gone).
func TestCloseDuringIdleCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.IdleCheckInterval = time.Second
		cfg.ConnectTimeout = time.Hour
		p := startPool(t, cfg)
		c := mustAcquire(t, p)
		srv := fake(c)
		c.Release()
		db.hang.Store(true)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if srv.execs.Load() != 1 {
			t.Fatalf("%d execs, want the check in flight", srv.execs.Load())
		}
		p.Close()
		if !srv.closed.Load() {
			t.Fatal("the checked backend was not closed by Close")
		}
		if st := p.Stats(); st.Retired.Shutdown != 1 || st.Total != 0 {
			t.Fatalf("after Close: %+v", st)
		}
	})
}

// Issue 7, point 8: max_waiters bounds the clients waiting for a release,
// not those a connect will serve: a pool with room to open backends
// refuses nobody.
func TestMaxWaitersDoesNotRefuseWhileRoomToConnect(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 6
	cfg.MaxWaiters = 1
	p := startPool(t, cfg)
	first := mustAcquire(t, p) // the warm one
	gate := make(chan struct{})
	db.setGate(gate) // connects stay in flight: everyone else waits

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// 5 served by the 5 connects there is room for, 1 waits for a release.
	var results []<-chan acquireResult
	for i := range 6 {
		results = append(results, acquireAsync(ctx, p))
		waitFor(t, "waiter queued", waiting(p, i+1))
	}
	if s := p.Stats(); s.AcquireRejected != 0 {
		t.Fatalf("%d refused with room for 5 more backends and max_waiters 1", s.AcquireRejected)
	}
	// The 7th would be the second waiting for a release: refused.
	_, err := p.Acquire(ctx)
	asAcquireError(t, err, pgwire.CodeTooManyConnections)

	close(gate)
	db.setGate(nil)
	var got []Conn
	for range 5 {
		select {
		case r := <-results[len(got)]:
			if r.err != nil {
				t.Fatalf("waiter: %v", r.err)
			}
			got = append(got, r.c)
		case <-ctx.Done():
			t.Fatal("waiters not served by the connects")
		}
	}
	first.Release() // serves the 6th
	r := <-results[5]
	if r.err != nil {
		t.Fatalf("6th waiter: %v", r.err)
	}
	r.c.Release()
	for _, c := range got {
		c.Release()
	}
}

// peekSocket judges the socket, not the net.Conn's own state: a read
// deadline left in the past is no sign of a dead backend, while a closed
// net.Conn, EOF or pending bytes are.
func TestPeekSocket(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := peekSocket(a); err != nil {
		t.Fatalf("quiet socket: %v", err)
	}
	if err := a.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := peekSocket(a); err != nil {
		t.Fatalf("quiet socket with a read deadline in the past: %v", err)
	}
	if _, err := b.Write(fatalTerminated()); err != nil {
		t.Fatal(err)
	}
	if err := a.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := peekSocket(a); err == nil || !strings.Contains(err.Error(), "ErrorResponse") {
		t.Fatalf("pending FATAL: %v", err)
	}
	// The FATAL is still there for whoever reads next: peeking consumed nothing.
	buf := make([]byte, 1)
	if n, err := a.Read(buf); n != 1 || buf[0] != 'E' || err != nil {
		t.Fatalf("after the peek, read %d %q %v", n, buf[:n], err)
	}
	c, d, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := peekSocket(c); err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("peer closed: %v", err)
	}
	c.Close()
	if err := peekSocket(c); err == nil || !strings.Contains(err.Error(), "socket closed") {
		t.Fatalf("own conn closed: %v", err)
	}
	a.Close()
	if err := peekSocket(nil); err != nil {
		t.Fatalf("no socket: %v", err)
	}
}

// PeekAfterIdle: an Acquire peeks at the socket of a backend released at
// least that long ago, and trusts one released more recently (the proxy
// finds a dead one by its first reply and replays the request). 0 peeks
// on every Acquire. The warmest backend is terminated (FATAL and FIN) just
// before the Acquire, after idleFor of idle time: no bubble time passes
// between the two, so no maintainer tick sees it first.
func TestPeekAfterIdle(t *testing.T) {
	for _, tc := range []struct {
		name          string
		peekAfterIdle time.Duration
		idleFor       time.Duration
		peeked        bool
	}{
		{"within the delay: not peeked", time.Second, 0, false},
		{"just under the delay: not peeked", time.Second, time.Second - time.Millisecond, false},
		{"at the delay: peeked", time.Second, time.Second, true},
		{"past the delay: peeked", time.Second, 3 * time.Second, true},
		{"0 peeks on every acquire", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				db := newFakeDB()
				cfg := testConfig(db, newLogRecorder())
				cfg.MaxSize = 3
				cfg.PeekAfterIdle = tc.peekAfterIdle
				p, servers := idlePool(t, db, cfg, 3)
				time.Sleep(tc.idleFor)
				synctest.Wait()    // the maintainer is done with its tick
				dead := servers[2] // the warmest: the one LIFO picks first
				dead.terminate(t, false)
				c := mustAcquire(t, p)
				got := fake(c)
				st := p.Stats()
				if tc.peeked {
					defer c.Release()
					if got != servers[1] {
						t.Fatalf("got pid %d, want %d: the peek should have found pid %d dead", got.pid, servers[1].pid, dead.pid)
					}
					if st.Retired.Validation != 1 {
						t.Fatalf("retired %+v, want 1 by validation (the peek)", st.Retired)
					}
					return
				}
				if got != dead {
					t.Fatalf("got pid %d, want the warmest, pid %d, handed out without a peek", got.pid, dead.pid)
				}
				if st.Retired.Validation != 0 || dead.closed.Load() {
					t.Fatalf("retired %+v (closed %v), want nothing: no peek within peek_after_idle", st.Retired, dead.closed.Load())
				}
				// The proxy finds it dead by its first reply and destroys it.
				c.Destroy("dead before its first reply")
				c2 := mustAcquire(t, p)
				defer c2.Release()
				if fake(c2) != servers[1] {
					t.Fatalf("after the Destroy got pid %d, want %d", fake(c2).pid, servers[1].pid)
				}
			})
		})
	}
}
