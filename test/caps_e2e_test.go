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

// backendSampler counts the server processes of users in
// pg_stat_activity from a direct connection, every few milliseconds, and
// keeps the peak per user and in total.
type backendSampler struct {
	users   []string
	datname string // "" = every database

	mu      sync.Mutex
	peak    map[string]int
	peakAll int
	samples int
}

func newBackendSampler(users ...string) *backendSampler {
	return &backendSampler{users: users, peak: map[string]int{}}
}

func (s *backendSampler) run(ctx context.Context, t *testing.T, conn *pgx.Conn, done <-chan struct{}) {
	list := "'" + strings.Join(s.users, "','") + "'"
	q := "SELECT usename::text, count(*)::int FROM pg_stat_activity WHERE usename IN (" + list + ")"
	if s.datname != "" {
		q += " AND datname = '" + s.datname + "'"
	}
	q += " GROUP BY 1"
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

// capsLogin is how the clients of one role of the caps tests log in.
type capsLogin struct{ role, password, db string }

// capsResult is what a capsLoad run saw.
type capsResult struct {
	committed, failed int64
	perRole           []int64 // committed, by login
	// atHalf is each login's committed count when half of all the
	// transactions had committed: the FIFO check (no role starves).
	atHalf  []int64
	took    time.Duration
	sampler *backendSampler
}

// capsLoad runs clients pgx clients, spread round-robin over logins, each
// running txs transactions (current_user checked, a 2ms pg_sleep), while
// a backendSampler of users samples pg_stat_activity.
func capsLoad(t *testing.T, p *Proxy, logins []capsLogin, clients, txs int, users ...string) *capsResult {
	t.Helper()
	return capsLoadSampled(t, p, logins, clients, txs, newBackendSampler(users...))
}

// capsLoadSampled is capsLoad with a sampler of the caller's.
func capsLoadSampled(t *testing.T, p *Proxy, logins []capsLogin, clients, txs int, sampler *backendSampler) *capsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := &capsResult{sampler: sampler, perRole: make([]int64, len(logins)), atHalf: make([]int64, len(logins))}
	done := make(chan struct{})
	var samplerDone sync.WaitGroup
	samplerDone.Add(1)
	sampleConn := adminConn(t)
	go func() { defer samplerDone.Done(); res.sampler.run(ctx, t, sampleConn, done) }() // ends when done is closed

	var committed, failed atomic.Int64
	perRole := make([]atomic.Int64, len(logins))
	var half sync.Once
	total := int64(clients * txs)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		l := logins[c%len(logins)]
		i := c % len(logins)
		wg.Add(1)
		go func() { // ends after txs transactions or the first error
			defer wg.Done()
			conn, err := pgx.Connect(ctx, p.URL(l.role, l.password, l.db))
			if err != nil {
				t.Errorf("client %d (%s): connect: %v", c, l.role, err)
				failed.Add(int64(txs))
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
					t.Errorf("client %d (%s) transaction %d: %v (SQLSTATE %s)", c, l.role, n, err, sqlState(err))
					failed.Add(1)
					return
				}
				if user != l.role {
					t.Errorf("client %d: current_user %q, want %q", c, user, l.role)
				}
				perRole[i].Add(1)
				if committed.Add(1) == total/2 {
					half.Do(func() {
						for j := range perRole {
							res.atHalf[j] = perRole[j].Load()
						}
					})
				}
			}
		}()
	}
	wg.Wait()
	res.took = time.Since(start)
	close(done)
	samplerDone.Wait()
	res.committed, res.failed = committed.Load(), failed.Load()
	for i := range perRole {
		res.perRole[i] = perRole[i].Load()
	}
	s := res.sampler
	t.Logf("%d transactions committed, %d failed, in %s; by role %v (%v when half were done); %d samples; peak backends %v, %d in total",
		res.committed, res.failed, res.took.Round(time.Millisecond), res.perRole, res.atHalf, s.samples, s.peak, s.peakAll)
	if res.failed != 0 || res.committed != total {
		t.Fatalf("%d committed and %d failed, want %d and 0", res.committed, res.failed, total)
	}
	if s.samples < 10 {
		t.Fatalf("only %d samples of pg_stat_activity: the check saw too little", s.samples)
	}
	return res
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
// (capa, capb, capc on the same real database): the per-database cap is
// checked per entry and the total cap across the three.
// TestCapsHoldAcrossPassthroughRoles checks the caps across the roles of
// one database.
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
	var logins []capsLogin
	for i, e := range entries {
		fmt.Fprintf(&yaml, "  %s:\n    url: %q\n", e, pg.URL(capRoles[i], capRoles[i], "app"))
		if i < 2 {
			fmt.Fprintf(&yaml, "    max_db_connections: %d\n", maxDB)
		}
		logins = append(logins, capsLogin{capRoles[i], capRoles[i], e})
	}
	cfgPath := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := StartProxy(t, WithArgs("-config", cfgPath))

	res := capsLoad(t, p, logins, clients, txs, capRoles...)
	s := res.sampler
	if s.peakAll > maxTotal {
		t.Errorf("pg_stat_activity showed %d backends of the three roles at once, over max_total_connections %d", s.peakAll, maxTotal)
	}
	if s.peakAll < maxTotal-1 {
		t.Errorf("peak %d backends in total: the load never reached the cap %d, so it proved nothing", s.peakAll, maxTotal)
	}
	for i, r := range capRoles[:2] {
		if s.peak[r] > maxDB {
			t.Errorf("pg_stat_activity showed %d backends of %s (database %s), over max_db_connections %d", s.peak[r], r, entries[i], maxDB)
		}
	}
	for i := range entries {
		if res.perRole[i] == 0 {
			t.Errorf("role %s committed nothing", capRoles[i])
		}
	}
}

