package e2e

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestLoopGuardBackendCrash: one PostgreSQL backend serving the proxy is
// killed with SIGKILL while pgbench -S runs through the event loop. As for
// any backend crash, the postmaster ends every session (57P02, or the
// connection just ends) and reinitialises. A fault may cost at most the
// transactions it hit: pgbench clients whose statement was on a backend
// then may abort (at most max_size), the proxy stays up, every other
// client goes on once the database is back with no failed transaction, and
// the pool then serves clean transactions on new backends.
func TestLoopGuardBackendCrash(t *testing.T) {
	ensurePgbenchTables(t)
	const (
		clients = 8
		maxSize = 4
		seconds = 5 // pgbench -T: bounded; the crash comes at about 2 s
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The shared cluster must be back before the next test: wait for it
	// to accept connections again (it reinitialises by itself).
	directUp := func() bool {
		// Its own context: the cleanup runs after the test's is cancelled.
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		c, err := pgconn.Connect(cctx, pg.AdminURL())
		if err != nil {
			return false
		}
		_ = c.Close(cctx)
		return true
	}
	t.Cleanup(func() { waitFor(t, 30*time.Second, "the cluster back after the crash", directUp) })

	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(maxSize)),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"),
		WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", "10s"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "30s"))
	bench := startPgbench(t, p.AppURL(), "-n", "-S", "-c", strconv.Itoa(clients), "-j", "2",
		"-T", strconv.Itoa(seconds), "-P", "1")
	time.Sleep(2 * time.Second)

	admin, err := pgconn.Connect(ctx, pg.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	res, err := admin.Exec(ctx, "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' ORDER BY backend_start LIMIT 1").ReadAll()
	_ = admin.Close(ctx)
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		t.Fatalf("no backend of the proxy's to kill: %v %v", res, err)
	}
	pid, _ := strconv.Atoi(string(res[0].Rows[0][0]))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 backend %d: %v", pid, err)
	}
	crashAt := time.Now()
	time.Sleep(100 * time.Millisecond) // the postmaster notices and ends every session
	waitFor(t, 20*time.Second, "the cluster back after the crash", directUp)
	recovered := time.Now()
	t.Logf("backend %d killed; the cluster accepted connections again after %v", pid, recovered.Sub(crashAt).Round(time.Millisecond))

	out, logs, err := bench.wait()
	run := parsePgbenchRun(t, out, logs, recovered)
	t.Logf("pgbench -S -c %d -T %d through max_size %d across the crash: %d transactions, %d failed, %d clients aborted %v; %s",
		clients, seconds, maxSize, run.processed, run.failed, len(run.aborted), run.aborted, tps(out))
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "error") || strings.Contains(l, "FATAL") {
			t.Logf("pgbench: %s", l)
		}
	}
	run.checkCostOnly(t, out, err, clients, maxSize, recovered, "the crash")
	lgCleanBackends(ctx, t, p, maxSize)
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d after the crash", code)
	}
	lgLogLoop(t, p)
}
