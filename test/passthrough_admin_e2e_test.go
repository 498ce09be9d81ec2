package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// rolePIDs is the server's backend pids of role in database app, from
// pg_stat_activity on a direct connection.
func rolePIDs(ctx context.Context, t *testing.T, direct *pgx.Conn, role string) []int64 {
	t.Helper()
	rows, err := direct.Query(ctx, "SELECT pid::int8 FROM pg_stat_activity WHERE usename = $1 AND datname = 'app' ORDER BY 1", role)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// consolePool is the SHOW POOLS row of database db and user, or nil.
func consolePool(ctx context.Context, t *testing.T, con *pgx.Conn, db, user string) map[string]any {
	t.Helper()
	names, rows := consoleRows(ctx, t, con, "SHOW POOLS")
	for _, r := range rows {
		if column(t, names, r, "database") == db && column(t, names, r, "user") == user {
			m := map[string]any{}
			for i, n := range names {
				m[n] = r[i]
			}
			return m
		}
	}
	return nil
}

// jsonPoolPaused is the paused field of the /pools row of database db and
// user role; ok=false when there is no such row.
func jsonPoolPaused(t *testing.T, p *Proxy, db, role string) (paused, ok bool) {
	t.Helper()
	sp := jsonPool(t, p, db, role)
	paused, _ = sp["paused"].(bool)
	return paused, sp != nil
}

// TestPassthroughPauseResumeReconnect: the console's PAUSE, RESUME,
// RECONNECT and KILL of a passthrough database act on every role's pool,
// as PgBouncer's do on every pool of the database. PAUSE app waits for a
// transaction in flight in alice's pool; then alice's and bob's new
// transactions, and those of pa_carol, whose pool opens during the pause
// and starts paused, wait past acquire_timeout without an error until
// RESUME; RECONNECT replaces both roles' backends (the pids the server
// shows per usename in pg_stat_activity all change); KILL ends both
// roles' clients with 57P01.
func TestPassthroughPauseResumeReconnect(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw", "bob:bob-pw", "pa_carol:carol-pw")
	p := startPassthroughProxy(t, "30s", WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "1s"),
		WithEnv("PGSIDECAR_ADMIN__HTTP_TOKEN", "s3cret"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	con := connect(t, consoleURL(p, "app", "app"))
	direct := adminConn(t)

	type client struct {
		role string
		conn *pgx.Conn
	}
	var clients []client
	for _, c := range [][2]string{{"alice", "alice-pw"}, {"bob", "bob-pw"}} {
		conn := connect(t, p.URL(c[0], c[1], "app"))
		// The backend the proxy uses is the role's own on the server.
		pid := proxyPID(ctx, t, conn)
		if got := rolePIDs(ctx, t, direct, c[0]); !slices.Contains(got, pid) {
			t.Fatalf("%s ran on backend %d, pg_stat_activity has %v for %s", c[0], pid, got, c[0])
		}
		clients = append(clients, client{c[0], conn})
	}
	alice := clients[0].conn

	// PAUSE waits for alice's transaction: her role's pool holds the
	// backend, the database's own pool none.
	if _, err := alice.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() { paused <- consoleExec(ctx, con, "PAUSE app") }() // ends when PAUSE returns (the COMMIT below)
	select {
	case err := <-paused:
		t.Fatalf("PAUSE app returned while alice's transaction holds a backend: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := alice.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("alice's transaction in flight during PAUSE: %v", err)
	}
	select {
	case err := <-paused:
		if err != nil {
			t.Fatalf("PAUSE app: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PAUSE app did not return after alice's transaction ended")
	}

	// pa_carol logs in during the pause (logins are not held), and her
	// pool, opened now, starts paused.
	carol := connect(t, p.URL("pa_carol", "carol-pw", "app"))
	clients = append(clients, client{"pa_carol", carol})
	for _, c := range clients {
		waitFor(t, 5*time.Second, "a paused pool for "+c.role, func() bool {
			sp := consolePool(ctx, t, con, "app", c.role)
			return sp != nil && sp["paused"] == true
		})
	}

	type result struct {
		role, user string
		err        error
		at         time.Time
	}
	results := make(chan result, len(clients))
	for _, c := range clients {
		go func() { // ends when the query returns: after RESUME, or at ctx's end
			var user string
			err := c.conn.QueryRow(ctx, "SELECT current_user").Scan(&user)
			results <- result{c.role, user, err, time.Now()}
		}()
	}
	for _, c := range clients {
		waitFor(t, 5*time.Second, c.role+"'s transaction waiting in its paused pool", func() bool {
			sp := consolePool(ctx, t, con, "app", c.role)
			return sp != nil && sp["cl_waiting"].(int64) == 1
		})
	}
	// SHOW STATE names the paused database once, not once per pool.
	names, rows := consoleRows(ctx, t, con, "SHOW STATE")
	for _, r := range rows {
		if column(t, names, r, "key") == "paused" && column(t, names, r, "value") != "app" {
			t.Errorf("SHOW STATE paused = %q, want %q", column(t, names, r, "value"), "app")
		}
	}
	// Past acquire_timeout (1s): still held, without an error.
	time.Sleep(1500 * time.Millisecond)
	select {
	case r := <-results:
		t.Fatalf("%s's transaction ran during PAUSE: %q, %v", r.role, r.user, r.err)
	default:
	}
	// pa_carol's new pool made its first connect, as every new pool does
	// to learn whether the server is up, but hands it to nobody.
	for _, c := range clients {
		if sp := consolePool(ctx, t, con, "app", c.role); sp["sv_active"].(int64) != 0 {
			t.Errorf("%s's paused pool has %v active backends, want 0", c.role, sp["sv_active"])
		}
	}
	resumedAt := time.Now()
	if err := consoleExec(ctx, con, "RESUME app"); err != nil {
		t.Fatal(err)
	}
	for range clients {
		select {
		case r := <-results:
			if r.err != nil || r.user != r.role || r.at.Before(resumedAt) {
				t.Errorf("%s after RESUME: current_user %q, %v, at %v (RESUME at %v)", r.role, r.user, r.err, r.at, resumedAt)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a held transaction did not run after RESUME")
		}
	}
	for _, c := range clients {
		if sp := consolePool(ctx, t, con, "app", c.role); sp == nil || sp["paused"] != false {
			t.Errorf("SHOW POOLS for %s after RESUME: %v", c.role, sp)
		}
	}

	// The HTTP admin's pause and resume act on the same pools.
	if code, body := adminPost(t, p, "/admin/pause?db=app", "s3cret"); code != 200 {
		t.Fatalf("POST /admin/pause?db=app: %d %s", code, body)
	}
	for _, c := range clients {
		if paused, ok := jsonPoolPaused(t, p, "app", c.role); !ok || !paused {
			t.Errorf("/pools after POST /admin/pause?db=app: %s's pool paused %v (listed %v), want true", c.role, paused, ok)
		}
	}
	if code, body := adminPost(t, p, "/admin/resume?db=app", "s3cret"); code != 200 {
		t.Fatalf("POST /admin/resume?db=app: %d %s", code, body)
	}
	for _, c := range clients {
		if paused, _ := jsonPoolPaused(t, p, "app", c.role); paused {
			t.Errorf("/pools after POST /admin/resume?db=app: %s's pool still paused", c.role)
		}
	}

	// RECONNECT: every role's backends are replaced, on the server too.
	old := map[string][]int64{}
	for _, c := range clients {
		if old[c.role] = rolePIDs(ctx, t, direct, c.role); len(old[c.role]) == 0 {
			t.Fatalf("%s has no backend before RECONNECT", c.role)
		}
	}
	if err := consoleExec(ctx, con, "RECONNECT app"); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		for range 3 {
			if pid := proxyPID(ctx, t, c.conn); slices.Contains(old[c.role], pid) {
				t.Fatalf("%s ran on old backend %d after RECONNECT (old %v)", c.role, pid, old[c.role])
			}
		}
		waitFor(t, 10*time.Second, c.role+"'s old backends gone from pg_stat_activity", func() bool {
			now := rolePIDs(ctx, t, direct, c.role)
			for _, pid := range now {
				if slices.Contains(old[c.role], pid) {
					return false
				}
			}
			return len(now) > 0
		})
	}

	// KILL app ends every role's clients.
	if err := consoleExec(ctx, con, "KILL app"); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if _, err := c.conn.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
			t.Errorf("%s after KILL app: %v, want 57P01", c.role, err)
		}
	}
	// A killed client is told 57P01 a moment before its goroutine leaves
	// the list (as in TestAdminReconnectKill).
	waitFor(t, 5*time.Second, "SHOW CLIENTS empty after KILL app", func() bool {
		_, rows := consoleRows(ctx, t, con, "SHOW CLIENTS")
		return len(rows) == 0
	})
}
