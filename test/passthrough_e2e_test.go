package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// passthroughQuery is the documented SECURITY DEFINER alternative to
// reading pg_authid: the upstream user app is no superuser.
const passthroughQuery = "SELECT * FROM pgsidecar_get_auth($1)"

// setupPassthroughRoles creates, in database app, the roles the
// passthrough tests log in as (each "role:password"; a role written
// "!role:password" gets NOLOGIN, "md5:role:password" an md5 password),
// the tables alice_t (alice may read) and bob_t (bob may read), and the
// lookup function app may run. Everything is dropped at cleanup.
func setupPassthroughRoles(t *testing.T, roles ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	admin := connect(t, pg.AdminURLDB("app"))
	var names []string
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pg.AdminURLDB("app"))
		if err != nil {
			t.Errorf("cleanup connect: %v", err)
			return
		}
		defer c.Close(ctx)
		stmts := []string{"DROP TABLE IF EXISTS alice_t, bob_t", "DROP FUNCTION IF EXISTS pgsidecar_get_auth(text)"}
		for _, n := range names {
			// Its backends may still be closing in the proxy's pool.
			stmts = append(stmts, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+n+"'",
				"DROP ROLE IF EXISTS "+n)
		}
		for _, s := range stmts {
			if _, err := c.Exec(ctx, s); err != nil {
				t.Errorf("cleanup %s: %v", s, err)
			}
		}
	}
	for _, r := range roles {
		name, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(r, "!"), "md5:"), ":")
		names = append(names, name)
	}
	drop()
	t.Cleanup(drop)
	for _, r := range roles {
		login, enc := "LOGIN", "scram-sha-256"
		if rest, ok := strings.CutPrefix(r, "!"); ok {
			r, login = rest, "NOLOGIN"
		}
		if rest, ok := strings.CutPrefix(r, "md5:"); ok {
			r, enc = rest, "md5"
		}
		name, pw, _ := strings.Cut(r, ":")
		exec("SET password_encryption = '" + enc + "'")
		exec(fmt.Sprintf("CREATE ROLE %s %s PASSWORD '%s'", name, login, pw))
		exec("RESET password_encryption")
	}
	exec("CREATE TABLE alice_t (v text)")
	exec("INSERT INTO alice_t VALUES ('alice''s row')")
	exec("CREATE TABLE bob_t (v text)")
	exec("INSERT INTO bob_t VALUES ('bob''s row')")
	for _, r := range roles {
		name, _, _ := strings.Cut(r, ":")
		switch name {
		case "alice":
			exec("GRANT SELECT ON alice_t TO alice")
		case "bob":
			exec("GRANT SELECT ON bob_t TO bob")
		}
	}
	exec(`CREATE FUNCTION pgsidecar_get_auth(p_user text, OUT uname text, OUT phash text)
		RETURNS SETOF record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
		$$ SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = p_user AND rolcanlogin $$`)
	exec("REVOKE ALL ON FUNCTION pgsidecar_get_auth(text) FROM PUBLIC")
	exec("GRANT EXECUTE ON FUNCTION pgsidecar_get_auth(text) TO app")
}

// startPassthroughProxy starts a proxy in passthrough mode with the
// lookup function, a verifier cache of ttl, and opts.
func startPassthroughProxy(t *testing.T, ttl string, opts ...ProxyOption) *Proxy {
	t.Helper()
	return StartProxy(t, append([]ProxyOption{
		WithEnv("PGSIDECAR_AUTH__PASSTHROUGH", "true"),
		WithEnv("PGSIDECAR_AUTH__QUERY", passthroughQuery),
		WithEnv("PGSIDECAR_AUTH__CACHE_TTL", ttl),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
	}, opts...)...)
}

// roleBackends counts the server's backends of role in database app.
func roleBackends(t *testing.T, admin *pgx.Conn, role string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// jsonPool is the row of the admin JSON read /pools (the rows of SHOW
// POOLS) for database db and user role, or nil (the rows are logged).
func jsonPool(t *testing.T, p *Proxy, db, role string) map[string]any {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.HealthAddr + "/pools")
	if err != nil {
		t.Fatalf("GET /pools: %v", err)
	}
	defer resp.Body.Close()
	var pools []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&pools); err != nil {
		t.Fatalf("GET /pools: %v", err)
	}
	for _, sp := range pools {
		if sp["database"] == db && sp["user"] == role {
			return sp
		}
	}
	t.Logf("/pools: %v", pools)
	return nil
}

