package proxy

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Acquire, through the wire: the scripted backend sees exactly what the
// proxy sends when a client's transaction gets a backend.

// TestFakeAcquireFirstQuery: a transaction-mode client's first query takes
// the pool's idle backend, which receives that query and nothing else; the
// backend goes back at ReadyForQuery 'I' and serves the next client as is.
func TestFakeAcquireFirstQuery(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("SELECT 'a'", "SELECT 1", 'I', "a"),
		queryResult("SELECT 'b'", "SELECT 1", 'I', "b"),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "SELECT 'a'", "a")
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'b'", "b")
	if n := e.fb.sessionCount(); n != 1 {
		t.Fatalf("%d backend connections opened, want 1 (the idle one reused)", n)
	}
	waitFor(t, "the backend's release", func() bool { return e.pool.Stats().Active == 0 })
	if st := e.pool.Stats(); st.Acquisitions < 3 {
		// The greeting's parameter lookup is one acquisition, each query another.
		t.Fatalf("pool: %d acquisitions, want at least 3", st.Acquisitions)
	}
}

// TestFakeAcquireParamSync: a client whose startup parameters differ from
// the backend's gets them set on the backend, in one Query sent before its
// own (and swallowed: the client sees only its own result); the next client,
// which asked for none, gets them RESET first. The login checks the value
// once, as a transaction-local set_config.
func TestFakeAcquireParamSync(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		// Login of the client with application_name=app: is the value valid?
		expectQuery("SELECT set_config('application_name', 'app', true)"),
		result("SELECT 1", 'I', "app"),
		// Its first query: bring the backend to its parameters first.
		expectQuery("SELECT set_config('application_name', 'app', false);"),
		send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("set_config"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte("app")}},
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ParameterStatus{Name: "application_name", Value: "app"},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		queryResult("SELECT 1", "SELECT 1", 'I', "1"),
		// A second query of the same client: already in sync.
		queryResult("SELECT 2", "SELECT 1", 'I', "2"),
		// Another client, without application_name: reset it first.
		expectQuery("RESET application_name;"),
		send(&pgproto3.CommandComplete{CommandTag: []byte("RESET")},
			&pgproto3.ParameterStatus{Name: "application_name", Value: ""},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		queryResult("SELECT 3", "SELECT 1", 'I', "3"),
	})
	a := e.connect(t, map[string]string{"application_name": "app"})
	if got := a.ParameterStatus("application_name"); got != "app" {
		t.Fatalf("client greeted with application_name %q, want its own %q", got, "app")
	}
	mustExec(t, a, "SELECT 1", "1")
	mustExec(t, a, "SELECT 2", "2")
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 3", "3")
}

// TestFakeAcquireWaitersFIFO: with the pool at its maximum (one backend,
// held by an open transaction), clients that ask for it wait, and get it in
// the order they asked: the backend sees the second client's query before
// the third's.
func TestFakeAcquireWaitersFIFO(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("COMMIT", "COMMIT", 'I'),
		queryResult("SELECT 'second'", "SELECT 1", 'I', "second"),
		queryResult("SELECT 'third'", "SELECT 1", 'I', "third"),
	})
	holder := e.connect(t, nil)
	second, third := e.dialRaw(t), e.dialRaw(t)
	mustExec(t, holder, "BEGIN")
	second.query(t, "SELECT 'second'")
	waitFor(t, "the second client to wait", func() bool { return e.pool.Stats().Waiting == 1 })
	third.query(t, "SELECT 'third'")
	waitFor(t, "the third client to wait", func() bool { return e.pool.Stats().Waiting == 2 })
	if st := e.srv.Stats(); st.ClientsWaiting != 2 {
		t.Fatalf("proxy counts %d clients waiting, want 2", st.ClientsWaiting)
	}
	mustExec(t, holder, "COMMIT")
	for _, c := range []struct {
		rc   *rawClient
		want string
	}{{second, "second"}, {third, "third"}} {
		rows, er, st := c.rc.readResult(t)
		if er != nil || len(rows) != 1 || rows[0] != c.want || st != 'I' {
			t.Fatalf("%s client: rows %q, error %v, status %c", c.want, rows, er, st)
		}
	}
}

