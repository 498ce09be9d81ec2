package pool

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// holdConfig is a pool with hold_on_restart 10 s and the real 1-16 s
// backoff, so that the hold's 250 ms reconnect attempts stand apart from it.
func holdConfig(db *fakeDB, log *logRecorder) Config {
	cfg := testConfig(db, log)
	cfg.MaxSize = 1
	cfg.HoldOnRestart = 10 * time.Second
	cfg.AcquireTimeout = 30 * time.Second
	cfg.BackoffInitial = time.Second
	cfg.BackoffMax = 16 * time.Second
	return cfg
}

// loseDatabase plays a restart's first half on a serving pool: its one
// backend dies under its holder and connects are refused from now on.
func loseDatabase(t *testing.T, p *Pool, db *fakeDB) {
	t.Helper()
	c := mustAcquire(t, p)
	db.setDown(errRefused)
	c.Destroy("terminated by the shutdown")
	synctest.Wait()
}

// A pool that served and loses the database holds: Acquire waits past
// the first failed connect (no 08006), the waiters keep their FIFO order,
// the reconnect attempt runs every 250 ms instead of at 1, 2, 4 s, and the
// first waiter is served within one retry interval of the database's
// return. The state still says UNHEALTHY while it is away.
func TestHoldServesWaitersWhenTheDatabaseReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		log := newLogRecorder()
		p := startPool(t, holdConfig(db, log))
		loseDatabase(t, p, db)

		ws := queueWaiters(t, p, 3, "it must queue, not fail")
		if p.State() != StateUnhealthy {
			t.Fatalf("state %s with the database away, want UNHEALTHY", p.State())
		}
		if n := len(log.find("holding new transactions")); n != 1 {
			t.Fatalf("%d hold log lines, want 1", n)
		}

		_, _, before, _ := db.stats()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		_, _, after, _ := db.stats()
		// 8 attempts at 250 ms in 2 s; the 1, 2 s backoff would make 1 or 2.
		if attempts := after - before; attempts < 7 || attempts > 9 {
			t.Fatalf("%d connect attempts in 2 s of hold, want about 8 (every %v)", attempts, holdRetryInterval)
		}

		// A new caller during the hold queues as well, behind the others.
		ws = append(ws, acquireAsync(context.Background(), p))
		synctest.Wait()
		for i, w := range ws {
			select {
			case r := <-w:
				t.Fatalf("waiter %d finished during the hold: %v", i, r.err)
			default:
			}
		}

		back := time.Now()
		db.setDown(nil)
		first := <-ws[0]
		if first.err != nil {
			t.Fatalf("first waiter after the database came back: %v", first.err)
		}
		if waited := time.Since(back); waited > holdRetryInterval {
			t.Fatalf("first waiter served %v after the database came back, want within %v", waited, holdRetryInterval)
		}
		// FIFO: with max_size 1 the others follow one release at a time,
		// in the order they came.
		c := first.c
		for i, w := range ws[1:] {
			c.Release()
			r := receive(t, w, i+1)
			if r.err != nil {
				t.Fatalf("waiter %d: %v", i+1, r.err)
			}
			for j, other := range ws[i+2:] {
				select {
				case o := <-other:
					t.Fatalf("waiter %d served before waiter %d (err %v)", i+j+2, i+1, o.err)
				default:
				}
			}
			c = r.c
		}
		c.Release()
		waitFor(t, "HEALTHY", func() bool { return p.State() == StateHealthy })
		if s := p.Stats(); s.AcquireRejected != 0 || s.AcquireTimeouts != 0 {
			t.Fatalf("rejected %d, timeouts %d during a hold; want 0", s.AcquireRejected, s.AcquireTimeouts)
		}
		expectTransitions(t, log, "HEALTHY", "UNHEALTHY", "RECOVERING", "HEALTHY")
	})
}

