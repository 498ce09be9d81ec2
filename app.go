// The running process (app): the pools, the proxy and the health listener
// started, signals waited on, the drain, and the start-up check of the
// open-file limit.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// stopGrace bounds how long the program waits for a component that was
// told to stop (after the drain itself, which shutdown_timeout bounds).
const stopGrace = 10 * time.Second

// app is one running pgsidecar: its pools, the proxy and the health
// listener, and the configuration they run with. Only the goroutine that
// called start touches its fields after start returns (wait, reload,
// drain), so they need no lock; the exceptions, read by the health and
// serve goroutines, are statsOrder, statsTargets, passthrough, wild and
// proxy (all fixed at start; the pools behind wild and the roles are read
// under their own locks) and the atomics stopping, shown and httpToken.
type app struct {
	log     *slog.Logger
	level   *slog.LevelVar
	path    string   // config file re-read on SIGHUP; "" for none
	environ []string // environment re-read on SIGHUP

	cfg     *config.Config        // the configuration running now
	targets []config.Target       // the databases served, in cfg's order
	pools   map[string]*pool.Pool // by target name
	// statsOrder is every pool in target order, fixed at start: the health
	// goroutine reads it while reload replaces targets.
	statsOrder []*pool.Pool
	// statsTargets names the databases of passthrough in target order.
	statsTargets []string
	// wild serves the databases entry "*" (nil without one); its pools
	// come and go while the process runs, under its own lock.
	wild *wildcard
	// group bounds every pool's backends together: max_total_connections
	// and each database's max_db_connections (pool.Group). Fixed at start;
	// its caps change on reload.
	group *pool.Group
	// passthrough serves auth.passthrough (nil without it): per database
	// name, the auth user's pool and the pools per role, fixed at start.
	passthrough map[string]*proxy.Passthrough

	proxy    *proxy.Server
	health   *health.Server
	ln       net.Listener // client listener
	healthLn net.Listener // health listener

	stopping atomic.Bool    // set when drain begins: a Serve return is then expected
	errc     chan error     // a listener that stopped on its own
	serving  sync.WaitGroup // the two Serve goroutines

	// reloadReq and shutdownReq carry the console's and the HTTP admin's
	// RELOAD and SHUTDOWN to wait (wiring.go); shown and httpToken are
	// what they read of the running configuration.
	reloadReq   chan chan error
	shutdownReq chan struct{}
	shown       atomic.Pointer[[][2]string]
	httpToken   atomic.Pointer[string]
}

