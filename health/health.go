// Package health serves pgsidecar's HTTP side door: /livez and /readyz
// for orchestrators' probes, /health (the detailed status) for load
// balancers and people, /stats for people and scripts, /metrics for
// Prometheus. Every handler reads only in-memory snapshots handed in through
// Config, never the database, so the listener stays fast and truthful while
// the proxy is under load or the upstream is down. It never imports proxy:
// the caller wires the proxy's counters in as plain functions.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/lograte"
	"github.com/pgsidecar/pgsidecar/pool"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Timeouts of the HTTP server. The endpoints answer from memory in
// microseconds, so anything slow is a stuck or hostile client; these bound
// what one such client can hold on to.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
)

// Config wires the health listener to the rest of the process. Every field
// is optional: a nil function reads as "nothing to report" (no pools, no
// client counters, not draining), which keeps the listener usable in tests
// and during start-up before the proxy exists.
type Config struct {
	// Pools returns a snapshot of every pool. It must not block on the
	// data path (pool.Pool.Stats is built for that).
	Pools func() []pool.Stats
	// Clients returns the proxy's client counters (proxy.Stats in
	// practice). It is served as JSON under "clients" in /stats, and its
	// numeric fields are exported in /metrics as clientSeries types them.
	Clients func() any
	// Draining reports whether a graceful shutdown has begun (the app
	// wires proxy.Server.Draining, which proxy.Server.BeginDrain sets);
	// while it does, /health and /readyz answer 503 so that traffic moves
	// elsewhere, and /livez stays 200 so the drain is not cut short.
	Draining func() bool
	// Logger receives server errors; default slog.Default().
	Logger *slog.Logger
	// Admin adds the operator's endpoints (admin.go); nil leaves them out.
	Admin *Admin
}

// Server is the health/stats/metrics HTTP server. Its lifecycle follows
// net/http.Server: Serve, then Shutdown or Close.
type Server struct {
	cfg     Config
	log     *slog.Logger
	handler http.Handler
	srv     *http.Server
	conns   connTracker // for Shutdown

	// Admin writes refused for their credentials, logged at most once
	// per lograte.Interval (logRefusedWrite).
	refusedLog lograte.Limiter
}

// New returns a Server that is not yet listening.
func New(cfg Config) *Server {
	if cfg.Pools == nil {
		cfg.Pools = func() []pool.Stats { return nil }
	}
	if cfg.Clients == nil {
		cfg.Clients = func() any { return nil }
	}
	if cfg.Draining == nil {
		cfg.Draining = func() bool { return false }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "health"),
		refusedLog: lograte.Limiter{Interval: lograte.Interval}}
	s.handler = s.routes()
	s.srv = &http.Server{
		Handler:           s.conns.wrap(s.handler),
		ConnState:         s.conns.connState,
		ConnContext:       s.conns.connContext,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// net/http reports accept and TLS errors through a *log.Logger;
		// route them into slog so they share the process's format.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s
}

// routes builds the mux. The method-qualified patterns give HEAD for free
// on GET routes, 405 with an Allow header for other methods, and 404 for
// every other path.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", s.serveLivez)
	mux.HandleFunc("GET /readyz", s.serveReadyz)
	mux.HandleFunc("GET /health", s.serveHealth)
	mux.HandleFunc("GET /stats", s.serveStats)
	mux.Handle("GET /metrics", newMetricsHandler(s.cfg, s.log))
	s.adminRoutes(mux)
	return mux
}

// Serve answers requests on ln until Shutdown or Close, after which it
// returns ErrServerClosed. It closes ln when it returns. It holds at most
// MaxConns connections open; it answers others 503 at once.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Debug("health listener started", "addr", ln.Addr().String())
	err := s.srv.Serve(newLimitListener(ln, s.log))
	if err != nil && err != ErrServerClosed {
		return fmt.Errorf("health: serve on %s: %w", ln.Addr(), err)
	}
	return err
}

// Shutdown stops accepting, lets the requests whose handler runs finish
// until ctx ends, and closes every other connection at once: idle
// keep-alive ones, and those that sent nothing or part of a request header
// (connTracker), which net/http would wait for up to its header timeout.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(ctx) }() // ends when the handlers have, or ctx
	t := time.NewTicker(shutdownPoll)
	defer t.Stop()
	for {
		// Again until done: a connection can send its first byte while
		// net/http is closing the idle ones.
		s.conns.closeUnserved()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("health: shutdown: %w", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// Close closes the listener and every connection at once.
func (s *Server) Close() error {
	if err := s.srv.Close(); err != nil {
		return fmt.Errorf("health: close: %w", err)
	}
	return nil
}
