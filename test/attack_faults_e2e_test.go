package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Backend and server faults in the middle of the relay: a backend killed
// (pg_terminate_backend from the admin connection) or stopped (SIGSTOP)
// at a chosen moment of a client's exchange. Each test compares the
// proxy with a direct connection where PostgreSQL has the behaviour, and
// checks that a fault costs at most the transaction it hit: one clear
// error or a replay that cannot run anything twice, other clients
// untouched, the dead backend never handed on.

// TestTerminateAfterCommitInsideRequest: a request that commits work of
// its own before it answers (a DO block or a procedure with COMMIT, CREATE
// INDEX CONCURRENTLY, run as the first statement of a transaction) and
// whose backend is then terminated within the replay window (replay.go's
// replayWindow, a second after the acquire). The backend's first reply is
// the FATAL 57P01 (none of these sends anything before it ends), which is
// what a backend that was dying when it was handed out sends; but this
// one ran the request and committed part of it, so sending it again runs
// it twice: the DO block's and the procedure's row is committed twice
// (the client sees success), and CREATE INDEX CONCURRENTLY, whose invalid
// index is committed, fails with 42P07 on the replay. Directly, and
// through the proxy, the client gets FATAL 57P01 and the work is there
// once.
func TestTerminateAfterCommitInsideRequest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	setup := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, setup, `DROP TABLE IF EXISTS af_commit, af_cic; CREATE TABLE af_commit(id serial, via text);
		CREATE TABLE af_cic(i int);
		CREATE OR REPLACE PROCEDURE af_commit_proc(via text) LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO af_commit(via) VALUES (via); COMMIT; PERFORM pg_sleep(3); END $$`)
	rows := func(tag string) string {
		return txMustOne(ctx, t, admin, "SELECT count(*) FROM af_commit WHERE via = '"+tag+"'")
	}
	indexes := func(tag string) string {
		return txMustOne(ctx, t, admin, "SELECT count(*) FROM pg_class WHERE relname = 'af_cic_"+strings.ReplaceAll(tag, "-", "_")+"'")
	}
	cases := []struct {
		name, sql string
		done      func(tag string) string // "1" once the request's own commit happened
		blocker   bool                    // keep a transaction open on af_cic meanwhile (CREATE INDEX CONCURRENTLY waits for it)
		prepared  bool                    // sql is prepared as a named statement in a transaction before, then run by Bind/Execute/Sync with tag
		unnamed   bool                    // ... as the unnamed statement (pgx's describe_exec mode)
	}{
		{"do", `DO $$ BEGIN INSERT INTO af_commit(via) VALUES ('%[1]s'); COMMIT; PERFORM pg_sleep(3); END $$ /* %[2]s */`, rows, false, false, false},
		{"call", `CALL af_commit_proc('%[1]s') /* %[2]s */`, rows, false, false, false},
		{"cic", `CREATE INDEX CONCURRENTLY af_cic_%[3]s ON af_cic(i) /* %[2]s */`, indexes, true, false, false},
		{"prepared", `CALL af_commit_proc($1) /* %[2]s */`, rows, false, true, false},
		{"unnamed", `CALL af_commit_proc($1) /* %[2]s */`, rows, false, true, true},
	}
	for _, tc := range cases {
		for _, via := range []struct{ name, url string }{{"direct", txDirectURL()}, {"proxy", txProxyURL(p)}} {
			tag := tc.name + "-" + via.name
			marker := "af-commit-" + tag
			var blocker *pgconn.PgConn
			if tc.blocker {
				blocker = txConnect(ctx, t, txDirectURL(), nil)
				txMustExec(ctx, t, blocker, "BEGIN; INSERT INTO af_cic VALUES (1)")
			}
			c := txConnect(ctx, t, via.url, nil)
			txMustOne(ctx, t, c, "SELECT 1") // logged in; the next request acquires afresh
			sql := fmt.Sprintf(tc.sql, tag, marker, strings.ReplaceAll(tag, "-", "_"))
			var res <-chan txQueryResult
			start := time.Now()
			if tc.prepared {
				name := "af_prepared"
				if tc.unnamed {
					name = ""
				}
				if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
					t.Fatalf("%s: prepare: %v", tag, err)
				}
				ch := make(chan txQueryResult, 1)
				res = ch
				start = time.Now()
				go func() {
					r := c.ExecPrepared(ctx, name, [][]byte{[]byte(tag)}, nil, nil).Read()
					ch <- txQueryResult{err: r.Err}
				}()
			} else {
				res = txRunAsync(ctx, c, sql)
			}
			pid := waitActive(ctx, t, admin, marker, 1, 10*time.Second)[0]
			waitFor(t, 10*time.Second, tag+": the request's own commit", func() bool { return tc.done(tag) == "1" })
			terminate(ctx, t, admin, []string{pid})
			killedAt := time.Since(start)
			var r txQueryResult
			select {
			case r = <-res:
			case <-time.After(15 * time.Second):
				t.Fatalf("%s: no answer 15s after its backend was terminated", tag)
			}
			if blocker != nil {
				txMustExec(ctx, t, blocker, "ROLLBACK")
			}
			got := tc.done(tag)
			t.Logf("%s: terminated %v after the request was sent: %v (SQLSTATE %s); committed %s times",
				tag, killedAt.Round(time.Millisecond), r.err, sqlState(r.err), got)
			if killedAt > time.Second {
				t.Fatalf("%s: the termination came %v after the request, past the replay window: the probe proves nothing", tag, killedAt)
			}
			if got != "1" {
				t.Errorf("%s: the request's work was committed %s times, want once (it was run again on another backend)", tag, got)
			}
			var pe *pgconn.PgError
			if !errors.As(r.err, &pe) || pe.Code != "57P01" {
				t.Errorf("%s: %v, want FATAL 57P01 as directly", tag, r.err)
			}
		}
	}
	// The pool still serves: a new client runs a transaction on a live
	// backend and sees each proxy request's row once.
	fresh := txConnect(ctx, t, txProxyURL(p), nil)
	if got, err := txOne(ctx, fresh, "SELECT count(*) FROM af_commit WHERE via LIKE '%-proxy'"); err != nil || got != "4" {
		t.Errorf("a new client after the faults: %q rows, %v; want 4 (do, call, prepared, unnamed)", got, err)
	}
}

