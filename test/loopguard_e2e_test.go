package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Guards for the event-loop relay (issue 8). In transaction mode a client
// between transactions may come to be served by one loop thread that reads
// its request, takes an idle backend, writes, waits for the reply and
// relays it, for many clients at once; whatever could block must leave
// that thread. These tests state, black-box, what must hold whatever runs
// the exchange: one client that stops reading, leaves, is timed out,
// KILLed or loses its backend never stalls or corrupts the others, and the
// shapes of traffic the loop must parse (pipelines, messages split across
// reads, notifications to idle clients) give what a direct connection
// gives. They passed on the goroutine relay and must keep passing. Their
// clients send from idle (parked), so the event loop reads the requests;
// each test checks in /stats that the loop saw some.

// lgReplies reads r's messages until n ReadyForQuery have arrived, the
// connection ends, or within passes, and returns each message as a
// comparable string (a digest for large ones) and what ended the read
// early (nil when all n arrived).
func lgReplies(r *rawClient, n int, within time.Duration) ([]string, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	defer r.conn.SetReadDeadline(time.Time{})
	var out []string
	for ready := 0; ready < n; {
		msg, err := r.fe.Receive()
		if err != nil {
			return out, err
		}
		b, err := msg.Encode(nil)
		if err != nil {
			return out, fmt.Errorf("encode %T: %w", msg, err)
		}
		out = append(out, lgMsgString(b))
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			ready++
		}
	}
	return out, nil
}

// lgMsgString is one encoded message as text: quoted when short, its
// type, length and a hash when long.
func lgMsgString(b []byte) string {
	if len(b) <= 160 {
		return fmt.Sprintf("%q", b)
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%c len=%d sha256=%x", b[0], len(b), sum[:8])
}

// lgCompare fails t when the proxy's replies differ from the direct ones,
// naming the first difference.
func lgCompare(t *testing.T, what string, proxied, direct []string) {
	t.Helper()
	for i := range max(len(proxied), len(direct)) {
		var p, d string
		if i < len(proxied) {
			p = proxied[i]
		}
		if i < len(direct) {
			d = direct[i]
		}
		if p != d {
			t.Errorf("%s: %d messages through the proxy, %d directly; message %d differs: through the proxy %s, directly %s",
				what, len(proxied), len(direct), i, p, d)
			return
		}
	}
}

// lgParkAll waits until n clients are parked, so that their next request
// is read by the event loop. On the goroutine relay a client whose idle
// wait began while its backend was still held (after an explicit
// transaction's COMMIT, or a reply slower than the inline wait) did not
// park until it sent again: nudge makes every client send a quick query,
// at most twice, and the test logs it.
func lgParkAll(t *testing.T, p *Proxy, n int, nudge func()) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if parkedClients(t, p) == n {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		if attempt == 2 {
			t.Fatalf("%d clients parked of %d after %d nudges", parkedClients(t, p), n, attempt)
		}
		t.Logf("%d clients parked of %d after 3 s; nudging them", parkedClients(t, p), n)
		nudge()
	}
}

// lgRawNudge is lgParkAll's nudge for raw clients: a quick query each.
func lgRawNudge(t *testing.T, rs ...*rawClient) func() {
	return func() {
		for _, r := range rs {
			r.query(t, "SELECT 1")
		}
	}
}

// lgPgconnNudge is lgParkAll's nudge for pgconn clients.
func lgPgconnNudge(ctx context.Context, t *testing.T, cs ...*pgconn.PgConn) func() {
	return func() {
		for _, c := range cs {
			txMustOne(ctx, t, c, "SELECT 1")
		}
	}
}

// lgLoopCounts reads /stats: the requests the event loop relayed itself
// and those it handed to a goroutine.
func lgLoopCounts(t *testing.T, p *Proxy) (relayed, handedOff int) {
	t.Helper()
	clients, _ := p.Stats(t)["clients"].(map[string]any)
	r, ok1 := num(clients, "loop_requests")
	h, ok2 := num(clients, "loop_handoffs")
	if !ok1 || !ok2 {
		t.Fatalf("/stats clients has no loop_requests or loop_handoffs: %v", clients)
	}
	return int(r), int(h)
}

// lgLogLoop logs how much of the test's traffic the event loop relayed,
// and fails a test none of whose requests reached it: the guard would
// guard nothing.
func lgLogLoop(t *testing.T, p *Proxy) {
	t.Helper()
	r, h := lgLoopCounts(t, p)
	t.Logf("event loop: %d requests relayed, %d handed to goroutines", r, h)
	if r+h == 0 {
		t.Errorf("the event loop saw none of this test's requests: the guard no longer reaches it")
	}
}

// lgCleanBackends opens n transactions through p at once, so that n
// different backends serve them (a pool of n), and checks that each
// answers exactly its own query from a fresh transaction: a backend handed
// on with a reply or a transaction of a previous client left in it would
// show here.
func lgCleanBackends(ctx context.Context, t *testing.T, p *Proxy, n int) {
	t.Helper()
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		conns[i] = txConnect(ctx, t, txProxyURL(p), nil)
		txMustExec(ctx, t, conns[i], "BEGIN")
	}
	for i, c := range conns {
		res, err := c.Exec(ctx, fmt.Sprintf("SELECT 'clean-%d', txid_current_if_assigned() IS NULL, current_setting('statement_timeout')", i)).ReadAll()
		if err != nil {
			t.Fatalf("backend %d: %v", i, err)
		}
		got := fmt.Sprintf("%d %s %d", len(res), res[0].CommandTag, len(res[0].Rows))
		if got != "1 SELECT 1 1" {
			t.Fatalf("backend %d answered %d results (%v): a reply left over from another client?", i, len(res), got)
		}
		row := res[0].Rows[0]
		if v := fmt.Sprintf("%s %s %s", row[0], row[1], row[2]); v != fmt.Sprintf("clean-%d t 0", i) || c.TxStatus() != 'T' {
			t.Fatalf("backend %d: %q, status %q; want clean-%d t 0 in a new transaction", i, v, c.TxStatus(), i)
		}
	}
	for _, c := range conns {
		txMustExec(ctx, t, c, "COMMIT")
	}
}

