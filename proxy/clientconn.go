// clientConn: a client connection's state (clientConn and the small state
// types it holds), and its life: serveConn's login then session, what
// connEnd gives back at the end, and the ways a client is made to leave
// (closeWith, kill).

package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// clientConn is one client connection. Its goroutine (run) reads the client,
// writes to the backend and, for the common request/response exchange of
// transaction mode, reads the backend's replies itself (relayInline). A
// second goroutine (backendReader) reads the backend only where the client may
// send more while replies arrive (COPY FROM STDIN, pipelining, an open
// extended-protocol batch) and in session mode; see relay_server.go.
type clientConn struct {
	srv      *Server
	conn     net.Conn // the client: TLS over sock, or sock itself
	sock     net.Conn // the accepted socket
	identity clientIdentity
	db       *Database
	log      *slog.Logger
	policy   *modePolicy // what the pool mode decides

	ctx    context.Context // cancelled by kill
	cancel context.CancelFunc

	// Owned by the client goroutine.
	in     pgwire.ReadBuffer
	stream clientStream // where the client is in its stream beyond one whole message (clientstream.go)

	// Shared with backendReader and cancel requests, under mu.
	mu sync.Mutex
	be *backend
	// exchange: where the exchange with be stands (exchange.go): the
	// request queue (q), txStatus, inBatch, serverSkipping, the pins
	// writing and cancels, and the reply routing's replacement.
	exchange exchange
	params   clientParams     // the session parameters the client expects, and its startup packet's (params.go)
	stmts    clientStatements // the client's statements (statements.go)
	reader   readerState      // who reads be, and its hand-overs with the client reader (relay_server.go)
	state    sessionTrack     // session state and settings (transaction mode, sessionstate.go)
	hub      *notifyHub       // the shared listener (nil in session mode or without one)
	listen   listenTrack      // LISTEN through the shared listener (notify.go)
	// replay: the first request on a freshly acquired backend, kept to be
	// sent again on another backend if that one was already dying (replay.go).
	replay replayState

	// wmu orders writes to the client where two goroutines may write: a
	// backend reader gives the backend back before its last write of a
	// transaction (replyAndRelease), and whatever the client's next
	// request makes the client goroutine or the loop write must follow it.
	wmu sync.Mutex

	last lastStatement // the statement the client sent last (inspect)

	leave leaveState // why the client must go now (closeWith, kill)
	idle  idleReader // the client reader's buffer-less wait (idle.go)
	park  parkState  // parking while idle, without a goroutine (park.go)
	loop  loopState  // requests relayed by the parker's loop (loop.go)

	timeouts timeoutState // what the client timeouts watch (timeouts.go)
	wait     waitState    // a cancel request for the waiting request (waitcancel.go; under mu)
}

// leaveState is why a client must go now: set by any goroutine (closeWith,
// kill), read by whoever runs the client, which then leaves (reason).
type leaveState struct {
	// err, once set (closeWith), is why the client must go: the drain
	// deadline, a timeout or the admin console's KILL. The client reader
	// returns it at its next wake.
	err    atomic.Pointer[pgError]
	killed atomic.Bool // kill: the client is closed, and nothing more is told to it
	// midReply: finish let go of a backend with part of one of its
	// messages relayed to the client and the rest never to come (a
	// DataRow passed on in pieces): an error written now would be read
	// as that rest, so the client is closed without one. Client
	// goroutine only.
	midReply bool
}

// reason is why the client must go now (closeWith, kill), or nil.
func (l *leaveState) reason() error {
	if pe := l.err.Load(); pe != nil {
		return pe
	}
	if l.killed.Load() {
		return net.ErrClosed
	}
	return nil
}

// clientIdentity is who the client is, as the admin console, the logs and
// cancel requests see it: set at login.
type clientIdentity struct {
	addr    string
	user    string
	since   time.Time // logged in
	appName string    // application_name of the startup packet (the logs'; the console shows currentAppName)
	// pid and secret are the BackendKeyData the client cancels with
	// (cancelKeys: proxy-minted, or in session mode its backend's),
	// written under cancelKeys.mu after the client is listed: any other
	// goroutine reads them there too (lookup, pidOf).
	pid, secret uint32
}

