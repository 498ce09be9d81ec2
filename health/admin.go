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
			if !authorized(a.Token(), r.Header.Get("Authorization")) {
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

// authorized compares the bearer token in header with token in constant
// time (hashes first, so not even the length leaks). An empty token
// refuses everyone.
func authorized(token, header string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if token == "" || !ok {
		return false
	}
	a, b := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(strings.TrimSpace(got)))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}
