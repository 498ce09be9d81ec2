// The maintainer, the pool's background goroutine: its tick, one round of
// upkeep (idle backends retired and peeked, group evictions, the idle check,
// reconnects, warming to MinSize), and leak reports.

package pool

import (
	"fmt"
	"time"
)

// Bounds of the maintainer's tick. It runs more often when the pool's
// own durations are short (tests, aggressive settings) and at most once a
// second otherwise; a poke runs it at once.
const (
	minTick = 5 * time.Millisecond
	maxTick = time.Second
)

// maintainer is the pool's background goroutine: it keeps MinSize warm,
// runs the reconnect attempts, retires idle backends past their lifetime or
// idle limit, reports leaks and lets time-based states end. It is
// started by New and stopped by Close (p.ctx, p.wg).
func (p *Pool) maintainer() {
	defer p.wg.Done()
	p.mu.Lock()
	next := p.nextTickLocked(time.Now())
	p.unlock()
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		now := time.Now()
		p.mu.Lock()
		if p.closed {
			p.unlock()
			return
		}
		held := p.maintainLocked(now)
		leakTimeout := p.cfg.LeakTimeout
		next := p.nextTickLocked(now)
		p.unlock()
		p.reportLeaks(held, now, leakTimeout)
		t.Reset(next)
	}
}

// nextTickLocked is the delay to the next maintainer run: a quarter of
// the shortest duration it enforces, bounded by minTick and maxTick, and
// no later than the next reconnect attempt is due.
func (p *Pool) nextTickLocked(now time.Time) time.Duration {
	cfg := &p.cfg
	d := maxTick
	for _, v := range []time.Duration{
		cfg.MaxIdle,
		cfg.LeakTimeout,
		time.Duration(float64(cfg.MaxLifetime) * (1 - cfg.LifetimeJitter)),
		p.opts.degradeWindow,
	} {
		if v > 0 {
			d = min(d, v/4)
		}
	}
	if h := &p.health; h.failures > 0 && !h.retrying {
		d = min(d, h.retryAt.Sub(now))
	}
	if !p.capUntil.IsZero() {
		d = min(d, p.capUntil.Sub(now))
	}
	if h := &p.health; !h.holdUntil.IsZero() {
		d = min(d, h.holdUntil.Sub(now))
	}
	if p.idleCheckPendingLocked() {
		d = min(d, p.lastAlive.Add(cfg.IdleCheckInterval).Sub(now))
	}
	return max(d, minTick)
}

// maintainLocked does one round of upkeep, in this order, and returns the
// backends to check for leaks (outside the lock, since Owner.LeakInfo is
// the proxy's code).
func (p *Pool) maintainLocked(now time.Time) (leakCandidates []*backend) {
	dead := p.sweepIdleLocked(now)
	p.evictForGroupLocked()
	if p.idleCheckDueLocked(now) {
		p.spawnIdleCheckLocked()
	}
	p.endHoldLocked(now)
	p.stepUpLocked(now, false)
	p.connectLocked(now, dead)
	p.evalStateLocked(now)
	return p.leakCandidatesLocked()
}

