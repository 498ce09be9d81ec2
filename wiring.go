// Wiring the configuration into the components: pool.Config and proxy.Config
// from the options, the console's and HTTP admin's way to the app (control,
// healthAdmin), the "*" entry's pools (wildcard), and auth.passthrough's pools.

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// optionNames maps the fields of pool.Config and proxy.Config that their
// hints mention to the options that set them, so a hint names what the
// operator can change (TestOptionNames checks each is an option).
var optionNames = map[string]string{
	"MaxSize":                "pool.max_size",
	"MaxWaiters":             "pool.max_waiters",
	"Mode":                   "pool.mode",
	"SessionState":           "pool.session_state",
	"MaxClientConn":          "pool.max_client_conn",
	"MaxStartupConn":         "pool.max_startup_conn",
	"AuthMethod":             "auth.method",
	"Users":                  "auth.users",
	"FailedLoginDelay":       "auth.failed_login_delay",
	"FailedLoginDelayMax":    "auth.failed_login_delay_max",
	"ShutdownTimeout":        "shutdown_timeout",
	"ClientLoginTimeout":     "pool.client_login_timeout",
	"QueryTimeout":           "pool.query_timeout",
	"IdleTransactionTimeout": "pool.idle_transaction_timeout",
	"ClientIdleTimeout":      "pool.client_idle_timeout",
	"MaxBackendErrors":       "pool.max_backend_errors",
	"MaxDBConnections":       "max_db_connections",
	"MaxTotalConnections":    "max_total_connections",
}

// optionName is pool.Config.OptionName and proxy.Config.OptionName.
func optionName(field string) string { return optionNames[field] }

// poolConfig translates a database's settings into a pool.Config, value for
// value: the pool takes every field as given, so 0 from the configuration
// keeps its meaning (off / unlimited / every time).
func (a *app) poolConfig(t config.Target) pool.Config {
	pc := t.Pool
	return pool.Config{
		Name:              t.PoolName(),
		Database:          t.Name,
		User:              t.Conn.User,
		Connect:           pool.Connector(t.Conn),
		MinSize:           pc.MinSize,
		MaxSize:           pc.MaxSize,
		MaxWaiters:        pc.MaxWaiters,
		AcquireTimeout:    pc.AcquireTimeout,
		ValidationQuery:   pc.ValidationQuery,
		ValidateAfterIdle: pc.ValidateAfterIdle,
		PeekAfterIdle:     pc.PeekAfterIdle,
		MaxLifetime:       pc.MaxLifetime,
		LifetimeJitter:    float64(pc.LifetimeJitter),
		MaxIdle:           pc.MaxIdle,
		MaxQueries:        pc.MaxQueries,
		MaxBackendErrors:  pc.MaxBackendErrors,
		LeakTimeout:       pc.LeakTimeout,
		ConnectTimeout:    pc.ConnectTimeout,
		IdleCheckInterval: pc.IdleCheckInterval,
		BackoffInitial:    pc.ReconnectBackoff,
		BackoffMax:        pc.ReconnectBackoffMax,
		HoldOnRestart:     pc.HoldOnRestart,
		Logger:            a.log,
		OptionName:        optionName,
		// Every pool, of every database and role, counts against the
		// caps; the database's own cap is set on the group by name
		// (start, reload, and the "*" entry's open).
		Group: a.group,
	}
}

