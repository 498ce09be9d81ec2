package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 6, point 4: session state in transaction mode. With
// pool.session_state pin (the default) a client that creates session state
// keeps its backend until the state is gone or it leaves; nobody else ever
// sees the state. With reject the statements fail with 0A000 and leave
// nothing behind. Pools are smaller than the number of clients.

// txStateSQL summarises the session state of the backend a client is on:
// channels listened to, advisory locks, holdable cursors, temp relations,
// SQL prepared statements.
const txStateSQL = `SELECT concat_ws(',',
	(SELECT count(*) FROM pg_listening_channels()),
	(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
	(SELECT count(*) FROM pg_cursors WHERE is_holdable),
	(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
	(SELECT count(*) FROM pg_prepared_statements WHERE from_sql))`

const txNoState = "0,0,0,0,0"

// txStateCase creates one kind of session state, checks it is usable in a
// later transaction, and drops it. Every statement is sent as written (one
// Query message, possibly several statements); "ext:" sends it with the
// extended protocol.
type txStateCase struct {
	name   string
	create []string
	use    string // a later transaction that needs the state; its result is compared with direct
	state  string // txStateSQL once created
	drop   []string
}

var txStateCases = []txStateCase{
	// Shared, so the direct session and the client do not block each other.
	{name: "advisory-lock", create: []string{"ext:SELECT pg_advisory_lock_shared(616161)"},
		use: "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 616161 AND pid = pg_backend_pid()", state: "0,1,0,0,0",
		drop: []string{"SELECT 1; select PG_ADVISORY_UNLOCK_SHARED(616161)"}},
	{name: "hold-cursor", create: []string{"BEGIN; DECLARE tx_state_cur CURSOR WITH HOLD FOR SELECT generate_series(1, 3); COMMIT"},
		use: "FETCH 2 FROM tx_state_cur", state: "0,0,1,0,0",
		drop: []string{"CLOSE tx_state_cur"}},
	{name: "temp-table", create: []string{"SELECT 1 AS x INTO TEMP tx_state_temp", "INSERT INTO tx_state_temp VALUES (2)"},
		use: "SELECT sum(x) FROM tx_state_temp", state: "0,0,0,1,0",
		drop: []string{"DROP TABLE tx_state_temp"}},
	{name: "sql-prepare", create: []string{"  PREPARE tx_state_p AS SELECT 42"},
		use: "EXECUTE tx_state_p", state: "0,0,0,0,1",
		drop: []string{"DEALLOCATE tx_state_p"}},
}

func txRun(ctx context.Context, conn *pgconn.PgConn, sql string) ([]string, error) {
	if q, ok := strings.CutPrefix(sql, "ext:"); ok {
		res := conn.ExecParams(ctx, q, nil, nil, nil, nil).Read()
		if res.Err != nil {
			return nil, res.Err
		}
		var out []string
		for _, r := range res.Rows {
			out = append(out, string(r[0]))
		}
		return out, nil
	}
	return txSimple(ctx, conn, sql)
}

