package e2e

// Attacks on what the first session attack (attack_session_e2e_test.go)
// did not reach: channel names through the shared listener, clients that
// go silent mid-COPY or stop reading, pinned clients whose backend dies.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAttackSession2ListenChannelSpelling: in transaction mode the proxy
// reads a client's LISTEN to add the channel to the shared listener, so it
// must name the channel exactly as PostgreSQL does: quoted names as
// written ("Mixed Case", a doubled quote), unquoted names with only ASCII
// letters folded (PostgreSQL leaves other letters alone in a multibyte
// encoding: LISTEN Émile listens on "Émile"), and names longer than 63
// bytes cut to 63 bytes at a character boundary (PostgreSQL's
// truncate_identifier, with a NOTICE). Each spelling is compared with a
// direct listener; a bystander on another channel must keep getting its
// notifications, and the shared listener must not fail. Before the fix
// "Émile" was folded to "émile" (its notifications never came), and a
// 64-byte name whose 63rd byte is inside "é" was cut in the middle of the
// character: the shared listener's LISTEN failed (22021 invalid byte
// sequence) and it reconnected in a tight loop, so no client of the
// database got any notification any more.
func TestAttackSession2ListenChannelSpelling(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	mb := strings.Repeat("e", 62) + "é" // 64 bytes, "é" across the 63rd
	spellings := []string{`"Mixed Case"`, `"a""b"`, strings.Repeat("c", 63), strings.Repeat("D", 64),
		"Émile", `"` + mb + `"`, mb, "ÀB" + strings.Repeat("x", 62)}
	notifier := connect(t, txDirectURL())
	direct := connect(t, txDirectURL())
	proxied := connect(t, txProxyURL(p))
	bystander := connect(t, txProxyURL(p))
	if _, err := bystander.Exec(ctx, "LISTEN bystander"); err != nil {
		t.Fatal(err)
	}
	wait := func(conn *pgx.Conn) string {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			return "none"
		}
		return n.Channel + ": " + n.Payload
	}
	for i, sp := range spellings {
		for _, l := range []*pgx.Conn{direct, proxied} {
			if _, err := l.Exec(ctx, "UNLISTEN *; LISTEN "+sp); err != nil {
				t.Fatalf("LISTEN %s: %v", sp, err)
			}
		}
		if _, err := notifier.Exec(ctx, fmt.Sprintf("NOTIFY %s, 'p%d'; NOTIFY bystander, 'b%d'", sp, i, i)); err != nil {
			t.Fatalf("NOTIFY %s: %v", sp, err)
		}
		want, got := wait(direct), wait(proxied)
		if want == "none" || got != want {
			t.Errorf("LISTEN %s: the proxy's client got %q, a direct one %q", sp, got, want)
		}
		if b := wait(bystander); b != fmt.Sprintf("bystander: b%d", i) {
			t.Errorf("after another client's LISTEN %s, a bystander listening on another channel got %q", sp, b)
		}
	}
	if n := p.Logs.Count("the shared LISTEN connection failed"); n > 0 {
		t.Errorf("the shared listener failed %d times", n)
	}
}

// TestAttackSession2ListenInvalidUTF8: a client's LISTEN of a name that is
// not valid UTF-8 fails for that client with 22021, as directly; it must
// not reach the shared listener, whose connection it would break for the
// whole database. Before the fix the proxy added the channel to the shared
// listener before the statement ran: the listener's LISTEN failed with
// 22021, it reconnected at once, over and over (a thousand times in
// seconds), and a bystander on another channel got nothing.
func TestAttackSession2ListenInvalidUTF8(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	direct := connect(t, txDirectURL())
	bystander := connect(t, txProxyURL(p))
	if _, err := bystander.Exec(ctx, "LISTEN bystander"); err != nil {
		t.Fatal(err)
	}
	hostile := connect(t, txProxyURL(p))
	for _, sp := range []string{"\"\xff\"", "\"bad \xc3\"", "x\xe9"} {
		_, want := direct.Exec(ctx, "LISTEN "+sp)
		_, got := hostile.Exec(ctx, "LISTEN "+sp)
		if sqlState(want) != "22021" || sqlState(got) != sqlState(want) {
			t.Errorf("LISTEN %q: %v through the proxy, %v directly", sp, got, want)
		}
	}
	for i := range 3 {
		if _, err := direct.Exec(ctx, fmt.Sprintf("NOTIFY bystander, 'b%d'", i)); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		n, err := bystander.WaitForNotification(wctx)
		cancel()
		if err != nil || n.Payload != fmt.Sprintf("b%d", i) {
			t.Fatalf("a bystander after another client's LISTEN of invalid UTF-8: %v %v (the shared listener failed %d times)",
				n, err, p.Logs.Count("the shared LISTEN connection failed"))
		}
	}
	if n := p.Logs.Count("the shared LISTEN connection failed"); n > 0 {
		t.Errorf("the shared listener failed %d times", n)
	}
}

