package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// loginUser logs in to url, runs SELECT current_user and returns it, or the
// login's error.
func loginUser(ctx context.Context, url string) (string, error) {
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	res, err := c.Exec(ctx, "SELECT current_user").ReadAll()
	if err != nil {
		return "", err
	}
	return string(res[0].Rows[0][0]), nil
}

// pgErrOf returns err's server error fields that a client sees, or fails.
func pgErrOf(t *testing.T, what string, err error) pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("%s: want a server error, got %v", what, err)
	}
	return pgconn.PgError{Severity: pe.Severity, Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint}
}

// scramSaltShown starts a SCRAM login as user to db on addr and returns the
// salt the server shows before any proof is checked.
func scramSaltShown(t *testing.T, addr, user, db string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": db}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := fe.Receive(); err != nil {
		t.Fatalf("%s@%s: %v", user, db, err)
	} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("%s@%s: got %T, want AuthenticationSASL", user, db, msg)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=0123456789abcdefghijklmn")})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("%s@%s: %v", user, db, err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("%s@%s: got %T, want AuthenticationSASLContinue", user, db, msg)
	}
	for _, f := range strings.Split(string(cont.Data), ",") {
		if s, ok := strings.CutPrefix(f, "s="); ok {
			return s
		}
	}
	t.Fatalf("%s@%s: no salt in %q", user, db, cont.Data)
	return ""
}

// TestLoginsPerDatabase: an auth.users login reaches upstream, and another
// database only when that database's users lists it. The reported hole was a
// login meant for the application reaching a second database as the
// superuser postgres; here database "admin" is exactly that (postgres over
// the unix socket). A login trying a database it may not use gets the same
// 28P01 as a wrong password, after the same SCRAM exchange (same salt), and
// an unknown database is reported only after a good login, as PostgreSQL
// itself does (compared with a direct connection).
func TestLoginsPerDatabase(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_AUTH__USERS", "alice:alice-pw,ops:ops-pw"),
		WithEnv("PGSIDECAR_DATABASES__ADMIN__URL", pg.AdminURL()),
		WithEnv("PGSIDECAR_DATABASES__ADMIN__USERS", "ops"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, c := range []struct{ user, pw, db, role string }{
		{"alice", "alice-pw", "app", "app"}, // env login on upstream
		{"ops", "ops-pw", "app", "app"},     // every login reaches upstream
		{"ops", "ops-pw", "admin", "postgres"},
		{"app", "app", "app", "app"}, // the URL's own user
	} {
		role, err := loginUser(ctx, p.URL(c.user, c.pw, c.db))
		if err != nil || role != c.role {
			t.Errorf("%s on %s: role %q, err %v; want role %s", c.user, c.db, role, err, c.role)
		}
	}

	// The refusals: each must read exactly like a wrong password.
	_, err := loginUser(ctx, p.URL("alice", "wrong", "app"))
	wrongPw := pgErrOf(t, "alice with a wrong password", err)
	if wrongPw.Code != "28P01" {
		t.Fatalf("wrong password: %+v", wrongPw)
	}
	for _, c := range []struct{ user, pw, db string }{
		{"alice", "alice-pw", "admin"}, // right password, database not listed
		{"alice", "wrong", "admin"},
		{"app", "app", "admin"}, // upstream's own user
	} {
		_, err := loginUser(ctx, p.URL(c.user, c.pw, c.db))
		got := pgErrOf(t, c.user+" on "+c.db, err)
		want := wrongPw
		want.Message = strings.Replace(want.Message, `"alice"`, `"`+c.user+`"`, 1)
		if got != want {
			t.Errorf("%s (password %s) on %s: %+v\nwant the wrong-password error %+v", c.user, c.pw, c.db, got, want)
		}
	}

	// An unknown database: 3D000 only after a good login, 28P01 before,
	// as PostgreSQL does.
	for _, c := range []struct{ pw, want string }{{"app", "3D000"}, {"wrong", "28P01"}} {
		_, direct := loginUser(ctx, pg.URL("app", c.pw, "nosuch"))
		_, proxied := loginUser(ctx, p.URL("app", c.pw, "nosuch"))
		if d, pr := pgErrOf(t, "direct", direct).Code, pgErrOf(t, "proxied", proxied).Code; d != c.want || pr != c.want {
			t.Errorf("password %s on a database that does not exist: direct %s, proxy %s, want %s", c.pw, d, pr, c.want)
		}
	}

	// After a good login, the 3D000 hint names the databases this login may
	// use, not the others.
	_, err = loginUser(ctx, p.URL("alice", "alice-pw", "nosuch"))
	if e := pgErrOf(t, "alice on nosuch", err); e.Code != "3D000" || !strings.Contains(e.Hint, "app") || strings.Contains(e.Hint, "admin") {
		t.Errorf("alice on a database that does not exist: %+v", e)
	}

	// Before any proof is checked, a client fishing for names is shown the same SCRAM salt for
	// a login whatever the database: allowed, not allowed, or not served.
	salt := scramSaltShown(t, p.Addr, "alice", "app")
	for _, db := range []string{"admin", "nosuch"} {
		if s := scramSaltShown(t, p.Addr, "alice", db); s != salt {
			t.Errorf("alice on %s is shown salt %s, on app %s: the salt tells the databases apart", db, s, salt)
		}
	}
}

// TestLoginsFromFile: auth.users_file adds logins (one name:password a
// line; the password may hold spaces, commas and colons, or be a SCRAM
// verifier copied from pg_authid), they reach upstream, and a SIGHUP
// re-reads the file: the new password works at once and the old one no
// longer does.
func TestLoginsFromFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A login may be given as PostgreSQL's own SCRAM verifier, copied from
	// pg_authid: the proxy then never holds the cleartext password.
	var verifier string
	if err := adminConn(t).QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Fatalf("app's stored password is no SCRAM verifier: %.14s...", verifier)
	}
	write("# logins of the application\n\nfile_user:pw with spaces, a comma: and colons\nverifier_user:" + verifier + "\n")
	p := StartProxy(t, WithEnv("PGSIDECAR_AUTH__USERS_FILE", file))
	if role, err := loginUser(ctx, p.URL("file_user", "pw with spaces, a comma: and colons", "app")); err != nil || role != "app" {
		t.Fatalf("file login: role %q, err %v", role, err)
	}
	// The verifier's password is app's, as on a direct connection.
	if _, err := loginUser(ctx, pg.URL("app", "app", "app")); err != nil {
		t.Fatalf("direct login with the verifier's password: %v", err)
	}
	if role, err := loginUser(ctx, p.URL("verifier_user", "app", "app")); err != nil || role != "app" {
		t.Fatalf("login by SCRAM verifier: role %q, err %v", role, err)
	}
	for _, pw := range []string{"wrong", verifier} {
		if _, err := loginUser(ctx, p.URL("verifier_user", pw, "app")); sqlState(err) != "28P01" {
			t.Fatalf("verifier login with a wrong password: %v", err)
		}
	}
	if _, err := loginUser(ctx, p.URL("file_user", "pw with spaces", "app")); sqlState(err) != "28P01" {
		t.Fatalf("wrong password for a file login: %v", err)
	}

	write("file_user:rotated\n")
	p.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the rotated password to work after SIGHUP", func() bool {
		_, err := loginUser(ctx, p.URL("file_user", "rotated", "app"))
		return err == nil
	})
	if _, err := loginUser(ctx, p.URL("file_user", "pw with spaces, a comma: and colons", "app")); sqlState(err) != "28P01" {
		t.Fatalf("old password after the rotation: %v", err)
	}
}