// lgCommitRounds has each conn commit transactions from..to at once (an
// INSERT into lg_stuck and a count: every third in one explicit
// transaction, the others as two statements of their own, which the event
// loop relays), each within maxWait, and returns the slowest one's time.
func lgCommitRounds(ctx context.Context, t *testing.T, conns []*pgx.Conn, from, to int, maxWait time.Duration) time.Duration {
	t.Helper()
	errs := newTxErrors()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	for w, conn := range conns {
		wg.Add(1)
		go func() { // ends after its transactions or its first failure (each bounded by maxWait)
			defer wg.Done()
			for n := from; n <= to; n++ {
				start := time.Now()
				tctx, tcancel := context.WithTimeout(ctx, maxWait)
				var count int
				var err error
				if n%3 == 0 {
					err = pgx.BeginFunc(tctx, conn, func(tx pgx.Tx) error {
						if _, err := tx.Exec(tctx, "INSERT INTO lg_stuck VALUES ($1, $2)", w, n); err != nil {
							return err
						}
						return tx.QueryRow(tctx, "SELECT count(*) FROM lg_stuck WHERE client = $1", w).Scan(&count)
					})
				} else if _, err = conn.Exec(tctx, "INSERT INTO lg_stuck VALUES ($1, $2)", w, n); err == nil {
					err = conn.QueryRow(tctx, "SELECT count(*) FROM lg_stuck WHERE client = $1", w).Scan(&count)
				}
				tcancel()
				took := time.Since(start)
				mu.Lock()
				slowest = max(slowest, took)
				mu.Unlock()
				if err != nil {
					errs.add("client %d transaction %d after %v (a timeout means a stuck client stalls the others): %v", w, n, took.Round(time.Millisecond), err)
					return
				}
				if count != n {
					errs.add("client %d transaction %d: count %d", w, n, count)
					return
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "clients committing beside a client that does not read")
	return slowest
}

// TestLoopGuardStuckReaderDoesNotStallOthers: a client asks for about 200
// MB and never reads its socket, so its backend blocks writing (the proxy
// cannot deliver). Meanwhile eight pgx clients (simple and extended
// protocol) commit transactions on the two other backends of a pool of
// three, each transaction within a bounded wait, and the proxy's memory
// does not grow with the unread result; then again after they have been
// idle long enough to park. When the stuck client closes, its
// query stops on the server and no backend is handed on with its reply
// left in it.
func TestLoopGuardStuckReaderDoesNotStallOthers(t *testing.T) {
	// A client that pipelines 20,000 small queries instead and closes
	// without reading is not tested here: on the goroutine relay its
	// session sometimes outlives it (the client reader spins in
	// backpressure once the backend reader, failing to write to the
	// client, has ended), holding its backend.
	const (
		poolSize  = 3
		workers   = 8
		txsEach   = 25
		txMaxWait = 5 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", poolSize)
	t.Cleanup(func() { lgLogLoop(t, p) })
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	direct := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, direct, "DROP TABLE IF EXISTS lg_stuck; CREATE TABLE lg_stuck (client int, n int)")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = txSimple(ctx, direct, "DROP TABLE IF EXISTS lg_stuck")
	})
	before := memNow(t, p)
	stopMem := memSampler(t, p)

	conns := make([]*pgx.Conn, workers)
	for w := range conns {
		mode := pgx.QueryExecModeSimpleProtocol
		if w%2 == 1 {
			mode = pgx.QueryExecModeCacheStatement
		}
		conns[w] = txConnectPgx(ctx, t, txProxyURL(p), mode)
	}
	nudge := func() {
		for _, c := range conns {
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	stuck := dialRaw(t, p.AppURL())
	stuck.query(t, "SELECT 1")
	// Every client sends from idle (parked): the event loop reads it.
	lgParkAll(t, p, workers+1, nudge)
	stuck.send(t, &pgproto3.Query{String: "SELECT repeat('x', 1000000) FROM generate_series(1, 200) /* lg-stuck */"})
	// The stuck client holds a backend (its replies cannot be delivered),
	// and only one.
	var stuckPID []string
	waitFor(t, 10*time.Second, "the stuck client to hold one backend", func() bool {
		rows, err := txSimple(ctx, admin, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%lg-stuck%' AND pid <> pg_backend_pid()")
		stuckPID = rows
		return err == nil && len(rows) == 1 && poolStat(t, p, "active") == 1
	})
	time.Sleep(300 * time.Millisecond)
	if n := poolStat(t, p, "active"); n != 1 {
		t.Fatalf("%d backends active with only the stuck client sending", n)
	}

	var slowest time.Duration
	// Busy clients first, then the same clients after they went idle
	// (parked) beside the stuck one.
	slowest = max(slowest, lgCommitRounds(ctx, t, conns, 1, txsEach, txMaxWait))
	lgParkAll(t, p, workers, nudge)
	slowest = max(slowest, lgCommitRounds(ctx, t, conns, txsEach+1, 2*txsEach, txMaxWait))
	t.Logf("%d clients x %d transactions beside the stuck client; slowest transaction %v", workers, 2*txsEach, slowest.Round(time.Millisecond))
	if got := txMustOne(ctx, t, direct, "SELECT count(*) FROM lg_stuck"); got != fmt.Sprint(2*workers*txsEach) {
		t.Errorf("%s rows committed, want %d", got, 2*workers*txsEach)
	}
	// Still stuck: the others really ran on the remaining backends.
	still, err := txSimple(ctx, admin, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%lg-stuck%' AND pid <> pg_backend_pid()")
	if err != nil || fmt.Sprint(still) != fmt.Sprint(stuckPID) || poolStat(t, p, "active") != 1 {
		t.Fatalf("the stuck client's backend (pid %v) is no longer held (%v %v, %d active): the test proved nothing",
			stuckPID, still, err, poolStat(t, p, "active"))
	}
	peak := stopMem()
	t.Logf("proxy memory before %v, peak %v", before, peak)
	if peak.rss-before.rss > memLimit(64<<20) {
		t.Errorf("proxy RSS grew by %d MB while a client did not read its replies, want < 64 MB", (peak.rss-before.rss)>>20)
	}

	if err := stuck.conn.Close(); err != nil {
		t.Fatal(err)
	}
	waitActive(ctx, t, admin, "lg-stuck", 0, 10*time.Second)
	lgCleanBackends(ctx, t, p, poolSize)
	assertPoolsWithin(t, p.Stats(t), poolSize)
}

// lgLeaveCase is one way a client leaves while its reply is slow.
type lgLeaveCase struct {
	name  string
	sleep string        // pg_sleep's argument
	after time.Duration // how long after sending the client leaves
	half  bool          // shutdown(SHUT_WR) instead of close
}

// TestLoopGuardClientLeavesDuringSlowReply: a client whose request is
// answered slowly leaves while it waits: it closes its socket, before
// and after the proxy's inline wait (100 ms), or half-closes right after
// sending. The query does not keep running on the server, the one
// backend of the pool is never handed on with its reply, and another
// client waiting for that backend meanwhile is served. A half-closing
// client gets, at most, the whole reply a direct connection gives it:
// nothing partial, nothing else.
func TestLoopGuardClientLeavesDuringSlowReply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	t.Cleanup(func() { lgLogLoop(t, p) })
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	other := txConnect(ctx, t, txProxyURL(p), nil)

	// What a direct connection gives a client that half-closes.
	directHalf := func(sleep string) ([]string, error) {
		r := dialRaw(t, txDirectURL())
		r.send(t, &pgproto3.Query{String: "SELECT 'slow', pg_sleep(" + sleep + ")"})
		if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		return lgReplies(r, 1, 10*time.Second)
	}

	cases := []lgLeaveCase{
		{"close before the inline wait ends", "0.3", 30 * time.Millisecond, false},
		{"close after the inline wait", "0.3", 200 * time.Millisecond, false},
		{"close during a long query", "30", 300 * time.Millisecond, false},
		{"half-close after sending", "0.3", 0, true},
		{"half-close during a long query", "30", 300 * time.Millisecond, true},
	}
	// Every client sends from idle (parked): the event loop reads it.
	leavers := make([]*rawClient, len(cases))
	for i := range leavers {
		leavers[i] = dialRaw(t, p.AppURL())
		leavers[i].query(t, "SELECT 1")
	}
	txMustOne(ctx, t, other, "SELECT 1")
	lgParkAll(t, p, len(cases)+1, func() {
		lgRawNudge(t, leavers...)()
		txMustOne(ctx, t, other, "SELECT 1")
	})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			marker := fmt.Sprintf("lg-leave-%d", i)
			sql := "SELECT 'slow', pg_sleep(" + tc.sleep + ") /* " + marker + " */"
			r := leavers[i]
			r.send(t, &pgproto3.Query{String: sql})
			// Another client wants the pool's one backend meanwhile.
			otherDone := txRunAsync(ctx, other, fmt.Sprintf("SELECT 'other-%d'", i))
			time.Sleep(tc.after)
			if tc.half {
				if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				got, err := lgReplies(r, 1, 10*time.Second)
				var want []string
				if tc.sleep == "0.3" {
					want, _ = directHalf(tc.sleep)
				}
				t.Logf("half-closed client got %d messages (%v) through the proxy; directly %d messages", len(got), err, len(want))
				if err == nil {
					// A reply: the whole one, as directly.
					if tc.sleep != "0.3" {
						t.Fatalf("a 30 s query answered %v after the client half-closed: %q", tc.after, got)
					}
					lgCompare(t, "reply to a half-closed client", got, want)
				} else if len(got) > 0 && !strings.HasPrefix(got[len(got)-1], `"E`) {
					// Or the end of the connection, with at most an error.
					t.Errorf("half-closed client got part of a reply and then %v: %q", err, got)
				} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isConnReset(err) {
					t.Errorf("half-closed client: the connection was neither answered nor closed: %v", err)
				}
			} else if err := r.conn.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case res := <-otherDone:
				if res.err != nil {
					t.Fatalf("the other client waiting for the backend: %v", res.err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the other client was not served within 15 s of the first one leaving")
			}
			// A 30 s query must be cancelled, not left running.
			waitActive(ctx, t, admin, marker, 0, 5*time.Second)
			lgCleanBackends(ctx, t, p, 1)
			if v := txMustOne(ctx, t, other, fmt.Sprintf("SELECT 'after-%d'", i)); v != fmt.Sprintf("after-%d", i) {
				t.Fatalf("the other client afterwards: %q", v)
			}
		})
	}
}

// isConnReset reports whether err is a connection reset by the peer.
func isConnReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && strings.Contains(ne.Err.Error(), "reset")
}

// lgFormat is what a client got from a query: each result's command tag
// and rows, and the error (severity, SQLSTATE, message) that ended it.
func lgFormat(results []*pgconn.Result, err error) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "[%s", r.CommandTag)
		for _, row := range r.Rows {
			b.WriteString(" (")
			for i, v := range row {
				if i > 0 {
					b.WriteString(",")
				}
				if v == nil {
					b.WriteString("NULL")
				} else {
					b.Write(v)
				}
			}
			b.WriteString(")")
		}
		if r.Err != nil && r.Err != err {
			b.WriteString(" " + lgError(r.Err))
		}
		b.WriteString("]")
	}
	if err != nil {
		b.WriteString(" " + lgError(err))
	}
	return b.String()
}

