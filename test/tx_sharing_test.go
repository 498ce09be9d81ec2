package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Statement sharing (issue 8, "Prepared"): every client Parse still reaches
// the server, but once a client's statement is described, a server copy of
// the same text with the same parameter types and result description,
// prepared for another client on that backend, serves it there; a client's
// own redundant copy is closed. A copy that predates a DDL which changed
// the description is never taken for a statement prepared after it.

// txCopies counts the server copies of sql on the backend conn's
// transaction runs on.
func txCopies(ctx context.Context, t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	return txMustOne(ctx, t, conn, "SELECT count(*) FROM pg_prepared_statements WHERE statement = '"+strings.ReplaceAll(sql, "'", "''")+"'")
}

// TestTxStatementSharingOneBackend: three clients prepare the same text on
// a pool of 1. Each Parse reaches the server (a syntax error or a missing
// table would be reported at Parse, as directly), each gets its
// description and rows, and afterwards the backend holds one copy of the
// statement, not three.
func TestTxStatementSharingOneBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS tx_share_one; CREATE TABLE tx_share_one (id int, v text); INSERT INTO tx_share_one VALUES (1, 'one'), (2, 'two')")
	const sql = "SELECT v FROM tx_share_one WHERE id = $1"

	run := func(url string) (steps []string, copies string) {
		var cs []*pgconn.PgConn
		for i := 0; i < 3; i++ {
			cs = append(cs, txConnect(ctx, t, url, nil))
		}
		for i, c := range cs {
			steps = append(steps, fmt.Sprintf("client %d prepares: %s", i, txDescribe(ctx, c, admin, "s", sql)))
		}
		for i, c := range cs {
			steps = append(steps, fmt.Sprintf("client %d executes: %s", i, txExecText(ctx, c, admin, "s", fmt.Sprint(i%2+1))))
		}
		// Each Parse still reaches the server: a Parse of a missing table
		// fails at Parse.
		if _, err := cs[0].Prepare(ctx, "bad", "SELECT v FROM tx_share_missing WHERE id = $1", nil); err != nil {
			steps = append(steps, "prepare of a missing table: ERROR "+sqlState(err))
		} else {
			steps = append(steps, "prepare of a missing table: ok")
		}
		// One more round: every client runs on the shared copy.
		for i, c := range cs {
			steps = append(steps, fmt.Sprintf("client %d executes again: %s", i, txExecText(ctx, c, admin, "s", fmt.Sprint(i%2+1))))
		}
		return steps, txCopies(ctx, t, cs[0], sql)
	}
	direct, directCopies := run(txDirectURL())
	proxied, copies := run(txProxyURL(p))
	for i := range direct {
		if i >= len(proxied) || direct[i] != proxied[i] {
			t.Errorf("directly %q, through the proxy %q", direct[i], proxied[min(i, len(proxied)-1)])
		} else {
			t.Log(direct[i])
		}
	}
	// Directly, the session that counts sees its own statement only.
	if directCopies != "1" || copies != "1" {
		t.Errorf("copies of the statement on the one backend: %s through the proxy (want 1: shared), %s directly in one session", copies, directCopies)
	}
}

// txSteer makes the next transaction of any client of p (a pool of 2) run
// on the backend whose PID is target, by holding the other backend in an
// open transaction; release ends that transaction. It returns the holder,
// whose transaction runs on the other backend.
func txSteer(ctx context.Context, t *testing.T, url, target string) (other string, release func()) {
	t.Helper()
	h1 := txConnect(ctx, t, url, nil)
	p1 := txMustOne(ctx, t, h1, "BEGIN; SELECT pg_backend_pid()::text")
	if p1 != target {
		return p1, func() { txMustExec(ctx, t, h1, "COMMIT") }
	}
	h2 := txConnect(ctx, t, url, nil)
	p2 := txMustOne(ctx, t, h2, "BEGIN; SELECT pg_backend_pid()::text")
	txMustExec(ctx, t, h1, "COMMIT")
	return p2, func() { txMustExec(ctx, t, h2, "COMMIT") }
}

