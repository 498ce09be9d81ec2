package config

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// writeSecret writes body to a file of mode perm in dir and returns its path.
func writeSecret(t *testing.T, dir, name, body string, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), perm); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode passes through the umask, and leaves an existing
	// file's mode alone: set it as asked.
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

// usersYAML is a config with upstream and auth.users entries (each a YAML
// flow mapping, e.g. `{name: app, password_file: /x}`).
func usersYAML(t *testing.T, upstream string, entries ...string) string {
	t.Helper()
	body := "upstream: " + upstream + "\nauth:\n  users:\n"
	for _, e := range entries {
		body += "    - " + e + "\n"
	}
	return testpg.WriteYAML(t, body)
}

// TestPasswordFile: an auth.users entry takes its password from
// password_file, the file's whole content less one trailing newline
// (spaces kept), as a mounted Kubernetes secret holds it; a SCRAM verifier
// in the file is the same login as the verifier inline.
func TestPasswordFile(t *testing.T) {
	testpg.IsolatePG(t)
	dir := t.TempDir()
	const v = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$" +
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	for _, c := range []struct{ body, want string }{
		{"s3cret\n", "s3cret"},
		{"s3cret\r\n", "s3cret"},
		{"s3cret", "s3cret"},
		{" spaced pw \n", " spaced pw "},
		{v + "\n", v},
	} {
		f := writeSecret(t, dir, "pw", c.body, 0o600)
		cfg := mustLoad(t, usersYAML(t, testURL, "{name: alice, password_file: "+f+"}"))
		if got := cfg.Auth.Users[0].Password; got != c.want {
			t.Errorf("file %q: password %q, want %q", c.body, got, c.want)
		}
		if got := targetUsers(t, cfg)["appdb"]["alice"]; got != c.want {
			t.Errorf("file %q: alice's login %q, want %q", c.body, got, c.want)
		}
	}
	// The verifier from the file is checked as the inline one is.
	f := writeSecret(t, dir, "verifier", v+"\n", 0o600)
	inline := mustLoad(t, usersYAML(t, testURL, "{name: alice, password: '"+v+"'}"))
	fromFile := mustLoad(t, usersYAML(t, testURL, "{name: alice, password_file: "+f+"}"))
	if a, b := targetUsers(t, inline)["appdb"], targetUsers(t, fromFile)["appdb"]; !reflect.DeepEqual(a, b) {
		t.Errorf("verifier inline gives logins %v, from a file %v", a, b)
	}
	err := wantErr(t, usersYAML(t, testURL, "{name: alice, password_file: "+f+"}"), []string{"PGSIDECAR_AUTH__METHOD=md5"},
		"config: auth.users[0].password_file ("+f+"): is a SCRAM verifier, which only auth.method scram-sha-256 can check")
	if strings.Contains(err.Error(), "MDEyMzQ1") {
		t.Errorf("error quotes the verifier: %v", err)
	}
	// A group-readable file is accepted (a Kubernetes secret mounted with
	// fsGroup and defaultMode 0440).
	f = writeSecret(t, dir, "group", "pw\n", 0o440)
	mustLoad(t, usersYAML(t, testURL, "{name: alice, password_file: "+f+"}"))
}