// proxyConfig builds the proxy's configuration from cfg, serving targets
// with the app's pools.
func (a *app) proxyConfig(cfg *config.Config, targets []config.Target) proxy.Config {
	dbs := make(map[string]*proxy.Database, len(targets))
	var wild *proxy.Wildcard
	for _, t := range targets {
		if t.Name == config.Wildcard {
			wild = &proxy.Wildcard{Users: t.Users, Open: a.wild.open, Opened: a.wild.opened,
				SetPaused: a.wild.setPaused, Verifiers: a.wild.verifiers}
			continue
		}
		dbs[t.Name] = &proxy.Database{Name: t.Name, Pool: a.pools[t.Name], Users: t.Users, Listen: t.Conn, Upstream: t.Redacted(),
			Passthrough: a.passthrough[t.Name]}
	}
	return proxy.Config{
		Mode:                   cfg.Pool.Mode,
		MaxClientConn:          cfg.Pool.MaxClientConn,
		MaxStartupConn:         cfg.Pool.MaxStartupConn,
		AuthMethod:             cfg.Auth.Method,
		Databases:              dbs,
		Wildcard:               wild,
		ResetQuery:             cfg.Pool.ResetQuery,
		SessionState:           cfg.Pool.SessionState,
		MaxPreparedStatements:  cfg.Pool.MaxPreparedStatements,
		MaxMessageSize:         cfg.MaxMessageSize,
		MaxClientBuffer:        cfg.MaxClientBuffer,
		ClientLoginTimeout:     cfg.Pool.ClientLoginTimeout,
		QueryTimeout:           cfg.Pool.QueryTimeout,
		IdleTransactionTimeout: cfg.Pool.IdleTransactionTimeout,
		ClientIdleTimeout:      cfg.Pool.ClientIdleTimeout,
		Logger:                 a.log,
		OptionName:             optionName,

		FailedLoginDelay:         cfg.Auth.FailedLoginDelay,
		FailedLoginDelayMax:      cfg.Auth.FailedLoginDelayMax,
		FailedLoginDelayLoopback: cfg.Auth.FailedLoginDelayLoopback,

		TLS:   cfg.TLS.Client,
		Admin: a.adminConfig(cfg, targets),
	}
}

// controlTimeout bounds how long a console or HTTP RELOAD waits for the
// app's goroutine to take it (it is busy only while draining or reloading).
const controlTimeout = 5 * time.Second

// httpPauseWait bounds an HTTP PAUSE's wait for the transactions in
// flight: below the health listener's write timeout, so the answer still
// gets out.
const httpPauseWait = 8 * time.Second

// control is proxy.Control: the console's (and the HTTP admin's) way to
// the app. Reload and Shutdown are handed to the app's goroutine (wait),
// which alone touches the running configuration.
type control struct{ a *app }

var _ proxy.Control = control{}

// Reload re-reads the configuration as SIGHUP does.
func (c control) Reload() error {
	done := make(chan error, 1)
	select {
	case c.a.reloadReq <- done:
	case <-time.After(controlTimeout):
		return errors.New("pgsidecar is busy (draining or reloading); try again")
	}
	return <-done
}

// Shutdown begins the drain SIGTERM begins.
func (c control) Shutdown() {
	select {
	case c.a.shutdownReq <- struct{}{}:
	default: // already asked
	}
}

// ShowConfig is the running configuration, secrets redacted.
func (c control) ShowConfig() [][2]string { return *c.a.shown.Load() }

// adminConfig builds the console's configuration from cfg.
func (a *app) adminConfig(cfg *config.Config, targets []config.Target) *proxy.AdminConfig {
	full, stats, err := cfg.AdminLogins(targets)
	if err != nil {
		// Validate has refused such a configuration already.
		a.log.Error("admin console disabled", "err", err.Error())
		return nil
	}
	return &proxy.AdminConfig{Database: cfg.Admin.Database, Users: full, StatsUsers: stats, Control: control{a}}
}

// publish makes cfg what SHOW CONFIG and the HTTP token check read.
func (a *app) publish(cfg *config.Config) {
	shown := cfg.Show()
	a.shown.Store(&shown)
	token := cfg.Admin.HTTPToken
	a.httpToken.Store(&token)
}

// healthAdmin wires the HTTP admin endpoints to the proxy and the app.
func (a *app) healthAdmin() *health.Admin {
	return &health.Admin{
		Pools:   func() any { return a.proxy.Pools() },
		Clients: func() any { return a.proxy.Clients() },
		Servers: func() any { return a.proxy.Servers() },
		Token:   func() string { return *a.httpToken.Load() },
		Do: func(ctx context.Context, action, db string) (any, error) {
			if db != "" && !a.proxy.HasDatabase(db) {
				return nil, fmt.Errorf("%w: database %q is not served by pgsidecar", health.ErrBadRequest, db)
			}
			var err error
			res := map[string]any{"action": action, "database": db}
			switch action {
			case "reload":
				err = control{a}.Reload()
			case "pause":
				ctx, cancel := context.WithTimeout(ctx, httpPauseWait)
				defer cancel()
				var held int
				held, err = a.proxy.Pause(ctx, db)
				res["held"] = held
			case "resume":
				err = a.proxy.Resume(db)
			case "reconnect":
				err = a.proxy.Reconnect(db)
			}
			if err != nil {
				return nil, err
			}
			res["ok"] = true
			return res, nil
		},
	}
}

