package pool

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

var errRefused = errors.New("dial tcp 127.0.0.1:5432: connect: connection refused")

func TestBackoffSchedule(t *testing.T) {
	var got []time.Duration
	for failures := 1; failures <= 7; failures++ {
		got = append(got, backoffDelay(time.Second, 16*time.Second, failures))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 16, 16}
	for i := range want {
		want[i] *= time.Second
	}
	if !slices.Equal(got, want) {
		t.Fatalf("schedule %v, want %v", got, want)
	}
	if d := backoffDelay(time.Second, 16*time.Second, 0); d != 0 {
		t.Fatalf("delay before any failure %s, want 0", d)
	}
	if d := backoffDelay(time.Second, 16*time.Second, 1000); d != 16*time.Second {
		t.Fatalf("delay after 1000 failures %s, want the 16s cap", d)
	}
	if d := backoffDelay(300*time.Millisecond, time.Second, 3); d != time.Second {
		t.Fatalf("1.2s capped at 1s, got %s", d)
	}
	for _, r := range []float64{0, 0.5, 0.999} {
		d := jittered(10*time.Second, backoffJitter, r)
		if d > 10*time.Second || d < 8*time.Second {
			t.Fatalf("jittered(10s, r=%v) = %s, outside [8s, 10s]", r, d)
		}
	}
	cfg := Config{BackoffInitial: time.Second, BackoffMax: 16 * time.Second}
	if d := cfg.nextRetry(3); d > 4*time.Second || d < 3200*time.Millisecond {
		t.Fatalf("third retry %s outside [3.2s, 4s]", d)
	}
}

func TestStateNames(t *testing.T) {
	want := map[State]string{
		StateInitializing: "INITIALIZING", StateHealthy: "HEALTHY", StateDegraded: "DEGRADED",
		StateUnhealthy: "UNHEALTHY", StateRecovering: "RECOVERING", StateShuttingDown: "SHUTTING_DOWN",
		StateTerminated: "TERMINATED",
	}
	for s, name := range want {
		if s.String() != name {
			t.Fatalf("%d.String() = %q, want %q", int(s), s.String(), name)
		}
	}
	b, err := json.Marshal(Stats{State: StateDegraded})
	if err != nil || !strings.Contains(string(b), `"state":"DEGRADED"`) {
		t.Fatalf("json %s, %v", b, err)
	}
}

func TestDatabaseDownAtStartThenUp(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		db.setDown(errRefused)
		log := newLogRecorder()
		cfg := testConfig(db, log)
		cfg.MinSize = 2
		cfg.MaxSize = 4
		cfg.BackoffInitial = 20 * time.Millisecond
		cfg.BackoffMax = 40 * time.Millisecond
		p, err := newPool(cfg, options{degradeWindow: 100 * time.Millisecond, closeTimeout: time.Second})
		if err != nil {
			t.Fatalf("New must not fail because the database is down: %v", err)
		}
		defer p.Close()
		waitFor(t, "UNHEALTHY", func() bool { return p.State() == StateUnhealthy })
		s := p.Stats()
		if !strings.Contains(s.StateReason, errRefused.Error()) || s.LastConnectError != errRefused.Error() || s.ConnectErrors == 0 {
			t.Fatalf("stats do not say why: %+v", s)
		}

		// The circuit is open: Acquire fails fast with the upstream's error.
		start := time.Now()
		_, err = p.Acquire(context.Background())
		ae := asAcquireError(t, err, pgwire.CodeConnectionFailure)
		if time.Since(start) > 100*time.Millisecond {
			t.Fatalf("failing Acquire took %s: not fast", time.Since(start))
		}
		if !errors.Is(err, errRefused) || !strings.Contains(ae.Message, "pool db/u") ||
			!strings.Contains(ae.Message, errRefused.Error()) ||
			!strings.HasPrefix(ae.Hint, "check that the database is up and reachable; pgsidecar") {
			t.Fatalf("circuit error %+v", ae)
		}
		if p.Stats().AcquireRejected == 0 {
			t.Fatal("fail-fast Acquire not counted as rejected")
		}

		// The reconnect attempt keeps trying, one at a time, on the backoff schedule.
		time.Sleep(200 * time.Millisecond)
		_, _, attempts, peakConns := db.stats()
		if peakConns != 1 {
			t.Fatalf("%d connects in flight at once while down, want 1 reconnect attempt", peakConns)
		}
		// 200ms at >= 16ms (20ms minus jitter) per retry, then >= 32ms.
		if attempts < 3 || attempts > 15 {
			t.Fatalf("%d connect attempts in ~200ms: not following the backoff", attempts)
		}

		db.setDown(nil)
		waitFor(t, "HEALTHY again", func() bool { return p.State() == StateHealthy })
		waitFor(t, "warm to MinSize", func() bool { return p.Stats().Total == 2 })
		c := mustAcquire(t, p)
		c.Release()
		expectTransitions(t, log, "UNHEALTHY", "RECOVERING", "HEALTHY")
		for _, r := range log.find("pool state changed") {
			if r.attrs["reason"] == "" {
				t.Fatalf("transition without a reason: %+v", r)
			}
			if r.attrs["to"] == "UNHEALTHY" && r.level.String() != "WARN" {
				t.Fatalf("UNHEALTHY logged at %s", r.level)
			}
		}
	})
}

