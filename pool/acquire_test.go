package pool

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

func TestFIFOOrderWith50Waiters(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	p := startPool(t, cfg)

	holder := mustAcquire(t, p)
	const n = 50
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(context.Background())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			c.Release()
		}()
		// Queue them one at a time so the arrival order is known.
		waitFor(t, "waiter queued", waiting(p, i+1))
	}
	if s := p.Stats(); s.PeakWaiting != n || s.Active != 1 {
		t.Fatalf("peak waiting %d active %d, want %d and 1", s.PeakWaiting, s.Active, n)
	}
	holder.Release()
	wg.Wait()
	close(order)
	checkServedInOrder(t, order, n, "not FIFO")
	s := p.Stats()
	if s.Total != 1 || s.Idle != 1 || s.Waiting != 0 || s.Acquisitions != n+1 {
		t.Fatalf("after the queue drained: %+v", s)
	}
}

func TestReleaseHandsDirectlyToOldestWaiter(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	p := startPool(t, cfg)

	c1 := mustAcquire(t, p)
	pid := c1.Server().PID()
	w := acquireAsync(context.Background(), p)
	waitFor(t, "waiter queued", waiting(p, 1))

	c1.Release()
	// Handed over under the lock: it never touched the idle list, so a
	// newcomer arriving now finds nothing to take.
	if s := p.Stats(); s.Idle != 0 || s.Waiting != 0 || s.Total != 1 {
		t.Fatalf("right after Release: idle %d waiting %d total %d, want 0 0 1", s.Idle, s.Waiting, s.Total)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if c, err := p.Acquire(ctx); err == nil {
		c.Release()
		t.Fatal("a newcomer got the connection that was handed to the waiter")
	}
	r := <-w
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	if r.c.Server().PID() != pid {
		t.Fatalf("waiter got pid %d, want the released %d", r.c.Server().PID(), pid)
	}
	r.c.Release()
}

func TestAcquireTimeout(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	cfg.AcquireTimeout = 50 * time.Millisecond
	// The hint names the option the caller says sets MaxSize.
	cfg.OptionName = func(field string) string { return map[string]string{"MaxSize": "pool.max_size"}[field] }
	p := startPool(t, cfg)

	c := mustAcquire(t, p)
	defer c.Release()
	start := time.Now()
	_, err := p.Acquire(context.Background())
	waited := time.Since(start)
	ae := asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if waited < cfg.AcquireTimeout {
		t.Fatalf("gave up after %s, before the %s timeout", waited, cfg.AcquireTimeout)
	}
	if !strings.HasPrefix(ae.Message, "timed out after ") ||
		!strings.HasSuffix(ae.Message, "waiting for a server connection (pool db/u: 1 of 1 busy, 1 waiting)") {
		t.Fatalf("message %q", ae.Message)
	}
	if ae.Hint != "raise pool.max_size or shorten transactions" {
		t.Fatalf("hint %q", ae.Hint)
	}
	s := p.Stats()
	if s.AcquireTimeouts != 1 || s.Waiting != 0 {
		t.Fatalf("timeouts %d waiting %d, want 1 and 0", s.AcquireTimeouts, s.Waiting)
	}
}

func TestAcquireHonoursContext(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	p := startPool(t, cfg)
	c := mustAcquire(t, p)
	defer c.Release()

	ctx, cancel := context.WithCancel(context.Background())
	w := acquireAsync(ctx, p)
	waitFor(t, "waiter queued", waiting(p, 1))
	cancel()
	r := <-w
	ae := asAcquireError(t, r.err, pgwire.CodeQueryCanceled)
	if !errors.Is(ae, context.Canceled) {
		t.Fatalf("error %v does not wrap context.Canceled", ae)
	}
	if p.Stats().Waiting != 0 {
		t.Fatal("canceled waiter still queued")
	}

	// A context deadline shorter than AcquireTimeout is a timeout.
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	_, err := p.Acquire(dctx)
	asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v does not wrap context.DeadlineExceeded", err)
	}

	// An already-dead context never takes a connection.
	_, err = p.Acquire(ctx)
	asAcquireError(t, err, pgwire.CodeQueryCanceled)
}

// A waiter whose context ends at the moment a backend is handed to it
// must not lose the backend: it goes to the next waiter or the idle list.
func TestCanceledWaiterNeverLosesAHandoff(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	p := startPool(t, cfg)

	for i := range 300 {
		c := mustAcquire(t, p)
		ctx, cancel := context.WithCancel(context.Background())
		w := acquireAsync(ctx, p)
		waitFor(t, "waiter queued", waiting(p, 1))
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); cancel() }()
		go func() { defer wg.Done(); c.Release() }()
		wg.Wait()
		if r := <-w; r.err == nil {
			r.c.Release()
		} else {
			asAcquireError(t, r.err, pgwire.CodeQueryCanceled)
		}
		s := p.Stats()
		if s.Total != 1 || s.Idle != 1 || s.Active != 0 || s.Waiting != 0 {
			t.Fatalf("round %d: backend lost or leaked: %+v", i, s)
		}
	}
}