// start builds and starts everything cfg describes. A database that is
// down is not an error (its pool reports UNHEALTHY); a port that cannot be
// opened is, and names the address.
func start(cfg *config.Config, path string, environ []string, logOut io.Writer) (*app, error) {
	level := new(slog.LevelVar)
	level.Set(cfg.Log.Level.Slog())
	a := &app{
		log:     newLogger(logOut, cfg.Log.Format, level),
		level:   level,
		path:    path,
		environ: environ,
		cfg:     cfg,
		pools:   map[string]*pool.Pool{},
		group:   pool.NewGroup(cfg.MaxTotalConnections),
		errc:    make(chan error, 2),

		reloadReq:   make(chan chan error),
		shutdownReq: make(chan struct{}, 1),
	}
	a.publish(cfg)
	targets, err := cfg.Targets()
	if err != nil {
		return nil, err
	}
	// Listen and the databases need a restart to change, so start is the
	// one place to catch an upstream that is this very proxy.
	if err := config.CheckSelfLoop(cfg.Listen, targets); err != nil {
		return nil, err
	}
	a.targets = targets

	for _, t := range targets {
		if t.Name == config.Wildcard {
			w, err := newWildcard(a, cfg, t) // pools per name, on demand
			if err != nil {
				a.closePools()
				return nil, fmt.Errorf("databases entry %q: %w", t.Name, err)
			}
			a.wild = w
			continue
		}
		a.group.SetDatabaseMax(t.Name, t.MaxDBConnections)
		p, err := pool.New(a.poolConfig(t))
		if err != nil {
			a.closePools()
			return nil, fmt.Errorf("database %s: %w", t.Name, err)
		}
		a.pools[t.Name] = p
		a.statsOrder = append(a.statsOrder, p)
		if cfg.Auth.Passthrough {
			if err := a.openPassthrough(cfg, t); err != nil {
				a.closePools()
				return nil, fmt.Errorf("database %s: %w", t.Name, err)
			}
		}
	}

	a.proxy, err = proxy.New(a.proxyConfig(cfg, targets))
	if err != nil {
		a.closePools()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	a.health = health.New(health.Config{
		Pools:    a.poolStats,
		Clients:  func() any { return clientsView{Stats: a.proxy.Stats(), Pinned: a.proxy.PinnedClients()} },
		Draining: a.proxy.Draining,
		Logger:   a.log,
		Admin:    a.healthAdmin(),
	})

	if a.ln, err = listen("listen", cfg.Listen); err != nil {
		a.closePools()
		return nil, err
	}
	if a.healthLn, err = listen("health.listen", cfg.Health.Listen); err != nil {
		a.ln.Close()
		a.closePools()
		return nil, err
	}

	a.serve("proxy", a.ln, a.proxy.Serve)
	a.serve("health", a.healthLn, a.health.Serve)

	if (cfg.Auth.Method == proxy.AuthTrust || cfg.Auth.Method == proxy.AuthPlain) && !loopback(a.ln.Addr()) {
		a.log.Warn("auth.method "+string(cfg.Auth.Method)+" on a listener other hosts can reach: "+
			"passwords are not checked (trust) or travel in clear text (plain)",
			"listen", a.ln.Addr().String())
	}

	if cfg.Auth.UsersFile != "" && len(cfg.Auth.FileUsers) == 0 {
		// PgBouncer starts with an empty auth_file too; a secret mounted
		// before it is filled is one reason. Say so: its logins get 28P01
		// until the file has them and a SIGHUP reads it.
		a.log.Warn("auth.users_file "+cfg.Auth.UsersFile+" holds no login (empty, or comments only): "+
			"no client can log in with it until it has lines and a SIGHUP reads it",
			"auth.users_file", cfg.Auth.UsersFile)
	}
	if limit, ok := openFileLimit(); ok {
		checkFDLimit(a.log, limit, fdsNeeded(cfg, targets))
	}

	dbs := make([]string, 0, len(targets))
	for _, t := range targets {
		dbs = append(dbs, t.Name+"="+t.Redacted())
	}
	a.log.Info("pgsidecar ready",
		"version", buildinfo.Version(),
		"listen", a.ln.Addr().String(),
		"health_listen", a.healthLn.Addr().String(),
		"mode", cfg.Pool.Mode,
		"auth_method", cfg.Auth.Method,
		"tls_mode", cfg.TLS.Client.Mode(),
		"tls_cert_sha256", cfg.TLS.Client.Fingerprint(),
		"databases", dbs,
		"config", displayPath(path))
	return a, nil
}

// listen opens addr for the option key, saying which option failed.
func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		return nil, fmt.Errorf("%s: cannot listen on %s: %w", key, addr, err)
	}
	return ln, nil
}

// serve runs one Serve in a goroutine the app owns: it ends when the
// server is shut down or closed in drain. A Serve that returns before the
// drain began is a failure, reported on errc.
func (a *app) serve(name string, ln net.Listener, serve func(net.Listener) error) {
	addr := ln.Addr().String()
	a.serving.Add(1)
	go func() {
		defer a.serving.Done()
		err := serve(ln)
		if a.stopping.Load() {
			return
		}
		if err == nil {
			err = errors.New("stopped without an error")
		}
		a.errc <- fmt.Errorf("%s listener on %s: %w", name, addr, err)
	}()
}

