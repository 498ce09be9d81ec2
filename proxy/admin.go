// The admin console: a virtual database answering SHOW, PAUSE, RESUME,
// RECONNECT, KILL, ... as PgBouncer's "pgbouncer" database does. The
// Server's operations behind it are in operations.go.

package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// AdminConfig configures the admin console: a virtual database that
// answers SHOW, PAUSE, RESUME, ... over the simple query protocol, as
// PgBouncer's "pgbouncer" database does.
type AdminConfig struct {
	// Database is the name clients connect to; it must not be a served
	// database's.
	Database string
	// Users may run every command; StatsUsers only SHOW. Both map login
	// names to passwords, checked like any other login.
	Users, StatsUsers map[string]string
	// Control reaches what belongs to the program, not the proxy.
	Control Control
}

// Control is what the console asks of the program that owns the proxy:
// the proxy knows neither the configuration nor the process lifecycle.
type Control interface {
	// Reload re-reads the configuration as SIGHUP does and says whether
	// it was applied.
	Reload() error
	// Shutdown begins the graceful stop SIGTERM begins, without waiting.
	Shutdown()
	// ShowConfig lists every option and its running value, secrets
	// redacted.
	ShowConfig() [][2]string
}

// consoleCommands is the hint for anything the console does not know.
const consoleCommands = "the console understands: SHOW POOLS | CLIENTS | SERVERS | STATS | DATABASES | CONFIG | VERSION | STATE; " +
	"PAUSE [db]; RESUME [db]; RECONNECT [db]; KILL [db]; RELOAD; SHUTDOWN"

// pauseWait bounds how long PAUSE waits for the transactions in flight;
// longer ones (a session-mode client holds its backend for its whole
// session) end on their own and are not handed a backend again until
// RESUME.
const pauseWait = 30 * time.Second

// lookup finds a console login: full access or SHOW only. An
// unknown user gets known=false and is refused like a wrong password.
func (a *AdminConfig) lookup(user string) (password string, known, full bool) {
	if p, ok := a.Users[user]; ok {
		return p, true, true
	}
	if p, ok := a.StatsUsers[user]; ok {
		return p, true, false
	}
	return "", false, false
}

// serveAdmin runs one logged-in console session until the client leaves
// or the server closes.
func (s *Server) serveAdmin(conn net.Conn, sm *startupMessage, lg *slog.Logger, admin *AdminConfig, full bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.rejectStartup(conn, lg, errCannotConnectNow())
		return
	}
	s.admins[conn] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.admins, conn)
		s.mu.Unlock()
	}()
	lg = lg.With("console", true)
	lg.Info("admin console login", "full_access", full)

	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for _, kv := range [][2]string{
		{"server_version", s.consoleServerVersion()}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"},
		{"TimeZone", "UTC"}, {"application_name", sm.params["application_name"]},
	} {
		buf, _ = (&pgproto3.ParameterStatus{Name: kv[0], Value: kv[1]}).Encode(buf)
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: 0, SecretKey: binary.BigEndian.AppendUint32(nil, 0)}).Encode(buf)
	buf = pgwire.AppendReadyForQuery(buf, 'I')
	if _, err := conn.Write(buf); err != nil {
		return
	}
	conn.SetDeadline(time.Time{})

	skipping := false // an extended-protocol message was refused: skip to Sync
	for {
		msg, err := sm.backend.Receive()
		if err != nil {
			if !isConnError(err) {
				// pgproto3 could not decode the message (too long for
				// the backend's 10000-byte limit, an unknown type, a
				// malformed body): say so, as PostgreSQL does, rather
				// than vanish.
				lg.Info("admin console: invalid message; session closed", "err", err)
				conn.SetWriteDeadline(time.Now().Add(time.Second))
				conn.Write(newFatal(pgwire.CodeProtocolViolation,
					"invalid message on the admin console: "+err.Error(),
					"the console answers simple queries of at most 10000 bytes").appendTo(nil))
			}
			return
		}
		var out []byte
		var after func()
		switch m := msg.(type) {
		case *pgproto3.Query:
			out, after = s.consoleQuery(m.String, lg, admin, full)
		case *pgproto3.Terminate:
			return
		case *pgproto3.Sync:
			skipping = false
			out = pgwire.AppendReadyForQuery(nil, 'I')
		case *pgproto3.Flush:
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close:
			if !skipping {
				skipping = true
				out = newError(pgwire.CodeFeatureNotSupported,
					"the pgsidecar admin console speaks only the simple query protocol",
					"send console commands as plain queries: psql -c 'SHOW POOLS', or in pgx use QueryExecModeSimpleProtocol").appendTo(nil)
			}
		default:
			conn.Write(newFatal(pgwire.CodeProtocolViolation,
				fmt.Sprintf("unexpected message %T on the admin console", msg),
				"the console answers simple queries only").appendTo(nil))
			return
		}
		if len(out) > 0 {
			_, err := conn.Write(out)
			if after != nil {
				after() // once the reply is written, whether it could be or not
			}
			if err != nil {
				return
			}
		}
	}
}

