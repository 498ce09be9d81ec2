// Package sockpeek looks at a TCP socket without reading from it or
// blocking: one recvfrom with MSG_PEEK|MSG_DONTWAIT. The pool peeks at idle
// backends before it hands them out, and the proxy at clients that waited
// for a backend and at the bytes behind an SSLRequest; each judges what it
// finds its own way, from the one Result this package reports. RawConn,
// the socket's handle under a net.Conn that Conn peeks through, is also how
// the proxy reaches its sockets' descriptors.
package sockpeek

import (
	"errors"
	"net"
	"syscall"
)

// State is what a peek found.
type State uint8

const (
	// Unknown: not a socket, or not peeked (a read deadline is set on it,
	// say): it says nothing about the peer.
	Unknown State = iota
	// Empty: open, nothing to read.
	Empty
	// Data: bytes wait to be read; Result.First is the first of them.
	Data
	// EOF: the peer closed its side (end of stream).
	EOF
	// Failed: the socket has an error (Result.Err: a reset, a timeout).
	Failed
	// ClosedHere: the net.Conn itself was closed in this process.
	ClosedHere
)

// Result is one peek's finding.
type Result struct {
	State State
	First byte  // with Data: the first pending byte (a message type)
	Err   error // with Failed: the socket's error; with ClosedHere: net.ErrClosed's
	TLS   bool  // conn was a TLS connection, peeked at underneath: Data is then an encrypted record
}

// Conn peeks at conn's socket. A TLS connection (anything with a NetConn
// method) is peeked at underneath, at the TCP level. The caller must be
// the socket's only reader: a peek on a socket another goroutine is
// reading waits for that read to finish.
func Conn(conn net.Conn) Result {
	tlsWrapped := false
	if u, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn, tlsWrapped = u.NetConn(), true
	}
	rc, err := RawConn(conn)
	if err != nil {
		return Result{}
	}
	r := Raw(rc)
	r.TLS = tlsWrapped
	return r
}

// errNoSocket: conn has no socket of its own to reach (a TLS layer, a
// net.Pipe).
var errNoSocket = errors.New("sockpeek: the connection has no socket handle (not a syscall.Conn)")

// RawConn is conn's socket handle: conn itself must be the socket (a
// net.TCPConn, say), not a TLS layer over it. The error says there is
// none: conn is not a syscall.Conn, or its SyscallConn refused (a nil
// *net.TCPConn). A closed conn still has one; what is done through it then
// fails with net.ErrClosed.
func RawConn(conn net.Conn) (syscall.RawConn, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, errNoSocket
	}
	return sc.SyscallConn()
}

// Raw is Conn on a socket's RawConn, for a caller that keeps one: Conn
// makes a RawConn per call. The callback's few variables still go to the
// heap (RawConn.Read takes a func), which is why no per-message path
// peeks.
func Raw(rc syscall.RawConn) Result {
	var buf [1]byte
	var n int
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	})
	switch {
	case errors.Is(err, net.ErrClosed):
		return Result{State: ClosedHere, Err: err}
	case err != nil:
		return Result{}
	case perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK || perr == syscall.EINTR:
		return Result{State: Empty}
	case perr != nil:
		return Result{State: Failed, Err: perr}
	case n == 0:
		return Result{State: EOF}
	}
	return Result{State: Data, First: buf[0]}
}
