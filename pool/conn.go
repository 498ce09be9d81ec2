// A backend's life in the pool: backend, and the holder's handle on one
// hold of it (Conn: Release, Destroy, SetBusy, leak bookkeeping). Its
// retirement and close are in retire.go.

package pool

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Owner describes the client holding a Conn, for leak reports.
type Owner interface {
	// LeakInfo returns the client's address, application_name and its last
	// statement (already truncated). Called from the pool's goroutine.
	LeakInfo() (addr, appName, lastStatement string)
}

// backend is one open server connection for its whole life in the pool;
// each Acquire hands it out under a new hold generation (see Conn).
type backend struct {
	srv       Server
	pid       uint32
	createdAt time.Time
	lifeRand  float64 // this backend's lifetime jitter draw, in [0, 1)
	queries   atomic.Int64
	txs       atomic.Int64 // busy periods served
	errors    atomic.Int64 // connection-level and protocol errors (AddErrors)
	sqlErrors atomic.Int64 // every ErrorResponse (AddErrors)
	stats     backendStats // the operator's record; guarded by p.mu

	// attachment belongs to the proxy; only the current holder touches
	// it, and the hand-over through p.mu orders those touches.
	attachment any
	// reclaim (SetReclaim), set and read like attachment.
	reclaim func()

	// Guarded by p.mu.
	idleSince time.Time
	fresh     bool // came straight from connect to a waiter: no need to validate
	// evict: closed to make room for another pool's waiter (group.go);
	// its slot's release ends that eviction.
	evict evictScope

	// gen counts hold starts and ends: odd while held (the generation of
	// the hold under way, which its Conn carries), even between holds.
	// handLocked moves it to the next odd number; Release or Destroy to
	// the next even one, by compare-and-swap from the handle's own
	// generation, so only the current handle can end the hold, once.
	gen atomic.Uint64

	// mu guards the hold: the holder writes it, the leak scan reads it.
	mu           sync.Mutex
	hold         uint64    // the generation of the hold under way; 0 between holds
	busyMode     bool      // SetBusy was called during this hold
	busySince    time.Time // zero while not busy
	leakReported time.Time // busySince of the busy period already reported
	owner        Owner
}

func newBackend(srv Server, now time.Time) *backend {
	return &backend{srv: srv, pid: srv.PID(), createdAt: now, lifeRand: rand.Float64(), fresh: true}
}

// lifetime is this backend's own lifetime under cfg (0 = unlimited); it
// is recomputed from the backend's draw, so Reconfigure applies to it.
func (b *backend) lifetime(cfg *Config) time.Duration {
	return lifetimeOf(cfg.MaxLifetime, cfg.LifetimeJitter, b.lifeRand)
}

func (b *backend) expired(cfg *Config, now time.Time) bool {
	lt := b.lifetime(cfg)
	return lt > 0 && now.Sub(b.createdAt) >= lt
}

// beginHold starts the hold of generation gen; until SetBusy is called,
// the whole hold counts as busy (transaction mode).
func (b *backend) beginHold(gen uint64, now time.Time) {
	b.mu.Lock()
	b.hold, b.busyMode, b.busySince, b.leakReported, b.owner = gen, false, now, time.Time{}, nil
	b.mu.Unlock()
}

// endHold ends the current hold at now. It returns how long the busy
// period still open at that moment lasted (ok false when none was open:
// session mode between transactions).
func (b *backend) endHold(now time.Time) (busy time.Duration, ok bool) {
	b.mu.Lock()
	if !b.busySince.IsZero() {
		busy, ok = now.Sub(b.busySince), true
	}
	b.hold, b.busyMode, b.busySince, b.owner = 0, false, time.Time{}, nil
	b.mu.Unlock()
	return busy, ok
}

