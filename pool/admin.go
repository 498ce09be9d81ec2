// The operator's side of a pool: PAUSE, RESUME and RECONNECT, each backend's
// record for SHOW SERVERS (Backends), and the error counts max_backend_errors
// retires a backend on.

package pool

import (
	"context"
	"crypto/tls"
	"fmt"
	"sort"
	"time"
)

// adminState is what the operator's commands (PAUSE, RESUME, RECONNECT)
// set on a pool; guarded by p.mu.
type adminState struct {
	// paused: Acquire hands out nothing and opens nothing; callers wait in
	// the FIFO queue, with no acquire timeout, until Resume.
	paused bool
	// resumed is closed by Resume (a fresh one is made by Pause), waking
	// waiters whose acquire timeout ran out while the pool was paused.
	resumed chan struct{}
	// generation grows with each Reconnect; a backend opened in an older
	// one is closed at its next release (or now, when idle).
	generation uint64
}

// backendStats is a backend's own record for BackendInfo; the atomics are
// in backend, the rest under p.mu.
type backendStats struct {
	lastUsed     time.Time     // last Release, or the connect
	validatedAt  time.Time     // last validation query that passed
	validateTook time.Duration // how long it took
	generation   uint64        // adminState.generation when opened
	tls          bool
}

// Pause stops handing out backends: transactions already running finish,
// new Acquires wait in the FIFO queue without timing out until Resume.
// The returned channel is closed once no backend is held any more (the
// transactions in flight have ended); it is closed at once when none is.
// Pausing a paused pool only returns a new channel.
func (p *Pool) Pause() <-chan struct{} {
	done := make(chan struct{})
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		close(done)
		return done
	}
	if !p.admin.paused {
		p.admin.paused = true
		p.admin.resumed = make(chan struct{})
		p.later(func() { p.log().Info("pool paused: new transactions wait until RESUME") })
	}
	// Added under p.mu while not closed, so Close's wg.Wait covers it.
	p.wg.Add(1)
	p.unlock()
	// Polled rather than signalled from Release: a pause is rare and
	// 10 ms is far below what an operator notices, and the hot path
	// stays untouched.
	go func() { // ends when the pool has no holder, is resumed, or closes
		defer p.wg.Done()
		defer close(done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			p.mu.Lock()
			idle := p.active == 0 || !p.admin.paused || p.closed
			p.mu.Unlock()
			if idle {
				return
			}
			select {
			case <-t.C:
			case <-p.ctx.Done():
				return
			}
		}
	}()
	return done
}

// Paused reports whether the pool is paused.
func (p *Pool) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.admin.paused
}

// Resume ends a pause (waiters are served in order, from idle backends
// and new connects) and resets the circuit breaker: when connects were
// failing, the backoff is forgotten and the next connect happens now, so
// an operator who fixed the database need not wait out a 16 s backoff.
// While the database is still down that connect fails and the circuit
// opens again.
func (p *Pool) Resume() {
	now := time.Now()
	p.mu.Lock()
	wasPaused := p.admin.paused
	if wasPaused {
		p.admin.paused = false
		close(p.admin.resumed)
	}
	h := &p.health
	reset := h.failures > 0
	if reset {
		h.failures = 0
		h.retryAt = time.Time{}
		p.evalStateLocked(now)
	}
	if !p.closed {
		for len(p.idle) > 0 && p.waiters.len() > 0 {
			b := p.idle[len(p.idle)-1]
			p.idle[len(p.idle)-1] = nil
			p.idle = p.idle[:len(p.idle)-1]
			p.putLocked(b, now)
		}
		p.replenishLocked()
		p.maintainLocked(now)
	}
	p.later(func() {
		if wasPaused {
			p.log().Info("pool resumed")
		}
		if reset {
			p.log().Info("circuit breaker reset: connecting now")
		}
	})
	p.unlock()
	p.poke()
}