// TestFakeAcquireTimeout: a client that cannot get a backend within the
// pool's acquire timeout gets ERROR 53300 (not FATAL) and stays connected:
// its next transaction runs once the backend is free. The backend never
// sees the refused query.
func TestFakeAcquireTimeout(t *testing.T) {
	e := startFake(t, fakeOpts{acquireTimeout: 150 * time.Millisecond}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("COMMIT", "COMMIT", 'I'),
		queryResult("SELECT 'later'", "SELECT 1", 'I', "later"),
	})
	holder := e.connect(t, nil)
	waiter := e.connect(t, nil)
	mustExec(t, holder, "BEGIN")
	start := time.Now()
	_, err := runSQL(t, waiter, "SELECT 'refused'")
	pe := wantPgError(t, err, "ERROR", pgwire.CodeTooManyConnections)
	if waited := time.Since(start); waited < 150*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("refused after %s, want about the 150ms acquire timeout", waited)
	}
	if pe.Hint == "" {
		t.Fatalf("53300 without a hint: %+v", pe)
	}
	mustExec(t, holder, "COMMIT")
	mustExec(t, waiter, "SELECT 'later'", "later")
}

// TestFakeAcquireSessionModeKey: in session mode the client gets its
// backend at login and the backend's pid, so pg_backend_pid() and a cancel
// mean what the client thinks; the secret is the client's own, never the
// backend's, which would outlive the client's session.
func TestFakeAcquireSessionModeKey(t *testing.T) {
	e := startFake(t, fakeOpts{mode: ModeSession}, beScript{
		queryResult("SELECT 1", "SELECT 1", 'I', "1"),
	})
	c := e.connect(t, nil)
	be := e.fb.session(t, 1)
	if c.PID() != be.pid || len(c.SecretKey()) != 4 || binary.BigEndian.Uint32(c.SecretKey()) == be.secret {
		t.Fatalf("session-mode client has key (%d, %x), want the backend's pid %d with a secret other than its %08x", c.PID(), c.SecretKey(), be.pid, be.secret)
	}
	if st := e.pool.Stats(); st.Active != 1 {
		t.Fatalf("pool: %d active after a session-mode login, want 1 (bound at login)", st.Active)
	}
	mustExec(t, c, "SELECT 1", "1")
}

// TestFakeAcquireExtended: an extended-protocol request (pgconn's
// ExecParams: Parse, Bind, Describe, Execute, Sync) is relayed as one batch
// on the backend it acquires; the proxy names the statement itself.
func TestFakeAcquireExtended(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		expectAny(&pgproto3.Parse{}),
		expectAny(&pgproto3.Bind{}),
		expect(&pgproto3.Describe{ObjectType: 'P'}),
		expect(&pgproto3.Execute{}),
		expect(&pgproto3.Sync{}),
		send(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
			&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte("x")}},
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
	})
	c := e.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	res := c.ExecParams(ctx, "SELECT $1::text AS v", [][]byte{[]byte("x")}, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "x" {
		t.Fatalf("ExecParams: rows %q, err %v", res.Rows, res.Err)
	}
}

// TestFakeAcquirePipelined: queries a transaction-mode client pipelines in
// one write go to the one backend it acquired, in order, and the backend
// is released only after the last ReadyForQuery (the next client reuses it).
func TestFakeAcquirePipelined(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("SELECT 'p1'", "SELECT 1", 'I', "p1"),
		queryResult("SELECT 'p2'", "SELECT 1", 'I', "p2"),
		queryResult("SELECT 'p3'", "SELECT 1", 'I', "p3"),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	rc := e.dialRaw(t)
	for _, q := range []string{"SELECT 'p1'", "SELECT 'p2'", "SELECT 'p3'"} {
		rc.fe.Send(&pgproto3.Query{String: q})
	}
	rc.flush(t)
	for _, want := range []string{"p1", "p2", "p3"} {
		rows, er, st := rc.readResult(t)
		if er != nil || len(rows) != 1 || rows[0] != want || st != 'I' {
			t.Fatalf("pipelined %s: rows %q, error %v, status %c", want, rows, er, st)
		}
	}
	waitFor(t, "the backend's release", func() bool { return e.pool.Stats().Active == 0 })
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
}

// TestFakeAcquireStartupParamRejected: a startup parameter the server
// refuses fails the login with the server's own SQLSTATE, as a direct
// connection would, instead of failing every transaction later; the
// backend that checked it goes back to the pool.
func TestFakeAcquireStartupParamRejected(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("SELECT set_config('datestyle', 'Nonsense', true)"),
		send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "22023",
			Message: `invalid value for parameter "DateStyle": "Nonsense"`},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	cfg, err := pgconn.ParseConfig("postgres://u@" + e.addr + "/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams = map[string]string{"datestyle": "Nonsense"}
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		pc.Close(ctx)
		t.Fatal("login with a parameter the server refuses succeeded")
	}
	wantPgError(t, err, "FATAL", "22023")
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
}
