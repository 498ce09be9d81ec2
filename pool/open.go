// Opening backends: the room under MaxSize and the group's caps, connects
// for waiters (replenishLocked), one connect's outcome, and the failures
// behind the backoff and the circuit.

package pool

import (
	"context"
	"errors"
	"time"
)

// roomLocked is how many more backends may be opened now: under MaxSize
// and under the group's caps.
func (p *Pool) roomLocked() int {
	own := p.ownRoomLocked()
	if own <= 0 || p.cfg.Group == nil {
		return own
	}
	return min(own, p.cfg.Group.avail(p))
}

// ownRoomLocked is how many more backends may be opened under MaxSize
// (or the lowered size while the server refuses more, backpressure.go).
func (p *Pool) ownRoomLocked() int { return p.sizeLimitLocked() - p.open - p.opening - p.closing }

// replenishLocked starts a connect for every waiter that no connect in
// flight will serve, as room allows. It does nothing while connects fail:
// then only the maintainer's single reconnect attempt connects, on the backoff
// schedule, and waiters wait for a release (DEGRADED) or have already
// failed fast (UNHEALTHY).
//
// With a Group, the connects that only the group's caps hold back are
// queued there as demands (FIFO across the group's pools); a slot freed
// for one wakes the pool, whose maintainer replenishes again.
func (p *Pool) replenishLocked() {
	if p.closed || p.health.failures > 0 || p.admin.paused {
		p.cfg.Group.want(p, nil) // not connecting: nothing to reserve
		return
	}
	need := p.waiters.len() - p.opening
	for ; need > 0 && p.roomLocked() > 0; need-- {
		p.spawnOpenLocked(false)
	}
	if p.cfg.Group != nil {
		p.cfg.Group.want(p, p.uncoveredLocked(min(need, max(p.ownRoomLocked(), 0))))
	}
}

// owedElsewhereLocked says whether a backend a client releases should be
// closed for an older waiter of another pool of the group, and for which
// scope. With no waiter here it goes idle, where evictions find it.
func (p *Pool) owedElsewhereLocked() evictScope {
	if p.cfg.Group == nil || p.waiters.head == nil || p.admin.paused {
		return evictNone
	}
	return p.cfg.Group.owedElsewhere(p, p.waiters.head.at)
}

// uncoveredLocked returns the arrival times of the n oldest waiters that
// no connect in flight will serve (those after the first p.opening), for
// the group's queue.
func (p *Pool) uncoveredLocked(n int) []time.Time {
	if n <= 0 {
		return nil
	}
	out := make([]time.Time, 0, n)
	skip := p.opening
	for w := p.waiters.head; w != nil && len(out) < n; w = w.next {
		if skip > 0 {
			skip--
			continue
		}
		out = append(out, w.at)
	}
	return out
}

// spawnOpenLocked starts one connect goroutine, owned by the pool (p.wg)
// and stopped by Close through p.ctx. It counts as opening at once so
// that MaxSize holds while it runs.
func (p *Pool) spawnOpenLocked(retry bool) {
	p.cfg.Group.take(p)
	p.opening++
	if retry {
		p.health.retrying = true
	}
	p.wg.Add(1)
	go p.connect(p.cfg.Connect, p.cfg.ConnectTimeout, retry)
}

// connect opens one backend and hands it to the oldest waiter (or the
// idle list), or records the failure for the backoff and the circuit.
func (p *Pool) connect(connect ConnectFunc, timeout time.Duration, retry bool) {
	defer p.wg.Done()
	start := time.Now()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	srv, err := connect(ctx)
	cancel()
	if err == nil && srv == nil {
		err = errors.New("connect returned neither a server nor an error")
	}
	now := time.Now()
	took := now.Sub(start).Round(time.Millisecond)

	p.mu.Lock()
	p.opening--
	if retry {
		p.health.retrying = false
	}
	switch {
	case p.closed:
		// Close canceled us, or we finished just after it: not a
		// failure of the database.
		if err != nil {
			p.cfg.Group.release(p, evictNone)
			break
		}
		b := p.newBackendLocked(srv, now)
		p.counts.connects++
		p.counts.retired.Shutdown++
		p.closing++ // its slot is held until the close is done, as for any backend
		p.later(func() { p.closeServer(b, retireShutdown, "pool closed while connecting") })
	case err != nil && tooManyConnections(err):
		p.cfg.Group.release(p, evictNone)
		p.counts.connectErrors++
		p.capLocked(err, now)
	case err != nil:
		p.cfg.Group.release(p, evictNone)
		p.connectFailedLocked(err, start, now, took)
	default:
		b := p.newBackendLocked(srv, now)
		h := &p.health
		h.failures, h.connected = 0, true
		p.lastAlive = now
		p.counts.connects++
		p.open++
		p.all[b] = struct{}{}
		p.stepUpLocked(now, true)
		p.putLocked(b, now)
		p.replenishLocked()
		p.evalStateLocked(now)
		p.later(func() { p.log().Debug("backend opened", "pid", b.pid, "took", took, "retry", retry) })
	}
	p.unlock()
	// The maintainer warms the rest after a success and schedules the
	// reconnect attempt after a failure.
	p.poke()
}

// noteFailureLocked records that the database could not be reached (a
// failed connect or idle check) for the backoff and the circuit, and
// returns the failures in a row and the delay to the next attempt. The
// caller re-evaluates the state. An attempt that started before the last
// recorded failure fails for the same reason and does not advance the
// backoff again.
func (p *Pool) noteFailureLocked(err error, start, now time.Time) (failures int, retryIn time.Duration) {
	h := &p.health
	h.lastErr = err
	if h.failures == 0 || !start.Before(h.lastFailAt) {
		h.failures++
		h.lastFailAt = now
		h.retryAt = now.Add(p.cfg.nextRetry(h.failures))
		if p.holdingLocked(now) {
			h.retryAt = now.Add(holdRetryInterval)
		}
	}
	return h.failures, h.retryAt.Sub(now)
}

// connectFailedLocked records a failed connect. Connects that were
// already in flight when an earlier failure was recorded fail for the
// same reason; they do not advance the backoff again, so a burst of
// parallel failures counts as one step of the 1, 2, 4, 8, 16s schedule.
func (p *Pool) connectFailedLocked(err error, start, now time.Time, took time.Duration) {
	p.counts.connectErrors++
	failures, retryIn := p.noteFailureLocked(err, start, now)
	p.evalStateLocked(now)
	p.later(func() {
		p.log().Warn("connect to the database failed", "err", err, "failures_in_a_row", failures,
			"retry_in", retryIn.Round(time.Millisecond), "took", took)
	})
}
