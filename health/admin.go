// The operator's HTTP endpoints: the JSON reads (/pools, /clients, /servers)
// and the writes under /admin/ that need the bearer token (reload, pause,
// resume, reconnect).

package health

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"
)

// Admin serves the operator's JSON reads (/pools, /clients, /servers) and
// writes (POST /admin/reload, /admin/pause, /admin/resume,
// /admin/reconnect). The writes need the bearer token.
type Admin struct {
	// Pools, Clients and Servers return what SHOW POOLS, SHOW CLIENTS and
	// SHOW SERVERS show on the console.
	Pools, Clients, Servers func() any
	// Do runs a write: action is "reload", "pause", "resume" or
	// "reconnect", db a database name or "" for all. An ErrBadRequest
	// (wrapped) answers 400, any other error 500.
	Do func(ctx context.Context, action, db string) (any, error)
	// Token returns admin.http_token as it is now; "" refuses every
	// write.
	Token func() string
}

// ErrBadRequest marks an Admin.Do error that is the caller's (an unknown
// database): 400 rather than 500.
var ErrBadRequest = errors.New("bad request")

// adminRoutes adds the admin endpoints to mux when cfg.Admin is set.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	a := s.cfg.Admin
	if a == nil {
		return
	}
	read := func(f func() any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { s.writeJSON(w, r, http.StatusOK, f()) }
	}
	mux.HandleFunc("GET /pools", read(a.Pools))
	mux.HandleFunc("GET /clients", read(a.Clients))
	mux.HandleFunc("GET /servers", read(a.Servers))
	for _, action := range []string{"reload", "pause", "resume", "reconnect"} {
		mux.HandleFunc("POST /admin/"+action, func(w http.ResponseWriter, r *http.Request) {
			if !authorized(a.Token(), r.Header.Values("Authorization")) {
				s.logRefusedWrite(action, r.RemoteAddr)
				w.Header().Set("WWW-Authenticate", `Bearer realm="pgsidecar"`)
				s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{
					"error": "unauthorized: send Authorization: Bearer <admin.http_token> (writes are refused while admin.http_token is empty)"})
				return
			}
			s.log.Info("admin command over HTTP", "action", action, "db", r.URL.Query().Get("db"), "remote", r.RemoteAddr)
			out, err := a.Do(r.Context(), action, r.URL.Query().Get("db"))
			switch {
			case errors.Is(err, ErrBadRequest):
				s.writeJSON(w, r, http.StatusBadRequest, map[string]string{"error": err.Error()})
			case err != nil:
				s.writeJSON(w, r, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			default:
				s.writeJSON(w, r, http.StatusOK, out)
			}
		})
	}
}

// authorized compares the bearer token in the request's only Authorization
// header with token in constant time (hashes first, so not even the length
// leaks). The scheme is matched without regard to case (RFC 9110 11.1). An
// empty token refuses everyone, and so do several Authorization headers:
// which of them would count is anybody's guess.
func authorized(token string, headers []string) bool {
	if token == "" || len(headers) != 1 {
		return false
	}
	scheme, got, ok := strings.Cut(headers[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	a, b := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(strings.TrimSpace(got)))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// logRefusedWrite logs a write refused for its credentials at most once per
// lograte.Interval, with the number not logged since: anyone who reaches
// the listener can send them, but an operator must see that someone tries.
func (s *Server) logRefusedWrite(action, remote string) {
	if ok, unlogged := s.refusedLog.Allow(time.Now()); ok {
		s.log.Warn("admin write refused over HTTP: no or wrong bearer token (admin.http_token)",
			"action", action, "remote", remote, "unlogged", unlogged,
			"log_interval", s.refusedLog.Interval)
	}
}