// TestTxStatementSharingAcrossBackends, on a pool of 2 whose backends x and
// y the test steers clients to:
//   - P prepares a text on x, Q the same text on y; when Q's statement runs
//     on x, the proxy does not prepare it there again but uses P's copy (x
//     holds one copy);
//   - A prepares a text on x, then ALTER TABLE ... TYPE changes its result
//     type; B prepares the text on y and gets the new types. When B's
//     statement runs on x, A's copy (old description) is not used for it:
//     B gets the new type's rows, as directly, and x holds two copies. A's
//     own statement gets 0A000, as directly.
func TestTxStatementSharingAcrossBackends(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	url := txProxyURL(p)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS tx_share_x; CREATE TABLE tx_share_x (id int, c int); INSERT INTO tx_share_x VALUES (1, 10), (2, 20)")
	const same = "SELECT c + 1 FROM tx_share_x WHERE id = $1"
	const ddl = "SELECT c FROM tx_share_x WHERE id = $1"

	observer := txConnect(ctx, t, url, nil)
	x := txMustOne(ctx, t, observer, "BEGIN; SELECT pg_backend_pid()::text")
	y, release := txSteer(ctx, t, url, "none") // holds the other backend
	release()
	txMustExec(ctx, t, observer, "COMMIT")
	if x == y {
		t.Fatalf("want two backends, got %s twice", x)
	}
	// on runs f in a transaction of c steered to backend pid.
	on := func(pid string, f func()) {
		_, rel := txSteer(ctx, t, url, pid)
		defer rel()
		f()
	}

	pc, qc := txConnect(ctx, t, url, nil), txConnect(ctx, t, url, nil)
	on(x, func() { t.Log("P prepares on x: ", txDescribe(ctx, pc, admin, "s", same)) })
	on(y, func() { t.Log("Q prepares on y: ", txDescribe(ctx, qc, admin, "s", same)) })
	on(x, func() {
		if got := txExecText(ctx, qc, admin, "s", "2"); got != "21 :: integer" {
			t.Errorf("Q executes on x: %q, want 21 :: integer", got)
		}
	})
	on(x, func() {
		if got := txCopies(ctx, t, qc, same); got != "1" {
			t.Errorf("copies on x after Q ran there: %s, want 1 (P's, shared)", got)
		}
	})

	// The DDL case, directly first.
	directSteps := func() []string {
		a, b := txConnect(ctx, t, txDirectURL(), nil), txConnect(ctx, t, txDirectURL(), nil)
		var out []string
		out = append(out, "A prepares: "+txDescribe(ctx, a, admin, "d", ddl))
		txMustExec(ctx, t, admin, "ALTER TABLE tx_share_x ALTER COLUMN c TYPE bigint")
		out = append(out, "B prepares: "+txDescribe(ctx, b, admin, "d", ddl))
		out = append(out, "B executes: "+txExecText(ctx, b, admin, "d", "2"))
		out = append(out, "A executes: "+txExecText(ctx, a, admin, "d", "2"))
		out = append(out, "B executes again: "+txExecText(ctx, b, admin, "d", "1"))
		return out
	}()
	txMustExec(ctx, t, admin, "ALTER TABLE tx_share_x ALTER COLUMN c TYPE int")

	ac, bc := txConnect(ctx, t, url, nil), txConnect(ctx, t, url, nil)
	var steps []string
	on(x, func() { steps = append(steps, "A prepares: "+txDescribe(ctx, ac, admin, "d", ddl)) })
	txMustExec(ctx, t, admin, "ALTER TABLE tx_share_x ALTER COLUMN c TYPE bigint")
	on(y, func() { steps = append(steps, "B prepares: "+txDescribe(ctx, bc, admin, "d", ddl)) })
	on(x, func() { steps = append(steps, "B executes: "+txExecText(ctx, bc, admin, "d", "2")) })
	on(x, func() { steps = append(steps, "A executes: "+txExecText(ctx, ac, admin, "d", "2")) })
	on(x, func() { steps = append(steps, "B executes again: "+txExecText(ctx, bc, admin, "d", "1")) })
	for i := range directSteps {
		if i >= len(steps) || directSteps[i] != steps[i] {
			t.Errorf("directly %q, through the proxy %q", directSteps[i], steps[min(i, len(steps)-1)])
		} else {
			t.Log(directSteps[i])
		}
	}
	on(x, func() {
		if got := txCopies(ctx, t, bc, ddl); got != "2" {
			t.Errorf("copies on x after B ran there: %s, want 2 (A's, from before the DDL, is not B's)", got)
		}
	})
}