// consoleServerVersion reports a served database's server_version when the
// proxy knows one (psql and drivers look at it), else a neutral one.
func (s *Server) consoleServerVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(s.params)) {
		if v := s.params[name]["server_version"]; v != "" {
			return v
		}
	}
	return "16.0"
}

// consoleQuery runs every ';'-separated command of one Query and returns
// the whole reply, ReadyForQuery included. The first error ends the
// Query, as in PostgreSQL.
//
// after, when not nil, is what the session must do once the reply is
// written (SHUTDOWN's drain: see consoleResult.after).
func (s *Server) consoleQuery(q string, lg *slog.Logger, admin *AdminConfig, full bool) (out []byte, after func()) {
	ran := false
	for stmt := range strings.SplitSeq(q, ";") {
		words := strings.Fields(stmt)
		if len(words) == 0 {
			continue
		}
		ran = true
		res, err := s.consoleCommand(words, lg, admin, full)
		if err != nil {
			var pe *pgError
			if !errors.As(err, &pe) {
				pe = newError(pgwire.CodeConnectionFailure, err.Error(), "")
			}
			out = pe.appendTo(out)
			break
		}
		out = res.appendTo(out)
		if res.after != nil {
			after = res.after
		}
	}
	if !ran {
		out = append(out, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	}
	return pgwire.AppendReadyForQuery(out, 'I'), after
}

// consoleCommand runs one command.
func (s *Server) consoleCommand(words []string, lg *slog.Logger, admin *AdminConfig, full bool) (*consoleResult, error) {
	verb := strings.ToUpper(words[0])
	args := words[1:]
	if verb == "SHOW" {
		if len(args) != 1 {
			return nil, unknownCommand(words)
		}
		return s.consoleShow(strings.ToUpper(args[0]), words, admin)
	}
	if !slices.Contains([]string{"PAUSE", "RESUME", "RECONNECT", "KILL", "RELOAD", "SHUTDOWN"}, verb) ||
		len(args) > 1 || (len(args) == 1 && (verb == "RELOAD" || verb == "SHUTDOWN")) {
		return nil, unknownCommand(words)
	}
	if !full {
		return nil, newError(pgwire.CodeInsufficientPrivilege,
			fmt.Sprintf("permission denied: %s needs a login of admin.users", verb),
			"this login is one of admin.stats_users, which may only run SHOW commands")
	}
	db := ""
	if len(args) == 1 {
		db = args[0]
	}
	lg.Info("admin console command", "command", strings.Join(words, " "))
	switch verb {
	case "PAUSE":
		ctx, cancel := context.WithTimeout(context.Background(), pauseWait)
		defer cancel()
		held, err := s.Pause(ctx, db)
		if err != nil {
			return nil, err
		}
		res := &consoleResult{tag: "PAUSE"}
		if held > 0 {
			res.notice = fmt.Sprintf("%d backends are still held after %s; new transactions wait, and those backends are not handed out again until RESUME", held, pauseWait)
		}
		return res, nil
	case "RESUME":
		return &consoleResult{tag: "RESUME"}, s.Resume(db)
	case "RECONNECT":
		return &consoleResult{tag: "RECONNECT"}, s.Reconnect(db)
	case "KILL":
		n, err := s.Kill(db)
		if err != nil {
			return nil, err
		}
		return &consoleResult{tag: "KILL", notice: fmt.Sprintf("%d clients disconnected", n)}, nil
	case "RELOAD":
		if admin.Control == nil {
			return nil, newError(pgwire.CodeFeatureNotSupported, "RELOAD is not available in this process", "")
		}
		if err := admin.Control.Reload(); err != nil {
			return nil, newError(pgwire.CodeConfigFileError, "reload failed; the running configuration is kept: "+err.Error(),
				"fix the configuration and RELOAD again; the log has the details")
		}
		return &consoleResult{tag: "RELOAD"}, nil
	default: // SHUTDOWN
		if admin.Control == nil {
			return nil, newError(pgwire.CodeFeatureNotSupported, "SHUTDOWN is not available in this process", "")
		}
		return &consoleResult{tag: "SHUTDOWN", after: admin.Control.Shutdown}, nil
	}
}

// unknownCommand is the 42601 for anything the console does not know.
func unknownCommand(words []string) *pgError {
	return newError(pgwire.CodeSyntaxError,
		fmt.Sprintf("unrecognized admin console command %q", strings.Join(words, " ")), consoleCommands)
}

// consoleShow answers SHOW what.
func (s *Server) consoleShow(what string, words []string, admin *AdminConfig) (*consoleResult, error) {
	r := &consoleResult{tag: "SHOW"}
	switch what {
	case "POOLS":
		r.cols = []consoleCol{{"database", oidText}, {"user", oidText}, {"clients", oidInt8}, {"cl_active", oidInt8},
			{"cl_waiting", oidInt8}, {"sv_active", oidInt8}, {"sv_idle", oidInt8}, {"sv_total", oidInt8},
			{"min_size", oidInt8}, {"max_size", oidInt8}, {"state", oidText}, {"paused", oidBool}}
		for _, p := range s.Pools() {
			r.row(p.Database, p.User, p.Clients, p.Active, p.Waiting, p.Active, p.Idle, p.Total,
				p.MinSize, p.MaxSize, p.State.String(), p.Paused)
		}
	case "CLIENTS":
		r.cols = []consoleCol{{"pid", oidInt8}, {"database", oidText}, {"user", oidText}, {"addr", oidText},
			{"application_name", oidText}, {"state", oidText}, {"connected", oidTimestamptz}}
		for _, c := range s.Clients() {
			r.row(int64(c.PID), c.Database, c.User, c.Addr, c.ApplicationName, c.State, c.Connected)
		}
	case "SERVERS":
		r.cols = []consoleCol{{"pid", oidInt8}, {"database", oidText}, {"user", oidText}, {"state", oidText},
			{"created", oidTimestamptz}, {"last_used", oidTimestamptz}, {"transactions", oidInt8}, {"queries", oidInt8},
			{"errors", oidInt8}, {"sql_errors", oidInt8}, {"validated", oidTimestamptz}, {"validate_ms", oidFloat8},
			{"tls", oidBool}, {"recycle", oidBool}}
		for _, b := range s.Servers() {
			r.row(int64(b.PID), b.Database, b.User, b.State, b.Created, b.LastUsed, b.Transactions, b.Queries,
				b.Errors, b.SQLErrors, b.ValidatedAt, b.ValidateTook, b.TLS, b.Recycle)
		}
	case "STATS":
		r.cols = []consoleCol{{"database", oidText}, {"user", oidText}, {"acquisitions", oidInt8}, {"transactions", oidInt8},
			{"queries", oidInt8}, {"wait_avg_ms", oidFloat8}, {"wait_p99_ms", oidFloat8}, {"acquire_timeouts", oidInt8},
			{"acquire_rejected", oidInt8}, {"connects", oidInt8}, {"connect_errors", oidInt8}, {"retired", oidInt8},
			{"leaks", oidInt8}}
		for _, p := range s.Pools() {
			r.row(p.Database, p.User, p.Acquisitions, histCount(p.TransactionDuration), p.Queries, p.WaitAvgMs, p.WaitP99Ms,
				p.AcquireTimeouts, p.AcquireRejected, p.Connects, p.ConnectErrors, p.Retired.Total(), p.Leaks)
		}
	case "DATABASES":
		r.cols = []consoleCol{{"name", oidText}, {"upstream", oidText}, {"pool_user", oidText}, {"mode", oidText},
			{"min_size", oidInt8}, {"max_size", oidInt8}, {"state", oidText}, {"paused", oidBool}}
		dbs := s.databases()
		for _, name := range slices.Sorted(maps.Keys(dbs)) {
			db := dbs[name]
			st := db.Pool.Stats()
			r.row(name, db.Upstream, st.User, string(s.cfg.Mode), st.MinSize, st.MaxSize, st.State.String(), st.Paused)
		}
	case "CONFIG":
		r.cols = []consoleCol{{"key", oidText}, {"value", oidText}}
		if admin.Control != nil {
			for _, kv := range admin.Control.ShowConfig() {
				r.row(kv[0], kv[1])
			}
		}
	case "VERSION":
		r.cols = []consoleCol{{"version", oidText}}
		r.row("pgsidecar " + buildinfo.Version())
	case "STATE":
		r.cols = []consoleCol{{"key", oidText}, {"value", oidText}}
		state := "running"
		if s.draining.Load() {
			state = "draining"
		}
		var paused []string
		for _, p := range s.Pools() {
			// A database's role pools follow its own: name it once.
			if p.Paused && !slices.Contains(paused, p.Database) {
				paused = append(paused, p.Database)
			}
		}
		st := s.Stats()
		r.row("state", state)
		r.row("paused", strings.Join(paused, ","))
		r.row("clients", strconv.FormatInt(st.ClientsTotal, 10))
		r.row("clients_logging_in", strconv.FormatInt(st.ClientsLoggingIn, 10))
		r.row("version", buildinfo.Version())
	default:
		return nil, unknownCommand(words)
	}
	return r, nil
}

// histCount is the number of observations in h.
func histCount(h pool.Histogram) uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// closeAdminsLocked ends every console session (the server is closing).
func (s *Server) closeAdminsLocked() {
	for conn := range s.admins {
		conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		conn.Write(errDraining().appendTo(nil))
		conn.Close()
	}
}

// Column types of console results, as psql and drivers decode them.
const (
	oidBool        = 16
	oidInt8        = 20
	oidText        = 25
	oidFloat8      = 701
	oidTimestamptz = 1184
)

type consoleCol struct {
	name string
	oid  uint32
}

// consoleResult is one command's reply: a table (when cols is set), an
// optional NOTICE and the CommandComplete tag.
type consoleResult struct {
	cols   []consoleCol
	rows   [][][]byte
	notice string
	tag    string
	// after runs once the session has written the reply. SHUTDOWN's
	// drain ends every console session (closeAdminsLocked: FATAL 57P01,
	// close) at once when no client is left: begun before the reply was
	// written, it raced the session, and the client that asked for the
	// SHUTDOWN got the FATAL instead of its answer (psql -c SHUTDOWN
	// exited 2: TestAdminReloadShutdown).
	after func()
}

// row appends one row; each value is rendered in PostgreSQL's text format
// for its column's type. A zero time is NULL.
func (r *consoleResult) row(vals ...any) {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		switch x := v.(type) {
		case string:
			out[i] = []byte(x)
		case int:
			out[i] = strconv.AppendInt(nil, int64(x), 10)
		case int64:
			out[i] = strconv.AppendInt(nil, x, 10)
		case uint64:
			out[i] = strconv.AppendUint(nil, x, 10)
		case float64:
			out[i] = strconv.AppendFloat(nil, x, 'f', 3, 64)
		case bool:
			out[i] = []byte{'f'}
			if x {
				out[i][0] = 't'
			}
		case time.Time:
			if !x.IsZero() {
				// PostgreSQL's ISO output in UTC, which every driver parses.
				out[i] = []byte(x.UTC().Format("2006-01-02 15:04:05.000000") + "+00")
			}
		default:
			out[i] = []byte(fmt.Sprint(x))
		}
	}
	r.rows = append(r.rows, out)
}

func (r *consoleResult) appendTo(dst []byte) []byte {
	if r.notice != "" {
		dst = appendNotice(dst, pgwire.CodeSuccessfulCompletion, r.notice, "")
	}
	tag := r.tag
	if r.cols != nil {
		rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(r.cols))}
		for i, c := range r.cols {
			size := int16(-1)
			switch c.oid {
			case oidBool:
				size = 1
			case oidInt8, oidFloat8, oidTimestamptz:
				size = 8
			}
			rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1}
		}
		dst, _ = rd.Encode(dst)
		for _, row := range r.rows {
			dst, _ = (&pgproto3.DataRow{Values: row}).Encode(dst)
		}
	}
	dst, _ = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(dst)
	return dst
}
