package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestDriverJDBCSessionState runs drivers/java/JdbcSessionState.java
// (issue 6, points 4-6: LISTEN/NOTIFY with getNotifications, a temp table
// and a session advisory lock across transactions, set_config and SETs
// undone by rollback with autocommit off) through the proxy in transaction
// mode (4 connections, a pool of 2) and directly, and requires the same
// observations.
func TestDriverJDBCSessionState(t *testing.T) {
	javac := txRequireTool(t, "javac", txJDBCInstall)
	java := txRequireTool(t, "java", txJDBCInstall)
	if _, err := os.Stat(txJDBCJar); err != nil {
		t.Fatalf("the PostgreSQL JDBC driver is not installed (%v): install it with %q (.ci/run does this)", err, txJDBCInstall)
	}
	classes := t.TempDir()
	src, err := filepath.Abs("drivers/java/JdbcSessionState.java")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, javac, "-d", classes, "-cp", txJDBCJar, src).CombinedOutput(); err != nil {
		t.Fatalf("javac %s: %v\n%s", src, err, out)
	}
	p := txStartProxy(t, "transaction", 2)
	run := func(pgURL string) string {
		t.Helper()
		jdbcURL, user, password := txJDBCURL(t, pgURL)
		cmd := exec.CommandContext(ctx, java, "-cp", classes+string(os.PathListSeparator)+txJDBCJar, "JdbcSessionState", jdbcURL, user, password)
		cmd.WaitDelay = 5 * time.Second
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("JdbcSessionState against %s: %v\nstdout: %s\nstderr: %s", redact(pgURL), err, stdout.String(), txTail(stderr.String()))
		}
		return string(bytes.TrimSpace(stdout.Bytes()))
	}
	direct := run(txDirectURL())
	proxied := run(txProxyURL(p))
	if proxied != direct {
		t.Errorf("JDBC through the proxy:\n%s\ndirectly:\n%s", proxied, direct)
	}
	t.Logf("observations: %s", direct)
}