func TestMaxWaitersRejectsAtOnce(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	cfg.MaxWaiters = 2
	p := startPool(t, cfg)
	c := mustAcquire(t, p)

	ctx, cancel := context.WithCancel(context.Background())
	w1, w2 := acquireAsync(ctx, p), acquireAsync(ctx, p)
	waitFor(t, "two waiters", waiting(p, 2))
	start := time.Now()
	_, err := p.Acquire(context.Background())
	ae := asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if time.Since(start) > time.Second || !strings.Contains(ae.Message, "max_waiters 2") {
		t.Fatalf("rejected after %s with %q", time.Since(start), ae.Message)
	}
	if s := p.Stats(); s.AcquireRejected != 1 {
		t.Fatalf("rejected %d, want 1", s.AcquireRejected)
	}
	cancel()
	<-w1
	<-w2
	c.Release()
}

// TestMaxWaitersCountsWaitingElsewhere: callers that wait for the pool
// outside it (CountWaitingElsewhere: the proxy's event-loop queue) count
// against MaxWaiters in Acquire as they do in RefuseWaiter. The count is
// asked at each Acquire, not kept: once they are gone, nothing of them
// refuses anyone.
func TestMaxWaitersCountsWaitingElsewhere(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	cfg.MaxWaiters = 2
	p := startPool(t, cfg)
	c := mustAcquire(t, p)
	var elsewhere atomic.Int32
	elsewhere.Store(1)
	p.CountWaitingElsewhere(func() int { return int(elsewhere.Load()) })

	ctx, cancel := context.WithCancel(context.Background())
	w1 := acquireAsync(ctx, p)
	waitFor(t, "one waiter", waiting(p, 1))
	start := time.Now()
	_, err := p.Acquire(context.Background())
	ae := asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if time.Since(start) > time.Second || !strings.Contains(ae.Message, "max_waiters 2") || !strings.Contains(ae.Message, "2 waiting") {
		t.Fatalf("one waiting here and one elsewhere: refused after %s with %q", time.Since(start), ae.Message)
	}
	elsewhere.Store(0) // the one elsewhere got its backend, or left
	w2 := acquireAsync(ctx, p)
	waitFor(t, "two waiters", waiting(p, 2))
	cancel()
	<-w1
	<-w2
	c.Release()
}

func TestIdleReuseIsLIFO(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 3
	p := startPool(t, cfg)
	a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
	a.Release()
	c.Release()
	b.Release() // released last: the warmest
	got := mustAcquire(t, p)
	defer got.Release()
	if got.Server().PID() != b.Server().PID() {
		t.Fatalf("got pid %d, want the most recently released %d", got.Server().PID(), b.Server().PID())
	}
}

// Concurrent churn with every recycling path active: MaxSize must hold,
// and every backend the pool opened must be accounted for at the end.
func TestMaxSizeNeverExceededUnderChurn(t *testing.T) {
	db := newFakeDB()
	db.failExec = func(*fakeServer) error {
		if rand.IntN(20) == 0 {
			return errors.New("fake: random validation failure")
		}
		return nil
	}
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 5
	cfg.MinSize = 2
	cfg.ValidateAfterIdle = 0 // validate every acquire
	cfg.MaxQueries = 7
	cfg.MaxLifetime = 20 * time.Millisecond
	cfg.MaxIdle = 5 * time.Millisecond
	p := startPool(t, cfg)

	const workers, rounds = 64, 150
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds && time.Now().Before(deadline); i++ {
				c, err := p.Acquire(context.Background())
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				c.AddQueries(1)
				if rand.IntN(10) == 0 {
					c.Destroy("churn")
				} else {
					c.Release()
				}
			}
		}()
	}
	wg.Wait()
	_, peakOpen, _, _ := db.stats()
	if peakOpen > cfg.MaxSize {
		t.Fatalf("%d backends open at once, max %d", peakOpen, cfg.MaxSize)
	}
	s := p.Stats()
	if s.PeakActive > cfg.MaxSize || s.Active != 0 || s.Waiting != 0 {
		t.Fatalf("after churn: %+v", s)
	}
	if s.Queries != workers*rounds || s.Retired.Queries == 0 || s.Retired.Error == 0 || s.Retired.Validation == 0 {
		t.Fatalf("recycling paths not exercised: queries %d retired %+v", s.Queries, s.Retired)
	}
	if uint64(s.Total) != s.Connects-s.Retired.Total() {
		t.Fatalf("total %d != connects %d - retired %d", s.Total, s.Connects, s.Retired.Total())
	}
	p.Close()
	if open, _, _, _ := db.stats(); open != 0 {
		t.Fatalf("%d fake servers still open after Close", open)
	}
}