// lastStatement is the start of the last statement the client sent, for
// leak reports and the query_timeout log, and what the session scan found
// in it.
type lastStatement struct {
	// mu guards n and text against readers on other goroutines (the
	// query_timeout log, the pool's leak report); the owner, the only
	// writer, reads them without it.
	mu sync.Mutex
	n  int32 // bytes of text in use (an int32, so the struct packs in 256 bytes)
	// scanOK: touches and changes are scan's findings (sessionstate.go) for
	// text[:n], a whole statement. A client sends the same statements
	// again and again: inspect compares the text instead of scanning it
	// again. Owner only.
	scanOK, touches, changes bool
	text                     [240]byte
}

// sessionTrack is what transaction mode tracks of a client's session
// state (sessionstate.go). Under c.mu, as are all its methods.
type sessionTrack struct {
	// dirty, paramsDirty: the client's traffic may have touched session
	// state, or settings, since the last check. resync: a pinned client's
	// backend no longer has the settings the client expects.
	dirty, paramsDirty, resync bool
	check                      stateCheck          // the check's answer so far
	customNames                map[string]struct{} // dotted names seen in SETs since the last check
	// checkWait is closed when the state check in flight is answered: the
	// client's next request waits for it, as it may need another backend.
	checkWait chan struct{}
	pin       *PinnedClient // while the client holds session state
}

// listenTrack is a client's LISTEN through the shared listener
// (notify.go). Under c.mu, as are all its methods.
type listenTrack struct {
	notes           [][]byte // notifications not yet delivered
	dropped         int      // ... and dropped since the last delivery
	unlistenBackend bool     // the backend still LISTENs: UNLISTEN * owed before release
	late            []string // channels the backend listened on that the hub may lack
}

// readerState says who reads the client's backend, c.be, and holds what
// its reader, whichever it is, shares with the client reader: the
// hand-overs between the two (writeDone, drained). Under c.mu.
type readerState struct {
	// async: a backend reader (backendReader) reads be until be is released
	// or lost; done is closed when that reader ends; stop tells it to stop
	// and leave be to finish. (done first: the flags after it pack into
	// one word.)
	done  chan struct{}
	async bool
	stop  bool
	// inline: the client goroutine reads be itself (relayInline).
	inline bool
	// severed: be's socket was closed under the client (closeWith, kill):
	// be is destroyed, never released.
	severed bool
	// copyIn: be sent CopyInResponse and waits for the client's data.
	copyIn bool
	// writeDone, set by a backend reader that found the transaction over
	// but for the client goroutine's write to be (c.exchange.writing), is closed
	// by unpin when that write is done (awaitWriteLocked).
	writeDone chan struct{}
	// drained is closed by be's reader once the requests awaiting a reply
	// fall to half of maxPendingRequests (wakeDrainedLocked; nil unless
	// the client reader waits for that: backpressure).
	drained chan struct{}
	// drainAll: drained waits until nothing is pending at all, for the
	// client message build left at the head of the buffer until
	// everything ahead of it is answered
	// (clientStatements.judgedByAnswersAhead). Set by build for the
	// client reader's next backpressure wait, cleared when it ends.
	drainAll bool
}

// serverOpTimeout bounds each statement the proxy runs on a backend itself
// when a client leaves (ROLLBACK, RESET ALL, the reset query) and a cancel
// request it sends.
const serverOpTimeout = 5 * time.Second

// errDraining is what a client is told when the proxy drains and the client
// is at a transaction boundary: its next transaction would start after
// the SIGTERM.
func errDraining() *pgError {
	return newFatal(pgwire.CodeAdminShutdown, "terminating connection due to administrator command: the proxy is shutting down",
		"reconnect; the application's pool will open a new connection to another instance")
}

// errShutdownNow is what a client still connected when Shutdown's context
// ends is told; its open transaction is rolled back.
func (s *Server) errShutdownNow() *pgError {
	opt := s.cfg.option("ShutdownTimeout")
	return newFatal(pgwire.CodeAdminShutdown, "terminating connection due to administrator command: the proxy's "+opt+" ran out; an open transaction was rolled back",
		"reconnect and retry the transaction; raise "+opt+" if transactions legitimately run longer")
}

