package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Attacks on the event loop (proxy/loop.go) and parking (proxy/park.go)
// by hostile and faulty clients: raw sockets that split, lie, pile up,
// close or reset at the edges of what the loop decides to relay itself.
// Every client sends from parked (it ran a query and idled), so the loop
// reads what it sends next.

// alServed is n raw clients through p (alWaiters), each waited for until
// it is parked, so that the event loop reads what it sends next.
func alServed(t *testing.T, p *Proxy, n int) []*rawClient {
	t.Helper()
	rs := alWaiters(t, p, n)
	lgParkAll(t, p, n, lgRawNudge(t, rs...))
	return rs
}

// alClientsGone waits until the proxy lists no client and holds no backend.
func alClientsGone(t *testing.T, p *Proxy, within time.Duration) {
	t.Helper()
	waitFor(t, within, "no client left and no backend held", func() bool {
		return clientsStat(t, p, "clients_total") == 0 && poolStat(t, p, "active") == 0
	})
}

// alReadToEnd reads r's messages until the connection ends or within
// passes: what came, and whether it ended (false: still open).
func alReadToEnd(r *rawClient, within time.Duration) (got []string, ended bool) {
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	defer r.conn.SetReadDeadline(time.Time{})
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return got, !isTimeout(err)
		}
		b, _ := msg.Encode(nil)
		got = append(got, lgMsgString(b))
	}
}

// TestAttackLoopRequestThenHalfClose: a parked client sends a quick
// request and at once half-closes its socket (shutdown(SHUT_WR): FIN),
// then reads. PostgreSQL answers the request, then sees the end of the
// stream and closes the session: the client reads the reply and then the
// end. Through the proxy it must get the same, and the proxy must forget
// it. The FIN comes right behind the request, often in the same epoll
// event the loop reads the request on.
func TestAttackLoopRequestThenHalfClose(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	const rounds = 20
	req := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'half', 1"})
	run := func(r *rawClient) ([]string, bool) {
		r.write(t, req)
		if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		return alReadToEnd(r, 3*time.Second)
	}
	for i := range rounds {
		direct, dended := run(dialRaw(t, txDirectURL()))
		if !dended {
			t.Fatalf("PostgreSQL kept the half-closed session open")
		}
		r := alServed(t, p, 1)[0]
		proxied, pended := run(r)
		lgCompare(t, "request then FIN", proxied, direct)
		if !pended {
			t.Fatalf("round %d: the proxy answered %d messages and then kept the half-closed client's connection open (clients listed: %d, parked: %d)",
				i, len(proxied), clientsStat(t, p, "clients_total"), parkedClients(t, p))
		}
		alClientsGone(t, p, 5*time.Second)
	}
	lgCleanBackends(t.Context(), t, p, 2)
}

// alRead reads r's messages until ready ReadyForQuery have come, the
// connection ends, or within passes, and sums them up as their types,
// each ErrorResponse with its severity and SQLSTATE, and "<end>" if the
// connection ended: what a direct connection and the proxy must agree on
// where the bytes may differ (backend pids, messages).
func alRead(r *rawClient, ready int, within time.Duration) string {
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	defer r.conn.SetReadDeadline(time.Time{})
	var b strings.Builder
	for ready > 0 {
		msg, err := r.fe.Receive()
		if err != nil {
			if !isTimeout(err) {
				b.WriteString("<end>")
			}
			break
		}
		enc, _ := msg.Encode(nil)
		b.WriteByte(enc[0])
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			fmt.Fprintf(&b, "(%s %s)", m.Severity, m.Code)
		case *pgproto3.ReadyForQuery:
			fmt.Fprintf(&b, "(%c)", m.TxStatus)
			ready--
		}
		b.WriteByte(' ')
	}
	return strings.TrimSpace(b.String())
}

