// /stats, every pool's snapshot and the client counters with totals over the
// pools (Totals); and writeJSON, which every endpoint answers with.

package health

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"

	"github.com/pgsidecar/pgsidecar/pool"
)

// statsResponse is the /stats body.
type statsResponse struct {
	Clients any          `json:"clients"`
	Pools   []pool.Stats `json:"pools"`
	Totals  Totals       `json:"totals"`
}

// Totals sums the pools' gauges and counters. Peaks are not summed: the
// pools peaked at different moments, so a sum would describe no real
// instant.
type Totals struct {
	Pools           int          `json:"pools"`
	MaxSize         int          `json:"max_size"`
	Total           int          `json:"total"`
	Idle            int          `json:"idle"`
	Active          int          `json:"active"`
	Waiting         int          `json:"waiting"`
	Acquisitions    uint64       `json:"acquisitions"`
	AcquireTimeouts uint64       `json:"acquire_timeouts"`
	AcquireRejected uint64       `json:"acquire_rejected"`
	Connects        uint64       `json:"connects"`
	ConnectErrors   uint64       `json:"connect_errors"`
	Validations     uint64       `json:"validations"`
	Leaks           uint64       `json:"leaks"`
	Queries         uint64       `json:"queries"`
	Retired         pool.Retired `json:"retired"`
	// WaitAvgMs is the pools' average wait weighted by their acquisitions.
	WaitAvgMs float64 `json:"wait_avg_ms"`
	// WaitP99Ms is the worst pool's p99: percentiles of different windows
	// cannot be merged, and the worst is what an alert wants.
	WaitP99Ms float64 `json:"wait_p99_ms"`
}

// sumStats computes the totals over every pool.
func sumStats(stats []pool.Stats) Totals {
	var t Totals
	var weightedWait float64
	for _, st := range stats {
		t.Pools++
		t.MaxSize += st.MaxSize
		t.Total += st.Total
		t.Idle += st.Idle
		t.Active += st.Active
		t.Waiting += st.Waiting
		t.Acquisitions += st.Acquisitions
		t.AcquireTimeouts += st.AcquireTimeouts
		t.AcquireRejected += st.AcquireRejected
		t.Connects += st.Connects
		t.ConnectErrors += st.ConnectErrors
		t.Validations += st.Validations
		t.Leaks += st.Leaks
		t.Queries += st.Queries
		t.Retired.Lifetime += st.Retired.Lifetime
		t.Retired.Idle += st.Retired.Idle
		t.Retired.Queries += st.Retired.Queries
		t.Retired.Error += st.Retired.Error
		t.Retired.Validation += st.Retired.Validation
		t.Retired.Shutdown += st.Retired.Shutdown
		t.Retired.Reconnect += st.Retired.Reconnect
		weightedWait += st.WaitAvgMs * float64(st.Acquisitions)
		t.WaitP99Ms = max(t.WaitP99Ms, st.WaitP99Ms)
	}
	if t.Acquisitions > 0 {
		t.WaitAvgMs = weightedWait / float64(t.Acquisitions)
	}
	return t
}

// serveStats answers GET and HEAD /stats with everything the snapshots hold.
func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	stats := s.cfg.Pools()
	if stats == nil {
		stats = []pool.Stats{} // "pools": [] rather than null
	}
	s.writeJSON(w, r, http.StatusOK, statsResponse{
		Clients: s.cfg.Clients(),
		Pools:   stats,
		Totals:  sumStats(stats),
	})
}

// bufPool recycles encode buffers: /health is polled often and under load,
// so it should not allocate a fresh buffer per request.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeJSON encodes v completely before writing anything, so an encoding
// error becomes a clean 500 instead of a truncated 200.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		buf.Reset()
		bufPool.Put(buf)
	}()
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		s.log.Error("encode response", "path", r.URL.Path, "err", err)
		http.Error(w, "internal error: cannot encode response", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// Probes must see the state now, never a cached copy.
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return
	}
	// A write error means the client went away; there is no one to tell.
	_, _ = w.Write(buf.Bytes())
}