// wildcard serves the databases entry "*": a pool per database name,
// opened when an authenticated client first asks for the name, closed when
// the server says the database does not exist, or at shutdown. Every open
// pool belongs to a database the server has, so their number is bounded by
// the server's databases.
type wildcard struct {
	a *app

	// verifiers serves auth.passthrough (nil without it): the roles of
	// every database of the entry are looked up by one auth pool, in the
	// database the entry's URL names (roles are the cluster's, so any
	// database answers; PgBouncer's auth_dbname), before any pool of the
	// client's database is opened. Fixed at start.
	verifiers *proxy.Verifiers

	mu     sync.Mutex
	target config.Target              // the "*" entry, as last configured
	dbs    map[string]*proxy.Database // by database name
	// paused: a PAUSE of every database is on; open starts its pools
	// paused.
	paused bool
	closed bool
	wg     sync.WaitGroup // missing goroutines
}

func newWildcard(a *app, cfg *config.Config, t config.Target) (*wildcard, error) {
	w := &wildcard{a: a, target: t, dbs: map[string]*proxy.Database{}}
	if cfg.Auth.Passthrough {
		authPool, err := pool.New(a.authPoolConfig(cfg, t))
		if err != nil {
			return nil, fmt.Errorf("auth pool: %w", err)
		}
		w.verifiers = &proxy.Verifiers{Pool: authPool, Query: cfg.Auth.Query, TTL: cfg.Auth.CacheTTL}
	}
	return w, nil
}

// targetFor is the "*" entry made concrete for one database name.
func (w *wildcard) targetFor(name string) config.Target {
	t := w.target
	t.Name = name
	t.Conn = t.Conn.Copy()
	t.Conn.Database = name
	return t
}

// templateDatabases are PostgreSQL's own template databases. CREATE
// DATABASE copies template1 unless told otherwise, and fails with 55006
// ("source database is being accessed by other users") while any other
// session is connected to its template: pooled idle backends on template1
// would break every CREATE DATABASE on the server, the application's own
// (run from a template1 session) included.
var templateDatabases = map[string]bool{"template0": true, "template1": true}

// poolConfig is the pool configuration of one database of the "*" entry:
// a template's pool keeps no backend idle (none warm, each closed when its
// client is done), so it holds sessions on the template only while clients
// use it, as direct connections would.
func (w *wildcard) poolConfig(t config.Target) pool.Config {
	pc := w.a.poolConfig(t)
	if templateDatabases[t.Conn.Database] {
		pc.MinSize, pc.NoIdle = 0, true
	}
	return pc
}

// open is proxy.Wildcard.Open.
func (w *wildcard) open(name string) (*proxy.Database, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, errors.New("pgsidecar is shutting down")
	}
	if db := w.dbs[name]; db != nil {
		return db, nil
	}
	t := w.targetFor(name)
	w.a.group.SetDatabaseMax(name, t.MaxDBConnections) // each name on its own, as PgBouncer's "*"
	pc := w.poolConfig(t)
	// The Database is known only once New returns, and New starts the
	// first connect; missing takes w.mu, which open holds until then.
	ref := new(atomic.Pointer[proxy.Database])
	var fired atomic.Bool
	watch := func(connect pool.ConnectFunc) pool.ConnectFunc {
		return func(ctx context.Context) (pool.Server, error) {
			srv, err := connect(ctx)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == pgwire.CodeInvalidCatalogName && !fired.Swap(true) {
				w.mu.Lock()
				if !w.closed {
					w.wg.Add(1)
					// Owned by w: ends once the pools are closed; close waits.
					go func() { defer w.wg.Done(); w.missing(name, ref) }()
				}
				w.mu.Unlock()
			}
			return srv, err
		}
	}
	if w.verifiers == nil {
		pc.Connect = watch(pc.Connect)
	}
	p, err := pool.New(pc)
	if err != nil {
		return nil, fmt.Errorf("database %s (%s): %w", name, w.target.Key, err)
	}
	db := &proxy.Database{Name: name, Pool: p, Users: t.Users, Listen: t.Conn, Upstream: t.Redacted()}
	if w.verifiers != nil {
		// Pools per (name, role), from this name's pool settings; the
		// caps count them under name. Their connects, not the database
		// pool's, tell that the database is missing: the client waits in
		// its role's pool and must get that pool's 3D000, not see the
		// pool closed under it by the database pool's first connect.
		db.Passthrough = &proxy.Passthrough{Verifiers: w.verifiers, Roles: w.a.newRoles(w.poolConfig(t), t, watch)}
	}
	ref.Store(db)
	if w.paused {
		// Before any client has them. Nobody holds a backend yet, so
		// the waits end at once.
		p.Pause()
		if db.Passthrough != nil {
			db.Passthrough.Roles.Pause()
		}
	}
	w.dbs[name] = db
	w.a.log.Info("pool opened for a database of the \"*\" entry", "database", name, "pool", t.PoolName())
	return db, nil
}

