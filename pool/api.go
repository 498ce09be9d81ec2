// Package pool keeps per-(database, user) pools of authenticated backend
// connections for the proxy. It never imports proxy: the proxy asks a Pool
// for a Conn, relays bytes on Conn.Server().NetConn(), and gives it back.
package pool

import (
	"context"
	"net"
)

// Server is one authenticated backend connection as the pool needs it.
// PgServer adapts *pgconn.PgConn; unit tests use fakes.
type Server interface {
	// NetConn is the raw socket. It is safe to read and write only while
	// the Conn is held, and only between ReadyForQuery boundaries.
	NetConn() net.Conn
	// Exec runs sql with the simple protocol and reads every result. It is
	// used for validation and reset, never while a client relays.
	Exec(ctx context.Context, sql string) error
	// CancelRequest asks the server to cancel what this connection runs.
	// It takes no lock and may be called while another goroutine relays.
	CancelRequest(ctx context.Context) error
	// PID is the backend process id.
	PID() uint32
	// Params are the ParameterStatus values the server reported at connect.
	Params() map[string]string
	// Close closes the connection (gracefully when it can).
	Close(ctx context.Context) error
}

// ConnectFunc opens one new Server. It must honour ctx (the pool sets the
// connect timeout on it).
type ConnectFunc func(ctx context.Context) (Server, error)
