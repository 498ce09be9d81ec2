package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReloadEmptyUsersFile: auth.users_file truncated to nothing (a
// rotation caught between its truncate and its write), or left with
// comments only, would drop every login it granted at the next SIGHUP.
// Such a reload is refused naming the file, and the file's logins keep
// working; the file written whole again reloads. A proxy started with an
// empty file starts (as PgBouncer does with an empty auth_file) but warns
// once naming it, and a SIGHUP after the file is filled adds its logins.
func TestReloadEmptyUsersFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	file := filepath.Join(t.TempDir(), "users")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("bob:bobpw\n")
	p := StartProxy(t, WithEnv("PGSIDECAR_AUTH__USERS_FILE", file))
	if _, err := loginUser(ctx, p.URL("bob", "bobpw", "app")); err != nil {
		t.Fatalf("bob's login from the file: %v", err)
	}
	load := rlStartLoad(t, p.AppURL(), 2, 5000)
	for _, bad := range []string{"", "\n", "# being rewritten\n"} {
		write(bad)
		rlReload(t, p)
		if got := rlLogLines(p, "reload failed; keeping the running configuration", "auth.users_file", file); len(got) == 0 {
			t.Errorf("users file %q: the reload did not fail naming auth.users_file and %s; reload lines: %q", bad, file, rlLogLines(p, "reload"))
		}
		if _, err := loginUser(ctx, p.URL("bob", "bobpw", "app")); err != nil {
			t.Errorf("users file %q: bob's login after the reload: %v", bad, err)
		}
	}
	if n := len(rlLogLines(p, "configuration reloaded")); n != 0 {
		t.Errorf("%d reloads applied an empty users file", n)
	}
	if errs := load.end(); len(errs) > 0 {
		t.Errorf("the workload saw %d errors: %q", len(errs), errs)
	}
	write("bob:rotated\n")
	rlReload(t, p)
	if _, err := loginUser(ctx, p.URL("bob", "rotated", "app")); err != nil {
		t.Errorf("bob's rotated password after the file was written whole: %v", err)
	}

	// Started with an empty file: it starts, warns once naming the file,
	// and a SIGHUP once the file has logins serves them.
	empty := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	q := StartProxy(t, WithEnv("PGSIDECAR_AUTH__USERS_FILE", empty))
	waitFor(t, 10*time.Second, "the ready line", func() bool { return len(rlLogLines(q, "pgsidecar ready")) > 0 })
	if got := rlLogLines(q, `"level":"WARN"`, "auth.users_file", empty, "no login"); len(got) != 1 {
		t.Errorf("start with an empty users file: want one warning naming auth.users_file and %s; got %q", empty, got)
	}
	if err := os.WriteFile(empty, []byte("carol:carolpw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rlReload(t, q)
	if _, err := loginUser(ctx, q.URL("carol", "carolpw", "app")); err != nil {
		t.Errorf("carol's login after the empty file was filled: %v", err)
	}
}
