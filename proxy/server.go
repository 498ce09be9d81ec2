// Server: the proxy's listener and owner of its clients: New and its
// checks, Serve (accepting, and refusing at accept), BeginDrain, Shutdown,
// Close, Reload, Stats, and the client set.

package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/lograte"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Server accepts PostgreSQL clients and relays them onto pooled backends.
// Its lifecycle follows net/http.Server: Serve, Shutdown(ctx), Close.
type Server struct {
	cfg     Config                 // fixed settings (mode, limits)
	live    atomic.Pointer[Config] // settings Reload may change
	log     *slog.Logger
	cancels *cancelKeys
	stmts   *statementRegistry

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	clients   map[*clientConn]struct{}
	starting  map[net.Conn]struct{} // accepted, not yet a client (startup, authentication)
	admins    map[net.Conn]struct{} // admin console sessions (admin.go)
	closed    bool
	params    map[string]map[string]string // per database: server ParameterStatus to greet clients with
	accepted  map[string]struct{}          // "name=value" startup parameters a server accepted
	wg        sync.WaitGroup               // one per connection: its goroutine, or the parker while parked

	draining atomic.Bool
	junkLog  lograte.Limiter // malformed startup packets and failed TLS handshakes: anyone can send them
	// startupRefusedLog: startup packets refused with an answer (a
	// protocol version other than 3, no user, a client certificate
	// required): anyone can send them too.
	startupRefusedLog lograte.Limiter
	pinned            atomic.Int64 // clients pinned to a backend by session state
	// Shared LISTEN connections (notify.go), per database name; their
	// goroutines end with hubCtx (stopHubs) or when nobody listens.
	hubs      map[string]*notifyHub
	hubCtx    context.Context
	hubCancel context.CancelFunc
	hubWG     sync.WaitGroup
	// slots counts the clients holding a max_client_conn slot: every one
	// from its startup packet on, reserved before authentication.
	slots atomic.Int64
	// reserveSlots counts the console logins beyond max_client_conn
	// (AdminReserve); reserveLog the refusals past it.
	reserveSlots atomic.Int64
	reserveLog   lograte.Limiter
	fdLog        lograte.Limiter // accepts refused for lack of descriptors
	refusedLog   lograte.Limiter // connections refused at accept (max_startup_conn)
	tooLargeLog  lograte.Limiter // messages refused for max_client_buffer
	spareMu      sync.Mutex
	spare        *os.File // a descriptor kept to be freed when Accept runs out
	stats        struct {
		total, active, waiting                    atomic.Int64
		accepted, rejected, authFailures, cancels atomic.Uint64
		cancelsUnknown                            atomic.Uint64
		loginsDelayed, loginsThrottled            atomic.Uint64
		tls                                       atomic.Int64 // clients on TLS, from their StartupMessage on (login)
	}

	cancelLog lograte.Limiter // unmatched cancel requests

	brake    *loginBrake     // failed logins per source address
	brakeLog lograte.Limiter // addresses reaching the maximum delay
	// throttleLog: logins the brake refused (a guessing flood gets one
	// per connection).
	throttleLog lograte.Limiter
	// lookupLog: auth.passthrough's failed password lookups (while the
	// database is down, every login fails one).
	lookupLog lograte.Limiter
	quit      chan struct{} // closed when Shutdown or Close begins: ends brake waits
	sweep     sweeper       // the client timeouts' goroutine (timeouts.go)
	park      parker        // idle clients without a goroutine (park.go)
}

