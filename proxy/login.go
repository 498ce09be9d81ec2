// login: from an accepted connection to a client in session. Server.login
// runs a connection's startup as a sequence of steps, in this order, each
// a Server method or a function of this file unless named otherwise:
//
//   - admitLogin: the startup packet and client TLS (admit: startup.go,
//     tls.go); a cancel request ends the connection there (cancel.go);
//   - takeSlot: the refusals before authentication (a drain,
//     max_client_conn), then the client's max_client_conn slot;
//   - loginTargetOf and authenticateLogin: what the client asks for, and
//     the proof of its password under the failed-login brake (auth.go,
//     passthrough.go, loginbrake.go); an admin console session goes on
//     in admin.go;
//   - loginDatabase: the database the client gets, opened now for a "*"
//     name or a role's pool;
//   - newClient and enlist: the clientConn, listed among the server's
//     clients and reachable by its cancel key;
//   - greet: the server's parameters, checked against the client's
//     (loginParams), in session mode its backend (bindSession, the
//     client's own method), then AuthenticationOk through ReadyForQuery.
//
// What a step takes is recorded in the connection's connEnd
// (clientconn.go), which gives it back when the connection ends, however
// far the login got. A step that refuses the client has told it why
// (rejectStartup, refuseLogin).

package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/lograte"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// login runs a connection's startup and records in e what it takes; it
// returns the logged-in client, or nil when the connection is done
// (refused, a cancel request, an admin console session).
func (s *Server) login(sock net.Conn, e *connEnd) *clientConn {
	s.stats.accepted.Add(1)
	live := s.live.Load()
	var deadline time.Time // zero: no limit
	if live.ClientLoginTimeout > 0 {
		deadline = time.Now().Add(live.ClientLoginTimeout)
	}
	sock.SetDeadline(deadline)
	// sock is the accepted socket (max_startup_conn counts it); conn
	// becomes TLS over it when the client negotiates TLS.
	conn, sm := s.admitLogin(sock, live.TLS, e)
	if sm == nil {
		return nil
	}
	if sm.cancel {
		s.handleCancel(sm.pid, sm.secret)
		return nil
	}
	addr := conn.RemoteAddr().String()
	lg := s.log.With("client", addr, "user", sm.user, "database", sm.database)
	if sm.tls != "" {
		lg = lg.With("tls", sm.tls)
		s.stats.tls.Add(1)
		e.tlsCounted = true
	}
	if !s.takeSlot(conn, sm, lg, live, e) {
		return nil
	}
	// Authenticate before saying whether the database exists, as
	// PostgreSQL does, so that a stranger learns nothing.
	t := loginTargetOf(live, sm)
	keys, ok := s.authenticateLogin(conn, sm, lg, live, deadline, &t)
	if !ok {
		return nil
	}
	if t.admin {
		// Logged in: a console session leaves max_startup_conn's count,
		// as a client does once enlisted, or a few monitoring sessions
		// held open would get applications refused with 53300. Close
		// ends it through s.admins instead.
		s.forgetStarting(sock)
		if e.reserve {
			lg.Info("console session on the admin reserve: "+live.option("MaxClientConn")+" is full",
				"limit", live.MaxClientConn, "reserve", AdminReserve)
		}
		s.serveAdmin(conn, sm, lg, live.Admin, t.adminFull)
		return nil
	}
	db := s.loginDatabase(conn, sm, lg, live, &t, keys)
	if db == nil {
		return nil
	}
	c := s.newClient(conn, sock, addr, sm, db, lg)
	if !s.enlist(c, e) {
		return nil
	}
	if err := s.greet(c, deadline); err != nil {
		lg.Info("client startup failed", "err", err)
		c.finish() // a session-mode backend taken for the greeting goes back
		return nil
	}
	return c
}