// serveConn runs one accepted connection from startup to close, or until
// the client parks (park.go: true; resume carries it on). It counts under
// max_startup_conn (Serve added it to s.starting) until it becomes a
// client.
//
// Login and session are two calls, so the login's stack frames (login's
// and its steps') have returned before the session starts: an idle
// client's goroutine then waits about 0.7 KB deep, and the GC shrinks its
// stack (grown to 8 KB by the relay) to 4 KB, which it does only while
// under a quarter of a stack is in use. What the login took is undone by
// connEnd, at the end (parkedEnd's, when the session ends after a park).
func (s *Server) serveConn(conn net.Conn) (parked bool) {
	e := connEnd{s: s, sock: conn}
	c := s.login(conn, &e)
	if c != nil && s.session(c) {
		return true
	}
	e.run()
	return false
}

// connEnd records what login took for a connection, so that serveConn
// gives it back when the connection ends, however far the login got.
type connEnd struct {
	s          *Server
	sock       net.Conn           // the accepted socket: closed last
	tls        net.Conn           // the TLS session over it, if any
	tlsCounted bool               // counted in stats.tls
	slot       bool               // holds a max_client_conn slot
	reserve    bool               // holds a slot of the console's reserve (AdminReserve)
	c          *clientConn        // the client, once made
	cancel     context.CancelFunc // its context's
	added      bool               // in s's clients (addClient)
	db         *Database          // counted in db's pool gauge
	registered bool               // its cancel key is registered
}

// parkedEnd is the connEnd of a client that parked, for the goroutine
// that ends its session (resume): login returned the client, so it took
// everything (a slot, the clients entry, the pool's gauge, the cancel
// key), and on plain TCP, as a TLS client never parks. Kept out of
// clientConn: 88 bytes per idle client.
func (c *clientConn) parkedEnd() connEnd {
	return connEnd{s: c.srv, sock: c.sock, c: c, cancel: c.cancel, slot: true, added: true, db: c.db, registered: true}
}

// run gives back what login took, in reverse order.
func (e *connEnd) run() {
	s := e.s
	if e.registered {
		s.cancels.unregister(e.c)
	}
	if e.db != nil {
		e.db.Pool.AddClients(-1)
	}
	if e.added {
		s.removeClient(e.c)
	}
	if e.cancel != nil {
		e.cancel()
	}
	if e.slot {
		s.slots.Add(-1)
	}
	if e.reserve {
		s.reserveSlots.Add(-1)
	}
	if e.tlsCounted {
		s.stats.tls.Add(-1)
	}
	if e.tls != nil {
		e.tls.Close()
	}
	s.forgetStarting(e.sock)
	e.sock.Close()
}

// session runs a logged-in client to its end, or until it parks (true:
// park.go; the goroutine then ends, and resume calls session again when
// the client is woken).
func (s *Server) session(c *clientConn) (parked bool) {
	conn, lg := c.conn, c.log
	if !c.timeouts.running.Load() {
		// The login deadline ends here, as does a wake-up's deadline set
		// during login; its flag goes with it, or the loop would read
		// this client through RawConn.Read for good.
		c.idle.clearReadSignal(c.conn)
		conn.SetWriteDeadline(time.Time{})
		c.timeouts.running.Store(true)
		lg.Debug("client connected", "application_name", c.identity.appName)
	}
	err := c.run()
	if err == errParked {
		return true // c is the parker's now: not touched again here
	}
	start := c.identity.since
	c.finish()
	if pe := c.leave.err.Load(); pe != nil {
		// Told to go (drain deadline, a timeout, KILL): whatever the reader was
		// doing when it was woken, the client learns why.
		err = pe
	}
	var pe *pgError
	if errors.As(err, &pe) && !c.leave.killed.Load() && !c.leave.midReply {
		// No backend reader runs any more: nothing else writes to the client.
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write(pe.appendTo(nil))
	}
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, errClientTerminated), errors.Is(err, errBackendLost):
		lg.Debug("client disconnected", "duration", time.Since(start).Round(time.Millisecond))
	case pe != nil: // already logged where it was found
		lg.Debug("client connection closed", "err", err, "duration", time.Since(start).Round(time.Millisecond))
	default:
		lg.Info("client connection closed", "err", err, "duration", time.Since(start).Round(time.Millisecond))
	}
	return false
}

