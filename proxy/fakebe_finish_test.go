package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Finish, through the wire: what a backend receives when its client
// leaves, and whether it is handed on or closed.

// leave closes a pgconn client and waits until the proxy is done with it
// (finish ran: its backend was released, reset or closed).
func (e *fakeEnv) leave(t testing.TB, pc *pgconn.PgConn) {
	t.Helper()
	before := e.srv.Stats().ClientsTotal
	pc.Close(context.Background())
	waitFor(t, "the proxy to let the client go", func() bool { return e.srv.Stats().ClientsTotal < before })
}

// TestFakeFinishIdleTransactionMode: a transaction-mode client that leaves
// between transactions has no backend: nothing is sent to any, and the
// backend it used serves the next client unchanged.
func TestFakeFinishIdleTransactionMode(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("SELECT 'first'", "SELECT 1", 'I', "first"),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "SELECT 'first'", "first")
	e.leave(t, a)
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	if n := e.fb.sessionCount(); n != 1 {
		t.Fatalf("%d backend connections, want the one reused", n)
	}
}

// TestFakeFinishIdleSessionMode: a session-mode client that leaves idle
// has its backend cleaned with the reset query, and only that, before the
// backend serves the next client.
func TestFakeFinishIdleSessionMode(t *testing.T) {
	e := startFake(t, fakeOpts{mode: ModeSession, resetQuery: "DISCARD ALL"}, beScript{
		queryResult("SELECT 'first'", "SELECT 1", 'I', "first"),
		queryResult("DISCARD ALL", "DISCARD ALL", 'I'),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
		queryResult("DISCARD ALL", "DISCARD ALL", 'I'),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "SELECT 'first'", "first")
	e.leave(t, a)
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	e.leave(t, b)
	if st := e.pool.Stats(); st.Idle != 1 || st.Retired.Total() != 0 {
		t.Fatalf("pool: %d idle, %d retired; want the one backend back, none closed", st.Idle, st.Retired.Total())
	}
}

// TestFakeFinishMidTransaction: a transaction-mode client that leaves
// inside a transaction gets it rolled back, and the session discarded
// (DISCARD ALL drops whatever it may have left), before the backend goes
// back to the pool and serves the next client.
func TestFakeFinishMidTransaction(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("SELECT 'inside'", "SELECT 1", 'T', "inside"),
		queryResult("ROLLBACK", "ROLLBACK", 'I'),
		queryResult("DISCARD ALL", "DISCARD ALL", 'I'),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "BEGIN")
	mustExec(t, a, "SELECT 'inside'", "inside")
	e.leave(t, a)
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	if n := e.fb.sessionCount(); n != 1 {
		t.Fatalf("%d backend connections, want the rolled-back one reused", n)
	}
}

// TestFakeFinishMidTransactionSessionMode: in session mode the same leave
// rolls back, resets the settings (RESET ALL) and then runs the reset
// query.
func TestFakeFinishMidTransactionSessionMode(t *testing.T) {
	e := startFake(t, fakeOpts{mode: ModeSession, resetQuery: "DISCARD ALL"}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("ROLLBACK", "ROLLBACK", 'I'),
		queryResult("RESET ALL", "RESET", 'I'),
		queryResult("DISCARD ALL", "DISCARD ALL", 'I'),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "BEGIN")
	e.leave(t, a)
	if st := e.pool.Stats(); st.Idle != 1 || st.Retired.Total() != 0 {
		t.Fatalf("pool: %d idle, %d retired; want the backend back", st.Idle, st.Retired.Total())
	}
}

// TestFakeFinishRequestInFlight: a client that leaves while its query
// still runs leaves the backend in an unknown state: the proxy cancels the
// query (one CancelRequest with the backend's own key) and closes the
// backend; the next client gets a new one.
func TestFakeFinishRequestInFlight(t *testing.T) {
	running := make(chan struct{})
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("SELECT pg_sleep(60)"),
		reached(running),
		awaitCancel(),
	}, beScript{
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	rc := e.dialRaw(t)
	rc.query(t, "SELECT pg_sleep(60)")
	<-running
	rc.conn.Close() // no Terminate: the client just goes
	first := e.fb.session(t, 1)
	first.waitDone(t)
	if got := e.fb.cancelList(); len(got) != 1 || got[0] != (fakeCancel{first.pid, first.secret}) {
		t.Fatalf("cancel requests %v, want one with the backend's key (%d, %d)", got, first.pid, first.secret)
	}
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	if st := e.pool.Stats(); st.Retired.Error != 1 {
		t.Fatalf("pool retired %+v, want the abandoned backend closed as an error", st.Retired)
	}
}

