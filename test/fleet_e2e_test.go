package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 11, "Many sidecars, one database": the role's CONNECTION LIMIT is
// the fleet-wide cap. Two pgsidecar processes, each with max_size 5, serve
// a role limited to 6 connections, each under pgbench with 20 clients for
// 20 s: the server refuses the connects past the limit (53300) and each
// pool treats that as backpressure (its clients queue for the backends it
// has), so pgbench reports 0 failed transactions and no aborted client,
// and pg_stat_activity, sampled every 20 ms from a direct connection for
// the whole run, never shows more than 6 connections of the role.
func TestRoleConnectionLimitAsBackpressure(t *testing.T) {
	admin := adminConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// No GRANT: PUBLIC may connect to app, and a grant would keep the
	// role from being dropped at the end.
	for _, sql := range []string{
		"DROP ROLE IF EXISTS fleet",
		"CREATE ROLE fleet LOGIN PASSWORD 'fleet' CONNECTION LIMIT 6",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		c := adminConn(t)
		c.Exec(context.Background(), "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = 'fleet'")
		if _, err := c.Exec(context.Background(), "DROP ROLE IF EXISTS fleet"); err != nil {
			t.Errorf("drop role fleet: %v", err)
		}
	})
	// Another replica's sidecar holds the whole limit when these start:
	// their first connects are refused, and their clients must wait, not
	// fail (08006 from an open circuit was the old answer).
	var others []*pgconn.PgConn
	for range 6 {
		c, err := pgconn.Connect(ctx, pg.URL("fleet", "fleet", "app"))
		if err != nil {
			t.Fatalf("direct connect as fleet: %v", err)
		}
		others = append(others, c)
	}
	const (
		perProxy = 20
		seconds  = 20 // pgbench -T, as the issue asks: the one long e2e test
	)
	var proxies []*Proxy
	for range 2 {
		proxies = append(proxies, StartProxy(t,
			WithEnv("DATABASE_URL", pg.URL("fleet", "fleet", "app")),
			WithEnv("PGSIDECAR_POOL__MAX_SIZE", "5"),
			WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
			WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"),
			WithEnv("PGSIDECAR_LOG__LEVEL", "info")))
	}
	// A short transaction of three statements that holds its backend for
	// a few milliseconds; no tables, so the role needs no grant.
	script := filepath.Join(t.TempDir(), "fleet.sql")
	if err := os.WriteFile(script, []byte("\\set n random(1, 1000)\nBEGIN;\nSELECT :n, pg_sleep(0.002);\nSELECT :n + 1;\nEND;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var benches []*pgbenchRun
	for _, p := range proxies {
		benches = append(benches, startPgbench(t, p.URL("fleet", "fleet", "app"), "-n", "-f", script,
			"-c", strconv.Itoa(perProxy), "-j", "2", "-T", strconv.Itoa(seconds)))
	}
	// Sample the role's server connections from a direct connection for
	// the whole run, until both pgbench processes have exited.
	peak, samples := 0, 0
	released := false
	started := time.Now()
	for !benches[0].exited() || !benches[1].exited() {
		if !released && time.Since(started) > time.Second {
			for _, c := range others {
				c.Close(ctx) // the other replica goes away
			}
			released = true
		}
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'").Scan(&n); err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		samples++
		if n > peak {
			peak = n
		}
		if n > 6 {
			t.Errorf("%d server connections for the role at %v; the limit is 6", n, time.Since(started).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !released {
		for _, c := range others {
			c.Close(ctx)
		}
	}
	for i, b := range benches {
		out, logs, err := b.wait()
		res := parsePgbenchRun(t, out, logs, started)
		t.Logf("sidecar %d: pgbench -c %d -T %d, role CONNECTION LIMIT 6, max_size 5: %d transactions processed, %d failed, %d clients aborted; %s",
			i, perProxy, seconds, res.processed, res.failed, len(res.aborted), tps(out))
		if err != nil || res.failed != 0 || len(res.aborted) != 0 {
			t.Errorf("sidecar %d: pgbench exit %v, %d failed transactions, %d aborted clients; want 0 failed and none aborted\n%s",
				i, err, res.failed, len(res.aborted), out)
		}
		if res.processed == 0 {
			t.Errorf("sidecar %d: pgbench processed no transaction", i)
		}
		var connectErrors float64
		for _, pl := range statsPools(proxies[i].Stats(t)) {
			if v, ok := num(pl, "connect_errors"); ok {
				connectErrors += v
			}
		}
		t.Logf("sidecar %d: %v connects refused (53300) over the run", i, connectErrors)
		if len(res.lastDone) != perProxy {
			t.Errorf("sidecar %d: %d of %d clients completed a transaction", i, len(res.lastDone), perProxy)
		}
	}
	t.Logf("pg_stat_activity for role fleet sampled %d times over %v: peak %d server connections", samples, time.Since(started).Round(time.Second), peak)
	if samples < 100 {
		t.Errorf("only %d samples of pg_stat_activity: the cap was hardly checked", samples)
	}
	for _, p := range proxies {
		if code, _ := p.Health(t); code != 200 {
			t.Errorf("/health %d after the run; want 200 (backpressure is not ill health)", code)
		}
	}
}