func TestMinSizeZeroStillConnectsAtStart(t *testing.T) {
	db := newFakeDB()
	db.setDown(errRefused)
	cfg := testConfig(db, newLogRecorder())
	p := startPool(t, cfg) // MinSize 0
	waitFor(t, "UNHEALTHY", func() bool { return p.State() == StateUnhealthy })

	db2 := newFakeDB()
	p2 := startPool(t, testConfig(db2, newLogRecorder()))
	if p2.State() != StateHealthy {
		t.Fatalf("state %s after a successful first connect, want HEALTHY", p2.State())
	}
	if _, _, attempts, _ := db2.stats(); attempts != 1 {
		t.Fatalf("%d connects at start with MinSize 0, want 1", attempts)
	}
}

func TestWaitersFailFastWhenCircuitOpens(t *testing.T) {
	db := newFakeDB()
	gate := make(chan struct{})
	db.setGate(gate)
	db.setDown(errRefused)
	cfg := testConfig(db, newLogRecorder())
	p, err := newPool(cfg, defaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	w := acquireAsync(context.Background(), p)
	waitFor(t, "waiter queued while INITIALIZING", waiting(p, 1))
	db.setGate(nil)
	close(gate) // the first connect now fails
	r := <-w
	asAcquireError(t, r.err, pgwire.CodeConnectionFailure)
}

func TestDegradedWhileConnectsFailButBackendsWork(t *testing.T) {
	db := newFakeDB()
	log := newLogRecorder()
	cfg := testConfig(db, log)
	cfg.MinSize = 1
	cfg.MaxSize = 3
	cfg.AcquireTimeout = 50 * time.Millisecond
	cfg.BackoffInitial = 20 * time.Millisecond
	p := startPool(t, cfg)
	waitFor(t, "warm", func() bool { return p.Stats().Idle == 1 })

	c1 := mustAcquire(t, p)
	db.setDown(errRefused)
	_, err := p.Acquire(context.Background()) // its connect fails; it waits, then times out
	asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if p.State() != StateDegraded {
		t.Fatalf("state %s, want DEGRADED while a backend still works", p.State())
	}

	// The last working backend goes away while connects fail: UNHEALTHY.
	c1.Destroy("killed")
	waitFor(t, "UNHEALTHY", func() bool { return p.State() == StateUnhealthy })

	db.setDown(nil)
	waitFor(t, "HEALTHY", func() bool { return p.State() == StateHealthy })
	expectTransitions(t, log, "HEALTHY", "DEGRADED", "UNHEALTHY", "RECOVERING", "HEALTHY")
}

func TestDegradedByAcquireTimeoutsThenHealthy(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 1
		cfg.AcquireTimeout = 10 * time.Millisecond
		p := startPool(t, cfg)
		c := mustAcquire(t, p)
		_, err := p.Acquire(context.Background())
		asAcquireError(t, err, pgwire.CodeTooManyConnections)
		if p.State() != StateDegraded || !strings.Contains(p.Stats().StateReason, "acquire timeouts") {
			t.Fatalf("state %s (%s), want DEGRADED by acquire timeouts", p.State(), p.Stats().StateReason)
		}
		c.Release()
		// The window is 100ms in tests: no more timeouts, back to HEALTHY.
		waitFor(t, "HEALTHY after the window", func() bool { return p.State() == StateHealthy })
	})
}

// expectTransitions waits until the logged state changes are exactly want
// (logging trails the state change by a moment) and fails if they differ.
func expectTransitions(t *testing.T, log *logRecorder, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := log.transitions()
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("transitions %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}