// TestFakeFinishMidCopy: a client that leaves in the middle of COPY FROM
// STDIN (Terminate after some CopyData) leaves the backend mid-request: it
// is cancelled and closed, never handed on.
func TestFakeFinishMidCopy(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("COPY items FROM STDIN"),
		send(&pgproto3.CopyInResponse{OverallFormat: 0, ColumnFormatCodes: []uint16{0}}),
		expect(&pgproto3.CopyData{Data: []byte("1\n")}),
		awaitCancel(),
	}, beScript{
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	rc := e.dialRaw(t)
	rc.query(t, "COPY items FROM STDIN")
	if m, ok := rc.receive(t).(*pgproto3.CopyInResponse); !ok {
		t.Fatalf("got %T, want CopyInResponse", m)
	}
	rc.fe.Send(&pgproto3.CopyData{Data: []byte("1\n")})
	rc.fe.Send(&pgproto3.Terminate{})
	rc.flush(t)
	e.fb.session(t, 1).waitDone(t)
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	if n := e.fb.sessionCount(); n != 2 {
		t.Fatalf("%d backend connections, want a new one after the COPY was abandoned", n)
	}
}

// TestFakeFinishRollbackFails: when the ROLLBACK for a client that left
// inside a transaction fails, the backend's state is unknown: it is closed,
// never handed on, and the next client gets a new one.
func TestFakeFinishRollbackFails(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		expectQuery("ROLLBACK"),
		send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "XX000", Message: "simulated failure"},
			&pgproto3.ReadyForQuery{TxStatus: 'E'}),
	}, beScript{
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	a := e.connect(t, nil)
	mustExec(t, a, "BEGIN")
	e.leave(t, a)
	e.fb.session(t, 1).waitDone(t)
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
	if st := e.pool.Stats(); st.Retired.Error != 1 {
		t.Fatalf("pool retired %+v, want the backend whose ROLLBACK failed closed", st.Retired)
	}
}

// TestFakeFinishServerClose: Server.Close with a query in flight closes
// the client at once and the backend too (cancelled first: its state is
// unknown), never returning it to the pool.
func TestFakeFinishServerClose(t *testing.T) {
	running := make(chan struct{})
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("SELECT pg_sleep(60)"),
		reached(running),
		awaitCancel(),
	})
	c := e.connect(t, nil)
	done := execAsync(c, "SELECT pg_sleep(60)")
	<-running
	e.srv.Close()
	if err := <-done; err == nil {
		t.Fatal("the query succeeded through a closed proxy")
	}
	e.fb.session(t, 1).waitDone(t)
	if st := e.pool.Stats(); st.Retired.Error != 1 || st.Idle != 0 {
		t.Fatalf("pool: retired %+v, %d idle; want the backend closed, not returned", st.Retired, st.Idle)
	}
}

// TestFakeFinishIdleInTransactionTimeout: a client idle inside a
// transaction past idle_transaction_timeout is told FATAL 25P03 and closed;
// its transaction is rolled back and the session discarded, and the
// backend goes back to the pool.
func TestFakeFinishIdleInTransactionTimeout(t *testing.T) {
	e := startFake(t, fakeOpts{config: func(c *Config) { c.IdleTransactionTimeout = 100 * time.Millisecond }}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("ROLLBACK", "ROLLBACK", 'I'),
		queryResult("DISCARD ALL", "DISCARD ALL", 'I'),
	})
	rc := e.dialRaw(t)
	rc.query(t, "BEGIN")
	if _, er, st := rc.readResult(t); er != nil || st != 'T' {
		t.Fatalf("BEGIN: %v, status %c", er, st)
	}
	m := rc.receive(t)
	if er, ok := m.(*pgproto3.ErrorResponse); !ok || er.Severity != "FATAL" || er.Code != pgwire.CodeIdleInTransactionTimeout {
		t.Fatalf("got %#v, want FATAL 25P03", m)
	}
	waitFor(t, "the backend back in the pool", func() bool { st := e.pool.Stats(); return st.Idle == 1 && st.Active == 0 })
}

