package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// testURL is a well-formed upstream nobody has to reach.
const testURL = "postgres://app:s3cr3t-pw@127.0.0.1:5432/appdb?sslmode=disable"

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// signal.Notify's delivery loop lives for the whole process.
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		goleak.IgnoreAnyFunction("os/signal.loop"))
}

// getJSON fetches an endpoint of the health listener.
func getJSON(addr, path string) (int, map[string]any, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s: %w: %s", path, err, body)
	}
	return resp.StatusCode, m, nil
}

// poolMaxSize reads pools[0].max_size from /stats.
func poolMaxSize(addr string) float64 {
	_, m, err := getJSON(addr, "/stats")
	if err != nil {
		return -1
	}
	pools, _ := m["pools"].([]any)
	if len(pools) == 0 {
		return -1
	}
	p, _ := pools[0].(map[string]any)
	v, _ := p["max_size"].(float64)
	return v
}

// deadUpstream is a URL on a port where nothing listens: the database is
// down, which must not stop the proxy from starting.
func deadUpstream(t *testing.T, password string) string {
	return "postgres://app:" + password + "@" + testpg.FreeAddr(t) + "/appdb?sslmode=disable"
}

// serve is what run does after loading the configuration, with the test's
// own signal channel: start everything cfg describes, then wait.
func serve(ctx context.Context, cfg *config.Config, path string, environ []string, logOut io.Writer, sigc <-chan os.Signal) error {
	a, err := start(cfg, path, environ, logOut)
	if err != nil {
		return err
	}
	return a.wait(ctx, sigc, nil)
}

// startApp runs serve in a goroutine the test owns; the returned channel
// delivers serve's result.
func startApp(t *testing.T, path string, environ []string, logs io.Writer, sigc chan os.Signal) <-chan error {
	t.Helper()
	cfg, err := config.Load(path, environ)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(context.Background(), cfg, path, environ, logs, sigc) }()
	return done
}

func waitDone(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("the app did not stop within %v", within)
		return nil
	}
}

