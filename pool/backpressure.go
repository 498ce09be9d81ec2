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
// and connecting) for capProbeInterval, so waiters queue FIFO for the
// backends it has, and then lets connects try upward again; another
// refusal caps it again. Its state does not change.

// capProbeInterval is how long a refusal caps the pool before it tries to
// grow again.
const capProbeInterval = 500 * time.Millisecond

// tooManyConnections reports whether a connect failed because the server
// is full (53300).
func tooManyConnections(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgwire.CodeTooManyConnections
}

// capLocked lowers the effective size to what the pool holds now, until
// capProbeInterval from now.
func (p *Pool) capLocked(err error, now time.Time) {
	first := p.capUntil.IsZero()
	p.capSize = p.open + p.opening
	p.capUntil = now.Add(capProbeInterval)
	p.health.connected = true // the server answered: it is there
	p.evalStateLocked(now)
	if first {
		size := p.capSize
		p.later(func() {
			p.log().Info("the server refused a new connection as too many (53300); the pool holds at its current size and retries later",
				"effective_size", size, "retry_in", capProbeInterval, "err", err)
		})
	}
}

// uncapLocked lets the pool grow again once the cap's time is up.
func (p *Pool) uncapLocked(now time.Time) {
	if !p.capUntil.IsZero() && !now.Before(p.capUntil) {
		p.capUntil = time.Time{}
	}
}

// sizeLimitLocked is MaxSize, or the lowered size while capped.
func (p *Pool) sizeLimitLocked() int {
	if !p.capUntil.IsZero() {
		return min(p.cfg.MaxSize, p.capSize)
	}
	return p.cfg.MaxSize
}
