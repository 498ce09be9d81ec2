//go:build linux

// parkOS on Linux: the parker's epoll set and its stop pipe.

package proxy

import (
	"os"
	"syscall"
	"time"
)

// The Linux parker: an epoll set of its own (see park.go for the design).
//
// An idle client's socket is in two epoll sets: the Go runtime's (edge
// triggered, where it records readiness while no goroutine waits on the
// socket) and this one, edge triggered too: readable data, a peer that
// closed (EPOLLRDHUP) or an error (EPOLLHUP, EPOLLERR) is reported when
// it comes, and also if it was already there when the socket was added,
// so no readiness can be missed between the client reader's last read and
// the add. A socket stays in the set while the parker or the event loop
// owns its client (loop.go: no system call to re-arm it per request) and
// leaves it when a goroutine takes the client over (del). The loop's
// backends' sockets join it at their first use by the loop (loopWait) and
// stay until a goroutine reads the backend (unwatchLocked); readiness of
// one the loop does not wait on is ignored.

// parkEvents is what wakes a parked client.
const parkEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET

// epollET is EPOLLET, edge triggered, as the uint32 the kernel reads:
// package syscall's constant is -0x80000000 on amd64 and 0x80000000 on
// arm64, so neither it nor its negation converts on both.
const epollET = 1 << 31

// parkBatch is how many readiness events one epoll_wait returns at most.
const parkBatch = 128

// parkOS is the parker's epoll set and its stop pipe.
type parkOS struct {
	epfd         int // -1 when parking is off
	stopR, stopW int // closing stopW makes stopR readable: the loop ends
	ev           syscall.EpollEvent
	events       [parkBatch]syscall.EpollEvent // the loop's
}

// open makes the epoll set; on failure parking stays off (the goroutine
// path serves every client).
func (o *parkOS) open() error {
	o.epfd, o.stopR, o.stopW = -1, -1, -1
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return os.NewSyscallError("pipe2", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return os.NewSyscallError("epoll_ctl", err)
	}
	o.epfd, o.stopR, o.stopW = epfd, p[0], p[1]
	return nil
}

// add puts fd in the set (under parker.mu); one already there stays.
func (o *parkOS) add(fd int) error {
	o.ev = syscall.EpollEvent{Events: parkEvents, Fd: int32(fd)}
	err := syscall.EpollCtl(o.epfd, syscall.EPOLL_CTL_ADD, fd, &o.ev)
	if err == syscall.EEXIST {
		err = nil
	}
	return err
}

// del takes fd out of the set (under parker.mu).
func (o *parkOS) del(fd int) error {
	return syscall.EpollCtl(o.epfd, syscall.EPOLL_CTL_DEL, fd, &o.ev)
}

// stop makes the loop end (its wait returns the stop pipe readable).
func (o *parkOS) stop() {
	syscall.Close(o.stopW)
}

// parkEnded is what an event says when the peer has closed (at least its
// side: a FIN) or the socket failed.
const parkEnded = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR

// wait waits up to d for readiness and calls ready for each socket that
// has some, with ended set when the event also says the stream has ended
// (parkEnded): edge triggered, that is said once, possibly together with
// the last data, which one read takes without reaching the end. It
// reports false once stop was called. Parker goroutine only.
func (o *parkOS) wait(d time.Duration, ready func(fd int, ended bool)) bool {
	n, err := syscall.EpollWait(o.epfd, o.events[:], int(d/time.Millisecond))
	if err != nil {
		return true // EINTR: the caller loops
	}
	for _, ev := range o.events[:n] {
		if int(ev.Fd) == o.stopR {
			return false
		}
		ready(int(ev.Fd), ev.Events&parkEnded != 0)
	}
	return true
}

// threadID is the calling thread's kernel id (gettid): the loop's, once
// it has locked its thread.
func (o *parkOS) threadID() int32 { return int32(syscall.Gettid()) }

// close releases the set and the pipe once the loop has ended.
func (o *parkOS) close() {
	syscall.Close(o.epfd)
	syscall.Close(o.stopR)
}