// BenchmarkAcquireRelease measures the data path: many goroutines
// sharing a small pool, as the proxy's clients do in transaction mode.
func BenchmarkAcquireRelease(b *testing.B) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 8
	cfg.MinSize = 8
	p, err := newPool(cfg, defaultOptions)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	b.SetParallelism(8) // 8 x GOMAXPROCS callers for 8 backends
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := p.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			c.AddQueries(1)
			c.Release()
		}
	})
}

// TestTryAcquireNeverWaits covers the event loop's acquire: it takes an
// idle backend at once, and reports false, leaving everything as it was,
// wherever Acquire would queue, connect, validate or close; Busy says
// whether Acquire would wait.
func TestTryAcquireNeverWaits(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	p := startPool(t, cfg)

	first := mustAcquire(t, p)
	if c, ok := p.TryAcquire(); ok || c != (Conn{}) {
		t.Fatal("TryAcquire with no idle backend handed one out (it must not connect)")
	}
	if s := p.Stats(); s.Waiting != 0 || s.Total != 1 {
		t.Fatalf("TryAcquire queued or connected: %+v", s)
	}
	if !p.Busy() {
		t.Fatal("Busy with no idle backend and no room to open one: false")
	}
	first.Release()
	if p.Busy() {
		t.Fatal("Busy with an idle backend and nobody waiting: true")
	}
	c, ok := p.TryAcquire()
	if !ok || c.Server() != first.Server() {
		t.Fatalf("TryAcquire with an idle backend: ok %v", ok)
	}
	if c2, ok := p.TryAcquire(); ok || c2 != (Conn{}) {
		t.Fatal("TryAcquire handed out a held backend")
	}
	// A waiter is first in line for the next release: TryAcquire must not
	// overtake it.
	res := acquireAsync(context.Background(), p)
	waitFor(t, "waiter queued", waiting(p, 1))
	c.Release()
	r := <-res
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	waiter := r.c
	res = acquireAsync(context.Background(), p)
	waitFor(t, "second waiter queued", waiting(p, 1))
	if c3, ok := p.TryAcquire(); ok || c3 != (Conn{}) {
		t.Fatal("TryAcquire overtook a queued waiter")
	}
	if !p.Busy() {
		t.Fatal("Busy with a waiter queued: false")
	}
	waiter.Release()
	r = <-res
	if r.err != nil {
		t.Fatalf("second waiter: %v", r.err)
	}
	r.c.Release()

	// Paused: nothing is handed out.
	p.Pause()
	if _, ok := p.TryAcquire(); ok {
		t.Fatal("TryAcquire handed out a backend of a paused pool")
	}
	if !p.Busy() {
		t.Fatal("Busy while paused: false")
	}
	p.Resume()
	if c, ok := p.TryAcquire(); !ok {
		t.Fatal("TryAcquire after RESUME found nothing")
	} else {
		c.Release()
	}
	if s := p.Stats(); s.Active != 0 || s.Idle != 1 || s.Total != 1 {
		t.Fatalf("after the checks: %+v", s)
	}
}

// TestTryAcquireLeavesChecksToAcquire: a backend due for validation, or
// one whose server went away (the peek finds the FATAL), is not handed
// out and not closed by TryAcquire; Acquire then deals with it.
func TestTryAcquireLeavesChecksToAcquire(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	cfg.ValidateAfterIdle = 0 // validate every acquire
	p := startPool(t, cfg)
	c := mustAcquire(t, p)
	c.Release()
	if _, ok := p.TryAcquire(); ok {
		t.Fatal("TryAcquire handed out a backend due for validation")
	}
	if s := p.Stats(); s.Idle != 1 || s.Active != 0 {
		t.Fatalf("TryAcquire changed the pool: %+v", s)
	}
	if p.Busy() {
		t.Fatal("Busy with an idle backend due for validation: true (Acquire validates it at once)")
	}

	db2 := newFakeDB()
	db2.sockets = true // the peek reads a real socket
	cfg2 := testConfig(db2, newLogRecorder())
	cfg2.MaxSize = 1
	cfg2.ValidationQuery = ""
	p2 := startPool(t, cfg2)
	c2 := mustAcquire(t, p2)
	srv := fake(c2)
	c2.Release()
	srv.terminate(t, true)
	waitFor(t, "FATAL readable", func() bool { return peekSocket(srv.NetConn()) != nil })
	if _, ok := p2.TryAcquire(); ok {
		t.Fatal("TryAcquire handed out a backend with a FATAL pending")
	}
	c3 := mustAcquire(t, p2)
	if fake(c3) == srv {
		t.Fatal("Acquire handed out the terminated backend after TryAcquire declined it")
	}
	c3.Release()
}