// TestPasswordFileErrors: a missing, empty, multi-line, oversized or too
// open file, a directory, and an entry with both password and
// password_file each fail the load with a line naming the option, the file
// and the problem, never the file's content.
func TestPasswordFileErrors(t *testing.T) {
	testpg.IsolatePG(t)
	dir := t.TempDir()
	const secret = "hunter2-secret"
	for _, c := range []struct {
		name  string
		path  string
		entry string // auth.users entry; "" = {name: alice, password_file: path}
		want  string
	}{
		{name: "missing", path: filepath.Join(dir, "none"), want: "does not exist"},
		{name: "empty", path: writeSecret(t, dir, "empty", "", 0o600), want: "is empty: it must hold the password"},
		{name: "only a newline", path: writeSecret(t, dir, "nl", "\n", 0o600), want: "is empty"},
		{name: "two lines", path: writeSecret(t, dir, "two", secret+"\nalice:"+secret+"\n", 0o600),
			want: "holds more than one line"},
		{name: "world-readable", path: writeSecret(t, dir, "world", secret, 0o644),
			want: "has permissions 0644: a file of passwords must grant nothing to others"},
		{name: "group-writable", path: writeSecret(t, dir, "gw", secret, 0o660), want: "has permissions 0660"},
		{name: "too large", path: writeSecret(t, dir, "big", strings.Repeat("x", maxSecretFile+1), 0o600),
			want: "is larger than 1048576 bytes"},
		{name: "directory", path: dir, want: "is not a regular file"},
		{name: "both", path: writeSecret(t, dir, "both", secret, 0o600),
			entry: "{name: alice, password: " + secret + ", password_file: " + filepath.Join(dir, "both") + "}",
			want:  "set either password or password_file, not both"},
	} {
		t.Run(c.name, func(t *testing.T) {
			entry := c.entry
			if entry == "" {
				entry = "{name: alice, password_file: " + c.path + "}"
			}
			err := wantErr(t, usersYAML(t, testURL, "{name: bob, password: b}", entry), nil,
				"config: auth.users[1].password_file: ", c.want)
			if c.name != "both" && !strings.Contains(err.Error(), c.path) {
				t.Errorf("error does not name the file %s: %v", c.path, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error quotes the file's content: %v", err)
			}
		})
	}
	// auth.users_file, also a file of passwords, gets the same check.
	f := writeSecret(t, dir, "users", "alice:"+secret+"\n", 0o604)
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS_FILE=" + f},
		"config: auth.users_file: "+f+" has permissions 0604")
	// A file the process may not open (root opens any, so this is shown
	// on the error the open returns).
	err := fileError("/run/secrets/x", &fs.PathError{Op: "open", Path: "/run/secrets/x", Err: syscall.EACCES})
	if want := "/run/secrets/x cannot be read by this process (permission denied)"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("permission error %q, want %q...", err, want)
	}
}

// TestURLPasswordFromAuthUsers: a URL without a password logs its backends
// in with its user's auth.users password (as PgBouncer's auth_file), so a
// password_file serves the upstream login too; a password in the URL wins,
// and a verifier is never used as a backend password.
func TestURLPasswordFromAuthUsers(t *testing.T) {
	testpg.IsolatePG(t)
	dir := t.TempDir()
	f := writeSecret(t, dir, "app", "from-file\n", 0o400)
	noPW := "postgres://app@127.0.0.1:5432/appdb?sslmode=disable"
	yaml := func(upstream string, entry string) string {
		return testpg.WriteYAML(t, "upstream: "+upstream+"\ndatabases:\n  reports:\n    url: postgres://app@127.0.0.1:5433/rep\n"+
			"auth:\n  users:\n    - "+entry+"\n")
	}
	cfg := mustLoad(t, yaml(noPW, "{name: app, password_file: "+f+"}"))
	ts, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range ts {
		if tg.Conn.Password != "from-file" || tg.Users["app"] != "from-file" {
			t.Errorf("%s: backend password %q, app's login %q; want the file's", tg.Key, tg.Conn.Password, tg.Users["app"])
		}
		if strings.Contains(tg.Redacted(), "from-file") {
			t.Errorf("%s: redacted URL shows the password: %s", tg.Key, tg.Redacted())
		}
	}
	// Without upstream, the URL user's entry reaches its own database
	// (here a "*" entry) without being listed in its users.
	cfg = mustLoad(t, testpg.WriteYAML(t, "databases:\n  \"*\":\n    url: postgres://app@127.0.0.1:5433/x\n"+
		"auth:\n  users:\n    - {name: app, password_file: "+f+"}\n"))
	if ts, err := cfg.Targets(); err != nil || ts[0].Conn.Password != "from-file" || ts[0].Users["app"] != "from-file" {
		t.Errorf("\"*\" entry: %v, %+v", err, ts)
	}
	cfg = mustLoad(t, yaml(testURL, "{name: app, password_file: "+f+"}"))
	if ts, _ := cfg.Targets(); ts[0].Conn.Password != "s3cr3t-pw" {
		t.Errorf("URL with a password: backend password %q, want the URL's", ts[0].Conn.Password)
	}
	v := "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	cfg = mustLoad(t, yaml(noPW, "{name: app, password: '"+v+"'}"))
	if ts, _ := cfg.Targets(); ts[0].Conn.Password != "" || ts[0].Users["app"] != v {
		t.Errorf("verifier entry: backend password %q (want none), login %q (want the verifier)", ts[0].Conn.Password, ts[0].Users["app"])
	}
}

