package main

import (
	"log/slog"
	"syscall"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// fdOverhead covers the descriptors that are neither clients nor backends:
// the listeners, health requests, the proxy's spare descriptor, the Go
// runtime's own.
const fdOverhead = 64

// fdsNeeded is how many descriptors the configured limits can make the
// proxy hold at once: every client the connection limits admit, every
// backend of every pool, and fdOverhead.
func fdsNeeded(cfg *config.Config, targets []config.Target) uint64 {
	n := uint64(cfg.Pool.MaxClientConn) + uint64(cfg.Pool.MaxStartupConn) + fdOverhead
	for _, t := range targets {
		n += uint64(t.Pool.MaxSize)
	}
	return n
}

// openFileLimit returns the soft RLIMIT_NOFILE (which Go raises to the
// hard limit at start).
func openFileLimit() (uint64, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return r.Cur, true
}

// checkFDLimit warns at start when the open-file limit is below what the
// configured limits can use: past it the proxy refuses clients with 53300
// before pool.max_client_conn is reached (see proxy's refuseOutOfFDs).
func checkFDLimit(log *slog.Logger, limit, need uint64) {
	if limit < need {
		log.Warn("the open-file limit is below what pool.max_client_conn + pool.max_startup_conn + the pools' max_size can use: "+
			"past it new clients are refused with 53300; raise it (ulimit -n, LimitNOFILE=) or lower those limits",
			"open_file_limit", limit, "needed", need)
	}
}
