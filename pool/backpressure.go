// Backpressure from the server's connection limits (53300).

package pool

import (
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// The server's connection limits as backpressure (issue 11, "Many
// sidecars, one database").
//
// When PostgreSQL refuses a new backend with 53300 (the role's CONNECTION
// LIMIT, or max_connections), the database is there and answering: it is
// full, typically because other replicas' sidecars hold the rest of a
// fleet-wide limit. That is not a failure to back off from or to open the
// circuit for. The pool lowers its effective size to what it holds (open
// and connecting) for capRetryInterval, so waiters queue FIFO for the
// backends it has. Then it steps back up one backend at a time: the cap
// becomes what it holds plus one, and each connect that succeeds raises
// it by one more, until MaxSize ends the cap; another refusal caps it at
// what it holds again. One connect at a time because every refused one
// costs the server a process and an authentication before it checks the
// limit, and a fleet of sidecars each retrying MaxSize connects would
// spend the server's CPU on refusals. Its state does not change.

// capRetryInterval is how long a refusal caps the pool before it tries to
// grow again.
const capRetryInterval = 500 * time.Millisecond

// tooManyConnections reports whether a connect failed because the server
// is full (53300).
func tooManyConnections(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgwire.CodeTooManyConnections
}

// capLocked lowers the effective size to what the pool holds now, until
// capRetryInterval from now. A refusal while capped (a step's) starts
// that interval again.
func (p *Pool) capLocked(err error, now time.Time) {
	first := p.capUntil.IsZero()
	p.capSize = p.open + p.opening
	p.capUntil = now.Add(capRetryInterval)
	p.health.connected = true // the server answered: it is there
	p.evalStateLocked(now)
	if first {
		size := p.capSize
		p.later(func() {
			p.log().Info("the server refused a new connection as too many (53300); the pool holds at its current size and retries later",
				"effective_size", size, "retry_in", capRetryInterval, "err", err)
		})
	}
}

// stepUpLocked lets a capped pool try one backend more than it holds
// once the cap's time is up (maintainer), or at once after a connect
// succeeded while capped (connect); at MaxSize the cap ends.
func (p *Pool) stepUpLocked(now time.Time, succeeded bool) {
	if p.capUntil.IsZero() || !succeeded && now.Before(p.capUntil) {
		return
	}
	held := p.open + p.opening
	if held+1 >= p.cfg.MaxSize {
		p.capUntil = time.Time{}
		return
	}
	p.capSize = held + 1
	if !succeeded {
		p.capUntil = now.Add(capRetryInterval)
	}
}

// sizeLimitLocked is MaxSize, or the lowered size while capped.
func (p *Pool) sizeLimitLocked() int {
	if !p.capUntil.IsZero() {
		return min(p.cfg.MaxSize, p.capSize)
	}
	return p.cfg.MaxSize
}
