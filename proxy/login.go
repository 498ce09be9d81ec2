// login: from an accepted connection to a client in session. Server.login
// runs a connection's startup; greet and bindSession finish it, and the
// rest of this file serves only the login: its refusals (rejectStartup,
// refuseLogin), the user lookup, and the server's parameters the client is
// greeted with, checked against its startup parameters.

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
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// login runs a connection's startup and records in e what it takes; it
// returns the logged-in client and its logger, or nil when the connection
// is done (refused, a cancel request, an admin console session).
func (s *Server) login(conn net.Conn, e *connEnd) (*clientConn, *slog.Logger) {
	s.stats.accepted.Add(1)
	live := s.live.Load()
	var loginDeadline time.Time // zero: no limit
	if live.ClientLoginTimeout > 0 {
		loginDeadline = time.Now().Add(live.ClientLoginTimeout)
	}
	conn.SetDeadline(loginDeadline)
	// sock is the accepted socket (max_startup_conn counts it); conn
	// becomes TLS over it when the client negotiates TLS.
	sock := conn
	conn, sm, err := admit(sock, startupMaxPacketLen, live.TLS)
	if conn != sock {
		// Closing the TLS session sends close_notify before the socket
		// closes (the deferred sock.Close is then a no-op).
		e.tls = conn
	}
	if err != nil {
		var he *tlsHandshakeError
		if s.draining.Load() && errors.Is(err, os.ErrDeadlineExceeded) && !errors.As(err, &he) {
			// Cut short by the end of a drain. (Not in the middle of a TLS
			// handshake: no plain-text answer can be sent there.)
			err = errCannotConnectNow()
		}
		s.rejectStartup(conn, nil, err)
		return nil, nil
	}
	if sm.cancel {
		s.handleCancel(sm.pid, sm.secret)
		return nil, nil
	}
	addr := conn.RemoteAddr().String()
	lg := s.log.With("client", addr, "user", sm.user, "database", sm.database)
	if sm.tls != "" {
		lg = lg.With("tls", sm.tls)
		s.stats.tls.Add(1)
		e.tlsCounted = true
	}
	if s.draining.Load() {
		s.rejectStartup(conn, lg, errCannotConnectNow())
		return nil, nil
	}
	// Take the slot before authenticating, in one atomic step: a check
	// here and a count after the login admits every client of a burst.
	if n := s.slots.Add(1); n > int64(live.MaxClientConn) {
		s.slots.Add(-1)
		s.rejectStartup(conn, lg, newFatal(pgwire.CodeTooManyConnections,
			fmt.Sprintf("too many client connections: pgsidecar allows %d (%s)", live.MaxClientConn, live.option("MaxClientConn")),
			"raise "+live.option("MaxClientConn")+", or have the application use fewer connections"))
		return nil, nil
	}
	e.slot = true
	// Authenticate before saying whether the database exists, as
	// PostgreSQL does, so that a stranger learns nothing.
	db := live.Databases[sm.database]
	adminLogin, adminFull := live.Admin != nil && sm.database == live.Admin.Database, false
	wild := db == nil && live.Wildcard != nil && !adminLogin
	password, known := lookupUser(live.Databases, db, sm.user)
	switch {
	case adminLogin:
		password, known, adminFull = live.Admin.lookup(sm.user)
	case wild:
		password, known = live.Wildcard.Users[sm.user]
	}
	brakeKey, braked, err := s.brakeLogin(conn, lg, live, loginDeadline)
	if err != nil {
		s.rejectStartup(conn, lg, err)
		return nil, nil
	}
	// auth.passthrough: the role's verifier is looked up by the
	// database's auth pool, or for a "*" database by the entry's one.
	var verifiers *Verifiers
	switch {
	case db != nil && !adminLogin && db.Passthrough != nil:
		verifiers = db.Passthrough.Verifiers
	case wild:
		verifiers = live.Wildcard.Verifiers
	}
	var keys pool.ScramKeys
	if verifiers != nil {
		keys, err = s.authPassthrough(sm, conn, lg, verifiers, loginDeadline)
	} else {
		err = authenticate(sm, conn, live.AuthMethod, password, known, live.option("Users"))
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
		return nil, nil
	}
	if braked {
		s.brake.succeeded(brakeKey)
	}
	if adminLogin {
		s.serveAdmin(conn, sm, lg, live.Admin, adminFull)
		return nil, nil
	}
	if wild {
		// Only now, for a client that logged in: a pool per name.
		if len(sm.database) > maxIdentifierLen {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeInvalidCatalogName,
				fmt.Sprintf("database name %q is longer than %d bytes", sm.database, maxIdentifierLen),
				"PostgreSQL would truncate it; pgsidecar serves \"*\" databases by their exact names"))
			return nil, nil
		}
		var err error
		if db, err = live.Wildcard.Open(sm.database); err != nil {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeCannotConnectNow, err.Error(), "connect again in a moment"))
			return nil, nil
		}
	}
	if verifiers != nil && db != nil {
		// Only now, for a client that logged in: its role's pool. (A
		// database without pools per role would run the client as the
		// URL's user: refused, never served.)
		if db.Passthrough == nil {
			err = fmt.Errorf("database %q has no pools per role (auth.passthrough)", db.Name)
		} else {
			db, err = db.Passthrough.open(db, sm.user, keys, lg)
		}
		if err != nil {
			s.rejectStartup(conn, lg, newFatal(pgwire.CodeCannotConnectNow, err.Error(), "connect again in a moment"))
			return nil, nil
		}
	}
	if db == nil {
		s.rejectStartup(conn, lg, newFatal(pgwire.CodeInvalidCatalogName,
			fmt.Sprintf("database %q does not exist in pgsidecar", sm.database),
			"pgsidecar serves: "+databaseNames(live.Databases, sm.user)+"; fix the database name in the connection string, or add it under databases in the config"))
		return nil, nil
	}

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
		db:            db,
		log:           lg,
		policy:        s.cfg.Mode.policy(),
		startupParams: make(map[string]paramValue),
		want:          newParamSet(),
		stmts:         clientStatements{byName: make(map[string]*statement)},
		txStatus:      'I',
	}
	c.hub = s.hubFor(db)
	for k, v := range sm.params {
		k = strings.ToLower(k)
		if notSessionParams[k] || unsettable[k] {
			continue
		}
		c.startupParams[k] = paramValue{val: v}
		c.want.set(k, paramValue{val: v})
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	e.c, e.cancel = c, c.cancel
	if !s.addClient(c) {
		s.rejectStartup(conn, lg, errCannotConnectNow())
		return nil, nil
	}
	e.added = true
	db.Pool.AddClients(1) // per-pool client gauge
	e.db = db
	s.cancels.register(c)
	e.registered = true

	if err := c.greet(loginDeadline); err != nil {
		lg.Info("client startup failed", "err", err)
		c.finish() // a session-mode backend taken for the greeting goes back
		return nil, nil
	}
	return c, lg
}

