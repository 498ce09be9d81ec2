package pool

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAcquireReleaseAllocatesNothing: handing out an idle backend and
// taking it back, the proxy's per-transaction path, allocates nothing
// (a Conn is a value: the backend and its hold generation). The idle
// backend was released a moment ago, as on a busy proxy, so it is neither
// peeked nor validated.
func TestAcquireReleaseAllocatesNothing(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.PeekAfterIdle = time.Hour
	p := startPool(t, cfg)
	mustAcquire(t, p).Release() // the one backend is idle now
	ctx := context.Background()

	acquire := func() {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		c.SetOwner(nil)
		c.AddQueries(1)
		c.AddErrors(0, 0)
		c.Release()
	}
	if n := testing.AllocsPerRun(100, acquire); n != 0 {
		t.Errorf("Acquire+Release of an idle backend: %v allocations per call, want 0", n)
	}
	try := func() {
		c, ok := p.TryAcquire()
		if !ok {
			t.Fatal("TryAcquire: no idle backend")
		}
		c.Release()
	}
	if n := testing.AllocsPerRun(100, try); n != 0 {
		t.Errorf("TryAcquire+Release of an idle backend: %v allocations per call, want 0", n)
	}
	now := time.Now()
	tryAt := func() {
		c, ok := p.TryAcquireAt(now)
		if !ok {
			t.Fatal("TryAcquireAt: no idle backend")
		}
		c.ReleaseAt(now)
	}
	if n := testing.AllocsPerRun(100, tryAt); n != 0 {
		t.Errorf("TryAcquireAt+ReleaseAt of an idle backend: %v allocations per call, want 0", n)
	}
	if s := p.Stats(); s.Total != 1 || s.Idle != 1 || s.Active != 0 {
		t.Fatalf("after the runs: %+v", s)
	}
}

// TestStaleHandleCannotTouchTheNextHold: a copy of a Conn kept past its
// Release refers to a hold that has ended, even though the backend it
// names is held again: every call that acts on the hold is ignored, and
// Release and Destroy are logged as bugs; the backend's current holder
// is unaffected.
func TestStaleHandleCannotTouchTheNextHold(t *testing.T) {
	db := newFakeDB()
	log := newLogRecorder()
	cfg := testConfig(db, log)
	cfg.MaxSize = 1
	cfg.LeakTimeout = time.Hour
	p := startPool(t, cfg)

	stale := mustAcquire(t, p)
	stale.Release()
	cur := mustAcquire(t, p)
	if cur.Server() != stale.Server() {
		t.Fatal("MaxSize 1 handed out a second backend")
	}
	if cur == stale {
		t.Fatal("the new hold's handle equals the old one's")
	}
	queries := p.Stats().Queries
	stale.AddQueries(5)
	stale.AddErrors(0, 3)
	owner := testOwner{"10.0.0.1:5"}
	cur.SetOwner(owner)
	stale.SetOwner(nil)
	stale.SetBusy(true)
	stale.Release()
	stale.Destroy("stale")

	if s := p.Stats(); s.Queries != queries || s.Active != 1 || s.Retired.Error != 0 || fake(cur).closed.Load() {
		t.Fatalf("a stale handle changed the pool: %+v", s)
	}
	b := cur.b
	b.mu.Lock()
	gotOwner, busyMode := b.owner, b.busyMode
	b.mu.Unlock()
	if gotOwner != owner || busyMode {
		t.Fatalf("a stale handle changed the hold: owner %v, busyMode %v", gotOwner, busyMode)
	}
	if n := b.errors.Load(); n != 0 {
		t.Fatalf("a stale handle counted %d errors on the backend", n)
	}
	warns := log.find("bug: ")
	if len(warns) != 2 || !strings.Contains(warns[0].attrs["caller"], "conn_test.go") {
		t.Fatalf("misuse warnings %+v", warns)
	}

	// The current handle still works, and after Destroy no handle does.
	cur.AddQueries(2)
	if got := p.Stats().Queries; got != queries+2 {
		t.Fatalf("queries %d, want %d", got, queries+2)
	}
	cur.Destroy("test")
	cur.Release()
	if s := p.Stats(); s.Active != 0 || s.Retired.Error != 1 {
		t.Fatalf("after Destroy and a Release on the same handle: %+v", s)
	}
	if warns := log.find("bug: "); len(warns) != 3 {
		t.Fatalf("Release after Destroy not logged: %+v", warns)
	}
}

type testOwner struct{ addr string }

func (o testOwner) LeakInfo() (addr, appName, lastStatement string) { return o.addr, "", "" }

