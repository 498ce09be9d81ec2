package e2e

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// authRole is the passthrough tests' dedicated auth user: no superuser,
// it may only run the lookup function, and its password lives in a file.
const authRole = "pgsc_auth"

// urlWithoutPassword is the cluster's URL for user on db with no password.
func urlWithoutPassword(user, db string) string {
	return strings.Replace(pg.URL(user, "x", db), user+":x@", user+"@", 1)
}

// hashPasswordCmd runs `pgsidecar hash-password` with password on stdin
// and returns the verifier it prints.
func hashPasswordCmd(t *testing.T, password string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, proxyBin, "hash-password")
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(password + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pgsidecar hash-password: %v", err)
	}
	v := strings.TrimSuffix(string(out), "\n")
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") || strings.Contains(v, "\n") {
		t.Fatalf("pgsidecar hash-password printed %q", out)
	}
	return v
}

// noPlaintextConfig writes the config of a passthrough proxy whose every
// secret is in a file: the upstream URL has no password, the auth user's
// password comes from authFile and the console login ops has only a SCRAM
// verifier, in opsFile.
func noPlaintextConfig(t *testing.T, authFile, opsFile string, extra string) string {
	t.Helper()
	return testpg.WriteYAML(t, "upstream: "+urlWithoutPassword(authRole, "app")+"\n"+
		"pool:\n  min_size: 0\n"+extra+
		"auth:\n"+
		"  passthrough: true\n"+
		"  user: "+authRole+"\n"+
		"  query: \"SELECT * FROM pgsidecar_get_auth($1)\"\n"+
		"  users:\n"+
		"    - {name: "+authRole+", password_file: "+authFile+"}\n"+
		"    - {name: ops, password_file: "+opsFile+"}\n"+
		"admin:\n  users: [ops]\n")
}

// grantAuthRole lets authRole run the lookup function setupPassthroughRoles
// made (which it drops at cleanup, with this grant).
func grantAuthRole(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := connect(t, pg.AdminURLDB("app")).Exec(ctx, "GRANT EXECUTE ON FUNCTION pgsidecar_get_auth(text) TO "+authRole); err != nil {
		t.Fatal(err)
	}
}

// currentUser logs in with pgx at url and returns current_user.
func currentUser(ctx context.Context, url string) (string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var u string
	err = conn.QueryRow(ctx, "SELECT current_user").Scan(&u)
	return u, err
}

// TestNoPlaintextPasswordPassthrough: with auth.passthrough, a proxy whose
// configuration holds no password at all (upstream URL without one, the
// auth user's password in a password_file, a console login given only as
// the SCRAM verifier `pgsidecar hash-password` printed, in a file) serves
// psql and pgx clients as their own roles, checked against the database's
// verifiers; the verifier from the file works as an inline one, and
// PostgreSQL itself accepts the printed verifier as the role's password.
func TestNoPlaintextPasswordPassthrough(t *testing.T) {
	setupPassthroughRoles(t, authRole+":auth-pw-1", "alice:alice-pw", "bob:bob-pw", "ops:ops-initial")
	grantAuthRole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The verifier the binary prints is one PostgreSQL accepts as it is:
	// ops logs in directly with the cleartext behind it.
	opsVerifier := hashPasswordCmd(t, "ops-pw")
	if _, err := connect(t, pg.AdminURLDB("app")).Exec(ctx, "ALTER ROLE ops PASSWORD '"+opsVerifier+"'"); err != nil {
		t.Fatal(err)
	}
	if u, err := currentUser(ctx, pg.URL("ops", "ops-pw", "app")); err != nil || u != "ops" {
		t.Fatalf("direct login with the password behind hash-password's verifier: %q, %v", u, err)
	}

	dir := t.TempDir()
	authFile := writeSecretFile(t, filepath.Join(dir, "auth"), "auth-pw-1\n")
	opsFile := writeSecretFile(t, filepath.Join(dir, "ops"), opsVerifier+"\n")
	path := noPlaintextConfig(t, authFile, opsFile, "")
	cfgText, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{"auth-pw-1", "alice-pw", "bob-pw", "ops-pw", opsVerifier} {
		if strings.Contains(string(cfgText), pw) {
			t.Fatalf("the configuration holds a secret: %s", cfgText)
		}
	}
	p := StartProxy(t, WithEnv("DATABASE_URL", ""), WithEnv("PGSIDECAR_CONFIG", path))

	// psql as alice, pgx as bob: each is its own role on the server.
	out, err := runPsql(t, p.URL("alice", "alice-pw", "app"), "-Atc", "SELECT current_user || ' ' || (SELECT v FROM alice_t)")
	if err != nil || strings.TrimSpace(out) != "alice alice's row" {
		t.Errorf("psql as alice: %q, %v", out, err)
	}
	if u, err := currentUser(ctx, p.URL("bob", "bob-pw", "app")); err != nil || u != "bob" {
		t.Errorf("pgx as bob: %q, %v", u, err)
	}
	if _, err := currentUser(ctx, p.URL("bob", "alice-pw", "app")); sqlState(err) != "28P01" {
		t.Errorf("bob with alice's password: %v, want 28P01", err)
	}
	// ops through passthrough (its verifier from pg_authid) and on the
	// console (its verifier from the file): the same password for both.
	if u, err := currentUser(ctx, p.URL("ops", "ops-pw", "app")); err != nil || u != "ops" {
		t.Errorf("pgx as ops on app: %q, %v", u, err)
	}
	out, err = runPsql(t, consoleURL(p, "ops", "ops-pw"), "-c", "SHOW POOLS")
	if err != nil || !strings.Contains(out, "alice") {
		t.Errorf("psql as ops on the console (verifier from a password_file): %q, %v", out, err)
	}
	if _, err := runPsql(t, consoleURL(p, "ops", opsVerifier), "-c", "SHOW POOLS"); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("the verifier text itself as the console password: %v, want refused", err)
	}
	if p.Logs.Contains("auth-pw-1") || p.Logs.Contains("ops-pw") || p.Logs.Contains(opsVerifier[20:40]) {
		t.Errorf("the proxy's log shows a secret")
	}
}

