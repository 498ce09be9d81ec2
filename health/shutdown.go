// Shutdown's closing of the health connections no handler runs on
// (connTracker), so a stalled client cannot hold up the process's exit.

package health

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// shutdownPoll is how often Shutdown closes the connections no handler
// runs on while it waits for the handlers that do.
const shutdownPoll = 50 * time.Millisecond

// connTracker knows every open connection of the server and whether a
// handler runs on it. net/http.Server.Shutdown closes idle keep-alive
// connections, but waits for one that has sent part of a request header
// (StateActive to net/http) until ReadHeaderTimeout (5 s), and for one
// that sent nothing (StateNew) as long: a stalled or hostile client
// delayed the exit after SIGTERM by up to 5 s. Such a connection has no
// request to finish, so Shutdown closes it at once.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]bool // true while a handler runs on it
}

type connKey struct{}

// connState is the http.Server's ConnState hook.
func (t *connTracker) connState(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateNew:
		if t.conns == nil {
			t.conns = map[net.Conn]bool{}
		}
		t.conns[c] = false
	case http.StateIdle:
		// The response is written whole: net/http sets StateIdle after
		// it flushed it, so a close now cuts no answer.
		if _, ok := t.conns[c]; ok {
			t.conns[c] = false
		}
	case http.StateHijacked, http.StateClosed:
		delete(t.conns, c)
	}
}

// connContext is the http.Server's ConnContext hook: the handler wrapper
// finds its connection there.
func (t *connTracker) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// wrap marks the request's connection busy from the start of h until
// its response is written (StateIdle, or the connection's close).
func (t *connTracker) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			t.mu.Lock()
			if _, ok := t.conns[c]; ok {
				t.conns[c] = true
			}
			t.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

// closeUnserved closes every connection no handler runs on: new, idle,
// or in the middle of a request header.
func (t *connTracker) closeUnserved() {
	t.mu.Lock()
	var idle []net.Conn
	for c, busy := range t.conns {
		if !busy {
			idle = append(idle, c)
		}
	}
	t.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
}
