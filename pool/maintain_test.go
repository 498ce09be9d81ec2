package pool

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

type fakeOwner struct{}

func (fakeOwner) LeakInfo() (string, string, string) {
	return "127.0.0.1:50000", "billing", "UPDATE accounts SET ..."
}

func TestLeakWarningLoggedOncePerBusyPeriod(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		log := newLogRecorder()
		cfg := testConfig(db, log)
		cfg.LeakTimeout = 30 * time.Millisecond
		p := startPool(t, cfg)

		c := mustAcquire(t, p)
		c.SetOwner(fakeOwner{})
		waitFor(t, "leak warning", func() bool { return len(log.find("leak_timeout")) == 1 })
		time.Sleep(4 * cfg.LeakTimeout) // many maintainer ticks later
		recs := log.find("leak_timeout")
		if len(recs) != 1 {
			t.Fatalf("%d leak warnings for one busy period, want 1", len(recs))
		}
		r := recs[0]
		if r.level.String() != "WARN" || r.attrs["client_addr"] != "127.0.0.1:50000" || r.attrs["application_name"] != "billing" ||
			r.attrs["last_statement"] != "UPDATE accounts SET ..." || r.attrs["pid"] != "1001" || r.attrs["busy_for"] == "" {
			t.Fatalf("leak warning %+v", r)
		}
		if p.Stats().Leaks != 1 {
			t.Fatalf("Stats.Leaks %d, want 1", p.Stats().Leaks)
		}

		// Session mode: only busy periods count, and a new one is reported anew.
		c.SetBusy(false)
		time.Sleep(2 * cfg.LeakTimeout)
		if n := len(log.find("leak_timeout")); n != 1 {
			t.Fatalf("warned while not busy: %d warnings", n)
		}
		c.SetBusy(true)
		waitFor(t, "second busy period reported", func() bool { return len(log.find("leak_timeout")) == 2 })
		c.Release()

		// The next holder starts clean (no owner carried over).
		c = mustAcquire(t, p)
		waitFor(t, "third warning", func() bool { return len(log.find("leak_timeout")) == 3 })
		if r := log.find("leak_timeout")[2]; r.attrs["client_addr"] != "unknown" {
			t.Fatalf("owner leaked into the next hold: %+v", r)
		}
		c.Release()
	})
}

func TestReconfigureLive(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 2
	p := startPool(t, cfg)
	a, b := mustAcquire(t, p), mustAcquire(t, p)
	w := acquireAsync(context.Background(), p)
	waitFor(t, "waiter", waiting(p, 1))

	// Growing MaxSize serves the waiter with a new backend at once.
	grow := cfg
	grow.MaxSize = 3
	p.Reconfigure(grow)
	r := <-w
	if r.err != nil {
		t.Fatalf("waiter after growing: %v", r.err)
	}
	if s := p.Stats(); s.MaxSize != 3 || s.Total != 3 {
		t.Fatalf("after growing: %+v", s)
	}

	// Shrinking closes surplus backends as they come back.
	shrink := cfg
	shrink.MaxSize = 1
	shrink.AcquireTimeout = 20 * time.Millisecond
	p.Reconfigure(shrink)
	a.Release()
	b.Release()
	r.c.Release()
	waitFor(t, "shrunk to 1", func() bool { s := p.Stats(); return s.Total == 1 && s.Idle == 1 })
	if s := p.Stats(); s.Retired.Idle != 2 {
		t.Fatalf("surplus closes counted %+v, want Idle 2", s.Retired)
	}
	// New timeout applies to the next wait.
	c := mustAcquire(t, p)
	start := time.Now()
	_, err := p.Acquire(context.Background())
	asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if time.Since(start) > time.Second {
		t.Fatalf("waited %s: the new AcquireTimeout was not applied", time.Since(start))
	}
	c.Release()

	// Raising MinSize warms up; an invalid config is ignored.
	warm := shrink
	warm.MaxSize, warm.MinSize = 4, 3
	p.Reconfigure(warm)
	waitFor(t, "warmed to 3", func() bool { return p.Stats().Total == 3 })
	bad := warm
	bad.MinSize = 9
	p.Reconfigure(bad)
	if s := p.Stats(); s.MinSize != 3 || s.MaxSize != 4 {
		t.Fatalf("invalid config applied: min %d max %d", s.MinSize, s.MaxSize)
	}
}

