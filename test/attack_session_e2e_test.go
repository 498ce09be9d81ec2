package e2e

// Attacks on session mode and on the asynchronous, long-lived parts of
// transaction mode (LISTEN/NOTIFY, COPY, pins, cancel keys): a client that
// leaves in the middle of something, or misbehaves, must cost only its own
// work, and never hand state, a key or a notification to the next client
// of its backend. Each result is compared with a direct connection where
// PostgreSQL has the behaviour.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAttackSessionStaleCancelKey: the cancel key a session-mode client was
// given must die with its session, as PostgreSQL's does. Directly, a new
// session has a new key, so a cancel with the key of a session that ended
// (a late cancel of a client that just left, or a former client of the
// pool that kept the key) reaches nobody. Through the proxy the next client
// of the same backend must not be cancelled by it either.
func TestAttackSessionStaleCancelKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "session", 1)
	direct := pg.URL(txAppUser, txAppPassword, txAppDB)
	for _, target := range []struct{ name, url, addr string }{
		{"direct", direct, pg.Addr()},
		{"proxy", txProxyURL(p), p.Addr},
	} {
		a := txConnect(ctx, t, target.url, nil)
		aPID, aKey := a.PID(), append([]byte(nil), a.SecretKey()...)
		aBackend := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
		txClosePgconn(a)

		b := txConnect(ctx, t, target.url, nil)
		bBackend := txMustOne(ctx, t, b, "SELECT pg_backend_pid()")
		if target.name == "proxy" && bBackend != aBackend {
			t.Fatalf("proxy: the second client got backend %s, not %s of the first (pool of 1)", bBackend, aBackend)
		}
		res := make(chan error, 1)
		go func() { // ends with the query: 1.5 s, or cancelled
			_, err := b.Exec(ctx, "SELECT pg_sleep(1.5)").ReadAll()
			res <- err
		}()
		time.Sleep(300 * time.Millisecond)
		sendRawCancel(t, target.addr, aPID, aKey)
		if err := <-res; err != nil {
			t.Errorf("%s: a cancel with the key of a client that left cancelled the next client's query: %v", target.name, err)
		}
		// The next client's own key still works.
		go func() {
			_, err := b.Exec(ctx, "SELECT pg_sleep(10)").ReadAll()
			res <- err
		}()
		time.Sleep(300 * time.Millisecond)
		if err := b.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-res; sqlState(err) != "57014" {
			t.Errorf("%s: the client's own cancel: %v, want 57014", target.name, err)
		}
		txClosePgconn(b)
	}
}

// asSessionView is what a client sees of the session state a former
// client of its backend could have left: its identity, LISTENs, advisory
// locks, temp relations, SQL prepared statements, cursors, changed
// settings, a custom option's value (PostgreSQL keeps a custom option
// defined once set, reading the empty string where a fresh session reads
// NULL: both count as "none" here).
const asSessionView = `SELECT concat_ws(' ',
  'user=' || current_user, 'session_user=' || session_user,
  'listen=' || (SELECT count(*) FROM pg_listening_channels()),
  'advisory=' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
  'temp=' || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
  'prepared=' || (SELECT count(*) FROM pg_prepared_statements),
  'cursors=' || (SELECT count(*) FROM pg_cursors),
  'work_mem=' || current_setting('work_mem'),
  'search_path=' || current_setting('search_path'),
  'app.attack=' || coalesce(nullif(current_setting('app.attack', true), ''), 'none'),
  'ro=' || current_setting('default_transaction_read_only'))`