// TestPasswordFileRotation: the auth user's password is rotated as a
// Kubernetes secret is (ALTER ROLE ... PASSWORD, new file content, SIGHUP):
// until the file changes, new auth backends fail to log in (so the lookup
// of a new role fails); after the SIGHUP they log in with the new password
// and the new role is served, while a client connected before stayed
// connected and kept working throughout, without a restart.
func TestPasswordFileRotation(t *testing.T) {
	setupPassthroughRoles(t, authRole+":auth-old", "alice:alice-pw", "bob:bob-pw")
	grantAuthRole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	authFile := writeSecretFile(t, filepath.Join(dir, "auth"), "auth-old\n")
	opsFile := writeSecretFile(t, filepath.Join(dir, "ops"), hashPasswordCmd(t, "ops-pw")+"\n")
	// Short backoff and waits: the failing phase must not slow the test.
	path := noPlaintextConfig(t, authFile, opsFile,
		"  acquire_timeout: 2s\n  reconnect_backoff: 100ms\n  reconnect_backoff_max: 200ms\n  hold_on_restart: 0s\n")
	p := StartProxy(t, WithEnv("DATABASE_URL", ""), WithEnv("PGSIDECAR_CONFIG", path))

	alice := connect(t, p.URL("alice", "alice-pw", "app"))
	aliceWorks := func(when string) {
		t.Helper()
		var u string
		if err := alice.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil || u != "alice" {
			t.Fatalf("alice's connection %s: %q, %v", when, u, err)
		}
	}
	aliceWorks("before the rotation")

	admin := connect(t, pg.AdminURLDB("app"))
	if _, err := admin.Exec(ctx, "ALTER ROLE "+authRole+" PASSWORD 'auth-new'"); err != nil {
		t.Fatal(err)
	}
	// The auth pool's sessions survive ALTER ROLE, as any would: end them
	// so the next lookup needs a new backend.
	terminate := func() {
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", authRole); err != nil {
			t.Fatal(err)
		}
	}
	terminate()
	// Still the old password in the file: bob cannot be looked up.
	waitFor(t, 15*time.Second, "the auth user's login to fail with the old password", func() bool {
		_, err := currentUser(ctx, p.URL("bob", "bob-pw", "app"))
		if err == nil {
			t.Fatalf("bob logged in although the auth user's file has the old password")
		}
		return p.Logs.Contains(`password authentication failed for user \"` + authRole + `\"`)
	})
	if _, err := currentUser(ctx, p.URL("bob", "bob-pw", "app")); sqlState(err) != "08006" || !strings.Contains(err.Error(), "could not look up the password") {
		t.Errorf("bob's login before the new file: %v, want 08006 (lookup failed)", err)
	}
	aliceWorks("after ALTER ROLE")

	writeSecretFile(t, authFile, "auth-new\n")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 15*time.Second, "bob to log in once the new password is read", func() bool {
		u, err := currentUser(ctx, p.URL("bob", "bob-pw", "app"))
		return err == nil && u == "bob"
	})
	if n := roleBackends(t, admin, authRole); n < 1 {
		t.Errorf("no backend of %s after bob's lookup", authRole)
	}
	aliceWorks("after the SIGHUP")
	if p.Logs.Contains("auth-new") || p.Logs.Contains("auth-old") {
		t.Errorf("the proxy's log shows a password")
	}
}

