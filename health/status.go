package health

import (
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
