// auth.passthrough: clients log in as their own PostgreSQL roles, checked
// against the role's SCRAM verifier as looked up in the database
// (Verifiers), each role in a pool of its own (Passthrough).

package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xdg-go/scram"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Passthrough makes a database's clients log in as their own PostgreSQL
// roles (auth.passthrough), as PgBouncer's auth_user + auth_query: the
// proxy looks the role's SCRAM verifier up in the database, checks the
// client against it, and logs in to the server as the role with the
// ClientKey recovered from the client's proof, in a pool of that role.
type Passthrough struct {
	// Verifiers looks up and caches roles' verifiers.
	Verifiers *Verifiers
	// Roles opens a pool per role of the database.
	Roles *pool.Roles

	mu  sync.Mutex
	dbs map[string]*Database // by role
}

// open returns the Database of role within base, opening the role's pool
// at its first login; keys become those its next connects use.
func (pt *Passthrough) open(base *Database, role string, keys pool.ScramKeys, lg *slog.Logger) (*Database, error) {
	p, created, err := pt.Roles.Open(role, keys)
	if err != nil {
		return nil, err
	}
	if created {
		lg.Info("pool opened for a role (auth.passthrough)", "pool", p.Name())
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if d := pt.dbs[role]; d != nil && d.Pool == p {
		return d, nil
	}
	if pt.dbs == nil {
		pt.dbs = map[string]*Database{}
	}
	// No Listen: the shared LISTEN connection would listen as the
	// upstream URL's user; a role's LISTEN pins its backend instead.
	d := &Database{Name: base.Name, Pool: p, Upstream: base.Upstream}
	pt.dbs[role] = d
	return d, nil
}

// Verifiers looks up roles' SCRAM verifiers with the auth user's own small
// pool (auth.user, auth.query) and caches each answer, found or not, for
// TTL: a changed password is seen at the latest TTL later, and a flood of
// logins costs one query per role per TTL.
type Verifiers struct {
	Pool *pool.Pool
	// Query and TTL are the initial settings; Configure changes them
	// (reload), under mu.
	Query string // one parameter, the role; answers (rolname, rolpassword)
	TTL   time.Duration

	mu sync.Mutex
	m  map[string]verifierEntry
	// gen counts Configure's query changes: an answer of the previous
	// query, still running when the query changed, is not cached.
	gen uint64
}

// Configure applies reloaded auth.query and auth.cache_ttl. A new query
// empties the cache (its answers came from the old one); a new TTL applies
// to the entries cached already.
func (v *Verifiers) Configure(query string, ttl time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if query != v.Query {
		v.Query = query
		v.m = nil
		v.gen++
	}
	v.TTL = ttl
}

type verifierEntry struct {
	creds scram.StoredCredentials
	found bool // a usable SCRAM verifier
	at    time.Time
}

// verifierCacheMax bounds the cache (unknown names are cached too, so a
// prober could fill it); past it the cache is emptied.
const verifierCacheMax = 10000

// lookup returns role's stored credentials; found=false for a role the
// query does not return (unknown, NOLOGIN), or whose password is not a
// SCRAM verifier (md5, empty), which is logged for the operator once per
// TTL. An error means the query could not run.
func (v *Verifiers) lookup(ctx context.Context, role string, lg *slog.Logger) (scram.StoredCredentials, bool, error) {
	now := time.Now()
	v.mu.Lock()
	e, ok := v.m[role]
	fresh := ok && now.Sub(e.at) < v.TTL
	query, gen := v.Query, v.gen
	v.mu.Unlock()
	if fresh {
		return e.creds, e.found, nil
	}
	rolpassword, exists, err := v.query(ctx, query, role)
	if err != nil {
		return scram.StoredCredentials{}, false, err
	}
	e = verifierEntry{at: now}
	switch {
	case !exists:
	case rolpassword == "":
		lg.Warn("role cannot log in through auth.passthrough: it has no password in the database (clients get 28P01)",
			"role", role, "hint", "ALTER ROLE ... PASSWORD with password_encryption = 'scram-sha-256'")
	case !IsSCRAMVerifier(rolpassword):
		lg.Warn("role cannot log in through auth.passthrough: its password is not stored as a SCRAM-SHA-256 verifier (md5?); clients get 28P01",
			"role", role, "hint", "set password_encryption = 'scram-sha-256' and ALTER ROLE ... PASSWORD again")
	default:
		creds, err := ParseSCRAMVerifier(rolpassword)
		if err != nil {
			lg.Warn("role cannot log in through auth.passthrough: its SCRAM verifier does not parse; clients get 28P01", "role", role, "err", err)
			break
		}
		e.creds, e.found = creds, true
	}
	v.mu.Lock()
	if v.gen == gen {
		if v.m == nil || len(v.m) >= verifierCacheMax {
			v.m = map[string]verifierEntry{}
		}
		v.m[role] = e
	}
	v.mu.Unlock()
	return e.creds, e.found, nil
}

// query runs the auth query for role on a backend of the auth pool.
func (v *Verifiers) query(ctx context.Context, query, role string) (rolpassword string, exists bool, err error) {
	conn, err := v.Pool.Acquire(ctx)
	if err != nil {
		return "", false, err
	}
	pgs, ok := conn.Server().(interface{ PgConn() *pgconn.PgConn })
	if !ok {
		conn.Release()
		return "", false, errors.New("the auth pool's backend is not a PostgreSQL connection")
	}
	pg := pgs.PgConn()
	if err := pg.Conn().SetDeadline(time.Time{}); err != nil {
		conn.Destroy("clear deadline: " + err.Error())
		return "", false, err
	}
	res := pg.ExecParams(ctx, query, [][]byte{[]byte(role)}, nil, nil, nil).Read()
	var pgErr *pgconn.PgError
	switch {
	case errors.As(res.Err, &pgErr) && (pgErr.Code == pgwire.CodeCharacterNotInRepertoire || pgErr.Code == pgwire.CodeUntranslatableCharacter):
		// The name is not text in the connection's encoding (a client
		// sent bytes that are not UTF-8, say): no role has it, so it is
		// an unknown role (28P01 after the exchange), not a lookup that
		// failed (08006, and a warning at every such attempt).
		conn.Release()
		return "", false, nil
	case errors.As(res.Err, &pgErr):
		conn.Release() // an SQL error: the backend is idle again
		return "", false, fmt.Errorf("auth query: %w", res.Err)
	case res.Err != nil:
		conn.Destroy("auth query: " + res.Err.Error())
		return "", false, fmt.Errorf("auth query: %w", res.Err)
	}
	conn.Release()
	if len(res.Rows) == 0 {
		return "", false, nil
	}
	if len(res.Rows[0]) != 2 {
		return "", false, fmt.Errorf("auth query returned %d columns, want 2 (rolname, rolpassword)", len(res.Rows[0]))
	}
	return string(res.Rows[0][1]), true, nil
}

// authPassthrough authenticates sm's client against its role's verifier in
// the database and returns the keys to log in to the server with. Wrong
// password, unknown role, role without LOGIN and a role whose password is
// not a SCRAM verifier get the same 28P01, and no backend of the role is
// opened.
func (s *Server) authPassthrough(sm *startupMessage, conn net.Conn, lg *slog.Logger, v *Verifiers, deadline time.Time) (pool.ScramKeys, error) {
	if sm == nil || sm.backend == nil || sm.cancel {
		return pool.ScramKeys{}, errors.New("authenticate: no StartupMessage to authenticate")
	}
	ctx := context.Background()
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	creds, found, err := v.lookup(ctx, sm.user, lg)
	if err != nil {
		if ok, held := s.lookupLog.Allow(time.Now()); ok {
			lg.Warn("auth.passthrough: looking up the role's password failed", "err", err,
				"unlogged", held, "log_interval", s.lookupLog.Interval)
		}
		return pool.ScramKeys{}, newFatal(pgwire.CodeConnectionFailure,
			fmt.Sprintf("pgsidecar could not look up the password of role %q", sm.user),
			"the database is unreachable, or auth.user cannot run auth.query; the proxy's log says which")
	}
	if !found {
		creds = scramMockCredentials(sm.user)
	}
	ok, key, err := authSCRAMWith(sm, creds, found)
	if err != nil {
		var perr *pgError
		if errors.As(err, &perr) {
			return pool.ScramKeys{}, perr
		}
		return pool.ScramKeys{}, fmt.Errorf("authenticate %s (user %q, passthrough): %w", conn.RemoteAddr(), sm.user, err)
	}
	if !ok || !found || key == nil {
		return pool.ScramKeys{}, newFatal(pgwire.CodeInvalidPassword,
			fmt.Sprintf("password authentication failed for user %q", sm.user),
			"check the user name and password: with auth.passthrough they are the role's own in PostgreSQL, and the role needs LOGIN and a SCRAM-SHA-256 password")
	}
	return pool.ScramKeys{ClientKey: key, ServerKey: creds.ServerKey}, nil
}
