// What a Server is configured with (Config, Database, Wildcard, Mode,
// AuthMethod).

package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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

// Modes lists the pooling modes, as configuration spells them.
var Modes = []Mode{ModeTransaction, ModeSession}

// ParseMode reads a pooling mode, ignoring case and surrounding space.
func ParseMode(s string) (Mode, error) { return parseName(s, Modes) }

// UnmarshalText makes a Mode readable from configuration.
func (m *Mode) UnmarshalText(text []byte) (err error) {
	*m, err = ParseMode(string(text))
	return err
}

// AuthMethod is how clients prove their password to the proxy.
type AuthMethod string

// Auth methods the proxy can demand of clients.
const (
	AuthSCRAM AuthMethod = "scram-sha-256"
	AuthMD5   AuthMethod = "md5"
	AuthPlain AuthMethod = "plain"
	AuthTrust AuthMethod = "trust"
)

// AuthMethods lists the auth methods, as configuration spells them.
var AuthMethods = []AuthMethod{AuthSCRAM, AuthMD5, AuthPlain, AuthTrust}

// ParseAuthMethod reads an auth method, ignoring case and surrounding space.
func ParseAuthMethod(s string) (AuthMethod, error) { return parseName(s, AuthMethods) }

// UnmarshalText makes an AuthMethod readable from configuration.
func (a *AuthMethod) UnmarshalText(text []byte) (err error) {
	*a, err = ParseAuthMethod(string(text))
	return err
}

