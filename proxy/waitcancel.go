// Cancelling a request that still waits for a backend (waitState).

package proxy

import (
	"context"
	"errors"
	"sync"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// A cancel request for a client whose request waits for a backend: the
// request is answered with 57014 and dropped, never sent.
//
// Directly, a cancel request can only find its query running (or done):
// PostgreSQL reads the query at once. Through a pool the query may wait
// for a backend first (a saturated or paused pool), and a cancel that came
// then found no backend to forward to and was dropped: the statement ran
// once a backend freed up, after the user had pressed ^C (PgBouncer 1.18
// does the same). A statement the user cancelled must not run later. So
// the cancel ends the wait: the client gets ERROR 57014, as PostgreSQL
// reports a cancelled statement, then ReadyForQuery, and its session goes
// on. A goroutine waiting in the pool is woken at once (its wait's
// context is cancelled); a request in the event loop's own queue is
// handed to a goroutine at once, which answers it.

// errWaitCanceledCause ends the context of a wait a cancel request ended.
var errWaitCanceledCause = errors.New("cancel request for a waiting client")

// errWaitCanceled is what the client of a cancelled wait gets (never
// modified: acquireErrorResponse copies it).
var errWaitCanceled = newError(pgwire.CodeQueryCanceled, "canceling statement due to user request",
	"the statement waited for a server connection (the pool was busy) and was not sent")

// cancelWaiting marks the client's waiting request as cancelled and wakes
// its wait, or marks a request waiting for its replay (replay.go) as
// cancelled, and reports whether a request was waiting (never while the
// client holds a backend). handleCancel calls it when it forwarded no
// cancel to a backend.
func (c *clientConn) cancelWaiting() bool {
	c.mu.Lock()
	// A request being sent again is not idle, wherever it is on its way
	// (replayCanceled answers it); a wait it is in ends too.
	resending := c.replay.resending
	if resending {
		c.replay.canceled = true
	}
	if c.be != nil {
		c.mu.Unlock()
		return resending
	}
	switch {
	case c.replay.pending:
		// Its backend died before answering and the request waits to be
		// sent again: it is answered with 57014 instead (spliceReplay).
		c.replay.canceled = true
		c.mu.Unlock()
		return true
	case c.wait.cancel != nil:
		c.wait.canceled = true
		c.wait.cancel(errWaitCanceledCause)
		c.mu.Unlock()
		return true
	case c.loop.st.Load() == loopQueued:
		c.wait.canceled = true
		c.mu.Unlock()
		// Out of the loop's queue to a goroutine, whose acquire answers
		// at once (or loopAcquire, if the loop serves it first). After
		// c.mu: parker.mu comes first.
		c.srv.park.unpark(c)
		return true
	}
	c.mu.Unlock()
	return resending
}

// endForDrain ends the client's wait in the pool, if a goroutine of its
// waits there: the drain began, so no transaction may start, and acquire
// answers the request with 57P01 (context.Canceled) instead of waiting
// for a backend it would only give back. wake does the same for a
// request in the event loop's queue, which a goroutine then answers. mu
// is the client's c.mu, which it takes.
func (w *waitState) endForDrain(mu *sync.Mutex) {
	mu.Lock()
	if w.cancel != nil && !w.canceled {
		w.cancel(errDrainingCause)
	}
	mu.Unlock()
}

// errDrainingCause ends the context of a wait the drain ended.
var errDrainingCause = errors.New("draining")

// begin starts a goroutine's wait in the pool (beginLocked, under mu, the
// client's c.mu, which it takes), under parent, the client's context.
func (w *waitState) begin(mu *sync.Mutex, parent context.Context) (ctx context.Context, canceled bool) {
	mu.Lock()
	defer mu.Unlock()
	return w.beginLocked(parent)
}

// end ends the wait begin started and reports whether a cancel request
// ended it (endLocked, under mu, the client's c.mu, which it takes).
func (w *waitState) end(mu *sync.Mutex) (canceled bool) {
	mu.Lock()
	defer mu.Unlock()
	return w.endLocked()
}

// takeCanceled reports, once, whether a cancel request came for the
// request the event loop's queue just served (takeCanceledLocked, under
// mu, the client's c.mu, which it takes). Loop thread.
func (w *waitState) takeCanceled(mu *sync.Mutex) bool {
	mu.Lock()
	defer mu.Unlock()
	return w.takeCanceledLocked()
}

// beginLocked starts a goroutine's wait in the pool: it returns the
// context the wait runs under, made from parent, which a cancel request
// ends, or canceled when the cancel came already (while the request
// waited in the event loop's queue). Under clientConn.mu.
func (w *waitState) beginLocked(parent context.Context) (ctx context.Context, canceled bool) {
	if w.takeCanceledLocked() {
		return nil, true
	}
	ctx, w.cancel = context.WithCancelCause(parent)
	return ctx, false
}

// endLocked ends the wait beginLocked started and reports whether a
// cancel request ended it. Under clientConn.mu.
func (w *waitState) endLocked() (canceled bool) {
	w.cancel(nil)
	w.cancel = nil
	return w.takeCanceledLocked()
}

// takeCanceledLocked reports whether a cancel request came for the
// waiting request, and forgets it. Under clientConn.mu.
func (w *waitState) takeCanceledLocked() bool {
	canceled := w.canceled
	w.canceled = false
	return canceled
}

// waitState is a request's wait for a backend (see above). Under c.mu:
// its ...Locked methods run under it, the others take it (passed in).
type waitState struct {
	cancel   context.CancelCauseFunc // set while a goroutine waits in the pool
	canceled bool                    // a cancel request came for the waiting request
}