// admitLogin reads the startup packets from sock, negotiating TLS as t
// says (admit), and records a TLS session in e. It returns the connection
// to use from then on (sock, or TLS over it) and the startup message, or
// a nil message when the connection is refused (the client told why where
// that can be done).
func (s *Server) admitLogin(sock net.Conn, t *ClientTLS, e *connEnd) (net.Conn, *startupMessage) {
	conn, sm, err := admit(sock, startupMaxPacketLen, t)
	if conn != sock {
		// Closing the TLS session sends close_notify before the socket
		// closes (connEnd's sock.Close after it is then a no-op).
		e.tls = conn
	}
	if err != nil {
		var he *tlsHandshakeError
		if s.draining.Load() && errors.Is(err, os.ErrDeadlineExceeded) && !errors.As(err, &he) {
			// Cut short by the end of a drain. (Not in the middle of a TLS
			// handshake: no plain-text answer can be sent there.)
			err = errCannotConnectNow()
		}
		// Before the client logged in as anyone: it may be anyone, as
		// often as they like. A limiter of their own, not junk's: a
		// refusal must not hide the next failed TLS handshake, or junk.
		s.rejectRepeatable(conn, nil, &s.startupRefusedLog, err)
		return conn, nil
	}
	return conn, sm
}

// AdminReserve is how many admin console sessions may connect beyond
// max_client_conn. The console counts against max_client_conn, as in
// PgBouncer, and the moment clients fill it is the moment an operator
// needs SHOW CLIENTS to see why; a few sessions beyond it, as
// PostgreSQL's superuser_reserved_connections (3 by default) keeps for
// superusers, let the operator in. Fixed and small: it bounds the
// descriptors a flood of console logins can take (the reserve is taken
// before authentication, which only admin.users and admin.stats_users
// pass), and the root counts it in the open-file check.
const AdminReserve = 3

// takeSlot refuses a client while the proxy drains or when max_client_conn
// clients hold a slot already (a console login then takes one of the
// AdminReserve slots while there is one); otherwise it takes the client's
// slot and records it in e.
func (s *Server) takeSlot(conn net.Conn, sm *startupMessage, lg *slog.Logger, live *Config, e *connEnd) bool {
	if s.draining.Load() {
		s.rejectStartup(conn, lg, errCannotConnectNow())
		return false
	}
	// Take the slot before authenticating, in one atomic step: a check
	// here and a count after the login admits every client of a burst.
	if n := s.slots.Add(1); n <= int64(live.MaxClientConn) {
		e.slot = true
		return true
	}
	s.slots.Add(-1)
	if live.Admin == nil || sm.database != live.Admin.Database {
		s.rejectStartup(conn, lg, newFatal(pgwire.CodeTooManyConnections,
			fmt.Sprintf("too many client connections: pgsidecar allows %d (%s)", live.MaxClientConn, live.option("MaxClientConn")),
			"raise "+live.option("MaxClientConn")+", or have the application use fewer connections"))
		return false
	}
	// Authentication decides who keeps a reserve slot: only console
	// logins pass it. Anyone can try as often as they like, so the
	// refusals past the reserve are logged at most once per interval.
	if n := s.reserveSlots.Add(1); n <= AdminReserve {
		e.reserve = true
		return true
	}
	s.reserveSlots.Add(-1)
	s.rejectRepeatable(conn, lg, &s.reserveLog, newFatal(pgwire.CodeTooManyConnections,
		fmt.Sprintf("too many client connections: pgsidecar allows %d (%s) and %d more admin console sessions, all taken",
			live.MaxClientConn, live.option("MaxClientConn"), AdminReserve),
		"close an idle admin console session, or raise "+live.option("MaxClientConn")))
	return false
}

// loginTarget is what a startup message asks for, as the live config has
// it, and what the client must prove to get it.
type loginTarget struct {
	db        *Database  // the configured database the client names; nil for a "*" name or an unknown one
	admin     bool       // the admin console
	adminFull bool       // ... with full access, not SHOW only
	wild      bool       // a "*" database: its pool opens after authentication
	password  string     // to check the client's proof against
	known     bool       // the user may log in here (else the exchange runs and fails)
	verifiers *Verifiers // auth.passthrough: where the role's verifier is looked up (password is not used)
}

