package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// pg is the cluster shared by every test, started by TestMain. Tests that
// stop it (the restart test) must not run in parallel with others and must
// start it again before they return.
var pg *Cluster

// proxyBin is the pgsidecar binary built by TestMain; proxyBuildErr says
// why it could not be built, and makes every StartProxy fail with it while
// the tests that only need PostgreSQL still run.
var (
	proxyBin      string
	proxyBuildErr error
)

// Timeouts of the harness itself. Everything that waits is bounded.
const (
	proxyReadyTimeout = 15 * time.Second // StartProxy: until both listeners accept
	proxyStopTimeout  = 10 * time.Second // cleanup: SIGTERM, then SIGKILL
	psqlTimeout       = 60 * time.Second
	pgbenchTimeout    = 180 * time.Second
	httpTimeout       = 5 * time.Second
)

// TestMain builds the proxy once, starts the shared cluster, runs the tests,
// and removes everything it made.
func TestMain(m *testing.M) {
	flag.Parse()
	if dir := os.Getenv("PGSIDECAR_E2E_COVERDIR"); dir != "" {
		// make cover: a proxy built with -cover writes its counters to
		// GOCOVERDIR at exit. go test points GOCOVERDIR at a directory of
		// its own, so make passes the real one under another name.
		os.Setenv("GOCOVERDIR", dir)
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "pgsidecar-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if bin := os.Getenv("PGSIDECAR_E2E_BIN"); bin != "" {
		// A prebuilt binary (a release build, or one built with other
		// flags) is tested as it is.
		proxyBin = bin
		if !isExecutable(bin) {
			proxyBuildErr = fmt.Errorf("PGSIDECAR_E2E_BIN=%s is not an executable file", bin)
		}
	} else {
		proxyBin = filepath.Join(tmp, "pgsidecar")
		proxyBuildErr = buildProxy(proxyBin)
	}
	if proxyBuildErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: WARNING: the proxy did not build; every proxy test will fail:\n%v\n", proxyBuildErr)
	}

	pg, err = StartCluster(nil)
	if err != nil {
		// Fail loudly: a machine without PostgreSQL cannot prove anything.
		fmt.Fprintf(os.Stderr, "e2e: FAIL: cannot start PostgreSQL: %v\n", err)
		return 1
	}
	code := m.Run()
	if err := destroySharedSSLCluster(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: destroy the TLS cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if err := pg.Destroy(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: destroy cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	// The harness owns goroutines too (process waiters, stats pollers,
	// pgx connections): none may outlive the tests and the cluster.
	if err := goleak.Find(); err != nil && code == 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: goroutines leaked by the tests: %v\n", err)
		code = 1
	}
	return code
}

// raceProxy reports whether the proxy under test is built with -race:
// PGSIDECAR_E2E_RACE set (README, "make test").
func raceProxy() bool { return os.Getenv("PGSIDECAR_E2E_RACE") != "" }

