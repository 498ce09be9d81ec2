package pool

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// The server refusing new backends with 53300 (a role's CONNECTION LIMIT
// reached by other sidecars) is backpressure: the pool keeps serving with
// what it holds, its waiters queue FIFO past the refusals without an
// error, it stays HEALTHY, it steps back up one connect at a time every
// capRetryInterval, and it grows back to MaxSize once the server has room.
func TestTooManyConnectionsIsBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		db.setLimit(2)
		log := newLogRecorder()
		cfg := testConfig(db, log)
		cfg.MaxSize = 5
		cfg.AcquireTimeout = 10 * time.Second
		cfg.BackoffInitial, cfg.BackoffMax = time.Second, 16*time.Second
		p := startPool(t, cfg)

		c1, c2 := mustAcquire(t, p), mustAcquire(t, p)
		ws := queueWaiters(t, p, 3, "a refusal must not fail it")
		_, _, refusedAt, _ := db.stats()
		if n := len(log.find("refused a new connection as too many")); n != 1 {
			t.Fatalf("%d backpressure log lines, want 1", n)
		}

		// Capped at 2: no connect until the cap's time is up, then one
		// connect at a time, every capRetryInterval.
		time.Sleep(capRetryInterval - time.Millisecond)
		synctest.Wait()
		if _, _, n, _ := db.stats(); n != refusedAt {
			t.Fatalf("%d connects within %v of the refusals, want none", n-refusedAt, capRetryInterval)
		}
		time.Sleep(4 * capRetryInterval)
		synctest.Wait()
		_, peak, n, peakConns := db.stats()
		if steps := n - refusedAt; steps < 3 || steps > 5 {
			t.Fatalf("%d connects in %v capped, want one per %v", steps, 4*capRetryInterval, capRetryInterval)
		}
		if peakConns > 3 || peak > 2 {
			t.Fatalf("peak %d connects at once, %d open; want the steps one at a time and 2 open", peakConns, peak)
		}
		if s := p.Stats(); s.State != StateHealthy || s.Waiting != 3 || s.AcquireRejected != 0 || s.AcquireTimeouts != 0 {
			t.Fatalf("capped: state %s, waiting %d, rejected %d, timeouts %d; want HEALTHY, 3, 0, 0",
				s.State, s.Waiting, s.AcquireRejected, s.AcquireTimeouts)
		}

		// FIFO for the backends it holds: each release serves the oldest.
		c1.Release()
		r0 := <-ws[0]
		if r0.err != nil {
			t.Fatal(r0.err)
		}
		for i, w := range ws[1:] {
			select {
			case r := <-w:
				t.Fatalf("waiter %d served before waiter 0 (err %v)", i+1, r.err)
			default:
			}
		}
		c2.Release()
		r1 := <-ws[1]
		if r1.err != nil {
			t.Fatal(r1.err)
		}

		// The server has room again: the next step succeeds, and the pool
		// grows back one connect at a time as far as it is asked to.
		db.setLimit(0)
		r2 := <-ws[2]
		if r2.err != nil {
			t.Fatalf("last waiter: %v", r2.err)
		}
		more := []Conn{r0.c, r1.c, r2.c}
		for range 2 {
			more = append(more, mustAcquire(t, p))
		}
		if s := p.Stats(); s.Total != 5 || s.State != StateHealthy {
			t.Fatalf("after the cap: total %d state %s, want 5 HEALTHY", s.Total, s.State)
		}
		for _, c := range more {
			c.Release()
		}
		expectTransitions(t, log, "HEALTHY")
		if s := p.Stats(); s.AcquireRejected != 0 || s.AcquireTimeouts != 0 {
			t.Fatalf("rejected %d, timeouts %d; want 0", s.AcquireRejected, s.AcquireTimeouts)
		}
	})
}

// A pool that holds nothing when the server is full (another replica has
// the whole limit) waits for room as well: its first connects are refused,
// its callers queue without an error (no circuit, no backoff), and the
// first step after the limit frees serves them.
func TestTooManyConnectionsWithNothingHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		db.setLimit(2)
		other1, _ := db.connect(context.Background()) // the other replica
		other2, _ := db.connect(context.Background())
		log := newLogRecorder()
		cfg := testConfig(db, log)
		cfg.MaxSize = 3
		cfg.AcquireTimeout = 10 * time.Second
		p := startPool(t, cfg)
		ws := []<-chan acquireResult{acquireAsync(context.Background(), p)}
		synctest.Wait()
		ws = append(ws, acquireAsync(context.Background(), p))
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if s := p.Stats(); s.Waiting != 2 || s.State == StateUnhealthy {
			t.Fatalf("full server: waiting %d, state %s; want 2 waiting, not UNHEALTHY", s.Waiting, s.State)
		}
		other1.Close(context.Background())
		r := <-ws[0]
		if r.err != nil {
			t.Fatalf("first waiter after room freed: %v", r.err)
		}
		other2.Close(context.Background())
		r2 := <-ws[1]
		if r2.err != nil {
			t.Fatalf("second waiter: %v", r2.err)
		}
		r.c.Release()
		r2.c.Release()
		if _, peak, _, _ := db.stats(); peak > 2 {
			t.Fatalf("%d servers open at once; the limit is 2", peak)
		}
		if s := p.Stats(); s.State != StateHealthy || s.AcquireRejected != 0 {
			t.Fatalf("state %s, rejected %d", s.State, s.AcquireRejected)
		}
	})
}
