package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestPassthroughWildcard: auth.passthrough with a "*" databases entry
// (and no other database). The roles are looked up by one auth pool in
// the database the entry's URL names (app, where the lookup function
// lives), so a database created at run time serves alice and bob as
// themselves at once: current_user, current_database and the privileges
// in that database are theirs, as on a direct connection, each in a pool
// per (database, role) that /stats and SHOW-like /pools list, and that
// the HTTP admin's pause and resume of the name act on (a pause of every
// database holds a name first opened during it too). A wrong
// password opens no pool of the name it asked for; a database that does
// not exist gets PostgreSQL's 3D000 and leaves no pool behind; and the
// entry's max_db_connections (2) holds for each database name across its
// roles under 20 clients (pg_stat_activity sampled, 0 failed).
func TestPassthroughWildcard(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw", "bob:bob-pw")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := adminConn(t)
	name := fmt.Sprintf("wildpt_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" OWNER app"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, pg.AdminURL()); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			_ = c.Close(ctx)
		}
	})
	inNew := connect(t, pg.AdminURLDB(name))
	for _, sql := range []string{
		"CREATE TABLE only_alice (v text)", "INSERT INTO only_alice VALUES ('for alice')", "GRANT SELECT ON only_alice TO alice",
	} {
		if _, err := inNew.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The grant would keep alice from being dropped at cleanup while the
	// database exists; revoke it first (cleanups run last-in first-out).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, pg.AdminURLDB(name)); err == nil {
			_, _ = c.Exec(ctx, "DROP TABLE IF EXISTS only_alice")
			_ = c.Close(ctx)
		}
	})

	cfgPath := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	yaml := fmt.Sprintf("databases:\n  \"*\":\n    url: %q\n    max_db_connections: 2\npool:\n  max_size: 4\n  acquire_timeout: 30s\n",
		pg.URL("app", "app", "app"))
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", ""), WithArgs("-config", cfgPath),
		WithEnv("PGSIDECAR_ADMIN__HTTP_TOKEN", "s3cret"))

	type who struct{ user, db string }
	ask := func(url string) (who, error) {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return who{}, err
		}
		defer c.Close(ctx)
		var w who
		err = c.QueryRow(ctx, "SELECT current_user::text, current_database()::text").Scan(&w.user, &w.db)
		return w, err
	}
	for _, c := range []struct{ role, pw, db string }{
		{"alice", "alice-pw", name}, {"bob", "bob-pw", name}, {"alice", "alice-pw", "app"},
	} {
		got, err := ask(p.URL(c.role, c.pw, c.db))
		if err != nil || got != (who{c.role, c.db}) {
			t.Fatalf("%s to %s through the proxy: %+v, %v", c.role, c.db, got, err)
		}
		if !jsonPoolsHave(t, p, c.db, c.role) {
			t.Errorf("/pools has no pool for database %s, user %s", c.db, c.role)
		}
		if statsPoolNamed(t, p, c.db+"/"+c.role) == nil {
			t.Errorf("/stats has no pool %s/%s", c.db, c.role)
		}
	}
	// Privileges in the new database are the role's, as directly.
	for _, c := range []struct{ role, pw, want string }{{"alice", "alice-pw", ""}, {"bob", "bob-pw", "42501"}} {
		for _, url := range []string{p.URL(c.role, c.pw, name), pg.URL(c.role, c.pw, name)} {
			// Closed at once: the caps check below counts the roles'
			// sessions in the database.
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			_, err = conn.Exec(ctx, "SELECT v FROM only_alice")
			if sqlState(err) != c.want {
				t.Errorf("%s reads only_alice: %v, want SQLSTATE %q", c.role, err, c.want)
			}
			conn.Close(ctx)
		}
	}

	// PAUSE of a "*" database holds its roles' pools, and only its own.
	if code, body := adminPost(t, p, "/admin/pause?db="+name, "s3cret"); code != 200 {
		t.Fatalf("POST /admin/pause?db=%s: %d %s", name, code, body)
	}
	for _, c := range []struct {
		db, role string
		want     bool
	}{{name, "alice", true}, {name, "bob", true}, {"app", "alice", false}} {
		if paused, ok := jsonPoolPaused(t, p, c.db, c.role); !ok || paused != c.want {
			t.Errorf("/pools after pausing %s: %s/%s paused %v (listed %v), want %v", name, c.db, c.role, paused, ok, c.want)
		}
	}
	if code, body := adminPost(t, p, "/admin/resume?db="+name, "s3cret"); code != 200 {
		t.Fatalf("POST /admin/resume?db=%s: %d %s", name, code, body)
	}
	if paused, _ := jsonPoolPaused(t, p, name, "bob"); paused {
		t.Errorf("%s/bob still paused after resume", name)
	}

	// A PAUSE of every database holds a "*" database first opened during
	// it (postgres here): bob's login and transaction wait until RESUME.
	if code, body := adminPost(t, p, "/admin/pause", "s3cret"); code != 200 {
		t.Fatalf("POST /admin/pause: %d %s", code, body)
	}
	// The login itself waits: the proxy needs a backend of the new
	// database for its server parameters (PgBouncer's new clients of a
	// paused database wait too).
	done := make(chan error, 1)
	go func() { // ends when the query returns: after the resume, or at ctx's end
		c, err := pgx.Connect(ctx, p.URL("bob", "bob-pw", "postgres"))
		if err == nil {
			_, err = c.Exec(ctx, "SELECT 1")
			c.Close(ctx)
		}
		done <- err
	}()
	waitFor(t, 5*time.Second, "bob's pool of postgres listed", func() bool { _, ok := jsonPoolPaused(t, p, "postgres", "bob"); return ok })
	if paused, _ := jsonPoolPaused(t, p, "postgres", "bob"); !paused {
		t.Error("postgres/bob, opened during a PAUSE of every database, is not paused")
	}
	select {
	case err := <-done:
		t.Errorf("bob's transaction in postgres ran during the PAUSE: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if code, body := adminPost(t, p, "/admin/resume", "s3cret"); code != 200 {
		t.Fatalf("POST /admin/resume: %d %s", code, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("bob's transaction in postgres after RESUME: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bob's transaction in postgres did not run after RESUME")
	}

	// A wrong password: 28P01, and no pool for the name it asked for.
	other := name + "_other"
	if _, err := ask(p.URL("alice", "wrong", other)); sqlState(err) != "28P01" {
		t.Errorf("wrong password: %v, want 28P01", err)
	}
	// No such database: PostgreSQL's 3D000, and no pool left behind.
	missing := name + "_missing"
	_, directErr := ask(pg.URL("alice", "alice-pw", missing))
	_, proxyErr := ask(p.URL("alice", "alice-pw", missing))
	var de, pe *pgconn.PgError
	if !errors.As(directErr, &de) || !errors.As(proxyErr, &pe) || pe.Code != "3D000" || pe.Code != de.Code {
		t.Errorf("missing database: direct %v, proxy %v", directErr, proxyErr)
	}
	waitFor(t, 5*time.Second, "no pool of the missing or refused database", func() bool {
		names := strings.Join(poolNames(t, p), ",")
		return !strings.Contains(names, missing) && !strings.Contains(names, other)
	})

	// The entry's max_db_connections holds per name, across its roles.
	waitFor(t, 5*time.Second, "the direct sessions gone", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename IN ('alice', 'bob')", name).Scan(&n)
		return n <= 2 // the proxy's: one per role pool
	})
	sampler := newBackendSampler("alice", "bob", "app")
	sampler.datname = name
	res := capsLoadSampled(t, p, []capsLogin{{"alice", "alice-pw", name}, {"bob", "bob-pw", name}}, 20, 5, sampler)
	if sampler.peakAll > 2 {
		t.Errorf("pg_stat_activity showed %d backends in %s (%v), over the entry's max_db_connections 2", sampler.peakAll, name, sampler.peak)
	}
	if sampler.peakAll < 2 || slices.Contains(res.perRole, 0) {
		t.Errorf("peak %d backends in %s, by role %v: the load never reached the cap", sampler.peakAll, name, res.perRole)
	}
}