// jsonPoolsHave reports whether /pools lists a pool of database db and
// user role.
func jsonPoolsHave(t *testing.T, p *Proxy, db, role string) bool {
	t.Helper()
	return jsonPool(t, p, db, role) != nil
}

// statsPoolNamed returns the /stats pool called name, or nil.
func statsPoolNamed(t *testing.T, p *Proxy, name string) map[string]any {
	t.Helper()
	for _, sp := range statsPools(p.Stats(t)) {
		if str(sp, "name") == name {
			return sp
		}
	}
	return nil
}

// TestPassthroughRolesOwnPrivileges: in passthrough mode alice and bob log
// in through the proxy as themselves: current_user and session_user are
// theirs on the server, each reads its own table and is refused (42501)
// the other's, exactly as on a direct connection; each gets its own pool;
// and both share the proxy under load (bounded pgx loops) without a query
// ever running as the other role.
func TestPassthroughRolesOwnPrivileges(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw", "bob:bob-pw")
	p := startPassthroughProxy(t, "30s")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for _, c := range []struct{ role, pw, own, other string }{
		{"alice", "alice-pw", "alice_t", "bob_t"},
		{"bob", "bob-pw", "bob_t", "alice_t"},
	} {
		for _, via := range []struct{ name, url string }{
			{"proxy", p.URL(c.role, c.pw, "app")},
			{"direct", pg.URL(c.role, c.pw, "app")},
		} {
			conn := connect(t, via.url)
			var cur, sess, row string
			if err := conn.QueryRow(ctx, "SELECT current_user, session_user").Scan(&cur, &sess); err != nil || cur != c.role || sess != c.role {
				t.Errorf("%s via %s: current_user %q session_user %q (%v), want %s", c.role, via.name, cur, sess, err, c.role)
			}
			if err := conn.QueryRow(ctx, "SELECT v FROM "+c.own).Scan(&row); err != nil {
				t.Errorf("%s via %s reads %s: %v", c.role, via.name, c.own, err)
			}
			_, err := conn.Exec(ctx, "SELECT v FROM "+c.other)
			if sqlState(err) != "42501" {
				t.Errorf("%s via %s reads %s: %v, want 42501 (permission denied)", c.role, via.name, c.other, err)
			}
			// The refusal left the session usable.
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&cur); err != nil || cur != c.role {
				t.Errorf("%s via %s after the refusal: %q, %v", c.role, via.name, cur, err)
			}
		}
		if !jsonPoolsHave(t, p, "app", c.role) {
			t.Errorf("/pools (as SHOW POOLS) has no pool for database app, user %s", c.role)
		}
		if sp := statsPoolNamed(t, p, "app/"+c.role); sp == nil {
			t.Errorf("/stats has no pool app/%s", c.role)
		} else if max, _ := num(sp, "max_size"); max != 10 {
			t.Errorf("pool app/%s max_size %v, want pool.max_size 10", c.role, max)
		}
	}

	// Under load: 2 roles x 4 clients x 30 transactions, each checking it
	// runs as its own role and may read only its own table.
	const clients, rounds = 4, 30
	var wg sync.WaitGroup
	errs := make(chan error, 2*clients)
	for _, c := range []struct{ role, pw, own string }{{"alice", "alice-pw", "alice_t"}, {"bob", "bob-pw", "bob_t"}} {
		for range clients {
			wg.Add(1)
			go func() { // ends after rounds transactions or at the first error
				defer wg.Done()
				conn, err := pgx.Connect(ctx, p.URL(c.role, c.pw, "app"))
				if err != nil {
					errs <- fmt.Errorf("%s connect: %w", c.role, err)
					return
				}
				defer conn.Close(context.Background())
				for i := range rounds {
					var cur, row string
					err := conn.QueryRow(ctx, "SELECT current_user, (SELECT v FROM "+c.own+")").Scan(&cur, &row)
					if err != nil || cur != c.role {
						errs <- fmt.Errorf("%s round %d: current_user %q: %v", c.role, i, cur, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	admin := adminConn(t)
	if n := roleBackends(t, admin, "alice"); n < 1 || n > 10 {
		t.Errorf("alice has %d backends, want 1..pool.max_size", n)
	}
	if !p.Logs.ContainsWithin(`"pool opened for a role (auth.passthrough)"`, 2*time.Second) {
		t.Error("no log line for the role pools")
	}
}

// TestPassthroughRefusals: a wrong password, an unknown role, a role
// without LOGIN and a role whose password is stored as md5 all get 28P01
// with the same message as a wrong password, and no backend of that role
// is opened (pg_stat_activity, /stats); the md5 role is logged for the
// operator. A direct connection refuses the first two with 28P01 too.
func TestPassthroughRefusals(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw", "!pa_nologin:nologin-pw", "md5:pa_md5:md5-pw")
	p := startPassthroughProxy(t, "30s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)

	for _, c := range []struct{ what, role, pw string }{
		{"wrong password", "alice", "not-alice-pw"},
		{"unknown role", "pa_nobody", "whatever"},
		{"role without LOGIN", "pa_nologin", "nologin-pw"},
		{"md5 password", "pa_md5", "md5-pw"},
	} {
		_, err := loginUser(ctx, p.URL(c.role, c.pw, "app"))
		pe := pgErrOf(t, c.what, err)
		want := fmt.Sprintf("password authentication failed for user %q", c.role)
		if pe.Code != "28P01" || pe.Message != want {
			t.Errorf("%s via proxy: %s %q, want 28P01 %q", c.what, pe.Code, pe.Message, want)
		}
		// Directly: 28P01 for the first two; a role without LOGIN whose
		// password is right gets 28000 there, which the proxy cannot
		// tell apart (auth.query finds no such login) and need not: it
		// says no more about the role than for an unknown one.
		if direct := map[string]string{"alice": "28P01", "pa_nobody": "28P01", "pa_nologin": "28000"}[c.role]; direct != "" {
			_, err := loginUser(ctx, pg.URL(c.role, c.pw, "app"))
			if d := pgErrOf(t, c.what+" direct", err); d.Code != direct {
				t.Errorf("%s direct: %s %q, want %s", c.what, d.Code, d.Message, direct)
			}
		}
		if n := roleBackends(t, admin, c.role); n != 0 {
			t.Errorf("%s: %d backends of %s on the server, want 0", c.what, n, c.role)
		}
		if sp := statsPoolNamed(t, p, "app/"+c.role); sp != nil {
			t.Errorf("%s: /stats has a pool for %s: %v", c.what, c.role, sp)
		}
	}
	if !p.Logs.ContainsWithin("its password is not stored as a SCRAM-SHA-256 verifier", 2*time.Second) || !p.Logs.ContainsWithin(`"role":"pa_md5"`, 2*time.Second) {
		t.Error("no log line telling the operator why pa_md5 cannot log in")
	}
	// The right password still works afterwards.
	if role, err := loginUser(ctx, p.URL("alice", "alice-pw", "app")); err != nil || role != "alice" {
		t.Errorf("alice after the refusals: %q, %v", role, err)
	}
}

// TestPassthroughPasswordChange: after ALTER ROLE ... PASSWORD, the new
// password logs in once the verifier cache (1s here) has expired, and the
// old one is refused; the role's pool then opens new backends with the key
// of the new login (its old backends are terminated to force that).
func TestPassthroughPasswordChange(t *testing.T) {
	setupPassthroughRoles(t, "pa_carol:first-pw")
	p := startPassthroughProxy(t, "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := adminConn(t)

	if role, err := loginUser(ctx, p.URL("pa_carol", "first-pw", "app")); err != nil || role != "pa_carol" {
		t.Fatalf("first login: %q, %v", role, err)
	}
	if _, err := admin.Exec(ctx, "ALTER ROLE pa_carol PASSWORD 'second-pw'"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pa_carol'"); err != nil {
		t.Fatal(err)
	}
	// Directly, the change is immediate.
	if _, err := loginUser(ctx, pg.URL("pa_carol", "second-pw", "app")); err != nil {
		t.Fatalf("direct login with the new password: %v", err)
	}
	start := time.Now()
	var lastErr error
	waitFor(t, 10*time.Second, "the new password to log in through the proxy", func() bool {
		var role string
		role, lastErr = loginUser(ctx, p.URL("pa_carol", "second-pw", "app"))
		return lastErr == nil && role == "pa_carol"
	})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the new password took %v to work, want about auth.cache_ttl (1s)", took)
	}
	_, err := loginUser(ctx, p.URL("pa_carol", "first-pw", "app"))
	if pe := pgErrOf(t, "old password", err); pe.Code != "28P01" {
		t.Errorf("old password after the change: %+v, want 28P01", pe)
	}
	if n := roleBackends(t, admin, "pa_carol"); n < 1 {
		t.Errorf("pa_carol has %d backends after the new login, want at least 1 (opened with the new key)", n)
	}
}