// lgError is err's severity, SQLSTATE and message, or its text when it is
// not a server error.
func lgError(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Severity + " " + pe.Code + " " + pe.Message
	}
	return "not a server error: " + err.Error()
}

// lgTermCase is one way a backend is terminated under a running query.
type lgTermCase struct {
	name     string
	begin    bool   // the client is inside BEGIN when the query runs
	sql      string // %s is where the marker comment goes
	extended bool   // ExecParams instead of a simple Query
	// replayable: the request is the first of a transaction, and no reply
	// reached the client before the FATAL: the proxy may run it again on
	// another backend (proxy/replay.go) rather than fail it.
	replayable bool
	want       string // the replayed request's answer (replayable only)
}

// TestLoopGuardTerminateBackendDuringQuery: pg_terminate_backend of the
// backend running a client's query. Inside a transaction, or after part
// of the reply was produced, the client gets exactly what a direct
// connection gets (FATAL 57P01, the same results before it). The first
// request of a transaction, with nothing of its reply produced, may
// instead be replayed on another backend (proxy/replay.go): it then
// answers as if nothing happened. Either way, promptly, and the other
// clients of the pool, connected and new, go on.
func TestLoopGuardTerminateBackendDuringQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	other := txConnect(ctx, t, txProxyURL(p), nil)
	if v := txMustOne(ctx, t, other, "SELECT 'other'"); v != "other" {
		t.Fatal(v)
	}
	cases := []lgTermCase{
		{name: "simple, first request", sql: "SELECT 'slept', pg_sleep(1) %s", replayable: true, want: "[SELECT 1 (slept,)]"},
		{name: "extended, first request", sql: "SELECT 'slept', pg_sleep(1) %s", extended: true, replayable: true, want: "[SELECT 1 (slept,)]"},
		{name: "simple, in a transaction", begin: true, sql: "SELECT 'slept', pg_sleep(10) %s"},
		{name: "extended, in a transaction", begin: true, sql: "SELECT 'slept', pg_sleep(10) %s", extended: true},
		{name: "simple, after a first result", sql: "SELECT 'first'; SELECT 'slept', pg_sleep(10) %s"},
	}
	// Every client sends from idle (parked): the event loop reads it.
	viaProxy := make([]*pgconn.PgConn, len(cases))
	for i := range viaProxy {
		viaProxy[i] = txConnect(ctx, t, txProxyURL(p), nil)
		txMustOne(ctx, t, viaProxy[i], "SELECT 1")
	}
	lgParkAll(t, p, len(cases)+1, lgPgconnNudge(ctx, t, append(viaProxy, other)...))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			type outcome struct {
				text string
				took time.Duration
			}
			run := func(c *pgconn.PgConn, marker string) (<-chan outcome, *pgconn.PgConn) {
				if tc.begin {
					txMustExec(ctx, t, c, "BEGIN")
				}
				sql := fmt.Sprintf(tc.sql, "/* "+marker+" */")
				ch := make(chan outcome, 1)
				go func() { // ends when the query does (bounded by its pg_sleep and ctx)
					start := time.Now()
					var text string
					if tc.extended {
						rr := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
						text = lgFormat([]*pgconn.Result{rr}, rr.Err)
					} else {
						text = lgFormat(c.Exec(ctx, sql).ReadAll())
					}
					ch <- outcome{text, time.Since(start)}
				}()
				return ch, c
			}
			pm, dm := fmt.Sprintf("lg-term-proxy-%d", i), fmt.Sprintf("lg-term-direct-%d", i)
			pres, pc := run(viaProxy[i], pm)
			dres, dc := run(txConnect(ctx, t, txDirectURL(), nil), dm)
			var pids []string
			waitFor(t, 10*time.Second, "both queries to run", func() bool {
				a, b := activePIDs(ctx, t, admin, pm), activePIDs(ctx, t, admin, dm)
				pids = append(a, b...)
				return len(a) == 1 && len(b) == 1
			})
			terminate(ctx, t, admin, pids)
			var got [2]outcome
			for j, ch := range []<-chan outcome{pres, dres} {
				select {
				case got[j] = <-ch:
				case <-time.After(8 * time.Second):
					t.Fatalf("no answer 8 s after the terminate (%s)", []string{"proxy", "direct"}[j])
				}
			}
			t.Logf("after pg_terminate_backend: through the proxy %q (closed %v) after %v; directly %q (closed %v)",
				got[0].text, pc.IsClosed(), got[0].took.Round(time.Millisecond), got[1].text, dc.IsClosed())
			if !strings.Contains(got[1].text, "FATAL 57P01") {
				t.Fatalf("directly: %q; the test expects FATAL 57P01", got[1].text)
			}
			switch {
			case got[0].text == got[1].text:
				if pc.IsClosed() != dc.IsClosed() {
					t.Errorf("connection closed after the error: through the proxy %v, directly %v", pc.IsClosed(), dc.IsClosed())
				}
			case tc.replayable && got[0].text == tc.want:
				t.Logf("the request was replayed on another backend")
				if v := txMustOne(ctx, t, pc, "SELECT 'same client'"); v != "same client" {
					t.Errorf("the replayed client's next query: %q", v)
				}
			default:
				t.Errorf("through the proxy the client got %q; directly %q", got[0].text, got[1].text)
			}
			waitActive(ctx, t, admin, pm, 0, 5*time.Second)
			if v := txMustOne(ctx, t, other, "SELECT 'other-after'"); v != "other-after" {
				t.Fatalf("the other client: %q", v)
			}
			lgCleanBackends(ctx, t, p, 2)
		})
	}
}

