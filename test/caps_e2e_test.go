package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// capRoles are the login roles the caps test runs as, each with its own
// pool (issue 10: pools per (database, role)).
var capRoles = []string{"cap_r1", "cap_r2", "cap_r3"}

// createCapRoles creates capRoles (password = name) and drops them at
// cleanup, terminating their backends first.
func createCapRoles(t *testing.T) {
	t.Helper()
	admin := adminConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range capRoles {
		// No GRANT: PUBLIC may connect to app; a grant would keep the role
		// from being dropped.
		for _, sql := range []string{"DROP ROLE IF EXISTS " + r, "CREATE ROLE " + r + " LOGIN PASSWORD '" + r + "'"} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	t.Cleanup(func() {
		c := adminConn(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list := "'" + strings.Join(capRoles, "','") + "'"
		c.Exec(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename IN ("+list+")")
		for _, r := range capRoles {
			if _, err := c.Exec(ctx, "DROP ROLE IF EXISTS "+r); err != nil {
				t.Errorf("drop role %s: %v", r, err)
			}
		}
	})
}

// backendSampler counts the server processes of capRoles in
// pg_stat_activity from a direct connection, every few milliseconds, and
// keeps the peak per role and in total.
type backendSampler struct {
	mu      sync.Mutex
	peak    map[string]int
	peakAll int
	samples int
}

func (s *backendSampler) run(ctx context.Context, t *testing.T, conn *pgx.Conn, done <-chan struct{}) {
	list := "'" + strings.Join(capRoles, "','") + "'"
	q := "SELECT usename::text, count(*)::int FROM pg_stat_activity WHERE usename IN (" + list + ") GROUP BY 1"
	for {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Errorf("sampling pg_stat_activity: %v", err)
			return
		}
		all := 0
		counts := map[string]int{}
		for rows.Next() {
			var user string
			var n int
			if err := rows.Scan(&user, &n); err != nil {
				t.Errorf("scan: %v", err)
				rows.Close()
				return
			}
			counts[user] = n
			all += n
		}
		rows.Close()
		s.mu.Lock()
		s.samples++
		for u, n := range counts {
			s.peak[u] = max(s.peak[u], n)
		}
		s.peakAll = max(s.peakAll, all)
		s.mu.Unlock()
		select {
		case <-done:
			return
		case <-time.After(3 * time.Millisecond):
		}
	}
}

// TestCapsHoldUnderLoad (issue 10: "the per-database and total caps hold
// under 50 clients across 3 roles"). Three roles, each with its own pool
// (max_size 4), 50 pgx clients spread over them running bounded loops of
// transactions; max_total_connections is 5, and two of the databases
// have max_db_connections 2. pg_stat_activity, sampled every few ms from
// a direct connection during the whole run, never shows more than 2
// backends of a capped database's role nor more than 5 in total, the
// third role still gets its share (the caps queue FIFO across the pools,
// so no role starves behind the others' busy backends), and every
// transaction commits: 0 failed.
//
// Each role reaches its pool through a databases entry of its own
// (capa, capb, capc on the same real database). Before pools per role of
// one database existed, the per-database cap is therefore checked per
// entry and the total cap across the three.
func TestCapsHoldUnderLoad(t *testing.T) {
	createCapRoles(t)
	const (
		maxTotal = 5
		maxDB    = 2
		clients  = 50
		txs      = 12 // per client: 600 in all
	)
	entries := []string{"capa", "capb", "capc"}
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "max_total_connections: %d\npool:\n  min_size: 0\n  max_size: 4\n  acquire_timeout: 30s\ndatabases:\n", maxTotal)
	for i, e := range entries {
		fmt.Fprintf(&yaml, "  %s:\n    url: %q\n", e, pg.URL(capRoles[i], capRoles[i], "app"))
		if i < 2 {
			fmt.Fprintf(&yaml, "    max_db_connections: %d\n", maxDB)
		}
	}
	cfgPath := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := StartProxy(t, WithArgs("-config", cfgPath))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sampler := &backendSampler{peak: map[string]int{}}
	done := make(chan struct{})
	var samplerDone sync.WaitGroup
	samplerDone.Add(1)
	go func() { defer samplerDone.Done(); sampler.run(ctx, t, adminConn(t), done) }() // ends when done is closed

	var committed, failed atomic.Int64
	perRole := make([]atomic.Int64, len(entries))
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		i := c % len(entries)
		wg.Add(1)
		go func() { // ends after txs transactions or the first error
			defer wg.Done()
			conn, err := pgx.Connect(ctx, p.URL(capRoles[i], capRoles[i], entries[i]))
			if err != nil {
				t.Errorf("client %d (%s): connect: %v", c, capRoles[i], err)
				failed.Add(txs)
				return
			}
			defer conn.Close(context.Background())
			for n := range txs {
				var user string
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if err := tx.QueryRow(ctx, "SELECT current_user::text").Scan(&user); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "SELECT pg_sleep(0.002)")
					return err
				})
				if err != nil {
					t.Errorf("client %d (%s) transaction %d: %v (SQLSTATE %s)", c, capRoles[i], n, err, sqlState(err))
					failed.Add(1)
					return
				}
				if user != capRoles[i] {
					t.Errorf("client %d: current_user %q, want %q", c, user, capRoles[i])
				}
				committed.Add(1)
				perRole[i].Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(done)
	samplerDone.Wait()

	sampler.mu.Lock()
	defer sampler.mu.Unlock()
	t.Logf("%d transactions committed, %d failed, in %s; %d samples; peak backends %v, %d in total",
		committed.Load(), failed.Load(), took.Round(time.Millisecond), sampler.samples, sampler.peak, sampler.peakAll)
	if failed.Load() != 0 || committed.Load() != clients*txs {
		t.Fatalf("%d committed and %d failed, want %d and 0", committed.Load(), failed.Load(), clients*txs)
	}
	if sampler.samples < 10 {
		t.Fatalf("only %d samples of pg_stat_activity: the check saw too little", sampler.samples)
	}
	if sampler.peakAll > maxTotal {
		t.Errorf("pg_stat_activity showed %d backends of the three roles at once, over max_total_connections %d", sampler.peakAll, maxTotal)
	}
	if sampler.peakAll < maxTotal-1 {
		t.Errorf("peak %d backends in total: the load never reached the cap %d, so it proved nothing", sampler.peakAll, maxTotal)
	}
	for i, r := range capRoles[:2] {
		if sampler.peak[r] > maxDB {
			t.Errorf("pg_stat_activity showed %d backends of %s (database %s), over max_db_connections %d", sampler.peak[r], r, entries[i], maxDB)
		}
	}
	for i := range entries {
		if got := perRole[i].Load(); got == 0 {
			t.Errorf("role %s committed nothing", capRoles[i])
		}
	}
}
