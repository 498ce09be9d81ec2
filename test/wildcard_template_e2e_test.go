package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestWildcardTemplate1CreateDatabase: issue 11's "an application that
// connects to template1 ... needs no configuration change". Such an
// application connects to template1 to run CREATE DATABASE, which
// PostgreSQL refuses (55006, after waiting 5 s) while any other session is
// connected to the template. Through a "*" entry with the default
// min_size 2, pooled idle backends on template1 made that fail, through
// the proxy and for every other client of the server, for as long as the
// pool lived. A template's pool keeps no idle backend: CREATE DATABASE
// from a template1 session through the proxy works as it does directly,
// and once the proxy's clients are done, no session of the proxy is left
// on template1. (Time is not asserted: CREATE DATABASE copies the
// template and takes seconds on a loaded machine; the failure is 55006.)
func TestWildcardTemplate1CreateDatabase(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	// The default pool options (min_size 2): the case that broke.
	yaml := fmt.Sprintf("databases:\n  \"*\":\n    url: %q\n", pg.URL("app", "app", ""))
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p := StartProxy(t, WithArgs("-config", cfgPath))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := adminConn(t)
	base := fmt.Sprintf("tpl_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, "ALTER ROLE app CREATEDB"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pg.AdminURL())
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer c.Close(ctx)
		for _, suffix := range []string{"_direct", "_proxy", "_after"} {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+base+suffix+" WITH (FORCE)")
		}
		_, _ = c.Exec(ctx, "ALTER ROLE app NOCREATEDB")
	})

	create := func(conn *pgx.Conn, name string) (time.Duration, error) {
		start := time.Now()
		_, err := conn.Exec(ctx, "CREATE DATABASE "+name)
		return time.Since(start), err
	}
	// Directly: a session on template1 creates a database.
	direct := connect(t, pg.URL("app", "app", "template1"))
	if took, err := create(direct, base+"_direct"); err != nil {
		t.Fatalf("directly from template1: CREATE DATABASE: %v (%v)", err, took)
	}
	direct.Close(ctx)

	// Through the proxy: the same, after the login and a few statements
	// (which used to leave warm backends on template1).
	c := connect(t, p.URL("app", "app", "template1"))
	for range 3 {
		var db string
		if err := c.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "template1" {
			t.Fatalf("through the proxy: current_database %q, %v", db, err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if took, err := create(c, base+"_proxy"); err != nil {
		t.Fatalf("through the proxy from template1: CREATE DATABASE: %v after %v (directly it works)", err, took)
	}
	c.Close(ctx)

	// The proxy's clients are gone: none of its sessions stays on
	// template1, so anyone's CREATE DATABASE works at once.
	waitFor(t, 5*time.Second, "no proxy session left on template1", func() bool {
		var n int
		err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'template1' AND usename = 'app'").Scan(&n)
		return err == nil && n == 0
	})
	// (PostgreSQL would wait 5 s for other sessions, then fail: 55006.)
	if took, err := create(admin, base+"_after"); err != nil {
		t.Fatalf("directly after the proxy's clients left: CREATE DATABASE: %v after %v", err, took)
	}

	// Other databases of the "*" entry still pool as configured.
	app := connect(t, p.URL("app", "app", "postgres"))
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "postgres's pool warm at min_size 2", func() bool {
		for _, pl := range statsPools(p.Stats(t)) {
			if str(pl, "database") == "postgres" {
				n, _ := num(pl, "total")
				return n == 2
			}
		}
		return false
	})
}