// TestAttackLoopTrailingBytes: a parked client's quick request followed,
// in the same write, by what does not belong there: COPY messages out of
// place, a startup packet, bytes that are no message, a header whose
// length lies, and such COPY messages alone. PostgreSQL answers the
// request, then ends the session over the bad message (FATAL 08P01, or
// without a word for a bad length, where the proxy says why: FATAL 08P01,
// as TestLoopGuardHostileInput). The client gets what a direct connection gets (the
// same message types and SQLSTATEs), the proxy stays up, and the pool's
// backends are clean afterwards with none left held.
func TestAttackLoopTrailingBytes(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	q := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'trail', g FROM generate_series(1, 2) g"})
	after := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'after'"})
	ext := encodeMsgs(t, &pgproto3.Parse{Query: "SELECT $1::int + 1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("41")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	copyData := []byte{'d', 0, 0, 0, 7, 'a', 'b', 'c'}
	copyDone := []byte{'c', 0, 0, 0, 4}
	copyFail := encodeMsgs(t, &pgproto3.CopyFail{Message: "nope"})
	sslRequest := []byte{0, 0, 0, 8, 4, 210, 22, 47}
	startup := encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "app"}})
	// ready: the ReadyForQuery after which the connection stays open (the
	// end, for those that end it, comes before).
	cases := []struct {
		name  string
		data  []byte
		ready int
		told  bool // PostgreSQL ends the session without a word; the proxy says why (FATAL 08P01)
	}{
		{"query then CopyData", cat(q, copyData, after), 2, false},
		{"query then CopyDone", cat(q, copyDone, after), 2, false},
		{"query then CopyFail", cat(q, copyFail, after), 2, false},
		{"extended then CopyData", cat(ext, copyData, after), 2, false},
		{"CopyData alone", cat(copyData, after), 1, false},
		{"CopyDone alone", cat(copyDone, after), 1, false},
		{"CopyFail alone", cat(copyFail, after), 1, false},
		{"query then SSLRequest", cat(q, sslRequest), 9, false},
		{"query then a startup packet", cat(q, startup), 9, false},
		{"query then garbage", cat(q, []byte("GET / HTTP/1.1\r\n\r\n")), 9, false},
		{"extended then garbage", cat(ext, []byte{0xff, 0xfe, 0xfd, 0xfc, 0xfb}), 9, false},
		{"query then two bytes of garbage", cat(q, []byte{0xff, 0xfe}), 9, false},
		{"query then a negative length", cat(q, []byte{'Q', 0xff, 0xff, 0xff, 0xf0, 'x'}), 9, true},
		{"query then a length below 4", cat(q, []byte{'Q', 0, 0, 0, 2, 'x'}), 9, true},
		{"query then a 1 MB Sync", cat(q, []byte{'S', 0, 0x10, 0, 0}), 9, true},
	}
	rs := alServed(t, p, len(cases))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func(r *rawClient) string {
				r.write(t, tc.data)
				return alRead(r, tc.ready, 3*time.Second)
			}
			direct := run(dialRaw(t, txDirectURL()))
			if tc.told && strings.HasSuffix(direct, " <end>") && !strings.Contains(direct, "FATAL") {
				direct = strings.TrimSuffix(direct, " <end>") + " E(FATAL 08P01) <end>"
			}
			proxied := run(rs[i])
			if proxied != direct {
				t.Errorf("through the proxy: %s\nwant (directly):   %s", proxied, direct)
			}
		})
	}
	waitFor(t, 5*time.Second, "no backend held", func() bool { return poolStat(t, p, "active") == 0 })
	lgCleanBackends(t.Context(), t, p, 2)
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d", code)
	}
}

// alQueryOf is a simple Query message of exactly total bytes.
func alQueryOf(t *testing.T, total int) []byte {
	t.Helper()
	const head = "SELECT length('"
	const tail = "') AS n"
	pad := total - 1 - 4 - len(head) - len(tail) - 1
	q := encodeMsgs(t, &pgproto3.Query{String: head + strings.Repeat("x", pad) + tail})
	if len(q) != total {
		t.Fatalf("query of %d bytes, want %d", len(q), total)
	}
	return q
}