func txMustRun(ctx context.Context, t *testing.T, conn *pgconn.PgConn, sql string) []string {
	t.Helper()
	rows, err := txRun(ctx, conn, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return rows
}

// txPinned returns clients_pinned and the application names /stats lists.
func txPinned(t *testing.T, p *Proxy) (int, []string) {
	t.Helper()
	st := p.Stats(t)
	clients, _ := st["clients"].(map[string]any)
	n, _ := num(clients, "clients_pinned")
	var apps []string
	list, _ := clients["pinned"].([]any)
	for _, e := range list {
		m, _ := e.(map[string]any)
		apps = append(apps, str(m, "application_name")+" ["+str(m, "reasons")+"]")
	}
	return int(n), apps
}

// TestTxSessionStatePin: each kind of session state pins its client (2
// backends, 3 clients): the client uses it in later transactions exactly as
// over a direct connection, the other clients never see it and share the
// other backend, /stats and the log name the pinned client, the undo
// statement unpins it, and a client that leaves while pinned leaves a clean
// backend behind.
func TestTxSessionStatePin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))

	for _, tc := range txStateCases {
		t.Run(tc.name, func(t *testing.T) {
			app := "tx-state-" + tc.name
			direct := txConnect(ctx, t, txDirectURL(), nil)
			a := txConnect(ctx, t, txProxyURL(p), map[string]string{"application_name": app})
			b := txConnect(ctx, t, txProxyURL(p), nil)
			c := txConnect(ctx, t, txProxyURL(p), nil)

			for _, sql := range tc.create {
				txMustRun(ctx, t, direct, sql)
				txMustRun(ctx, t, a, sql)
			}
			want := fmt.Sprint(txMustRun(ctx, t, direct, tc.use))
			aPid := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
			for i := 0; i < 3; i++ {
				// The other clients share the other backend meanwhile.
				for _, o := range []*pgconn.PgConn{b, c} {
					if s := txMustOne(ctx, t, o, txStateSQL); s != txNoState {
						t.Errorf("another client sees session state %s", s)
					}
					if pid := txMustOne(ctx, t, o, "SELECT pg_backend_pid()"); pid == aPid {
						t.Errorf("another client got the pinned backend %s", pid)
					}
				}
				if s := txMustOne(ctx, t, a, txStateSQL); s != tc.state {
					t.Errorf("pinned client's state %s, want %s", s, tc.state)
				}
				if tc.name == "hold-cursor" && i > 0 {
					continue // a cursor is consumed by FETCH
				}
				if got := fmt.Sprint(txMustRun(ctx, t, a, tc.use)); got != want {
					t.Errorf("%s through the proxy: %s, direct: %s", tc.use, got, want)
				}
			}
			if pid := txMustOne(ctx, t, a, "SELECT pg_backend_pid()"); pid != aPid {
				t.Errorf("pinned client moved from backend %s to %s", aPid, pid)
			}
			n, apps := txPinned(t, p)
			if n != 1 || len(apps) != 1 || !strings.HasPrefix(apps[0], app) {
				t.Errorf("/stats: clients_pinned %d %q, want 1 naming %s", n, apps, app)
			}
			if txFindLogLine(p, "pinned", app, app) == "" {
				t.Errorf("no log line reports %s pinned", app)
			}

			for _, sql := range tc.drop {
				txMustRun(ctx, t, direct, sql)
				txMustRun(ctx, t, a, sql)
			}
			waitFor(t, 5*time.Second, "client unpinned after "+tc.drop[0], func() bool {
				n, _ := txPinned(t, p)
				return n == 0
			})
			if s := txMustOne(ctx, t, a, txStateSQL); s != txNoState {
				t.Errorf("state after %s: %s", tc.drop, s)
			}

			// Again, and leave while pinned (in the middle of a transaction):
			// the backend goes back clean.
			for _, sql := range tc.create {
				txMustRun(ctx, t, a, sql)
			}
			txMustExec(ctx, t, a, "BEGIN")
			txMustExec(ctx, t, a, "CREATE TEMP TABLE tx_state_mid (x int)")
			txClosePgconn(a)
			waitFor(t, 5*time.Second, "client unpinned after it left", func() bool {
				n, _ := txPinned(t, p)
				return n == 0
			})
			for i := 0; i < 4; i++ { // both backends, whichever each gets
				for _, o := range []*pgconn.PgConn{b, c} {
					txMustExec(ctx, t, o, "BEGIN")
				}
				for _, o := range []*pgconn.PgConn{b, c} {
					if s := txMustOne(ctx, t, o, txStateSQL); s != txNoState {
						t.Errorf("backend after the pinned client left: state %s", s)
					}
					txMustExec(ctx, t, o, "COMMIT")
				}
			}
		})
	}
}

// TestTxSessionStateTempMidTransaction: a client that creates a temp table
// and disconnects inside a later transaction (an unpinned pool of one, so
// the next client surely gets the same backend) leaves no temp table.
func TestTxSessionStateTempMidTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	for _, create := range []string{
		"CREATE TEMP TABLE tx_mid_temp (x int)",
		"BEGIN; CREATE TEMP TABLE tx_mid_temp (x int)",
		"DO $$BEGIN EXECUTE 'CREATE TEMP TABLE tx_mid_temp (x int)'; END$$",
	} {
		a := txConnect(ctx, t, txProxyURL(p), nil)
		pid := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
		txMustExec(ctx, t, a, create)
		txMustExec(ctx, t, a, "BEGIN")
		txMustExec(ctx, t, a, "INSERT INTO tx_mid_temp VALUES (1)")
		txClosePgconn(a)
		b := txConnect(ctx, t, txProxyURL(p), nil)
		if s := txMustOne(ctx, t, b, txStateSQL); s != txNoState {
			t.Errorf("%s, then leaving inside a transaction: next client sees state %s", create, s)
		}
		if got := txMustOne(ctx, t, b, "SELECT coalesce(to_regclass('pg_temp.tx_mid_temp')::text, 'none')"); got != "none" {
			t.Errorf("%s: temp table still there: %s", create, got)
		}
		t.Logf("%s: backend %s, next client on %s", create, pid, txMustOne(ctx, t, b, "SELECT pg_backend_pid()"))
		txClosePgconn(b)
	}
}

