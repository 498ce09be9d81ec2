package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer is the opt-in profiling listener (-pprof ADDR): Go's
// /debug/pprof/ handlers on a mux of their own, so nothing else is served
// there and the health listener never exposes them. It exists for
// measuring (make bench BENCH_PROFILE=1) and is off unless the flag is
// given.
type pprofServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{} // closed when the Serve goroutine has returned
}

// startPprof listens on addr, which must be a loopback address: profiles
// and goroutine dumps show query text and internals, and the listener has
// no authentication. The Serve goroutine it starts is owned by the
// returned server and ends in close.
func startPprof(addr string) (*pprofServer, error) {
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
	p := &pprofServer{
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

// addr is where the listener is bound (the port, when addr asked for 0).
func (p *pprofServer) addr() string { return p.ln.Addr().String() }

// close stops the listener and any profile in progress, and waits for the
// Serve goroutine to return.
func (p *pprofServer) close() {
	p.srv.Close()
	<-p.done
}
