// The socket peek: a look at an idle backend's socket, without blocking or
// consuming, that tells whether the server closed it or sent something
// (peekSocket).

package pool

import (
	"errors"
	"fmt"
	"net"
	"syscall"
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
	tlsWrapped := false
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc, tlsWrapped = u.NetConn(), true
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	// Five bytes are a message header: enough to name what is pending.
	var buf [5]byte
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	})
	switch {
	case errors.Is(err, net.ErrClosed):
		// The net.Conn itself is closed: certainly not usable.
		return fmt.Errorf("%w: socket closed: %v", errNotIdle, err)
	case err != nil:
		// Not peeked (a read deadline left on the socket, say): that says
		// nothing about the backend; the validation query covers it.
		return nil
	case perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK || perr == syscall.EINTR:
		return nil
	case perr != nil:
		return fmt.Errorf("%w: socket error: %v", errNotIdle, perr)
	case n == 0:
		return fmt.Errorf("%w: closed by the server (EOF)", errNotIdle)
	case tlsWrapped:
		return nil
	case buf[0] == 'E':
		return fmt.Errorf("%w: the server sent an ErrorResponse (a FATAL: terminated, idle_session_timeout or shutdown)", errNotIdle)
	default:
		return fmt.Errorf("%w: the server sent an unexpected %q message", errNotIdle, buf[0])
	}
}