// TestAttackSession2StalledClientQueryTimeout: a client that stalls with a
// request in flight - silent in the middle of COPY FROM STDIN after some
// data, or not reading a large result - holds its backend; directly
// PostgreSQL waits for it forever (statement_timeout does not end it:
// the server acts on a cancel only once the client sends data or reads).
// The proxy's pool.query_timeout is what ends it (idle_transaction_timeout
// and client_idle_timeout do not apply to a request in flight): the
// cancel cannot work, so the client is closed and its backend, in an
// unknown state, closed. The diagnosis must name the client, not the
// server: before the fix the client got FATAL 08006 "the database server
// is not responding (stopped, overloaded or cut off by the network)" and
// the log warned "the server did not answer the pool.query_timeout
// cancel", sending an operator after a healthy database. In both modes,
// on a pool of one, the next client is served.
func TestAttackSession2StalledClientQueryTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, d, "DROP TABLE IF EXISTS s2_copy; CREATE TABLE s2_copy (x int)")
	t.Cleanup(func() { txSimple(context.Background(), d, "DROP TABLE IF EXISTS s2_copy") })

	// Directly, with statement_timeout: nothing within 3 s.
	r := dialRaw(t, txDirectURL())
	r.query(t, "SET statement_timeout = '500ms'")
	r.send(t, &pgproto3.Query{String: "COPY s2_copy FROM STDIN"})
	receiveUntil[*pgproto3.CopyInResponse](t, r)
	r.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n")})
	_ = r.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if msg, err := r.fe.Receive(); err == nil {
		t.Logf("direct: %T %+v during a silent COPY (PostgreSQL 15 sends nothing)", msg, msg)
	}

	stalls := []struct {
		name, want string
		stall      func(t *testing.T, r *rawClient)
	}{
		{"silent mid COPY FROM STDIN", "sent no COPY data", func(t *testing.T, r *rawClient) {
			r.send(t, &pgproto3.Query{String: "COPY s2_copy FROM STDIN"})
			receiveUntil[*pgproto3.CopyInResponse](t, r)
			r.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n")})
		}},
		{"not reading a large result", "did not read", func(t *testing.T, r *rawClient) {
			r.send(t, &pgproto3.Query{String: "SELECT i, repeat('x', 1000) FROM generate_series(1, 200000) i"})
		}},
	}
	// The four cases wait out query_timeout and serverOpTimeout (about 7 s
	// each) side by side; the group returns when all have ended, before
	// this function's ctx is cancelled.
	t.Run("stalls", func(t *testing.T) {
		for _, mode := range []string{"transaction", "session"} {
			for _, st := range stalls {
				t.Run(mode+"/"+st.name, func(t *testing.T) {
					t.Parallel() // each has its own proxy; the four waits overlap
					p := txStartProxy(t, mode, 1, WithEnv("PGSIDECAR_POOL__QUERY_TIMEOUT", limit.String()),
						WithEnv("PGSIDECAR_POOL__IDLE_TRANSACTION_TIMEOUT", "500ms"), WithEnv("PGSIDECAR_POOL__CLIENT_IDLE_TIMEOUT", "500ms"),
						WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))
					r := dialRaw(t, txProxyURL(p))
					st.stall(t, r)
					next := txConnect(ctx, t, txProxyURL(p), nil)
					if _, err := txOne(ctx, next, "SELECT 1"); err != nil {
						t.Fatalf("the next client on the pool of one: %v", err)
					}
					// Not reading: the cancel may still work (the server had not
					// yet blocked writing): then the client gets its 57014 and
					// nobody is closed, which is right too.
					cancelWorked := st.name == "not reading a large result" &&
						!p.Logs.ContainsWithin("closed", 8*time.Second)
					if !cancelWorked && !p.Logs.ContainsWithin(st.want, 5*time.Second) {
						t.Errorf("the log does not say the client %s:\n%s", st.want, p.Logs.String())
					}
					if p.Logs.Contains("did not answer") || p.Logs.Contains("not responding") {
						t.Errorf("the log blames the server for the client's stall:\n%s", p.Logs.String())
					}
					if st.name == "silent mid COPY FROM STDIN" {
						e := receiveFatal(t, r, "57014", 5*time.Second)
						if !strings.Contains(e.Message, "query_timeout") || !strings.Contains(e.Message, st.want) || e.Hint == "" {
							t.Errorf("the silent client got %q (hint %q)", e.Message, e.Hint)
						}
					}
				})
			}
		}
	})
}