// poolStats snapshots every pool for the health listener. It runs on the
// health listener's goroutines, so it reads only what never changes after
// start (statsOrder, statsTargets, passthrough, wild), the "*" pools under
// their lock and the role pools under Roles' lock.
func (a *app) poolStats() []pool.Stats {
	out := make([]pool.Stats, 0, len(a.statsOrder))
	for _, p := range a.statsOrder {
		out = append(out, p.Stats())
	}
	if a.wild != nil {
		out = append(out, a.wild.stats()...)
	}
	for _, t := range a.statsTargets {
		for _, p := range a.passthrough[t].Roles.Pools() {
			out = append(out, p.Stats())
		}
	}
	return out
}

// wait serves until ctx ends, a listener fails, or a signal arrives:
// SIGHUP reloads, SIGTERM and SIGINT drain. hupc carries SIGHUPs apart
// from sigc (main subscribes them to a channel of their own): a burst of
// SIGHUPs must not fill sigc, or signal.Notify drops a SIGTERM sent
// meanwhile and the drain never begins. A SIGHUP on sigc reloads too.
func (a *app) wait(ctx context.Context, sigc, hupc <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return a.drain(sigc, hupc, "context cancelled")
		case err := <-a.errc:
			a.log.Error("a listener stopped on its own; shutting down", "err", err)
			if derr := a.drain(sigc, hupc, "listener failure"); derr != nil {
				return errors.Join(err, derr)
			}
			return err
		case <-hupc:
			a.reload()
		case sig := <-sigc:
			if sig == syscall.SIGHUP {
				a.reload()
				continue
			}
			return a.drain(sigc, hupc, sig.String())
		case done := <-a.reloadReq:
			done <- a.reload()
		case <-a.shutdownReq:
			return a.drain(sigc, hupc, "SHUTDOWN from the admin console")
		}
	}
}

// drain is the graceful stop: no transaction starts any more, each client
// leaves with 57P01 at its next transaction boundary, clients inside a
// transaction finish it for up to shutdown_timeout, and new connections get
// 57P03, while /health answers 503; then the pools and the health listener
// close. A second
// SIGTERM or SIGINT closes every client at once. It returns an error only
// when a component did not stop at all.
func (a *app) drain(sigc, hupc <-chan os.Signal, reason string) error {
	a.stopping.Store(true)
	// Draining from here on (before the log line, whose time marks it):
	// no transaction starts, /health answers 503.
	a.proxy.BeginDrain()
	timeout := a.cfg.ShutdownTimeout
	a.log.Info("draining: new clients get 57P03, each client leaves with 57P01 at its next transaction boundary",
		"reason", reason, "shutdown_timeout", timeout.String())
	started := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.proxy.Shutdown(ctx) }() // ends when ctx does, at the latest

	var shutdownErr error
	forced := false
wait:
	for {
		select {
		case shutdownErr = <-done:
			break wait
		case <-hupc:
			a.log.Warn("reload ignored: draining")
		case sig := <-sigc:
			if sig == syscall.SIGHUP {
				a.log.Warn("reload ignored: draining")
				continue
			}
			a.log.Warn("second signal: closing every client now", "signal", sig.String())
			forced = true
			cancel()
			// The guard starts before Close, which waits for every client
			// goroutine: it bounds the Close as well as the Shutdown.
			guard := time.NewTimer(stopGrace)
			defer guard.Stop()
			go a.proxy.Close() // ends when every client goroutine has; the guard bounds the wait for it
			select {
			case shutdownErr = <-done:
			case <-guard.C:
				shutdownErr = fmt.Errorf("proxy did not stop %v after Close", stopGrace)
			}
			break wait
		}
	}

	// Shutdown returns nil, or its context's error: DeadlineExceeded when
	// shutdown_timeout ran out, Canceled after a second signal.
	var failures []error
	switch {
	case forced:
		if shutdownErr != nil && !errors.Is(shutdownErr, context.Canceled) {
			failures = append(failures, shutdownErr)
		}
	case errors.Is(shutdownErr, context.DeadlineExceeded):
		a.log.Warn("shutdown_timeout reached: clients still inside a transaction were told 57P01 and disconnected; their transactions were rolled back",
			"shutdown_timeout", timeout.String())
	}

	a.closePools()

	hctx, hcancel := context.WithTimeout(context.Background(), stopGrace)
	defer hcancel()
	if err := a.health.Shutdown(hctx); err != nil {
		a.log.Warn("health listener did not stop gracefully; closing it", "err", err)
		_ = a.health.Close()
	}

	stopped := make(chan struct{})
	go func() { a.serving.Wait(); close(stopped) }() // ends once both Serve calls return
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		failures = append(failures, fmt.Errorf("listeners still serving %v after shutdown", stopGrace))
	}

	err := errors.Join(failures...)
	if err != nil {
		a.log.Error("pgsidecar stopped uncleanly", "err", err)
		return err
	}
	a.log.Info("pgsidecar stopped", "drain", time.Since(started).Round(time.Millisecond).String())
	return nil
}

