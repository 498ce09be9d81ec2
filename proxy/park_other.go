//go:build !linux

package proxy

import (
	"errors"
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

func (o *parkOS) wait(time.Duration, func(int)) bool { return false }

func (o *parkOS) close() {}