// loginTargetOf looks up in live the database (or the admin console) sm
// asks for and its user's password or, under auth.passthrough, the
// verifiers to check it with.
func loginTargetOf(live *Config, sm *startupMessage) loginTarget {
	t := loginTarget{db: live.Databases[sm.database]}
	t.admin = live.Admin != nil && sm.database == live.Admin.Database
	t.wild = t.db == nil && live.Wildcard != nil && !t.admin
	t.password, t.known = lookupUser(live.Databases, t.db, sm.user)
	switch {
	case t.admin:
		t.password, t.known, t.adminFull = live.Admin.lookup(sm.user)
	case t.wild:
		t.password, t.known = live.Wildcard.Users[sm.user]
	}
	// auth.passthrough: the role's verifier is looked up by the
	// database's auth pool, or for a "*" database by the entry's one.
	switch {
	case t.db != nil && !t.admin && t.db.Passthrough != nil:
		t.verifiers = t.db.Passthrough.Verifiers
	case t.wild:
		t.verifiers = live.Wildcard.Verifiers
	}
	return t
}

// authenticateLogin lets the attempt through the failed-login brake, runs
// the authentication exchange t calls for (t's password, or under
// auth.passthrough the role's verifier) and records its outcome with the
// brake. keys are what a passthrough client proved it knows, for its
// role's pool. false: refused, the client told why.
func (s *Server) authenticateLogin(conn net.Conn, sm *startupMessage, lg *slog.Logger, live *Config, deadline time.Time, t *loginTarget) (keys pool.ScramKeys, ok bool) {
	brakeKey, braked, err := s.brakeLogin(conn, lg, live, deadline)
	if err != nil {
		// A guessing flood is refused here as fast as it connects.
		s.rejectRepeatable(conn, lg, &s.throttleLog, err)
		return keys, false
	}
	if t.verifiers != nil {
		keys, err = s.authPassthrough(sm, conn, lg, t.verifiers, deadline)
	} else {
		err = authenticate(sm, conn, live.AuthMethod, t.password, t.known, live.option("Users"))
	}
	if err != nil {
		switch {
		case !errors.Is(err, os.ErrDeadlineExceeded):
		case s.draining.Load():
			err = errCannotConnectNow()
		default:
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			err = newFatal(pgwire.CodeConnectionFailure,
				fmt.Sprintf("canceling authentication due to timeout (pgsidecar %s %s)", live.option("ClientLoginTimeout"), live.ClientLoginTimeout),
				"the client did not finish authenticating in time; check its password source, or raise "+live.option("ClientLoginTimeout"))
		}
		var pe *pgError
		if errors.As(err, &pe) && pe.Code == pgwire.CodeInvalidPassword {
			s.stats.authFailures.Add(1)
			if braked {
				s.brakeFailed(brakeKey, lg, live)
			}
		}
		s.rejectStartup(conn, lg, err)
		return keys, false
	}
	if braked {
		s.brake.succeeded(brakeKey)
	}
	return keys, true
}

