// PgServer, the Server a pool holds over a pgconn connection, and Connector,
// which opens and syncs one.

package pool

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// reportedParams are the ParameterStatus keys PgServer.Params returns: the
// ones PostgreSQL reports at startup (GUC_REPORT) that a client expects to
// see in its own startup.
var reportedParams = []string{
	"server_version", "server_encoding", "client_encoding", "DateStyle", "IntervalStyle",
	"TimeZone", "integer_datetimes", "standard_conforming_strings", "application_name",
	"is_superuser", "session_authorization", "default_transaction_read_only",
	"in_hot_standby", "scram_iterations",
}

// PgServer adapts *pgconn.PgConn to Server.
type PgServer struct {
	pg     *pgconn.PgConn
	params map[string]string
}

// NewPgServer wraps an open, synced connection. The ParameterStatus values
// are copied now: once the proxy relays raw bytes, pgconn no longer sees
// them.
func NewPgServer(pg *pgconn.PgConn) *PgServer {
	params := make(map[string]string, len(reportedParams))
	for _, k := range reportedParams {
		// pgconn answers "" for a parameter the server did not report
		// (in_hot_standby before PostgreSQL 14, scram_iterations before
		// 16). application_name is the one reported parameter whose
		// value is empty by default, and every supported server reports
		// it: without it here, the proxy took application_name for a
		// parameter it must follow from SET statements, and showed a
		// client's SET application_name = 'x' as 'x' quoted.
		if v := pg.ParameterStatus(k); v != "" || k == "application_name" {
			params[k] = v
		}
	}
	return &PgServer{pg: pg, params: params}
}

// Connector returns a ConnectFunc that opens backends with cfg (from
// pgconn.ParseConfig; pgconn does TLS, SCRAM, md5 and channel binding)
// and syncs each one so its raw net.Conn is safe to relay on. The pool
// bounds ctx by its ConnectTimeout.
func Connector(cfg *pgconn.Config) ConnectFunc {
	return func(ctx context.Context) (Server, error) {
		pg, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return nil, err
		}
		if err := pg.SyncConn(ctx); err != nil {
			_ = pg.Close(context.Background()) // already failing: the sync error is the one to report
			return nil, fmt.Errorf("sync new connection: %w", err)
		}
		return NewPgServer(pg), nil
	}
}

// PgConn returns the underlying connection (for CancelRequest wiring and
// tests). Its TxStatus and ParameterStatus go stale once bytes are
// relayed on NetConn.
func (s *PgServer) PgConn() *pgconn.PgConn { return s.pg }

// SecretKey is the backend's cancel key (4 bytes with protocol 3.0).
func (s *PgServer) SecretKey() []byte { return s.pg.SecretKey() }

// NetConn returns the raw socket to relay on.
func (s *PgServer) NetConn() net.Conn { return s.pg.Conn() }

// Exec runs sql with the simple protocol, reads every result and returns
// the first error, then syncs the connection again so the raw socket is
// safe to relay on. It clears any deadline the relay left on the socket
// first, or pgconn would fail on it.
func (s *PgServer) Exec(ctx context.Context, sql string) error {
	if err := s.pg.Conn().SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear deadline: %w", err)
	}
	results, err := s.pg.Exec(ctx, sql).ReadAll()
	for _, r := range results {
		if r.Err != nil {
			return r.Err // the first statement that failed
		}
	}
	if err != nil {
		return err
	}
	if err := s.pg.SyncConn(ctx); err != nil {
		return fmt.Errorf("sync after %q: %w", sql, err)
	}
	return nil
}

// CancelRequest asks the server to cancel what this connection runs; it
// takes no lock, so it is safe while another goroutine relays.
func (s *PgServer) CancelRequest(ctx context.Context) error { return s.pg.CancelRequest(ctx) }

// PID is the backend process id.
func (s *PgServer) PID() uint32 { return s.pg.PID() }

// Params returns the ParameterStatus values reported at connect for the
// keys a client expects in its startup (empty ones skipped, except
// application_name: see NewPgServer). The map is
// shared: do not modify it.
func (s *PgServer) Params() map[string]string { return s.params }

// Close sends Terminate and closes the socket, bounded by ctx.
func (s *PgServer) Close(ctx context.Context) error {
	// The relay may have left a deadline on the socket; Close must still
	// be able to write Terminate.
	_ = s.pg.Conn().SetDeadline(time.Time{})
	return s.pg.Close(ctx)
}

// terminateMsg is the frontend Terminate message ('X', length 4).
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// CloseWait is Close that first waits, within ctx, for the server to end
// the connection after Terminate. The server closes its socket only after
// its process has left pg_stat_activity and its max_connections slot, so
// a pool under a Group cap frees the slot when the server has (see
// closeServer). The caller bounds ctx: a server busy with a query reads
// Terminate only when it is done, a frozen one never.
func (s *PgServer) CloseWait(ctx context.Context) error {
	nc := s.pg.Conn()
	_ = nc.SetDeadline(time.Time{})
	if _, err := nc.Write(terminateMsg); err == nil {
		if d, ok := ctx.Deadline(); ok {
			_ = nc.SetReadDeadline(d)
		}
		var buf [256]byte
		for {
			if _, err := nc.Read(buf[:]); err != nil {
				break // EOF: the server is gone; or the wait ran out
			}
		}
		_ = nc.SetDeadline(time.Time{})
	}
	// pgconn sends Terminate again (a closed peer ignores it) and closes
	// the socket.
	return s.pg.Close(ctx)
}
