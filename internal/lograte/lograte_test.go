package lograte

import (
	"sync"
	"testing"
	"time"
)

func TestAllow(t *testing.T) {
	l := Limiter{Interval: 10 * time.Second}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, step := range []struct {
		after    time.Duration
		ok       bool
		unlogged uint64
	}{
		{0, true, 0},                   // the first event is logged
		{time.Second, false, 0},        // within the interval: held back
		{9 * time.Second, false, 0},    // still within it
		{10 * time.Second, true, 2},    // the interval is over: logged, with the two held back
		{10*time.Second + 1, false, 0}, // a new interval started at the last line
		{25 * time.Second, true, 1},    // a line after a quiet spell carries what came before it
		{60 * time.Second, true, 0},    // nothing held back since: zero
	} {
		ok, unlogged := l.Allow(t0.Add(step.after))
		if ok != step.ok || unlogged != step.unlogged {
			t.Errorf("Allow(t0+%v) = %v, %d; want %v, %d", step.after, ok, unlogged, step.ok, step.unlogged)
		}
	}
}

// TestAllowZeroInterval: with no interval every event is logged and none
// is held back.
func TestAllowZeroInterval(t *testing.T) {
	var l Limiter
	now := time.Now()
	for range 3 {
		if ok, unlogged := l.Allow(now); !ok || unlogged != 0 {
			t.Fatalf("Allow = %v, %d; want true, 0", ok, unlogged)
		}
	}
}

// TestAllowConcurrent: events from many goroutines are each either logged
// or counted once, never lost (go test -race checks the locking).
func TestAllowConcurrent(t *testing.T) {
	l := Limiter{Interval: time.Hour}
	now := time.Now()
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	var mu sync.Mutex
	logged := 0
	for range goroutines {
		wg.Go(func() {
			for range each {
				if ok, _ := l.Allow(now); ok {
					mu.Lock()
					logged++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if logged != 1 {
		t.Fatalf("%d events logged within one interval; want 1", logged)
	}
	ok, unlogged := l.Allow(now.Add(time.Hour))
	if !ok || unlogged != goroutines*each-1 {
		t.Fatalf("after the interval: Allow = %v, %d; want true, %d", ok, unlogged, goroutines*each-1)
	}
}