func TestCloseFailsWaitersAndClosesEverything(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MaxSize = 2
	p := startPool(t, cfg)
	held, other := mustAcquire(t, p), mustAcquire(t, p)
	var ws []<-chan acquireResult
	for i := range 3 {
		ws = append(ws, acquireAsync(context.Background(), p))
		waitFor(t, "waiters", waiting(p, i+1))
	}
	other.Release() // straight to the first waiter
	first := <-ws[0]
	if first.err != nil {
		t.Fatal(first.err)
	}
	first.c.Release() // to the second waiter
	second := <-ws[1]
	if second.err != nil {
		t.Fatal(second.err)
	}
	ws = ws[2:]
	held2Srv := fake(second.c)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ws = append(ws, acquireAsync(context.Background(), p))
	waitFor(t, "two waiters", waiting(p, 2))

	p.Close()
	for _, w := range ws {
		ae := asAcquireError(t, (<-w).err, pgwire.CodeAdminShutdown)
		if !strings.Contains(ae.Message, "shutting down") {
			t.Fatalf("message %q", ae.Message)
		}
	}
	if p.State() != StateTerminated {
		t.Fatalf("state %s after Close, want TERMINATED", p.State())
	}
	// Held backends are closed when they come back, never under a holder.
	heldSrv := fake(held)
	if heldSrv.closed.Load() || held2Srv.closed.Load() {
		t.Fatal("a held backend was closed under its holder")
	}
	held.Release()
	second.c.Destroy("after close")
	if !heldSrv.closed.Load() || !held2Srv.closed.Load() {
		t.Fatal("backends not closed when given back after Close")
	}
	if open, _, _, _ := db.stats(); open != 0 {
		t.Fatalf("%d servers still open", open)
	}
	if s := p.Stats(); s.Retired.Shutdown != 1 || s.Retired.Error != 1 || s.Total != 0 {
		t.Fatalf("after Close: %+v", s)
	}
	_, err := p.Acquire(ctx)
	asAcquireError(t, err, pgwire.CodeAdminShutdown)
	_, err = p.Acquire(context.Background())
	asAcquireError(t, err, pgwire.CodeAdminShutdown)
	p.Close() // idempotent
}

func TestCloseClosesIdleBackends(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MinSize = 2
	p := startPool(t, cfg)
	waitFor(t, "warm", func() bool { return p.Stats().Idle == 2 })
	p.Close()
	if open, _, _, _ := db.stats(); open != 0 {
		t.Fatalf("%d idle servers still open after Close", open)
	}
	if s := p.Stats(); s.Retired.Shutdown != 2 || s.Total != 0 || s.Idle != 0 {
		t.Fatalf("after Close: %+v", s)
	}
}

func TestCloseAbortsConnectInFlight(t *testing.T) {
	db := newFakeDB()
	db.setGate(make(chan struct{})) // connects hang until their ctx ends
	cfg := testConfig(db, newLogRecorder())
	p, err := newPool(cfg, defaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	w := acquireAsync(context.Background(), p)
	waitFor(t, "waiter", waiting(p, 1))
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Close did not abort the hanging connect")
	}
	asAcquireError(t, (<-w).err, pgwire.CodeAdminShutdown)
	if s := p.Stats(); s.ConnectErrors != 0 || s.State != StateTerminated {
		t.Fatalf("shutdown counted as a connect error or wrong state: %+v", s)
	}
}

func TestConcurrentCloseCallsAllWait(t *testing.T) {
	db := newFakeDB()
	cfg := testConfig(db, newLogRecorder())
	cfg.MinSize = 2
	p := startPool(t, cfg)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Close()
			if p.State() != StateTerminated {
				t.Errorf("Close returned in state %s", p.State())
			}
		}()
	}
	wg.Wait()
}

func TestStatsWaitPercentile(t *testing.T) {
	var w waitStats
	for i := 1; i <= 100; i++ {
		w.recordLocked(time.Duration(i) * time.Millisecond)
	}
	avg, p99 := w.copyLocked().summary()
	if avg != 50.5 || p99 != 99 {
		t.Fatalf("avg %v p99 %v, want 50.5 and 99", avg, p99)
	}
	// The window keeps only the most recent waitWindow values.
	for range waitWindow {
		w.recordLocked(time.Millisecond)
	}
	if _, p99 := w.copyLocked().summary(); p99 != 1 {
		t.Fatalf("p99 %v over a window of 1ms waits, want 1", p99)
	}
}

// TestConfigValidation: zero means zero, and what cannot run is refused
// with every bad field named.
func TestConfigValidation(t *testing.T) {
	db := newFakeDB()
	zero := testConfig(db, newLogRecorder())
	zero.ValidationQuery, zero.LifetimeJitter = "", 0
	if err := zero.validate(); err != nil {
		t.Fatalf("zero for every optional field: %v", err)
	}
	if err := (Config{}).validate(); err == nil ||
		!strings.Contains(err.Error(), "Connect") || !strings.Contains(err.Error(), "MaxSize") ||
		!strings.Contains(err.Error(), "AcquireTimeout") || !strings.Contains(err.Error(), "BackoffInitial") {
		t.Fatalf("empty Config: %v; want every required field named", err)
	}
	for name, bad := range map[string]func(*Config){
		"MinSize above MaxSize": func(c *Config) { c.MinSize, c.MaxSize = 5, 2 },
		"LifetimeJitter 1.5":    func(c *Config) { c.LifetimeJitter = 1.5 },
		"BackoffMax < Initial":  func(c *Config) { c.BackoffInitial, c.BackoffMax = time.Minute, time.Second },
		"negative MaxIdle":      func(c *Config) { c.MaxIdle = -time.Second },
		"AcquireTimeout 0":      func(c *Config) { c.AcquireTimeout = 0 },
	} {
		c := testConfig(db, newLogRecorder())
		bad(&c)
		if p, err := New(c); err == nil {
			p.Close()
			t.Fatalf("%s: New accepted an invalid config", name)
		}
	}
}
