//go:build !linux

// The event loop's socket reads and writes where it is not Linux: plain
// read(2) and write(2).

package proxy

import (
	"net"
	"syscall"
)

// loopRecv and loopSend: read(2) and write(2) where the loop's Linux
// calls (loopio_linux.go) do not exist. The loop does not run there
// (park_other.go), but the code that calls them is shared.
func loopRecv(fd uintptr, b []byte) (int, error) { return syscall.Read(int(fd), b) }
func loopSend(fd uintptr, b []byte) (int, error) { return syscall.Write(int(fd), b) }

// unsentBytes: unknown where it is not Linux (loopio_linux.go).
func unsentBytes(net.Conn) int { return -1 }