// lgPipeline is the statements TestLoopGuardPipelinedSimpleQueries sends
// in one write: results of several sizes, errors inside and outside a
// transaction, a multi-statement query and an empty one.
var lgPipeline = []string{
	"SELECT 1",
	"SELECT g, repeat('p', g) FROM generate_series(1, 300) g",
	"SELECT 1/0",
	"BEGIN",
	"SELECT 'in a transaction'",
	"COMMIT",
	"SELECT 'a'; SELECT 'b', 2; VALUES (1, 'c')",
	"SELECT repeat('z', 200000)",
	"BEGIN",
	"SELECT 1/0",
	"SELECT 'aborted'",
	"ROLLBACK",
	"",
	"SELECT current_setting('statement_timeout'), 'last'",
}

// TestLoopGuardPipelinedSimpleQueries: a client writes many simple
// Queries in one write and reads every reply only afterwards; through
// transaction mode (the queries span several transactions, each may run
// on another backend of the pool) it gets the same messages, byte for
// byte, as directly.
func TestLoopGuardPipelinedSimpleQueries(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	// The client sends from idle (parked): the event loop reads it.
	pr := dialRaw(t, txProxyURL(p))
	pr.query(t, "SELECT 1")
	lgParkAll(t, p, 1, lgRawNudge(t, pr))
	// Another client keeps the pool busy so the transactions move.
	busyCtx, stopBusy := context.WithCancel(context.Background())
	busy := txConnect(busyCtx, t, txProxyURL(p), nil)
	busyDone := make(chan struct{})
	go func() { // ends when stopBusy is called (at most 2000 queries)
		defer close(busyDone)
		for i := 0; i < 2000 && busyCtx.Err() == nil; i++ {
			_, _ = txSimple(busyCtx, busy, "SELECT 1")
		}
	}()
	defer func() { stopBusy(); <-busyDone }()

	var msgs []pgproto3.FrontendMessage
	for range 3 {
		for _, q := range lgPipeline {
			msgs = append(msgs, &pgproto3.Query{String: q})
		}
	}
	batch := encodeMsgs(t, msgs...)
	run := func(r *rawClient) []string {
		r.write(t, batch)
		time.Sleep(200 * time.Millisecond) // the replies pile up unread
		got, err := lgReplies(r, len(msgs), 20*time.Second)
		if err != nil {
			t.Fatalf("after %d messages: %v", len(got), err)
		}
		return got
	}
	direct := run(dialRaw(t, txDirectURL()))
	proxied := run(pr)
	lgCompare(t, fmt.Sprintf("%d pipelined simple queries", len(msgs)), proxied, direct)
}

// TestLoopGuardSplitMessages: a request whose bytes arrive in two TCP
// writes with a pause between (the proxy reads a partial message, the
// header cut or the body cut, after a complete one or alone, and for a
// pause long enough that an idle client would park) is answered as
// directly, byte for byte, in the simple and the extended protocol.
func TestLoopGuardSplitMessages(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	q1 := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'first', 1"})
	q2 := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'second', g FROM generate_series(1, 3) g"})
	ext := encodeMsgs(t,
		&pgproto3.Parse{Query: "SELECT $1::int * 2, 'extended'"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("21")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	type split struct {
		name  string
		data  []byte
		cut   int // the first write's length
		pause time.Duration
		ready int // ReadyForQuery expected
	}
	both := append(append([]byte{}, q1...), q2...)
	cases := []split{
		{"second query's type byte only", both, len(q1) + 1, 150 * time.Millisecond, 2},
		{"second query's header cut", both, len(q1) + 3, 150 * time.Millisecond, 2},
		{"second query's body cut", both, len(q1) + 12, 150 * time.Millisecond, 2},
		{"a lone query's body cut", q2, 9, 150 * time.Millisecond, 1},
		{"a lone query's header cut, long pause", q2, 2, 1200 * time.Millisecond, 1},
		{"extended: inside Execute", ext, len(ext) - 10, 150 * time.Millisecond, 1},
		{"extended: before Sync, long pause", ext, len(ext) - 5, 1200 * time.Millisecond, 1},
		{"extended: inside Parse", ext, 7, 150 * time.Millisecond, 1},
	}
	// Every client sends from idle (parked): the event loop reads it.
	splitters := make([]*rawClient, len(cases))
	for i := range splitters {
		splitters[i] = dialRaw(t, txProxyURL(p))
		splitters[i].query(t, "SELECT 1")
	}
	lgParkAll(t, p, len(cases), lgRawNudge(t, splitters...))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The proxy and the direct connection side by side: each
			// pause is waited once.
			run := func(r *rawClient) ([]string, error) {
				if _, err := r.conn.Write(tc.data[:tc.cut]); err != nil {
					return nil, err
				}
				time.Sleep(tc.pause)
				if _, err := r.conn.Write(tc.data[tc.cut:]); err != nil {
					return nil, err
				}
				got, err := lgReplies(r, tc.ready, 10*time.Second)
				if err != nil {
					return got, fmt.Errorf("after %d messages %q: %w", len(got), got, err)
				}
				// The connection goes on.
				if _, err := r.conn.Write(encodeMsgs(t, &pgproto3.Query{String: "SELECT 'after'"})); err != nil {
					return got, err
				}
				more, err := lgReplies(r, 1, 10*time.Second)
				if err != nil {
					return got, fmt.Errorf("the query after: %w", err)
				}
				return append(got, more...), nil
			}
			pr, dr := splitters[i], dialRaw(t, txDirectURL())
			var direct []string
			var derr error
			done := make(chan struct{})
			go func() { // ends when run does (bounded by its read deadlines)
				defer close(done)
				direct, derr = run(dr)
			}()
			proxied, perr := run(pr)
			<-done
			if derr != nil {
				t.Fatalf("directly: %v", derr)
			}
			if perr != nil {
				t.Fatalf("through the proxy: %v", perr)
			}
			lgCompare(t, tc.name, proxied, direct)
		})
	}
}