// asLeaveWithState gives conn every kind of session state a client can
// hold, the role last.
func asLeaveWithState(ctx context.Context, t *testing.T, conn *pgconn.PgConn) {
	t.Helper()
	txMustExec(ctx, t, conn, `LISTEN "Sess Chan"`)
	txMustExec(ctx, t, conn, "CREATE TEMP TABLE as_tmp (x int)")
	txMustExec(ctx, t, conn, "SELECT pg_advisory_lock(777001)")
	txMustExec(ctx, t, conn, "PREPARE as_sqlprep AS SELECT 1")
	txMustExec(ctx, t, conn, "BEGIN; DECLARE as_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT")
	txMustExec(ctx, t, conn, "SET work_mem = '7MB'; SET search_path = pg_catalog; SET app.attack = 'left behind'")
	txMustExec(ctx, t, conn, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
	if _, err := conn.Prepare(ctx, "as_stmt", "SELECT 41", nil); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	txMustExec(ctx, t, conn, "SET ROLE as_role")
}

// TestAttackSessionLeaveLeaksNothing: a session-mode client holding every
// kind of session state (LISTEN, a temp table, an advisory lock, SQL and
// protocol prepared statements, a WITH HOLD cursor, changed settings, SET
// ROLE) leaves in each way a client can - Terminate, a reset socket while
// idle, inside a transaction, inside a failed one, in the middle of COPY
// FROM STDIN, in the middle of a large result - while NOTIFYs keep coming
// on its channel. The next client of the pool of one sees what a fresh
// direct session sees, receives no notification of the channel it never
// listened on, and can prepare the same names again. A guard, not a bug
// found: with pool.reset_query = 'SELECT 1' every subtest fails.
func TestAttackSessionLeaveLeaksNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	txMustExec(ctx, t, admin, `DO $$BEGIN CREATE ROLE as_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$`)
	txMustExec(ctx, t, admin, "GRANT as_role TO app")
	fresh := txConnect(ctx, t, txDirectURL(), nil)
	want := txMustOne(ctx, t, fresh, asSessionView)

	p := txStartProxy(t, "session", 1)
	// The notifier needs a backend of its own, outside the pool of one:
	// NOTIFY straight to the cluster reaches the same listeners.
	direct := txConnect(ctx, t, txDirectURL(), nil)

	leaves := []struct {
		name  string
		leave func(t *testing.T, r *rawClient)
	}{
		{"terminate", func(t *testing.T, r *rawClient) {
			r.send(t, &pgproto3.Terminate{})
			r.conn.Close()
		}},
		{"vanish idle", func(t *testing.T, r *rawClient) { r.vanish(t) }},
		{"vanish in transaction", func(t *testing.T, r *rawClient) {
			r.query(t, "BEGIN READ WRITE; CREATE TEMP TABLE as_tmp2 (y int); SELECT pg_advisory_xact_lock(777002)")
			r.vanish(t)
		}},
		{"vanish in failed transaction", func(t *testing.T, r *rawClient) {
			r.send(t, &pgproto3.Query{String: "BEGIN; SELECT 1/0"})
			for {
				if m, ok := r.receive(t).(*pgproto3.ReadyForQuery); ok {
					if m.TxStatus != 'E' {
						t.Fatalf("status %c after the error, want E", m.TxStatus)
					}
					break
				}
			}
			r.vanish(t)
		}},
		{"vanish mid COPY FROM STDIN", func(t *testing.T, r *rawClient) {
			r.query(t, "RESET ROLE; SET default_transaction_read_only = off")
			r.send(t, &pgproto3.Query{String: "COPY as_tmp FROM STDIN"})
			receiveUntil[*pgproto3.CopyInResponse](t, r)
			r.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n")})
			r.vanish(t)
		}},
		{"vanish mid large result", func(t *testing.T, r *rawClient) {
			r.send(t, &pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"})
			receiveUntil[*pgproto3.DataRow](t, r)
			r.vanish(t)
		}},
	}
	for _, l := range leaves {
		t.Run(l.name, func(t *testing.T) {
			r := dialRaw(t, txProxyURL(p))
			asLeaveWithState(ctx, t, r.pc)
			if err := r.pc.SyncConn(ctx); err != nil {
				t.Fatal(err)
			}
			// Notifications on the channel keep coming while it leaves.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var stopOnce sync.Once
			halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
			defer halt()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 400; i++ { // bounded: 400 notifications, or until halted
					select {
					case <-stop:
						return
					default:
					}
					if _, err := direct.Exec(ctx, fmt.Sprintf(`NOTIFY "Sess Chan", 'n%d'`, i)).ReadAll(); err != nil {
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
			l.leave(t, r)

			var mu sync.Mutex
			var got []string
			next := txConnectConfig(ctx, t, txProxyURL(p), func(cfg *pgconn.Config) {
				cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
					mu.Lock()
					got = append(got, n.Channel+": "+n.Payload)
					mu.Unlock()
				}
			})
			if view := txMustOne(ctx, t, next, asSessionView); view != want {
				t.Errorf("the next client sees\n  %s\nwhere a fresh direct session sees\n  %s", view, want)
			}
			for i := 0; i < 20; i++ {
				txMustOne(ctx, t, next, "SELECT 1")
				time.Sleep(10 * time.Millisecond)
			}
			halt()
			txMustOne(ctx, t, next, "SELECT 1")
			mu.Lock()
			if len(got) > 0 {
				t.Errorf("the next client received %d notification(s) of a channel it never listened on: %q", len(got), got[:min(3, len(got))])
			}
			mu.Unlock()
			if _, err := next.Prepare(ctx, "as_stmt", "SELECT 42", nil); err != nil {
				t.Errorf("the next client's Prepare of as_stmt: %v", err)
			}
			txMustExec(ctx, t, next, "PREPARE as_sqlprep AS SELECT 2; DEALLOCATE as_sqlprep")
			if v := txMustOne(ctx, t, next, "SELECT pg_try_advisory_lock(777001)::text || pg_advisory_unlock(777001)::text"); v != "truetrue" {
				t.Errorf("advisory lock 777001 after the client left: %s", v)
			}
			txClosePgconn(next)
		})
	}
}

// TestAttackNotifyFloodNonReader: in transaction mode a LISTENing client
// that stops reading its socket while 100000 notifications of 2000 bytes
// (200 MB) arrive on its channel costs the proxy a bounded amount of
// memory (the README: at most 10000 undelivered notifications are queued
// per client, more are dropped and logged), the proxy keeps serving
// others, and the drop is logged once. When the client reads again it gets
// notifications in the order sent, then can run a query.
func TestAttackNotifyFloodNonReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	slow := dialRaw(t, txProxyURL(p))
	slow.query(t, `LISTEN "flood chan"`)
	other := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, other, "SELECT 1")
	base, err := readMem(p)
	if err != nil {
		t.Fatal(err)
	}
	stop := memSampler(t, p)
	notifier := txConnect(ctx, t, txDirectURL(), nil)
	const batches, perBatch, size = 100, 1000, 2000
	start := time.Now()
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; i < batches && time.Now().Before(deadline); i++ {
		txMustExec(ctx, t, notifier, fmt.Sprintf(
			`SELECT pg_notify('flood chan', lpad((%d * %d + g)::text, %d, '0')) FROM generate_series(1, %d) g`,
			i, perBatch, size, perBatch))
		if i%20 == 0 {
			txMustOne(ctx, t, other, "SELECT 1") // the proxy serves others meanwhile
		}
	}
	t.Logf("notified in %v", time.Since(start))
	// Let the shared listener read the last of them (the drop's log line
	// says it is there; a proxy that never drops is judged by its memory).
	_ = p.Logs.ContainsWithin("client does not read its notifications", 20*time.Second)
	time.Sleep(time.Second)
	peak := stop()
	t.Logf("memory before %v, peak %v", base, peak)
	if grew := peak.rss - base.rss; grew > memLimit(100<<20) {
		t.Errorf("RSS grew by %d MB for a client that does not read 200 MB of notifications; want it bounded by the 10000 queued (20 MB of payload, and as much being written)", grew>>20)
	}
	if n := p.Logs.Count("client does not read its notifications"); n != 1 {
		t.Errorf("the drop was logged %d times, want once", n)
	}
	txMustOne(ctx, t, other, "SELECT 1")

	// The client reads again: notifications in order, then its query.
	_ = slow.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	slow.send(t, &pgproto3.Query{String: "SELECT 'after the flood'"})
	last, got := -1, 0
	for {
		msg := slow.receive(t)
		if n, ok := msg.(*pgproto3.NotificationResponse); ok {
			v := 0
			fmt.Sscan(strings.TrimLeft(n.Payload, "0"), &v)
			if v <= last {
				t.Fatalf("notification %d after %d: out of order", v, last)
			}
			last = v
			got++
			continue
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("after the flood: %s %s", e.Code, e.Message)
		}
	}
	t.Logf("read at %v", time.Since(start))
	t.Logf("the slow client got %d notifications, the last %d", got, last)
	if got == 0 || got > batches*perBatch {
		t.Errorf("the slow client got %d notifications", got)
	}
}