// afStop sends SIGSTOP to the backend pid and makes sure the test's end
// sends SIGCONT, so that no stopped process is left in the shared cluster.
// cont sends SIGCONT now.
func afStop(t *testing.T, pid string) (cont func()) {
	t.Helper()
	n, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatalf("pid %q: %v", pid, err)
	}
	if err := syscall.Kill(n, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", n, err)
	}
	var once sync.Once
	cont = func() { once.Do(func() { syscall.Kill(n, syscall.SIGCONT) }) }
	t.Cleanup(cont)
	return cont
}

// afStartStoppableProxy starts a transaction-mode proxy of maxSize
// backends whose pool.query_timeout is off until arm sets it to limit (a
// config file and SIGHUP: the option is live). A test stops its backends
// first and only then arms the timeout: the sweeper counts a request's time
// from the first sweep that sees the timeout on, so the cancel can only go
// to a backend already stopped. With the timeout on from the start, finding
// the backend's pid and stopping it raced the limit: on a loaded machine it
// took longer than 1 s, the server answered the cancel with its 57014
// before the stop, and the client never met a stopped backend.
func afStartStoppableProxy(t *testing.T, maxSize int) (p *Proxy, arm func(limit time.Duration)) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgsidecar.yaml")
	write := func(limit time.Duration) {
		t.Helper()
		if err := os.WriteFile(path, []byte("pool:\n  query_timeout: "+limit.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	p = txStartProxy(t, "transaction", maxSize, WithArgs("-config", path))
	arm = func(limit time.Duration) {
		t.Helper()
		write(limit)
		rlReload(t, p)
		if lines := rlLogLines(p, `"msg":"reload failed; keeping the running configuration"`); len(lines) > 0 {
			t.Fatalf("arming query_timeout %v: %s", limit, lines[0])
		}
	}
	return p, arm
}

// TestStoppedBackendQueryTimeout: the backend running a client's
// statement is stopped (SIGSTOP: alive, its socket open, silent, as a
// database host cut off by the network). pool.query_timeout (1s, armed
// once the backend is stopped: afStartStoppableProxy) sends a cancel
// request, which a stopped process never acts on; the client must
// not wait for the backend past that: it gets an error from the proxy
// (08006 naming query_timeout, with a hint) within serverOpTimeout (5s)
// of the cancel, its backend is closed, never handed on (new clients run
// on other backends at once), and /stats comes back to no backend active.
// Directly, with statement_timeout, the client would wait for the stopped
// process as long as it stays stopped: the proxy's own timeout is the one
// that can bound it, as PgBouncer's query_timeout does (it closes the
// server connection).
func TestStoppedBackendQueryTimeout(t *testing.T) {
	const limit = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, arm := afStartStoppableProxy(t, 2)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	c := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, c, "SELECT 1")
	res := txRunAsync(ctx, c, "SELECT pg_sleep(20) /* af-stopped */")
	pid := waitActive(ctx, t, admin, "af-stopped", 1, 10*time.Second)[0]
	cont := afStop(t, pid)
	arm(limit)
	stopped := time.Now()
	// The bound: the sweeper's first look after the reload (up to its
	// idle interval, 1s, while no timeout was on), the limit, the
	// serverOpTimeout (5s) the cancel is given, and room for a slow host.
	var r txQueryResult
	select {
	case r = <-res:
	case <-time.After(limit + 9*time.Second):
		cont()
		r = <-res
		t.Fatalf("the client still waited %v after its backend stopped, query_timeout %v; after SIGCONT: %v (SQLSTATE %s)",
			time.Since(stopped).Round(time.Millisecond), limit, r.err, sqlState(r.err))
	}
	t.Logf("stopped backend: the client got %v (SQLSTATE %s) %v after the stop", r.err, sqlState(r.err), time.Since(stopped).Round(time.Millisecond))
	var pe *pgconn.PgError
	if !errors.As(r.err, &pe) || pe.Code != "08006" || !strings.Contains(pe.Message, "query_timeout") || pe.Hint == "" {
		t.Errorf("%v, want 08006 naming query_timeout, with a hint", r.err)
	}
	// The stopped backend is never handed on: with it still stopped, new
	// clients are served at once, by other backends.
	for i := range 3 {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := pgconn.Connect(qctx, txProxyURL(p))
		if err != nil {
			qcancel()
			t.Fatalf("client %d: connect: %v", i, err)
		}
		got, err := txOne(qctx, n, "SELECT pg_backend_pid()")
		n.Close(context.Background())
		qcancel()
		if err != nil || got == pid {
			t.Errorf("client %d after the stop: pid %s (stopped: %s), %v", i, got, pid, err)
		}
	}
	if n := p.Logs.Count("did not answer the pool.query_timeout cancel"); n != 1 {
		t.Errorf("the unanswered cancel was logged %d times, want once", n)
	}
	cont()
	waitFor(t, 10*time.Second, "no backend active in /stats", func() bool { return poolStat(t, p, "active") == 0 })
	waitFor(t, 10*time.Second, "the stopped backend gone once continued", func() bool { return !processAlive(pid) })
}

// TestTerminationsUnderSettingsTraffic: two clients change session
// settings (a multi-statement SET, which the proxy verifies with its
// session-state check after the transaction and carries to every backend
// the client later gets) and read them back, while every backend of the
// pool is terminated at random moments (pg_terminate_backend without
// waiting, 0-9 ms apart): in the middle of a SET, of the state check, of
// the parameter sync on the next backend, of a read, or idle in the pool.
// Each statement must end within 10 s with its result or one clear error
// (the server's 57P01 relayed, or 08006 from the proxy); a read after a
// SET that succeeded must show that client's values, never the other
// client's or the defaults; afterwards /stats shows no backend active and
// a new client sees the default settings.
func TestTerminationsUnderSettingsTraffic(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			afSettingsChaos(t, mode)
		})
	}
}