// TestAttackSession2NotifyPayloadLimit: a NOTIFY through the proxy with a
// payload at PostgreSQL's limit (7999 bytes) reaches a listener through
// the shared listener whole, and one of 8000 bytes fails for the sender
// as directly (22023 "payload string too long"), inside a transaction
// too, which is then aborted, as directly. A guard, not a bug found: no test
// sent a payload at the limit through the shared listener.
func TestAttackSession2NotifyPayloadLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	listener := connect(t, txProxyURL(p))
	if _, err := listener.Exec(ctx, `LISTEN "Big Payload"`); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{txDirectURL(), txProxyURL(p)} {
		sender := connect(t, url)
		big := strings.Repeat("é", 3999) + "x" // 7999 bytes
		if _, err := sender.Exec(ctx, `SELECT pg_notify('Big Payload', $1)`, big); err != nil {
			t.Fatalf("7999-byte payload: %v", err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		wcancel()
		if err != nil || n.Payload != big {
			t.Errorf("the 7999-byte payload arrived as %d bytes (%v)", len(n.Payload), err)
		}
		_, err = sender.Exec(ctx, `SELECT pg_notify('Big Payload', $1)`, big+"y")
		if sqlState(err) != "22023" {
			t.Errorf("an 8000-byte payload: %v, want 22023", err)
		}
		_, err = sender.Exec(ctx, `BEGIN; NOTIFY "Big Payload", '`+big+`y'; COMMIT`)
		if sqlState(err) != "22023" {
			t.Errorf("an 8000-byte payload in a transaction: %v, want 22023", err)
		}
		// The failed NOTIFY aborts the transaction, COMMIT unread (as directly).
		if st := sender.PgConn().TxStatus(); st != 'E' {
			t.Errorf("after the failed NOTIFY in a transaction: status %c, want E", st)
		}
		if _, err := sender.Exec(ctx, "ROLLBACK"); err != nil || sender.PgConn().TxStatus() != 'I' {
			t.Errorf("ROLLBACK: %v", err)
		}
	}
}

// TestAttackSession2ListenChurn: a client that LISTENs and UNLISTENs over
// and over (an application that listens per request while it waits for a
// job) costs the server nothing more than directly, where LISTEN and
// UNLISTEN are cheap statements of the client's own session. Before the
// fix the shared listener connection was closed as soon as no client
// listened and opened again at the next LISTEN: every LISTEN / UNLISTEN *
// pair of one client made a new server connection (a process fork and an
// authentication; 200 pairs, 200 connections), and each LISTEN waited for
// that connection. The server's own count of sessions
// (pg_stat_database.sessions) is the witness.
func TestAttackSession2ListenChurn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	sessions := func() int {
		txMustExec(ctx, t, admin, "SELECT pg_stat_clear_snapshot()")
		n, _ := strconv.Atoi(txMustOne(ctx, t, admin, "SELECT sessions FROM pg_stat_database WHERE datname = 'app'"))
		return n
	}
	c := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, c, "SELECT 1") // the pool's backends are open
	before := sessions()
	const cycles = 100
	start := time.Now()
	i := 0
	for ; i < cycles && time.Since(start) < 30*time.Second; i++ {
		txMustExec(ctx, t, c, "LISTEN churn")
		txMustExec(ctx, t, c, "UNLISTEN *")
	}
	// The pool of 2 may open its second backend, and the listener one.
	if opened := sessions() - before; opened > 3 {
		t.Errorf("%d LISTEN / UNLISTEN * pairs of one client opened %d server connections", i, opened)
	}
}