// TestLoopGuardQueryTimeoutAmongIdleClients: pool.query_timeout fires for
// clients whose query waits on the backend while most other clients sit
// idle between transactions (parked): the slow ones get 57014 naming
// query_timeout, as statement_timeout gives it directly, within the
// timeout's bounds, in the simple and the extended protocol; idle clients
// that wake meanwhile wait for the pool's two backends (both held) and
// are served, and every client works afterwards.
func TestLoopGuardQueryTimeoutAmongIdleClients(t *testing.T) {
	const (
		limit = time.Second
		idle  = 12
		woken = 6 // of the idle clients, those that send while both backends are held
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	direct := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, direct, "SET statement_timeout = '1s'")
	_, err := direct.Exec(ctx, "SELECT pg_sleep(5)").ReadAll()
	wantCode := sqlState(err)
	if wantCode != "57014" {
		t.Fatalf("direct statement_timeout: %v", err)
	}

	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_POOL__QUERY_TIMEOUT", limit.String()))
	t.Cleanup(func() { lgLogLoop(t, p) })
	idlers := make([]*pgconn.PgConn, idle)
	for i := range idlers {
		idlers[i] = txConnect(ctx, t, txProxyURL(p), nil)
		txMustOne(ctx, t, idlers[i], "SELECT 1")
	}
	slowSimple := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, slowSimple, "SELECT 1")
	slowExt := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
	if _, err := slowExt.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	lgParkAll(t, p, idle+2, func() {
		for _, c := range append([]*pgconn.PgConn{slowSimple}, idlers...) {
			txMustOne(ctx, t, c, "SELECT 1")
		}
		if _, err := slowExt.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})

	start := time.Now()
	simpleRes := txRunAsync(ctx, slowSimple, "SELECT pg_sleep(5)")
	extRes := make(chan txQueryResult, 1)
	go func() { // ends when the query does (query_timeout, or 5 s)
		s := time.Now()
		_, err := slowExt.Exec(ctx, "SELECT pg_sleep($1)", 5)
		extRes <- txQueryResult{err: err, elapsed: time.Since(s)}
	}()
	time.Sleep(200 * time.Millisecond)
	wokeRes := make([]<-chan txQueryResult, woken)
	for i := range wokeRes {
		wokeRes[i] = txRunAsync(ctx, idlers[i], fmt.Sprintf("SELECT 'woken-%d'", i))
	}
	for name, ch := range map[string]<-chan txQueryResult{"simple": simpleRes, "extended": extRes} {
		r := <-ch
		var pe *pgconn.PgError
		if !errors.As(r.err, &pe) || pe.Code != wantCode || !strings.Contains(pe.Message, "query_timeout") {
			t.Errorf("%s: a query longer than query_timeout: %v; want %s naming query_timeout", name, r.err, wantCode)
			continue
		}
		elapsedWithin(t, name+": the cancel", r.elapsed, limit, limit+2*time.Second)
	}
	for i, ch := range wokeRes {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Errorf("idle client %d woken while both backends were held: %v", i, r.err)
			} else if r.elapsed > limit+3*time.Second {
				t.Errorf("idle client %d waited %v for a backend", i, r.elapsed)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("idle client %d not served within 10 s", i)
		}
	}
	t.Logf("two query_timeouts among %d idle clients in %v", idle, time.Since(start).Round(time.Millisecond))
	for i, c := range idlers {
		if v := txMustOne(ctx, t, c, fmt.Sprintf("SELECT 'after-%d'", i)); v != fmt.Sprintf("after-%d", i) {
			t.Errorf("idle client %d afterwards: %q", i, v)
		}
	}
	if v := txMustOne(ctx, t, slowSimple, "SELECT 'simple again'"); v != "simple again" {
		t.Errorf("the timed-out simple client: %q", v)
	}
	var v int
	if err := slowExt.QueryRow(ctx, "SELECT $1::int", 7).Scan(&v); err != nil || v != 7 {
		t.Errorf("the timed-out extended client: %d %v", v, err)
	}
	lgCleanBackends(ctx, t, p, 2)
}

// TestLoopGuardAdminKill: the admin console's KILL of a database (the
// only KILL there is) reaches its clients running a query and idle
// between transactions (parked): each gets FATAL 57P01 naming the KILL at
// once, the running query is cancelled on the server; the clients of
// another database, idle and busy, are untouched, and the KILLed
// database serves new clients.
func TestLoopGuardAdminKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// victim is a second databases entry for the same real database.
	p := txStartProxy(t, "transaction", 2, WithEnv("PGSIDECAR_DATABASES__VICTIM__URL", txDirectURL()))
	t.Cleanup(func() { lgLogLoop(t, p) })
	victimURL := p.URL(txAppUser, txAppPassword, "victim")
	admin := txConnect(ctx, t, pg.AdminURL(), nil)
	con := connect(t, consoleURL(p, "app", "app"))

	idleRaw := dialRaw(t, victimURL)
	idleRaw.query(t, "SELECT 1")
	idlePgx := txConnectPgx(ctx, t, victimURL, pgx.QueryExecModeCacheStatement)
	if _, err := idlePgx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	running := txConnect(ctx, t, victimURL, nil)
	txMustOne(ctx, t, running, "SELECT 1")
	bystander := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, bystander, "SELECT 1")
	lgParkAll(t, p, 4, func() {
		idleRaw.query(t, "SELECT 1")
		if _, err := idlePgx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		txMustOne(ctx, t, running, "SELECT 1")
		txMustOne(ctx, t, bystander, "SELECT 1")
	})

	busy := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
	busyCtx, stopBusy := context.WithCancel(ctx)
	busyErr := make(chan error, 1)
	go func() { // ends when stopBusy is called, at its first error, or after 100000 queries
		for i := 0; i < 100000; i++ {
			var v int
			err := busy.QueryRow(busyCtx, "SELECT $1::int", i).Scan(&v)
			if busyCtx.Err() != nil {
				busyErr <- nil
				return
			}
			if err != nil || v != i {
				busyErr <- fmt.Errorf("query %d: %d, %w", i, v, err)
				return
			}
		}
		busyErr <- nil
	}()

	const marker = "lg-kill-running"
	runRes := txRunAsync(ctx, running, "SELECT pg_sleep(10) /* "+marker+" */")
	waitActive(ctx, t, admin, marker, 1, 10*time.Second)
	killedAt := time.Now()
	if err := consoleExec(ctx, con, "KILL victim"); err != nil {
		t.Fatalf("KILL victim: %v", err)
	}
	const wantMsg = "KILL from the pgsidecar admin console"
	select {
	case r := <-runRes:
		var pe *pgconn.PgError
		if !errors.As(r.err, &pe) || pe.Severity != "FATAL" || pe.Code != "57P01" || !strings.Contains(pe.Message, wantMsg) {
			t.Errorf("the client running a query: %v; want FATAL 57P01 naming the KILL", r.err)
		}
		if took := time.Since(killedAt); took > 3*time.Second {
			t.Errorf("the running client was told after %v", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client running a query heard nothing 5 s after KILL")
	}
	if e := receiveFatal(t, idleRaw, "57P01", 5*time.Second); !strings.Contains(e.Message, wantMsg) {
		t.Errorf("the parked raw client: %q", e.Message)
	}
	if _, err := idlePgx.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
		t.Errorf("the parked pgx client's next query: %v; want 57P01", err)
	}
	waitActive(ctx, t, admin, marker, 0, 5*time.Second)

	stopBusy()
	if err := <-busyErr; err != nil {
		t.Errorf("a busy client of another database during the KILL: %v", err)
	}
	if v := txMustOne(ctx, t, bystander, "SELECT 'bystander'"); v != "bystander" {
		t.Errorf("an idle client of another database: %q", v)
	}
	fresh := txConnect(ctx, t, victimURL, nil)
	if v := txMustOne(ctx, t, fresh, "SELECT 'fresh'"); v != "fresh" {
		t.Errorf("a new client of the KILLed database: %q", v)
	}
}