// New checks cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:               cfg,
		log:               cfg.Logger,
		cancels:           newCancelKeys(),
		stmts:             newStatementRegistry(),
		listeners:         make(map[net.Listener]struct{}),
		clients:           make(map[*clientConn]struct{}),
		starting:          make(map[net.Conn]struct{}),
		admins:            make(map[net.Conn]struct{}),
		params:            make(map[string]map[string]string),
		accepted:          make(map[string]struct{}),
		cancelLog:         lograte.Limiter{Interval: lograte.Interval},
		brake:             newLoginBrake(),
		brakeLog:          lograte.Limiter{Interval: lograte.Interval},
		throttleLog:       lograte.Limiter{Interval: lograte.Interval},
		lookupLog:         lograte.Limiter{Interval: lograte.Interval},
		quit:              make(chan struct{}),
		sweep:             newSweeper(),
		junkLog:           lograte.Limiter{Interval: lograte.Interval},
		startupRefusedLog: lograte.Limiter{Interval: lograte.Interval},
		fdLog:             lograte.Limiter{Interval: lograte.Interval},
		refusedLog:        lograte.Limiter{Interval: lograte.Interval},
		reserveLog:        lograte.Limiter{Interval: lograte.Interval},
		tooLargeLog:       lograte.Limiter{Interval: lograte.Interval},
	}
	s.park.init(cfg.parkAfter)
	s.park.rt.log = s.log
	s.hubs = make(map[string]*notifyHub)
	s.hubCtx, s.hubCancel = context.WithCancel(context.Background())
	live := cfg
	s.live.Store(&live)
	return s, nil
}

// check rejects a Config New cannot run with, naming every bad field, and
// stores Mode, SessionState and AuthMethod as their Parse functions spell
// them: the relay compares them with the constants, so a library caller's
// "MD5" must become AuthMD5 here, as a configuration file's does in
// UnmarshalText. Logger alone has a default.
func (cfg *Config) check() error {
	var errs []error
	var err error
	if cfg.Mode, err = ParseMode(string(cfg.Mode)); err != nil {
		errs = append(errs, fmt.Errorf("proxy: Mode: %w", err))
	}
	if cfg.SessionState, err = ParseSessionStatePolicy(string(cfg.SessionState)); err != nil {
		errs = append(errs, fmt.Errorf("proxy: SessionState: %w", err))
	}
	if cfg.AuthMethod, err = ParseAuthMethod(string(cfg.AuthMethod)); err != nil {
		errs = append(errs, fmt.Errorf("proxy: AuthMethod: %w", err))
	}
	if cfg.MaxClientConn < 1 {
		errs = append(errs, fmt.Errorf("proxy: MaxClientConn %d: must be at least 1", cfg.MaxClientConn))
	}
	if cfg.MaxStartupConn < 1 {
		errs = append(errs, fmt.Errorf("proxy: MaxStartupConn %d: must be at least 1", cfg.MaxStartupConn))
	}
	if cfg.MaxClientBuffer < 1 {
		errs = append(errs, fmt.Errorf("proxy: MaxClientBuffer %d: must be at least 1", cfg.MaxClientBuffer))
	}
	if cfg.MaxPreparedStatements < 1 {
		errs = append(errs, fmt.Errorf("proxy: MaxPreparedStatements %d: must be at least 1", cfg.MaxPreparedStatements))
	}
	if cfg.MaxMessageSize < 1 || cfg.MaxMessageSize > MaxMessageSizeLimit {
		errs = append(errs, fmt.Errorf("proxy: MaxMessageSize %d: must be from 1 to %d", cfg.MaxMessageSize, MaxMessageSizeLimit))
	}
	for name, d := range map[string]time.Duration{
		"ClientLoginTimeout": cfg.ClientLoginTimeout, "QueryTimeout": cfg.QueryTimeout,
		"IdleTransactionTimeout": cfg.IdleTransactionTimeout, "ClientIdleTimeout": cfg.ClientIdleTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("proxy: %s %s: must be at least 0 (0 = off)", name, d))
		}
	}
	if len(cfg.Databases) == 0 && cfg.Wildcard == nil {
		errs = append(errs, errors.New("proxy: no databases configured"))
	}
	if w := cfg.Wildcard; w != nil && w.Open == nil {
		errs = append(errs, errors.New("proxy: Wildcard needs Open"))
	}
	for name, db := range cfg.Databases {
		if db == nil || db.Pool == nil {
			errs = append(errs, fmt.Errorf("proxy: database %q has no pool", name))
		}
	}
	// A cap below the first delay would make the doubling shrink it.
	cfg.FailedLoginDelayMax = max(cfg.FailedLoginDelayMax, cfg.FailedLoginDelay)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return errors.Join(errs...)
}

