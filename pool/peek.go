// What a peek at an idle backend's socket means to the pool (peekSocket):
// internal/sockpeek looks, without blocking or consuming; this file judges
// whether the server closed the backend or sent something.

package pool

import (
	"errors"
	"fmt"
	"net"

	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
)

// errNotIdle is what peekSocket reports when an idle backend's socket is
// not quiet: it has something to say or was closed.
var errNotIdle = errors.New("idle backend is not quiet")

// peekSocket peeks at an idle backend's socket without blocking and
// without consuming anything. An idle backend has nothing to say: pending
// bytes (the FATAL ErrorResponse of pg_terminate_backend, of
// idle_session_timeout or of a shutdown) or EOF mean its state is no
// longer what the pool believes, so it must be closed, never handed out.
// It returns nil when the socket is quiet, or when it cannot be peeked
// (no socket, as with test fakes); the validation query covers those.
//
// Under TLS only the raw socket can be peeked: EOF or a socket error
// there still means the server is gone, but pending bytes are encrypted
// records that may be harmless (a TLS 1.3 session ticket), so they pass.
//
// The caller must own the backend: peeking a socket another goroutine is
// reading would wait for that read to finish.
func peekSocket(nc net.Conn) error {
	r := sockpeek.Conn(nc)
	switch r.State {
	case sockpeek.ClosedHere:
		// The net.Conn itself is closed: certainly not usable.
		return fmt.Errorf("%w: socket closed: %v", errNotIdle, r.Err)
	case sockpeek.Failed:
		return fmt.Errorf("%w: socket error: %v", errNotIdle, r.Err)
	case sockpeek.EOF:
		return fmt.Errorf("%w: closed by the server (EOF)", errNotIdle)
	case sockpeek.Data:
		switch {
		case r.TLS:
			return nil
		case r.First == 'E':
			return fmt.Errorf("%w: the server sent an ErrorResponse (a FATAL: terminated, idle_session_timeout or shutdown)", errNotIdle)
		}
		return fmt.Errorf("%w: the server sent an unexpected %q message", errNotIdle, r.First)
	}
	// Quiet, or not peeked (no socket, as with test fakes; a read deadline
	// left on the socket): that says nothing against the backend; the
	// validation query covers it.
	return nil
}
