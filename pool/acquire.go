// Acquire and its non-waiting forms (TryAcquire, AcquireIfFree, Busy): the idle fast
// path, the wait in line, and the socket peek and validation query a backend
// passes before it is handed out.

package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Acquire returns a backend for the caller's exclusive use until it calls
// Release or Destroy on the returned Conn.
//
// It takes the most recently used idle backend (LIFO: warm first, so the
// reaper retires the cold ones). With none idle it joins a FIFO queue and
// asks for a new backend if the pool is below MaxSize (a connect in
// flight counts against MaxSize); every backend that becomes free goes to
// the oldest waiter directly. The wait ends at AcquireTimeout or when ctx
// ends, whichever is first.
//
// A backend idle at least PeekAfterIdle has its socket peeked first
// (peekSocket), and one idle longer than ValidateAfterIdle is validated
// too; one that fails is closed and the caller gets another one, as many
// times as it takes: the next idle one, else a new connect (keeping its
// place at the head of the queue). So the caller sees an error only if
// the database itself is unreachable. A backend released less than
// PeekAfterIdle ago is handed out unchecked: if the server closed it
// since (and the maintainer's peek has not seen it yet), the caller finds
// out from its first read or write and must Destroy it and acquire again.
//
// Errors are *AcquireError: 53300 on timeout or a full queue, 08006 at
// once while the pool is UNHEALTHY with no hold on (the circuit is open;
// a hold queues instead, hold.go), 57P01 after
// Close, 57014 when ctx is canceled.
func (p *Pool) Acquire(ctx context.Context) (Conn, error) {
	return p.acquire(ctx, false)
}

// ErrWouldWait is AcquireIfFree's answer when a backend would come only
// from another holder's release.
var ErrWouldWait = errors.New("pool: no backend without waiting for a release")

// AcquireIfFree is Acquire for a caller that would rather do without a
// backend than wait for another holder to release one: a session-mode
// client at login. (Applications open their connection pools eagerly,
// pgbench all its clients before the first transaction: a login that
// waited for a release could wait for clients that themselves wait for
// the application's other logins.) It decides under the pool's lock, as
// it queues, so two callers never both count on the last backend: it
// takes an idle backend, or joins the queue only when a connect in
// flight that no earlier waiter is owed, or one there is room to start,
// will serve it, and then waits for that connect as Acquire would (if
// the connect fails, it waits on as Acquire does). Otherwise, and while
// the pool is paused, it returns ErrWouldWait at once, queueing nothing.
// Its other errors are Acquire's.
func (p *Pool) AcquireIfFree(ctx context.Context) (Conn, error) {
	return p.acquire(ctx, true)
}

// acquire is Acquire, or AcquireIfFree with ifFree.
func (p *Pool) acquire(ctx context.Context, ifFree bool) (Conn, error) {
	start := time.Now()
	if ctx.Err() != nil {
		p.mu.Lock()
		err := p.ctxErrorLocked(ctx, 0, p.waiters.len())
		if p.closed {
			err = p.shutdownError()
		}
		p.unlock()
		return Conn{}, err
	}
	// The common case in one critical section and on one clock read: an
	// idle backend that needs no check. Anything else (nothing idle, a
	// peek or validation due, an expired backend, waiters, pause, circuit)
	// takes the long way below, which deals with it as it always did.
	if c, ok := p.tryIdle(start, false); ok {
		c.b.reclaimed()
		return c, nil
	}
	var timer *time.Timer // AcquireTimeout, started on the first wait
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	front := false
	others := p.waitingElsewhere() // read once: only the first take may refuse
	for {
		b, w, timeout, err := p.take(front, ifFree, start, others)
		if err != nil {
			return Conn{}, err
		}
		if b == nil {
			if timer == nil {
				timer = time.NewTimer(timeout - time.Since(start))
			}
			if b, err = p.await(ctx, w, timer.C, start); err != nil {
				return Conn{}, err
			}
		}
		c, ok, err := p.hand(ctx, b, start)
		if ok {
			b.reclaimed()
		}
		if ok || err != nil {
			return c, err
		}
		if ctx.Err() != nil {
			p.mu.Lock()
			err := p.ctxErrorLocked(ctx, time.Since(start), p.waiters.len())
			p.unlock()
			return Conn{}, err
		}
		// The backend failed its checks and was closed: try again, first
		// in line, with no limit on the tries: each one closed a backend,
		// so they end when the idle list is empty and a connect is made.
		front = true
	}
}