// missing closes name's pool after its connect found no such database
// (3D000): a typo, or a database dropped since. A pool left behind would
// stay UNHEALTHY, turning /health 503 for a database nobody serves. The
// next client asking for the name opens a fresh pool (the database may
// have been created meanwhile). ref is the Database whose connect failed:
// a newer one under the same name is left alone.
func (w *wildcard) missing(name string, ref *atomic.Pointer[proxy.Database]) {
	w.mu.Lock()
	db := w.dbs[name]
	mine := db != nil && db == ref.Load()
	if mine {
		delete(w.dbs, name)
	}
	w.mu.Unlock()
	if mine {
		// The pool fails its waiters with the connect's 3D000 when it
		// records the failure, under its lock, after the connect returns
		// (the state leaves INITIALIZING then). Closed before that, they
		// got "pool is shutting down" (57P01) instead: TestWildcardDatabase
		// under load. The wait is bounded; it ends as soon as the
		// connect goroutine takes the lock.
		for until := time.Now().Add(time.Second); db.Pool.State() == pool.StateInitializing && time.Now().Before(until); {
			time.Sleep(5 * time.Millisecond)
		}
		w.a.log.Info("pool closed: the server has no such database", "database", name, "pool", db.Pool.Name())
		db.Pool.Close()
		if db.Passthrough != nil {
			db.Passthrough.Roles.Close()
		}
	}
}

// setPaused is proxy.Wildcard.SetPaused.
func (w *wildcard) setPaused(paused bool) {
	w.mu.Lock()
	w.paused = paused
	w.mu.Unlock()
}

// opened is proxy.Wildcard.Opened: the databases served now.
func (w *wildcard) opened() []*proxy.Database {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*proxy.Database, 0, len(w.dbs))
	for _, db := range w.dbs {
		out = append(out, db)
	}
	return out
}

// stats snapshots the open pools, by database name, each database's
// pools per role after its own.
func (w *wildcard) stats() []pool.Stats {
	w.mu.Lock()
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range w.dbs {
			if !yield(n) {
				return
			}
		}
	})
	pools := make([]*pool.Pool, 0, len(names))
	var roles []*pool.Roles
	for _, n := range names {
		pools = append(pools, w.dbs[n].Pool)
		if pt := w.dbs[n].Passthrough; pt != nil {
			roles = append(roles, pt.Roles)
		}
	}
	w.mu.Unlock()
	for _, r := range roles {
		pools = append(pools, r.Pools()...)
	}
	out := make([]pool.Stats, 0, len(pools))
	for _, p := range pools {
		out = append(out, p.Stats())
	}
	return out
}

// reconfigure applies a reloaded "*" entry (of cfg, the reloaded
// configuration; running is the one before): its pool settings to every
// open pool, its logins to later clients.
func (w *wildcard) reconfigure(running, cfg *config.Config, t config.Target) {
	w.mu.Lock()
	// A new password (a rotated password_file) reaches the pools' next
	// connects the same way as new settings.
	settings := t.Pool != w.target.Pool
	changed := settings || t.Conn.Password != w.target.Conn.Password
	authChanged := settings || authConn(cfg, t).Password != authConn(running, w.target).Password
	w.target = t
	var dbs []*proxy.Database
	for _, db := range w.dbs {
		dbs = append(dbs, db)
		w.a.group.SetDatabaseMax(db.Name, t.MaxDBConnections)
	}
	w.mu.Unlock()
	if changed {
		for _, db := range dbs {
			db.Pool.Reconfigure(w.poolConfig(w.targetFor(db.Name)))
		}
	}
	if settings {
		for _, db := range dbs {
			if db.Passthrough != nil {
				db.Passthrough.Roles.Reconfigure(w.poolConfig(w.targetFor(db.Name))) // each role keeps its own login
			}
		}
	}
	if w.verifiers != nil {
		if authChanged {
			w.verifiers.Pool.Reconfigure(w.a.authPoolConfig(cfg, t))
		}
		w.verifiers.Configure(cfg.Auth.Query, cfg.Auth.CacheTTL)
	}
}

