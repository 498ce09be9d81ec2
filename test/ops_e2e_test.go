package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
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

// TestAdminConsoleReserve: with pool.max_client_conn taken by application
// clients, an operator still gets the admin console (a reserve of 3
// console sessions beyond max_client_conn) and sees the clients, while
// another application client gets 53300. The reserve is bounded: of a
// flood of 20 console logins at once, only the 2 slots left in it log in;
// the rest get 53300 naming the reserve, logged once, not per refusal.
// A console session closed frees its reserve slot for the next.
func TestAdminConsoleReserve(t *testing.T) {
	const maxClients, reserve = 3, 3
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", "3"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range maxClients {
		c := connect(t, p.AppURL())
		defer c.Close(ctx)
	}
	refused := func(url string) *pgconn.PgError {
		t.Helper()
		c, err := pgconn.Connect(ctx, url)
		if err == nil {
			c.Close(ctx)
			return nil
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Fatalf("connect %s: %v, want an ErrorResponse", redact(url), err)
		}
		return pe
	}
	if pe := refused(p.AppURL()); pe == nil || pe.Code != "53300" {
		t.Fatalf("an application client with max_client_conn full: %v, want 53300", pe)
	}

	con, err := pgx.Connect(ctx, consoleURL(p, "app", "app"))
	if err != nil {
		t.Fatalf("the console with max_client_conn full: %v; want a session on the admin reserve", err)
	}
	defer con.Close(ctx)
	_, rows := consoleRows(ctx, t, con, "SHOW CLIENTS")
	if len(rows) < maxClients {
		t.Errorf("SHOW CLIENTS on the reserve: %d rows, want the %d application clients", len(rows), maxClients)
	}
	if pe := refused(p.AppURL()); pe == nil || pe.Code != "53300" {
		t.Errorf("an application client beside the console on the reserve: %v, want 53300", pe)
	}

	// A flood of console logins: only what is left of the reserve.
	var (
		mu    sync.Mutex
		held  []*pgx.Conn
		codes = map[string]int{}
		wg    sync.WaitGroup
		last  *pgconn.PgError
	)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, consoleURL(p, "app", "app"))
			mu.Lock()
			defer mu.Unlock()
			var pe *pgconn.PgError
			switch {
			case err == nil:
				held = append(held, c)
			case errors.As(err, &pe):
				codes[pe.Code]++
				last = pe
			default:
				codes[err.Error()]++
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range held {
			c.Close(ctx)
		}
	}()
	if len(held) != reserve-1 || codes["53300"] != 20-(reserve-1) {
		t.Errorf("20 console logins at once beside one on the reserve: %d logged in, refusals %v; want %d and %d x 53300",
			len(held), codes, reserve-1, 20-(reserve-1))
	}
	if last != nil && (!strings.Contains(last.Message, "console") || !strings.Contains(last.Hint, "pool.max_client_conn")) {
		t.Errorf("the refusal past the reserve: %q (hint %q); want it to name the console's reserve and pool.max_client_conn", last.Message, last.Hint)
	}
	if n := len(rlLogLines(p, "client rejected", "console")); n < 1 || n > 2 {
		t.Errorf("%d log lines for the %d refusals past the reserve; want one (rate-limited)", n, codes["53300"])
	}

	// A console session closed frees its slot.
	if len(held) == 0 {
		t.FailNow()
	}
	held[0].Close(ctx)
	held = held[1:]
	waitFor(t, 10*time.Second, "a console login after one closed", func() bool {
		c, err := pgx.Connect(ctx, consoleURL(p, "app", "app"))
		if err != nil {
			return false
		}
		mu.Lock()
		held = append(held, c)
		mu.Unlock()
		return true
	})
}