// TryAcquire is Acquire for a caller that must not wait (the proxy's
// event loop): it hands out the idle backend on top when it can be had
// at once, and otherwise reports false without queueing, connecting,
// closing or blocking, so the caller takes the waiting path (Acquire on
// a goroutine), which deals with whatever stood in the way. It returns
// false when callers already wait (they are first in line), the pool is
// closed, paused or UNHEALTHY with no hold on, no backend is idle, or the backend on top
// is past its lifetime, due for validation (a query) or fails its socket
// peek (which never blocks): retiring one closes it, which can wait.
func (p *Pool) TryAcquire() (Conn, bool) {
	return p.tryIdle(time.Now(), true)
}

// TryAcquireAt is TryAcquire at now, a clock reading the caller took
// itself, before the call and at most milliseconds ago (the proxy's event
// loop reads the clock once per batch of events): it decides the idle
// backend's lifetime and validation, and starts the hold.
func (p *Pool) TryAcquireAt(now time.Time) (Conn, bool) {
	return p.tryIdle(now, true)
}

// Busy reports whether an Acquire now would wait for another holder to
// release a backend: none is idle and every connect in flight, or that
// there is room to start, already has a waiter to serve; or the pool is
// paused. A growing pool is not busy, and neither is one whose TryAcquire
// failed on an idle backend due for validation, a failed peek or
// retirement: Acquire deals with those at once.
func (p *Pool) Busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.admin.paused || len(p.idle) == 0 && p.waiters.len() >= p.servableLocked()
}

// tryIdle is TryAcquire at now. With peek false a backend whose socket
// is due for a peek is left for Acquire's hand, which peeks outside p.mu.
func (p *Pool) tryIdle(now time.Time, peek bool) (Conn, bool) {
	p.mu.Lock()
	n := len(p.idle)
	if n == 0 || p.closed || p.admin.paused || p.waiters.len() > 0 || (p.health.state == StateUnhealthy && !p.holdingLocked(now)) {
		p.mu.Unlock()
		return Conn{}, false
	}
	b := p.idle[n-1]
	cfg := &p.cfg
	if b.expired(cfg, now) || cfg.ValidationQuery != "" && !b.fresh && (cfg.ValidateAfterIdle <= 0 || now.Sub(b.idleSince) >= cfg.ValidateAfterIdle) {
		p.mu.Unlock()
		return Conn{}, false
	}
	if p.peekDueLocked(b, now) && (!peek || peekSocket(b.srv.NetConn()) != nil) {
		// Peeked under p.mu (b is still idle, nobody else reads it), or
		// left unpeeked for Acquire's hand: it stays for Acquire, which
		// peeks it outside the lock and closes it if it fails.
		p.mu.Unlock()
		return Conn{}, false
	}
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return p.handLocked(b, now, now), true
}

// take pops an idle backend, or queues a waiter (and asks for a connect
// if there is room). It fails fast when the pool is closed, the circuit
// is open, or the queue is full: MaxWaiters callers wait already, in the
// pool's queue and, others of them, outside it (waitingElsewhere). With
// ifFree it queues only a waiter that a connect will serve
// (AcquireIfFree), and returns ErrWouldWait instead.
func (p *Pool) take(front, ifFree bool, start time.Time, others int) (*backend, *waiter, time.Duration, error) {
	now := time.Now()
	p.mu.Lock()
	defer p.unlock()
	switch {
	case p.closed:
		return nil, nil, 0, p.shutdownError()
	case p.health.state == StateUnhealthy && !p.holdingLocked(now):
		p.counts.rejected++
		return nil, nil, 0, p.circuitErrorLocked(now)
	}
	for n := len(p.idle); n > 0 && !p.admin.paused; n = len(p.idle) {
		b := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if b.expired(&p.cfg, now) {
			p.retireLocked(b, retireLifetime, fmt.Sprintf("lifetime %s reached", fmtDuration(b.lifetime(&p.cfg))), now)
			continue
		}
		return b, nil, 0, nil
	}
	if ifFree && (p.admin.paused || p.waiters.len()+others >= p.servableLocked()) {
		// Every connect in flight or with room to start is owed to a
		// waiter already (those outside the pool count too): this one
		// would wait for a release.
		return nil, nil, 0, ErrWouldWait
	}
	if !front && p.cfg.MaxWaiters > 0 && p.queuedLocked()+others >= p.cfg.MaxWaiters {
		p.counts.rejected++
		return nil, nil, 0, p.queueFullErrorLocked(p.waiters.len() + others)
	}
	w := newWaiter()
	w.at = start
	if front {
		p.waiters.pushFront(w)
	} else {
		p.waiters.pushBack(w)
	}
	p.counts.peakWaiting = max(p.counts.peakWaiting, p.waiters.len())
	p.replenishLocked()
	return nil, w, p.cfg.AcquireTimeout, nil
}