func TestLifecycleWithDatabaseDown(t *testing.T) {
	testpg.IsolatePG(t)
	const secret = "pw-never-logged-7731"
	listen, healthAddr := testpg.FreeAddr(t), testpg.FreeAddr(t)
	writeConf := func(maxSize int, extra string) string {
		return fmt.Sprintf("listen: %s\nhealth:\n  listen: %s\npool:\n  min_size: 1\n  max_size: %d\n"+
			"  reconnect_backoff: 100ms\n  reconnect_backoff_max: 200ms\n  connect_timeout: 1s\n"+
			"shutdown_timeout: 2s\nlog:\n  format: json\n%s", listen, healthAddr, maxSize, extra)
	}
	path := testpg.WriteYAML(t, writeConf(3, "  level: info\n"))
	environ := []string{"DATABASE_URL=" + deadUpstream(t, secret)}
	logs := &testpg.LogBuffer{}
	sigc := make(chan os.Signal, 1)
	done := startApp(t, path, environ, logs, sigc)

	testpg.Eventually(t, 5*time.Second, "pgsidecar ready", func() bool { return logs.Count(`"msg":"pgsidecar ready"`) == 1 })
	ready := logs.String()
	for _, want := range []string{listen, healthAddr, `"mode":"transaction"`, "appdb=postgres://app:xxxxx@"} {
		if !strings.Contains(ready, want) {
			t.Errorf("ready line lacks %q:\n%s", want, ready)
		}
	}

	// The database is down: the proxy runs, and /health says so with 503.
	testpg.Eventually(t, 5*time.Second, "/health 503 unhealthy", func() bool {
		code, m, err := getJSON(healthAddr, "/health")
		return err == nil && code == http.StatusServiceUnavailable && m["status"] == "unhealthy"
	})
	if c, err := net.DialTimeout("tcp", listen, time.Second); err != nil {
		t.Fatalf("client listener not accepting: %v", err)
	} else {
		c.Close()
	}
	if got := poolMaxSize(healthAddr); got != 3 {
		t.Fatalf("max_size = %v, want 3", got)
	}

	// SIGHUP with a valid change: applied live, restart-only changes reported.
	if err := os.WriteFile(path, []byte(writeConf(5, "  level: debug\n")+"max_message_size: 4096\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// /stats is read while the reload runs: the race detector checks that
	// the health goroutines and the reload share nothing unguarded.
	stopPolling := make(chan struct{})
	polled := make(chan struct{})
	go func() { // ends when stopPolling closes
		defer close(polled)
		for {
			select {
			case <-stopPolling:
				return
			default:
				poolMaxSize(healthAddr)
			}
		}
	}()
	sigc <- syscall.SIGHUP
	testpg.Eventually(t, 5*time.Second, "configuration reloaded", func() bool { return logs.Count(`"msg":"configuration reloaded"`) == 1 })
	testpg.Eventually(t, 5*time.Second, "max_size 5 in /stats", func() bool { return poolMaxSize(healthAddr) == 5 })
	close(stopPolling)
	<-polled
	if !strings.Contains(logs.String(), `"option":"max_message_size"`) {
		t.Errorf("max_message_size change not reported as needing a restart:\n%s", logs)
	}

	// SIGHUP with an invalid file: logged, old configuration kept.
	if err := os.WriteFile(path, []byte(writeConf(0, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	sigc <- syscall.SIGHUP
	testpg.Eventually(t, 5*time.Second, "reload failed", func() bool { return logs.Count("reload failed") == 1 })
	if !strings.Contains(logs.String(), "pool.max_size: must be") {
		t.Errorf("reload error does not name the option:\n%s", logs)
	}
	if got := poolMaxSize(healthAddr); got != 5 {
		t.Fatalf("max_size = %v after a rejected reload, want 5", got)
	}

	sigc <- syscall.SIGTERM
	if err := waitDone(t, done, 10*time.Second); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	if !strings.Contains(logs.String(), `"msg":"pgsidecar stopped"`) {
		t.Errorf("no stop line:\n%s", logs)
	}
	for _, addr := range []string{listen, healthAddr} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after the drain", addr)
		}
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatalf("the upstream password is in the log:\n%s", logs)
	}
}

func TestContextCancelDrains(t *testing.T) {
	testpg.IsolatePG(t)
	environ := []string{
		"DATABASE_URL=" + deadUpstream(t, "pw"),
		"PGSIDECAR_LISTEN=127.0.0.1:0",
		"PGSIDECAR_HEALTH__LISTEN=127.0.0.1:0",
		"PGSIDECAR_LOG__FORMAT=json",
	}
	cfg, err := config.Load("", environ)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testpg.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, "", environ, logs, make(chan os.Signal)) }()
	testpg.Eventually(t, 5*time.Second, "ready", func() bool { return logs.Count("pgsidecar ready") == 1 })
	cancel()
	if err := waitDone(t, done, 10*time.Second); err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
}

func TestPortTakenFailsFast(t *testing.T) {
	testpg.IsolatePG(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()

	for _, c := range []struct{ key, env string }{
		{"listen", "PGSIDECAR_LISTEN=" + addr},
		{"health.listen", "PGSIDECAR_HEALTH__LISTEN=" + addr},
	} {
		environ := []string{"DATABASE_URL=" + deadUpstream(t, "pw"), "PGSIDECAR_LISTEN=" + testpg.FreeAddr(t),
			"PGSIDECAR_HEALTH__LISTEN=" + testpg.FreeAddr(t), "PGSIDECAR_LOG__FORMAT=json", c.env}
		start := time.Now()
		err := run(context.Background(), []string{"-config", ""}, environ, io.Discard)
		if err == nil {
			t.Fatalf("%s on a taken port: run succeeded", c.key)
		}
		want := c.key + ": cannot listen on " + addr
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("error %q; want %q and the reason", err, want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v to fail", d)
		}
	}
}

func TestRunArguments(t *testing.T) {
	testpg.IsolatePG(t)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, nil, &out); err != nil || !strings.HasPrefix(out.String(), "pgsidecar ") {
		t.Errorf("-version: %q, %v", out.String(), err)
	}
	if err := run(context.Background(), []string{"-nope"}, nil, io.Discard); err == nil {
		t.Error("an unknown flag was accepted")
	}
	if err := run(context.Background(), []string{"extra"}, nil, io.Discard); err == nil {
		t.Error("a stray argument was accepted")
	}
	err := run(context.Background(), []string{"-config", "/nonexistent/pgsidecar.yaml"}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/pgsidecar.yaml") {
		t.Errorf("missing -config file: %v", err)
	}
	// An invalid configuration stops the program before anything listens.
	err = run(context.Background(), []string{"-config", ""}, []string{"DATABASE_URL=" + testURL, "PGSIDECAR_POOL__MAX_SIZE=1"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "config: pool.max_size: must be >= pool.min_size (2), got 1") {
		t.Errorf("invalid config: %v", err)
	}
}

// clientConnect logs in to the proxy at addr.
func clientConnect(addr, user, password string) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/app?sslmode=disable", user, password, addr))
}

// runSQL runs sql and returns the first error.
func runSQL(c *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Exec(ctx, sql).ReadAll()
	return err
}

// TestReloadAndDrainAgainstPostgres runs the whole program against a real
// PostgreSQL: clients query through it, a SIGHUP adds a login and resizes
// the pool live, SIGTERM drains while a transaction is open (health says
// draining, nobody new gets in), and a second SIGTERM ends it at once.
func TestReloadAndDrainAgainstPostgres(t *testing.T) {
	testpg.IsolatePG(t)
	const appPW = "app-pw-4471"
	upstream := testPostgres(t, appPW)
	listen, healthAddr := testpg.FreeAddr(t), testpg.FreeAddr(t)
	conf := func(maxSize int, extra string) string {
		return fmt.Sprintf("listen: %s\nhealth:\n  listen: %s\npool:\n  min_size: 1\n  max_size: %d\n"+
			"shutdown_timeout: 30s\nlog:\n  format: json\n%s", listen, healthAddr, maxSize, extra)
	}
	path := testpg.WriteYAML(t, conf(2, ""))
	environ := []string{"DATABASE_URL=" + upstream}
	logs := &testpg.LogBuffer{}
	sigc := make(chan os.Signal, 1)
	done := startApp(t, path, environ, logs, sigc)
	testpg.Eventually(t, 5*time.Second, "ready", func() bool { return logs.Count("pgsidecar ready") == 1 })
	testpg.Eventually(t, 10*time.Second, "/health 200", func() bool {
		code, _, err := getJSON(healthAddr, "/health")
		return err == nil && code == http.StatusOK
	})

	app, err := clientConnect(listen, "app", appPW)
	if err != nil {
		t.Fatalf("app login through the proxy: %v\n%s", err, logs)
	}
	defer app.Close(context.Background())
	if err := runSQL(app, "SELECT 1"); err != nil {
		t.Fatalf("query through the proxy: %v", err)
	}
	if c, err := clientConnect(listen, "alice", "a-pw"); err == nil {
		c.Close(context.Background())
		t.Fatal("alice logged in before she was configured")
	}

	// SIGHUP: alice is added and the pool grows, without a restart.
	if err := os.WriteFile(path, []byte(conf(4, "auth:\n  users: [{name: alice, password: a-pw}]\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	sigc <- syscall.SIGHUP
	testpg.Eventually(t, 5*time.Second, "configuration reloaded", func() bool { return logs.Count(`"msg":"configuration reloaded"`) == 1 })
	if got := poolMaxSize(healthAddr); got != 4 {
		t.Errorf("max_size after reload = %v, want 4", got)
	}
	alice, err := clientConnect(listen, "alice", "a-pw")
	if err != nil {
		t.Fatalf("alice after reload: %v", err)
	}
	if err := runSQL(alice, "SELECT 1"); err != nil {
		t.Fatalf("alice's query: %v", err)
	}
	alice.Close(context.Background())
	if err := runSQL(app, "SELECT 1"); err != nil {
		t.Fatalf("the existing client after reload: %v", err)
	}

	// SIGTERM with a transaction open: the drain waits for it.
	if err := runSQL(app, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	sigc <- syscall.SIGTERM
	testpg.Eventually(t, 5*time.Second, "/health 503 draining", func() bool {
		code, m, err := getJSON(healthAddr, "/health")
		return err == nil && code == http.StatusServiceUnavailable && m["status"] == "draining"
	})
	if c, err := clientConnect(listen, "app", appPW); err == nil {
		c.Close(context.Background())
		t.Error("a new client got in during the drain")
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned %v while a transaction was open and shutdown_timeout is 30s", err)
	case <-time.After(300 * time.Millisecond):
	}

	// A second SIGTERM closes everything at once, and still exits cleanly.
	sigc <- syscall.SIGTERM
	if err := waitDone(t, done, 5*time.Second); err != nil {
		t.Fatalf("serve after the second SIGTERM: %v", err)
	}
	if !strings.Contains(logs.String(), "second signal") {
		t.Errorf("no log of the forced close:\n%s", logs)
	}
	if err := runSQL(app, "COMMIT"); err == nil {
		t.Error("the client in a transaction survived the forced close")
	}
	if strings.Contains(logs.String(), appPW) || strings.Contains(logs.String(), "a-pw") {
		t.Fatalf("a password is in the log:\n%s", logs)
	}
}

// TestShutdownTimeoutForcesClose: a transaction that outlives
// shutdown_timeout is cut off, the drain is logged as forced, and the
// program still stops cleanly (exit 0).
func TestShutdownTimeoutForcesClose(t *testing.T) {
	testpg.IsolatePG(t)
	const appPW = "app-pw-9013"
	listen := testpg.FreeAddr(t)
	environ := []string{
		"DATABASE_URL=" + testPostgres(t, appPW),
		"PGSIDECAR_LISTEN=" + listen,
		"PGSIDECAR_HEALTH__LISTEN=" + testpg.FreeAddr(t),
		"PGSIDECAR_SHUTDOWN_TIMEOUT=1s",
		"PGSIDECAR_POOL__MIN_SIZE=1",
		"PGSIDECAR_LOG__FORMAT=json",
	}
	logs := &testpg.LogBuffer{}
	sigc := make(chan os.Signal, 1)
	done := startApp(t, "", environ, logs, sigc)
	testpg.Eventually(t, 5*time.Second, "ready", func() bool { return logs.Count("pgsidecar ready") == 1 })

	c, err := clientConnect(listen, "app", appPW)
	if err != nil {
		t.Fatalf("login: %v\n%s", err, logs)
	}
	defer c.Close(context.Background())
	if err := runSQL(c, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	sigc <- syscall.SIGTERM
	if err := waitDone(t, done, 10*time.Second); err != nil {
		t.Fatalf("serve after a forced drain: %v, want nil (exit 0)", err)
	}
	if took := time.Since(signalled); took < time.Second || took > 5*time.Second {
		t.Errorf("drain took %v with shutdown_timeout 1s", took)
	}
	if !strings.Contains(logs.String(), "shutdown_timeout reached") {
		t.Errorf("the forced drain was not logged:\n%s", logs)
	}
	if err := runSQL(c, "COMMIT"); err == nil {
		t.Error("the transaction survived shutdown_timeout")
	}
}

func TestLoopback(t *testing.T) {
	for ip, want := range map[string]bool{"127.0.0.1": true, "::1": true, "0.0.0.0": false, "::": false, "10.1.2.3": false} {
		if got := loopback(&net.TCPAddr{IP: net.ParseIP(ip), Port: 6432}); got != want {
			t.Errorf("loopback(%s) = %v, want %v", ip, got, want)
		}
	}
}

// TestReloadAppliesLiveOptions drives reload directly and checks what the
// running app then holds: live options changed, restart-only ones kept.
func TestReloadAppliesLiveOptions(t *testing.T) {
	testpg.IsolatePG(t)
	listen, healthAddr := testpg.FreeAddr(t), testpg.FreeAddr(t)
	base := fmt.Sprintf("listen: %s\nhealth:\n  listen: %s\nlog:\n  format: json\n", listen, healthAddr)
	path := testpg.WriteYAML(t, base)
	environ := []string{"DATABASE_URL=" + deadUpstream(t, "pw")}
	cfg, err := config.Load(path, environ)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testpg.LogBuffer{}
	a, err := start(cfg, path, environ, logs)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := a.drain(nil, nil, "test over"); err != nil {
			t.Errorf("drain: %v", err)
		}
	}()

	a.log.Debug("before-reload-debug")
	next := base + "shutdown_timeout: 7s\npool:\n  mode: session\n  max_size: 12\n  max_client_conn: 99\n" +
		"max_message_size: 2048\nauth:\n  method: md5\n  users: [{name: bob, password: b}]\n"
	next = strings.Replace(next, "log:\n  format: json\n", "log:\n  format: text\n  level: debug\n", 1)
	if err := os.WriteFile(path, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	a.reload()
	a.log.Debug("after-reload-debug")

	if logs.Count("before-reload-debug") != 0 || logs.Count("after-reload-debug") != 1 {
		t.Errorf("log.level did not change live:\n%s", logs)
	}
	if a.cfg.ShutdownTimeout != 7*time.Second || a.cfg.Pool.MaxSize != 12 || a.cfg.Pool.MaxClientConn != 99 || a.cfg.Auth.Method != "md5" {
		t.Errorf("live options not applied: %+v", a.cfg)
	}
	if got := a.pools[a.targets[0].Name].Stats().MaxSize; got != 12 {
		t.Errorf("pool max_size = %d after reload, want 12", got)
	}
	if a.targets[0].Users["bob"] != "b" {
		t.Errorf("users after reload = %v", a.targets[0].Users)
	}
	if a.cfg.Pool.Mode != "transaction" || a.cfg.MaxMessageSize != config.Defaults().MaxMessageSize || a.cfg.Log.Format != "json" {
		t.Errorf("restart-only options changed live: mode %s, max_message_size %d, format %s",
			a.cfg.Pool.Mode, a.cfg.MaxMessageSize, a.cfg.Log.Format)
	}
	for _, key := range []string{"pool.mode", "max_message_size", "log.format"} {
		if !strings.Contains(logs.String(), `"option":"`+key+`"`) {
			t.Errorf("%s not reported as needing a restart", key)
		}
	}
}