// TestReloadLoweredCapsCloseIdle: a SIGHUP that lowers
// max_total_connections or pool.max_size closes the idle backends above
// the new limit at once (pg_stat_activity, read directly, shows them gone
// within 2 s of the reload, where they would linger until max_idle or
// max_lifetime), and a backend held by a transaction when the limit fell
// is closed at its release instead of going back idle.
func TestReloadLoweredCapsCloseIdle(t *testing.T) {
	const base = "pool:\n  min_size: 0\n  max_size: 8\n  max_idle: 10m\n"
	path := testpg.WriteYAML(t, base)
	p := StartProxy(t, WithArgs("-config", path))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin := adminConn(t)
	backends := func() int {
		t.Helper()
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	clients := make([]*pgx.Conn, 6)
	for i := range clients {
		clients[i] = connect(t, p.AppURL())
		defer clients[i].Close(ctx)
	}
	// open has every client hold a backend in a transaction, and returns
	// them.
	open := func() []pgx.Tx {
		t.Helper()
		txs := make([]pgx.Tx, len(clients))
		for i, c := range clients {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			txs[i] = tx
		}
		return txs
	}
	commit := func(txs []pgx.Tx) {
		t.Helper()
		for _, tx := range txs {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	lowered := func(what string, want int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for backends() > want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if n := backends(); n > want {
			t.Errorf("%s: %d backends in pg_stat_activity 2 s after the reload, want at most %d", what, n, want)
		}
	}
	works := func(what string) {
		t.Helper()
		for _, c := range clients {
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("%s: a client's query: %v", what, err)
			}
		}
	}
	// fill runs 6 transactions at once, which must leave 6 backends; with
	// config it first reloads the configuration (when: the log's words).
	fill := func(config, when string) {
		t.Helper()
		if config != "" {
			writeSecretFile(t, path, config)
			rlReload(t, p)
		}
		commit(open())
		if n := backends(); n != 6 {
			t.Fatalf("6 transactions at once%s left %d backends, want 6", when, n)
		}
	}

	// max_total_connections 0 -> 2 with 6 idle backends.
	fill("", "")
	writeSecretFile(t, path, base+"max_total_connections: 2\n")
	rlReload(t, p)
	lowered("max_total_connections 2 with 6 idle", 2)
	works("max_total_connections 2")

	// Back to no cap, 6 backends, 2 of them held in a transaction when
	// the cap falls to 1: the 4 idle ones go at once, the held ones at
	// their release, but one.
	fill(base, " after the cap was lifted")
	txs := open()
	commit(txs[2:])
	writeSecretFile(t, path, base+"max_total_connections: 1\n")
	rlReload(t, p)
	lowered("max_total_connections 1 with 2 held and 4 idle", 2)
	commit(txs[:2])
	lowered("max_total_connections 1 once the 2 held were released", 1)
	works("max_total_connections 1")

	// pool.max_size 8 -> 2 with 6 idle backends.
	fill(base, " before max_size fell")
	writeSecretFile(t, path, strings.Replace(base, "max_size: 8", "max_size: 2", 1))
	rlReload(t, p)
	lowered("pool.max_size 2 with 6 idle", 2)
	works("pool.max_size 2")
}

// TestHealthStalledConnsDoNotDelayExit: health connections held open at
// SIGTERM (one that sent half a request header and stalls, one that sent
// nothing, one idle keep-alive) do not hold the exit up: with no client
// connected the process exits 0 in well under the 5 s of the header
// timeout (asserted: under 2 s).
func TestHealthStalledConnsDoNotDelayExit(t *testing.T) {
	p := StartProxy(t)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", p.HealthAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		return c
	}
	ka := dial()
	if _, err := io.WriteString(ka, "GET /livez HTTP/1.1\r\nHost: ka\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	ka.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	if n, err := ka.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Fatalf("keep-alive /livez: %q %v", buf[:n], err)
	}
	_, _ = io.WriteString(dial(), "GET /livez HTTP/1.1\r\nHost: sl")
	dial()                             // sends nothing
	time.Sleep(200 * time.Millisecond) // the server has read what was sent

	start := time.Now()
	p.Signal(syscall.SIGTERM)
	code, err := p.Wait(15 * time.Second)
	took := time.Since(start)
	if err != nil || code != 0 {
		t.Fatalf("after SIGTERM: exit %d, %v", code, err)
	}
	if took >= 2*time.Second {
		t.Errorf("the process took %s to exit after SIGTERM with stalled health connections open; want under 2 s", took.Round(time.Millisecond))
	}
	t.Logf("exit %s after SIGTERM", took.Round(time.Millisecond))
}