// TestPasswordFileReload: a reload reads the file again, so a rotated
// secret becomes both the login's password and the backend password of a
// URL without one, live; SHOW CONFIG shows neither.
func TestPasswordFileReload(t *testing.T) {
	testpg.IsolatePG(t)
	dir := t.TempDir()
	f := writeSecret(t, dir, "app", "before\n", 0o600)
	path := testpg.WriteYAML(t, "upstream: postgres://app@127.0.0.1:5432/appdb\nauth:\n  passthrough: true\n"+
		"  users:\n    - {name: app, password_file: "+f+"}\n")
	running := mustLoad(t, path)
	writeSecret(t, dir, "app", "after\n", 0o600)
	next := mustLoad(t, path)
	plan := Plan(running, next)
	if !reflect.DeepEqual(plan.Live, []string{"auth.users"}) || len(plan.Restart) != 0 {
		t.Errorf("rotation: live %v, restart %v; want live [auth.users]", plan.Live, plan.Restart)
	}
	if err := plan.Applied.Validate(); err != nil {
		t.Fatal(err)
	}
	ts, err := plan.Applied.Targets()
	if err != nil {
		t.Fatal(err)
	}
	if ts[0].Conn.Password != "after" || ts[0].Users["app"] != "after" {
		t.Errorf("after the rotation: backend password %q, login %q; want the new one", ts[0].Conn.Password, ts[0].Users["app"])
	}
	for _, kv := range plan.Applied.Show() {
		if strings.Contains(kv[1], "after") || strings.Contains(kv[1], "before") {
			t.Errorf("SHOW CONFIG %s = %q shows the secret", kv[0], kv[1])
		}
	}
	// The file turned bad: the reload fails, the running config stays.
	writeSecret(t, dir, "app", "", 0o600)
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("reload with an emptied file: %v, want an error", err)
	}
}

// TestUsersMD5Hash: an auth.users password that is an md5 hash (as
// pg_authid and PgBouncer's userlist.txt hold it) is accepted by the md5
// and plain methods, refused at load by the others with the way out, and
// never used as a backend password.
func TestUsersMD5Hash(t *testing.T) {
	testpg.IsolatePG(t)
	const h = "md54a0a68b43b6cd5cf266fa02f196e2371" // user alice, password secret
	for _, m := range []string{"md5", "plain"} {
		mustLoad(t, "", "DATABASE_URL="+testURL, "PGSIDECAR_AUTH__USERS=alice:"+h, "PGSIDECAR_AUTH__METHOD="+m)
	}
	for _, m := range []string{"scram-sha-256", "trust"} {
		wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS=alice:" + h, "PGSIDECAR_AUTH__METHOD=" + m},
			"config: auth.users[0].password: is an md5 hash, which only auth.method md5 or plain can check (got "+m+")",
			"pgsidecar hash-password")
	}
	cfg := mustLoad(t, "", "DATABASE_URL=postgres://alice@127.0.0.1:5432/appdb", "PGSIDECAR_AUTH__USERS=alice:"+h, "PGSIDECAR_AUTH__METHOD=md5")
	if ts, _ := cfg.Targets(); ts[0].Conn.Password != "" || ts[0].Users["alice"] != h {
		t.Errorf("md5 entry of the URL user: backend password %q (want none), login %q", ts[0].Conn.Password, ts[0].Users["alice"])
	}
}