// acquireErrorResponse turns a pool error into the client's ErrorResponse.
func acquireErrorResponse(err error, fatal bool) *pgError {
	var ae *pool.AcquireError
	var pe *pgError
	var srvErr *pgconn.PgError
	switch {
	case errors.As(err, &srvErr) && srvErr.Code == pgwire.CodeInvalidCatalogName:
		// The server has no such database: say so as PostgreSQL does,
		// not as a connection failure to retry.
		pe = newError(srvErr.Code, srvErr.Message, "check the database name in the connection string")
	case errors.As(err, &ae):
		pe = newError(ae.Code, ae.Message, ae.Hint)
	case errors.As(err, &pe):
		// The proxy's own (a cancelled wait): as it is.
		cp := *pe
		pe = &cp
	case errors.Is(err, context.Canceled):
		pe = newError(pgwire.CodeAdminShutdown, "pgsidecar is shutting down", "connect again in a moment")
	default:
		pe = newError(pgwire.CodeConnectionFailure, "cannot get a server connection: "+err.Error(),
			"check that the database is up; pgsidecar keeps retrying")
	}
	if fatal {
		pe.Severity = "FATAL"
	}
	return pe
}

// closeWith makes the client leave with pe (FATAL) as soon as its reader
// wakes, which this forces: the reader returns pe, finish rolls back and
// returns its backend (or closes it when a request is still in flight), and
// session sends pe. The first reason given wins.
func (c *clientConn) closeWith(pe *pgError) {
	c.leave.err.CompareAndSwap(nil, pe)
	c.cancel() // a reader waiting for a backend or a probe stops waiting
	// Waiting for the client's next message: a read deadline wakes it (a
	// parked client gets its goroutine back, which sees the deadline).
	c.wake()
	// Reading the backend's reply itself (relayInline): closing the
	// backend's socket ends that read; finish cancels the query and
	// destroys the backend. (relayInline checks leave.err after setting
	// inline, under c.mu, so one of the two sees the other.)
	c.mu.Lock()
	c.severBackendLocked(c.reader.inline)
	c.mu.Unlock()
	// A backend reader blocked writing to a client that does not read would
	// keep finish waiting.
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
}

// kill ends the client at once (Server.Close or a drain that ran out of time).
func (c *clientConn) kill() {
	c.leave.killed.Store(true)
	c.cancel()
	c.srv.park.unpark(c) // before the Close: a parked socket is never closed (park.go)
	c.conn.Close()
	c.mu.Lock()
	c.severBackendLocked(true) // whoever reads it wakes; finish destroys it
	c.mu.Unlock()
}

// severBackendLocked closes the socket of the client's backend when cond
// holds: the one honest way to end a read blocked on it. The backend is
// then destroyed, never released (c.reader.severed). Under c.mu.
func (c *clientConn) severBackendLocked(cond bool) {
	if b := c.be; b != nil && cond && !c.reader.severed {
		c.reader.severed = true
		b.nc.Close()
	}
}

// LeakInfo implements pool.Owner.
func (c *clientConn) LeakInfo() (addr, appName, lastStatement string) {
	return c.identity.addr, c.identity.appName, c.last.load()
}

// note remembers the start of q, the statement being run; it copies into
// a fixed array so it does not allocate. Owner only.
func (l *lastStatement) note(q []byte) {
	l.mu.Lock()
	l.n = int32(copy(l.text[:], q))
	l.mu.Unlock()
	l.scanOK = false
}

// holds reports whether q is the statement note kept, whole. Owner only:
// the only writer reads without mu.
func (l *lastStatement) holds(q []byte) bool {
	return int(l.n) == len(q) && bytes.Equal(l.text[:l.n], q)
}

// load is the kept start of the last statement, for logs and leak
// reports; any goroutine.
func (l *lastStatement) load() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.text[:l.n])
}
