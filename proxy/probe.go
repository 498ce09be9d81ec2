package proxy

import (
	"errors"
	"net"
	"syscall"
)

var errIdleServerSpoke = errors.New("idle server connection has pending data or was closed by the server")

// probeSocket peeks at a socket without blocking. An idle backend has
// nothing to say; pending bytes (a FATAL from pg_terminate_backend) or EOF
// mean it is gone. Sockets that cannot be peeked (TLS) pass; the pool's
// validation query covers them.
func probeSocket(nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var buf [1]byte
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	})
	if err != nil {
		return nil
	}
	switch {
	case perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK:
		return nil
	case perr != nil:
		return errIdleServerSpoke
	case n >= 0:
		// n > 0: data pending; n == 0: orderly shutdown (EOF).
		return errIdleServerSpoke
	}
	return nil
}
