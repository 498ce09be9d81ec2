// The idle check (IdleCheckInterval): a dead database seen without traffic.

package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The idle check makes a dead database visible without traffic: a pool
// whose backends all sit idle learns nothing from clients, and a
// database behind a partition or a crashed host sends no FIN that the
// socket peek could see. So every IdleCheckInterval without a sign of
// life, the maintainer runs the validation query on the coldest idle
// backend, bounded by ConnectTimeout; the state reflects the answer
// within IdleCheckInterval + ConnectTimeout.
//
// A sign of life is a backend coming back from a client (its
// ReadyForQuery was the server's answer), a successful connect or
// validation: a pool under traffic runs no idle checks.

// idleCheckPendingLocked reports whether an idle check may become due:
// the check is on, there is an idle backend to run it on, none is in
// flight, and the pool is not closed. It runs while connects fail too:
// then the idle backends are all that keeps the pool DEGRADED instead of
// UNHEALTHY, and only the check tells whether they still reach the
// database (a connect that hangs on a frozen database would otherwise
// hide it for good).
func (p *Pool) idleCheckPendingLocked() bool {
	return p.cfg.IdleCheckInterval > 0 && p.cfg.ValidationQuery != "" && !p.closed && !p.checking &&
		len(p.idle) > 0
}

// idleCheckDueLocked reports whether the idle check should run now.
func (p *Pool) idleCheckDueLocked(now time.Time) bool {
	return p.idleCheckPendingLocked() && now.Sub(p.lastAlive) >= p.cfg.IdleCheckInterval
}

// spawnIdleCheckLocked takes the coldest idle backend out of the idle
// list (it stays open, like a backend being validated for a caller) and
// starts the check on it in a goroutine owned by the pool (p.wg, stopped
// through p.ctx by Close).
func (p *Pool) spawnIdleCheckLocked() {
	b := p.idle[0]
	p.idle = slices.Delete(p.idle, 0, 1)
	p.checking = true
	p.wg.Add(1)
	go p.idleCheck(b, p.cfg.ValidationQuery, p.cfg.ConnectTimeout)
}

// idleCheck runs the validation query on b and acts on the answer:
//   - success: b goes back where it was (bottom of the idle stack, its
//     idle time unchanged, so MaxIdle still retires it) or to a waiter;
//   - the server answered with an error or closed the connection: b alone
//     is broken; it is closed, and the next tick peeks the others;
//   - no answer within ConnectTimeout (or an error that says nothing
//     came back): the database is presumed unreachable. That counts as a
//     failed connect, and every idle backend is closed, because their
//     state is unknown and they share b's path to the database: with no
//     backend held the pool goes UNHEALTHY at once. The reconnect attempt
//     starts at once too, so a false alarm (say a firewall that silently
//     dropped idle connections from a healthy database) ends as soon as a
//     connect succeeds.
func (p *Pool) idleCheck(b *backend, query string, timeout time.Duration) {
	defer p.wg.Done()
	p.validations.Add(1)
	start := time.Now()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	b.reclaimed()
	err := b.srv.Exec(ctx, query)
	cancel()
	now := time.Now()

	p.mu.Lock()
	p.checking = false
	switch {
	case p.closed:
		p.retireLocked(b, retireShutdown, "pool closed", now)
	case err == nil:
		p.lastAlive = now
		b.stats.validatedAt, b.stats.validateTook = now, now.Sub(start)
		if p.waiters.len() > 0 {
			p.putLocked(b, now)
		} else {
			p.idle = slices.Insert(p.idle, 0, b)
		}
	case backendGone(err):
		p.retireLocked(b, retireValidation, fmt.Sprintf("idle check %q failed: %v", query, err), now)
	default:
		err = fmt.Errorf("idle check %q on backend pid %d got no answer: %w", query, b.pid, err)
		failures, retryIn := p.noteFailureLocked(err, start, now)
		p.health.retryAt = now // retry at once: see above
		p.dropLocked(b, retireValidation, err.Error())
		for _, o := range p.idle {
			p.dropLocked(o, retireValidation, "database presumed unreachable: "+err.Error())
		}
		clear(p.idle)
		p.idle = p.idle[:0]
		p.evalStateLocked(now)
		p.later(func() {
			p.log().Warn("idle check failed: the database is presumed unreachable; idle backends closed",
				"err", err, "failures_in_a_row", failures, "took", now.Sub(start).Round(time.Millisecond),
				"retry_in", retryIn.Round(time.Millisecond))
		})
	}
	p.unlock()
	p.poke()
}

// backendGone reports whether err says the server answered (an
// ErrorResponse) or closed the connection: then the database was
// reachable and only that backend is lost.
func backendGone(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
