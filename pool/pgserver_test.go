package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// clusterConfig is the connect config for the role app of cl, over TCP
// with SCRAM as the proxy connects.
func clusterConfig(t *testing.T, cl *testpg.Cluster) *pgconn.Config {
	t.Helper()
	cfg, err := pgconn.ParseConfig(cl.URL("app", "app", "app") + "&connect_timeout=5")
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
	cl := testpg.Start(t)
	t.Run("PgServer", func(t *testing.T) { testPgServer(t, cl) })
	t.Run("Pool", func(t *testing.T) { testPoolOnPostgres(t, cl) })
}

func testPgServer(t *testing.T, cl *testpg.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	srv, err := Connector(clusterConfig(t, cl))(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	ps := srv.(*PgServer)
	defer ps.Close(context.Background())

	if srv.PID() == 0 || ps.PgConn().PID() != srv.PID() {
		t.Fatalf("pid %d", srv.PID())
	}
	params := srv.Params()
	for k, want := range map[string]string{"client_encoding": "UTF8", "integer_datetimes": "on", "standard_conforming_strings": "on", "is_superuser": "off", "session_authorization": "app"} {
		if params[k] != want {
			t.Fatalf("param %s = %q, want %q (all: %v)", k, params[k], want, params)
		}
	}
	for _, k := range []string{"server_version", "DateStyle", "TimeZone", "session_authorization"} {
		if params[k] == "" {
			t.Fatalf("param %s missing: %v", k, params)
		}
	}
	// application_name is reported, empty by default: kept, so the proxy
	// follows it from ParameterStatus; a parameter this server does not
	// report (pgconn's "") is not.
	if v, ok := params["application_name"]; !ok || v != "" {
		t.Fatalf("application_name = %q (present %v), want present and empty", v, ok)
	}
	for k, v := range params {
		if v == "" && k != "application_name" {
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

func testPoolOnPostgres(t *testing.T, cl *testpg.Cluster) {
	log := newLogRecorder()
	cfg := testConfig(newFakeDB(), log)
	cfg.Connect = Connector(clusterConfig(t, cl))
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
	for _, c := range []Conn{c1, c2} {
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
	if err := cl.Stop(); err != nil {
		t.Fatal(err)
	}
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
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "HEALTHY again", func() bool { return p.State() == StateHealthy })
	c := mustAcquire(t, p)
	if err := c.Server().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	c.Release()
}