// BenchmarkAcquireReleaseIdle measures the proxy's common case alone: one
// caller, an idle backend released a moment ago (not peeked, not
// validated), handed out and given back.
func BenchmarkAcquireReleaseIdle(b *testing.B) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.PeekAfterIdle = time.Second
	p, err := newPool(cfg, defaultOptions)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	c.Release()
	for b.Loop() {
		c, err := p.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		c.AddQueries(1)
		c.Release()
	}
}

// TestReclaimBeforeUse: the reclaim set by a holder (SetReclaim) runs
// before anyone but TryAcquire's caller uses the backend next: before
// Acquire hands it out, before the validation query, and before an idle
// check; never for TryAcquire.
func TestReclaimBeforeUse(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 1
	cfg.ValidateAfterIdle = 0 // validate at every Acquire
	p := startPool(t, cfg)
	c := mustAcquire(t, p)
	srv := fake(c)
	// execsSeen: the queries run before the reclaim (the first one since
	// reset to -1).
	var reclaims, execsSeen atomic.Int64
	execsSeen.Store(-1)
	c.SetReclaim(func() {
		reclaims.Add(1)
		execsSeen.CompareAndSwap(-1, srv.execs.Load())
	})
	c.Release()

	t1, ok := p.TryAcquire()
	if ok {
		t1.Release()
		t.Fatal("TryAcquire handed out a backend due for validation")
	}
	setValidateAfter := func(d time.Duration) {
		p.mu.Lock()
		p.cfg.ValidateAfterIdle = d
		p.mu.Unlock()
	}
	setValidateAfter(time.Hour) // TryAcquire may take it now
	if t1, ok = p.TryAcquire(); !ok {
		t.Fatal("TryAcquire found nothing")
	}
	t1.Release()
	if n := reclaims.Load(); n != 0 {
		t.Fatalf("TryAcquire ran the reclaim %d times, want none", n)
	}
	setValidateAfter(0)

	before := srv.execs.Load()
	c = mustAcquire(t, p) // validates, then hands out
	if srv.execs.Load() != before+1 {
		t.Fatalf("Acquire ran %d queries, want the validation", srv.execs.Load()-before)
	}
	if n := reclaims.Load(); n < 1 || execsSeen.Load() != before {
		t.Fatalf("reclaims %d, the first before %d queries; want one before the validation (%d)", n, execsSeen.Load(), before)
	}
	c.Release()

	// An idle check reclaims before its query.
	p.mu.Lock()
	p.cfg.IdleCheckInterval = time.Millisecond
	p.lastAlive = time.Time{}
	p.mu.Unlock()
	n0, e0 := reclaims.Load(), srv.execs.Load()
	execsSeen.Store(-1)
	waitFor(t, "an idle check", func() bool { return srv.execs.Load() > e0 })
	if reclaims.Load() <= n0 || execsSeen.Load() != e0 {
		t.Fatalf("idle check: reclaims %d -> %d, the last before %d queries; want one before the check's (%d)", n0, reclaims.Load(), execsSeen.Load(), e0)
	}
}

// TestReleaseAtTakesTheCallersClock: a hold taken with TryAcquireAt and
// given back with ReleaseAt is stamped with the caller's clock, not the
// pool's: the backend's last use, and the hold's length in the
// transaction histogram. ReleaseAt on a stale handle is logged with its
// caller's position, as Release is.
func TestReleaseAtTakesTheCallersClock(t *testing.T) {
	db := newFakeDB()
	log := newLogRecorder()
	cfg := testConfig(db, log)
	cfg.MaxSize = 1
	cfg.PeekAfterIdle = time.Hour
	p := startPool(t, cfg)
	mustAcquire(t, p).Release() // the one backend is idle now
	t0 := time.Now()
	c, ok := p.TryAcquireAt(t0)
	if !ok {
		t.Fatal("TryAcquireAt: no idle backend")
	}
	before := p.Stats().TransactionDuration
	end := t0.Add(time.Hour)
	c.ReleaseAt(end)
	if bs := p.Backends(); len(bs) != 1 || !bs[0].LastUsed.Equal(end) {
		t.Fatalf("last use %v, want the caller's clock %v", bs, end)
	}
	after := p.Stats().TransactionDuration
	if after.Count() != before.Count()+1 || after.Sum-before.Sum != time.Hour {
		t.Fatalf("hold recorded as %v over %d holds, want one of 1h", after.Sum-before.Sum, after.Count()-before.Count())
	}
	c.ReleaseAt(end)
	if warns := log.find("bug: "); len(warns) != 1 || !strings.Contains(warns[0].attrs["caller"], "conn_test.go") {
		t.Fatalf("misuse warnings %+v", warns)
	}
}
