// The Pool itself: its fields and lock discipline (later, unlock, the state
// logs), New, Reconfigure and Close.

package pool

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is a pool of backend connections for one (database, user).
//
// Policies, in short:
//   - Acquire: LIFO idle reuse, FIFO waiters, direct handoff on Release;
//     open+opening+closing backends never exceed MaxSize.
//   - Connect failures back off 1, 2, 4, 8, 16s (backoffDelay, with up
//     to 20% jitter). While connects fail, only the maintainer's single
//     reconnect attempt connects. The circuit opens (UNHEALTHY, Acquire fails fast
//     with 08006) as soon as a connect fails while no backend is open:
//     one failure is enough, because with nothing open there is nothing
//     to wait for; only a hold (HoldOnRestart, hold.go) keeps Acquire
//     queueing for a while first. With backends still open a failure only makes the pool
//     DEGRADED, and waiters wait for those backends.
//   - DEGRADED also means: an Acquire timed out in the last 10s.
//   - Recycling happens only for idle backends or at Release, never
//     under a holder.
//
// All bookkeeping lives under one mutex that is only ever held for O(1)
// (or O(pool size)) work: connects, validation queries, closes and log
// writes happen outside it. Work that a critical section decides on but
// that must not run under the lock (closing a backend, logging a state
// change) is queued with p.later and run by p.unlock.
type Pool struct {
	name string
	opts options

	// ctx is canceled by Close; it stops the maintainer and aborts
	// connects and idle checks in flight. wg counts the maintainer, every
	// connect and idle-check goroutine and Pause's watchers, so that Close
	// returns only when all of them are gone.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{} // buffered(1): asks the maintainer to run now

	closeOnce sync.Once
	done      chan struct{} // closed when Close has finished

	state  atomic.Int32                // mirror of health.state, for a lock-free State()
	logger atomic.Pointer[slog.Logger] // cfg.Logger, readable without p.mu

	queries     atomic.Uint64
	validations atomic.Uint64
	leaks       atomic.Uint64
	waits       waitStats
	waitHist    durationHistogram // acquire wait, for Stats.AcquireWait
	txDurations durationHistogram // busy periods, for Stats.TransactionDuration
	clients     atomic.Int64      // see AddClients
	// elsewhere, when set, says how many callers wait for this pool
	// outside it (CountWaitingElsewhere).
	elsewhere atomic.Pointer[func() int]

	mu      sync.Mutex
	cfg     Config
	closed  bool
	idle    []*backend // a stack: the most recently released is on top
	all     map[*backend]struct{}
	open    int // established backends: idle, held, or being validated
	opening int // connects in flight
	closing int // retired, close in progress; open+opening+closing never exceeds MaxSize
	active  int // held by callers
	waiters waitQueue
	health  health
	// lastAlive is the last sign of life from the database (a backend
	// released by a client, a connect, a validation); the idle check runs
	// IdleCheckInterval after it. checking: an idle check is in flight.
	lastAlive time.Time
	checking  bool
	// recheck: the server closed every backend; connect once to see
	// whether the database is still there (see warmLocked).
	recheck bool
	// capUntil: the server refused a connect with 53300; while it is set
	// the pool's size is capSize, raised one at a time from capUntil on
	// (backpressure.go).
	capUntil time.Time
	capSize  int
	counts   counters
	admin    adminState // PAUSE, RECONNECT (admin.go)
	after    []func()

	// stateLogs are the state changes still to log, in order; logMu
	// lets one goroutine at a time log them (see drainStateLogs).
	stateLogs []func()
	logMu     sync.Mutex
}

// options are the knobs tests turn; New uses the defaults.
type options struct {
	// degradeWindow: an acquire timeout keeps the pool DEGRADED this long.
	degradeWindow time.Duration
	// closeTimeout bounds closing one backend.
	closeTimeout time.Duration
}

var defaultOptions = options{degradeWindow: 10 * time.Second, closeTimeout: 2 * time.Second}

// counters are the statistics kept under p.mu.
type counters struct {
	acquisitions  uint64
	timeouts      uint64
	rejected      uint64
	connects      uint64
	connectErrors uint64
	peakActive    int
	peakWaiting   int
	retired       Retired
}

// New validates cfg, starts the pool's maintainer, which warms MinSize
// backends in the background, and returns at once. It fails only on an
// invalid Config: a database that is down makes the pool UNHEALTHY (see
// Stats), not New fail, because a sidecar often starts before its
// database. At least one connect is attempted even with MinSize 0, so a
// database that is down is noticed at start.
func New(cfg Config) (*Pool, error) {
	return newPool(cfg, defaultOptions)
}

