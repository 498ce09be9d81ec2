package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// testPostgres starts a throwaway PostgreSQL owned by the test (see
// testpg.Start) and gives its role app the password appPassword. It
// returns the upstream URL for app.
func testPostgres(t *testing.T, appPassword string) string {
	t.Helper()
	c := testpg.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	sql := "ALTER ROLE app PASSWORD '" + strings.ReplaceAll(appPassword, "'", "''") + "'"
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return c.URL("app", appPassword, "app")
}
