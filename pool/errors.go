// Acquire's errors: AcquireError, and the SQLSTATE, message and hint of each
// way an Acquire fails.

package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// AcquireError says why Acquire failed, with a SQLSTATE for the client.
type AcquireError struct {
	Code    string // SQLSTATE: 53300 (timeout, queue full), 08006 (upstream down), 57P01 (closed), 57014 (ctx canceled)
	Message string
	Hint    string
	Err     error // the upstream's own error, or the context's, when there is one
}

// Error returns the message meant for the client.
func (e *AcquireError) Error() string { return e.Message }

// Unwrap returns the upstream's (or the context's) own error.
func (e *AcquireError) Unwrap() error { return e.Err }

// busyLocked describes the pool for an error message, e.g.
// "pool app/app: 10 of 10 busy, 57 waiting".
func (p *Pool) busyLocked(waiting int) string {
	return fmt.Sprintf("pool %s: %d of %d busy, %d waiting", p.name, p.active, p.cfg.MaxSize, waiting)
}

// timeoutErrorLocked is the 53300 for a waiter that waited `waited`;
// waiting counts the queue including that waiter.
func (p *Pool) timeoutErrorLocked(waited time.Duration, waiting int, cause error) *AcquireError {
	e := &AcquireError{
		Code:    pgwire.CodeTooManyConnections,
		Message: fmt.Sprintf("timed out after %s waiting for a server connection (%s)", fmtDuration(waited), p.busyLocked(waiting)),
		Hint:    "raise " + p.cfg.option("MaxSize") + " or shorten transactions",
		Err:     cause,
	}
	// Below its own max_size, the pool waited for the group's cap.
	if p.ownRoomLocked() > 0 {
		if field, limit := p.cfg.Group.capReached(p); field != "" {
			e.Message += fmt.Sprintf("; the cap %s %d is reached", p.cfg.option(field), limit)
			e.Hint = "raise " + p.cfg.option(field) + " or shorten transactions (other roles or databases hold the backends)"
		}
	}
	return e
}

// queueFullErrorLocked is the 53300 for an Acquire refused because
// MaxWaiters callers already wait (waiting: all of them, RefuseWaiter's
// included).
func (p *Pool) queueFullErrorLocked(waiting int) *AcquireError {
	return &AcquireError{
		Code: pgwire.CodeTooManyConnections,
		Message: fmt.Sprintf("too many clients waiting for a server connection (%s; max_waiters %d)",
			p.busyLocked(waiting), p.cfg.MaxWaiters),
		Hint: "raise " + p.cfg.option("MaxWaiters") + " or " + p.cfg.option("MaxSize") + ", or shorten transactions",
	}
}

// circuitErrorLocked is the fail-fast 08006 while the pool is UNHEALTHY.
func (p *Pool) circuitErrorLocked(now time.Time) *AcquireError {
	h := &p.health
	hint := "check that the database is up and reachable; pgsidecar is retrying now"
	if d := h.retryAt.Sub(now); d > 0 && !h.retrying {
		hint = fmt.Sprintf("check that the database is up and reachable; pgsidecar retries in %s", fmtDuration(d))
	}
	return &AcquireError{
		Code:    pgwire.CodeConnectionFailure,
		Message: fmt.Sprintf("cannot connect to the database for pool %s: %v", p.name, h.lastErr),
		Hint:    hint,
		Err:     h.lastErr,
	}
}

// shutdownError is the 57P01 for callers of a closed pool.
func (p *Pool) shutdownError() *AcquireError {
	return &AcquireError{
		Code:    pgwire.CodeAdminShutdown,
		Message: fmt.Sprintf("pool %s is shutting down", p.name),
		Hint:    "reconnect; another pgsidecar instance or a restart will serve you",
	}
}

// ctxErrorLocked is the error for a caller whose own context ended:
// its deadline counts as a wait timeout, a cancellation as 57014.
func (p *Pool) ctxErrorLocked(ctx context.Context, waited time.Duration, waiting int) *AcquireError {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return p.timeoutErrorLocked(waited, waiting, err)
	}
	return &AcquireError{
		Code:    pgwire.CodeQueryCanceled,
		Message: fmt.Sprintf("canceled after %s while waiting for a server connection (%s)", fmtDuration(waited), p.busyLocked(waiting)),
		Hint:    "the client went away or gave up",
		Err:     err,
	}
}

// fmtDuration prints whole seconds from 1s up ("30s", "1m30s") and
// milliseconds below.
func fmtDuration(d time.Duration) string {
	if d >= time.Second {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}
