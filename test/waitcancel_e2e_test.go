package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestCancelWhileWaiting: a cancel request (^C in psql) for a client whose
// INSERT waits for a backend (the pool's one backend is held by an open
// transaction) ends the wait: the client gets what PostgreSQL gives for a
// cancelled statement (ERROR 57014 "canceling statement due to user
// request", compared with a direct connection cancelled mid-statement),
// then ReadyForQuery, at once and not when the backend frees up; the
// INSERT never runs; the session goes on. PgBouncer 1.18 drops such a
// cancel and runs the statement later, as pgsidecar did. Twice: cancelled
// while the request is in the event loop's own queue, and after 300 ms,
// while it waits on a goroutine in the pool's queue.
func TestCancelWhileWaiting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS wait_cancel; CREATE TABLE wait_cancel(i int)")

	// What PostgreSQL says for a cancelled statement.
	direct := dialRaw(t, txDirectURL())
	direct.send(t, &pgproto3.Query{String: "INSERT INTO wait_cancel SELECT -1 FROM pg_sleep(10)"})
	time.Sleep(200 * time.Millisecond)
	if err := direct.pc.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	want := receiveUntil[*pgproto3.ErrorResponse](t, direct)
	receiveUntil[*pgproto3.ReadyForQuery](t, direct)
	t.Logf("PostgreSQL: %s %s %q", want.Severity, want.Code, want.Message)

	for _, tc := range []struct {
		name  string
		after time.Duration
	}{
		{"in the event loop's queue", 20 * time.Millisecond},
		{"in the pool's queue", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := txStartProxy(t, "transaction", 1)
			holder := dialRaw(t, txProxyURL(p))
			holder.query(t, "SELECT 1")
			r := dialRaw(t, txProxyURL(p))
			r.query(t, "SELECT 1") // parked after it: the event loop reads the INSERT
			r.query(t, "SELECT 1")
			holder.query(t, "BEGIN")
			r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO wait_cancel VALUES (%d)", int(tc.after.Milliseconds()))})
			waitFor(t, 10*time.Second, "the INSERT waiting for the backend", func() bool {
				return clientsStat(t, p, "clients_waiting") == 1
			})
			time.Sleep(tc.after)
			start := time.Now()
			if err := r.pc.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			got, ok := r.receive(t).(*pgproto3.ErrorResponse)
			if !ok || got.Severity != want.Severity || got.Code != want.Code || got.Message != want.Message || got.Hint == "" {
				t.Fatalf("got %#v; want %s %s %q (as PostgreSQL) with a hint", got, want.Severity, want.Code, want.Message)
			}
			if z, ok := r.receive(t).(*pgproto3.ReadyForQuery); !ok || z.TxStatus != 'I' {
				t.Fatalf("after the error: %#v, want ReadyForQuery 'I'", z)
			}
			took := time.Since(start)
			t.Logf("answered in %v: %s %s %q (hint: %s)", took.Round(time.Millisecond), got.Severity, got.Code, got.Message, got.Hint)
			if took > 2*time.Second {
				t.Fatalf("the cancelled client waited %v for its answer", took)
			}
			holder.query(t, "COMMIT")
			if rows, _ := r.query(t, "SELECT count(*) FROM wait_cancel WHERE i >= 0"); len(rows) != 1 || rows[0][0] != "0" {
				t.Fatalf("the cancelled INSERT ran: %v rows", rows)
			}
			waitFor(t, 10*time.Second, "no client waiting", func() bool {
				return clientsStat(t, p, "clients_waiting") == 0
			})
			lgCleanBackends(ctx, t, p, 1)
			lgLogLoop(t, p)
		})
	}
}
