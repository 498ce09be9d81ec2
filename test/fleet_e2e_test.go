package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 11, "Many sidecars, one database": the role's CONNECTION LIMIT is
// the fleet-wide cap. Two pgsidecar processes, each with max_size 5, serve
// a role limited to 6 connections, 20 clients each: the server refuses
// the connects past the limit (53300) and each pool treats that as
// backpressure (its clients queue for the backends it has), so no
// transaction fails and the role never has more than 6 connections.
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
	const perProxy = 20
	var proxies []*Proxy
	for range 2 {
		proxies = append(proxies, StartProxy(t,
			WithEnv("DATABASE_URL", pg.URL("fleet", "fleet", "app")),
			WithEnv("PGSIDECAR_POOL__MAX_SIZE", "5"),
			WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
			WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s")))
	}
	var (
		ok, failed atomic.Int64
		stop       atomic.Bool
		wg         sync.WaitGroup
	)
	for _, p := range proxies {
		for range perProxy {
			wg.Add(1)
			go func() { // ends when stop is set (bounded by ctx and 5000 transactions)
				defer wg.Done()
				// The login waits for a backend too (it checks the password).
				c, err := pgconn.Connect(ctx, p.URL("fleet", "fleet", "app"))
				if err != nil {
					if failed.Add(1) <= 3 {
						t.Errorf("connect: %v (SQLSTATE %s)", err, sqlState(err))
					}
					return
				}
				defer c.Close(context.Background())
				for i := 0; i < 5000 && !stop.Load() && ctx.Err() == nil; i++ {
					if _, err := c.Exec(ctx, "BEGIN; SELECT pg_sleep(0.002); COMMIT").ReadAll(); err != nil {
						if failed.Add(1) <= 3 {
							t.Errorf("transaction failed: %v (SQLSTATE %s)", err, sqlState(err))
						}
						if c.IsClosed() {
							return
						}
						continue
					}
					ok.Add(1)
				}
			}()
		}
	}
	time.Sleep(time.Second)
	for _, c := range others {
		c.Close(ctx) // the other replica goes away
	}
	peak := 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'").Scan(&n); err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		peak = max(peak, n)
		time.Sleep(20 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("2 proxies x max_size 5, role CONNECTION LIMIT 6, 2 x %d clients for 5s: %d transactions ok, %d failed, peak %d server connections",
		perProxy, ok.Load(), failed.Load(), peak)
	if failed.Load() != 0 {
		t.Errorf("%d transactions failed; want 0", failed.Load())
	}
	if peak > 6 {
		t.Errorf("%d server connections for the role; the limit is 6", peak)
	}
	if ok.Load() == 0 {
		t.Error("no transaction succeeded")
	}
	for _, p := range proxies {
		if code, _ := p.Health(t); code != 200 {
			t.Errorf("/health %d after the run; want 200 (backpressure is not ill health)", code)
		}
	}
}