// closePools closes every pool at once; each Close returns when its pool
// has stopped.
func (a *app) closePools() {
	var wg sync.WaitGroup
	if a.wild != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.wild.close() }() // ends when its pools have stopped
	}
	for _, p := range a.pools {
		wg.Add(1)
		go func() { defer wg.Done(); p.Close() }() // ends when the pool has stopped
	}
	for _, pt := range a.passthrough {
		wg.Add(2)
		go func() { defer wg.Done(); pt.Roles.Close() }()          // ends when the role pools have stopped
		go func() { defer wg.Done(); pt.Verifiers.Pool.Close() }() // ends when the auth pool has stopped
	}
	wg.Wait()
}

// loopback reports whether addr accepts connections from this host only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// displayPath renders the config file for the ready line.
func displayPath(path string) string {
	if path == "" {
		return "(none: defaults and environment)"
	}
	return path
}

// clientsView is /stats' "clients": the proxy's counters and, when there
// are any, the clients pinned to a backend by session state.
type clientsView struct {
	proxy.Stats
	Pinned []proxy.PinnedClient `json:"pinned,omitempty"`
}

// fdOverhead covers the descriptors that are neither clients nor backends:
// the listeners, the health listener's connections (health.MaxConns, 32,
// and a few being refused), the proxy's spare descriptor, the Go runtime's
// own.
const fdOverhead = 64

// fdsNeeded is how many descriptors the configured limits can make the
// proxy hold at once: every client the connection limits admit (with the
// admin console's reserve beyond max_client_conn), the backends, and
// fdOverhead. The backends are each configured target's
// max_size, capped by max_total_connections when it is set. Pools opened on
// demand (auth.passthrough's pool per role and its auth pools, a `*`
// entry's pools per database name) are not known at start: with
// max_total_connections set they count as that cap, which bounds them too;
// without it each such target counts as one pool, and the check may stay
// quiet where the proxy can still run out.
func fdsNeeded(cfg *config.Config, targets []config.Target) uint64 {
	var backends uint64
	onDemand := cfg.Auth.Passthrough
	for _, t := range targets {
		backends += uint64(t.Pool.MaxSize)
		onDemand = onDemand || t.Name == config.Wildcard
	}
	if c := uint64(cfg.MaxTotalConnections); c > 0 && (onDemand || backends > c) {
		backends = c
	}
	return uint64(cfg.Pool.MaxClientConn) + proxy.AdminReserve + uint64(cfg.Pool.MaxStartupConn) + backends + fdOverhead
}

// openFileLimit returns the soft RLIMIT_NOFILE (which Go raises to the
// hard limit at start).
func openFileLimit() (uint64, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return r.Cur, true
}

// checkFDLimit warns at start when the open-file limit is below what the
// configured limits can use: past it the proxy refuses clients with 53300
// before pool.max_client_conn is reached (see proxy's refuseOutOfFDs).
func checkFDLimit(log *slog.Logger, limit, need uint64) {
	if limit < need {
		log.Warn(fmt.Sprintf("the open-file limit is below what pool.max_client_conn + the admin console reserve (%d) + pool.max_startup_conn + the backends (the pools' max_size, or max_total_connections) can use: ", proxy.AdminReserve)+
			"past it new clients are refused with 53300; raise it (ulimit -n, LimitNOFILE=) or lower those limits",
			"open_file_limit", limit, "needed", need)
	}
}
