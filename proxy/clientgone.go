// A client that reset its connection while its request waited for a
// backend: a non-blocking peek at a socket (peekSocket, which socketHasData uses
// too), and leftWhileWaiting.

package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
)

// A client that resets its connection while its request waits for a
// backend: the request is dropped, never sent.
//
// A request waits for a backend while the pool is saturated, up to
// pool.acquire_timeout. Nobody reads the client meanwhile (the request is
// already buffered), so a client that gave up (its own timeout, a killed
// process, a crashed host) would otherwise be noticed only when its reply
// could not be written, after its statement ran. For a statement that
// changes data that is worse than late: an application that retries after
// its timeout runs it twice. PgBouncer drops a waiting client that
// disconnects. Once a backend is had after a wait, a non-blocking peek at
// the client's socket says whether the client is still there; a reset
// means it is not, and the backend goes back to the pool untouched.
//
// An end of stream does not: a client that half-closed its socket
// (shutdown(SHUT_WR)) right after its request sends nothing more but
// reads its reply, and PostgreSQL runs a request followed by the end of
// the stream (its effects commit); the proxy must too. A FIN cannot be
// told from a close, so the request of a client that closed (its process
// killed with nothing left unread, which the kernel ends with a FIN) runs
// as well, as it would directly; only a reset (an abort, a close with
// unread input, a host that answers for a crashed one) drops it.
//
// Where the wait is the event loop's queue, the loop's own epoll set
// reports the close (loop.more), so only such clients are peeked; a
// goroutine's wait in the pool is peeked when it lasted goneCheckAfter or
// more.

// goneCheckAfter is the shortest wait in the pool after which the client
// goroutine peeks at the client before it sends the request: a client
// rarely gives up sooner, and a shorter wait is not worth a system call
// per transaction.
const goneCheckAfter = time.Millisecond

// errClientGone ends a client that reset its connection while its
// request waited: a disconnect (io.EOF), not an error of the proxy's.
var errClientGone = fmt.Errorf("the client reset its connection while its request waited for a server connection: %w", io.EOF)

// socketState is what a non-blocking peek at a socket found, as the proxy
// judges it.
type socketState uint8

const (
	socketUnknown socketState = iota // not a socket, or not peeked (a read deadline set, closed here)
	socketEmpty                      // open, nothing to read
	socketData                       // bytes waiting
	socketEOF                        // the peer sends no more (end of stream): closed, or half-closed and reading on
	socketReset                      // the peer reset the connection, or it broke (a broken pipe, a timeout)
)

// peekSocket looks at conn's socket without reading or blocking. A TLS
// connection is looked at underneath, at the TCP level.
func peekSocket(conn net.Conn) socketState { return judgePeek(sockpeek.Conn(conn)) }

// peekRaw is peekSocket on a socket's RawConn.
func peekRaw(rc syscall.RawConn) socketState { return judgePeek(sockpeek.Raw(rc)) }

// judgePeek is what a peek says of a client: a reset, a broken pipe or a
// timeout says it is gone; another socket error, or a net.Conn closed
// here, says nothing either way.
func judgePeek(r sockpeek.Result) socketState {
	switch r.State {
	case sockpeek.Empty:
		return socketEmpty
	case sockpeek.Data:
		return socketData
	case sockpeek.EOF:
		return socketEOF
	case sockpeek.Failed:
		if errors.Is(r.Err, syscall.ECONNRESET) || errors.Is(r.Err, syscall.EPIPE) || errors.Is(r.Err, syscall.ETIMEDOUT) {
			return socketReset
		}
	}
	return socketUnknown
}

// leftWhileWaiting reports whether the client, whose socket is sock (r.raw
// its RawConn, if set), reset its connection (an end of stream is no
// reason: see above), and logs it to the client's logger lg. It peeks at
// the socket once. Only the client's reader (its goroutine, or the loop
// while it owns the client) calls it.
func (r *idleReader) leftWhileWaiting(sock net.Conn, lg *slog.Logger) bool {
	var st socketState
	if r.raw != nil {
		st = peekRaw(r.raw) // the client's own: no RawConn to make
	} else {
		st = peekSocket(sock)
	}
	if st != socketReset {
		return false
	}
	lg.Debug("client reset its connection while its request waited for a server connection: the request is dropped, not sent")
	return true
}