// TestPasswordFileStartupErrors: a password_file that is missing, empty or
// readable by others stops the start with one line naming the option, the
// file and the problem (never the content), before anything listens.
func TestPasswordFileStartupErrors(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("hunter2-secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	for _, c := range []struct{ name, file, want string }{
		{"missing", filepath.Join(dir, "missing"), filepath.Join(dir, "missing") + " does not exist"},
		{"empty", writeSecretFile(t, filepath.Join(dir, "empty"), ""), filepath.Join(dir, "empty") + " is empty"},
		{"world-readable", open, open + " has permissions 0644: a file of passwords must grant nothing to others"},
	} {
		path := testpg.WriteYAML(t, "upstream: "+urlWithoutPassword("app", "app")+"\n"+
			"auth:\n  users:\n    - {name: app, password_file: "+c.file+"}\n")
		start := time.Now()
		out, code := runBinary(t, []string{"PGSIDECAR_CONFIG=" + path, "PGSIDECAR_LISTEN=127.0.0.1:0", "PGSIDECAR_HEALTH__LISTEN=127.0.0.1:0"})
		if code != 1 || !strings.Contains(out, "config: auth.users[0].password_file: "+c.want) {
			t.Errorf("%s: exit %d: %s", c.name, code, out)
		}
		if strings.Contains(out, "hunter2") || strings.Contains(out, "ready") {
			t.Errorf("%s: the output shows the secret or a start: %s", c.name, out)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v to refuse", c.name, d)
		}
	}
}

// TestPasswordFileRotationSingleRole: in the default single-role mode the
// upstream URL has no password and takes its user's from a password_file
// (as PgBouncer takes a server password from its auth_file). Rotated with
// ALTER ROLE, new file content and SIGHUP: clients log in with the new
// password at once (the old is refused), and after RECONNECT the new
// backends log in with it, while a client connected before the rotation
// stays connected and is served by them. A later reload that finds the
// file emptied fails and keeps the running password.
func TestPasswordFileRotationSingleRole(t *testing.T) {
	const role = "pgsc_app"
	setupPassthroughRoles(t, role+":app-old")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	file := writeSecretFile(t, filepath.Join(t.TempDir(), "pw"), "app-old\n")
	path := testpg.WriteYAML(t, "upstream: "+urlWithoutPassword(role, "app")+"\n"+
		"pool:\n  min_size: 1\n"+
		"auth:\n  users:\n    - {name: "+role+", password_file: "+file+"}\n")
	p := StartProxy(t, WithEnv("DATABASE_URL", ""), WithEnv("PGSIDECAR_CONFIG", path))

	client := connect(t, p.URL(role, "app-old", "app"))
	if _, err := client.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	con := connect(t, consoleURL(p, role, "app-old"))
	old := serverPIDs(ctx, t, con)
	if len(old) == 0 {
		t.Fatal("no backend before the rotation")
	}

	admin := connect(t, pg.AdminURLDB("app"))
	if _, err := admin.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'app-new'"); err != nil {
		t.Fatal(err)
	}
	writeSecretFile(t, file, "app-new\n")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the new password to log in after SIGHUP", func() bool {
		_, err := currentUser(ctx, p.URL(role, "app-new", "app"))
		return err == nil
	})
	if _, err := currentUser(ctx, p.URL(role, "app-old", "app")); sqlState(err) != "28P01" {
		t.Errorf("old password after the rotation: %v, want 28P01", err)
	}
	// New backends: only the file's new password logs them in.
	if err := consoleExec(ctx, con, "RECONNECT app"); err != nil {
		t.Fatal(err)
	}
	var pid int64
	for range 3 {
		if err := client.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatalf("the client connected before the rotation: %v", err)
		}
		for _, o := range old {
			if pid == o {
				t.Fatalf("after RECONNECT the client ran on old backend %d", pid)
			}
		}
	}
	// A reload that finds the file emptied fails, says why, and keeps the
	// running password.
	writeSecretFile(t, file, "")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the failed reload to be logged", func() bool {
		return p.Logs.Contains(file + " is empty")
	})
	if _, err := currentUser(ctx, p.URL(role, "app-new", "app")); err != nil {
		t.Errorf("login after a failed reload: %v", err)
	}
	if p.Logs.Contains("app-new") || p.Logs.Contains("app-old") {
		t.Errorf("the proxy's log shows a password")
	}
}

