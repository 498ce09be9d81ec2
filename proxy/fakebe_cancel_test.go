package proxy

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Cancel, through the wire: a client's CancelRequest to the proxy, and
// what reaches the fake server's cancel listener.

// execAsync runs sql on pc in a goroutine (it ends with the reply) and
// returns where its error arrives.
func execAsync(pc *pgconn.PgConn, sql string) <-chan error {
	done := make(chan error, 1)
	go func() { // ends when the query's reply (or the connection's end) is read
		ctx, cancel := context.WithTimeout(context.Background(), 2*fakeStepTimeout)
		defer cancel()
		_, err := pc.Exec(ctx, sql).ReadAll()
		done <- err
	}()
	return done
}

// errCanceled is what PostgreSQL answers a cancelled query with.
var errCanceled = &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR",
	Code: pgwire.CodeQueryCanceled, Message: "canceling statement due to user request"}

// TestFakeCancelForwardedOnce: a client's CancelRequest, sent with the
// proxy-minted key it was given, reaches the server of the backend running
// its query with that backend's own pid and secret, exactly once; the
// client gets the server's 57014 and carries on on the same backend. The
// minted pid is above any server pid.
func TestFakeCancelForwardedOnce(t *testing.T) {
	running := make(chan struct{})
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("SELECT pg_sleep(60)"),
		reached(running),
		awaitCancel(),
		send(errCanceled, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
		queryResult("SELECT 'after'", "SELECT 1", 'I', "after"),
	})
	c := e.connect(t, nil)
	be := e.fb.session(t, 1)
	if c.PID() <= maxServerPID || c.PID() == be.pid {
		t.Fatalf("client pid %d: want a minted one above %d, not the backend's %d", c.PID(), maxServerPID, be.pid)
	}
	done := execAsync(c, "SELECT pg_sleep(60)")
	<-running
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	if err := c.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	wantPgError(t, <-done, "ERROR", pgwire.CodeQueryCanceled)
	mustExec(t, c, "SELECT 'after'", "after")
	if got := e.fb.cancelList(); len(got) != 1 || got[0] != (fakeCancel{be.pid, be.secret}) {
		t.Fatalf("server got cancel requests %v, want exactly one with the backend's key (%d, %d)", got, be.pid, be.secret)
	}
	if st := e.srv.Stats(); st.Cancels != 1 || st.CancelsUnknown != 0 {
		t.Fatalf("proxy counted %d cancels forwarded, %d unknown; want 1 and 0", st.Cancels, st.CancelsUnknown)
	}
}

// TestFakeCancelWrongKey: a CancelRequest whose secret does not match the
// client's key, or whose pid is nobody's, is dropped and counted: nothing
// reaches the server and the query runs on to its end.
func TestFakeCancelWrongKey(t *testing.T) {
	running, finish := make(chan struct{}), make(chan struct{})
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("SELECT pg_sleep(1)"),
		reached(running),
		hold(finish),
		result("SELECT 1", 'I', "slept"),
	})
	c := e.connect(t, nil)
	done := execAsync(c, "SELECT pg_sleep(1)")
	<-running
	secret := binary.BigEndian.Uint32(c.SecretKey())
	e.sendCancel(t, c.PID(), secret^1)
	e.sendCancel(t, c.PID()^1, secret)
	if st := e.srv.Stats(); st.CancelsUnknown != 2 || st.Cancels != 0 {
		t.Fatalf("proxy counted %d unknown, %d forwarded; want 2 and 0", st.CancelsUnknown, st.Cancels)
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("the query was disturbed by a cancel with a wrong key: %v", err)
	}
	if got := e.fb.cancelList(); len(got) != 0 {
		t.Fatalf("server got cancel requests %v, want none", got)
	}
}

// TestFakeCancelIdleClient: a cancel for a client with nothing in flight
// (no backend between transactions, or idle inside a transaction) is
// dropped: it must not reach a backend, where it could hit a later query.
func TestFakeCancelIdleClient(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		queryResult("COMMIT", "COMMIT", 'I'),
		queryResult("SELECT 'unharmed'", "SELECT 1", 'I', "unharmed"),
	})
	c := e.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	if err := c.CancelRequest(ctx); err != nil { // no backend
		t.Fatal(err)
	}
	mustExec(t, c, "BEGIN")
	if err := c.CancelRequest(ctx); err != nil { // idle in a transaction
		t.Fatal(err)
	}
	mustExec(t, c, "COMMIT")
	mustExec(t, c, "SELECT 'unharmed'", "unharmed")
	if got := e.fb.cancelList(); len(got) != 0 {
		t.Fatalf("server got cancel requests %v for an idle client, want none", got)
	}
	if st := e.srv.Stats(); st.Cancels != 0 || st.CancelsUnknown != 0 {
		t.Fatalf("proxy counted %d forwarded, %d unknown; want 0 and 0 (a known key, nothing to cancel)", st.Cancels, st.CancelsUnknown)
	}
}

// TestFakeCancelSessionMode: a session-mode client holds its backend's own
// key, and a cancel with it reaches that backend (once) through the proxy.
func TestFakeCancelSessionMode(t *testing.T) {
	running := make(chan struct{})
	e := startFake(t, fakeOpts{mode: ModeSession}, beScript{
		expectQuery("SELECT pg_sleep(60)"),
		reached(running),
		awaitCancel(),
		send(errCanceled, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
	})
	c := e.connect(t, nil)
	be := e.fb.session(t, 1)
	done := execAsync(c, "SELECT pg_sleep(60)")
	<-running
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	if err := c.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	wantPgError(t, <-done, "ERROR", pgwire.CodeQueryCanceled)
	if got := e.fb.cancelList(); len(got) != 1 || got[0] != (fakeCancel{be.pid, be.secret}) {
		t.Fatalf("server got cancel requests %v, want one with (%d, %d)", got, be.pid, be.secret)
	}
}

// TestFakeCancelQueryTimeout: a query running past query_timeout is
// cancelled on its backend (one CancelRequest with the backend's key), and
// the client is told 57014 naming the proxy's timeout, not the server's
// "due to user request".
func TestFakeCancelQueryTimeout(t *testing.T) {
	e := startFake(t, fakeOpts{config: func(c *Config) { c.QueryTimeout = 100 * time.Millisecond }}, beScript{
		expectQuery("SELECT pg_sleep(60)"),
		awaitCancel(),
		send(errCanceled, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
		queryResult("SELECT 'after'", "SELECT 1", 'I', "after"),
	})
	c := e.connect(t, nil)
	start := time.Now()
	_, err := runSQL(t, c, "SELECT pg_sleep(60)")
	pe := wantPgError(t, err, "ERROR", pgwire.CodeQueryCanceled)
	if !strings.Contains(pe.Message, "QueryTimeout") || strings.Contains(pe.Message, "user request") {
		t.Fatalf("57014 says %q, want the proxy's query timeout named", pe.Message)
	}
	if took := time.Since(start); took < 100*time.Millisecond || took > 3*time.Second {
		t.Fatalf("cancelled after %s, want soon after the 100ms query_timeout", took)
	}
	mustExec(t, c, "SELECT 'after'", "after")
	be := e.fb.session(t, 1)
	if got := e.fb.cancelList(); len(got) != 1 || got[0] != (fakeCancel{be.pid, be.secret}) {
		t.Fatalf("server got cancel requests %v, want one with (%d, %d)", got, be.pid, be.secret)
	}
}
