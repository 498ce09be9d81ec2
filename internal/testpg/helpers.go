// Small test helpers: free ports (FreePort, FreeAddr), polling (Eventually)
// and log capture (LogBuffer).

package testpg

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// FreePort asks the kernel for a free TCP port on 127.0.0.1. The port is
// released before it is used, so another process may still take it; within
// this process FreePort never hands out the same port twice, because the
// kernel readily returns a port it just released (a proxy's listen and
// health.listen picked one after the other collided that way).
func FreePort() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = make(map[int]bool)
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("testpg: no port this process has not handed out already in 100 tries")
}

// handedOut is every port FreePort has returned in this process.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// FreeAddr is FreePort as a host:port, failing tb when there is none.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// Eventually polls cond every 10 ms until it holds, failing tb with what
// once timeout has passed.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// LogBuffer is an io.Writer for a log, safe for one writer and many
// readers: tests read it while the code under test writes.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Contains reports whether the log so far contains s.
func (b *LogBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

// ContainsWithin reports whether s appears in the log within d. A test
// that has just seen the effect of an event uses it for the event's log
// line, which the process may write a moment after the effect.
func (b *LogBuffer) ContainsWithin(s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !b.Contains(s) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// Count is how many times s occurs in the log so far.
func (b *LogBuffer) Count(s string) int { return strings.Count(b.String(), s) }

// JSONLines decodes every line that is a JSON object (a log written with
// format json); other lines are skipped.
func (b *LogBuffer) JSONLines() []map[string]any {
	var out []map[string]any
	for line := range strings.SplitSeq(b.String(), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