// TestMD5HashLogins: a login given as the md5 hash PostgreSQL stored for a
// role (what a PgBouncer userlist.txt holds), here from a password_file,
// logs psql and pgx in with the role's password under auth.method md5 and
// plain; a wrong password gets 28P01.
func TestMD5HashLogins(t *testing.T) {
	const role = "pgsc_md5"
	setupPassthroughRoles(t, "md5:"+role+":md5-pw")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var hash string
	if err := connect(t, pg.AdminURLDB("app")).QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "md5") || len(hash) != 35 {
		t.Fatalf("%s's stored password is no md5 hash: %.5s...", role, hash)
	}
	// The test cluster's pg_hba asks for SCRAM, which an md5-stored role
	// cannot answer, so the hash is checked against its definition instead
	// of a direct login: md5 of password + role name.
	if sum := md5.Sum([]byte("md5-pw" + role)); hash != "md5"+hex.EncodeToString(sum[:]) {
		t.Fatalf("pg_authid's md5 hash is not md5(password + role)")
	}
	file := writeSecretFile(t, filepath.Join(t.TempDir(), "hash"), hash+"\n")
	path := testpg.WriteYAML(t, "auth:\n  users:\n    - {name: "+role+", password_file: "+file+"}\n")
	for _, method := range []string{"md5", "plain"} {
		p := StartProxy(t, WithEnv("PGSIDECAR_CONFIG", path), WithEnv("PGSIDECAR_AUTH__METHOD", method))
		// Single-role mode: the backend runs as the upstream URL's user.
		out, err := runPsql(t, p.URL(role, "md5-pw", "app"), "-Atc", "SELECT current_user")
		if err != nil || strings.TrimSpace(out) != "app" {
			t.Errorf("%s: psql with the hash's password: %q, %v", method, out, err)
		}
		if u, err := currentUser(ctx, p.URL(role, "md5-pw", "app")); err != nil || u != "app" {
			t.Errorf("%s: pgx with the hash's password: %q, %v", method, u, err)
		}
		if _, err := currentUser(ctx, p.URL(role, "wrong", "app")); sqlState(err) != "28P01" {
			t.Errorf("%s: wrong password: %v, want 28P01", method, err)
		}
	}
}

// TestPasswordFileRotationWildcard: a "*" databases entry whose URL has no
// password logs its pools in with its user's password_file; after a
// rotation (ALTER ROLE, new file, SIGHUP) both a pool opened before it,
// once its idle backends have closed (pool.max_idle), and a pool opened
// after it log in with the new password, and a client connected before
// the rotation is served throughout.
func TestPasswordFileRotationWildcard(t *testing.T) {
	const role = "pgsc_w"
	setupPassthroughRoles(t, role+":w-old")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	file := writeSecretFile(t, filepath.Join(t.TempDir(), "pw"), "w-old\n")
	path := testpg.WriteYAML(t, "databases:\n  \"*\":\n    url: "+urlWithoutPassword(role, "ignored")+"\n"+
		"pool:\n  min_size: 0\n  max_idle: 1s\n  idle_check_interval: 200ms\n"+
		"auth:\n  users:\n    - {name: "+role+", password_file: "+file+"}\n")
	p := StartProxy(t, WithEnv("DATABASE_URL", ""), WithEnv("PGSIDECAR_CONFIG", path))

	client := connect(t, p.URL(role, "w-old", "app"))
	query := func(when string) {
		t.Helper()
		var u string
		if err := client.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil || u != role {
			t.Fatalf("the client connected before the rotation, %s: %q, %v", when, u, err)
		}
	}
	query("before")

	admin := connect(t, pg.AdminURLDB("app"))
	if _, err := admin.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'w-new'"); err != nil {
		t.Fatal(err)
	}
	writeSecretFile(t, file, "w-new\n")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the new password to log in after SIGHUP", func() bool {
		_, err := currentUser(ctx, p.URL(role, "w-new", "app"))
		return err == nil
	})
	// The app pool's backends of before the rotation close when idle.
	waitFor(t, 10*time.Second, "the old backends to close (max_idle)", func() bool { return roleBackends(t, admin, role) == 0 })
	query("after the rotation, on a new backend")
	// A pool the "*" entry opens now uses the new password too.
	if u, err := currentUser(ctx, p.URL(role, "w-new", "postgres")); err != nil || u != role {
		t.Errorf("a database first asked for after the rotation: %q, %v", u, err)
	}
}
