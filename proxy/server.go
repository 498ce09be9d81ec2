package proxy

import (
	"context"
	"net"
)

// Server accepts PostgreSQL clients and relays them onto pooled backends.
// Its lifecycle follows net/http.Server: Serve, Shutdown(ctx), Close.
type Server struct{}

// New checks cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) { return &Server{}, nil }

// Serve accepts clients on ln until Shutdown or Close. It returns
// ErrServerClosed after Shutdown/Close.
func (s *Server) Serve(ln net.Listener) error { return nil }

// Shutdown stops accepting, closes idle clients with 57P01 admin_shutdown,
// lets clients inside a transaction finish until ctx ends, then closes the rest.
func (s *Server) Shutdown(ctx context.Context) error { return nil }

// Close closes the listener and every client at once.
func (s *Server) Close() error { return nil }

// Reload applies settings that may change live (MaxClientConn, AuthMethod,
// the users of each database). Pools are reconfigured by their owner.
func (s *Server) Reload(cfg Config) error { return nil }

// Stats returns a snapshot of the client counters.
func (s *Server) Stats() Stats { return Stats{} }

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return false }