// leakCheck reports whether the current busy period is older than
// timeout and not yet reported, and marks it reported: once per period.
func (b *backend) leakCheck(now time.Time, timeout time.Duration) (report bool, owner Owner, age time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hold == 0 || b.busySince.IsZero() || b.leakReported.Equal(b.busySince) {
		return false, nil, 0
	}
	age = now.Sub(b.busySince)
	if age < timeout {
		return false, nil, 0
	}
	b.leakReported = b.busySince
	return true, b.owner, age
}

// Conn is a Server checked out of a Pool: a handle for one hold of a
// backend, passed by value. It is the backend plus the generation of the
// hold it was handed out for (backend.gen), so Acquire allocates nothing,
// and a stale handle (double Release, Release after Destroy, or a copy
// kept past Release while the backend serves its next holder) is
// recognised and ignored instead of acting on the next hold: Release and
// Destroy log it as a bug, SetOwner, SetBusy, AddQueries and AddErrors do
// nothing. Server and Attachment work on any handle, as they reach the
// backend itself. The zero Conn is no handle at all (Acquire returns it
// with an error); calling a method on it panics. What must stay with the
// backend across holds goes in Attachment.
type Conn struct {
	p   *Pool
	b   *backend
	gen uint64 // the hold this handle is for: odd, equal to b.gen while it lasts
}

// current reports whether c's hold is the one under way.
func (c Conn) current() bool { return c.b.gen.Load() == c.gen }

// Server returns the backend connection.
func (c Conn) Server() Server { return c.b.srv }

// Attachment returns the opaque value the proxy keeps with this backend
// for its whole life (it survives Release and Acquire).
func (c Conn) Attachment() any { return c.b.attachment }

// SetAttachment sets the value Attachment returns, for this backend's
// whole life. Only the current holder may call it.
func (c Conn) SetAttachment(v any) { c.b.attachment = v }

// SetReclaim registers f, for this backend's whole life: the pool calls
// it before anyone but TryAcquire's caller uses the backend next, on the
// goroutine about to use it and without the pool's lock: before Acquire
// hands it out, and before the pool runs its validation query or an idle
// check on it. The proxy's event loop keeps the sockets it uses out of
// the Go runtime's poller, where no goroutine could wait on them; f puts
// one back. f must be cheap when there is nothing to do. Only the current
// holder may call SetReclaim.
func (c Conn) SetReclaim(f func()) { c.b.reclaim = f }

// reclaimed readies b for a goroutine of the pool's or an Acquire's
// caller (SetReclaim). The caller owns b.
func (b *backend) reclaimed() {
	if b.reclaim != nil {
		b.reclaim()
	}
}

// SetOwner records the client holding the Conn, for leak reports. It is
// cleared on Release.
func (c Conn) SetOwner(o Owner) {
	b := c.b
	b.mu.Lock()
	if b.hold == c.gen {
		b.owner = o
	}
	b.mu.Unlock()
}

// AddQueries counts n queries run on the backend, towards MaxQueries and
// Stats.Queries.
func (c Conn) AddQueries(n int64) {
	if n <= 0 || !c.current() {
		return
	}
	c.b.queries.Add(n)
	c.p.queries.Add(uint64(n))
}

// SetBusy marks whether a transaction is open on the backend, for leak
// detection and the transaction duration histogram in session mode: once
// it is called, only busy periods count and each one longer than
// LeakTimeout is reported once. A holder that never calls it (transaction
// mode) is busy from Acquire to Release.
func (c Conn) SetBusy(busy bool) {
	b := c.b
	now := time.Now()
	b.mu.Lock()
	if b.hold != c.gen {
		b.mu.Unlock()
		return
	}
	wasMode := b.busyMode
	b.busyMode = true
	var ended time.Duration
	wasBusy := !b.busySince.IsZero()
	switch {
	case !busy:
		// Only a busy period the holder opened (SetBusy(true)) was a
		// transaction. The hold's own, from Acquire to the first call, is
		// not one: a session-mode holder ends it at once (its client is
		// between transactions), and counting it would add an empty
		// transaction per hold.
		wasBusy = wasBusy && wasMode
		if wasBusy {
			ended = now.Sub(b.busySince)
		}
		b.busySince = time.Time{}
	case !wasMode || !wasBusy:
		wasBusy = false
		b.busySince = now
	}
	b.mu.Unlock()
	if !busy && wasBusy {
		c.p.txDurations.observe(ended)
		b.txs.Add(1)
	}
}

