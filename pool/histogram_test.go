package pool

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestDurationHistogramBuckets(t *testing.T) {
	var h durationHistogram
	for _, d := range []time.Duration{
		-time.Second,                            // clamped to 0: first bucket
		0,                                       // first bucket
		100 * time.Microsecond,                  // a bound is inclusive (le)
		100*time.Microsecond + 1,                // second bucket
		time.Second,                             // the 1s bucket
		time.Hour,                               // above every bound
		DurationBuckets[len(DurationBuckets)-1], // last bound
	} {
		h.observe(d)
	}
	s := h.snapshot()
	idx := func(d time.Duration) int {
		for i, b := range DurationBuckets {
			if b == d {
				return i
			}
		}
		t.Fatalf("no bucket %v", d)
		return -1
	}
	want := map[int]uint64{0: 3, 1: 1, idx(time.Second): 1, len(DurationBuckets) - 1: 1, len(DurationBuckets): 1}
	for i, c := range s.Counts {
		if c != want[i] {
			t.Errorf("bucket %d = %d, want %d (all %v)", i, c, want[i], s.Counts)
		}
	}
	if s.Count() != 7 {
		t.Errorf("count %d", s.Count())
	}
	wantSum := 100*time.Microsecond + 100*time.Microsecond + 1 + time.Second + time.Hour + DurationBuckets[len(DurationBuckets)-1]
	if s.Sum != wantSum {
		t.Errorf("sum %v, want %v", s.Sum, wantSum)
	}
	if n := testing.AllocsPerRun(100, func() { h.observe(3 * time.Millisecond) }); n != 0 {
		t.Errorf("observe allocates %v times", n)
	}
}

// Acquire records its wait; each hold (transaction mode) or each SetBusy
// period (session mode) records one transaction; per-pool clients follow
// AddClients.
func TestStatsHistogramsAndClients(t *testing.T) {
	// Fake time (testing/synctest): the waits below cost nothing and
	// cannot flake on a busy machine.
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.MaxSize = 1
		p := startPool(t, cfg)

		// Transaction mode: a hold of ~20ms is one transaction.
		c := mustAcquire(t, p)
		w := acquireAsync(context.Background(), p)
		waitFor(t, "waiter queued", waiting(p, 1))
		time.Sleep(20 * time.Millisecond)
		c.Release()
		r := <-w
		if r.err != nil {
			t.Fatal(r.err)
		}
		s := p.Stats()
		if n := s.AcquireWait.Count(); n != 2 {
			t.Fatalf("acquire wait count %d, want 2", n)
		}
		if s.AcquireWait.Sum < 20*time.Millisecond {
			t.Errorf("acquire wait sum %v: the waiter waited at least 20ms", s.AcquireWait.Sum)
		}
		if n := s.TransactionDuration.Count(); n != 1 || s.TransactionDuration.Sum < 20*time.Millisecond {
			t.Errorf("transaction count %d sum %v, want 1 and >= 20ms", n, s.TransactionDuration.Sum)
		}

		// Session mode: only the busy periods count, not the idle time
		// between, nor the hold's start, which the holder ends at once
		// (its client is between transactions): no empty transaction.
		c = r.c
		c.SetBusy(false)
		c.SetBusy(true)
		c.SetBusy(false)
		time.Sleep(30 * time.Millisecond)
		c.SetBusy(true)
		c.SetBusy(true) // still the same transaction
		c.SetBusy(false)
		c.Release()
		s = p.Stats()
		if n := s.TransactionDuration.Count(); n != 3 {
			t.Errorf("transaction count %d, want 3", n)
		}
		if s.TransactionDuration.Sum >= 20*time.Millisecond+30*time.Millisecond {
			t.Errorf("transaction sum %v includes the idle time between session transactions", s.TransactionDuration.Sum)
		}

		p.AddClients(3)
		p.AddClients(-1)
		if got := p.Stats().Clients; got != 2 {
			t.Errorf("clients %d, want 2", got)
		}
	})
}
