package proxy

import (
	"log/slog"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Mode is the pooling mode.
type Mode string

const (
	// ModeTransaction gives a client a backend for one transaction at a time.
	ModeTransaction Mode = "transaction"
	// ModeSession gives a client one backend for its whole life.
	ModeSession Mode = "session"
)

// Auth methods the proxy can demand of clients.
const (
	AuthSCRAM = "scram-sha-256"
	AuthMD5   = "md5"
	AuthPlain = "plain"
	AuthTrust = "trust"
)

// Database is one database clients may name in their StartupMessage.
type Database struct {
	// Name is what clients put in "database".
	Name string
	// Pool serves this database's backends.
	Pool *pool.Pool
	// Users maps the user names clients may log in as to their passwords
	// (the upstream URL's user plus auth.users).
	Users map[string]string
}

// Config configures a Server. Zero values take the defaults noted.
type Config struct {
	Mode          Mode                 // default transaction
	MaxClientConn int                  // default 10000
	AuthMethod    string               // default scram-sha-256
	Databases     map[string]*Database // required, keyed by Database.Name
	// ResetQuery runs on a backend when its session-mode client leaves.
	ResetQuery string // default "DISCARD ALL"; "" skips the reset
	// MaxPreparedStatements bounds the statements kept per backend (LRU).
	MaxPreparedStatements int // default 200
	// MaxMessageSize is the largest protocol message accepted from a client
	// or a server; larger is a protocol violation.
	MaxMessageSize int // default 1 GiB - 1 (PostgreSQL's own limit)
	// IdleClientDrain: on Shutdown, clients between transactions are closed
	// with 57P01 at once; clients inside one get until ctx ends.
	Logger *slog.Logger // default slog.Default()
	// StartupTimeout bounds the startup and authentication phase.
	StartupTimeout time.Duration // default 15s
	// FailedLoginDelay: after a failed login, the next attempt from the
	// same source address waits this long before its password is checked,
	// doubling per further failure up to FailedLoginDelayMax (raised to
	// FailedLoginDelay when below it); a success clears it. 0 = off.
	FailedLoginDelay    time.Duration
	FailedLoginDelayMax time.Duration
	// FailedLoginDelayLoopback applies the delay to loopback clients too.
	FailedLoginDelayLoopback bool
}

// Stats counts the server's clients.
type Stats struct {
	ClientsTotal    int64  `json:"clients_total"`    // connected now
	ClientsActive   int64  `json:"clients_active"`   // holding a backend now
	ClientsWaiting  int64  `json:"clients_waiting"`  // waiting for a backend now
	ClientsAccepted uint64 `json:"clients_accepted"` // since start
	ClientsRejected uint64 `json:"clients_rejected"` // refused (limit, auth, bad startup)
	AuthFailures    uint64 `json:"auth_failures"`
	Cancels         uint64 `json:"cancels"` // cancel requests forwarded
	// LoginsDelayed counts login attempts held back by the failed-login
	// delay; LoginsThrottled those refused because the wait would outlast
	// the login timeout.
	LoginsDelayed   uint64 `json:"logins_delayed"`
	LoginsThrottled uint64 `json:"logins_throttled"`
	// CancelsUnknown counts cancel requests whose key matched no client
	// (dropped; logged at most once per 10 s).
	CancelsUnknown uint64 `json:"cancels_unknown"`
}
