// Package pprofserver is pgsidecar's opt-in profiling listener
// (pgsidecar -pprof ADDR): Go's /debug/pprof/ handlers on a mux of their
// own, so nothing else is served there and the health listener never
// exposes them. It exists for measuring (make bench BENCH_PROFILE=1) and
// runs only when the flag is given.
package pprofserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Server is a running profiling listener.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{} // closed when the Serve goroutine has returned
}

// Start listens on addr, which must be a loopback address: profiles
// and goroutine dumps show query text and internals, and the listener has
// no authentication. The Serve goroutine it starts is owned by the
// returned Server and ends in Close.
func Start(addr string) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("-pprof %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("-pprof %q: only a loopback address is allowed (127.0.0.1:PORT or [::1]:PORT): the profiling endpoint has no authentication", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	p := &Server{
		// No WriteTimeout: a CPU profile or trace answers only after its
		// ?seconds=N.
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			// The listener failed on its own; profiling is a debugging aid,
			// so the proxy keeps running without it. slog.Default is the
			// configured logger by then (run sets it after start).
			slog.Default().Error("pprof listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return p, nil
}

// Addr is where the listener is bound (with the port chosen, when Start
// was given port 0).
func (p *Server) Addr() string { return p.ln.Addr().String() }

// Close stops the listener and any profile in progress, and waits for the
// Serve goroutine to return.
func (p *Server) Close() {
	p.srv.Close()
	<-p.done
}