// TestCapsHoldAcrossPassthroughRoles (issue 10: the caps hold under 50
// clients across 3 roles) with the roles of ONE database, in pools per
// (database, role) under auth.passthrough: 50 pgx clients across 3
// roles, each role's pool of max_size 4, first with max_db_connections 4
// on the database, then with max_total_connections 3 (a proxy each).
// pg_stat_activity, sampled every few ms from a direct connection, never
// shows more backends than the cap, counting the roles' and the auth
// user's (app: the lookup pool and the database's own pool count too);
// the load reaches the cap; 0 transactions fail; and the waiters are
// served FIFO across the roles: when half of all transactions had
// committed, every role had committed at least a third of its own (a
// role served only after the others would have about a quarter), so no
// role waits behind the others.
func TestCapsHoldAcrossPassthroughRoles(t *testing.T) {
	roles := []string{"cap_p1", "cap_p2", "cap_p3"}
	var specs []string
	var logins []capsLogin
	for _, r := range roles {
		specs = append(specs, r+":"+r+"-pw")
		logins = append(logins, capsLogin{r, r + "-pw", "app"})
	}
	setupPassthroughRoles(t, specs...)
	const clients, txs = 50, 12 // 600 transactions per run
	for _, c := range []struct {
		option string
		env    string
		cap    int
	}{
		{"max_db_connections", "PGSIDECAR_MAX_DB_CONNECTIONS", 4},
		{"max_total_connections", "PGSIDECAR_MAX_TOTAL_CONNECTIONS", 3},
	} {
		t.Run(c.option, func(t *testing.T) {
			// The previous run's backends are gone before this one counts.
			direct := adminConn(t)
			waitFor(t, 10*time.Second, "no backend of the roles left", func() bool {
				n := 0
				for _, r := range roles {
					n += roleBackends(t, direct, r)
				}
				return n == 0
			})
			p := startPassthroughProxy(t, "30s",
				WithEnv(c.env, fmt.Sprint(c.cap)),
				WithEnv("PGSIDECAR_POOL__MAX_SIZE", "4"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "30s"))
			res := capsLoad(t, p, logins, clients, txs, append([]string{"app"}, roles...)...)
			s := res.sampler
			if s.peakAll > c.cap {
				t.Errorf("pg_stat_activity showed %d backends of database app's roles at once (%v), over %s %d", s.peakAll, s.peak, c.option, c.cap)
			}
			if rolesPeak := s.peak[roles[0]] + s.peak[roles[1]] + s.peak[roles[2]]; rolesPeak < c.cap-1 {
				t.Errorf("the roles' backends peaked at %v: the load never reached the cap %d, so it proved nothing", s.peak, c.cap)
			}
			for i, r := range roles {
				want := int64(clients*txs) / int64(len(roles))
				if res.perRole[i] == 0 || res.atHalf[i] < want/3 {
					t.Errorf("role %s: %d committed when half of all were (%v), want at least a third of its ~%d: starved behind the others",
						r, res.atHalf[i], res.atHalf, want)
				}
			}
		})
	}
}