// TestAttackLoopSplitAtTheLimit: requests at the edges of what the loop
// reads itself: its read buffer and largest request are 8 KB
// (loopMaxRequest), so a request of 8191, 8192 and 8193 bytes, two that
// fill the buffer together, a request cut exactly at 8 KB with a pause,
// the next request's header cut there, and requests sent one byte per
// write. Each is answered as directly, byte for byte, and the
// connection goes on.
func TestAttackLoopSplitAtTheLimit(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	t.Cleanup(func() { lgLogLoop(t, p) })
	const limit = 8 << 10
	ext := encodeMsgs(t,
		&pgproto3.Parse{Query: "SELECT $1::int * 3, 'bytewise'"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("14")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	extOf := func(pad int) []byte {
		return encodeMsgs(t,
			&pgproto3.Parse{Query: "SELECT length($1::text) AS n, '" + strings.Repeat("y", pad) + "' <> ''"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("abc")}},
			&pgproto3.Execute{},
			&pgproto3.Sync{})
	}
	bigExt := extOf(limit - len(extOf(0)))
	if len(bigExt) != limit {
		t.Fatalf("extended request of %d bytes, want %d", len(bigExt), limit)
	}
	half := alQueryOf(t, limit/2)
	q9000 := alQueryOf(t, 9000)
	small := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'next'"})
	type split struct {
		name  string
		data  []byte
		cuts  []int // write boundaries
		pause time.Duration
		ready int
	}
	every := func(n int) []int {
		cuts := make([]int, n-1)
		for i := range cuts {
			cuts[i] = i + 1
		}
		return cuts
	}
	cat := func(a, b []byte) []byte { return append(append([]byte{}, a...), b...) }
	cases := []split{
		{"8191 bytes", alQueryOf(t, limit-1), nil, 0, 1},
		{"8192 bytes", alQueryOf(t, limit), nil, 0, 1},
		{"8193 bytes", alQueryOf(t, limit+1), nil, 0, 1},
		{"extended, 8192 bytes", bigExt, nil, 0, 1},
		{"two queries of 4096", cat(half, half), nil, 0, 2},
		{"8192 bytes then more in the same write", cat(alQueryOf(t, limit), small), nil, 0, 2},
		{"9000 bytes cut at 8192", q9000, []int{limit}, 150 * time.Millisecond, 1},
		{"next header cut at 8192", cat(alQueryOf(t, limit-2), small), []int{limit}, 150 * time.Millisecond, 2},
		{"next type byte at 8192", cat(alQueryOf(t, limit-1), small), []int{limit}, 150 * time.Millisecond, 2},
		{"extended, one byte per write", ext, every(len(ext)), 2 * time.Millisecond, 1},
		{"simple, one byte per write", small, every(len(small)), 2 * time.Millisecond, 1},
		{"two requests, one byte per write", cat(small, ext), every(len(small) + len(ext)), time.Millisecond, 2},
	}
	rs := alServed(t, p, len(cases))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func(r *rawClient) ([]string, error) {
				_ = r.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				from := 0
				for _, cut := range append(tc.cuts, len(tc.data)) {
					if _, err := r.conn.Write(tc.data[from:cut]); err != nil {
						return nil, err
					}
					from = cut
					if cut < len(tc.data) {
						time.Sleep(tc.pause)
					}
				}
				got, err := lgReplies(r, tc.ready, 10*time.Second)
				if err != nil {
					return got, fmt.Errorf("after %d messages %q: %w", len(got), got, err)
				}
				if _, err := r.conn.Write(small); err != nil {
					return got, err
				}
				more, err := lgReplies(r, 1, 10*time.Second)
				if err != nil {
					return got, fmt.Errorf("the query after: %w", err)
				}
				return append(got, more...), nil
			}
			var direct []string
			var derr error
			done := make(chan struct{})
			go func() { // ends when run does (bounded by its deadlines)
				defer close(done)
				direct, derr = run(dialRaw(t, txDirectURL()))
			}()
			proxied, perr := run(rs[i])
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
	waitFor(t, 5*time.Second, "no backend held", func() bool { return poolStat(t, p, "active") == 0 })
	lgCleanBackends(t.Context(), t, p, 2)
}

// alStalled logs, for a reply that stopped coming, how far it got (got:
// the messages read), the proxy's client and pool figures, and its
// goroutines from the profiling listener at pprofAddr: where the proxy
// waits, which its logs do not say.
func alStalled(t *testing.T, p *Proxy, pprofAddr string, got []string) {
	t.Helper()
	t.Logf("the reply stalled after %d messages, the last %q", len(got), got[max(0, len(got)-2):])
	if st, err := p.FetchStats(); err == nil {
		t.Logf("/stats clients %v, pools %v", st["clients"], st["pools"])
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Logf("the proxy's goroutines: %v", err)
		return
	}
	defer resp.Body.Close()
	dump, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	t.Logf("the proxy's goroutines:\n%s", dump)
}

// TestAttackLoopClientGoesMidReply: a parked client whose request the
// loop relays leaves before its reply (a 30 ms query, shorter than the
// loop's inline wait), in the middle of a 3 MB reply, and after it: by a
// close (FIN), a reset (RST), or a half-close, after which it reads on.
// A half-closing client gets the whole reply and then the end, as
// directly; after every case no client is listed, no backend held, the
// query no longer runs, and the pool's one backend serves a clean
// transaction (a backend handed on with the rest of a reply in it would
// answer wrongly).
func TestAttackLoopClientGoesMidReply(t *testing.T) {
	// The profiling listener serves the proxy's goroutines when a reply
	// stalls (alStalled): once in about 200 runs under load the whole
	// 3 MB reply did not come within 10 s, and the logs alone could not
	// tell where it stopped.
	p := txStartProxy(t, "transaction", 1, WithPprof())
	pprofAddr := p.PprofAddr
	t.Cleanup(func() { lgLogLoop(t, p) })
	admin := txConnect(t.Context(), t, txDirectURL(), nil)
	quick := "SELECT 'al-quick', pg_sleep(0.03)"
	big := "SELECT 'al-big', repeat('x', 1000) FROM generate_series(1, 3000)"
	const partial = 64 << 10
	type how int
	const (
		fin how = iota
		rst
		half
	)
	cases := []struct {
		name  string
		sql   string
		read  int // bytes read before leaving; -1: the whole reply
		leave how
	}{
		{"FIN before the reply", quick, 0, fin},
		{"RST before the reply", quick, 0, rst},
		{"half-close before the reply", quick, 0, half},
		{"FIN during the reply", big, partial, fin},
		{"RST during the reply", big, partial, rst},
		{"half-close during the reply", big, partial, half},
		{"FIN after the reply", big, -1, fin},
		{"RST after the reply", big, -1, rst},
		{"half-close after the reply", big, -1, half},
	}
	leave := func(r *rawClient, h how) {
		switch h {
		case fin:
			_ = r.conn.Close()
		case rst:
			r.vanish(t)
		case half:
			_ = r.conn.(*net.TCPConn).CloseWrite()
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := alServed(t, p, 1)[0]
			run := func(r *rawClient) (whole []string, ended bool) {
				r.write(t, encodeMsgs(t, &pgproto3.Query{String: tc.sql}))
				switch {
				case tc.read < 0:
					got, err := lgReplies(r, 1, 10*time.Second)
					if err != nil {
						alStalled(t, p, pprofAddr, got)
						t.Fatalf("reply: %v", err)
					}
					whole = got
				case tc.read > 0:
					_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
					if n, err := io.ReadFull(r.conn, make([]byte, tc.read)); err != nil {
						alStalled(t, p, pprofAddr, []string{fmt.Sprintf("%d bytes", n)})
						t.Fatalf("first %d bytes: %v", tc.read, err)
					}
				}
				leave(r, tc.leave)
				if tc.leave != half {
					return nil, true
				}
				if tc.read > 0 {
					// The rest of the reply, then the end: bytes, as the
					// start of the stream is gone.
					_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
					rest, err := io.ReadAll(r.conn)
					sum := sha256.Sum256(rest)
					return []string{fmt.Sprintf("%d bytes sha256 %x", len(rest), sum[:8])}, err == nil
				}
				more, ended := alReadToEnd(r, 10*time.Second)
				return append(whole, more...), ended
			}
			proxied, pended := run(r)
			if tc.leave == half {
				direct, dended := run(dialRaw(t, txDirectURL()))
				if !dended {
					t.Fatal("PostgreSQL kept the half-closed session open")
				}
				if !pended {
					t.Fatalf("the proxy kept the half-closed session open after %d messages", len(proxied))
				}
				lgCompare(t, tc.name, proxied, direct)
			}
			alClientsGone(t, p, 10*time.Second)
			waitActive(t.Context(), t, admin, "al-", 0, 10*time.Second)
			lgCleanBackends(t.Context(), t, p, 1)
		})
	}
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d", code)
	}
}

