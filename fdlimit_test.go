package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// The start-up check counts every client the limits admit and every
// backend, and warns only when the open-file limit is below that.
func TestFDLimitCheck(t *testing.T) {
	cfg := config.Defaults()
	targets := []config.Target{{Pool: config.PoolConfig{MaxSize: 10}}, {Pool: config.PoolConfig{MaxSize: 5}}}
	need := fdsNeeded(&cfg, targets)
	if want := uint64(cfg.Pool.MaxClientConn+cfg.Pool.MaxStartupConn+15) + fdOverhead; need != want {
		t.Fatalf("fdsNeeded = %d, want %d", need, want)
	}
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