// Serve accepts clients on ln until Shutdown or Close, and then returns
// ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.startSweeper()
	s.startParker()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	s.reserveSpare()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			outOfFDs := errors.Is(err, syscallEMFILE) || errors.Is(err, syscallENFILE)
			if outOfFDs && s.refuseOutOfFDs(ln, err) {
				backoff = 0
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || outOfFDs {
				// Out of file descriptors even for the spare, or a
				// transient error: back off briefly instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), acceptBackoffMax)
				if ok, held := s.fdLog.Allow(time.Now()); ok {
					s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff, "unlogged", held,
						"log_interval", s.fdLog.Interval)
				}
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		// Under mu, so that no client goroutine is added once closeListeners
		// has run and Shutdown or Close may be waiting for them all.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		// Admission is decided here, before anything is read and in the
		// same step as the count, so a connect flood costs no goroutines.
		if len(s.starting) >= s.live.Load().MaxStartupConn {
			s.mu.Unlock()
			s.refuseAtAccept(conn)
			continue
		}
		s.starting[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() { // ends when the client leaves, is closed (Shutdown, Close) or parks
			if !s.serveConn(conn) {
				s.wg.Done() // a parked client keeps its count (park.go)
			}
		}()
	}
}

// acceptBackoffMax caps the pause after an Accept error the spare
// descriptor could not resolve: short, because clients wait in the backlog
// meanwhile.
const acceptBackoffMax = 100 * time.Millisecond

// refuseAtAccept answers a connection over max_startup_conn with 53300
// without reading it, and closes it.
func (s *Server) refuseAtAccept(conn net.Conn) {
	s.stats.rejected.Add(1)
	live := s.live.Load()
	limit, opt := live.MaxStartupConn, live.option("MaxStartupConn")
	if ok, held := s.refusedLog.Allow(time.Now()); ok {
		s.log.Warn("connection refused: too many clients logging in at once", "client", conn.RemoteAddr().String(),
			"max_startup_conn", limit, "unlogged", held, "log_interval", s.refusedLog.Interval)
	}
	// A fresh socket's send buffer is empty: the write does not block.
	conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	conn.Write(newFatal(pgwire.CodeTooManyConnections,
		fmt.Sprintf("too many connections logging in at once: pgsidecar allows %d (%s)", limit, opt),
		"retry in a moment; raise "+opt+" if real clients hit this during a reconnect storm").appendTo(nil))
	conn.Close()
}

// reserveSpare keeps one descriptor open (/dev/null) for refuseOutOfFDs.
func (s *Server) reserveSpare() {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if s.spare == nil && !s.isClosed() {
		s.spare, _ = os.Open(os.DevNull) // nil when even this fails; retried later
	}
}

// refuseOutOfFDs handles an Accept that failed for lack of descriptors.
// The waiting client cannot even be accepted, so Accept would fail again at
// once, and backing off leaves every client hanging in the backlog. Instead
// the spare descriptor is freed, the client accepted, told 53300 and
// closed, and the spare taken again: clients are refused at once while the
// proxy is out of descriptors and served as soon as some are free. It
// reports whether it could.
func (s *Server) refuseOutOfFDs(ln net.Listener, acceptErr error) bool {
	if ok, held := s.fdLog.Allow(time.Now()); ok {
		s.log.Error("out of file descriptors: refusing new clients", "err", acceptErr, "unlogged", held, "log_interval", s.fdLog.Interval,
			"hint", "raise the open-file limit (ulimit -n, LimitNOFILE=) above "+s.cfg.option("MaxClientConn")+" + "+
				s.cfg.option("MaxStartupConn")+" + the pools' "+s.cfg.option("MaxSize"))
	}
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if s.spare == nil {
		return false
	}
	s.spare.Close()
	s.spare = nil
	defer func() {
		if !s.isClosed() {
			s.spare, _ = os.Open(os.DevNull)
		}
	}()
	// The client that made Accept fail may have given up meanwhile: do not
	// block here with the spare given away.
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now().Add(10 * time.Millisecond))
		defer d.SetDeadline(time.Time{})
	}
	conn, err := ln.Accept()
	if err != nil {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout() // nobody waits: nothing to refuse
	}
	s.stats.rejected.Add(1)
	conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	conn.Write(newFatal(pgwire.CodeTooManyConnections, "pgsidecar is out of file descriptors",
		"retry in a moment; the operator should raise the proxy's open-file limit (ulimit -n)").appendTo(nil))
	conn.Close()
	return true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// drainPoll is how often Shutdown looks at the clients while it drains:
