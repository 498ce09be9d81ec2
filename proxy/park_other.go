//go:build !linux

// Parking's stand-ins without epoll: parking stays off, and the loop's
// sockets never leave the runtime's poller.

package proxy

import (
	"errors"
	"log/slog"
	"net"
	"time"
)

// Parking needs epoll (park_linux.go); elsewhere every idle client keeps
// its goroutine, waiting as idle.go describes.

type parkOS struct{}

func (o *parkOS) open() error { return errors.New("idle-client parking needs Linux (epoll)") }

func (o *parkOS) add(int) error { return errors.ErrUnsupported }

func (o *parkOS) del(int) error { return errors.ErrUnsupported }

func (o *parkOS) arm(int) error { return errors.ErrUnsupported }

func (o *parkOS) stop() {}

func (o *parkOS) wait(time.Duration, func(int, bool)) bool { return false }

func (o *parkOS) close() {}

func (o *parkOS) threadID() int32 { return 0 }

// runtimePoll: the loop never runs here, so its sockets never leave the
// runtime's poller (runtimepoll_linux.go).
type runtimePoll struct{ log *slog.Logger }

func (r *runtimePoll) pollKey(net.Conn) uint64   { return 0 }
func (r *runtimePoll) take(uintptr) bool         { return false }
func (r *runtimePoll) give(uintptr, uint64) bool { return false }
