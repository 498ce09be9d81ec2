// Duration histograms (acquire wait, transaction duration) over fixed
// buckets, counted with atomics only, and their snapshots (Histogram).

package pool

import (
	"sync/atomic"
	"time"
)

// DurationBuckets are the upper bounds of every duration histogram the pool
// keeps (acquire wait, transaction duration), from 100µs, below which a
// proxy hop is noise, to 60s, beyond which acquire_timeout or a leak report
// has long spoken. Fixed bounds let the hot path count with one atomic add
// and no allocation.
var DurationBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, 60 * time.Second,
}

// Histogram is a snapshot of a duration histogram over DurationBuckets.
type Histogram struct {
	// Counts[i] is the number of observations at or below
	// DurationBuckets[i] and above the bound before it (not cumulative);
	// the last element counts those above every bound.
	Counts [len(DurationBuckets) + 1]uint64
	// Sum is the total of every observation.
	Sum time.Duration
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// durationHistogram counts observations into DurationBuckets with atomics
// only: observe never blocks and never allocates, and a snapshot may run
// concurrently (each bucket is read once, so the snapshot's Count always
// equals the sum of its buckets; Sum may include an observation whose
// bucket it missed, which a scrape tolerates).
type durationHistogram struct {
	counts [len(DurationBuckets) + 1]atomic.Uint64
	sum    atomic.Int64 // nanoseconds
}

func (h *durationHistogram) observe(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < len(DurationBuckets) && d > DurationBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

func (h *durationHistogram) snapshot() Histogram {
	var s Histogram
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
	return s
}
