package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// The cluster is internal/testpg's, shared with the other packages' tests.
type Cluster = testpg.Cluster

var (
	// StartCluster starts the suite's shared cluster (see TestMain).
	StartCluster = testpg.StartCluster
	// findPGClient finds psql and pgbench.
	findPGClient = testpg.FindClient
	// cleanEnv is the environment without PG* variables.
	cleanEnv = testpg.CleanEnv
	// freePort picks a free port on 127.0.0.1.
	freePort = testpg.FreePort
	// isExecutable tells a prebuilt binary from a missing one.
	isExecutable = testpg.IsExecutable
)

// TestClusterDirect checks the harness against PostgreSQL alone, so that a
// failing proxy test can be told apart from a broken harness: SCRAM logins
// over TCP, the admin socket, psql, pgbench and a wrong password.
func TestClusterDirect(t *testing.T) {
	out, err := runPsql(t, pg.URL("app", "app", "app"), "-At", "-c", "SELECT current_user || '@' || current_database()")
	if err != nil {
		t.Fatalf("psql direct: %v", err)
	}
	if got := strings.TrimSpace(out); got != "app@app" {
		t.Fatalf("psql direct: got %q, want app@app", got)
	}

	admin := adminConn(t)
	var method string
	if err := admin.QueryRow(context.Background(),
		`SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'`).Scan(&method); err != nil {
		t.Fatalf("read pg_hba rules: %v", err)
	}
	if method != "scram-sha-256" {
		t.Fatalf("host auth method %q, want scram-sha-256", method)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pgconn.Connect(ctx, pg.URL("app", "wrong", "app"))
	if got := sqlState(err); got != "28P01" {
		t.Fatalf("wrong password direct: SQLSTATE %q (%v), want 28P01", got, err)
	}

	ensurePgbenchTables(t)
	out, err = runPgbench(t, pg.URL("app", "app", "app"), "-n", "-c", "4", "-j", "2", "-t", "20")
	if err != nil {
		t.Fatalf("pgbench direct: %v\n%s", err, out)
	}
	if !strings.Contains(out, "number of failed transactions: 0") {
		t.Fatalf("pgbench direct: no \"number of failed transactions: 0\" in:\n%s", out)
	}
}