// lgQuery runs sql with pgx in mode and returns every row's values and
// the command tag, or the error, as text.
func lgQuery(ctx context.Context, conn *pgx.Conn, mode pgx.QueryExecMode, sql string, args ...any) string {
	rows, err := conn.Query(ctx, sql, append([]any{mode}, args...)...)
	if err != nil {
		return "query: " + lgError(err)
	}
	var b strings.Builder
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			rows.Close()
			return "values: " + lgError(err)
		}
		fmt.Fprintf(&b, "%v;", v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		b.WriteString(" " + lgError(err))
	}
	fmt.Fprintf(&b, " [%s]", rows.CommandTag())
	return b.String()
}

// lgMixIteration runs iteration i of client g's mixed workload on conn
// (via says which side, for the rows it inserts) and returns the
// transcript of what the server answered, for comparing.
func lgMixIteration(ctx context.Context, conn *pgx.Conn, via string, g, i int) string {
	var out []string
	add := func(step, s string) { out = append(out, step+": "+s) }
	pc := conn.PgConn()
	simple := func(sql string) string { return lgFormat(pc.Exec(ctx, sql).ReadAll()) }

	add("simple", simple(fmt.Sprintf("SELECT %d + %d, 'g%d-i%d'::text, repeat('r', %d)", g, i, g, i, (g*7+i)%300)))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeCacheStatement} {
		add(mode.String(), lgQuery(ctx, conn, mode,
			"SELECT $1::int * 2, $2::text || '-x', s FROM generate_series(1, $3::int) s", g, fmt.Sprint(i), i%5+1))
	}
	mode := []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeCacheStatement}[i%3]
	add("begin", simple("BEGIN"))
	add("insert", lgQuery(ctx, conn, mode, "INSERT INTO lg_mix VALUES ($1, $2, $3, $4) RETURNING g, i, v", via, g, i, fmt.Sprintf("v%d", g*i)))
	add("count", lgQuery(ctx, conn, mode, "SELECT count(*), sum(i) FROM lg_mix WHERE via = $1 AND g = $2", via, g))
	add("commit", simple("COMMIT"))
	add("multi", simple(fmt.Sprintf("SELECT %d; SELECT 'two', %d; VALUES (1, 'a'), (2, 'b')", g, i)))
	add("multi with an error", simple(fmt.Sprintf("SELECT %d; SELECT 1/0; SELECT 3", i)))
	add("error", simple("SELECT 1/0"))
	add("after the error", simple(fmt.Sprintf("SELECT 'good-%d-%d'", g, i)))
	add("extended error", lgQuery(ctx, conn, mode, "SELECT 10 / $1::int", 0))
	add("after the extended error", lgQuery(ctx, conn, mode, "SELECT $1::int + 1", g))
	add("status", string(pc.TxStatus()))
	return strings.Join(out, "\n")
}