// TestBusyIsNotGrowing: a pool with no idle backend but room to open one
// (or a connect in flight for the caller) is growing, not busy; it is
// busy once every backend it may open is held or promised to a waiter.
func TestBusyIsNotGrowing(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MinSize, cfg.MaxSize = 0, 2
	p := startPool(t, cfg)
	a := mustAcquire(t, p)
	if s := p.Stats(); s.Idle != 0 || s.Total != 1 {
		t.Fatalf("setup: %+v", s)
	}
	if p.Busy() {
		t.Fatal("Busy with no idle backend but room for another: true")
	}
	b := mustAcquire(t, p)
	if !p.Busy() {
		t.Fatal("Busy with both backends held: false")
	}
	b.Release()
	a.Release()
	if p.Busy() {
		t.Fatal("Busy with idle backends: true")
	}
}

// TestAcquireIfFreeNeverWaitsForARelease: AcquireIfFree takes a backend
// only when it need not wait for another holder's release, and decides
// as it queues. A connect in flight that no waiter is owed (a waiter gave
// up, or the pool warms up to MinSize) ends in an idle backend, so it
// waits for that connect, as for one it opens itself; a second caller is
// not served by that connect and gets ErrWouldWait at once. Before, the
// proxy asked Free and then called Acquire: two session-mode logins could
// both see the last backend free, and the second then waited for a
// release, which never came while the application's other clients waited
// for that login (pgbench -c 50 on a pool of 5: "could not create
// connection for client 3" after the 2-minute acquire timeout).
func TestAcquireIfFreeNeverWaitsForARelease(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 2
	p := startPool(t, cfg)

	first := mustAcquire(t, p)
	gate := make(chan struct{})
	db.setGate(gate)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := p.Acquire(ctx); err == nil {
		t.Fatal("Acquire with its connect held back succeeded")
	}
	cancel()
	// The connect the waiter started goes on without it.
	p.mu.Lock()
	waiters, opening := p.waiters.len(), p.opening
	p.mu.Unlock()
	if waiters != 0 || opening != 1 {
		t.Fatalf("want no waiter and one connect in flight: %d waiters, %d connects", waiters, opening)
	}
	// That connect will serve one caller: it queues for it.
	res := make(chan acquireResult, 1)
	go func() {
		c, err := p.AcquireIfFree(context.Background())
		res <- acquireResult{c, err}
	}()
	waitFor(t, "AcquireIfFree queued for the connect in flight", waiting(p, 1))
	// A second caller would wait for a release: refused at once, queueing
	// nothing.
	if _, err := p.AcquireIfFree(context.Background()); !errors.Is(err, ErrWouldWait) {
		t.Fatalf("AcquireIfFree with the one connect in flight owed to a waiter: %v, want ErrWouldWait", err)
	}
	if got := p.Stats().Waiting; got != 1 {
		t.Fatalf("AcquireIfFree refused left %d waiting, want 1", got)
	}
	close(gate)
	r := <-res
	if r.err != nil {
		t.Fatalf("AcquireIfFree served by the connect in flight: %v", r.err)
	}
	if _, err := p.AcquireIfFree(context.Background()); !errors.Is(err, ErrWouldWait) {
		t.Fatalf("AcquireIfFree with both backends held: %v, want ErrWouldWait", err)
	}
	r.c.Release()
	c, err := p.AcquireIfFree(context.Background())
	if err != nil {
		t.Fatalf("AcquireIfFree with an idle backend: %v", err)
	}
	c.Release()
	p.Pause() // first is still held: not waited for
	if _, err := p.AcquireIfFree(context.Background()); !errors.Is(err, ErrWouldWait) {
		t.Fatalf("AcquireIfFree while paused with a backend idle: %v, want ErrWouldWait", err)
	}
	p.Resume()
	first.Release()
	// With room to open a backend and nobody queued, it opens one.
	held := []Conn{mustAcquire(t, p)}
	c, err = p.AcquireIfFree(context.Background())
	if err != nil {
		t.Fatalf("AcquireIfFree with room to connect: %v", err)
	}
	held = append(held, c)
	for _, c := range held {
		c.Release()
	}
}