// loginDatabase is the database an authenticated client gets: t.db, or
// for a "*" name its pool, opened now, and under auth.passthrough its
// role's pool, logged in to with keys. nil: refused, the client told why.
func (s *Server) loginDatabase(conn net.Conn, sm *startupMessage, lg *slog.Logger, live *Config, t *loginTarget, keys pool.ScramKeys) *Database {
	db := t.db
	if t.wild {
		// Only now, for a client that logged in: a pool per name.
		if len(sm.database) > maxIdentifierLen {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeInvalidCatalogName,
				fmt.Sprintf("database name %q is longer than %d bytes", sm.database, maxIdentifierLen),
				"PostgreSQL would truncate it; pgsidecar serves \"*\" databases by their exact names"))
			return nil
		}
		var err error
		if db, err = live.Wildcard.Open(sm.database); err != nil {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeCannotConnectNow, err.Error(), "connect again in a moment"))
			return nil
		}
	}
	if t.verifiers != nil && db != nil {
		// Only now, for a client that logged in: its role's pool. (A
		// database without pools per role would run the client as the
		// URL's user: refused, never served.)
		var err error
		if db.Passthrough == nil {
			err = fmt.Errorf("database %q has no pools per role (auth.passthrough)", db.Name)
		} else {
			db, err = db.Passthrough.open(db, sm.user, keys, lg)
		}
		if err != nil {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeCannotConnectNow, err.Error(), "connect again in a moment"))
			return nil
		}
	}
	if db == nil {
		s.rejectStartup(conn, lg, newFatal(pgwire.CodeInvalidCatalogName,
			fmt.Sprintf("database %q does not exist in pgsidecar", sm.database),
			"pgsidecar serves: "+databaseNames(live.Databases, sm.user)+"; fix the database name in the connection string, or add it under databases in the config"))
		return nil
	}
	return db
}

