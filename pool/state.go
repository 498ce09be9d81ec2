// The pool's health state machine: the states, the transitions and their
// reasons (evalStateLocked), and the circuit that opens at UNHEALTHY.

package pool

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// State is the pool's health state.
//
// The transitions, each logged once with its reason:
//
//	INITIALIZING -> HEALTHY     the first connect succeeded (the rest of
//	                            MinSize keeps warming in the background)
//	INITIALIZING -> UNHEALTHY   the first connect failed
//	HEALTHY -> DEGRADED         a connect failed while other backends still
//	                            work, or an Acquire timed out within the last
//	                            10s (the pool is too small for the load)
//	DEGRADED -> HEALTHY         connects succeed again and no Acquire timed
//	                            out for 10s
//	HEALTHY|DEGRADED -> UNHEALTHY
//	                            a connect failed and no backend is open: the
//	                            circuit is open, Acquire fails fast (08006),
//	                            after the hold if one starts (hold.go)
//	UNHEALTHY -> RECOVERING     the reconnect attempt connected; warming back to MinSize
//	RECOVERING -> HEALTHY       MinSize backends are open again
//	any -> SHUTTING_DOWN -> TERMINATED   Close
type State int32

// The pool states; see State for the transitions.
const (
	StateInitializing State = iota
	StateHealthy
	StateDegraded
	StateUnhealthy
	StateRecovering
	StateShuttingDown
	StateTerminated
)

var stateNames = [...]string{
	StateInitializing: "INITIALIZING",
	StateHealthy:      "HEALTHY",
	StateDegraded:     "DEGRADED",
	StateUnhealthy:    "UNHEALTHY",
	StateRecovering:   "RECOVERING",
	StateShuttingDown: "SHUTTING_DOWN",
	StateTerminated:   "TERMINATED",
}

// String returns the upper-case name of the state, e.g. "HEALTHY".
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// MarshalText renders the state as its upper-case name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// maxRecentTimeouts bounds the memory of recent acquire timeouts; the
// count in the DEGRADED reason saturates there.
const maxRecentTimeouts = 1024

// health is the state machine's memory, guarded by p.mu.
type health struct {
	state  State
	reason string
	since  time.Time

	connected  bool      // some connect has succeeded
	failures   int       // consecutive failed connects; > 0 means connects are failing
	lastErr    error     // the upstream's last connect error
	lastFailAt time.Time // when failures last grew
	retryAt    time.Time // no connect before this while failures > 0
	retrying   bool      // the single reconnect attempt is in flight

	timeouts []time.Time // acquire timeouts within the degrade window

	holdUntil time.Time // a hold (hold.go) is on until then; zero when none
}

// evalStateLocked derives the state from the facts and moves to it if it
// changed. It is called whenever a fact changes (a connect result, a
// backend closed, an acquire timeout) and on every maintainer tick, which
// is what lets DEGRADED and RECOVERING end on their own.
func (p *Pool) evalStateLocked(now time.Time) {
	if p.closed {
		return
	}
	h := &p.health
	cut := now.Add(-p.opts.degradeWindow)
	i := 0
	for i < len(h.timeouts) && !h.timeouts[i].After(cut) {
		i++
	}
	h.timeouts = h.timeouts[i:]

	var target State
	var reason string
	switch {
	case h.failures > 0 && p.open == 0:
		target = StateUnhealthy
		reason = fmt.Sprintf("cannot connect to the database (%d attempts failed in a row): %v", h.failures, h.lastErr)
	case h.failures > 0:
		target = StateDegraded
		reason = fmt.Sprintf("connects are failing (%d in a row: %v) while %d backends still work", h.failures, h.lastErr, p.open)
	case !h.connected:
		target = StateInitializing
		reason = h.reason
	case h.state == StateUnhealthy:
		// Always through RECOVERING, even when MinSize is already met,
		// so the log shows the circuit closing.
		target = StateRecovering
		reason = fmt.Sprintf("database reachable again after %s; warming back to min_size", fmtDuration(now.Sub(h.since)))
	case h.state == StateRecovering:
		if want := min(p.cfg.MinSize, p.cfg.MaxSize); p.open < want {
			target = StateRecovering
			reason = fmt.Sprintf("database reachable again; warming back to min_size (%d of %d open)", p.open, want)
		} else {
			target = StateHealthy
			reason = fmt.Sprintf("recovered: %d backends open", p.open)
		}
	case len(h.timeouts) > 0:
		target = StateDegraded
		reason = fmt.Sprintf("%d acquire timeouts in the last %s: the pool is too small for the load", len(h.timeouts), p.opts.degradeWindow)
	default:
		target = StateHealthy
		switch h.state {
		case StateInitializing:
			reason = "connected to the database"
		case StateDegraded:
			reason = fmt.Sprintf("connects succeed and no acquire timed out in the last %s", p.opts.degradeWindow)
		default:
			reason = h.reason
		}
	}
	if target != h.state {
		p.setStateLocked(target, reason)
		return
	}
	// Same state: keep the reason current (counts change) without logging.
	h.reason = reason
}

// setStateLocked moves to s and logs the transition once, after unlock
// and in order.
// Entering UNHEALTHY opens the circuit: every waiter fails fast, unless
// a hold starts (startHoldLocked), which keeps the waiters.
func (p *Pool) setStateLocked(s State, reason string) {
	h := &p.health
	from := h.state
	if from == s {
		h.reason = reason
		return
	}
	h.state, h.reason, h.since = s, reason, time.Now()
	p.state.Store(int32(s))
	level := slog.LevelInfo
	if s == StateDegraded || s == StateUnhealthy {
		level = slog.LevelWarn
	}
	p.stateLogs = append(p.stateLogs, func() {
		p.log().Log(context.Background(), level, "pool state changed", "from", from, "to", s, "reason", reason)
	})
	if s == StateUnhealthy && !p.startHoldLocked(from, time.Now()) {
		p.failWaitersLocked(p.circuitErrorLocked(time.Now()))
	}
	if s != StateUnhealthy {
		h.holdUntil = time.Time{}
	}
}
