// The client reader's wait for input without a read buffer or request
// ring (readClient, the pools they wait in), and its read-deadline
// wake-ups (signalRead).

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
)

// Idle clients hold no read buffer and no request ring.
//
// Most clients of a pooler are idle most of the time (an application
// pool keeps its connections open), so what an idle client holds is
// multiplied by thousands. The client reader (run) reads through
// readClient: when its read buffer is empty it waits for the socket to
// become readable without a buffer, and the buffer (clientReadBufSize)
// waits in clientBufPool meanwhile; the request ring of a client that
// holds no backend goes to requestRingPool. Both come back on the next
// read, without allocating: a Get and a Put per wait, not per message.
// (On the loop thread, the loop's own free lists stand in for the
// sync.Pools: loopcache.go.)
//
// How: syscall.RawConn.Read on the client's TCP socket. Its callback tries
// a non-blocking read into the buffer; on EAGAIN it gives the buffer back
// and returns false, and the runtime parks the goroutine in the netpoller
// until the socket is readable, honouring the read deadline (the relay's
// wake-ups, SetReadDeadline(now), end the wait as they end a conn.Read)
// and Close. So the idle wait costs the same syscalls as conn.Read.
//
// TLS clients keep their buffer: crypto/tls buffers decrypted records of
// its own, so a readable socket is no sign that a TLS read would block, and
// the TLS record layer holds its own buffers besides. Any other net.Conn
// without a file descriptor (tests' scripted connections) reads as before.

// clientBufPool holds the read buffers of clients waiting for input, each
// a *[clientReadBufSize]byte (a pointer: Put does not allocate).
var clientBufPool = sync.Pool{New: func() any { return new([clientReadBufSize]byte) }}

// requestRingSize is the size a client's request ring starts at; rings of
// that size go to requestRingPool while their client is idle.
const requestRingSize = 16

// requestRingPool holds empty request rings (all entries zero, so no
// stale pointers keep memory alive), each a *[requestRingSize]request.
var requestRingPool = sync.Pool{New: func() any { return new([requestRingSize]request) }}

// newRequestRing returns an empty ring of requestRingSize entries.
func newRequestRing() []request { return requestRingPool.Get().(*[requestRingSize]request)[:] }

// takeRingLocked gives an empty queue without a ring one from lc (nil:
// requestRingPool), before its first push would take one from
// requestRingPool. Under c.mu.
func (q *requestQueue) takeRingLocked(lc *loopCache) {
	if q.buf == nil && q.size == 0 {
		q.buf, q.head = lc.ring(), 0
	}
}

// releaseRingLocked gives an empty queue's ring back to lc (nil:
// requestRingPool) when it is of requestRingSize; a ring a pipeline grew
// stays with the client (pop lets one past maxKeptRequests go). Under
// c.mu, with no backend reader looking at the queue.
func (q *requestQueue) releaseRingLocked(lc *loopCache) {
	if q.size == 0 && len(q.buf) == requestRingSize {
		lc.putRing(q.buf)
		q.buf, q.head = nil, 0
	}
}

// idleReader is what a client reader needs to wait without a buffer: the
// socket's RawConn and the read callback, both made once per client so a
// wait allocates nothing; n and err are the callback's result.
type idleReader struct {
	raw   syscall.RawConn // nil: the client's conn reads as a plain net.Conn
	setUp bool
	read  func(fd uintptr) bool
	n     int
	err   error
	// parkable: the reader waits, idle, holding no backend (set by the
	// callback before it waits, cleared when the read returns); the
	// parker asks such readers to park (park.go).
	parkable atomic.Bool
	// hot: park at once when there is nothing to read (the loop serves
	// the client's requests, loop.go); hotNow: the callback found so.
	hot, hotNow bool
	// signalled: a read deadline may be set on the socket (signalRead).
	// The event loop reads a client's socket through RawConn.Control,
	// which skips the runtime's deadline check, unless this is set
	// (loop.go, rawRead). signalMu makes the flag and the deadline change
	// together, so the flag is never false while a deadline is set; the
	// flag is read without it. A leaf lock.
	signalled atomic.Bool
	signalMu  sync.Mutex
}