// TestLoopGuardMixedWorkloadMatchesDirect: 40 clients on a pool of 4 each
// run 30 iterations of a mixed workload (simple Query, the extended
// protocol in pgx's Exec, CacheDescribe and CacheStatement modes, an
// explicit BEGIN..COMMIT, multi-statement queries with and without an
// error, an error followed by a good query, in both protocols), each
// client beside a direct twin running the same statements: every answer
// through the proxy is the same as directly.
func TestLoopGuardMixedWorkloadMatchesDirect(t *testing.T) {
	const (
		clients    = 40
		iterations = 30
		poolSize   = 4
	)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", poolSize)
	t.Cleanup(func() { lgLogLoop(t, p) })
	setup := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, setup, "DROP TABLE IF EXISTS lg_mix; CREATE TABLE lg_mix (via text, g int, i int, v text)")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = txSimple(ctx, setup, "DROP TABLE IF EXISTS lg_mix")
	})
	errs := newTxErrors()
	var wg sync.WaitGroup
	start := time.Now()
	for g := range clients {
		wg.Add(1)
		go func() { // ends after its iterations or its first difference (ctx bounds every query)
			defer wg.Done()
			pconn, err := txDialPgx(ctx, txProxyURL(p), pgx.QueryExecModeCacheStatement)
			if err != nil {
				errs.add("client %d: %v", g, err)
				return
			}
			defer txClosePgx(pconn)
			dconn, err := txDialPgx(ctx, txDirectURL(), pgx.QueryExecModeCacheStatement)
			if err != nil {
				errs.add("client %d direct: %v", g, err)
				return
			}
			defer txClosePgx(dconn)
			for i := range iterations {
				got := lgMixIteration(ctx, pconn, "proxy", g, i)
				want := lgMixIteration(ctx, dconn, "direct", g, i)
				if got != want {
					errs.add("client %d iteration %d: through the proxy:\n%s\ndirectly:\n%s", g, i, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t, "mixed workload through the proxy against directly")
	t.Logf("%d clients x %d iterations on a pool of %d in %v", clients, iterations, poolSize, time.Since(start).Round(time.Millisecond))
	if got := txMustOne(ctx, t, setup, "SELECT count(*) FILTER (WHERE via = 'proxy') || ' ' || count(*) FILTER (WHERE via = 'direct') FROM lg_mix"); got != fmt.Sprintf("%d %d", clients*iterations, clients*iterations) {
		t.Errorf("rows inserted through the proxy and directly: %s, want %d each", got, clients*iterations)
	}
	assertPoolsWithin(t, p.Stats(t), poolSize)
}

// TestLoopGuardNotificationsToIdleListener: a client LISTENs through the
// proxy, beside a direct twin, and idles between transactions; 20
// notifications come in rounds separated by idle gaps longer than the
// park interval, from a client of the proxy and a direct one, singly, in
// a transaction, by pg_notify, and while the listener also runs queries.
// The proxy's listener gets each as the direct one does (channel,
// payload, sender pid), and nothing more.
func TestLoopGuardNotificationsToIdleListener(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	l := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeSimpleProtocol)
	d := txConnectPgx(ctx, t, txDirectURL(), pgx.QueryExecModeSimpleProtocol)
	viaProxy := txConnect(ctx, t, txProxyURL(p), nil)
	direct := txConnect(ctx, t, txDirectURL(), nil)
	for _, c := range []*pgx.Conn{l, d} {
		if _, err := c.Exec(ctx, "LISTEN lg_chan; LISTEN lg_other"); err != nil {
			t.Fatal(err)
		}
	}
	type round struct {
		sender *pgconn.PgConn
		sql    string
		n      int  // notifications it sends
		query  bool // the listener runs a query before waiting
	}
	rounds := []round{
		{viaProxy, "NOTIFY lg_chan, 'r0'", 1, false},
		{direct, "NOTIFY lg_chan, 'r1'", 1, false},
		{viaProxy, "BEGIN; NOTIFY lg_chan, 'r2a'; NOTIFY lg_other, 'r2b'; COMMIT", 2, false},
		{direct, "SELECT pg_notify('lg_other', 'r3a'); NOTIFY lg_chan, 'r3b'", 2, true},
		{viaProxy, "NOTIFY lg_chan, 'r4a'; NOTIFY lg_chan, 'r4b'; NOTIFY lg_chan, 'r4c'", 3, false},
		{direct, "NOTIFY lg_other, 'r5'", 1, true},
		{viaProxy, "SELECT pg_notify('lg_chan', 'r6-' || g) FROM generate_series(1, 4) g", 4, false},
		{direct, "BEGIN; NOTIFY lg_chan, 'r7a'; NOTIFY lg_other, 'r7b'; COMMIT", 2, false},
		{viaProxy, "NOTIFY lg_chan, 'r8'", 1, true},
		{direct, "NOTIFY lg_other, 'r9a'; NOTIFY lg_chan, 'r9b'; NOTIFY lg_chan, 'r9c'", 3, false},
	}
	total, parkedRounds := 0, 0
	for k, r := range rounds {
		time.Sleep(700 * time.Millisecond) // idle past the park interval
		if parkedClients(t, p) > 0 {
			parkedRounds++
		}
		txMustExec(ctx, t, r.sender, r.sql)
		if r.query {
			for _, c := range []*pgx.Conn{l, d} {
				var v int
				if err := c.QueryRow(ctx, "SELECT $1::int", k).Scan(&v); err != nil || v != k {
					t.Fatalf("round %d: the listener's query: %d %v", k, v, err)
				}
			}
		}
		got := txNotes(ctx, l, r.n, 5*time.Second)
		want := txNotes(ctx, d, r.n, 5*time.Second)
		if len(want) != r.n {
			t.Fatalf("round %d: the direct listener got %q, want %d notifications: the test is wrong", k, want, r.n)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("round %d (%s): through the proxy %q, directly %q", k, r.sql, got, want)
		}
		total += r.n
	}
	if extra, err := txNote(ctx, l, 300*time.Millisecond); err == nil {
		t.Errorf("an extra notification through the proxy: %s", extra)
	}
	t.Logf("%d notifications in %d rounds; a client was parked before %d of them", total, len(rounds), parkedRounds)
	if total != 20 {
		t.Errorf("the test sent %d notifications, meant 20", total)
	}
	var v int
	if err := l.QueryRow(ctx, "SELECT 42").Scan(&v); err != nil || v != 42 {
		t.Fatalf("the listener afterwards: %d %v", v, err)
	}
}

// lgSlowReader reads at most 64 KB per call and pauses before each read,
// as a client busy with what it already has.
type lgSlowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s *lgSlowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), 64<<10)])
}

// lgDigestReply reads one query's reply from fe and returns its row
// count, a hash of every message and the transaction status.
func lgDigestReply(fe *pgproto3.Frontend) (string, error) {
	h := sha256.New()
	rows := 0
	for {
		msg, err := fe.Receive()
		if err != nil {
			return "", fmt.Errorf("after %d rows: %w", rows, err)
		}
		b, err := msg.Encode(nil)
		if err != nil {
			return "", err
		}
		h.Write(b)
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			rows++
		case *pgproto3.ReadyForQuery:
			return fmt.Sprintf("rows=%d status=%c sha256=%x", rows, m.TxStatus, h.Sum(nil)), nil
		}
	}
}

// TestLoopGuardSlowReaderGetsWholeReply: a client reads a 19 MB result
// slowly (64 KB every 5 ms, the proxy's writes to it blocking again and
// again) and gets exactly the bytes a direct connection gets, while four
// clients commit transactions on the pool's other backend, each within a
// bounded wait.
func TestLoopGuardSlowReaderGetsWholeReply(t *testing.T) {
	const sql = "SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 2000) g"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	direct := dialRaw(t, txDirectURL())
	direct.send(t, &pgproto3.Query{String: sql})
	_ = direct.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	want, err := lgDigestReply(direct.fe)
	if err != nil {
		t.Fatalf("directly: %v", err)
	}

	setup := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, setup, "DROP TABLE IF EXISTS lg_stuck; CREATE TABLE lg_stuck (client int, n int)")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = txSimple(ctx, setup, "DROP TABLE IF EXISTS lg_stuck")
	})
	conns := make([]*pgx.Conn, 4)
	for w := range conns {
		conns[w] = txConnectPgx(ctx, t, txProxyURL(p), []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement}[w%2])
	}

	slow := dialRaw(t, txProxyURL(p))
	slow.query(t, "SELECT 1")
	// Every client sends from idle (parked): the event loop reads it.
	lgParkAll(t, p, len(conns)+1, func() {
		slow.query(t, "SELECT 1")
		for _, c := range conns {
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
	})
	_ = slow.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	// Buffered, so that each pause is per 64 KB read, not per message.
	fe := pgproto3.NewFrontend(bufio.NewReaderSize(&lgSlowReader{r: slow.conn, pause: 5 * time.Millisecond}, 64<<10), slow.conn)
	slow.send(t, &pgproto3.Query{String: sql})
	start := time.Now()
	type result struct {
		digest string
		err    error
	}
	got := make(chan result, 1)
	go func() { // ends when the reply is read or the read deadline passes
		d, err := lgDigestReply(fe)
		got <- result{d, err}
	}()
	// Others commit while the slow client is being served (rounds of 5
	// transactions each, at most 100 rounds).
	var r result
	var slowest time.Duration
	rounds := 0
	for r.digest == "" && r.err == nil {
		select {
		case r = <-got:
			continue
		default:
		}
		if rounds == 100 {
			r = <-got
			break
		}
		slowest = max(slowest, lgCommitRounds(ctx, t, conns, rounds*5+1, rounds*5+5, 3*time.Second))
		rounds++
	}
	took := time.Since(start)
	if r.err != nil {
		t.Fatalf("the slow reader: %v", r.err)
	}
	if r.digest != want {
		t.Errorf("the slow reader got %s, directly %s", r.digest, want)
	}
	t.Logf("slow reader served in %v; beside it %d x %d transactions (slowest %v)",
		took.Round(time.Millisecond), len(conns), rounds*5, slowest.Round(time.Millisecond))
	if rounds < 2 {
		t.Errorf("only %d rounds of transactions while the slow reader was served: the others were held up, or the test proved nothing", rounds)
	}
	rows, status := slow.query(t, "SELECT 'after'")
	if fmt.Sprint(rows) != "[[after]]" || status != 'I' {
		t.Errorf("the slow reader's next query: %v %c", rows, status)
	}
}