// RefuseWaiter is Acquire's max_waiters check for a caller about to wait
// for this pool outside it: `others` callers already wait for it there (the
// proxy's event-loop queue, whose requests wait before any of them calls
// Acquire) and count as the pool's own waiters do. It returns the 53300
// Acquire would refuse the caller with, counted as a refusal, or nil when
// the caller may wait. Callers that wait in the pool are not counted in
// others: Acquire counts them. (Acquire counts those outside through
// CountWaitingElsewhere.)
func (p *Pool) RefuseWaiter(others int) *AcquireError {
	p.mu.Lock()
	defer p.unlock()
	if p.cfg.MaxWaiters == 0 || p.queuedLocked()+others < p.cfg.MaxWaiters {
		return nil
	}
	p.counts.rejected++
	return p.queueFullErrorLocked(p.waiters.len() + others)
}

// CountWaitingElsewhere tells the pool how many callers wait for it
// outside it: n reports them, the proxy's event-loop queue for this pool,
// whose requests wait there before any of them calls Acquire. Acquire
// counts them against MaxWaiters with its own waiters, as RefuseWaiter
// counts its others, so the limit holds whichever queue a new waiter
// joins. n reads that queue itself: the pool keeps no count of its own,
// which a path that forgot to decrement it could leave refusing for ever.
// n is called without the pool's lock, and must not call into the pool.
// One n per pool: a later call replaces it.
func (p *Pool) CountWaitingElsewhere(n func() int) { p.elsewhere.Store(&n) }

// waitingElsewhere is CountWaitingElsewhere's count now (0 if none set).
// Without p.mu.
func (p *Pool) waitingElsewhere() int {
	if n := p.elsewhere.Load(); n != nil {
		return (*n)()
	}
	return 0
}

// queuedLocked is how many waiters wait for a backend to be released:
// those that a connect in flight, or one there is room to start, will
// not serve. MaxWaiters bounds this number, not the waiters as a whole,
// so a pool that can still open backends never refuses a client; while
// connects fail nothing new is opened, so then every waiter counts.
func (p *Pool) queuedLocked() int {
	return max(p.waiters.len()-p.servableLocked(), 0)
}

// servableLocked is how many waiters new backends will serve: the connects
// in flight, and those there is room to start (none while connects fail).
func (p *Pool) servableLocked() int {
	servable := p.opening
	if p.health.failures == 0 {
		servable += max(p.roomLocked(), 0)
	}
	return servable
}

// await waits for w's grant, the timeout or the end of ctx. A waiter that
// gives up leaves the queue; if a backend was handed to it at that very
// moment, it keeps it when its ctx is still alive (the grant beat the
// timer) and passes it on otherwise, so no backend is ever lost.
func (p *Pool) await(ctx context.Context, w *waiter, timeout <-chan time.Time, start time.Time) (*backend, error) {
	select {
	case g := <-w.ch:
		return g.b, g.err
	case <-ctx.Done():
	case <-timeout:
		if g, got, _ := p.waitPaused(ctx, w); got {
			return g.b, g.err
		}
	}
	now := time.Now()
	p.mu.Lock()
	if w.queued {
		waiting := p.waiters.len()
		p.waiters.remove(w)
		var err *AcquireError
		if ctx.Err() != nil {
			err = p.ctxErrorLocked(ctx, now.Sub(start), waiting)
		} else {
			err = p.timeoutErrorLocked(now.Sub(start), waiting, nil)
		}
		if err.Code == pgwire.CodeTooManyConnections {
			p.counts.timeouts++
			h := &p.health
			if len(h.timeouts) >= maxRecentTimeouts {
				h.timeouts = h.timeouts[1:]
			}
			h.timeouts = append(h.timeouts, now)
			p.evalStateLocked(now)
		}
		p.replenishLocked() // one demand fewer on the group
		p.unlock()
		return nil, err
	}
	p.unlock()
	// No longer queued: the grant was sent under the lock, it is here.
	g := <-w.ch
	if g.err != nil || ctx.Err() == nil {
		return g.b, g.err
	}
	p.mu.Lock()
	p.putLocked(g.b, now)
	err := p.ctxErrorLocked(ctx, now.Sub(start), p.waiters.len())
	p.unlock()
	return nil, err
}

