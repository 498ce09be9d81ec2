package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// The start-up check counts every client the limits admit and every
// backend, and warns only when the open-file limit is below that.
func TestFDLimitCheck(t *testing.T) {
	cfg := config.Defaults()
	targets := []config.Target{{Pool: config.PoolConfig{MaxSize: 10}}, {Pool: config.PoolConfig{MaxSize: 5}}}
	need := fdsNeeded(&cfg, targets)
	if want := uint64(cfg.Pool.MaxClientConn+cfg.Pool.MaxStartupConn+15) + proxy.AdminReserve + fdOverhead; need != want {
		t.Fatalf("fdsNeeded = %d, want %d", need, want)
	}
	clients := uint64(cfg.Pool.MaxClientConn+cfg.Pool.MaxStartupConn) + proxy.AdminReserve + fdOverhead
	// max_total_connections caps the backends below the pools' sum ...
	cfg.MaxTotalConnections = 12
	if got := fdsNeeded(&cfg, targets); got != clients+12 {
		t.Fatalf("with max_total_connections 12: fdsNeeded = %d, want %d", got, clients+12)
	}
	// ... and bounds pools opened on demand, which the sum cannot count.
	cfg.MaxTotalConnections = 100
	if got := fdsNeeded(&cfg, targets); got != clients+15 {
		t.Fatalf("with max_total_connections 100 and fixed pools: fdsNeeded = %d, want %d", got, clients+15)
	}
	if got := fdsNeeded(&cfg, append(targets, config.Target{Name: config.Wildcard, Pool: config.PoolConfig{MaxSize: 5}})); got != clients+100 {
		t.Fatalf("with a * entry and max_total_connections 100: fdsNeeded = %d, want %d", got, clients+100)
	}
	cfg.Auth.Passthrough = true
	if got := fdsNeeded(&cfg, targets); got != clients+100 {
		t.Fatalf("with auth.passthrough and max_total_connections 100: fdsNeeded = %d, want %d", got, clients+100)
	}
	cfg.MaxTotalConnections, cfg.Auth.Passthrough = 0, false
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	checkFDLimit(log, need, need)
	if buf.Len() != 0 {
		t.Fatalf("warned at a sufficient limit: %s", buf.String())
	}
	checkFDLimit(log, 1024, need)
	if !strings.Contains(buf.String(), "open-file limit") || !strings.Contains(buf.String(), "open_file_limit=1024") {
		t.Fatalf("no warning at a limit of 1024: %q", buf.String())
	}
}
