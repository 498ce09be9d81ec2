// A client that left while its request waited for a backend: a
// non-blocking peek at a socket (peekSocket, which socketHasData uses
// too), and leftWhileWaiting.

package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// A client that leaves while its request waits for a backend: the
// request is dropped, never sent.
//
// A request waits for a backend while the pool is saturated, up to
// pool.acquire_timeout. Nobody reads the client meanwhile (the request is
// already buffered), so a client that gave up (its own timeout, a killed
// process, a crashed host) would otherwise be noticed only when its reply
// could not be written, after its statement ran. For a statement that
// changes data that is worse than late: an application that retries after
// its timeout runs it twice. PgBouncer drops a waiting client that
// disconnects; so does pgsidecar. Once a backend is had after a wait, a
// non-blocking peek at the client's socket says whether the client is
// still there; end of stream or a reset means it is not, and the backend
// goes back to the pool untouched. Where the wait is the event loop's
// queue, the loop's own epoll set reports the close (loop.more), so only
// such clients are peeked; a goroutine's wait in the pool is peeked when
// it lasted goneCheckAfter or more.

// goneCheckAfter is the shortest wait in the pool after which the client
// goroutine peeks at the client before it sends the request: a client
// rarely gives up sooner, and a shorter wait is not worth a system call
// per transaction.
const goneCheckAfter = time.Millisecond

// errClientGone ends a client that left while its request waited: a
// disconnect (io.EOF), not an error of the proxy's.
var errClientGone = fmt.Errorf("the client left while its request waited for a server connection: %w", io.EOF)

// socketState is what a non-blocking peek at a socket found.
type socketState uint8

const (
	socketUnknown socketState = iota // not a socket, or not peeked (a read deadline set, closed here)
	socketEmpty                      // open, nothing to read
	socketData                       // bytes waiting
	socketClosed                     // the peer closed (end of stream) or reset the connection
)

// peekSocket looks at conn's socket without reading or blocking. A TLS
// connection is looked at underneath, at the TCP level.
func peekSocket(conn net.Conn) socketState {
	if u, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = u.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return socketUnknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return socketUnknown
	}
	return peekRaw(rc)
}

// peekRaw is peekSocket on a socket's RawConn.
func peekRaw(rc syscall.RawConn) socketState {
	var buf [1]byte
	var n int
	var perr error
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	}); err != nil {
		return socketUnknown
	}
	switch {
	case perr == nil && n > 0:
		return socketData
	case perr == nil:
		return socketClosed // end of stream
	case errors.Is(perr, syscall.ECONNRESET), errors.Is(perr, syscall.EPIPE), errors.Is(perr, syscall.ETIMEDOUT):
		return socketClosed
	case perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK:
		return socketEmpty
	}
	return socketUnknown
}

// leftWhileWaiting reports whether the client closed or reset its
// connection (see above). It peeks at the socket once. Only the client's
// reader (its goroutine, or the loop while it owns the client) calls it.
func (c *clientConn) leftWhileWaiting() bool {
	var st socketState
	if c.idle.raw != nil {
		st = peekRaw(c.idle.raw) // the client's own: no allocation
	} else {
		st = peekSocket(c.sock)
	}
	if st != socketClosed {
		return false
	}
	c.log.Debug("client left while its request waited for a server connection: the request is dropped, not sent")
	return true
}