// hand checks that b's socket is quiet (unless b was released less than
// PeekAfterIdle ago), validates b if it has been idle too long, and then
// gives it to the caller. ok is false, with a nil error, when b failed
// either check (it is closed already) and the caller should try again.
func (p *Pool) hand(ctx context.Context, b *backend, start time.Time) (c Conn, ok bool, err error) {
	now := time.Now()
	p.mu.Lock()
	if p.peekDueLocked(b, now) {
		p.unlock()
		// The caller owns b now, so its socket can be peeked: a backend
		// the server closed or is closing (a pending FATAL) goes, and
		// the caller tries the next one.
		if err := peekSocket(b.srv.NetConn()); err != nil {
			p.mu.Lock()
			p.retireLocked(b, retireValidation, err.Error(), time.Now())
			p.unlock()
			return Conn{}, false, nil
		}
		now = time.Now()
		p.mu.Lock()
	}
	if !p.closed {
		cfg := &p.cfg
		if cfg.ValidationQuery != "" && !b.fresh && (cfg.ValidateAfterIdle <= 0 || now.Sub(b.idleSince) >= cfg.ValidateAfterIdle) {
			q, timeout := cfg.ValidationQuery, cfg.ConnectTimeout
			p.unlock()
			if !p.validate(ctx, b, q, timeout) {
				return Conn{}, false, nil
			}
			now = time.Now()
			p.mu.Lock()
			p.lastAlive = now
		}
	}
	if p.closed {
		p.retireLocked(b, retireShutdown, "pool closed", now)
		err := p.shutdownError()
		p.unlock()
		return Conn{}, false, err
	}
	return p.handLocked(b, now, start), true, nil
}

// handLocked gives b, checked, to the caller: it counts the hold and
// starts it. It unlocks p.mu.
func (p *Pool) handLocked(b *backend, now, start time.Time) Conn {
	b.fresh = false
	p.active++
	p.counts.peakActive = max(p.counts.peakActive, p.active)
	p.counts.acquisitions++
	wait := now.Sub(start)
	p.waits.recordLocked(wait)
	c := Conn{p: p, b: b, gen: b.gen.Add(1)}
	p.unlock()
	b.beginHold(c.gen, now)
	p.waitHist.observe(wait)
	return c
}

// peekDueLocked reports whether b's socket must be peeked before it is
// handed out: always with PeekAfterIdle 0, else once b has been idle that
// long. A backend released a moment ago was answering then; peeking it
// costs a system call per transaction for the rare backend that died
// since, which the proxy finds anyway by its first reply (EOF or a FATAL
// before any reply byte reached the client) and replaces by sending the
// request again on another backend (proxy/replay.go). Between the two,
// the maintainer peeks every idle socket each tick.
func (p *Pool) peekDueLocked(b *backend, now time.Time) bool {
	d := p.cfg.PeekAfterIdle
	return d <= 0 || now.Sub(b.idleSince) >= d
}

// validate runs the validation query on b, bounded by ConnectTimeout. On
// failure b is closed: as Retired.Validation, or as Retired.Error when
// the caller's own ctx cut it short (the backend's state is then unknown
// but says nothing about the backend's health).
func (p *Pool) validate(ctx context.Context, b *backend, query string, timeout time.Duration) bool {
	p.validations.Add(1)
	vctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	b.reclaimed()
	err := b.srv.Exec(vctx, query)
	cancel()
	if err == nil {
		p.mu.Lock()
		b.stats.validatedAt, b.stats.validateTook = time.Now(), time.Since(start)
		p.mu.Unlock()
		return true
	}
	reason := retireValidation
	if ctx.Err() != nil {
		reason = retireError
	}
	p.mu.Lock()
	p.retireLocked(b, reason, fmt.Sprintf("validation query %q failed: %v", query, err), time.Now())
	p.unlock()
	return false
}