// parseName finds s among names; the error lists them.
func parseName[T ~string](s string, names []T) (T, error) {
	v := T(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(names, v) {
		return v, nil
	}
	list := make([]string, len(names))
	for i, n := range names {
		list[i] = string(n)
	}
	return "", fmt.Errorf("must be one of %s, got %q", strings.Join(list, ", "), v)
}

// Wildcard serves any database name on one server, like PgBouncer's "*"
// entry: the client's own database name is used upstream, with a pool per
// name opened when a client first asks for it.
type Wildcard struct {
	// Users maps the logins accepted for these databases to passwords.
	Users map[string]string
	// Open returns the Database serving name, opening its pool on first
	// use. The proxy calls it only for an authenticated client. (The
	// owner closes a pool whose database turns out not to exist; a client
	// still holding it gets 3D000, then 57P01.)
	Open func(name string) (*Database, error)
	// Opened lists the databases opened so far, for the admin console
	// (SHOW POOLS, PAUSE, ...); nil lists none.
	Opened func() []*Database
	// SetPaused, when set, makes the databases Open opens from now on
	// start paused (true) or running (false): a PAUSE of every database
	// holds those too, as PgBouncer's global PAUSE does.
	SetPaused func(paused bool)
	// Verifiers, set with auth.passthrough, looks up the roles' SCRAM
	// verifiers for every database of the entry (roles are the
	// cluster's, not a database's); the Databases Open returns then have
	// a Passthrough with their own pools per role.
	Verifiers *Verifiers
}

// Database is one database clients may name in their StartupMessage.
type Database struct {
	// Name is what clients put in "database".
	Name string
	// Pool serves this database's backends.
	Pool *pool.Pool
	// Users maps the user names clients may log in as to their passwords
	// (this database's URL user plus the auth.users it admits).
	Users map[string]string
	// Listen connects the shared LISTEN connection that serves this
	// database's listeners in transaction mode (notify.go); nil makes
	// LISTEN pin the client to its backend instead.
	Listen *pgconn.Config
	// Upstream is the server's connection string with the password
	// redacted, for SHOW DATABASES.
	Upstream string
	// Passthrough, when set, makes every login to this database log in as
	// its own PostgreSQL role, in a pool of that role (passthrough.go);
	// Users and Pool then serve nobody but the admin console's listing.
	Passthrough *Passthrough
}

// acquire is d.Pool.Acquire, or with ifFree d.Pool.AcquireIfFree (a
// backend only if none must be released for it, else pool.ErrWouldWait).
func (d *Database) acquire(ctx context.Context, ifFree bool) (pool.Conn, error) {
	if ifFree {
		return d.Pool.AcquireIfFree(ctx)
	}
	return d.Pool.Acquire(ctx)
}

// Config configures a Server. Every field but Logger must be set: zero
// means zero (no reset query), never "the default"; the configuration
// layer owns the defaults.
type Config struct {
	Mode          Mode // required
	MaxClientConn int  // at least 1
	// MaxStartupConn bounds the connections not yet logged in (startup
	// packet, authentication; a client leaves the count when it is listed,
	// before its greeting); more are refused at accept. At least 1.
	MaxStartupConn int
	AuthMethod     AuthMethod           // required
	Databases      map[string]*Database // keyed by Database.Name; required unless Wildcard is set
	// Wildcard serves every database name Databases lacks (nil: such a
	// name gets 3D000).
	Wildcard *Wildcard
	// ResetQuery runs on a backend when its session-mode client leaves;
	// "" skips the reset.
	ResetQuery string
	// MaxPreparedStatements bounds the statements kept per backend (LRU);
	// at least 1.
	MaxPreparedStatements int
	// SessionState is what transaction mode does with session state
	// (LISTEN, session advisory locks, temp tables, WITH HOLD cursors, SQL
	// PREPARE, SET ROLE): pin the backend to the client, or reject.
	// Required.
	SessionState SessionStatePolicy
	// MaxMessageSize is the largest protocol message accepted from a client
	// or a server; larger is a protocol violation. From 1 to
	// MaxMessageSizeLimit.
	MaxMessageSize int
	// MaxClientBuffer bounds what the proxy holds of one client message:
	// larger Binds and Queries are streamed, a larger Parse (transaction
	// mode, where it is read whole) is refused with 54000. At least 1.
	MaxClientBuffer int
	Logger          *slog.Logger // nil means slog.Default()
	// ClientLoginTimeout bounds a client's login: startup, authentication
	// and greet (which may wait for a backend). 0 = no limit. Live.
	ClientLoginTimeout time.Duration
	// QueryTimeout cancels a request running longer (57014); 0 = off. Live.
	QueryTimeout time.Duration
	// IdleTransactionTimeout closes a client idle inside a transaction
	// (25P03), rolling back and returning its backend; 0 = off. Live.
	IdleTransactionTimeout time.Duration
	// ClientIdleTimeout closes a client idle outside a transaction (57P05);
	// 0 = off. Live.
	ClientIdleTimeout time.Duration
	// OptionName spells a field of Config (or "Users", "ShutdownTimeout",
	// pool.Config's "MaxSize") the way the operator sets it, for hints and
	// log lines: "Mode" may become "pool.mode". The proxy knows no configuration file; nil, or
	// "" for a field, leaves the field's own name.
	OptionName func(field string) string
	// FailedLoginDelay: after a failed login, the next attempt from the
	// same source address waits this long before its password is checked,
	// doubling per further failure up to FailedLoginDelayMax (raised to
	// FailedLoginDelay when below it); a success clears it. 0 = off.
	FailedLoginDelay    time.Duration
	FailedLoginDelayMax time.Duration
	// FailedLoginDelayLoopback applies the delay to loopback clients too.
	FailedLoginDelayLoopback bool
	// TLS is the client TLS setup (NewClientTLS); nil means disable. Reload
	// swaps it: connections keep the one they were accepted with.
	TLS *ClientTLS
	// Admin configures the admin console (admin.go); nil = no console.
	Admin *AdminConfig

	// parkAfter is the parker's sweep interval for this package's tests,
	// which make it short; not an option: 0 (any other user) means
	// idleParkAfter (park.go).
	parkAfter time.Duration
	// beforeLoopHandOff, for this package's tests, runs on the loop
	// thread as it starts handing a client to a goroutine (loopHandOff),
	// before it lets go of the client: a test makes the loop slow there.
	// nil (any other user): nothing runs.
	beforeLoopHandOff func()
}

// MaxMessageSizeLimit is PostgreSQL's MaxAllocSize (1 GB - 1), above its
// own bound on a protocol message (MaxAllocSize - 1, length word
// included): nothing larger can come from a correct peer.
const MaxMessageSizeLimit = 1<<30 - 1

// option names field in hints: the configuration option that sets it, as
// OptionName spells it, else the field's own name.
func (cfg *Config) option(field string) string {
	if cfg.OptionName != nil {
		if name := cfg.OptionName(field); name != "" {
			return name
		}
	}
	return field
}
