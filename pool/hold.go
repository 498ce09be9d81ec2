// Holding new transactions while the database restarts (HoldOnRestart).

package pool

import (
	"fmt"
	"time"
)

// Holding clients across a database restart (issue 11).
//
// A restart or failover ends every backend (57P01, 57P03) and refuses
// connects for a few seconds. Without a hold the pool goes UNHEALTHY at
// the first failed connect and every new transaction fails fast with
// 08006, although the database is back moments later. With HoldOnRestart
// set, a pool that was serving and loses the database holds instead: for
// up to HoldOnRestart from the moment the circuit would open, Acquire
// queues (FIFO, bounded by AcquireTimeout as always) rather than failing,
// and the reconnect attempt runs every holdRetryInterval instead of on the
// 1-16 s backoff, so the first waiter is served within that interval of
// the database accepting connections again. When the hold runs out with
// the database still away, the circuit opens as before: waiters and new
// callers get 08006. A pool that never connected does not hold (a wrong
// URL must fail fast, not after a hold).

// holdRetryInterval is the reconnect schedule during a hold.
const holdRetryInterval = 250 * time.Millisecond

// startHoldLocked starts a hold when the pool goes UNHEALTHY from a state
// in which it served (HEALTHY, DEGRADED, RECOVERING), if holds are on. It
// reports whether a hold is on now (then waiters are kept).
func (p *Pool) startHoldLocked(from State, now time.Time) bool {
	h := &p.health
	if p.closed || p.cfg.HoldOnRestart <= 0 {
		return false
	}
	if h.holdUntil.IsZero() {
		switch from {
		case StateHealthy, StateDegraded, StateRecovering:
		default:
			return false
		}
		h.holdUntil = now.Add(p.cfg.HoldOnRestart)
		h.retryAt = minTime(h.retryAt, now.Add(holdRetryInterval))
		hold := p.cfg.HoldOnRestart
		p.later(func() {
			p.log().Warn("the database went away; holding new transactions until it is back",
				"hold_on_restart", hold, "retry_every", holdRetryInterval)
		})
	}
	return now.Before(h.holdUntil)
}

// holdingLocked reports whether a hold is on at now.
func (p *Pool) holdingLocked(now time.Time) bool {
	h := &p.health
	return !h.holdUntil.IsZero() && now.Before(h.holdUntil)
}

// endHoldLocked ends a hold whose time ran out with the database still
// away: the circuit opens for real and the waiters get 08006. Called on
// every maintainer run.
func (p *Pool) endHoldLocked(now time.Time) {
	h := &p.health
	if h.holdUntil.IsZero() || now.Before(h.holdUntil) {
		return
	}
	h.holdUntil = time.Time{}
	if h.state != StateUnhealthy {
		return
	}
	n := p.waiters.len()
	p.failWaitersLocked(p.circuitErrorLocked(now))
	hold := p.cfg.HoldOnRestart
	p.later(func() {
		p.log().Warn(fmt.Sprintf("the database is still away after hold_on_restart %s; failing the waiting transactions", hold),
			"waiters", n)
	})
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