// a drain ends at most this long after the last client left.
const drainPoll = 50 * time.Millisecond

// expireGrace bounds how long clients told to leave at the drain deadline
// get to roll back and go (finish's ROLLBACK is bounded by serverOpTimeout)
// before they are closed outright.
const expireGrace = serverOpTimeout + time.Second

// BeginDrain starts a graceful stop without waiting for it: from now on no
// transaction starts, a client is closed with 57P01 at its next transaction
// boundary, and new connections are refused with 57P03 (the listeners stay
// open until Shutdown closes them). Draining reports true from here on.
func (s *Server) BeginDrain() {
	s.draining.Store(true)
}

// Shutdown drains the server (see BeginDrain): clients between
// transactions leave with 57P01 at once, clients inside one finish it and
// leave at its end. It returns as soon as no client is left. When ctx ends
// first, every remaining client gets FATAL 57P01 (never a bare close) and
// its backend is rolled back and returned, or closed when a query still
// runs; Shutdown then returns ctx.Err(). The listeners close when the last
// client has left (or at the deadline), so a client connecting during the
// drain is told 57P03 rather than refused.
func (s *Server) Shutdown(ctx context.Context) error {
	s.BeginDrain()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	var err error
wait:
	for {
		// Wake every client reader, parked or not; those between
		// transactions leave with 57P01, those inside one carry on. A
		// request waiting in a pool's queue is between transactions too:
		// its wait ends now (a paused pool would hold it until the
		// deadline, a busy one until a backend frees up).
		s.mu.Lock()
		n := len(s.clients)
		for c := range s.clients {
			c.wake()
			c.wait.endForDrain(&c.mu)
		}
		s.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	s.closeListeners()
	s.mu.Lock()
	for c := range s.clients {
		c.closeWith(s.errShutdownNow())
	}
	for conn := range s.starting {
		// Still in startup: its next read fails and it is told 57P03.
		conn.SetDeadline(time.Now())
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }() // ends when every client goroutine has (Close below guarantees it)
	select {
	case <-done:
	case <-time.After(expireGrace):
		s.log.Warn("clients did not leave after their 57P01; closing them", "grace", expireGrace.String())
		s.Close()
	}
	s.stopSweeper()
	s.stopParker()
	s.stopHubs()
	return err
}

// Close closes the listeners and every client at once; backends in use are
// closed, not returned to their pools.
func (s *Server) Close() error {
	s.draining.Store(true)
	s.closeListeners()
	s.mu.Lock()
	for c := range s.clients {
		c.kill()
	}
	for conn := range s.starting {
		conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.stopSweeper()
	s.stopParker()
	s.stopHubs()
	return nil
}

// stopHubs ends the shared LISTEN connections (their clients are gone).
func (s *Server) stopHubs() {
	s.hubCancel()
	s.hubWG.Wait()
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	if !s.closed {
		close(s.quit)
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.closeAdminsLocked()
	s.mu.Unlock()
	s.spareMu.Lock()
	if s.spare != nil {
		s.spare.Close()
		s.spare = nil
	}
	s.spareMu.Unlock()
}

// Reload applies settings that may change live (MaxClientConn, AuthMethod,
// the users of each database). Pools are reconfigured by their owner.
func (s *Server) Reload(cfg Config) error {
	cfg.Mode = s.cfg.Mode
	if err := cfg.check(); err != nil {
		return err
	}
	s.live.Store(&cfg)
	return nil
}

// Stats counts the server's clients.
type Stats struct {
	ClientsTotal int64 `json:"clients_total"` // connected now
	// ClientsTLS counts the clients past their StartupMessage on TLS now.
	ClientsTLS int64 `json:"clients_tls"`
	// ClientsLoggingIn counts connections accepted and not yet logged in
	// (MaxStartupConn bounds it).
	ClientsLoggingIn int64  `json:"clients_logging_in"`
	ClientsActive    int64  `json:"clients_active"`   // holding a backend now
	ClientsWaiting   int64  `json:"clients_waiting"`  // waiting for a backend now
	ClientsAccepted  uint64 `json:"clients_accepted"` // since start
	ClientsRejected  uint64 `json:"clients_rejected"` // refused (limit, auth, bad startup)
	AuthFailures     uint64 `json:"auth_failures"`
	Cancels          uint64 `json:"cancels"` // cancel requests forwarded, or that ended a wait (handleCancel)
	// LoginsDelayed counts login attempts held back by the failed-login
	// delay; LoginsThrottled those refused because the wait would outlast
	// the login timeout.
	LoginsDelayed   uint64 `json:"logins_delayed"`
	LoginsThrottled uint64 `json:"logins_throttled"`
	// CancelsUnknown counts cancel requests whose key matched no client
	// (dropped; logged at most once per lograte.Interval).
	CancelsUnknown uint64 `json:"cancels_unknown"`
	// ClientsPinned hold a backend between transactions because they have
	// session state on it (transaction mode, pool.session_state pin).
	ClientsPinned int64 `json:"clients_pinned"`
	// ClientsParked are idle clients waiting without a goroutine of their
	// own (plain TCP, transaction mode; see "Memory per idle client").
	ClientsParked int64 `json:"clients_parked"`
	// LoopRequests counts requests the event loop relayed without a
	// goroutine (transaction mode, plain TCP); LoopHandoffs those it handed
	// to the client's goroutine instead (a backend to wait for, COPY, a
	// slow reply, a client not reading; see README, "The event loop").
	LoopRequests uint64 `json:"loop_requests"`
	LoopHandoffs uint64 `json:"loop_handoffs"`
}

// Stats returns a snapshot of the client counters.
func (s *Server) Stats() Stats {
	return Stats{
		ClientsTotal:     s.stats.total.Load(),
		ClientsTLS:       s.stats.tls.Load(),
		ClientsLoggingIn: s.loggingIn(),
		ClientsActive:    s.stats.active.Load(),
		ClientsWaiting:   s.stats.waiting.Load(),
		ClientsAccepted:  s.stats.accepted.Load(),
		ClientsRejected:  s.stats.rejected.Load(),
		AuthFailures:     s.stats.authFailures.Load(),
		Cancels:          s.stats.cancels.Load(),
		CancelsUnknown:   s.stats.cancelsUnknown.Load(),
		LoginsDelayed:    s.stats.loginsDelayed.Load(),
		LoginsThrottled:  s.stats.loginsThrottled.Load(),
		ClientsPinned:    s.pinned.Load(),
		ClientsParked:    s.park.count.Load(),
		LoopRequests:     s.park.requests.Load(),
		LoopHandoffs:     s.park.handoffs.Load(),
	}
}

// Draining reports whether a drain (BeginDrain, Shutdown or Close) has
// begun: the readiness probe answers 503 from then on.
func (s *Server) Draining() bool { return s.draining.Load() }

func (s *Server) addClient(c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.clients[c] = struct{}{}
	delete(s.starting, c.sock)
	s.stats.total.Add(1)
	return true
}

// loggingIn counts the connections in startup (max_startup_conn).
func (s *Server) loggingIn() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.starting))
}

// forgetStarting drops conn from the connections in startup (it became a
// client, or it is gone).
func (s *Server) forgetStarting(conn net.Conn) {
	s.mu.Lock()
	delete(s.starting, conn)
	s.mu.Unlock()
}

func (s *Server) removeClient(c *clientConn) {
	s.mu.Lock()
	if _, ok := s.clients[c]; ok {
		delete(s.clients, c)
		s.stats.total.Add(-1)
	}
	s.mu.Unlock()
}

// maxAcceptedParams bounds the remembered startup parameters.
const maxAcceptedParams = 4096

func (s *Server) paramAccepted(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.accepted[key]
	return ok
}

func (s *Server) acceptParam(key string) {
	s.mu.Lock()
	if len(s.accepted) >= maxAcceptedParams {
		clear(s.accepted)
	}
	s.accepted[key] = struct{}{}
	s.mu.Unlock()
}

// databaseNames lists the databases user may log in to, for error hints.
func databaseNames(dbs map[string]*Database, user string) string {
	names := make([]string, 0, len(dbs))
	for n, db := range dbs {
		// Only the databases this login may use: the others are none of
		// its business.
		if _, ok := db.Users[user]; ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