// TestLoopGuardRequestThenTerminate: a request and Terminate in one write
// (simple and extended protocol): the client gets the whole reply, as
// directly, then the connection ends; the pool's one backend is clean.
func TestLoopGuardRequestThenTerminate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	t.Cleanup(func() { lgLogLoop(t, p) })
	cases := map[string][]byte{
		"simple": encodeMsgs(t, &pgproto3.Query{String: "SELECT 'bye', g FROM generate_series(1, 3) g"}, &pgproto3.Terminate{}),
		"extended": encodeMsgs(t,
			&pgproto3.Parse{Query: "SELECT $1::text || '!'"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("bye")}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Terminate{}),
	}
	// The clients send from idle (parked): the event loop reads them.
	leavers := map[string]*rawClient{}
	for name := range cases {
		leavers[name] = dialRaw(t, txProxyURL(p))
		leavers[name].query(t, "SELECT 1")
	}
	lgParkAll(t, p, len(cases), lgRawNudge(t, leavers["simple"], leavers["extended"]))
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			run := func(r *rawClient) []string {
				r.write(t, data)
				got, err := lgReplies(r, 1, 10*time.Second)
				if err != nil {
					t.Fatalf("after %q: %v", got, err)
				}
				_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if m, err := r.fe.Receive(); err == nil {
					t.Fatalf("%T after the reply to a Terminate", m)
				} else if isTimeout(err) {
					t.Fatal("the connection stayed open after Terminate")
				}
				return got
			}
			lgCompare(t, name+" request and Terminate", run(leavers[name]), run(dialRaw(t, txDirectURL())))
			lgCleanBackends(ctx, t, p, 1)
		})
	}
}

// TestLoopGuardHostileInput: clients the event loop serves (each ran
// queries and is parked between requests, so the loop reads what comes
// next) send what no driver sends: a length below the 4 its own field
// takes, a length past any limit, an unknown message type, and a Query
// that claims 1 GiB, of which the client sends up to 1 MB before it vanishes.
// PostgreSQL, sent the same on a direct connection, ends the session
// (for the lengths without a word to the client: it logs them); through
// the proxy each of the first three gets FATAL 08P01 with a hint, as
// PostgreSQL's own answer to an unknown type, and is closed. The lie
// costs memory in proportion to the bytes received, not to the claim;
// the backend the partial Query went to is closed rather than handed on,
// and the pool's one backend then serves a clean transaction.
func TestLoopGuardHostileInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	served := func() *rawClient {
		r := dialRaw(t, txProxyURL(p))
		r.query(t, "SELECT 1") // after this one it parks: the loop reads the next
		r.query(t, "SELECT 2")
		return r
	}
	// ended reads what r gets until its connection ends: the error
	// messages on the way, and whether it ended within the deadline.
	ended := func(r *rawClient) (errs []*pgproto3.ErrorResponse, closed bool) {
		_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			msg, err := r.fe.Receive()
			if err != nil {
				var ne net.Error
				return errs, !(errors.As(err, &ne) && ne.Timeout())
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				errs = append(errs, e)
			}
		}
	}
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 2, 'x'}},
		{"length past every limit", []byte{'Q', 0x7f, 0xff, 0xff, 0xff, 'S', 'E', 'L'}},
		{"unknown message type", []byte{'z', 0, 0, 0, 4}},
	} {
		direct := dialRaw(t, txDirectURL())
		direct.write(t, tc.msg)
		derrs, dclosed := ended(direct)
		if !dclosed {
			t.Fatalf("%s: PostgreSQL kept the session open", tc.name)
		}
		for _, e := range derrs {
			if e.Code != "08P01" || e.Severity != "FATAL" {
				t.Fatalf("%s: PostgreSQL answered %s %s %q; the test expects FATAL 08P01 or nothing", tc.name, e.Severity, e.Code, e.Message)
			}
		}
		r := served()
		r.write(t, tc.msg)
		errs, closed := ended(r)
		if len(errs) != 1 || errs[0].Code != "08P01" || errs[0].Severity != "FATAL" || errs[0].Hint == "" || !closed {
			t.Fatalf("%s: through the proxy got %v (closed %v), want one FATAL 08P01 with a hint, then the close", tc.name, errs, closed)
		}
		t.Logf("%s: PostgreSQL sent %d error(s) and closed; the proxy: %s %q (hint: %s)", tc.name, len(derrs), errs[0].Code, errs[0].Message, errs[0].Hint)
	}

	before := memNow(t, p)
	stop := memSampler(t, p)
	r := served()
	pidBefore, _ := r.query(t, "SELECT pg_backend_pid()") // the pool's one backend
	hdr := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], 1<<30-1)
	r.write(t, hdr)
	// The 1 MB may not all go: PostgreSQL, which cannot take a 1 GiB
	// message, may end the backend's session first, and the proxy then
	// ends the client's (08006). Either way the claim must cost nothing.
	_ = r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = r.conn.Write(make([]byte, 1<<20))
	r.vanish(t)
	// The proxy notices the client leaving while it streams the Query,
	// and ends its backend, whose state is unknown, before the next
	// client gets one.
	other := dialRaw(t, txProxyURL(p))
	pidAfter, status := other.query(t, "SELECT pg_backend_pid()")
	if status != 'I' || len(pidAfter) != 1 || len(pidBefore) != 1 || pidAfter[0][0] == pidBefore[0][0] {
		t.Fatalf("backend before the lie %v, after %v (%c): want a new one, the old one closed", pidBefore, pidAfter, status)
	}
	peak := stop()
	t.Logf("proxy before: %v; peak with a 1 GiB claim and 1 MB sent: %v", before, peak)
	if peak.rss-before.rss > memLimit(64<<20) || peak.data-before.data > memLimit(64<<20) {
		t.Fatalf("proxy memory grew by %d MB resident, %d MB reserved for a 1 MB message claiming 1 GiB, want < 64 MB",
			(peak.rss-before.rss)>>20, (peak.data-before.data)>>20)
	}
	lgCleanBackends(ctx, t, p, 1)
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d after the hostile clients", code)
	}
	lgLogLoop(t, p)
}
