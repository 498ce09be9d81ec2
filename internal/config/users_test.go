package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// targetUsers returns each target's logins by database name.
func targetUsers(t *testing.T, cfg *Config) map[string]map[string]string {
	t.Helper()
	ts, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, tg := range ts {
		out[tg.Name] = tg.Users
	}
	return out
}

func TestUsersFromEnvironment(t *testing.T) {
	testpg.IsolatePG(t)
	cfg := mustLoad(t, "",
		"DATABASE_URL="+testURL,
		"PGSIDECAR_AUTH__USERS=alice:secret, bob:pw:with:colons ,carol:",
		"PGSIDECAR_AUTH__METHOD=trust", // carol has no password
		"PGSIDECAR_DATABASES__REPORTS__URL=postgres://rep:rep-pw@127.0.0.1:5433/reporting",
		"PGSIDECAR_DATABASES__REPORTS__USERS=bob, carol",
	)
	want := []UserConfig{{Name: "alice", Password: "secret"}, {Name: "bob", Password: "pw:with:colons"}, {Name: "carol", Password: ""}}
	if !reflect.DeepEqual(cfg.Auth.Users, want) {
		t.Fatalf("auth.users = %#v, want %#v", cfg.Auth.Users, want)
	}
	if got := cfg.Databases["reports"].Users; !reflect.DeepEqual(got, []string{"bob", "carol"}) {
		t.Fatalf("databases.reports.users = %q", got)
	}
	users := targetUsers(t, cfg)
	if want := map[string]string{"app": "s3cr3t-pw", "alice": "secret", "bob": "pw:with:colons", "carol": ""}; !reflect.DeepEqual(users["appdb"], want) {
		t.Errorf("upstream logins = %v, want %v", users["appdb"], want)
	}
	if want := map[string]string{"rep": "rep-pw", "bob": "pw:with:colons", "carol": ""}; !reflect.DeepEqual(users["reports"], want) {
		t.Errorf("reports logins = %v, want %v", users["reports"], want)
	}

	// An empty variable is unset; an entry without a colon is refused
	// without echoing it (it may be a password).
	cfg = mustLoad(t, "", "DATABASE_URL="+testURL, "PGSIDECAR_AUTH__USERS=")
	if len(cfg.Auth.Users) != 0 {
		t.Errorf("empty PGSIDECAR_AUTH__USERS gave %v", cfg.Auth.Users)
	}
	err := wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS=alice:ok,hunter2"},
		"config: auth.users:", "entry 2 has no ':'")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error quotes the entry: %v", err)
	}
}

func TestUsersFile(t *testing.T) {
	testpg.IsolatePG(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "users")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# logins\n\nalice:a pw with spaces \r\n  bob:b:c\n# carol:gone\n")
	cfg := mustLoad(t, "", "DATABASE_URL="+testURL, "PGSIDECAR_AUTH__USERS_FILE="+file,
		"PGSIDECAR_AUTH__USERS=dave:d")
	want := []UserConfig{{Name: "alice", Password: "a pw with spaces "}, {Name: "bob", Password: "b:c"}}
	if !reflect.DeepEqual(cfg.Auth.FileUsers, want) {
		t.Fatalf("file users = %#v, want %#v", cfg.Auth.FileUsers, want)
	}
	if got := targetUsers(t, cfg)["appdb"]; !reflect.DeepEqual(got, map[string]string{
		"app": "s3cr3t-pw", "alice": "a pw with spaces ", "bob": "b:c", "dave": "d"}) {
		t.Errorf("upstream logins = %v", got)
	}

	write("alice:x\nsecret-without-colon\n")
	err := wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS_FILE=" + file},
		"config: auth.users_file: "+file+" line 2: want name:password")
	if strings.Contains(err.Error(), "secret-without-colon") {
		t.Errorf("error quotes the line: %v", err)
	}
	write("alice:x\n")
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS_FILE=" + file, "PGSIDECAR_AUTH__USERS=alice:y"},
		`user "alice" is listed twice`)
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS_FILE=" + filepath.Join(dir, "none")},
		"config: auth.users_file:", "does not exist")
}

func TestDatabaseUsersChecked(t *testing.T) {
	testpg.IsolatePG(t)
	rep := "PGSIDECAR_DATABASES__REPORTS__URL=postgres://rep:rep-pw@127.0.0.1:5433/reporting"
	// A listed name must be a defined login.
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, rep, "PGSIDECAR_DATABASES__REPORTS__USERS=mallory"},
		`config: databases.reports.users[0]: "mallory" is not a login of auth.users or auth.users_file`)
	// Without upstream, a login no database lists reaches nothing.
	wantErr(t, "", []string{rep, "PGSIDECAR_AUTH__USERS=alice:a,bob:b", "PGSIDECAR_DATABASES__REPORTS__USERS=alice"},
		`config: auth.users: login "bob" can reach no database`)
	// A database without a URL password and without listed logins has nobody.
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS=alice:a",
		"PGSIDECAR_DATABASES__ADMIN__URL=postgres://postgres@127.0.0.1:5433/postgres"},
		`config: databases.admin.users: nobody can log in to database "admin"`)
}

func TestUsersReloadIsLive(t *testing.T) {
	testpg.IsolatePG(t)
	file := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(file, []byte("alice:one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS_FILE=" + file,
		"PGSIDECAR_DATABASES__REPORTS__URL=postgres://rep:rep-pw@127.0.0.1:5433/reporting"}
	running := mustLoad(t, "", env...)
	if err := os.WriteFile(file, []byte("alice:two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := mustLoad(t, "", append(env, "PGSIDECAR_DATABASES__REPORTS__USERS=alice")...)
	plan := Plan(running, next)
	if want := []string{"auth.users_file (contents)", "databases.reports.users"}; !reflect.DeepEqual(plan.Live, want) || len(plan.Restart) != 0 {
		t.Fatalf("live %v restart %v, want live %v", plan.Live, plan.Restart, want)
	}
	if got := targetUsers(t, plan.Applied)["reports"]["alice"]; got != "two" {
		t.Errorf("after reload alice on reports has password %q, want the file's new one", got)
	}
}

func TestUsersSCRAMVerifier(t *testing.T) {
	testpg.IsolatePG(t)
	// A verifier as PostgreSQL stores it (password "pw", salt "0123456789abcdef").
	const v = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$" +
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	cfg := mustLoad(t, "", "DATABASE_URL="+testURL, "PGSIDECAR_AUTH__USERS=alice:"+v)
	if cfg.Auth.Users[0].Password != v {
		t.Fatalf("verifier not kept as written: %q", cfg.Auth.Users[0].Password)
	}
	wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS=alice:" + v, "PGSIDECAR_AUTH__METHOD=md5"},
		"config: auth.users[0].password: is a SCRAM verifier, which only auth.method scram-sha-256 can check (got md5)")
	err := wantErr(t, "", []string{"DATABASE_URL=" + testURL, "PGSIDECAR_AUTH__USERS=alice:SCRAM-SHA-256$4096:c2VjcmV0$AAAA:AAAA"},
		"config: auth.users[0].password: invalid SCRAM verifier")
	if strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("error quotes the verifier: %v", err)
	}
}