// buildProxy builds the module's main package (the repository root, "..")
// into out with `make build`, so that the binary under test carries the
// Makefile's version stamp as a release build does.
func buildProxy(out string) error {
	makeBin, err := exec.LookPath("make")
	if err != nil {
		return fmt.Errorf("make not on PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, makeBin, "--no-print-directory", "-C", "..", "build", "BIN="+out)
	if raceProxy() {
		// Opt-in: a race-enabled proxy finds data races under real load,
		// at the price of a slower run.
		cmd.Args = append(cmd.Args, "GOBUILDFLAGS=-race")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make build: %w\n%s", err, b)
	}
	return nil
}

// syncBuffer collects a process's output for the test to read meanwhile.
type syncBuffer = testpg.LogBuffer

// Proxy is one running pgsidecar process.
type Proxy struct {
	// Addr is the client listener, host:port.
	Addr string
	// HealthAddr is the health/stats HTTP listener, host:port.
	HealthAddr string
	// Cmd is the process.
	Cmd *exec.Cmd
	// Logs collects the process's stdout and stderr.
	Logs *syncBuffer
	// PprofAddr is the profiling listener (-pprof), host:port, when the
	// proxy was started WithPprof; else "".
	PprofAddr string

	done     chan struct{} // closed when Cmd has been waited for
	waitErr  error         // Cmd.Wait's result, valid after done is closed
	exitCode int           // valid after done is closed
}

// ProxyOption changes how StartProxy runs the proxy.
type ProxyOption func(*proxyOptions)

type proxyOptions struct {
	env   map[string]string
	args  []string
	pprof bool
}

// WithEnv sets an environment variable for the proxy, overriding the
// harness's default for the same key. An empty value unsets the default
// (the proxy then sees no such variable).
func WithEnv(k, v string) ProxyOption {
	return func(o *proxyOptions) { o.env[k] = v }
}

// WithArgs appends command-line arguments to the proxy's.
func WithArgs(args ...string) ProxyOption {
	return func(o *proxyOptions) { o.args = append(o.args, args...) }
}

// WithPprof runs the proxy's profiling listener (-pprof) on a fresh
// loopback port, Proxy.PprofAddr: a test that fails on a stall can fetch
// the proxy's goroutines. The harness picks the port, so that a start
// that loses it to another socket is retried as for the other two.
func WithPprof() ProxyOption {
	return func(o *proxyOptions) { o.pprof = true }
}

// startAttempts bounds StartProxy's tries when a port it picked was taken
// before the proxy could listen on it.
const startAttempts = 3

// StartProxy runs the built proxy against the shared cluster, as app/app on
// database app, with fresh ports, debug JSON logs, and opts applied. It
// returns once both listeners accept TCP connections. Cleanup sends SIGTERM
// and waits (SIGKILL after 10s); when the test failed, the proxy's logs are
// written to the test log.
//
// A port the harness picked is free when picked, but closed again until
// the proxy listens on it: any socket of the machine can take it
// meanwhile (an outgoing connection's ephemeral port; TestPgbench failed
// once on "health.listen: cannot listen on 127.0.0.1:43371: bind: address
// already in use"). Such a start is retried on fresh ports, up to
// startAttempts; ports the test chose itself are not.
func StartProxy(t *testing.T, opts ...ProxyOption) *Proxy {
	t.Helper()
	if proxyBuildErr != nil {
		t.Fatalf("the proxy binary did not build: %v", proxyBuildErr)
	}
	for attempt := 1; ; attempt++ {
		p, portTaken := startProxyOnce(t, attempt < startAttempts, opts)
		if !portTaken {
			return p
		}
		t.Logf("proxy start %d: a port the harness picked was taken before the proxy listened on it; again on fresh ports", attempt)
	}
}

// startProxyOnce is one try of StartProxy. When mayRetry is set and the
// proxy exited at start because a port the harness picked was taken, it
// returns portTaken instead of failing t.
func startProxyOnce(t *testing.T, mayRetry bool, opts []ProxyOption) (_ *Proxy, portTaken bool) {
	t.Helper()
	port := func() string {
		n, err := freePort()
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(n))
	}
	p := &Proxy{
		Addr:       port(),
		HealthAddr: port(),
		Logs:       &syncBuffer{},
		done:       make(chan struct{}),
	}
	picked := [2]string{p.Addr, p.HealthAddr}
	o := proxyOptions{env: map[string]string{
		"DATABASE_URL":               pg.URL("app", "app", "app"),
		"PGSIDECAR_LISTEN":           p.Addr,
		"PGSIDECAR_HEALTH__LISTEN":   p.HealthAddr,
		"PGSIDECAR_LOG__FORMAT":      "json",
		"PGSIDECAR_LOG__LEVEL":       "debug",
		"PGSIDECAR_SHUTDOWN_TIMEOUT": "10s",
	}}
	for _, opt := range opts {
		opt(&o)
	}
	p.Addr, p.HealthAddr = o.env["PGSIDECAR_LISTEN"], o.env["PGSIDECAR_HEALTH__LISTEN"]
	// Only ports the harness picked may be picked again.
	mayRetry = mayRetry && [2]string{p.Addr, p.HealthAddr} == picked
	if o.pprof {
		p.PprofAddr = port()
		o.args = append(o.args[:len(o.args):len(o.args)], "-pprof", p.PprofAddr)
	}

	cmd := exec.Command(proxyBin, o.args...)
	// The working directory is a fresh temp dir so that no config.yaml of
	// the repository is picked up: the test's environment is the config.
	cmd.Dir = t.TempDir()
	cmd.Env = cleanEnv()
	keys := make([]string, 0, len(o.env))
	for k := range o.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := o.env[k]; v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdout = p.Logs
	cmd.Stderr = p.Logs
	// If the test binary dies, the proxy must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	p.Cmd = cmd
	// Owned by the Proxy: ends when the process exits, which the cleanup
	// below guarantees.
	go func() {
		p.waitErr = cmd.Wait()
		p.exitCode = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			p.Signal(syscall.SIGTERM)
			if _, err := p.Wait(proxyStopTimeout); err != nil {
				t.Errorf("proxy did not exit %v after SIGTERM; killing it", proxyStopTimeout)
				_ = cmd.Process.Kill()
				<-p.done
			}
		}
		// A proxy built with PGSIDECAR_E2E_RACE=1 reports races on stderr.
		if p.Logs.Contains("WARNING: DATA RACE") {
			t.Errorf("the proxy reported a data race")
		}
		if t.Failed() {
			p.dumpLogs(t)
		}
	})

	deadline := time.Now().Add(proxyReadyTimeout)
	for _, addr := range []string{p.Addr, p.HealthAddr} {
		for {
			if p.Exited() {
				if mayRetry && p.Logs.Contains("address already in use") {
					return nil, true
				}
				t.Fatalf("proxy exited during start (code %d): %v", p.exitCode, p.waitErr)
			}
			c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("proxy not accepting on %s after %v: %v", addr, proxyReadyTimeout, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return p, false
}

// dumpLogs writes the proxy's output to the test log, the tail if huge.
func (p *Proxy) dumpLogs(t *testing.T) {
	logs := p.Logs.String()
	const max = 256 << 10
	if len(logs) > max {
		logs = "...(truncated)...\n" + logs[len(logs)-max:]
	}
	t.Logf("proxy logs (%s):\n%s", p.Addr, logs)
}

// URL is the client URL of the proxy for user/password on db, without TLS.
func (p *Proxy) URL(user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     p.Addr,
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// AppURL is p.URL("app", "app", "app"), the usual client login.
func (p *Proxy) AppURL() string { return p.URL("app", "app", "app") }

// Stats returns GET /stats decoded; any error fails the test. Use
// FetchStats from goroutines other than the test's.
func (p *Proxy) Stats(t testing.TB) map[string]any {
	t.Helper()
	_, body, err := p.getJSON("/stats")
	if err != nil {
		t.Fatalf("GET /stats: %v", err)
	}
	return body
}

// FetchStats is Stats returning its error instead of failing a test.
func (p *Proxy) FetchStats() (map[string]any, error) {
	_, body, err := p.getJSON("/stats")
	return body, err
}

// Health returns GET /health's status code and decoded body; a transport
// or decoding error fails the test. Use FetchHealth while the proxy may be
// going away.
func (p *Proxy) Health(t testing.TB) (code int, body map[string]any) {
	t.Helper()
	code, body, err := p.getJSON("/health")
	if err != nil {
		t.Fatalf("GET /health: %v", err)
	}
	return code, body
}

// FetchHealth is Health returning its error instead of failing a test.
func (p *Proxy) FetchHealth() (code int, body map[string]any, err error) {
	return p.getJSON("/health")
}

var httpClient = &http.Client{
	Timeout: httpTimeout,
	// No keep-alive: every poll is independent and no idle connection
	// outlives the test.
	Transport: &http.Transport{DisableKeepAlives: true},
}

func (p *Proxy) getJSON(path string) (int, map[string]any, error) {
	resp, err := httpClient.Get("http://" + p.HealthAddr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read %s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("decode %s (status %d): %w: %.500s", path, resp.StatusCode, err, b)
	}
	return resp.StatusCode, m, nil
}

// limitFDs lowers the proxy's open-file limit to the descriptors it has
// open now plus spare, and returns what sets the old limit again. Only the
// soft limit: an unprivileged test can lower it and raise it back.
func limitFDs(t *testing.T, p *Proxy, spare int) (restore func() error) {
	t.Helper()
	pid := p.Cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	lim := &unix.Rlimit{Cur: uint64(len(fds) + spare), Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, lim, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	return func() error { return unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil) }
}

// Signal sends sig to the proxy process (ignored once it has exited).
func (p *Proxy) Signal(sig os.Signal) {
	_ = p.Cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the proxy to exit and returns its exit code.
// A process killed by a signal has exit code -1 and a non-nil error.
func (p *Proxy) Wait(timeout time.Duration) (exitCode int, err error) {
	select {
	case <-p.done:
		var ee *exec.ExitError
		if p.waitErr != nil && !errors.As(p.waitErr, &ee) {
			return p.exitCode, p.waitErr
		}
		if p.exitCode < 0 {
			return p.exitCode, fmt.Errorf("proxy killed: %v", p.waitErr)
		}
		return p.exitCode, nil
	case <-time.After(timeout):
		return 0, fmt.Errorf("proxy still running after %v", timeout)
	}
}

// Exited reports whether the proxy process has exited.
func (p *Proxy) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// runPsql runs psql against url with args (typically "-c", sql) and returns
// its standard output. A failure's error carries psql's stderr. psql runs
// with -X (no psqlrc), -w (never prompt) and ON_ERROR_STOP, bounded by 60s.
func runPsql(t testing.TB, url string, args ...string) (string, error) {
	t.Helper()
	stdout, stderr, err := runPsqlIO(t, url, "", args...)
	if err != nil {
		return stdout, fmt.Errorf("%w; stderr: %s", err, stderr)
	}
	return stdout, nil
}

// runPsqlIO is runPsql with stdin fed to psql and stdout and stderr kept
// apart (NOTICEs go to stderr).
func runPsqlIO(t testing.TB, url, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin, err := findPGClient("psql")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), psqlTimeout)
	defer cancel()
	full := append([]string{"-X", "-w", "-v", "ON_ERROR_STOP=1", "-d", url}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Env = append(cleanEnv(), "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("psql timed out after %v: %w", psqlTimeout, err)
	}
	return o.String(), e.String(), err
}

// runPgbench runs pgbench with args against url (passed as the database
// name, which libpq expands) and returns stdout and stderr together,
// bounded by 180s.
func runPgbench(t testing.TB, url string, args ...string) (output string, err error) {
	t.Helper()
	bin, err := findPGClient("pgbench")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgbenchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.Env = cleanEnv()
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("pgbench timed out after %v: %w", pgbenchTimeout, err)
	}
	return out.String(), err
}

var (
	pgbenchInitOnce sync.Once
	pgbenchInitErr  error
)

// ensurePgbenchTables creates pgbench's tables (scale 1) in database app,
// directly on the cluster, once per test binary.
func ensurePgbenchTables(t testing.TB) {
	t.Helper()
	pgbenchInitOnce.Do(func() {
		out, err := runPgbench(t, pg.URL("app", "app", "app"), "-i", "-s", "1", "-q")
		if err != nil {
			pgbenchInitErr = fmt.Errorf("pgbench -i: %w\n%s", err, out)
		}
	})
	if pgbenchInitErr != nil {
		t.Fatal(pgbenchInitErr)
	}
}

// connect opens a pgx connection with default settings, closed at cleanup.
func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(url), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// adminConn is a superuser pgx connection straight to the cluster (unix
// socket), closed at cleanup.
func adminConn(t testing.TB) *pgx.Conn {
	t.Helper()
	return connect(t, pg.AdminURL())
}

// sqlState returns err's SQLSTATE, or "" when it is not a server error.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// writeSecretFile writes body to path with mode 0600 (what a password_file
// must be, and a configuration file that may hold a password should be),
// replacing the file as a rotation does, and returns path.
func writeSecretFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sendRawCancel sends a CancelRequest with pid and secret to addr, as a
// driver does; secret is as long as the BackendKeyData gave it.
func sendRawCancel(t *testing.T, addr string, pid uint32, secret []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s for a cancel: %v", addr, err)
	}
	defer c.Close()
	pkt := make([]byte, 12, 12+len(secret))
	binary.BigEndian.PutUint32(pkt[0:], uint32(12+len(secret)))
	binary.BigEndian.PutUint32(pkt[4:], 80877102) // the CancelRequest code
	binary.BigEndian.PutUint32(pkt[8:], pid)
	pkt = append(pkt, secret...)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		t.Fatalf("write cancel: %v", err)
	}
	// The server closes the connection without an answer; wait for that
	// so the request has been handled before the test moves on.
	var b [1]byte
	_, _ = c.Read(b[:])
}