// signalRead wakes the reader of conn, the client's connection, with a
// read deadline in the past: its wait for input ends (a running reader),
// or its next read returns at once (a parked one, or one the loop runs).
// Every read deadline set on a logged-in client goes through here.
func (ir *idleReader) signalRead(conn net.Conn) {
	ir.signalMu.Lock()
	ir.signalled.Store(true) // with the deadline: see idleReader
	conn.SetReadDeadline(time.Now())
	ir.signalMu.Unlock()
}

// clearReadSignal clears a read deadline signalRead set on conn, once its
// reader has seen it. The client's owner only.
func (ir *idleReader) clearReadSignal(conn net.Conn) {
	ir.signalMu.Lock()
	conn.SetReadDeadline(time.Time{})
	ir.signalled.Store(false)
	ir.signalMu.Unlock()
}

// readClient reads the client into c.in, as c.conn.Read(c.in.Free()) after
// c.in.Prepare() would, but parks an idle client without a read buffer.
func (c *clientConn) readClient() (int, error) {
	ir := &c.idle
	if !ir.setUp && ir.open(c.conn, c.sock) {
		ir.read = c.readIdle // made once, so that a wait allocates nothing
		if c.srv != nil && c.policy.releaseAtTransactionEnd {
			c.park.setUp(ir.raw, &c.srv.park.rt, c.conn) // a mode that parks (park.go)
		}
	}
	if ir.raw == nil || c.in.Start != c.in.End {
		c.loop.bufCache(c.srv).lendReadBuffer(&c.in)
		c.in.Prepare()
		return c.conn.Read(c.in.Free())
	}
	ir.n, ir.err = 0, nil
	ir.hot = c.loop.hotPark(c.park.loopOn())
	err := ir.raw.Read(ir.read)
	if ir.parkable.Load() {
		ir.parkable.Store(false)
	}
	if ir.hotNow {
		// Nothing to read, and the loop serves this client's requests:
		// park at once (loop.go), or wait as usual where it may not.
		ir.hotNow, ir.hot = false, false
		if c.tryPark(true) {
			return 0, errParked
		}
		err = ir.raw.Read(ir.read)
		if ir.parkable.Load() {
			ir.parkable.Store(false)
		}
	}
	if err != nil {
		if c.park.want.Swap(false) && errors.Is(err, os.ErrDeadlineExceeded) && c.tryPark(false) {
			return 0, errParked // park.go: c may belong to another goroutine now
		}
		c.loop.bufCache(c.srv).lendReadBuffer(&c.in) // a wake-up or close: the reader goes on with a buffer
		return 0, err
	}
	return ir.n, ir.err
}

// open finds the socket under conn, the client's connection, when it has
// one and no TLS (conn is sock, the accepted socket), and reports whether
// it did; the caller then sets read. Once per client: setUp says it ran.
func (ir *idleReader) open(conn, sock net.Conn) bool {
	ir.setUp = true
	if conn != sock {
		return false // TLS: see above
	}
	raw, err := sockpeek.RawConn(conn)
	if err != nil {
		return false
	}
	ir.raw = raw
	return true
}

// readIdle is the RawConn.Read callback: one non-blocking read into the
// (pooled) buffer. It returns false, the buffer given back, when there is
// nothing to read: the runtime then waits for the socket to be readable
// and calls it again.
func (c *clientConn) readIdle(fd uintptr) bool {
	c.loop.bufCache(c.srv).lendReadBuffer(&c.in)
	c.in.Prepare()
	for {
		n, err := syscall.Read(int(fd), c.in.Free())
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			c.loop.bufCache(c.srv).reclaimReadBuffer(&c.in)
			if c.releaseRequestRing() && c.park.can {
				if c.idle.hot {
					c.idle.hotNow = true // readClient parks it now
					return true
				}
				c.idle.parkable.Store(true)
			}
			return false
		case err != nil:
			c.idle.err = os.NewSyscallError("read", err)
		case n == 0:
			c.idle.err = io.EOF
		default:
			c.idle.n = n
		}
		return true
	}
}

// releaseRequestRing gives the request ring of a client that holds no
// backend (nothing is in flight, no backend reader looks at the queue)
// back to its pool. It reports whether the client holds no backend.
func (c *clientConn) releaseRequestRing() bool {
	c.mu.Lock()
	free := c.be == nil
	if free {
		c.exchange.q.releaseRingLocked(c.loop.bufCache(c.srv))
	}
	c.mu.Unlock()
	return free
}