// greet finishes the startup: AuthenticationOk, the server's parameters
// (with the client's own values where it chose them), BackendKeyData (the
// backend's own in session mode, else proxy-minted), and ReadyForQuery.
func (c *clientConn) greet(deadline time.Time) error {
	ctx := c.ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(c.ctx, deadline)
		defer cancel()
	}
	params, err := c.srv.serverParams(ctx, c.db)
	if err == nil {
		err = c.srv.checkStartupParams(ctx, c.db, c.log, c.startupParams, params)
	}
	if err != nil {
		return c.srv.refuseLogin(c.conn, err)
	}
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for k, v := range params {
		if w, ok := c.want.get(strings.ToLower(k)); ok {
			v = w.val
		}
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
	}
	for k, w := range c.want.vals {
		if _, reported := params[canonicalParamName(k)]; !reported && isReportedParam(k) {
			buf, _ = (&pgproto3.ParameterStatus{Name: canonicalParamName(k), Value: w.val}).Encode(buf)
		}
	}
	if c.policy.backendAtLogin && c.db.Pool.Free() {
		// With the pool exhausted, the client is not kept waiting at login
		// (applications open their pools eagerly): it keeps a minted key
		// and gets its backend at its first query, as before.
		if err := c.bindSession(); err != nil {
			return c.srv.refuseLogin(c.conn, err)
		}
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: c.identity.pid, SecretKey: binary.BigEndian.AppendUint32(nil, c.identity.secret)}).Encode(buf)
	buf = pgwire.AppendReadyForQuery(buf, 'I')
	_, err = c.conn.Write(buf)
	return err
}

// bindSession takes the session-mode client's one backend now and makes
// its key the client's: pg_backend_pid(), a notification's sender pid and
// pg_terminate_backend then mean what the client thinks, and a cancel with
// that key (sent to the proxy, as drivers do) reaches the backend.
func (c *clientConn) bindSession() error {
	// Waiting for a backend is bounded by the pool's acquire timeout, not
	// by the startup timeout.
	c.conn.SetDeadline(time.Time{})
	b, err := c.acquire()
	if err != nil {
		return err
	}
	srv := b.conn.Server()
	ks, ok := srv.(interface{ SecretKey() []byte })
	if !ok || len(ks.SecretKey()) != 4 {
		// Only protocol 3.0's 4-byte keys fit the client's BackendKeyData.
		c.log.Debug("server key not handed on: the client keeps a minted key", "backend_pid", srv.PID())
		return nil
	}
	if !c.srv.cancels.rekey(c, srv.PID(), binary.BigEndian.Uint32(ks.SecretKey())) {
		c.log.Info("another client holds the same backend pid (another server): this one keeps a minted key", "backend_pid", srv.PID())
	}
	return nil
}

// rejectStartup tells a client why it cannot go on, and logs it once.
func (s *Server) rejectStartup(conn net.Conn, lg *slog.Logger, err error) {
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
		if ok, held := s.junkLog.allow(time.Now()); ok {
			lg.Info("client closed: TLS handshake failed", "err", he.err.Error(), "dropped_unlogged", held,
				"log_interval", s.junkLog.interval)
		}
		return
	}
	if !errors.As(err, &pe) {
		lg.Debug("client startup failed", "err", err)
		return
	}
	if pe.silent {
		// Anyone can send junk to the port, as often as they like.
		if ok, held := s.junkLog.allow(time.Now()); ok {
			lg.Info("client closed without a reply: malformed startup packet", "code", pe.Code, "reason", pe.Message,
				"dropped_unlogged", held, "log_interval", s.junkLog.interval)
		}
		return
	}
	lg.Info("client rejected", "code", pe.Code, "reason", pe.Message)
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
// time.
func (s *Server) checkStartupParams(ctx context.Context, db *Database, lg *slog.Logger, startup map[string]paramValue, server map[string]string) error {
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
		retry, err := s.checkParamsOnce(ctx, db, lg, sql, keys)
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
func (s *Server) checkParamsOnce(ctx context.Context, db *Database, lg *slog.Logger, sql string, keys []string) (retry bool, err error) {
	conn, err := db.Pool.Acquire(ctx)
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

// isReportedParam lists parameters PostgreSQL reports even when the server
// we asked did not (application_name is empty on our own backends).
func isReportedParam(k string) bool {
	switch k {
	case "application_name", "client_encoding", "datestyle", "intervalstyle", "timezone",
		"standard_conforming_strings", "default_transaction_read_only":
		return true
	}
	return false
}