// TestAttackSession2PinnedBackendTerminated: a transaction-mode client
// pinned by session state (a session advisory lock, a temp table) whose
// backend is terminated gets the server's FATAL 57P01 and the close, as a
// direct client does at its next statement, and is not left pinned to
// nothing: /stats clients_pinned goes back to 0. The log must not say the
// dead backend is cleaned (before the fix: "pinned client left; its server
// connection is cleaned", for a connection that was gone). A pinned client
// cut by idle_transaction_timeout (25P03) or client_idle_timeout (57P05)
// leaves its lock released and the pin count at 0 (guards).
func TestAttackSession2PinnedBackendTerminated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_POOL__IDLE_TRANSACTION_TIMEOUT", "1s"),
		WithEnv("PGSIDECAR_POOL__CLIENT_IDLE_TIMEOUT", "2s"))
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	pinned := func() int { n, _ := txPinned(t, p); return n }
	for _, state := range []string{"SELECT pg_advisory_lock(4242)", "CREATE TEMP TABLE s2_pin (x int)"} {
		for _, url := range []string{txDirectURL(), txProxyURL(p)} {
			c := txConnect(ctx, t, url, nil)
			pid := txMustOne(ctx, t, c, state+"; SELECT pg_backend_pid()")
			if url != txDirectURL() {
				waitFor(t, 5*time.Second, "the client pinned", func() bool { return pinned() == 1 })
			}
			txMustExec(ctx, t, admin, "SELECT pg_terminate_backend("+pid+", 5000)")
			_, err := txOne(ctx, c, "SELECT 1")
			if sqlState(err) != "57P01" || !c.IsClosed() {
				t.Errorf("%s, backend terminated: %v (closed %v), want FATAL 57P01 and the close", state, err, c.IsClosed())
			}
		}
		waitFor(t, 5*time.Second, "clients_pinned back to 0", func() bool { return pinned() == 0 })
	}
	if p.Logs.Contains("connection is cleaned") {
		t.Errorf("the log says a terminated backend is cleaned:\n%s", p.Logs.String())
	}

	// Pinned, then cut by each client timeout: the lock is released.
	for _, tc := range []struct{ after, code string }{{"BEGIN", "25P03"}, {"SELECT 1", "57P05"}} {
		c := txConnect(ctx, t, txProxyURL(p), nil)
		txMustExec(ctx, t, c, "SELECT pg_advisory_lock(4243); "+tc.after)
		time.Sleep(3 * time.Second)
		if _, err := txOne(ctx, c, "SELECT 1"); sqlState(err) != tc.code {
			t.Errorf("pinned, idle after %s: %v, want %s", tc.after, err, tc.code)
		}
		waitFor(t, 5*time.Second, "clients_pinned back to 0", func() bool { return pinned() == 0 })
		other := txConnect(ctx, t, txProxyURL(p), nil)
		if v := txMustOne(ctx, t, other, "SELECT pg_try_advisory_lock(4243)::text || pg_advisory_unlock(4243)::text"); v != "truetrue" {
			t.Errorf("lock 4243 after the pinned client was cut (%s): %s", tc.code, v)
		}
	}
}