// asCopyCount is a step reading the table the COPY scripts fill.
var asCopyCount = apStep{msgs: []pgproto3.FrontendMessage{apQuery("SELECT count(*), coalesce(sum(x), 0) FROM as_copy")}}

func asCopyData(s string) *pgproto3.CopyData { return &pgproto3.CopyData{Data: []byte(s)} }

// TestAttackSessionCopyDiff: COPY FROM STDIN misused by the client,
// compared with PostgreSQL through the differential harness (a plain and a
// TLS client, another client interleaving, clean backends afterwards): a
// Query in the middle of the copy data (PostgreSQL answers ERROR 08P01,
// then FATAL "protocol synchronization was lost" and closes: so must the
// proxy), CopyFail (alone, and inside a
// transaction), copy messages outside any COPY (PostgreSQL ignores them),
// a Sync pipelined behind an extended-protocol COPY's Execute (PostgreSQL
// ignores Sync during copy-in), a COPY followed by another statement in
// one Query, and COPY TO STDOUT with a Query pipelined behind it.
func TestAttackSessionCopyDiff(t *testing.T) {
	const setup = "DROP TABLE IF EXISTS as_copy; CREATE TABLE as_copy (x int)"
	apCheck(t,
		apScript{name: "Query in the middle of COPY FROM STDIN", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apQuery("COPY as_copy FROM STDIN"), asCopyData("1\n2\n"),
				apQuery("SELECT 'mid copy'"), asCopyData("3\n"), &pgproto3.CopyDone{},
				apQuery("SELECT 'after'")}, ready: 2},
			asCopyCount,
		}},
		apScript{name: "CopyFail", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apQuery("COPY as_copy FROM STDIN"), asCopyData("1\n2\n"),
				&pgproto3.CopyFail{Message: "the client gave up"}}},
			asCopyCount,
		}},
		apScript{name: "CopyFail inside a transaction", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apQuery("BEGIN; INSERT INTO as_copy VALUES (100)")}},
			{msgs: []pgproto3.FrontendMessage{apQuery("COPY as_copy FROM STDIN"), asCopyData("1\n"),
				&pgproto3.CopyFail{Message: "the client gave up"}}},
			{msgs: []pgproto3.FrontendMessage{apQuery("SELECT 1")}},
			{msgs: []pgproto3.FrontendMessage{apQuery("ROLLBACK")}},
			asCopyCount,
		}},
		apScript{name: "copy messages outside a COPY", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{asCopyData("7\n"), &pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "x"},
				apQuery("SELECT 'after stray copy messages'")}},
			asCopyCount,
		}},
		apScript{name: "extended COPY with Sync pipelined behind Execute", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apParse("", "COPY as_copy FROM STDIN"), apBind("", ""), apExec("", 0), apSync, apFlush,
				asCopyData("5\n6\n"), apSync, &pgproto3.CopyDone{}, apSync}, ready: 1},
			asCopyCount,
			{msgs: []pgproto3.FrontendMessage{apParse("", "SELECT 'extended after the COPY'"), apBind("", ""), apExec("", 0), apSync}},
			{msgs: []pgproto3.FrontendMessage{apParse("", "COPY as_copy FROM STDIN"), apBind("", ""), apExec("", 0), apFlush,
				asCopyData("8\n"), &pgproto3.CopyFail{Message: "extended gave up"}, apSync}},
			asCopyCount,
		}},
		apScript{name: "COPY and a statement in one Query", setup: setup, steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apQuery("COPY as_copy FROM STDIN; SELECT 'after copy'"), asCopyData("9\n"),
				&pgproto3.CopyDone{}}},
			asCopyCount,
		}},
		apScript{name: "COPY TO STDOUT with a Query behind it", setup: setup + "; INSERT INTO as_copy SELECT generate_series(1, 5)", steps: []apStep{
			{msgs: []pgproto3.FrontendMessage{apQuery("COPY as_copy TO STDOUT"), apQuery("SELECT 'behind'")}},
			asCopyCount,
		}},
	)
}

