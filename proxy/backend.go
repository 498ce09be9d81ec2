// backend: the proxy's state per server connection, kept with the pooled
// connection across clients (buffers, tracked parameters and statements,
// per-hold counts, its socket as the event loop reads it).

package proxy

import (
	"bytes"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Relay buffer sizes. Buffers belong to backends, not clients: there are
// few backends and many clients, and an idle client needs no relay buffer.
const (
	serverReadBufSize = 32 << 10
	clientReadBufSize = 8 << 10
	maxKeptBufSize    = 256 << 10 // larger buffers (one huge message) are dropped after use
)

// backend is the proxy's state for one backend connection, kept with the
// pooled connection (pool.Conn attachment) across clients.
type backend struct {
	conn pool.Conn
	nc   net.Conn // conn's socket
	// defaults are the reported parameters at connect; params are the
	// values the backend has now, as far as the proxy knows.
	defaults map[string]paramValue
	params   *paramSet
	prepared *preparedSet
	// unnamedOwner and unnamedGen name the client unnamed Parse the proxy
	// last sent as this backend's unnamed statement: the statements of the
	// client that sent it (nil: none, or not known). Cleared at every acquire: what a previous client left
	// there is never taken for the next one's. unnamedSeg is the Sync
	// segment that Parse went out in (see clientStatements.useUnnamed).
	unnamedOwner *clientStatements
	unnamedGen   uint64
	unnamedSeg   int64
	out          []byte // backend reader's output when it must edit the stream
	cout         []byte // client reader's output to this backend
	queries      int64  // 'Z's since acquire, for pool.max_queries
	// ErrorResponses since acquire (every one, and those of a class that
	// says the connection or server is suspect), for the pool's
	// per-backend counts and max_backend_errors.
	sqlErrors, connErrors int64

	// Backend reader state.
	in            pgwire.ReadBuffer
	passRemaining int  // bytes of a message being streamed to the client
	passSwallow   bool // ... or dropped
	fatal         bool // the server sent a FATAL error: it is closing
	// diedBetween: that FATAL came while the client's transaction was
	// over (transaction mode), b held only for a moment longer (a cancel
	// request being sent pins it): swallowed, and the client goes on
	// without b (backendLost), as it would had b been released first.
	diedBetween  bool
	busy         bool // session mode: a transaction is open (leak detection)
	busyReported bool // what the pool was last told
	tainted      bool // holds session state policy reject refused: closed, not released
	replayed     bool // died before answering its first request, which goes to another backend (replay.go); under c.mu

	// raw and fd: nc's socket, for the event loop (loop.go); raw is nil
	// when nc has none of its own (TLS: crypto/tls buffers records).
	raw rawConn
	fd  int
	// inLoopSet: fd is in the parker's epoll set (changed under
	// parker.mu; read without it by takeBackend).
	inLoopSet atomic.Bool
	// rtKey is the socket's registration in the Go runtime's poller (0:
	// unknown, it is never taken out); rtOut: taken out when a loop
	// client first waits on it, until a goroutine takes it over
	// (unwatchLocked) or the pool lets anyone else use it (the reclaim
	// set in backendFor); it stays out while idle in the pool, for the
	// loop's next client (runtimepoll_linux.go). Changed under parker.mu,
	// by parker.controlLocked.
	rtKey uint64
	rtOut atomic.Bool
	// deadline: a read deadline may be set on nc (setReadDeadline), so
	// releaseBackend clears it (without one, it spares every transaction
	// a SetReadDeadline: 3% of the loop's own CPU, perf), and the loop
	// reads nc through RawConn.Read, which sees the deadline (loop.go,
	// rawRead). It is true whenever a deadline set in this hold may be.
	deadline atomic.Bool
}

// setReadDeadline sets a read deadline on b's socket: a wake-up of the
// goroutine reading it (time.Now()), or relayInline's bound. Every read
// deadline the relay sets on a backend goes through here.
func (b *backend) setReadDeadline(t time.Time) {
	b.deadline.Store(true) // before the set: releaseBackend's Swap then sees it
	b.nc.SetReadDeadline(t)
}

// backendFor returns the proxy state of conn, creating it on first use.
func (s *Server) backendFor(conn pool.Conn) *backend {
	if b, ok := conn.Attachment().(*backend); ok {
		b.conn = conn
		return b
	}
	b := &backend{
		conn:     conn,
		nc:       conn.Server().NetConn(),
		defaults: make(map[string]paramValue),
		params:   newParamSet(),
		prepared: newPreparedSet(s.cfg.MaxPreparedStatements),
		in:       pgwire.ReadBuffer{Buf: make([]byte, serverReadBufSize)},
	}
	b.fd = -1
	if rc, err := sockpeek.RawConn(b.nc); err == nil {
		rc.Control(func(fd uintptr) { b.raw, b.fd = rc, int(fd) })
	}
	if b.raw != nil {
		if b.rtKey = s.park.rt.pollKey(b.nc); b.rtKey != 0 {
			p := &s.park
			conn.SetReclaim(func() {
				if b.rtOut.Load() {
					p.mu.Lock()
					p.giveBackendLocked(b)
					p.mu.Unlock()
				}
			})
		}
	}
	for k, v := range conn.Server().Params() {
		k = strings.ToLower(k)
		if unsettable[k] {
			continue
		}
		b.defaults[k] = paramValue{val: v}
		b.params.set(k, paramValue{val: v})
	}
	conn.SetAttachment(b)
	return b
}

// settled reports whether nothing b sent is still on its way to the
// client (no reply unread or half streamed) and b is not closing (a FATAL
// came): as far as b goes, it could serve another client.
func (b *backend) settled() bool {
	return b.in.Start == b.in.End && b.passRemaining == 0 && !b.fatal
}

// reportBusy tells the pool whether a transaction is open on b, when that
// changed since it was last told. Session mode: the pool's leak detector
// times transactions, not the whole session.
func (b *backend) reportBusy() {
	if b.busy != b.busyReported {
		b.busyReported = b.busy
		b.conn.SetBusy(b.busy)
	}
}

// shrinkReplyBuffers gives back what a huge reply grew b's read buffer and
// b.out to (the reader's own; b.cout is the client goroutine's).
func (b *backend) shrinkReplyBuffers() {
	b.in.Shrink(maxKeptBufSize, serverReadBufSize)
	if cap(b.out) > maxKeptBufSize {
		b.out = nil
	}
}

// noteError counts one ErrorResponse from the server (body without the
// header). Classes 08 (connection exception), 58 (system error: I/O) and
// XX (internal error) say something about the backend itself; anything
// else is the client's SQL failing. A FATAL or PANIC says the server is
// closing b (b.fatal). It allocates nothing.
func (b *backend) noteError(body []byte) {
	if sev := pgwire.ErrorField(body, 'V'); bytes.Equal(sev, []byte("FATAL")) || bytes.Equal(sev, []byte("PANIC")) {
		b.fatal = true
	}
	b.sqlErrors++
	if code := pgwire.ErrorField(body, 'C'); len(code) >= 2 {
		switch string(code[:2]) {
		case "08", "58", "XX":
			b.connErrors++
		}
	}
}

// flushCounts hands the per-hold counts to the pool.
func (b *backend) flushCounts() {
	b.conn.AddQueries(b.queries)
	b.conn.AddErrors(b.sqlErrors, b.connErrors)
	b.queries, b.sqlErrors, b.connErrors = 0, 0, 0
}

// resetToDefaults records that the backend's session was reset
// (DISCARD ALL / RESET ALL ran on it).
func (b *backend) resetToDefaults(discard bool) {
	b.params.resetTo(b.defaults)
	if discard {
		b.prepared.clear()
	}
}
