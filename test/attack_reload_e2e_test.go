package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// rlLoad is a bounded pgx workload through the proxy: clients
// connections, each running at most n short queries until end is called
// or its 60 s are up, each stopping at its first error.
type rlLoad struct {
	wg   sync.WaitGroup
	stop chan struct{}
	ok   atomic.Int64
	mu   sync.Mutex
	errs []string
}

func rlStartLoad(t *testing.T, url string, clients, n int) *rlLoad {
	t.Helper()
	l := &rlLoad{stop: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	for g := 0; g < clients; g++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				l.fail("connect: " + err.Error())
				return
			}
			defer conn.Close(context.Background())
			for i := 0; i < n; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				var v int
				if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil {
					l.fail(err.Error())
					return
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *rlLoad) fail(s string) {
	l.mu.Lock()
	l.errs = append(l.errs, s)
	l.mu.Unlock()
}

// end stops the load and returns its errors.
func (l *rlLoad) end() []string {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs
}

// rlShow is SHOW CONFIG through the proxy's console, as key -> value.
func rlShow(t *testing.T, p *Proxy) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := connect(t, consoleURL(p, "app", "app"))
	defer conn.Close(ctx)
	_, rows := consoleRows(ctx, t, conn, "SHOW CONFIG")
	out := map[string]string{}
	for _, r := range rows {
		out[r[0].(string)] = r[1].(string)
	}
	return out
}