// sweepIdleLocked retires the idle backends that must go and peeks the
// others, coldest (bottom of the stack) first; it returns how many peeks
// found a backend dead. Their sockets are peeked here, under the lock,
// because only while a backend is in the idle list does nobody else read
// it (see peekSocket); a peek is one non-blocking syscall. So a backend
// the server closed (shutdown, pg_terminate_backend,
// idle_session_timeout) or a firewall reset leaves the list within a
// tick, without waiting for a client.
func (p *Pool) sweepIdleLocked(now time.Time) (dead int) {
	keep := p.idle[:0]
	for _, b := range p.idle {
		if reason, why := p.idleRetirementLocked(b, now); why != "" {
			p.retireLocked(b, reason, why, now)
			continue
		}
		if err := peekSocket(b.srv.NetConn()); err != nil {
			dead++
			p.retireLocked(b, retireValidation, err.Error(), now)
			continue
		}
		keep = append(keep, b)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	return dead
}

// idleRetirementLocked says whether idle backend b must be retired now,
// and why (the log's words); why is "" when it stays.
func (p *Pool) idleRetirementLocked(b *backend, now time.Time) (retireReason, string) {
	cfg := &p.cfg
	switch {
	case b.expired(cfg, now):
		return retireLifetime, fmt.Sprintf("lifetime %s reached", fmtDuration(b.lifetime(cfg)))
	case p.open > cfg.MaxSize:
		return retireIdle, fmt.Sprintf("surplus after max_size shrank to %d", cfg.MaxSize)
	case cfg.NoIdle:
		return retireIdle, "this database keeps no idle backends"
	case cfg.MaxIdle > 0 && now.Sub(b.idleSince) >= cfg.MaxIdle && p.open > cfg.MinSize:
		return retireIdle, fmt.Sprintf("idle for %s (max_idle %s)", fmtDuration(now.Sub(b.idleSince)), cfg.MaxIdle)
	}
	return retireNone, ""
}

// evictForGroupLocked closes the idle backends another pool of the group
// is owed (group.go), the coldest first, whatever min_size says: a role
// must not starve behind another's idle backends. Then those beyond a cap
// lowered below the backends counted (trimSurplusLocked).
func (p *Pool) evictForGroupLocked() {
	defer p.trimSurplusLocked()
	evict := p.cfg.Group.evictions(p, len(p.idle))
	if len(evict) == 0 {
		return
	}
	for i, scope := range evict {
		b := p.idle[i]
		b.evict = scope
		p.dropLocked(b, retireIdle, "closed to make room for another pool's waiter (max_db_connections / max_total_connections)")
	}
	n := copy(p.idle, p.idle[len(evict):])
	clear(p.idle[n:])
	p.idle = p.idle[:n]
}

// trimSurplusLocked closes the idle backends beyond a max_db_connections
// or max_total_connections that a reload lowered below the backends open,
// the coldest first, whatever min_size says.
func (p *Pool) trimSurplusLocked() {
	n := p.cfg.Group.trim(p, len(p.idle))
	if n == 0 {
		return
	}
	for _, b := range p.idle[:n] {
		b.evict = evictSurplus
		p.dropLocked(b, retireIdle, "surplus after max_db_connections / max_total_connections was lowered")
	}
	k := copy(p.idle, p.idle[n:])
	clear(p.idle[k:])
	p.idle = p.idle[:k]
}

// connectLocked starts this round's connects: the reconnect attempt while
// connects fail, else warming to MinSize. dead is how many idle backends
// this round's sweep found closed by the server.
func (p *Pool) connectLocked(now time.Time, dead int) {
	h := &p.health
	switch {
	case h.failures > 0:
		if !h.retrying && !now.Before(h.retryAt) && p.roomLocked() > 0 {
			p.spawnOpenLocked(true)
		}
	case !h.connected:
		// First contact: one attempt at a time, and at least one even
		// with MinSize 0, so a database that is down shows at start.
		if p.opening == 0 && p.roomLocked() > 0 {
			p.spawnOpenLocked(false)
		}
	default:
		p.warmLocked(dead)
	}
}

// warmLocked, while connects succeed, opens backends up to MinSize, checks
// that the database is still there when the server closed every backend,
// and replenishes what waiters are owed. dead is as for connectLocked.
func (p *Pool) warmLocked(dead int) {
	for want := min(p.cfg.MinSize, p.cfg.MaxSize) - p.open - p.opening; want > 0 && p.roomLocked() > 0; want-- {
		p.spawnOpenLocked(false)
	}
	if dead > 0 && p.open == 0 {
		// The server closed every backend (with MinSize 0 nothing
		// else would connect): one connect tells whether the
		// database is still there, so the state stays true. It
		// waits for room: the closes may still hold their slots.
		p.recheck = true
	}
	if p.recheck && p.opening == 0 && p.roomLocked() > 0 {
		p.recheck = false
		if p.open == 0 {
			p.spawnOpenLocked(false)
		}
	}
	p.replenishLocked()
}

// leakCandidatesLocked lists the backends reportLeaks must look at: all of
// them while any is held and leak_timeout is set, else none.
func (p *Pool) leakCandidatesLocked() []*backend {
	if p.cfg.LeakTimeout <= 0 || p.active == 0 {
		return nil
	}
	held := make([]*backend, 0, p.active)
	for b := range p.all {
		held = append(held, b)
	}
	return held
}

// reportLeaks logs, once per busy period, every backend held (or busy,
// in session mode) longer than timeout, and counts it in Stats.Leaks.
func (p *Pool) reportLeaks(candidates []*backend, now time.Time, timeout time.Duration) {
	for _, b := range candidates {
		report, owner, age := b.leakCheck(now, timeout)
		if !report {
			continue
		}
		p.leaks.Add(1)
		addr, app, stmt := "unknown", "", ""
		if owner != nil {
			addr, app, stmt = owner.LeakInfo()
		}
		p.log().Warn("backend held longer than leak_timeout: a client may have leaked a transaction",
			"pid", b.pid, "busy_for", age.Round(time.Millisecond), "leak_timeout", timeout,
			"client_addr", addr, "application_name", app, "last_statement", stmt)
	}
}