// TestTxSessionStateReject: with pool.session_state reject each statement
// that creates session state fails with 0A000 and a hint, through the simple
// and the extended protocol, inside a transaction it aborts the transaction
// as a server error does, and the backend stays clean. State made where the
// proxy cannot see it (dynamic SQL) closes the backend instead of handing
// it on.
func TestTxSessionStateReject(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1, WithEnv("PGSIDECAR_POOL__SESSION_STATE", "reject"))
	a := txConnect(ctx, t, txProxyURL(p), nil)
	for _, sql := range []string{
		"SELECT pg_advisory_lock(7)", "ext:SELECT pg_try_advisory_lock($1::bigint)",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"CREATE TEMP TABLE tx_rej_t (x int)", "select 1 into temporary tx_rej_t",
		"PREPARE tx_rej_p AS SELECT 1",
	} {
		q := sql
		if strings.Contains(q, "$1") {
			res := a.ExecParams(ctx, strings.TrimPrefix(q, "ext:"), [][]byte{[]byte("7")}, nil, nil, nil).Read()
			checkReject(t, sql, res.Err)
		} else {
			_, err := txRun(ctx, a, q)
			checkReject(t, sql, err)
		}
		if s := txMustOne(ctx, t, a, txStateSQL); s != txNoState {
			t.Errorf("after refused %q: state %s", sql, s)
		}
	}
	// Inside a transaction: aborted, as for any error.
	txMustExec(ctx, t, a, "BEGIN")
	_, err := txRun(ctx, a, "PREPARE tx_rej_p AS SELECT 1")
	checkReject(t, "PREPARE in a transaction", err)
	if _, err := txRun(ctx, a, "SELECT 1"); sqlState(err) != "25P02" {
		t.Errorf("after a refused statement in a transaction: %v, want 25P02", err)
	}
	txMustExec(ctx, t, a, "ROLLBACK")
	// What is allowed stays allowed.
	for _, sql := range []string{
		"SELECT pg_advisory_xact_lock(7)", "BEGIN; CREATE TEMP TABLE tx_ok (x int) ON COMMIT DROP; COMMIT",
		"SELECT 'LISTEN x', 'prepare'", "BEGIN; DECLARE c CURSOR FOR SELECT 1; FETCH c; COMMIT",
		// LISTEN is served by the shared listener, so reject allows it.
		"LISTEN tx_rej", "UNLISTEN tx_rej",
	} {
		txMustExec(ctx, t, a, sql)
	}
	// Dynamic SQL gets past the filter: the backend is closed, not reused.
	pid := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
	txMustExec(ctx, t, a, "DO $$BEGIN EXECUTE 'CREATE TEMP TABLE tx_rej_dyn (x int)'; END$$")
	if s := txMustOne(ctx, t, a, txStateSQL); s != txNoState {
		t.Errorf("after state made by dynamic SQL: next transaction sees %s", s)
	}
	if got := txMustOne(ctx, t, a, "SELECT pg_backend_pid()"); got == pid {
		t.Errorf("backend %s with state kept in the pool", pid)
	}
	if !p.Logs.Contains("despite pool.session_state = reject") {
		t.Errorf("no log line about the closed backend")
	}
}

func checkReject(t *testing.T, sql string, err error) {
	t.Helper()
	pe, ok := err.(*pgconn.PgError)
	if !ok || pe.Code != "0A000" || pe.Hint == "" || !strings.Contains(pe.Message, "session_state") {
		t.Errorf("%q with session_state reject: %v, want 0A000 naming session_state with a hint", sql, err)
		return
	}
	t.Logf("%q: %s (hint: %s)", sql, pe.Message, pe.Hint)
}
