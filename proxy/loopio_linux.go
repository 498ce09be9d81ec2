// The event loop's socket reads and writes on Linux: raw recv(2) and
// send(2).

package proxy

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
)

// The loop thread's socket I/O on Linux: recvfrom(2) and sendto(2)
// without an address, which go straight to the socket layer, where
// read(2) and write(2) first pass through the file layer (position lock
// lookup, file permission and fsnotify hooks) on every call. The loop
// makes two of each per transaction. Both may be interrupted (EINTR):
// the callers retry.
//
// Both are raw system calls (RawSyscall6: no entersyscall/exitsyscall,
// about 1% of the loop's CPU): the sockets are non-blocking, so the call
// never waits, and the few microseconds it takes are not worth telling
// the scheduler its P could go to another thread meanwhile.

// loopRecv is recv(fd, b, 0).
func loopRecv(fd uintptr, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(p), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// loopSend is send(fd, b, MSG_NOSIGNAL): a peer that closed is EPIPE, as
// for the runtime's own writes, never a signal.
func loopSend(fd uintptr, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(p), uintptr(len(b)), syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// unsentBytes is how many bytes written to the socket of conn the peer
// has not yet acknowledged (SIOCOUTQ), or -1 when that cannot be known.
// Bytes stay there while the peer does not read: its receive window is
// full. conn must be the socket itself, not a TLS layer over it.
func unsentBytes(conn net.Conn) int {
	rc, err := sockpeek.RawConn(conn)
	if err != nil {
		return -1
	}
	n := -1
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}