// newClient makes the clientConn of a client logged in to db over conn
// (TLS over sock, or sock itself): its identity, its startup parameters,
// which are also the values it wants, and its context.
func (s *Server) newClient(conn, sock net.Conn, addr string, sm *startupMessage, db *Database, lg *slog.Logger) *clientConn {
	c := &clientConn{
		srv:  s,
		conn: conn,
		sock: sock,
		identity: clientIdentity{
			addr:    addr,
			user:    sm.user,
			since:   time.Now(),
			appName: sm.params["application_name"],
		},
		db:       db,
		log:      lg,
		policy:   s.cfg.Mode.policy(),
		params:   clientParams{want: newParamSet(), startup: make(map[string]paramValue)},
		stmts:    clientStatements{byName: make(map[string]*statement)},
		exchange: exchange{txStatus: 'I'},
	}
	c.hub = s.hubFor(db)
	for k, v := range sm.params {
		k = strings.ToLower(k)
		if notSessionParams[k] || unsettable[k] {
			continue
		}
		c.params.startup[k] = paramValue{val: v}
		c.params.want.set(k, paramValue{val: v})
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// enlist makes c one of s's clients, counted in its pool's client gauge
// and reachable by its cancel key, and records each in e. false: the
// server closed meanwhile; c was refused.
func (s *Server) enlist(c *clientConn, e *connEnd) bool {
	e.c, e.cancel = c, c.cancel
	if !s.addClient(c) {
		s.rejectStartup(c.conn, c.log, errCannotConnectNow())
		return false
	}
	e.added = true
	c.db.Pool.AddClients(1) // per-pool client gauge
	e.db = c.db
	s.cancels.register(c)
	e.registered = true
	return true
}

// greet finishes the startup: AuthenticationOk, the server's parameters
// (with the client's own values where it chose them), BackendKeyData (the
// backend's own in session mode, else proxy-minted), and ReadyForQuery.
// What keeps it from finishing (no backend to learn the server's
// parameters from, a startup parameter the server rejects, no session
// backend) is answered (refuseLogin).
func (s *Server) greet(c *clientConn, deadline time.Time) error {
	params, err := s.loginParams(c.ctx, deadline, c.db, c.log, c.params.startup, c.policy.backendAtLogin)
	if err != nil {
		return s.refuseLogin(c.conn, err)
	}
	// Built before bindSession: the backend reader it starts in session
	// mode may change c.params.want (trackParameterStatus, under c.mu).
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	buf = appendParamStatus(buf, params, c.params.want)
	if c.policy.backendAtLogin {
		if err := c.bindSession(); err != nil && err != pool.ErrWouldWait {
			return s.refuseLogin(c.conn, err)
		}
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: c.identity.pid, SecretKey: binary.BigEndian.AppendUint32(nil, c.identity.secret)}).Encode(buf)
	buf = pgwire.AppendReadyForQuery(buf, 'I')
	_, err = c.conn.Write(buf)
	return err
}

// loginParams is the ParameterStatus set of db's server that a client is
// greeted with (serverParams), once its startup parameters passed
// checkStartupParams; ctx is the client's, bounded here by the login
// deadline, lg its logger; ifFree: see checkStartupParams.
func (s *Server) loginParams(ctx context.Context, deadline time.Time, db *Database, lg *slog.Logger, startup map[string]paramValue, ifFree bool) (map[string]string, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	params, err := s.serverParams(ctx, db)
	if err != nil {
		return nil, err
	}
	if err := s.checkStartupParams(ctx, db, lg, startup, params, ifFree); err != nil {
		return nil, err
	}
	return params, nil
}

// appendParamStatus appends to buf a ParameterStatus for each of the
// server's parameters, with the client's own value where it chose one
// (want), and for each parameter PostgreSQL reports that the client chose
// and the server did not report.
func appendParamStatus(buf []byte, server map[string]string, want *paramSet) []byte {
	for k, v := range server {
		if w, ok := want.get(strings.ToLower(k)); ok {
			v = w.val
		}
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
	}
	for k, w := range want.vals {
		if _, reported := server[canonicalParamName(k)]; !reported && isReportedParam(k) {
			buf, _ = (&pgproto3.ParameterStatus{Name: canonicalParamName(k), Value: w.val}).Encode(buf)
		}
	}
	return buf
}

// bindSession takes the session-mode client's one backend now and makes
// its pid the client's: pg_backend_pid(), a notification's sender pid and
// pg_terminate_backend then mean what the client thinks, and a cancel with
// the client's key (sent to the proxy, as drivers do) reaches the backend.
// The secret stays the client's own (rekey): the backend's would outlive
// the client's session. A step of greet, it stays the client's method: it
// acquires as the client's first query would (acquire: the wait, the
// backend, its reader) and logs as the client.
func (c *clientConn) bindSession() error {
	// Waiting for a connect is bounded by the pool's acquire timeout, not
	// by the startup timeout.
	c.conn.SetDeadline(time.Time{})
	// Only a backend no other client must release first: with the pool
	// exhausted the client is not kept waiting at login (applications
	// open their pools eagerly, pgbench all its clients before the first
	// transaction, and the clients holding the backends may be waiting
	// for this very login). It keeps a minted key and gets its backend at
	// its first query. The pool decides as it queues, so two logins never
	// both count on the last backend (pool.AcquireIfFree).
	b, err := c.acquire(true)
	if err != nil {
		return err
	}
	pid := b.conn.Server().PID()
	if !c.srv.cancels.rekey(c, pid) {
		c.log.Info("another client holds the same backend pid (another server): this one keeps a minted key", "backend_pid", pid)
	}
	return nil
}

// rejectStartup tells a client why it cannot go on, and logs it once.
func (s *Server) rejectStartup(conn net.Conn, lg *slog.Logger, err error) {
	s.rejectRepeatable(conn, lg, nil, err)
}

// rejectRepeatable is rejectStartup for a refusal that anyone can cause
// as often as they like (admit's refusals of a startup packet, the
// failed-login brake's of a guessing flood): each client still gets its
// answer, but the log line goes through lim, one per interval with the
// number left out. A nil lim logs every refusal.
func (s *Server) rejectRepeatable(conn net.Conn, lg *slog.Logger, lim *lograte.Limiter, err error) {
	if errors.Is(err, io.EOF) {
		return // a TCP health check: connect and close
	}
	s.stats.rejected.Add(1)
	if lg == nil {
		lg = s.log.With("client", conn.RemoteAddr().String())
	}
	var pe *pgError
	var he *tlsHandshakeError
	if errors.As(err, &he) {
		// A wrong client certificate, an old TLS version, a port scanner:
		// worth seeing, but anyone can cause it as often as they like.
		if ok, held := s.junkLog.Allow(time.Now()); ok {
			lg.Info("client closed: TLS handshake failed", "err", he.err.Error(), "unlogged", held,
				"log_interval", s.junkLog.Interval)
		}
		return
	}
	if !errors.As(err, &pe) {
		lg.Debug("client startup failed", "err", err)
		return
	}
	if pe.silent {
		// Anyone can send junk to the port, as often as they like.
		if ok, held := s.junkLog.Allow(time.Now()); ok {
			lg.Info("client closed without a reply: malformed startup packet", "code", pe.Code, "reason", pe.Message,
				"unlogged", held, "log_interval", s.junkLog.Interval)
		}
		return
	}
	if lim == nil {
		lg.Info("client rejected", "code", pe.Code, "reason", pe.Message)
	} else if ok, held := lim.Allow(time.Now()); ok {
		lg.Info("client rejected", "code", pe.Code, "reason", pe.Message,
			"unlogged", held, "log_interval", lim.Interval)
	}
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	conn.Write(pe.appendTo(nil))
}

// refuseLogin answers a login that could not get what it needed from the
// pool (its server parameters, or a session backend) with err's
// ErrorResponse, or the acquire error it stands for, written to the
// client's conn, and returns err. The login deadline may be what ended the
// wait: the answer still goes out, the client is never just closed.
func (s *Server) refuseLogin(conn net.Conn, err error) error {
	var pe *pgError
	if !errors.As(err, &pe) {
		pe = s.loginAcquireError(err)
	}
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	conn.Write(pe.appendTo(nil))
	return err
}

// errCannotConnectNow is what a client connecting during a drain is told.
func errCannotConnectNow() *pgError {
	return newFatal(pgwire.CodeCannotConnectNow, "the proxy is shutting down",
		"connect again in a moment; another pgsidecar instance or the restarted one will serve you")
}

// loginAcquireError is the FATAL for a login that could not get a backend
// (to learn the server's parameters or check the client's): the pool's
// own 53300 / 08006, with the login timeout named (as the live config
// has it now) when it ended the wait.
func (s *Server) loginAcquireError(err error) *pgError {
	pe := acquireErrorResponse(err, true)
	if errors.Is(err, context.DeadlineExceeded) {
		live := s.live.Load()
		opt := live.option("ClientLoginTimeout")
		pe.Message = "login timed out waiting for a server connection: " + pe.Message
		pe.Hint = fmt.Sprintf("%s (%s) ran out before a server connection was free; raise %s or %s, or shorten transactions",
			opt, live.ClientLoginTimeout, live.option("MaxSize"), opt)
	}
	return pe
}

// maxIdentifierLen is PostgreSQL's NAMEDATALEN - 1: a longer database
// name is truncated by the server, so distinct names would share one
// database and each get a pool of its own.
const maxIdentifierLen = 63

// lookupUser finds the password of user for db. A user db does not accept
// gets known=false but still its password from another database (the first
// by name), so the exchange looks the same as for a wrong password. When db
// does not exist, a user of any database is known, so that an unknown
// database is reported only after a good login, as PostgreSQL does.
func lookupUser(dbs map[string]*Database, db *Database, user string) (string, bool) {
	if db != nil {
		if p, ok := db.Users[user]; ok {
			return p, true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(dbs)) {
		if p, ok := dbs[name].Users[user]; ok {
			return p, db == nil
		}
	}
	return "", false
}

// serverParams returns the ParameterStatus set of db's server, learning it
// from one pooled connection the first time.
func (s *Server) serverParams(ctx context.Context, db *Database) (map[string]string, error) {
	s.mu.Lock()
	p := s.params[db.Name]
	s.mu.Unlock()
	if p != nil {
		return p, nil
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	p = conn.Server().Params()
	conn.Release()
	s.mu.Lock()
	s.params[db.Name] = p
	s.mu.Unlock()
	return p, nil
}

// checkStartupParams refuses a client whose startup parameters (startup)
// db's server rejects, as PostgreSQL refuses the connection, instead of
// failing every transaction later when they are replayed; server is its
// ParameterStatus set (serverParams), whose values need no check, and lg
// the client's logger. Each (name, value) the server accepted once is
// remembered (paramAccepted), so this costs a round trip only the first
// time. With ifFree (session mode) the check runs only on a backend no
// other client must release first (pool.AcquireIfFree): a session holds
// its backend for as long as it likes, and the client it waits for may
// be waiting for this login (an application opening its pool). Without
// one the check is skipped: the parameter is set when the client gets its
// backend, and the server's refusal, if any, answers its first query.
func (s *Server) checkStartupParams(ctx context.Context, db *Database, lg *slog.Logger, startup map[string]paramValue, server map[string]string, ifFree bool) error {
	var calls []string
	var keys []string
	for k, v := range startup {
		if def, ok := server[canonicalParamName(k)]; ok && def == v.val {
			continue
		}
		key := k + "=" + v.val
		if s.paramAccepted(key) {
			continue
		}
		calls = append(calls, "set_config("+quoteLiteral(k)+", "+quoteLiteral(v.val)+", true)")
		keys = append(keys, key)
	}
	if len(calls) == 0 {
		return nil
	}
	sql := "SELECT " + strings.Join(calls, ", ")
	for tries := 1; ; tries++ {
		retry, err := s.checkParamsOnce(ctx, db, lg, sql, keys, ifFree)
		if !retry || tries >= maxReplays || ctx.Err() != nil {
			return err
		}
	}
}

// checkParamsOnce runs checkStartupParams's query on one backend of db,
// and remembers keys as accepted when it succeeds. retry says the backend
// died under it (a FATAL such as 57P01 from
// pg_terminate_backend or a shutdown, or the connection ending): the pool
// hands out a backend released a moment ago without peeking at its socket
// (pool.peek_after_idle), so this is the client's first request on a
// backend that may be dead, and like a client's first request (replay.go)
// it goes to another backend: it changes nothing (is_local settings, one
// implicit transaction), so running it again is harmless.
func (s *Server) checkParamsOnce(ctx context.Context, db *Database, lg *slog.Logger, sql string, keys []string, ifFree bool) (retry bool, err error) {
	conn, err := db.acquire(ctx, ifFree)
	if err == pool.ErrWouldWait {
		lg.Debug("startup parameters not checked at login: no backend free; they are set with the client's backend")
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// is_local settings vanish when the statement's implicit transaction ends.
	err = conn.Server().Exec(ctx, sql)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		conn.Release()
		for _, k := range keys {
			s.acceptParam(k)
		}
		return false, nil
	case errors.As(err, &pgErr) && !fatalSeverity(pgErr):
		conn.Release()
		lg.Info("client startup parameter rejected by the server", "err", pgErr.Message)
		return false, newFatal(pgErr.Code, pgErr.Message,
			"fix the startup parameter the client sends (its options / PGOPTIONS or driver setting)")
	default:
		conn.Destroy("checking startup parameters failed: " + err.Error())
		return ctx.Err() == nil, err
	}
}

// fatalSeverity reports whether the server ended the session with e.
func fatalSeverity(e *pgconn.PgError) bool {
	sev := e.SeverityUnlocalized
	if sev == "" {
		sev = e.Severity
	}
	return sev == "FATAL" || sev == "PANIC"
}

// isReportedParam lists parameters PostgreSQL reports at startup, which a
// client that chose one in its startup packet is told even when the
// server the proxy asked did not report it (appendParamStatus): a pooler
// in between, say. PostgreSQL itself reports them all, application_name
// included (pool.NewPgServer keeps its empty default).
func isReportedParam(k string) bool {
	switch k {
	case "application_name", "client_encoding", "datestyle", "intervalstyle", "timezone",
		"standard_conforming_strings", "default_transaction_read_only":
		return true
	}
	return false
}
