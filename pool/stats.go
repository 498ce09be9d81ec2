// Stats, a pool's point-in-time snapshot (sizes, counters, retirements,
// histograms), and the acquire wait record behind its average and p99.

package pool

import (
	"slices"
	"time"
)

// Stats is a point-in-time snapshot; reading it never blocks the data path.
type Stats struct {
	Name             string    `json:"name"`
	Database         string    `json:"database"`
	User             string    `json:"user"`
	State            State     `json:"state"` // marshals as text, e.g. "HEALTHY"
	StateReason      string    `json:"state_reason"`
	StateSince       time.Time `json:"state_since"`
	MinSize          int       `json:"min_size"`
	MaxSize          int       `json:"max_size"`
	Total            int       `json:"total"`  // open backends (idle + active + being validated)
	Idle             int       `json:"idle"`   // ready in the idle list
	Active           int       `json:"active"` // held by clients
	Waiting          int       `json:"waiting"`
	PeakActive       int       `json:"peak_active"`
	PeakWaiting      int       `json:"peak_waiting"`
	Acquisitions     uint64    `json:"acquisitions"`
	AcquireTimeouts  uint64    `json:"acquire_timeouts"`
	AcquireRejected  uint64    `json:"acquire_rejected"` // queue full or circuit open
	WaitAvgMs        float64   `json:"wait_avg_ms"`      // over all acquisitions
	WaitP99Ms        float64   `json:"wait_p99_ms"`      // over the last 1024 acquisitions
	Connects         uint64    `json:"connects"`
	ConnectErrors    uint64    `json:"connect_errors"`
	LastConnectError string    `json:"last_connect_error,omitempty"`
	Validations      uint64    `json:"validations"`
	Leaks            uint64    `json:"leaks"`
	Queries          uint64    `json:"queries"` // as counted by AddQueries
	Retired          Retired   `json:"retired"`
	Clients          int       `json:"clients"` // connected to this pool's database and user, as counted by AddClients
	Paused           bool      `json:"paused"`  // PAUSE: new transactions wait until RESUME

	// AcquireWait is the time each acquisition waited for a backend.
	AcquireWait Histogram `json:"-"`
	// TransactionDuration is the length of each busy period of a hold:
	// Acquire to Release when the holder never calls SetBusy (transaction
	// mode), else each SetBusy(true) to SetBusy(false) (session mode:
	// explicit transactions).
	TransactionDuration Histogram `json:"-"`
}

// Retired counts closed backends by reason.
type Retired struct {
	Lifetime   uint64 `json:"lifetime"`
	Idle       uint64 `json:"idle"`       // idle past MaxIdle, surplus after MaxSize shrank, NoIdle, or closed for another pool of the group
	Queries    uint64 `json:"queries"`    // reached MaxQueries
	Error      uint64 `json:"error"`      // Destroy (broken or unknown state), MaxBackendErrors reached, or a validation cut short by the caller's ctx
	Validation uint64 `json:"validation"` // failed the validation query, the idle check or the socket peek (closed by the server)
	Shutdown   uint64 `json:"shutdown"`
	Reconnect  uint64 `json:"reconnect"` // recycled by RECONNECT
}

// Total is the number of backends closed for any reason.
func (r Retired) Total() uint64 {
	return r.Lifetime + r.Idle + r.Queries + r.Error + r.Validation + r.Shutdown + r.Reconnect
}

// Stats returns a snapshot. It holds the pool's mutex only to copy
// counters (never across I/O) and sorts the wait window outside it.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	cfg := &p.cfg
	h := &p.health
	s := Stats{
		Name:            p.name,
		Database:        cfg.Database,
		User:            cfg.User,
		State:           h.state,
		StateReason:     h.reason,
		StateSince:      h.since,
		MinSize:         cfg.MinSize,
		MaxSize:         cfg.MaxSize,
		Total:           p.open,
		Idle:            len(p.idle),
		Active:          p.active,
		Waiting:         p.waiters.len(),
		PeakActive:      p.counts.peakActive,
		PeakWaiting:     p.counts.peakWaiting,
		Acquisitions:    p.counts.acquisitions,
		AcquireTimeouts: p.counts.timeouts,
		AcquireRejected: p.counts.rejected,
		Connects:        p.counts.connects,
		ConnectErrors:   p.counts.connectErrors,
		Retired:         p.counts.retired,
		Paused:          p.admin.paused,
	}
	if h.lastErr != nil {
		s.LastConnectError = h.lastErr.Error()
	}
	waits := p.waits.copyLocked()
	p.unlock()
	s.Validations = p.validations.Load()
	s.Leaks = p.leaks.Load()
	s.Queries = p.queries.Load()
	s.WaitAvgMs, s.WaitP99Ms = waits.summary()
	s.Clients = int(p.clients.Load())
	s.AcquireWait = p.waitHist.snapshot()
	s.TransactionDuration = p.txDurations.snapshot()
	return s
}

// AddClients counts delta clients connecting to (positive) or leaving
// (negative) this pool's database and user, for Stats.Clients. The proxy
// calls it once when a client has logged in and once when it goes.
func (p *Pool) AddClients(delta int) { p.clients.Add(int64(delta)) }

// waitWindow is how many recent acquisitions WaitP99Ms covers.
const waitWindow = 1024

// waitStats records acquire wait times: a running sum for the average and
// a ring of the most recent ones for the p99. Guarded by p.mu: an acquire
// records its wait in the critical section that hands the backend out
// (no second lock per acquire), and Stats copies the ring under p.mu and
// sorts the copy outside it.
type waitStats struct {
	ring [waitWindow]time.Duration
	n    uint64
	sum  time.Duration
}

func (w *waitStats) recordLocked(d time.Duration) {
	w.ring[w.n%waitWindow] = d
	w.n++
	w.sum += d
}

// waitSnapshot is a copy of waitStats, for summary.
type waitSnapshot struct {
	n      uint64
	sum    time.Duration
	recent []time.Duration
}

func (w *waitStats) copyLocked() waitSnapshot {
	s := waitSnapshot{n: w.n, sum: w.sum, recent: make([]time.Duration, min(w.n, waitWindow))}
	copy(s.recent, w.ring[:len(s.recent)])
	return s
}

// summary returns the average over all waits and the p99 over the
// window, in milliseconds.
func (s waitSnapshot) summary() (avgMs, p99Ms float64) {
	n, sum, recent := s.n, s.sum, s.recent
	if n == 0 {
		return 0, 0
	}
	slices.Sort(recent)
	// Nearest rank: the smallest value with at least 99% at or below it.
	rank := (len(recent)*99 + 99) / 100
	return ms(sum / time.Duration(n)), ms(recent[rank-1])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
