// Retiring a backend: why (retireReason, counted in Stats.Retired), the
// checks at its release (releaseRetireReasonLocked), and its removal from
// the books and close off the lock (retireLocked, dropLocked, closeServer).

package pool

import (
	"context"
	"fmt"
	"time"
)

// retireReason says why a backend was closed; it indexes Retired.
type retireReason int

const (
	retireNone retireReason = iota
	retireLifetime
	retireIdle
	retireQueries
	retireError
	retireValidation
	retireShutdown
	retireReconnect
)

var retireNames = [...]string{"", "lifetime", "idle", "queries", "error", "validation", "shutdown", "reconnect"}

func (r retireReason) String() string { return retireNames[r] }

// releaseRetireReasonLocked says whether a backend coming back must be
// closed instead of reused: this is the 'Z' boundary where recycling
// happens, never while a client holds it.
func (p *Pool) releaseRetireReasonLocked(b *backend, now time.Time) (retireReason, string) {
	cfg := &p.cfg
	switch {
	case p.closed:
		return retireShutdown, "pool closed"
	case b.expired(cfg, now):
		return retireLifetime, fmt.Sprintf("lifetime %s reached", fmtDuration(b.lifetime(cfg)))
	case cfg.MaxQueries > 0 && b.queries.Load() >= cfg.MaxQueries:
		return retireQueries, fmt.Sprintf("%d queries reached max_queries %d", b.queries.Load(), cfg.MaxQueries)
	case p.open > cfg.MaxSize:
		// Counted as idle: it is surplus after max_size shrank.
		return retireIdle, fmt.Sprintf("surplus after max_size shrank to %d", cfg.MaxSize)
	}
	return p.adminRetireReasonLocked(b)
}

// retireLocked removes an open backend from the books and closes it
// after unlock; then waiters are served by new connects if there is room
// and the state is re-evaluated (the last backend closing while connects
// fail opens the circuit).
func (p *Pool) retireLocked(b *backend, reason retireReason, detail string, now time.Time) {
	p.dropLocked(b, reason, detail)
	p.replenishLocked()
	p.evalStateLocked(now)
}

// dropLocked is retireLocked without the follow-up, for a caller that
// retires several backends and then re-evaluates once (so the log shows
// one state change, not one per backend).
func (p *Pool) dropLocked(b *backend, reason retireReason, detail string) {
	delete(p.all, b)
	p.open--
	p.closing++ // still holds its slot under MaxSize until the close is done
	r := &p.counts.retired
	switch reason {
	case retireLifetime:
		r.Lifetime++
	case retireIdle:
		r.Idle++
	case retireQueries:
		r.Queries++
	case retireError:
		r.Error++
	case retireValidation:
		r.Validation++
	case retireShutdown:
		r.Shutdown++
	case retireReconnect:
		r.Reconnect++
	}
	p.later(func() { p.closeServer(b, reason, detail) })
}

// closeWaiter is a Server that can close and wait for the server's end
// (PgServer.CloseWait).
type closeWaiter interface {
	CloseWait(ctx context.Context) error
}

// closeWaitMax bounds CloseWait's wait for the server's end: its process
// normally exits within a millisecond, and the closing goroutine is often
// a client's.
const closeWaitMax = 250 * time.Millisecond

// closeServer closes the backend's connection, bounded in time, and then
// frees its slot under MaxSize.
func (p *Pool) closeServer(b *backend, reason retireReason, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.closeTimeout)
	defer cancel()
	var err error
	if cw, ok := b.srv.(closeWaiter); ok && p.cfg.Group.capped() {
		// Under a cap the slot must be free on the server too before
		// another pool takes it: wait for the server to go, briefly.
		wctx, wcancel := context.WithTimeout(ctx, closeWaitMax)
		err = cw.CloseWait(wctx)
		wcancel()
	} else {
		err = b.srv.Close(ctx)
	}
	p.mu.Lock()
	p.closing--
	p.cfg.Group.release(p, b.evict)
	p.replenishLocked()
	p.unlock()
	p.poke() // to warm a replacement if below MinSize
	p.log().Debug("backend closed", "pid", b.pid, "reason", reason.String(), "detail", detail,
		"age", time.Since(b.createdAt).Round(time.Millisecond), "queries", b.queries.Load(), "close_err", err)
}