// end ends c's hold (Release, Destroy): it reports false, having logged
// the misuse, when c's hold has ended already.
func (c Conn) end(op string) bool {
	if !c.b.gen.CompareAndSwap(c.gen, c.gen+1) {
		c.p.misuse(op, c.b)
		return false
	}
	return true
}

// Release gives a clean backend (its last ReadyForQuery said 'I') back.
// It goes straight to the oldest waiter, else to the idle list, unless it
// is due for retirement (lifetime, query count, shrink, shutdown,
// RECONNECT, max_backend_errors) or owed to an older waiter of another
// pool of its group, in which case it is closed and, if callers wait,
// replaced. A second
// Release or Destroy on the same handle is a bug; it is logged and
// ignored.
func (c Conn) Release() {
	if c.end("Release") {
		c.release(time.Now())
	}
}

// ReleaseAt is Release at now, a clock reading the caller took itself,
// before the call and no earlier than the hold began (TryAcquireAt
// takes the same clock): it ends the hold and stamps the backend's last
// use and idle time.
func (c Conn) ReleaseAt(now time.Time) {
	if c.end("Release") { // in Release and ReleaseAt themselves: misuse names their caller
		c.release(now)
	}
}

// release is Release's work, once c.end has ended the hold.
func (c Conn) release(now time.Time) {
	p, b := c.p, c.b
	if busy, ok := b.endHold(now); ok {
		p.txDurations.observe(busy)
		b.txs.Add(1)
	}
	p.mu.Lock()
	p.active--
	p.lastAlive = now // the client's last ReadyForQuery came from the server
	b.stats.lastUsed = now
	if reason, detail := p.releaseRetireReasonLocked(b, now); reason != retireNone {
		p.retireLocked(b, reason, detail, now)
	} else if p.cfg.Group.trim(p, 1) == 1 {
		// A cap was lowered below the backends open (SIGHUP).
		b.evict = evictSurplus
		p.retireLocked(b, retireIdle, "surplus after max_db_connections / max_total_connections was lowered", now)
	} else if scope := p.owedElsewhereLocked(); scope != evictNone {
		// An older waiter of another pool of the group is owed this slot.
		b.evict = scope
		p.retireLocked(b, retireIdle, "closed for an older waiter of another pool (max_db_connections / max_total_connections)", now)
	} else {
		p.putLocked(b, now)
	}
	p.unlock()
}

// Destroy closes a backend whose state is unknown or broken (counted as
// Retired.Error, logged at debug with reason); if callers wait, a fresh
// backend is opened for them. A second Release or Destroy on the same
// handle is a bug; it is logged and ignored.
func (c Conn) Destroy(reason string) {
	if !c.end("Destroy") {
		return
	}
	p, b := c.p, c.b
	now := time.Now()
	if busy, ok := b.endHold(now); ok {
		p.txDurations.observe(busy)
		b.txs.Add(1)
	}
	b.errors.Add(1)
	p.mu.Lock()
	p.active--
	p.retireLocked(b, retireError, reason, now)
	p.unlock()
}

// misuse logs a Release or Destroy on a handle already given back, with
// the position of Release's or Destroy's caller (misuse is called from
// Conn.end), and otherwise does nothing.
func (p *Pool) misuse(op string, b *backend) {
	where := "unknown"
	if _, file, line, ok := runtime.Caller(3); ok {
		where = fmt.Sprintf("%s:%d", file, line)
	}
	p.log().Warn("bug: "+op+" called on a connection already released or destroyed; ignored",
		"pid", b.pid, "caller", where)
}
