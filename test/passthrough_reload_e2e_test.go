package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestPassthroughReloadQueryAndTTL: auth.cache_ttl and auth.query change
// on SIGHUP without a restart. With cache_ttl 1h a changed password is
// not seen (the cached verifier still answers); after a reload to 0 the
// new password logs in at once and the old one is refused, as on a direct
// connection. A reloaded auth.query empties the cache: bob, cached a
// moment before, is refused by a query that no longer returns him, while
// alice still logs in. The reload reports both as changed live.
func TestPassthroughReloadQueryAndTTL(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw", "bob:bob-pw")
	path := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	write := func(query, ttl string) {
		t.Helper()
		yaml := fmt.Sprintf("auth:\n  query: %q\n  cache_ttl: %s\n", query, ttl)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(passthroughQuery, "1h")
	// The file sets auth.query and auth.cache_ttl: no environment for them.
	p := startPassthroughProxy(t, "", WithEnv("PGSIDECAR_AUTH__QUERY", ""), WithArgs("-config", path))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)
	reloads := 0
	reload := func() {
		t.Helper()
		reloads++
		p.Signal(syscall.SIGHUP)
		waitFor(t, 5*time.Second, "the reload", func() bool { return p.Logs.Count(`"configuration reloaded"`) == reloads })
	}
	login := func(role, pw string) error {
		got, err := loginUser(ctx, p.URL(role, pw, "app"))
		if err == nil && got != role {
			return fmt.Errorf("logged in as %q, want %q", got, role)
		}
		return err
	}
	mustLogin := func(what, role, pw string) {
		t.Helper()
		if err := login(role, pw); err != nil {
			t.Fatalf("%s: %s: %v", what, role, err)
		}
	}
	mustRefuse := func(what, role, pw string) {
		t.Helper()
		if pe := pgErrOf(t, what, login(role, pw)); pe.Code != "28P01" {
			t.Fatalf("%s: %s got %s %q, want 28P01", what, role, pe.Code, pe.Message)
		}
	}

	mustLogin("first login", "alice", "alice-pw")
	if _, err := admin.Exec(ctx, "ALTER ROLE alice PASSWORD 'alice-pw2'"); err != nil {
		t.Fatal(err)
	}
	if _, err := loginUser(ctx, pg.URL("alice", "alice-pw2", "app")); err != nil {
		t.Fatalf("direct login with the new password: %v", err)
	}
	// cache_ttl 1h: the proxy still answers from the cached verifier.
	mustRefuse("new password, verifier cached for 1h", "alice", "alice-pw2")
	mustLogin("old password, verifier cached for 1h", "alice", "alice-pw")

	write(passthroughQuery, "0s")
	reload()
	mustLogin("new password after cache_ttl 0 was reloaded", "alice", "alice-pw2")
	mustRefuse("old password after cache_ttl 0 was reloaded", "alice", "alice-pw")

	write(passthroughQuery, "1h")
	reload()
	mustLogin("bob, cached for 1h", "bob", "bob-pw")
	write(passthroughQuery+" WHERE uname <> 'bob'", "1h")
	reload()
	mustRefuse("bob after a reloaded query that does not return him", "bob", "bob-pw")
	mustLogin("alice after the reloaded query", "alice", "alice-pw2")

	var lastChanged, lastRestart []any
	for _, l := range p.Logs.JSONLines() {
		if l["msg"] == "configuration reloaded" {
			lastChanged, _ = l["changed"].([]any)
			lastRestart, _ = l["needs_restart"].([]any)
		}
	}
	if !slices.Contains(lastChanged, any("auth.query")) || slices.Contains(lastRestart, any("auth.query")) {
		t.Errorf("the last reload: changed %v, needs_restart %v; want auth.query applied live", lastChanged, lastRestart)
	}
}
