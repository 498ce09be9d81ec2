package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

const pgBinDir = "/usr/lib/postgresql/15/bin"

// testCluster is a throwaway PostgreSQL 15 cluster on 127.0.0.1, trust
// authentication, run as the postgres user when the tests run as root.
type testCluster struct {
	dir, data string
	port      int
	cred      *syscall.Credential
}

func startCluster(t *testing.T) *testCluster {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBinDir, "initdb")); err != nil {
		t.Skipf("PostgreSQL 15 binaries not found in %s (%v): install postgresql-15 to run this test", pgBinDir, err)
	}
	c := &testCluster{}
	dir, err := os.MkdirTemp("", "pool-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c.dir, c.data = dir, filepath.Join(dir, "data")
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs a postgres user to own the cluster: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.port = l.Addr().(*net.TCPAddr).Port
	l.Close()

	c.run(t, "initdb", "-D", c.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	c.start(t)
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *testCluster) run(t *testing.T, bin string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(pgBinDir, bin), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	}
}

func (c *testCluster) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off", c.port, c.dir)
	c.run(t, "pg_ctl", "-D", c.data, "-o", opts, "-l", filepath.Join(c.dir, "log"), "-w", "-t", "30", "start")
}

func (c *testCluster) stop(t *testing.T) {
	t.Helper()
	c.run(t, "pg_ctl", "-D", c.data, "-m", "fast", "-w", "-t", "30", "stop")
}

func (c *testCluster) config(t *testing.T) *pgconn.Config {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", c.port))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// rawQuery relays one simple query on the raw socket, the way the proxy
// does, and returns the first column of the first row or the error code.
func rawQuery(t *testing.T, nc net.Conn, sql string) (value, errCode string) {
	t.Helper()
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("raw relay of %q: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if value == "" {
				value = string(m.Values[0])
			}
		case *pgproto3.ErrorResponse:
			errCode = m.Code
		case *pgproto3.ReadyForQuery:
			return value, errCode
		}
	}
}

// TestAgainstPostgres shares one cluster (initdb is the slow part).
func TestAgainstPostgres(t *testing.T) {
	cl := startCluster(t)
	t.Run("PgServer", func(t *testing.T) { testPgServer(t, cl) })
	t.Run("Pool", func(t *testing.T) { testPoolOnPostgres(t, cl) })
}

func testPgServer(t *testing.T, cl *testCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	srv, err := Connector(cl.config(t))(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	ps := srv.(*PgServer)
	defer ps.Close(context.Background())

	if srv.PID() == 0 || ps.PgConn().PID() != srv.PID() {
		t.Fatalf("pid %d", srv.PID())
	}
	params := srv.Params()
	for k, want := range map[string]string{"client_encoding": "UTF8", "integer_datetimes": "on", "standard_conforming_strings": "on", "is_superuser": "on"} {
		if params[k] != want {
			t.Fatalf("param %s = %q, want %q (all: %v)", k, params[k], want, params)
		}
	}
	for _, k := range []string{"server_version", "DateStyle", "TimeZone", "session_authorization"} {
		if params[k] == "" {
			t.Fatalf("param %s missing: %v", k, params)
		}
	}
	for k, v := range params {
		if v == "" {
			t.Fatalf("empty param %s kept", k)
		}
	}

	if err := srv.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	var pgErr *pgconn.PgError
	if err := srv.Exec(ctx, "SELECT 1/0"); !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Fatalf("Exec of a failing query: %v, want a 22012 PgError", err)
	}
	if err := srv.Exec(ctx, "SELECT 1; SELECT 2"); err != nil {
		t.Fatalf("Exec after an error: %v", err)
	}

	// After Exec the raw socket is safe to relay on, and a deadline the
	// relay leaves behind does not break the next Exec.
	if v, code := rawQuery(t, srv.NetConn(), "SELECT 42"); v != "42" || code != "" {
		t.Fatalf("raw relay got %q / %q", v, code)
	}
	if err := srv.NetConn().SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("Exec after a relay deadline: %v", err)
	}

	// CancelRequest reaches the query running on the raw socket.
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = srv.CancelRequest(context.Background())
	}()
	start := time.Now()
	if _, code := rawQuery(t, srv.NetConn(), "SELECT pg_sleep(10)"); code != "57014" {
		t.Fatalf("canceled query ended with %q, want 57014", code)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("cancel took %s", time.Since(start))
	}
}

func testPoolOnPostgres(t *testing.T, cl *testCluster) {
	log := newLogRecorder()
	cfg := testConfig(newFakeDB(), log)
	cfg.Connect = Connector(cl.config(t))
	cfg.MinSize = 2
	cfg.MaxSize = 3
	cfg.ValidateAfterIdle = 0
	cfg.BackoffInitial = 50 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	p := startPool(t, cfg)
	waitFor(t, "warm to 2", func() bool { return p.Stats().Total == 2 })

	// A backend killed while idle fails validation; the caller gets a
	// working one and never sees the error.
	victim := mustAcquire(t, p)
	killer := mustAcquire(t, p)
	victimPID := victim.Server().PID()
	victim.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := killer.Server().Exec(ctx, fmt.Sprintf("SELECT pg_terminate_backend(%d)", victimPID)); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	killer.Release()
	// Take both idle ones: whichever is the victim fails validation.
	c1, c2 := mustAcquire(t, p), mustAcquire(t, p)
	for _, c := range []*Conn{c1, c2} {
		if c.Server().PID() == victimPID {
			t.Fatal("got the terminated backend")
		}
		if v, code := rawQuery(t, c.Server().NetConn(), "SELECT 7"); v != "7" || code != "" {
			t.Fatalf("relay on an acquired backend: %q %q", v, code)
		}
		c.Server().NetConn().SetDeadline(time.Time{})
		c.Release()
	}
	if s := p.Stats(); s.Retired.Validation != 1 {
		t.Fatalf("retired %+v, want Validation 1", s.Retired)
	}

	// The database stops: UNHEALTHY with pgconn's error; it starts again:
	// HEALTHY, without restarting the pool.
	cl.stop(t)
	waitFor(t, "UNHEALTHY", func() bool {
		if c, err := p.Acquire(context.Background()); err == nil {
			c.Destroy("database stopped")
		}
		return p.State() == StateUnhealthy
	})
	if _, err := p.Acquire(context.Background()); err == nil {
		t.Fatal("Acquire succeeded while the database is down")
	} else {
		ae := asAcquireError(t, err, pgwire.CodeConnectionFailure)
		var connErr *pgconn.ConnectError
		if !errors.As(ae, &connErr) {
			t.Fatalf("error does not carry pgconn's own error: %v (%T)", ae.Err, ae.Err)
		}
	}
	cl.start(t)
	waitFor(t, "HEALTHY again", func() bool { return p.State() == StateHealthy })
	c := mustAcquire(t, p)
	if err := c.Server().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	c.Release()
}