// Reconnect recycles every backend: idle ones are closed now, held ones
// when they are released; new backends replace them as needed.
func (p *Pool) Reconnect() {
	now := time.Now()
	p.mu.Lock()
	p.admin.generation++
	keep := p.idle[:0]
	for _, b := range p.idle {
		if b.stats.generation < p.admin.generation {
			p.retireLocked(b, retireReconnect, "RECONNECT", now)
			continue
		}
		keep = append(keep, b)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if !p.closed {
		p.maintainLocked(now)
	}
	p.later(func() { p.log().Info("reconnect: every backend is replaced at its next release") })
	p.unlock()
	p.poke()
}

// BackendInfo describes one open backend, for SHOW SERVERS and /servers.
type BackendInfo struct {
	PID          uint32    `json:"pid"`
	Database     string    `json:"database"`
	User         string    `json:"user"`
	State        string    `json:"state"` // "idle" or "active"
	Created      time.Time `json:"created"`
	LastUsed     time.Time `json:"last_used"`
	Transactions int64     `json:"transactions"` // busy periods served (see Stats.TransactionDuration)
	Queries      int64     `json:"queries"`
	// Errors counts connection-level and protocol errors (AddErrors), the
	// ones MaxBackendErrors retires on; SQLErrors counts every
	// ErrorResponse the server sent.
	Errors       int64     `json:"errors"`
	SQLErrors    int64     `json:"sql_errors"`
	ValidatedAt  time.Time `json:"validated_at"` // zero when never validated
	ValidateTook float64   `json:"validate_ms"`
	TLS          bool      `json:"tls"`
	// Recycle: RECONNECT asked for it; it closes at its next release.
	Recycle bool `json:"recycle"`
}

// Backends lists the open backends, oldest first.
func (p *Pool) Backends() []BackendInfo {
	p.mu.Lock()
	idle := make(map[*backend]bool, len(p.idle))
	for _, b := range p.idle {
		idle[b] = true
	}
	out := make([]BackendInfo, 0, len(p.all))
	for b := range p.all {
		state := "active"
		if idle[b] {
			state = "idle"
		}
		out = append(out, BackendInfo{
			PID: b.pid, Database: p.cfg.Database, User: p.cfg.User, State: state,
			Created: b.createdAt, LastUsed: b.stats.lastUsed,
			Transactions: b.txs.Load(), Queries: b.queries.Load(),
			Errors: b.errors.Load(), SQLErrors: b.sqlErrors.Load(),
			ValidatedAt: b.stats.validatedAt, ValidateTook: ms(b.stats.validateTook),
			TLS: b.stats.tls, Recycle: b.stats.generation < p.admin.generation,
		})
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// AddErrors counts errors seen on the backend: sql is every ErrorResponse
// the server sent, conn the connection-level and protocol errors among
// them (towards MaxBackendErrors, checked at Release). A stale handle's
// counts are ignored (see Conn).
func (c Conn) AddErrors(sql, conn int64) {
	if sql <= 0 && conn <= 0 || !c.current() {
		return
	}
	if sql > 0 {
		c.b.sqlErrors.Add(sql)
	}
	if conn > 0 {
		c.b.errors.Add(conn)
	}
}

// adminRetireReasonLocked is the operator's part of the release check:
// RECONNECT and max_backend_errors.
func (p *Pool) adminRetireReasonLocked(b *backend) (retireReason, string) {
	switch {
	case b.stats.generation < p.admin.generation:
		return retireReconnect, "RECONNECT"
	case p.cfg.MaxBackendErrors > 0 && b.errors.Load() >= p.cfg.MaxBackendErrors:
		return retireError, fmt.Sprintf("%d errors reached %s %d", b.errors.Load(), p.cfg.option("MaxBackendErrors"), p.cfg.MaxBackendErrors)
	}
	return retireNone, ""
}

// newBackendLocked is newBackend with the operator's record filled in.
func (p *Pool) newBackendLocked(srv Server, now time.Time) *backend {
	b := newBackend(srv, now)
	b.stats.lastUsed = now
	b.stats.generation = p.admin.generation
	if nc := srv.NetConn(); nc != nil {
		_, b.stats.tls = nc.(*tls.Conn)
	}
	return b
}

// waitPaused is called when a waiter's acquire timeout ran out: while the
// pool is paused the waiter keeps waiting (PAUSE holds clients without
// errors), and its timeout starts again at Resume. It returns the grant
// when one came, ok=false when the caller should time out as usual.
func (p *Pool) waitPaused(ctx context.Context, w *waiter) (g grant, got, ok bool) {
	for {
		p.mu.Lock()
		if !p.admin.paused || !w.queued {
			p.mu.Unlock()
			return grant{}, false, false
		}
		resumed := p.admin.resumed
		p.mu.Unlock()
		select {
		case g := <-w.ch:
			return g, true, true
		case <-ctx.Done():
			return grant{}, false, false
		case <-resumed:
			p.mu.Lock()
			timeout := p.cfg.AcquireTimeout
			p.mu.Unlock()
			t := time.NewTimer(timeout)
			select {
			case g := <-w.ch:
				t.Stop()
				return g, true, true
			case <-ctx.Done():
				t.Stop()
				return grant{}, false, false
			case <-t.C:
			}
		}
	}
}