// close closes every pool and refuses new ones; it returns when they have
// stopped.
func (w *wildcard) close() {
	w.mu.Lock()
	w.closed = true
	dbs := w.dbs
	w.dbs = map[string]*proxy.Database{}
	w.mu.Unlock()
	w.wg.Wait() // no missing() runs after this: closed is set
	var wg sync.WaitGroup
	for _, db := range dbs {
		wg.Add(1)
		go func() { defer wg.Done(); db.Pool.Close() }() // ends when the pool has stopped
		if db.Passthrough != nil {
			wg.Add(1)
			go func() { defer wg.Done(); db.Passthrough.Roles.Close() }() // ends when the role pools have stopped
		}
	}
	if w.verifiers != nil {
		wg.Add(1)
		go func() { defer wg.Done(); w.verifiers.Pool.Close() }() // ends when the auth pool has stopped
	}
	wg.Wait()
}

// authPoolSize bounds the auth user's pool per database (auth.passthrough):
// one lookup per role per auth.cache_ttl is light, and these backends
// count against the server's max_connections beside the roles' pools.
const authPoolSize = 2

// openPassthrough builds auth.passthrough for t: the auth user's small pool
// that runs auth.query, and the pools per role, each made from t's pool
// settings and logging in as the role with the keys of its latest login.
func (a *app) openPassthrough(cfg *config.Config, t config.Target) error {
	authPool, err := pool.New(a.authPoolConfig(cfg, t))
	if err != nil {
		return fmt.Errorf("auth pool: %w", err)
	}
	roles := a.newRoles(a.poolConfig(t), t, nil)
	if a.passthrough == nil {
		a.passthrough = map[string]*proxy.Passthrough{}
	}
	a.passthrough[t.Name] = &proxy.Passthrough{
		Verifiers: &proxy.Verifiers{Pool: authPool, Query: cfg.Auth.Query, TTL: cfg.Auth.CacheTTL},
		Roles:     roles,
	}
	a.statsTargets = append(a.statsTargets, t.Name)
	return nil
}

// newRoles makes the pools per role of t's database from base, each
// logging in to t's server as its role with the keys of its latest login;
// wrap, when set, wraps each role's connect.
func (a *app) newRoles(base pool.Config, t config.Target, wrap func(pool.ConnectFunc) pool.ConnectFunc) *pool.Roles {
	return pool.NewRoles(base, func(role string, keys func() pool.ScramKeys) pool.ConnectFunc {
		rc := t.Conn.Copy()
		rc.User, rc.Password = role, ""
		connect := pool.PassthroughConnector(rc, keys)
		if wrap != nil {
			connect = wrap(connect)
		}
		return connect
	})
}

// authConn is how the auth user of t logs in: auth.user ("" = the URL's
// user) with its auth.users password (which may come from a
// password_file), else, for the URL's own user, the URL's.
func authConn(cfg *config.Config, t config.Target) *pgconn.Config {
	c := t.Conn.Copy()
	if cfg.Auth.User != "" && cfg.Auth.User != t.Conn.User {
		c.User, c.Password = cfg.Auth.User, ""
	}
	for _, u := range cfg.Auth.AllUsers() {
		if u.Name == c.User && !proxy.IsPasswordHash(u.Password) {
			c.Password = u.Password
		}
	}
	return c
}

// authPoolConfig is the auth user's pool for t: at most authPoolSize
// backends, none kept warm.
func (a *app) authPoolConfig(cfg *config.Config, t config.Target) pool.Config {
	c := authConn(cfg, t)
	ac := a.poolConfig(t)
	ac.User = c.User
	ac.Name = t.Name + "/" + c.User + " (auth.query)"
	ac.Connect = pool.Connector(c)
	ac.MinSize, ac.MaxSize = 0, authPoolSize
	return ac
}
