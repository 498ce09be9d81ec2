package pool

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestLifetimeJitterBounds(t *testing.T) {
	const maxLife = time.Hour
	if got := lifetimeOf(maxLife, 0.1, 0); got != maxLife {
		t.Fatalf("r=0: %s, want %s", got, maxLife)
	}
	if got := lifetimeOf(maxLife, 0.1, 0.5); got != 57*time.Minute {
		t.Fatalf("r=0.5: %s, want 57m", got)
	}
	if got := lifetimeOf(0, 0.1, 0.5); got != 0 {
		t.Fatalf("unlimited lifetime became %s", got)
	}
	// Backends opened together get different deadlines within the band.
	db := newFakeDB()
	seen := map[time.Duration]bool{}
	for range 20 {
		s, _ := db.connect(context.Background())
		b := newBackend(s, time.Now())
		cfg := Config{MaxLifetime: maxLife, LifetimeJitter: 0.1}
		lt := b.lifetime(&cfg)
		if lt > maxLife || lt < 54*time.Minute {
			t.Fatalf("lifetime %s outside [54m, 60m]", lt)
		}
		seen[lt] = true
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct lifetimes among 20 backends: no jitter", len(seen))
	}
}

func TestRecycleByLifetime(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MinSize = 2
		cfg.MaxSize = 3
		cfg.MaxLifetime = 60 * time.Millisecond
		cfg.LifetimeJitter = 0.5
		p := startPool(t, cfg)
		waitFor(t, "warm to 2", func() bool { return p.Stats().Total == 2 })

		// Idle backends past their lifetime are retired and replaced.
		waitFor(t, "idle lifetime retirements", func() bool { return p.Stats().Retired.Lifetime >= 2 })
		waitFor(t, "rewarmed", func() bool { return p.Stats().Total == 2 })

		// A held backend is never closed under its holder, only at Release.
		c := mustAcquire(t, p)
		s := fake(c)
		time.Sleep(cfg.MaxLifetime + 20*time.Millisecond)
		if s.closed.Load() {
			t.Fatal("backend closed while held")
		}
		before := p.Stats().Retired.Lifetime
		c.Release()
		if !s.closed.Load() {
			t.Fatal("backend past its lifetime not closed at Release")
		}
		// (The maintainer may retire the other idle backend meanwhile.)
		if got := p.Stats().Retired.Lifetime; got < before+1 {
			t.Fatalf("retired by lifetime %d, want at least %d", got, before+1)
		}
	})
}

func TestRecycleByIdleKeepsMinSize(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MinSize = 1
		cfg.MaxSize = 4
		cfg.MaxIdle = 30 * time.Millisecond
		p := startPool(t, cfg)
		cs := []Conn{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
		for _, c := range cs {
			c.Release()
		}
		waitFor(t, "idle reaping", func() bool { return p.Stats().Retired.Idle == 2 })
		time.Sleep(3 * cfg.MaxIdle)
		if s := p.Stats(); s.Total != 1 || s.Idle != 1 || s.Retired.Idle != 2 {
			t.Fatalf("reaper went below MinSize or did not stop: total %d idle %d retired %d", s.Total, s.Idle, s.Retired.Idle)
		}
	})
}

func TestRecycleByQueryCount(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxQueries = 5
	p := startPool(t, cfg)

	c := mustAcquire(t, p)
	c.AddQueries(4)
	c.Release()
	c = mustAcquire(t, p)
	if fake(c).closed.Load() {
		t.Fatal("closed before reaching MaxQueries")
	}
	c.AddQueries(1)
	s := fake(c)
	c.Release()
	if !s.closed.Load() {
		t.Fatal("not closed at Release after MaxQueries")
	}
	st := p.Stats()
	if st.Retired.Queries != 1 || st.Queries != 5 || st.Total != 0 {
		t.Fatalf("retired %+v queries %d total %d", st.Retired, st.Queries, st.Total)
	}
}