// TestFakeFinishShutdown: Shutdown lets a client inside a transaction
// finish it, then tells it FATAL 57P01 at the boundary; its backend is
// released clean (it sees nothing but the client's own statements) and
// Shutdown returns as soon as the client is gone.
func TestFakeFinishShutdown(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("COMMIT", "COMMIT", 'I'),
	})
	rc := e.dialRaw(t)
	rc.query(t, "BEGIN")
	if _, er, st := rc.readResult(t); er != nil || st != 'T' {
		t.Fatalf("BEGIN: %v, status %c", er, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }() // ends when the client has left
	waitFor(t, "the drain", e.srv.Draining)
	rc.query(t, "COMMIT")
	if _, er, st := rc.readResult(t); er != nil || st != 'I' {
		t.Fatalf("COMMIT during the drain: %v, status %c", er, st)
	}
	m := rc.receive(t)
	if er, ok := m.(*pgproto3.ErrorResponse); !ok || er.Severity != "FATAL" || er.Code != pgwire.CodeAdminShutdown {
		t.Fatalf("got %#v, want FATAL 57P01", m)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if st := e.pool.Stats(); st.Idle != 1 || st.Retired.Total() != 0 {
		t.Fatalf("pool: %d idle, retired %+v; want the backend released clean", st.Idle, st.Retired)
	}
}

// TestFakeReleasedBeforeReadyForQuery: the backend is back in its pool,
// and the transaction counted, before the client sees the ReadyForQuery
// that ends it, whichever goroutine read the reply: the client's own (a
// statement on its own), or the backend reader that waits on a backend
// held through an open transaction (COMMIT). A client that answers at
// once then starts a new hold instead of riding the old one, and a
// scrape right after a COMMIT counts that transaction.
func TestFakeReleasedBeforeReadyForQuery(t *testing.T) {
	const rounds = 100
	var script beScript
	for range rounds {
		script = append(script,
			queryResult("SELECT 'alone'", "SELECT 1", 'I', "alone"),
			queryResult("BEGIN", "BEGIN", 'T'),
			queryResult("COMMIT", "COMMIT", 'I'))
	}
	e := startFake(t, fakeOpts{}, script)
	pc := e.connect(t, nil)
	before := e.pool.Stats().Acquisitions
	for i := range rounds {
		for _, sql := range []string{"SELECT 'alone'", "BEGIN", "COMMIT"} {
			want := []string(nil)
			if sql == "SELECT 'alone'" {
				want = []string{"alone"}
			}
			mustExec(t, pc, sql, want...)
			if sql == "BEGIN" {
				continue // the transaction holds the backend
			}
			if st := e.pool.Stats(); st.Active != 0 || st.Idle != 1 {
				t.Fatalf("round %d, right after %s's ReadyForQuery: %d active, %d idle; want the backend back", i, sql, st.Active, st.Idle)
			}
		}
	}
	if got := e.pool.Stats().Acquisitions - before; got != 2*rounds {
		t.Fatalf("%d acquisitions for %d statements and %d transactions, want one each", got, rounds, rounds)
	}
}

// TestReleaseClearsWakeDeadline: a wake-up deadline set on a backend's
// socket (setReadDeadline) that no reader took is cleared when the backend
// goes back to its pool, so its next holder's first read does not fail at
// once. releaseBackend clears deadlines only where one may be set: this
// fails if a deadline is set without telling it.
func TestReleaseClearsWakeDeadline(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{})
	conn, err := e.pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := e.srv.backendFor(conn)
	b.setReadDeadline(time.Now()) // a wake-up nobody read
	e.srv.releaseBackend(b, time.Now())
	if b.deadline.Load() {
		t.Fatal("released with its deadline noted as set")
	}
	again, ok := e.pool.TryAcquire()
	if !ok || e.srv.backendFor(again) != b {
		t.Fatal("the backend did not come back from the pool")
	}
	defer again.Release()
	const wait = 200 * time.Millisecond
	go func() {
		time.Sleep(wait)
		b.nc.SetReadDeadline(time.Now()) // end the read below; the fake backend sends nothing
	}()
	start := time.Now()
	_, err = b.nc.Read(make([]byte, 1))
	if d := time.Since(start); d < wait/2 {
		t.Fatalf("the next holder's read returned after %v (%v): the wake-up deadline survived the release", d, err)
	}
	b.nc.SetReadDeadline(time.Time{})
}