func afSettingsChaos(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, mode, 3, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	adminPID := txMustOne(ctx, t, admin, "SELECT pg_backend_pid()")
	defaults := txMustOne(ctx, t, txConnect(ctx, t, txDirectURL(), nil), "SELECT current_setting('search_path')")

	stop := make(chan struct{})
	killerDone := make(chan int)
	go func() { // ends when stop is closed
		kills := 0
		kc := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
		for {
			select {
			case <-stop:
				killerDone <- kills
				return
			case <-time.After(time.Duration(kills%10) * time.Millisecond):
			}
			res, err := kc.Exec(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
				SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'
				AND pid <> `+adminPID+` ORDER BY random() LIMIT 1) s`).ReadAll()
			if err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "1" {
				kills++
			}
		}
	}()

	const rounds = 150
	deadline := time.Now().Add(25 * time.Second)
	type tally struct{ ok, errs, reconnects int }
	results := make(chan tally, 2)
	errs := newTxErrors()
	for k := range 2 {
		go func() { // ends after rounds or the deadline
			var tl tally
			defer func() { results <- tl }()
			var c *pgconn.PgConn
			defer func() {
				if c != nil {
					c.Close(context.Background())
				}
			}()
			for i := 0; i < rounds && time.Now().Before(deadline); i++ {
				if c == nil || c.IsClosed() {
					cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
					var err error
					c, err = pgconn.Connect(cctx, txProxyURL(p))
					ccancel()
					if err != nil {
						tl.errs++
						if code := sqlState(err); code != "57P01" && code != "08006" && code != "57P03" {
							errs.add("client %d round %d: connect: %v", k, i, err)
						}
						c = nil
						// A pool whose connect was just terminated refuses
						// logins until its retry (as PgBouncer's
						// server_login_retry): without a pause, a slow proxy
						// (race-built) spent every round in its first
						// second and the probe proved nothing.
						time.Sleep(50 * time.Millisecond)
						continue
					}
					tl.reconnects++
				}
				path := fmt.Sprintf("af_k%d_%d, public", k, i)
				app := fmt.Sprintf("af-%d-%d", k, i)
				sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				_, err := c.Exec(sctx, "SET search_path = "+path+"; SET application_name = '"+app+"'").ReadAll()
				if err == nil {
					var got []string
					var res []*pgconn.Result
					res, err = c.Exec(sctx, "SELECT current_setting('search_path') || '|' || current_setting('application_name')").ReadAll()
					if err == nil {
						got = []string{string(res[0].Rows[0][0])}
						if want := "af_k" + strconv.Itoa(k) + "_" + strconv.Itoa(i) + ", public|" + app; got[0] != want {
							errs.add("client %d round %d: settings read back %q, want %q", k, i, got[0], want)
						}
					}
				}
				scancel()
				if time.Since(start) > 10*time.Second {
					errs.add("client %d round %d: took %v", k, i, time.Since(start))
				}
				if err != nil {
					tl.errs++
					var pe *pgconn.PgError
					if !errors.As(err, &pe) || (pe.Code != "57P01" && pe.Code != "08006") {
						errs.add("client %d round %d: %v (want 57P01 or 08006)", k, i, err)
					}
					if !c.IsClosed() {
						// The session survived the error: its settings are
						// what they were; start again from a new login to
						// keep the expectations simple.
						c.Close(context.Background())
					}
					c = nil
					continue
				}
				tl.ok++
			}
		}()
	}
	var total tally
	for range 2 {
		r := <-results
		total.ok, total.errs, total.reconnects = total.ok+r.ok, total.errs+r.errs, total.reconnects+r.reconnects
	}
	close(stop)
	kills := <-killerDone
	t.Logf("%s: %d rounds answered, %d errors, %d logins, %d backends terminated", mode, total.ok, total.errs, total.reconnects, kills)
	errs.report(t, "under terminations")
	if kills == 0 || total.ok == 0 {
		t.Fatalf("%d terminations, %d rounds answered: the probe proved nothing", kills, total.ok)
	}
	waitFor(t, 10*time.Second, "no backend active in /stats", func() bool { return poolStat(t, p, "active") == 0 })
	fresh := txConnect(ctx, t, txProxyURL(p), nil)
	for range 4 {
		if got := txMustOne(ctx, t, fresh, "SELECT current_setting('search_path') || '|' || current_setting('application_name')"); got != defaults+"|" {
			t.Errorf("a new client after the faults sees %q, want the defaults %q", got, defaults+"|")
		}
	}
}

// afPad is the second column of TestTerminateMidExchange's rows: short,
// so that a row is shorter than any ErrorResponse.
var afPad = strings.Repeat("y", 10)

// afTail is the last 100 bytes of b.
func afTail(b []byte) []byte { return b[max(0, len(b)-100):] }

// afOutcome is what a raw client read after its backend was killed.
type afOutcome struct {
	rows    int    // DataRows, or CopyData messages
	code    string // the ErrorResponse's SQLSTATE ("" if none)
	eof     bool   // the connection ended
	ready   bool   // a ReadyForQuery came after the error
	partial int    // bytes of a message cut off by the end
	bad     string // a DataRow or CopyData not as sent, or error bytes inside one
}

// afReadOutcome reads r's socket raw, from seen (bytes read before), until
// the connection ends or 15 s pass, and parses what came: DataRows must
// be (1, afPad), (2, afPad), ..., CopyData lines the same in text form,
// and no message but an ErrorResponse may hold an error's fields.
func afReadOutcome(r *rawClient, seen []byte) (o afOutcome, err error) {
	end := time.Now().Add(15 * time.Second)
	_ = r.conn.SetReadDeadline(end)
	buf := append([]byte(nil), seen...)
	chunk := make([]byte, 64<<10)
	for len(buf) < 256<<20 {
		n, rerr := r.conn.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if rerr != nil {
			if time.Now().After(end) {
				err = fmt.Errorf("no end 15 s after the fault: %w", rerr)
			}
			o.eof = true
			break
		}
	}
	for len(buf) > 0 {
		if len(buf) < 5 || len(buf) < 1+int(binary.BigEndian.Uint32(buf[1:5])) {
			o.partial = len(buf)
			break
		}
		typ, body := buf[0], buf[5:1+int(binary.BigEndian.Uint32(buf[1:5]))]
		buf = buf[1+4+len(body):]
		if typ != 'E' && o.bad == "" && bytes.Contains(body, []byte("SFATAL\x00")) {
			o.bad = fmt.Sprintf("message %q holds an error's fields: %q", typ, afTail(body))
		}
		switch typ {
		case 'D':
			o.rows++
			want := binary.BigEndian.AppendUint16(nil, 2)
			for _, v := range []string{strconv.Itoa(o.rows), afPad} {
				want = append(binary.BigEndian.AppendUint32(want, uint32(len(v))), v...)
			}
			if o.bad == "" && !bytes.Equal(body, want) {
				o.bad = fmt.Sprintf("DataRow %d ends in %q", o.rows, afTail(body))
			}
		case 'd':
			o.rows++
			if want := strconv.Itoa(o.rows) + "\t" + afPad + "\n"; o.bad == "" && string(body) != want {
				o.bad = fmt.Sprintf("CopyData %d ends in %q", o.rows, afTail(body))
			}
		case 'E':
			if o.code == "" {
				for f := body; len(f) > 0 && f[0] != 0; {
					v, rest, _ := bytes.Cut(f[1:], []byte{0})
					if f[0] == 'C' {
						o.code = string(v)
					}
					f = rest
				}
			}
		case 'Z':
			if o.code != "" {
				o.ready = true
			}
		}
	}
	return o, err
}

// afPIDOf returns the pid of the one session whose query holds marker,
// in any state.
func afPIDOf(ctx context.Context, t *testing.T, admin *pgconn.PgConn, marker string) string {
	t.Helper()
	var pids []string
	waitFor(t, 10*time.Second, "the session of "+marker, func() bool {
		var err error
		pids, err = txSimple(ctx, admin, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND query LIKE '%"+marker+"%' AND pid <> pg_backend_pid()")
		if err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		return len(pids) == 1
	})
	return pids[0]
}

// TestTerminateMidExchange: the backend serving a raw client is terminated
// at a chosen moment of an exchange, directly and through the proxy
// (transaction mode):
//   - a large result the client has stopped reading (the backend blocked
//     writing; directly PostgreSQL then closes without an error message);
//   - COPY FROM STDIN with data sent before and after the kill;
//   - COPY TO STDOUT of a large table the client has stopped reading;
//   - an extended batch Parse/Bind/Flush, answered, then Execute/Sync sent
//     after the kill.
//
// Through the proxy the client must get the rows whole and in order
// (never one twice: nothing is replayed once the client has part of the
// reply; never one completed with the bytes of an error message: the
// backend may die in the middle of a row the proxy has partly relayed)
// and then one error, 57P01 relayed or 08006 from the proxy, or, only
// where PostgreSQL itself sends none and the proxy is in the middle of a
// message to the client, the connection's end; never a hang; the COPY FROM rows
// are not committed; and the pool afterwards serves a new client on
// another backend with nothing active in /stats.
func TestTerminateMidExchange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	setup := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, setup, `DROP TABLE IF EXISTS af_copy_in, af_copy_out; CREATE TABLE af_copy_in(i int);
		CREATE TABLE af_copy_out AS SELECT i, repeat('y', 10) AS pad FROM generate_series(1, 2000000) i`)
	var seen []byte               // what stall read
	stall := func(r *rawClient) { // read the start of the reply, then stop reading until the socket buffers fill
		chunk := make([]byte, 16<<10)
		_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := r.conn.Read(chunk)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		seen = chunk[:n]
		time.Sleep(time.Second) // through the proxy, two sockets' buffers to fill

	}
	scenarios := []struct {
		name   string
		before func(r *rawClient, marker string) // up to the moment of the kill
		after  func(r *rawClient)                // sent after the kill (errors ignored)
	}{
		{"large result", func(r *rawClient, m string) {
			r.send(t, &pgproto3.Query{String: "SELECT i, repeat('y', 10) FROM generate_series(1, 5000000) i /* " + m + " */"})
			stall(r)
		}, nil},
		{"copy from stdin", func(r *rawClient, m string) {
			r.send(t, &pgproto3.Query{String: "COPY af_copy_in FROM STDIN /* " + m + " */"})
			receiveUntil[*pgproto3.CopyInResponse](t, r)
			r.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n3\n")})
			time.Sleep(100 * time.Millisecond)
		}, func(r *rawClient) {
			var buf []byte
			buf, _ = (&pgproto3.CopyData{Data: []byte("4\n5\n")}).Encode(buf)
			buf, _ = (&pgproto3.CopyDone{}).Encode(buf)
			_ = r.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			_, _ = r.conn.Write(buf)
		}},
		{"copy to stdout", func(r *rawClient, m string) {
			r.send(t, &pgproto3.Query{String: "COPY (SELECT * FROM af_copy_out ORDER BY i) TO STDOUT /* " + m + " */"})
			stall(r)
		}, nil},
		{"statement held behind the request", func(r *rawClient, m string) {
			// A Parse of a name in use, pipelined behind a running query:
			// the proxy holds it until the query is answered (a DEALLOCATE
			// ALL ahead could free the name), and the backend dies first.
			r.send(t, &pgproto3.Parse{Name: "af_held", Query: "SELECT 1"}, &pgproto3.Sync{})
			receiveUntil[*pgproto3.ReadyForQuery](t, r)
			r.send(t, &pgproto3.Query{String: "SELECT pg_sleep(30) /* " + m + " */"},
				&pgproto3.Parse{Name: "af_held", Query: "SELECT 2"}, &pgproto3.Sync{})
			// Past replayWindow: a backend killed sooner after its
			// acquire is taken for one that was dying when handed out,
			// and the query would run again on another
			// (TestTerminateRunawayStatement).
			time.Sleep(1500 * time.Millisecond)
		}, nil},
		{"parse bind flush", func(r *rawClient, m string) {
			r.send(t, &pgproto3.Parse{Query: "SELECT 1 /* " + m + " */"}, &pgproto3.Bind{}, &pgproto3.Flush{})
			receiveUntil[*pgproto3.BindComplete](t, r)
		}, func(r *rawClient) {
			var buf []byte
			buf, _ = (&pgproto3.Execute{}).Encode(buf)
			buf, _ = (&pgproto3.Sync{}).Encode(buf)
			_ = r.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			_, _ = r.conn.Write(buf)
		}},
	}
	for _, sc := range scenarios {
		directCode := ""
		for _, via := range []struct{ name, url string }{{"direct", txDirectURL()}, {"proxy", txProxyURL(p)}} {
			tag := sc.name + " " + via.name
			marker := "af-mid-" + strings.ReplaceAll(tag, " ", "-")
			seen = nil
			r := dialRaw(t, via.url)
			r.query(t, "SELECT 1") // logged in
			sc.before(r, marker)
			pid := afPIDOf(ctx, t, admin, marker)
			terminate(ctx, t, admin, []string{pid})
			if sc.after != nil {
				sc.after(r)
			}
			o, err := afReadOutcome(r, seen)
			t.Logf("%s: %d rows, error %q, ReadyForQuery after it %v, end %v, %d bytes of a message cut off", tag, o.rows, o.code, o.ready, o.eof, o.partial)
			if err != nil {
				t.Errorf("%s: %v", tag, err)
			}
			if o.bad != "" {
				t.Errorf("%s: %s", tag, o.bad)
			}
			if via.name == "direct" {
				directCode = o.code
			} else {
				// One clear error; or, where PostgreSQL itself sends none
				// (it was killed blocked writing to the client), the
				// connection's end, as directly.
				if o.code != "57P01" && o.code != "08006" && (o.code != "" || !o.eof || directCode != "") {
					t.Errorf("%s: error %q, end %v, want 57P01 relayed or 08006 from the proxy (directly: %q)", tag, o.code, o.eof, directCode)
				}
				if o.code == "" && o.partial == 0 {
					t.Errorf("%s: the connection ended between messages without an error: the proxy could have sent 08006", tag)
				}
				if o.ready {
					t.Errorf("%s: a ReadyForQuery after the error: the session went on as if its backend had not died", tag)
				}
				// The pool: nothing active, and a new client is served by
				// another backend.
				waitFor(t, 10*time.Second, tag+": no backend active in /stats", func() bool { return poolStat(t, p, "active") == 0 })
				fresh := txConnect(ctx, t, txProxyURL(p), nil)
				if got, err := txOne(ctx, fresh, "SELECT pg_backend_pid()"); err != nil || got == pid {
					t.Errorf("%s: a new client: pid %s (killed: %s), %v", tag, got, pid, err)
				}
			}
		}
	}
	if got := txMustOne(ctx, t, admin, "SELECT count(*) FROM af_copy_in"); got != "0" {
		t.Errorf("af_copy_in holds %s rows after the COPYs were killed, want 0", got)
	}
}

// TestStoppedBackendMidRow: the backends streaming a large result to
// three clients that read it are stopped (SIGSTOP) mid-stream, so the last
// bytes the proxy relayed end inside a row (unless the stop came within a
// row's first 5 bytes or between rows: three clients make that unlikely
// for all); pool.query_timeout (1s, armed once all three are stopped: see
// afStartStoppableProxy) then closes each client (its cancel goes
// unanswered, TestStoppedBackendQueryTimeout), as the admin console's
// KILL and the drain deadline close a client. Each client must get whole
// rows, in order, and then the 08006 or, in the middle of a row, the
// connection's end: never the error's bytes as the rest of a row.
func TestStoppedBackendMidRow(t *testing.T) {
	const clients = 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, arm := afStartStoppableProxy(t, clients)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	type result struct {
		o   afOutcome
		err error
	}
	results := make(chan result, clients)
	var conts []func()
	for i := range clients {
		r := dialRaw(t, txProxyURL(p))
		r.query(t, "SELECT 1")
		marker := fmt.Sprintf("af-stopped-mid-row-%d", i)
		// generate_series in the select list streams its rows from the
		// first (in FROM it would fill a tuplestore of all 5 million rows
		// before the first is sent: seconds on a loaded machine).
		r.send(t, &pgproto3.Query{String: "SELECT generate_series(1, 5000000) AS i, repeat('y', 10) /* " + marker + " */"})
		chunk := make([]byte, 64<<10)
		_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := r.conn.Read(chunk)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		conts = append(conts, afStop(t, waitActive(ctx, t, admin, marker, 1, 10*time.Second)[0]))
		go func() { // ends within afReadOutcome's 15 s
			o, err := afReadOutcome(r, chunk[:n])
			results <- result{o, err}
		}()
	}
	arm(time.Second)
	for range clients {
		res := <-results
		o := res.o
		t.Logf("%d rows, error %q, end %v, %d bytes of a message cut off", o.rows, o.code, o.eof, o.partial)
		if res.err != nil {
			t.Error(res.err)
		}
		if o.bad != "" {
			t.Errorf("%s", o.bad)
		}
		if o.code != "08006" && o.partial == 0 {
			t.Errorf("error %q at a message boundary, want 08006", o.code)
		}
	}
	for _, cont := range conts {
		cont()
	}
	waitFor(t, 10*time.Second, "no backend active in /stats", func() bool { return poolStat(t, p, "active") == 0 })
}

// TestTerminateWithCancelInFlight: a client cancels its running statement
// (pgconn's CancelRequest, which the proxy forwards while the backend is
// pinned to the client) and the backend is terminated at the same moment.
// Terminated within a second of the acquire, the statement is replayed
// (replay.go) while the cancel request goes to the dead backend: before
// the fix the cancel was lost and the client waited the statement's 20 s.
// The client must get 57014 (the statement not sent again) or 57P01/08006
// within the bound, the dead backend is not handed on, and /stats comes
// back to idle.
func TestTerminateWithCancelInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURLDB(txAppDB), nil)
	for i := range 5 {
		c := txConnect(ctx, t, txProxyURL(p), nil)
		txMustOne(ctx, t, c, "SELECT 1")
		marker := fmt.Sprintf("af-cancel-kill-%d", i)
		res := txRunAsync(ctx, c, "SELECT pg_sleep(20) /* "+marker+" */")
		pid := waitActive(ctx, t, admin, marker, 1, 10*time.Second)[0]
		done := make(chan error, 1)
		go func() { done <- c.CancelRequest(ctx) }() // ends when the proxy has the request
		terminateNoWait(ctx, t, admin, []string{pid})
		var r txQueryResult
		select {
		case r = <-res:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: no answer 10 s after the cancel and the termination", i)
		}
		if err := <-done; err != nil {
			t.Logf("round %d: cancel request: %v", i, err)
		}
		var hint string
		if pe := (*pgconn.PgError)(nil); errors.As(r.err, &pe) {
			hint = pe.Hint
		}
		t.Logf("round %d: %v (hint %q) after %v", i, r.err, hint, r.elapsed.Round(time.Millisecond))
		switch code := sqlState(r.err); code {
		case "57014":
			// The session goes on, with no transaction left open.
			if got, err := txOne(ctx, c, "SELECT 1"); err != nil || got != "1" || c.TxStatus() != 'I' {
				t.Errorf("round %d: the next statement after the cancel: %q, %v, status %q", i, got, err, c.TxStatus())
			}
		case "57P01", "08006":
		default:
			t.Errorf("round %d: %v, want 57014, 57P01 or 08006", i, r.err)
		}
		fresh := txConnect(ctx, t, txProxyURL(p), nil)
		if got, err := txOne(ctx, fresh, "SELECT pg_backend_pid()"); err != nil || got == pid {
			t.Errorf("round %d: a new client: pid %s (killed %s), %v", i, got, pid, err)
		}
	}
	waitFor(t, 10*time.Second, "no backend active in /stats", func() bool { return poolStat(t, p, "active") == 0 })
}