// TestAttackSessionCopyFailSplit: an extended COPY FROM STDIN whose Sync
// the client pipelined behind the Execute (PostgreSQL ignores Sync during
// copy-in), ended by a CopyFail that reaches the proxy in two reads: the
// proxy streams such a message on as it comes, and counted the copy's end
// only for one it read whole, so it dropped the final Sync too as one the
// server would ignore, and the ReadyForQuery of that Sync then failed the
// relay ("server reply does not match the requests sent") and the client's
// connection. Compared with a direct connection; the session goes on.
func TestAttackSessionCopyFailSplit(t *testing.T) {
	p := StartProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := txConnect(ctx, t, txDirectURL(), nil)
	defer txClosePgconn(admin)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS as_copysplit; CREATE TABLE as_copysplit (x int)")
	var msgs []byte
	for _, m := range []pgproto3.FrontendMessage{apParse("", "COPY as_copysplit FROM STDIN"), apBind("", ""), apExec("", 0), apSync,
		asCopyData("1\n"), &pgproto3.CopyFail{Message: "the client gave up on this copy"}, apSync} {
		var err error
		if msgs, err = m.Encode(msgs); err != nil {
			t.Fatal(err)
		}
	}
	cut := len(msgs) - 5 - 12 // inside the CopyFail's message text
	run := func(url string) []string {
		c := dialRaw(t, url)
		defer c.conn.Close()
		c.write(t, msgs[:cut])
		time.Sleep(100 * time.Millisecond) // the proxy reads the first part alone
		c.write(t, msgs[cut:])
		out := apRead(c, 1, 0, 0)
		c.send(t, apQuery("SELECT 'after the copy'"))
		return append(out, apRead(c, 1, 0, 0)...)
	}
	want := run(txDirectURL())
	if got := run(txProxyURL(p)); !slices.Equal(got, want) {
		t.Errorf("through the proxy:\n  %q\ndirectly:\n  %q", got, want)
	}
}