// The hold lasts HoldOnRestart, not longer: with the database still away
// then, the waiters get 08006, new callers fail fast, and the reconnect attempt goes
// back to the backoff schedule.
func TestHoldRunsOutAfterHoldOnRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		log := newLogRecorder()
		cfg := holdConfig(db, log)
		p := startPool(t, cfg)
		start := time.Now()
		loseDatabase(t, p, db)

		w := acquireAsync(context.Background(), p)
		r := <-w
		held := time.Since(start)
		asAcquireError(t, r.err, pgwire.CodeConnectionFailure)
		if held < cfg.HoldOnRestart || held > cfg.HoldOnRestart+holdRetryInterval {
			t.Fatalf("waiter failed after %v, want at hold_on_restart %v", held, cfg.HoldOnRestart)
		}
		// The pool logs after it has failed the waiters (outside its
		// lock): let that write finish before reading the log.
		synctest.Wait()
		if n := len(log.find("still away after hold_on_restart")); n != 1 {
			t.Fatalf("%d log lines for the hold running out, want 1", n)
		}
		// Circuit open: at once, no wait.
		t0 := time.Now()
		_, err := p.Acquire(context.Background())
		asAcquireError(t, err, pgwire.CodeConnectionFailure)
		if d := time.Since(t0); d != 0 {
			t.Fatalf("Acquire after the hold took %v; the open circuit fails at once", d)
		}
		_, _, before, _ := db.stats()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if _, _, after, _ := db.stats(); after-before > 2 {
			t.Fatalf("%d connect attempts in 2 s after the hold, want the backoff's 1 or 2", after-before)
		}

		// The database back: the pool recovers at the next reconnect attempt (at most
		// BackoffMax later), and a later loss holds again (a new hold, a
		// new HoldOnRestart).
		db.setDown(nil)
		time.Sleep(cfg.BackoffMax)
		waitFor(t, "HEALTHY", func() bool { return p.State() == StateHealthy })
		loseDatabase(t, p, db)
		w = acquireAsync(context.Background(), p)
		time.Sleep(cfg.HoldOnRestart / 2)
		select {
		case r := <-w:
			t.Fatalf("second loss: waiter finished within the hold: %v", r.err)
		default:
		}
		db.setDown(nil)
		r = <-w
		if r.err != nil {
			t.Fatalf("second hold: %v", r.err)
		}
		r.c.Release()
	})
}

// No hold where it would only delay an error: a pool that never reached
// the database (a wrong URL must fail fast), and hold_on_restart 0.
func TestNoHoldWithoutServingOrWhenOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		db.setDown(errRefused)
		log := newLogRecorder()
		p := startPool(t, holdConfig(db, log))
		synctest.Wait()
		t0 := time.Now()
		_, err := p.Acquire(context.Background())
		asAcquireError(t, err, pgwire.CodeConnectionFailure)
		if d := time.Since(t0); d != 0 {
			t.Fatalf("never connected: Acquire took %v, want an error at once", d)
		}
		if n := len(log.find("holding new transactions")); n != 0 {
			t.Fatalf("a pool that never connected started a hold")
		}

		db2 := newFakeDB()
		cfg := holdConfig(db2, newLogRecorder())
		cfg.HoldOnRestart = 0
		p2 := startPool(t, cfg)
		loseDatabase(t, p2, db2)
		t0 = time.Now()
		_, err = p2.Acquire(context.Background())
		asAcquireError(t, err, pgwire.CodeConnectionFailure)
		if d := time.Since(t0); d != 0 {
			t.Fatalf("hold_on_restart 0: Acquire took %v, want an error at once", d)
		}
	})
}

// PAUSE holds new transactions in the FIFO queue: past AcquireTimeout
// without an error, and at RESUME they are served in the order they came.
func TestPauseQueuesFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 1
		cfg.AcquireTimeout = time.Second
		p := startPool(t, cfg)
		<-p.Pause()
		var ws []<-chan acquireResult
		for range 5 {
			ws = append(ws, acquireAsync(context.Background(), p))
			synctest.Wait()
		}
		time.Sleep(5 * cfg.AcquireTimeout)
		synctest.Wait()
		if s := p.Stats(); s.Waiting != 5 || s.AcquireTimeouts != 0 {
			t.Fatalf("paused: waiting %d, timeouts %d; want 5, 0", s.Waiting, s.AcquireTimeouts)
		}
		p.Resume()
		for i, w := range ws {
			r := receive(t, w, i)
			if r.err != nil {
				t.Fatalf("waiter %d: %v", i, r.err)
			}
			for j, other := range ws[i+1:] {
				select {
				case o := <-other:
					t.Fatalf("waiter %d served before waiter %d (err %v)", i+1+j, i, o.err)
				default:
				}
			}
			r.c.Release()
		}
	})
}

// receive waits for waiter i's result; one that is not served within a
// second (fake time) was passed over.
func receive(t *testing.T, w <-chan acquireResult, i int) acquireResult {
	t.Helper()
	select {
	case r := <-w:
		return r
	case <-time.After(time.Second):
		t.Fatalf("waiter %d not served: another was served in its place", i)
		return acquireResult{}
	}
}