// activePIDs returns the pids of the sessions running a query that
// contains marker (state active), other than admin's own.
func activePIDs(ctx context.Context, t *testing.T, admin *pgconn.PgConn, marker string) []string {
	t.Helper()
	rows, err := txSimple(ctx, admin, fmt.Sprintf(
		"SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%%s%%' AND pid <> pg_backend_pid() ORDER BY pid", marker))
	if err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	return rows
}

// waitActive waits up to within until exactly n sessions run a query
// that contains marker (activePIDs), and returns their pids.
func waitActive(ctx context.Context, t *testing.T, admin *pgconn.PgConn, marker string, n int, within time.Duration) []string {
	t.Helper()
	var pids []string
	waitFor(t, within, fmt.Sprintf("%d sessions running the query marked %s", n, marker), func() bool {
		pids = activePIDs(ctx, t, admin, marker)
		return len(pids) == n
	})
	return pids
}

// waitFor polls cond until it holds or timeout passes, then fails the
// test with msg.
var waitFor = testpg.Eventually

// statsPools returns the "pools" array of a /stats or /health body.
func statsPools(body map[string]any) []map[string]any {
	arr, _ := body["pools"].([]any)
	var out []map[string]any
	for _, v := range arr {
		if m, ok := v.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// poolStat reads one number of p's only pool in /stats; the test fails if
// /stats has another number of pools or the pool lacks key.
func poolStat(t *testing.T, p *Proxy, key string) int {
	t.Helper()
	pools := statsPools(p.Stats(t))
	if len(pools) != 1 {
		t.Fatalf("/stats pools: %v", pools)
	}
	n, ok := num(pools[0], key)
	if !ok {
		t.Fatalf("/stats pool has no %s: %v", key, pools[0])
	}
	return int(n)
}

// clientsStat reads one count of /stats' clients section; the test fails
// if it is missing.
func clientsStat(t *testing.T, p *Proxy, key string) int {
	t.Helper()
	clients, _ := p.Stats(t)["clients"].(map[string]any)
	n, ok := num(clients, key)
	if !ok {
		t.Fatalf("/stats has no clients.%s: %v", key, clients)
	}
	return int(n)
}

// num reads a JSON number field as a float64 (false when absent or not a
// number).
func num(m map[string]any, key string) (float64, bool) {
	v, ok := m[key].(float64)
	return v, ok
}

// str reads a JSON string field.
func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// redact hides the password in a URL for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	return u.String()
}