// rlLogLines are the proxy's log lines that hold every one of subs.
func rlLogLines(p *Proxy, subs ...string) []string {
	var out []string
	for _, l := range strings.Split(p.Logs.String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// rlReload sends SIGHUP and waits for the reload's outcome line.
func rlReload(t *testing.T, p *Proxy) {
	t.Helper()
	before := len(rlLogLines(p, `"msg":"reloading configuration"`))
	done := func() int {
		return len(rlLogLines(p, `"msg":"configuration reloaded"`)) + len(rlLogLines(p, `"msg":"reload failed; keeping the running configuration"`))
	}
	p.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the reload to finish", func() bool { return done() > before })
}

// TestReloadEmptyConfigFile: a configuration file truncated to zero bytes
// (a rotation that writes in place, caught between its truncate and its
// write) or left with comments only is refused by SIGHUP, naming the file:
// read as it is, it would be "every option at its default", and the reload
// would drop every auth.users login, the HTTP token and the pool sizes
// while the workload runs. The running configuration stays whole (SHOW
// CONFIG, the logins), the workload sees no error, and the restored file
// reloads. A proxy configured by its environment alone, whose file was
// empty from the start, still reloads: there the empty file is the
// configuration.
func TestReloadEmptyConfigFile(t *testing.T) {
	good := "pool:\n  max_size: 3\nauth:\n  users:\n    - {name: app, password: app}\n    - {name: bob, password: bobpw}\nadmin:\n  http_token: tok\n"
	path := testpg.WriteYAML(t, good)
	p := StartProxy(t, WithArgs("-config", path))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	load := rlStartLoad(t, p.AppURL(), 4, 5000)

	for _, bad := range []string{"", "\n", "# being rewritten\n"} {
		writeSecretFile(t, path, bad)
		rlReload(t, p)
		if got := rlLogLines(p, "reload failed; keeping the running configuration", path, "holds no settings"); len(got) == 0 {
			t.Errorf("file %q: the reload did not fail naming the file; reload lines: %q", bad, rlLogLines(p, "reload"))
		}
		show := rlShow(t, p)
		if show["pool.max_size"] != "3" || show["auth.users"] != "app,bob" || show["admin.http_token"] == "" {
			t.Errorf("file %q: SHOW CONFIG after the reload: pool.max_size %q, auth.users %q, admin.http_token %q; want the running 3, app,bob and set",
				bad, show["pool.max_size"], show["auth.users"], show["admin.http_token"])
		}
		bob, err := pgx.Connect(ctx, p.URL("bob", "bobpw", "app"))
		if err != nil {
			t.Errorf("file %q: bob's login after the reload: %v", bad, err)
		} else {
			bob.Close(ctx)
		}
	}
	if n := len(rlLogLines(p, "configuration reloaded")); n != 0 {
		t.Errorf("%d reloads applied an empty file", n)
	}
	if errs := load.end(); len(errs) > 0 || load.ok.Load() == 0 {
		t.Errorf("the workload saw %d errors (%q) and %d successes", len(errs), errs, load.ok.Load())
	}

	// The file back: the reload applies it (nothing changed).
	writeSecretFile(t, path, strings.Replace(good, "max_size: 3", "max_size: 5", 1))
	rlReload(t, p)
	if got := rlLogLines(p, "configuration reloaded", `"changed":["pool.max_size"]`); len(got) != 1 {
		t.Errorf("the restored file: reload lines %q", rlLogLines(p, "reload"))
	}

	// Configured by the environment alone: the empty file is the
	// configuration, and a SIGHUP (a password_file rotated) reloads.
	empty := testpg.WriteYAML(t, "")
	q := StartProxy(t, WithArgs("-config", empty), WithEnv("PGSIDECAR_POOL__MAX_SIZE", "3"))
	rlReload(t, q)
	if got := rlLogLines(q, "configuration reloaded"); len(got) != 1 {
		t.Errorf("a proxy started with an empty file: reload lines %q", rlLogLines(q, "reload"))
	}
}

// TestReloadSIGHUPBurstThenSIGTERM: a burst of SIGHUPs (a config
// management loop, 20 of them 1 ms apart, each reload taking longer than
// that) and a SIGTERM right after, as Kubernetes sends it at a rollout,
// with a workload going. Every SIGHUP may be folded into one reload, but
// the SIGTERM must never be lost behind them: the proxy drains and exits
// 0 well within shutdown_timeout. The workload sees no error but the
// drain's 57P01.
func TestReloadSIGHUPBurstThenSIGTERM(t *testing.T) {
	path := testpg.WriteYAML(t, "pool:\n  max_size: 4\n")
	p := StartProxy(t, WithArgs("-config", path))
	load := rlStartLoad(t, p.AppURL(), 4, 1_000_000)
	waitFor(t, 10*time.Second, "the workload to run", func() bool { return load.ok.Load() > 100 })
	for range 20 {
		p.Signal(syscall.SIGHUP)
		time.Sleep(time.Millisecond)
	}
	p.Signal(syscall.SIGTERM)
	code, err := p.Wait(20 * time.Second)
	errs := load.end()
	if err != nil || code != 0 {
		t.Fatalf("after 20 SIGHUPs and a SIGTERM: exit %d, %v (drain logged %d times); the SIGTERM was lost",
			code, err, len(rlLogLines(p, `"msg":"draining`)))
	}
	if n := len(rlLogLines(p, "reload failed")); n > 0 {
		t.Errorf("%d reloads failed", n)
	}
	for _, e := range errs {
		if !strings.Contains(e, "57P01") {
			t.Errorf("workload error other than the drain's 57P01: %s", e)
		}
	}
}

// TestReloadNegativeMaxBackendErrors: a SIGHUP whose file holds a value
// the pools refuse (pool.max_backend_errors -1, next to a valid
// pool.max_size and pool.max_client_conn change) while a workload runs.
// A reload is all or nothing: the reload fails naming the option, SHOW
// CONFIG keeps the running values, and /stats' pool agrees with it. (The
// option check let -1 through, the pool refused its whole new
// configuration, and the rest was applied: SHOW CONFIG said max_size 5,
// the pool kept 3, and the log said "configuration reloaded".) A start
// with the value fails naming the option, as any invalid value does.
func TestReloadNegativeMaxBackendErrors(t *testing.T) {
	good := "pool:\n  max_size: 3\n  max_client_conn: 100\n"
	path := testpg.WriteYAML(t, good)
	p := StartProxy(t, WithArgs("-config", path))
	load := rlStartLoad(t, p.AppURL(), 4, 5000)
	writeSecretFile(t, path, "pool:\n  max_size: 5\n  max_client_conn: 50\n  max_backend_errors: -1\n")
	rlReload(t, p)
	if errs := load.end(); len(errs) > 0 {
		t.Errorf("the workload saw %d errors: %q", len(errs), errs)
	}
	if got := rlLogLines(p, "reload failed; keeping the running configuration", "pool.max_backend_errors"); len(got) != 1 {
		t.Errorf("want one failed reload naming pool.max_backend_errors; reload lines: %q", rlLogLines(p, "reload"))
	}
	show := rlShow(t, p)
	if show["pool.max_size"] != "3" || show["pool.max_client_conn"] != "100" || show["pool.max_backend_errors"] != "0" {
		t.Errorf("SHOW CONFIG: pool.max_size %q, pool.max_client_conn %q, pool.max_backend_errors %q; want the running 3, 100, 0",
			show["pool.max_size"], show["pool.max_client_conn"], show["pool.max_backend_errors"])
	}
	for _, pl := range statsPools(p.Stats(t)) {
		if n, _ := num(pl, "max_size"); n != 3 {
			t.Errorf("/stats pool %v: max_size %v, want 3 (SHOW CONFIG says %s)", pl["name"], n, show["pool.max_size"])
		}
	}

	// At start the value is refused naming the option.
	bad := testpg.WriteYAML(t, "pool:\n  max_backend_errors: -1\n")
	cmd := exec.Command(proxyBin, "-config", bad)
	cmd.Env = append(cleanEnv(), "DATABASE_URL="+pg.URL("app", "app", "app"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "pool.max_backend_errors") {
		t.Errorf("start with pool.max_backend_errors -1: %v, output %q; want a failure naming the option", err, out)
	}
}

// TestReloadTLSPairMidRotation: a certificate rotation caught half way,
// with a TLS workload going: the new certificate written while the key is
// still the old one (a mismatched pair), then the key file missing, each
// followed by a SIGHUP. Each reload fails naming tls.cert_file, and the
// running pair keeps serving new TLS logins; once the new key is in place
// the next SIGHUP serves the new certificate. The workload sees no error.
// TestTLSCertificateRotation covers a whole rotation and a key that does
// not parse; this guards the two half states a rotation passes through.
func TestReloadTLSPairMidRotation(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "require")
	url := tlsURL(p, map[string]string{"sslmode": "require"})
	load := rlStartLoad(t, url, 3, 5000)
	waitFor(t, 10*time.Second, "the TLS workload to run", func() bool { return load.ok.Load() > 50 })

	cert2, key2, der2 := s.ca.issue(t, t.TempDir(), "server2", "pgsidecar", true)
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		writeSecretFile(t, to, string(b))
	}
	servesOld := func(what string) {
		t.Helper()
		c := connect(t, url)
		tlsPeerIs(t, c, s.certDER)
		c.Close(context.Background())
		if n := len(rlLogLines(p, "reload failed; keeping the running configuration", "tls.cert_file")); n == 0 {
			t.Errorf("%s: the reload did not fail naming tls.cert_file; reload lines %q", what, rlLogLines(p, "reload"))
		}
	}

	copyFile(cert2, s.cert) // the key is still the old one
	rlReload(t, p)
	servesOld("a mismatched pair")
	if err := os.Remove(s.key); err != nil {
		t.Fatal(err)
	}
	rlReload(t, p)
	servesOld("a missing key")
	if n := len(rlLogLines(p, "configuration reloaded")); n != 0 {
		t.Errorf("%d reloads applied a broken pair", n)
	}

	copyFile(key2, s.key)
	rlReload(t, p)
	c := connect(t, url)
	tlsPeerIs(t, c, der2)
	c.Close(context.Background())
	if errs := load.end(); len(errs) > 0 {
		t.Errorf("the TLS workload saw %d errors: %q", len(errs), errs)
	}
}

// TestReloadMaxClientConnBelowCount: pool.max_client_conn lowered by
// SIGHUP below the clients connected, with their workload going. A guard
// (no e2e test reloaded this limit): the connected clients carry on with
// no error, a new login gets 53300 naming the option, SHOW CONFIG says
// the new limit, and once the clients have left a new one logs in; the
// pool's backends and PostgreSQL's pg_stat_activity agree (none leaked).
func TestReloadMaxClientConnBelowCount(t *testing.T) {
	path := testpg.WriteYAML(t, "pool:\n  max_size: 3\n  min_size: 0\n  max_client_conn: 50\n")
	p := StartProxy(t, WithArgs("-config", path))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	load := rlStartLoad(t, p.AppURL(), 6, 1_000_000)
	waitFor(t, 10*time.Second, "the six clients to run", func() bool {
		n, _ := num(p.Stats(t)["clients"].(map[string]any), "clients_total")
		return n == 6 && load.ok.Load() > 100
	})
	writeSecretFile(t, path, "pool:\n  max_size: 3\n  min_size: 0\n  max_client_conn: 3\n")
	rlReload(t, p)
	if got := rlLogLines(p, "configuration reloaded", `"changed":["pool.max_client_conn"]`); len(got) != 1 {
		t.Errorf("reload lines %q", rlLogLines(p, "reload"))
	}
	before := load.ok.Load()
	_, err := pgx.Connect(ctx, p.AppURL())
	if sqlState(err) != "53300" || !strings.Contains(err.Error(), "pool.max_client_conn") {
		t.Errorf("a new login over the lowered limit: %v; want 53300 naming pool.max_client_conn", err)
	}
	waitFor(t, 10*time.Second, "the clients over the limit to go on", func() bool { return load.ok.Load() > before+100 })
	if errs := load.end(); len(errs) > 0 {
		t.Errorf("the connected clients saw %d errors: %q", len(errs), errs)
	}
	waitFor(t, 10*time.Second, "the clients to leave", func() bool {
		n, _ := num(p.Stats(t)["clients"].(map[string]any), "clients_total")
		return n == 0
	})
	if got := rlShow(t, p)["pool.max_client_conn"]; got != "3" {
		t.Errorf("SHOW CONFIG pool.max_client_conn %q, want 3", got)
	}
	c := connect(t, p.AppURL())
	var n int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatalf("a login once the clients left: %v", err)
	}
	c.Close(ctx)

	admin := adminConn(t)
	waitFor(t, 10*time.Second, "the pool and pg_stat_activity to agree", func() bool {
		var direct int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = 'app' AND pid <> pg_backend_pid()").Scan(&direct); err != nil {
			t.Fatal(err)
		}
		var pooled float64
		for _, pl := range statsPools(p.Stats(t)) {
			v, _ := num(pl, "total")
			pooled += v
		}
		return direct == int(pooled) && pooled <= 3
	})
}