func newPool(cfg Config, opts options) (*Pool, error) {
	cfg = cfg.withName()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("pool %s: invalid config: %w", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		name:   cfg.Name,
		opts:   opts,
		ctx:    ctx,
		cancel: cancel,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		cfg:    cfg,
		all:    make(map[*backend]struct{}),
	}
	p.health.state = StateInitializing
	p.health.reason = "starting: first connection attempt in progress"
	p.health.since = time.Now()
	p.state.Store(int32(StateInitializing))
	p.logger.Store(cfg.Logger)
	p.log().Info("pool created", "state", StateInitializing, "min_size", cfg.MinSize, "max_size", cfg.MaxSize)

	cfg.Group.join(p)
	p.mu.Lock()
	p.maintainLocked(time.Now()) // the first connect starts now, not a tick later
	p.wg.Add(1)
	go p.maintainer()
	p.unlock()
	return p, nil
}

// Name returns the pool's name ("database/user").
func (p *Pool) Name() string { return p.name }

// State returns the pool's health state without taking any lock.
func (p *Pool) State() State { return State(p.state.Load()) }

// log returns the pool's logger; callers need not hold p.mu because the
// logger is replaced only as a whole value.
func (p *Pool) log() *slog.Logger {
	return p.loggerBase().With("pool", p.name)
}

func (p *Pool) loggerBase() *slog.Logger {
	if l := p.logger.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// later queues f to run after the current critical section, outside the
// lock. Only call it with p.mu held.
func (p *Pool) later(f func()) { p.after = append(p.after, f) }

// unlock releases p.mu and then runs the work queued with later, and
// logs any state changes queued meanwhile.
func (p *Pool) unlock() {
	after := p.after
	p.after = nil
	pending := len(p.stateLogs) > 0
	p.mu.Unlock()
	if pending {
		p.drainStateLogs()
	}
	for _, f := range after {
		f()
	}
}

// drainStateLogs logs queued state changes in the order they happened.
// One goroutine at a time drains (logMu); one that finds a drainer at
// work leaves its changes to it, so p.mu is never held while waiting for
// a log write and Stats never waits on I/O. The re-check after letting go
// of logMu catches changes queued by a goroutine that found logMu taken
// just before the drainer's last look.
func (p *Pool) drainStateLogs() {
	for p.logMu.TryLock() {
		for {
			p.mu.Lock()
			logs := p.stateLogs
			p.stateLogs = nil
			p.mu.Unlock()
			if len(logs) == 0 {
				break
			}
			for _, f := range logs {
				f()
			}
		}
		p.logMu.Unlock()
		p.mu.Lock()
		more := len(p.stateLogs) > 0
		p.mu.Unlock()
		if !more {
			return
		}
	}
}

// poke wakes the maintainer without blocking.
func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Reconfigure applies a new Config live: sizes, timeouts, validation,
// recycling and leak settings change for existing backends and waiters
// too (a backend's lifetime is recomputed from its own jitter). Name,
// Database and User are kept; a nil Connect or Logger keeps the old one.
// Shrinking MaxSize closes surplus idle backends now and surplus busy
// ones when they are released; growing it serves waiters at once. An
// invalid Config is logged and ignored, the old one stays.
func (p *Pool) Reconfigure(cfg Config) {
	p.mu.Lock()
	old := p.cfg
	cfg.Name, cfg.Database, cfg.User = old.Name, old.Database, old.User
	if cfg.Connect == nil {
		cfg.Connect = old.Connect
	}
	if cfg.Logger == nil {
		cfg.Logger = old.Logger
	}
	if cfg.OptionName == nil {
		cfg.OptionName = old.OptionName
	}
	cfg.Group = old.Group // membership is fixed at New
	cfg = cfg.withName()
	if err := cfg.validate(); err != nil {
		p.unlock()
		p.log().Error("pool reconfigure rejected; keeping the old settings", "err", err)
		return
	}
	p.cfg = cfg
	p.logger.Store(cfg.Logger)
	if !p.closed {
		p.maintainLocked(time.Now())
	}
	p.later(func() {
		p.log().Info("pool reconfigured", "min_size", cfg.MinSize, "max_size", cfg.MaxSize,
			"acquire_timeout", cfg.AcquireTimeout, "max_waiters", cfg.MaxWaiters)
	})
	p.unlock()
	p.poke()
}

// Close shuts the pool down: waiters fail with 57P01, idle backends are
// closed, the maintainer and any connect in flight stop, and the state
// ends TERMINATED. Backends still held are closed when they are released
// or destroyed. Close is idempotent and every call returns only when the
// pool has stopped.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.setStateLocked(StateShuttingDown, "pool is closing")
		p.failWaitersLocked(p.shutdownError())
		p.cfg.Group.leave(p) // its demands and grants go to the other pools
		for _, b := range p.idle {
			p.retireLocked(b, retireShutdown, "pool closed", time.Now())
		}
		p.idle = nil
		p.cancel()
		p.unlock()

		p.wg.Wait()

		p.mu.Lock()
		reason := "closed"
		if p.active > 0 {
			reason = fmt.Sprintf("closed; %d backends still held will be closed when released", p.active)
		}
		p.setStateLocked(StateTerminated, reason)
		p.unlock()
		close(p.done)
	})
	<-p.done
}
