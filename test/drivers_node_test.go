package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

const (
	// txNodeDir is the node project (package.json, package-lock.json and the
	// script), relative to this package's directory.
	txNodeDir = "drivers/node"
	// txNodeClients concurrent pg.Client connections share txNodePool backends.
	txNodeClients    = 20
	txNodePool       = 3
	txNodeIterations = 50
	txNodeTimeout    = 3 * time.Minute
)

// TestDriverNodePostgresNamedQueries runs node-postgres with named queries
// ({name, text, values}) from 20 concurrent clients over a transaction-mode
// pool of 3. node-postgres sends Parse for a name only once per connection,
// so nearly every execution is a Bind of a statement the backend at hand
// may never have seen.
func TestDriverNodePostgresNamedQueries(t *testing.T) {
	txRequireTool(t, "node", "apt-get install -y nodejs npm")
	txNodeInstall(t)
	p := txStartProxy(t, "transaction", txNodePool)

	rep := txRunDriver(t, txNodeTimeout, txNodeDir, []string{
		"PG_URL=" + txProxyURL(p),
		"CLIENTS=" + strconv.Itoa(txNodeClients),
		"ITERATIONS=" + strconv.Itoa(txNodeIterations),
		"TIMEOUT_MS=" + strconv.Itoa(int((txNodeTimeout - 10*time.Second).Milliseconds())),
	}, "node", "named_queries.js")

	// Five named queries every round, plus two on every fifth round (one
	// of them the deliberate division by zero).
	divRounds := int64(0)
	for i := range txNodeIterations {
		if i%5 == 2 {
			divRounds++
		}
	}
	txCheckReport(t, "node-postgres", rep, txNodeClients*(txNodeIterations*5+divRounds*2), txNodeClients*divRounds)
}

// txNodeInstall runs `npm ci` (from the committed package-lock.json) when
// node_modules lacks pg.
func txNodeInstall(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(txNodeDir, "node_modules", "pg", "package.json")); err == nil {
		return
	}
	npm := txRequireTool(t, "npm", "apt-get install -y nodejs npm")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = txNodeDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", txNodeDir, err, txTail(string(out)))
	}
}

// TestDriverNodePostgresDDLAndUnnamed: node-postgres named queries across
// DDL (ALTER COLUMN TYPE, a re-created table), run directly and through a
// transaction-mode pool of 1 shared by every client, must give the same
// outcomes step by step; then 10 clients' unnamed queries (each with its
// own text and types) over that one backend each get their own rows.
func TestDriverNodePostgresDDLAndUnnamed(t *testing.T) {
	txRequireTool(t, "node", "apt-get install -y nodejs npm")
	txNodeInstall(t)
	p := txStartProxy(t, "transaction", 1)
	run := func(url, table string) txDriverReport {
		return txRunDriver(t, txNodeTimeout, txNodeDir, []string{
			"PG_URL=" + url, "MODE=ddl", "TABLE=" + table, "CLIENTS=10", "ITERATIONS=40",
			"TIMEOUT_MS=" + strconv.Itoa(int((txNodeTimeout - 10*time.Second).Milliseconds())),
		}, "node", "named_queries.js")
	}
	direct, proxied := run(txDirectURL(), "tx_node_ddl_direct"), run(txProxyURL(p), "tx_node_ddl_proxy")
	txCompareSteps(t, "node-postgres", direct, proxied)
}

// txCompareSteps fails t unless a driver scenario's steps went the same way
// through the proxy as directly, with no failures in either run.
func txCompareSteps(t *testing.T, what string, direct, proxied txDriverReport) {
	t.Helper()
	txCheckReport(t, what+" directly", direct, int64(len(direct.Steps)), 0)
	txCheckReport(t, what+" through the proxy", proxied, int64(len(direct.Steps)), 0)
	if len(direct.Steps) == 0 {
		t.Fatalf("%s: the scenario reported no steps", what)
	}
	for i, want := range direct.Steps {
		got := "(missing)"
		if i < len(proxied.Steps) {
			got = proxied.Steps[i]
		}
		if got != want {
			t.Errorf("%s: directly %q, through the proxy %q", what, want, got)
		} else {
			t.Logf("%s: %s", what, got)
		}
	}
}