// TestAttackLoopManyRequestThenClose: 1000 parked clients each send one
// request at once and leave right behind it, a third each by a reset, a
// close and a half-close, on a pool of 4: most requests wait in the
// loop's own queue when their client goes. A half-closing client gets the
// whole reply and the end, also when it half-closed while its request
// waited for a backend (clientgone.go: only a reset drops a waiting
// request); never part of a reply, never a connection left open. Then no
// client is listed or waiting, no backend is held, and the pool's four
// backends serve clean transactions.
func TestAttackLoopManyRequestThenClose(t *testing.T) {
	const n, dialers = 1000, 16
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 4,
		WithEnv("PGSIDECAR_AUTH__METHOD", "trust"),
		WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", strconv.Itoa(n+10)),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	t.Cleanup(func() { lgLogLoop(t, p) })
	rs := make([]*rawClient, n)
	var wg sync.WaitGroup
	errs := newTxErrors()
	next := make(chan int)
	for range dialers {
		wg.Add(1)
		go func() { // ends when next is closed
			defer wg.Done()
			for i := range next {
				pc, err := pgconn.Connect(ctx, txProxyURL(p))
				if err == nil {
					err = pc.SyncConn(ctx)
				}
				if err != nil {
					errs.add("client %d: %v", i, err)
					continue
				}
				conn := pc.Conn()
				rs[i] = &rawClient{pc: pc, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Cleanup(func() {
		for _, r := range rs {
			if r != nil {
				_ = r.conn.Close()
			}
		}
	})
	errs.report(t, "logins")
	errs = newTxErrors()
	waitParked(t, p, n)
	before := memNow(t, p)

	start := make(chan struct{})
	var mu sync.Mutex
	answered := 0
	for i, r := range rs {
		wg.Add(1)
		go func() { // ends when its client has left (a half-closer: read to the end, bounded)
			defer wg.Done()
			req := encodeMsgs(t, &pgproto3.Query{String: fmt.Sprintf("SELECT 'al-mass', %d, pg_sleep(0.002)", i)})
			<-start
			_ = r.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := r.conn.Write(req); err != nil {
				errs.add("client %d: write: %v", i, err)
				return
			}
			switch i % 3 {
			case 0:
				_ = r.conn.(*net.TCPConn).SetLinger(0)
				_ = r.conn.Close()
			case 1:
				_ = r.conn.Close()
			case 2:
				_ = r.conn.(*net.TCPConn).CloseWrite()
				got, ended := alReadToEnd(r, 30*time.Second)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case !ended:
					errs.add("client %d half-closed: the connection stayed open after %d messages", i, len(got))
				case len(got) == 0:
					errs.add("client %d half-closed: the end alone, its request dropped (directly it runs)", i)
				case len(got) == 4 && got[3] == lgMsgString([]byte{'Z', 0, 0, 0, 5, 'I'}) && strings.Contains(got[1], fmt.Sprintf("\\x00\\x00\\x00\\x%02x%d", len(strconv.Itoa(i)), i)):
					answered++
				default:
					errs.add("client %d half-closed: got %q", i, got)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	errs.report(t, "clients leaving right behind their request")
	t.Logf("half-closing clients: %d answered", answered)
	waitFor(t, 30*time.Second, "no client listed, waiting, or holding a backend", func() bool {
		return clientsStat(t, p, "clients_total") == 0 && clientsStat(t, p, "clients_waiting") == 0 &&
			parkedClients(t, p) == 0 && poolStat(t, p, "active") == 0
	})
	admin := txConnect(ctx, t, txDirectURL(), nil)
	waitActive(ctx, t, admin, "al-mass", 0, 10*time.Second)
	lgCleanBackends(ctx, t, p, 4)
	after := memNow(t, p)
	t.Logf("proxy memory with %d parked clients: %v; after they left: %v", n, before, after)
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d", code)
	}
}

// TestAttackLoopSynclessBatches: a parked client's extended-protocol
// batch without a Sync (the loop hands it over: it is no whole request):
// ended by a Flush, then a Sync after a pause; left open with nothing to
// flush it; a lone Flush; and a batch ended by a Flush whose client then
// leaves. The answers are as directly (message types and SQLSTATEs), on
// a pool of one backend, which after each case is held by no one and
// serves a clean transaction.
func TestAttackLoopSynclessBatches(t *testing.T) {
	p := txStartProxy(t, "transaction", 1)
	t.Cleanup(func() { lgLogLoop(t, p) })
	pbe := encodeMsgs(t, &pgproto3.Parse{Query: "SELECT $1::int + 1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{})
	flush := encodeMsgs(t, &pgproto3.Flush{})
	sync := encodeMsgs(t, &pgproto3.Sync{})
	bad := encodeMsgs(t, &pgproto3.Parse{Query: "SELECT nosuchcolumn"}, &pgproto3.Bind{}, &pgproto3.Execute{})
	query := encodeMsgs(t, &pgproto3.Query{String: "SELECT 'q'"})
	type step struct {
		data  []byte
		ready int           // ReadyForQuery to read; 0: read for wait, whatever comes
		wait  time.Duration // with ready 0
	}
	cases := []struct {
		name  string
		steps []step
		leave bool
	}{
		{"flushed, then Sync", []step{{append(pbe, flush...), 0, 300 * time.Millisecond}, {sync, 1, 0}}, false},
		{"unflushed, then Sync", []step{{pbe, 0, 300 * time.Millisecond}, {sync, 1, 0}}, false},
		{"lone Flush, then a query", []step{{flush, 0, 300 * time.Millisecond}, {query, 1, 0}}, false},
		{"failing, flushed, then Sync", []step{{append(bad, flush...), 0, 300 * time.Millisecond}, {sync, 1, 0}}, false},
		{"flushed, then the client leaves", []step{{append(pbe, flush...), 0, 300 * time.Millisecond}}, true},
		{"failing, flushed, then the client leaves", []step{{append(bad, flush...), 0, 300 * time.Millisecond}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func(r *rawClient) string {
				var out []string
				for _, s := range tc.steps {
					r.write(t, s.data)
					if s.ready > 0 {
						out = append(out, alRead(r, s.ready, 10*time.Second))
						continue
					}
					_ = r.conn.SetReadDeadline(time.Now().Add(s.wait))
					var got []string
					for {
						msg, err := r.fe.Receive()
						if err != nil {
							break
						}
						enc, _ := msg.Encode(nil)
						if e, ok := msg.(*pgproto3.ErrorResponse); ok {
							got = append(got, fmt.Sprintf("E(%s %s)", e.Severity, e.Code))
						} else {
							got = append(got, string(enc[:1]))
						}
					}
					out = append(out, strings.Join(got, " "))
				}
				if tc.leave {
					_ = r.conn.Close()
				}
				return strings.Join(out, " | ")
			}
			direct := run(dialRaw(t, txDirectURL()))
			proxied := run(alServed(t, p, 1)[0])
			if proxied != direct {
				t.Errorf("through the proxy: %s\nwant (directly):   %s", proxied, direct)
			}
			if tc.leave {
				alClientsGone(t, p, 10*time.Second)
			} else {
				waitFor(t, 5*time.Second, "no backend held", func() bool { return poolStat(t, p, "active") == 0 })
			}
			lgCleanBackends(t.Context(), t, p, 1)
		})
	}
}

// TestAttackLoopLyingLengthsCostWhatArrives: parked clients each send a
// header claiming close to 1 GiB (a Query, a Bind, a FunctionCall, a
// CopyData, a Describe, a Parse), then 256 KB of it, then go silent for a
// while and leave, by a close (FIN) or a reset. The proxy's memory grows
// with the bytes received, not the claims (8 claims of 1 GiB: less than
// 64 MB more resident, 256 MB more reserved), and afterwards no client is
// listed, no backend held, and the pool's backends are clean (a backend
// left reading the rest of a message is closed, not reused). What each
// client is told is TestLoopGuardHostileInput's and
// TestHugeHeaderBoundedMemory's; this one adds the other message kinds,
// a FIN and a silence before leaving, and eight at once.
func TestAttackLoopLyingLengthsCostWhatArrives(t *testing.T) {
	p := txStartProxy(t, "transaction", 8)
	t.Cleanup(func() { lgLogLoop(t, p) })
	const claim = 1<<30 - 64
	header := func(typ byte, body []byte) []byte {
		h := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[1:], claim+4)
		return append(h, body...)
	}
	cases := []struct {
		name string
		data []byte
		fin  bool
	}{
		{"Query, FIN", header('Q', []byte("SELECT '")), true},
		{"Query, RST", header('Q', []byte("SELECT '")), false},
		{"Bind, FIN", header('B', []byte("\x00\x00\x00\x00\x00\x01\x3f\xff\xff\x00")), true},
		{"FunctionCall, RST", header('F', []byte{0, 0, 0, 42}), false},
		{"CopyData, FIN", header('d', nil), true},
		{"Describe, FIN", header('D', []byte("S")), true},
		{"Parse, RST", header('P', []byte("\x00SELECT '")), false},
		{"Query after a query, FIN", append(encodeMsgs(t, &pgproto3.Query{String: "SELECT 1"}), header('Q', []byte("SELECT '"))...), true},
	}
	rs := alServed(t, p, len(cases))
	before := memNow(t, p)
	stop := memSampler(t, p)
	filler := make([]byte, 256<<10)
	for i := range filler {
		filler[i] = 'x'
	}
	var wg sync.WaitGroup
	for i, tc := range cases {
		wg.Add(1)
		go func() { // ends after its client left (bounded by the deadlines)
			defer wg.Done()
			r := rs[i]
			_ = r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := r.conn.Write(tc.data); err == nil {
				_, _ = r.conn.Write(filler) // may fail: the proxy may have refused the claim
			}
			time.Sleep(1500 * time.Millisecond) // silent: past the park interval
			if tc.fin {
				_ = r.conn.Close()
			} else {
				r.vanish(t)
			}
		}()
	}
	wg.Wait()
	alClientsGone(t, p, 15*time.Second)
	peak := stop()
	t.Logf("proxy before: %v; peak with %d claims of 1 GiB and 256 KB sent each: %v", before, len(cases), peak)
	if peak.rss-before.rss > memLimit(64<<20) || peak.data-before.data > memLimit(256<<20) {
		t.Errorf("proxy memory grew by %d MB resident, %d MB reserved", (peak.rss-before.rss)>>20, (peak.data-before.data)>>20)
	}
	lgCleanBackends(t.Context(), t, p, 8)
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d", code)
	}
}

// TestAttackLoopMalformedBodies: parked clients send whole messages of
// the kinds the loop relays itself (their headers are right) whose
// bodies are wrong: strings without their NUL, a Describe or Close of
// an unknown kind or with no body, Bind and Execute cut short, a Sync with
// a body, a Bind of a statement never prepared. The proxy parses these
// bodies itself (statement names): it must not fail on them, and each
// client gets what a direct connection gets (message types, severities
// and SQLSTATEs), on a pool of one backend that is clean after each.
func TestAttackLoopMalformedBodies(t *testing.T) {
	p := txStartProxy(t, "transaction", 1)
	t.Cleanup(func() { lgLogLoop(t, p) })
	msg := func(typ byte, body string) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{typ}, uint32(len(body)+4)), body...)
	}
	sync := msg('S', "")
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	parse := msg('P', "\x00SELECT 1\x00\x00\x00")
	bind := msg('B', "\x00\x00\x00\x00\x00\x00\x00\x00")
	exec := msg('E', "\x00\x00\x00\x00\x00")
	cases := []struct {
		name string
		data []byte
	}{
		{"Query without NUL", msg('Q', "SELECT 1")},
		{"empty Query body", msg('Q', "")},
		{"Parse without NUL", cat(msg('P', "s1\x00SELECT 1"), sync)},
		{"Parse, name without NUL", cat(msg('P', "s1"), sync)},
		{"Close S without NUL", cat(msg('C', "Sfoo"), sync)},
		{"Close of kind X", cat(msg('C', "Xfoo\x00"), sync)},
		{"Close with no body", cat(msg('C', ""), sync)},
		{"Describe S without NUL", cat(msg('D', "Sfoo"), sync)},
		{"Describe of kind X", cat(msg('D', "Xfoo\x00"), sync)},
		{"Describe with no body", cat(msg('D', ""), sync)},
		{"Bind cut short", cat(parse, msg('B', "\x00\x00\x00"), sync)},
		{"Bind, names without NUL", cat(parse, msg('B', "p"), sync)},
		{"Bind of an unprepared statement", cat(msg('B', "\x00nosuch\x00\x00\x00\x00\x00\x00\x00"), exec, sync)},
		{"Execute cut short", cat(parse, bind, msg('E', "\x00\x00"), sync)},
		{"Sync with a body", msg('S', "xyz")},
		{"good batch, then Sync with a body", cat(parse, bind, exec, msg('S', "x"))},
	}
	rs := alServed(t, p, len(cases))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := func(r *rawClient) string {
				r.write(t, tc.data)
				return alRead(r, 1, 3*time.Second)
			}
			direct := run(dialRaw(t, txDirectURL()))
			proxied := run(rs[i])
			if proxied != direct {
				t.Errorf("through the proxy: %s\nwant (directly):   %s", proxied, direct)
			}
			if code, _ := p.Health(t); code != 200 {
				t.Fatalf("/health %d", code)
			}
			waitFor(t, 5*time.Second, "no backend held", func() bool { return poolStat(t, p, "active") == 0 })
			lgCleanBackends(t.Context(), t, p, 1)
		})
	}
}