func TestValidationFailureGivesAnotherBackend(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 3
	cfg.ValidateAfterIdle = 0 // every acquire
	p := startPool(t, cfg)

	a, b := mustAcquire(t, p), mustAcquire(t, p)
	bad1, bad2 := fake(a), fake(b)
	a.Release()
	b.Release()
	bad1.execFail.Store(true)
	bad2.execFail.Store(true)
	before := p.Stats().Validations

	c := mustAcquire(t, p) // both idle ones fail validation; a new one is opened
	defer c.Release()
	if got := fake(c); got == bad1 || got == bad2 {
		t.Fatal("got a backend that failed validation")
	}
	if !bad1.closed.Load() || !bad2.closed.Load() {
		t.Fatal("backends that failed validation were not closed")
	}
	s := p.Stats()
	// Both idle ones were validated; the new one came straight from
	// connect and was not.
	if s.Retired.Validation != 2 || s.Validations-before != 2 {
		t.Fatalf("retired %+v validations %d, want 2 and 2", s.Retired, s.Validations-before)
	}
	if p.State() != StateHealthy {
		t.Fatalf("state %s after validation failures, want HEALTHY", p.State())
	}
}

func TestValidationOnlyAfterIdleThreshold(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.ValidateAfterIdle = 40 * time.Millisecond
		p := startPool(t, cfg)

		c := mustAcquire(t, p)
		s := fake(c)
		c.Release()
		mustAcquire(t, p).Release() // idle for less than the threshold
		if n := s.execs.Load(); n != 0 {
			t.Fatalf("validated %d times after a short idle, want 0", n)
		}
		time.Sleep(cfg.ValidateAfterIdle + 10*time.Millisecond)
		mustAcquire(t, p).Release()
		if n := s.execs.Load(); n != 1 {
			t.Fatalf("validated %d times after a long idle, want 1", n)
		}
	})
}

func TestDestroyClosesAndServesWaiterWithFreshBackend(t *testing.T) {
	db := newFakeDB()
	log := newLogRecorder()
	cfg := testConfig(db, log)
	cfg.MaxSize = 1
	p := startPool(t, cfg)

	c := mustAcquire(t, p)
	broken := fake(c)
	w := acquireAsync(context.Background(), p)
	waitFor(t, "waiter queued", waiting(p, 1))
	c.Destroy("client vanished mid-message")
	r := <-w
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	defer r.c.Release()
	if !broken.closed.Load() || fake(r.c) == broken {
		t.Fatal("destroyed backend not closed, or handed out again")
	}
	if s := p.Stats(); s.Retired.Error != 1 {
		t.Fatalf("retired %+v, want Error 1", s.Retired)
	}
	recs := log.find("backend closed")
	if len(recs) != 1 || recs[0].attrs["detail"] != "client vanished mid-message" || recs[0].attrs["reason"] != "error" {
		t.Fatalf("close log %+v", recs)
	}
}

func TestDoubleReleaseIsIgnoredAndLogged(t *testing.T) {
	db := newFakeDB()
	log := newLogRecorder()
	p := startPool(t, testConfig(db, log))

	c1 := mustAcquire(t, p)
	c1.SetAttachment("prepared-set")
	c1.Release()
	c1.Release()
	c2 := mustAcquire(t, p) // the same backend, new handle
	if c2.Server() != c1.Server() || c2.Attachment() != "prepared-set" {
		t.Fatal("attachment did not survive Release/Acquire on the same backend")
	}
	c1.Destroy("stale handle") // must not touch c2's backend
	if s := p.Stats(); s.Active != 1 || s.Retired.Error != 0 || fake(c2).closed.Load() {
		t.Fatalf("stale handle corrupted the pool: %+v", s)
	}
	c2.Release()
	warns := log.find("bug: ")
	if len(warns) != 2 || !strings.Contains(warns[0].attrs["caller"], "recycle_test.go") {
		t.Fatalf("misuse warnings %+v", warns)
	}
	if s := p.Stats(); s.Active != 0 || s.Idle != 1 || s.Total != 1 {
		t.Fatalf("after misuse: %+v", s)
	}
}

// A backend handed straight from Release to a waiter was in use, not
// idle: it must not be validated however long ago it last sat idle (under
// contention that would add a round trip to every transaction).
func TestHandoffIsNotValidated(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 1
		cfg.ValidateAfterIdle = 30 * time.Millisecond
		p := startPool(t, cfg)

		c := mustAcquire(t, p)
		before := p.Stats().Validations
		for i := 0; i < 3; i++ {
			got := make(chan Conn, 1)
			go func() { got <- mustAcquire(t, p) }()
			waitFor(t, "a waiter", func() bool { return p.Stats().Waiting == 1 })
			time.Sleep(2 * cfg.ValidateAfterIdle) // held (busy) longer than the idle threshold
			c.Release()
			c = <-got
		}
		c.Release()
		if n := p.Stats().Validations - before; n != 0 {
			t.Fatalf("%d validations on direct handoffs, want 0", n)
		}
	})
}
