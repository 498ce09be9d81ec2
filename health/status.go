// Liveness, readiness and health: /livez, /readyz and /health, and how the
// pools' states fold into one status.

package health

import (
	"fmt"
	"net/http"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Overall statuses reported by /health.
const (
	StatusOK        = "ok"        // every pool HEALTHY
	StatusDegraded  = "degraded"  // serving, but some pool DEGRADED or RECOVERING
	StatusUnhealthy = "unhealthy" // some pool cannot serve (or is not ready yet)
	StatusDraining  = "draining"  // graceful shutdown has begun
)

// healthResponse is the /health body.
type healthResponse struct {
	Status  string        `json:"status"`
	Version string        `json:"version"` // the build's, as `pgsidecar version` prints it
	Pools   []poolSummary `json:"pools"`
}

// poolSummary is the part of pool.Stats a load balancer or a human glancing
// at /health needs; /stats has the rest.
type poolSummary struct {
	Name        string     `json:"name"`
	Database    string     `json:"database"`
	User        string     `json:"user"`
	State       pool.State `json:"state"`
	StateReason string     `json:"state_reason"`
	Total       int        `json:"total"`
	Idle        int        `json:"idle"`
	Active      int        `json:"active"`
	Waiting     int        `json:"waiting"`
	MaxSize     int        `json:"max_size"`
}

// livezResponse is the /livez body.
type livezResponse struct {
	Status string `json:"status"` // always "alive"
}

// serveLivez answers GET and HEAD /livez: 200 whenever the process is up
// and its listeners serve, whatever the database does. A liveness probe
// restarts what fails it, and restarting the sidecar cannot bring a
// database back: it would only drop the clients that are still served
// (from a pool that is DEGRADED, or once the database returns). It stays
// 200 during a drain too, so the drain is not cut short.
func (s *Server) serveLivez(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, r, http.StatusOK, livezResponse{Status: "alive"})
}

// readyzResponse is the /readyz body: the verdict and, when not ready,
// why, so that `kubectl describe` shows it.
type readyzResponse struct {
	Ready  bool   `json:"ready"`
	Status string `json:"status"` // "ready", StatusDraining or StatusUnhealthy
	Reason string `json:"reason,omitempty"`
}

// serveReadyz answers GET and HEAD /readyz: 200 while a client routed here
// can get a backend from every pool, 503 while some pool cannot give one
// (UNHEALTHY: the database is unreachable; INITIALIZING: not connected
// yet; shutting down) or while the process drains. The pools learn of a
// dead database without traffic through the socket peek and the idle
// check (pool.idle_check_interval), so this turns 503 within about
// idle_check_interval + connect_timeout.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Draining() {
		s.writeJSON(w, r, http.StatusServiceUnavailable, readyzResponse{Status: StatusDraining, Reason: "graceful shutdown in progress"})
		return
	}
	for _, st := range s.cfg.Pools() {
		if !ready(st.State) {
			s.writeJSON(w, r, http.StatusServiceUnavailable, readyzResponse{
				Status: StatusUnhealthy,
				Reason: fmt.Sprintf("pool %s is %s: %s", st.Name, st.State, st.StateReason),
			})
			return
		}
	}
	s.writeJSON(w, r, http.StatusOK, readyzResponse{Ready: true, Status: "ready"})
}

// serveHealth answers GET and HEAD /health: 200 while the process can serve
// clients, 503 while it cannot or should not receive new ones.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	stats := s.cfg.Pools()
	status, code := evaluate(stats, s.cfg.Draining())
	resp := healthResponse{Status: status, Version: buildinfo.Version(), Pools: make([]poolSummary, 0, len(stats))}
	for _, st := range stats {
		resp.Pools = append(resp.Pools, poolSummary{
			Name:        st.Name,
			Database:    st.Database,
			User:        st.User,
			State:       st.State,
			StateReason: st.StateReason,
			Total:       st.Total,
			Idle:        st.Idle,
			Active:      st.Active,
			Waiting:     st.Waiting,
			MaxSize:     st.MaxSize,
		})
	}
	s.writeJSON(w, r, code, resp)
}

// evaluate folds the pools' states into one status and HTTP code. Draining
// wins over everything: a shutting-down process must lose its traffic even
// if every pool is fine. Otherwise the worst pool decides, because a client
// routed here may need any of them.
func evaluate(stats []pool.Stats, draining bool) (status string, code int) {
	if draining {
		return StatusDraining, http.StatusServiceUnavailable
	}
	status, code = StatusOK, http.StatusOK
	for _, st := range stats {
		switch {
		case !ready(st.State):
			return StatusUnhealthy, http.StatusServiceUnavailable
		case st.State != pool.StateHealthy:
			status = StatusDegraded
		}
	}
	return status, code
}

// ready reports whether a pool in state st can serve clients. INITIALIZING
// is not ready (its first connection has not succeeded yet); an unknown
// state is treated as not ready, so a newer pool state fails safe.
func ready(st pool.State) bool {
	switch st {
	case pool.StateHealthy, pool.StateDegraded, pool.StateRecovering:
		return true
	default:
		return false
	}
}
