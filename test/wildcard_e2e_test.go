package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// wildcardProxy runs a proxy whose config has upstream app plus a "*"
// entry on the same server.
func wildcardProxy(t *testing.T) *Proxy {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	yaml := fmt.Sprintf("databases:\n  \"*\":\n    url: %q\npool:\n  min_size: 0\n", pg.URL("app", "app", ""))
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return StartProxy(t, WithArgs("-config", cfgPath))
}

// poolNames lists the pools /stats reports.
func poolNames(t *testing.T, p *Proxy) []string {
	var names []string
	for _, pl := range statsPools(p.Stats(t)) {
		names = append(names, str(pl, "database"))
	}
	return names
}

// TestWildcardDatabase: a databases entry "*" serves any database on its
// server by the client's own name, as PgBouncer's "* =": a database created
// at run time is reachable at once, without a config change; one that does
// not exist gets PostgreSQL's own 3D000 (compared with a direct connection)
// and leaves no pool behind; a dropped and re-created database is served
// again; a wrong password opens no pool.
func TestWildcardDatabase(t *testing.T) {
	p := wildcardProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := adminConn(t)
	name := fmt.Sprintf("wild_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" OWNER app"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pg.AdminURL())
		if err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			_ = c.Close(ctx)
		}
	})

	currentDB := func(url string) (string, error) {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return "", err
		}
		defer c.Close(ctx)
		var db string
		err = c.QueryRow(ctx, "SELECT current_database()").Scan(&db)
		return db, err
	}

	// Created at run time: served, as directly.
	for _, db := range []string{name, "postgres", "app"} {
		got, err := currentDB(p.URL("app", "app", db))
		if err != nil || got != db {
			t.Fatalf("through the proxy to %s: current_database %q, %v", db, got, err)
		}
	}
	names := poolNames(t, p)
	for _, want := range []string{"app", name, "postgres"} {
		if !strings.Contains(strings.Join(names, ","), want) {
			t.Errorf("/stats pools %v lack %s", names, want)
		}
	}
	// "app" is the upstream's own pool, not a second one from "*".
	if n := strings.Count(","+strings.Join(names, ",")+",", ",app,"); n != 1 {
		t.Errorf("pools %v: app served %d times", names, n)
	}

	// No such database: the same error as PostgreSQL's, and no pool left.
	missing := name + "_missing"
	_, directErr := currentDB(pg.URL("app", "app", missing))
	_, proxyErr := currentDB(p.URL("app", "app", missing))
	var de, pe *pgconn.PgError
	if !errors.As(directErr, &de) || !errors.As(proxyErr, &pe) || pe.Code != "3D000" || pe.Code != de.Code || pe.Message != de.Message {
		t.Fatalf("missing database: direct %v, proxy %v", directErr, proxyErr)
	}
	waitFor(t, 5*time.Second, "the missing database's pool gone and /health 200", func() bool {
		code, _, err := p.FetchHealth()
		return err == nil && code == 200 && !strings.Contains(strings.Join(poolNames(t, p), ","), missing)
	})

	// A wrong password opens nothing.
	if _, err := currentDB(p.URL("app", "wrong", name+"_other")); sqlState(err) != "28P01" {
		t.Errorf("wrong password: %v, want 28P01", err)
	}
	if strings.Contains(strings.Join(poolNames(t, p), ","), name+"_other") {
		t.Error("a client that failed to log in opened a pool")
	}

	// Dropped (with its pooled backends) and re-created: 3D000 while it
	// is gone, then served again.
	if _, err := admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "3D000 for the dropped database", func() bool {
		_, err := currentDB(p.URL("app", "app", name))
		return sqlState(err) == "3D000"
	})
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" OWNER app"); err != nil {
		t.Fatal(err)
	}
	if got, err := currentDB(p.URL("app", "app", name)); err != nil || got != name {
		t.Fatalf("re-created database: %q, %v", got, err)
	}
}
