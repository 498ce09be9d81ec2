package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Identity and errors in transaction mode (issue 6, points 7-9): what a
// client sees of its session's identity, and how it is told its session
// ended, must match a direct connection.

// txReadUntilClose reads backend messages from conn until it is closed (or
// 10 s pass) and describes each: "E FATAL 57P01 message" for errors, the
// type letter for others, and "EOF" at the end.
func txReadUntilClose(conn net.Conn) []string {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, io.Discard)
	var got []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
				strings.Contains(err.Error(), "connection reset") {
				return append(got, "EOF")
			}
			return append(got, "read error: "+err.Error())
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, fmt.Sprintf("E %s %s %s", m.Severity, m.Code, m.Message))
		default:
			got = append(got, fmt.Sprintf("%T", msg))
		}
	}
}

// txHijack connects to url with pgconn, runs setup (simple protocol), and
// takes over the raw socket.
func txHijack(ctx context.Context, t *testing.T, url, setup string) (net.Conn, string) {
	t.Helper()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	var pid string
	if setup != "" {
		txMustExec(ctx, t, conn, setup)
		pid = txMustOne(ctx, t, conn, "SELECT pg_backend_pid()")
	}
	hj, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hj.Conn.Close() })
	return hj.Conn, pid
}

// TestTxUnknownMessageType: a message type PostgreSQL does not know, sent
// inside a transaction, gets PostgreSQL's own answer (FATAL 08P01 "invalid
// frontend message type", then the close) without reaching the server, and
// the backend (its state known: one open transaction) is rolled back and
// stays in the pool of one for the two other clients.
func TestTxUnknownMessageType(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	other := txConnect(ctx, t, txProxyURL(p), nil)
	third := txConnect(ctx, t, txProxyURL(p), nil)
	before := txMustOne(ctx, t, other, "SELECT pg_backend_pid()")

	const setup = "BEGIN; SET LOCAL statement_timeout = '123s'"
	raw := []byte{'y', 0, 0, 0, 5, 'x'}
	results := map[string][]string{}
	for name, url := range map[string]string{"direct": txDirectURL(), "proxy": txProxyURL(p)} {
		conn, _ := txHijack(ctx, t, url, setup)
		if _, err := conn.Write(raw); err != nil {
			t.Fatal(err)
		}
		results[name] = txReadUntilClose(conn)
	}
	t.Logf("directly: %q; through the proxy: %q", results["direct"], results["proxy"])
	if strings.Join(results["direct"], "|") != strings.Join(results["proxy"], "|") {
		t.Errorf("unknown message type: directly %q, through the proxy %q", results["direct"], results["proxy"])
	}
	if len(results["proxy"]) != 2 || !strings.HasPrefix(results["proxy"][0], "E FATAL 08P01") {
		t.Errorf("through the proxy: want one FATAL 08P01 and the close, got %q", results["proxy"])
	}

	for _, c := range []*pgconn.PgConn{other, third} {
		if pid := txMustOne(ctx, t, c, "SELECT pg_backend_pid()"); pid != before {
			t.Errorf("the backend was replaced (pid %s, before %s): the unknown message cost a server connection", pid, before)
		}
		if v := txMustOne(ctx, t, c, "SHOW statement_timeout"); v != "0" {
			t.Errorf("next client sees statement_timeout %q from the closed client's transaction", v)
		}
	}
}

// TestTxServerFatalRelayedOnce: when the server ends a backend under a
// client (pg_terminate_backend inside the client's transaction), the client
// gets the server's FATAL 57P01 and the close, exactly as directly: no
// second error from the proxy. Pool of 2, three clients.
func TestTxServerFatalRelayedOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	results := map[string][]string{}
	for _, name := range []string{"direct", "proxy"} {
		url := txDirectURL()
		if name == "proxy" {
			url = txProxyURL(p)
		}
		conn, pid := txHijack(ctx, t, url, "BEGIN")
		txMustExec(ctx, t, admin, "SELECT pg_terminate_backend("+pid+")")
		results[name] = txReadUntilClose(conn)
	}
	t.Logf("directly: %q; through the proxy: %q", results["direct"], results["proxy"])
	if strings.Join(results["direct"], "|") != strings.Join(results["proxy"], "|") {
		t.Errorf("server FATAL: directly %q, through the proxy %q", results["direct"], results["proxy"])
	}
	// The other clients go on on the remaining and a new backend.
	for i := range 3 {
		c := txConnect(ctx, t, txProxyURL(p), nil)
		if v := txMustOne(ctx, t, c, "SELECT "+strconv.Itoa(i)); v != strconv.Itoa(i) {
			t.Errorf("client %d after the FATAL: got %s", i, v)
		}
	}
}

// TestMalformedFirstPacketSilent: a first packet PostgreSQL cannot frame
// (impossible length, junk, an HTTP request, one cut short) is answered by
// closing without a reply, directly and through the proxy alike.
func TestMalformedFirstPacketSilent(t *testing.T) {
	p := txStartProxy(t, "transaction", 1)
	direct := net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port))
	cases := map[string][]byte{
		"length 2":     {0, 0, 0, 2, 0, 3, 0, 0},
		"junk":         []byte("hello, is this redis?\r\n"),
		"http":         []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"negative":     {0x80, 0, 0, 0},
		"cut short":    {0, 0, 0, 40, 0, 3, 0, 0},
		"huge length":  {0x7f, 0, 0, 0, 0, 3, 0, 0},
		"length 10005": {0, 0, 0x27, 0x15, 0, 3, 0, 0},
	}
	read := func(addr string, in []byte) string {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.Write(in)
		if in[0] == 0 && in[3] == 40 {
			c.(*net.TCPConn).CloseWrite() // the client hangs up mid-packet
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil && !strings.Contains(err.Error(), "connection reset") {
			return fmt.Sprintf("%q then %v", b, err)
		}
		return fmt.Sprintf("%q then close", b)
	}
	for name, in := range cases {
		got, want := read(p.Addr, in), read(direct, in)
		if got != want {
			t.Errorf("%s: directly %s, through the proxy %s", name, want, got)
		} else {
			t.Logf("%s: %s", name, got)
		}
	}
	if !p.Logs.ContainsWithin("malformed startup packet", 2*time.Second) {
		t.Errorf("the proxy did not log the malformed packets")
	}
}

// TestSessionModeBackendKey: in session mode the client gets its backend's
// own PID: pg_backend_pid() equals the key's pid, the pid is a real
// backend, a cancel (sent to the proxy, as drivers do) cancels the query,
// and pg_terminate_backend of its own pid ends it with PostgreSQL's one
// FATAL, as directly. Pool of 2: a third client gets the backend the
// terminated one freed.
func TestSessionModeBackendKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "session", 2)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	c1 := txConnect(ctx, t, txProxyURL(p), nil)
	c2 := txConnect(ctx, t, txProxyURL(p), nil)
	for i, c := range []*pgconn.PgConn{c1, c2} {
		pid := txMustOne(ctx, t, c, "SELECT pg_backend_pid()")
		if pid != strconv.FormatUint(uint64(c.PID()), 10) {
			t.Errorf("client %d: pg_backend_pid() %s, BackendKeyData pid %d", i, pid, c.PID())
		}
		if n := txMustOne(ctx, t, admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+pid); n != "1" {
			t.Errorf("client %d: pid %s is not a backend", i, pid)
		}
	}

	// Cancel through the proxy with the client's key (the backend's pid).
	res := make(chan error, 1)
	go func() { // ends when the query does (cancelled, or after 20 s)
		_, err := c1.Exec(ctx, "SELECT pg_sleep(20)").ReadAll()
		res <- err
	}()
	waitFor(t, 10*time.Second, "pg_sleep to start", func() bool {
		v, _ := txOne(ctx, admin, fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND query LIKE 'SELECT pg_sleep%%'", c1.PID()))
		return v == "1"
	})
	start := time.Now()
	if err := c1.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-res; sqlState(err) != "57014" {
		t.Fatalf("cancelled query: %v, want 57014", err)
	}
	t.Logf("cancel took %v", time.Since(start).Round(time.Millisecond))

	// pg_terminate_backend of its own pid: one FATAL, as directly. c2
	// leaves to make room.
	txClosePgconn(c2)
	results := map[string][]string{}
	for name, url := range map[string]string{"direct": txDirectURL(), "proxy": txProxyURL(p)} {
		conn, pid := txHijack(ctx, t, url, "SELECT 1")
		q, _ := (&pgproto3.Query{String: "SELECT pg_terminate_backend(" + pid + ")"}).Encode(nil)
		conn.Write(q)
		results[name] = txReadUntilClose(conn)
	}
	if strings.Join(results["direct"], "|") != strings.Join(results["proxy"], "|") {
		t.Errorf("terminating its own backend: directly %q, through the proxy %q", results["direct"], results["proxy"])
	} else {
		t.Logf("terminating its own backend: %q", results["proxy"])
	}
	// The pool serves the next client.
	c3 := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, c3, "SELECT 1")
}

// TestTxMintedPIDsAbovePidMax: in transaction mode the PIDs handed to
// clients are minted by the proxy above Linux's largest pid_max, so none
// can be a PostgreSQL backend's: a client's pg_terminate_backend of "its
// own" pid reaches nobody (PostgreSQL warns that it is not a backend).
func TestTxMintedPIDsAbovePidMax(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	const maxPID = 4194304 // Linux PID_MAX_LIMIT
	seen := map[uint32]bool{}
	var conns []*pgconn.PgConn
	for range 30 {
		c := txConnect(ctx, t, txProxyURL(p), nil)
		if c.PID() <= maxPID || c.PID() > 1<<31-1 || seen[c.PID()] {
			t.Errorf("minted pid %d: want unique, above %d and at most 2^31-1", c.PID(), maxPID)
		}
		seen[c.PID()] = true
		conns = append(conns, c)
	}
	other := conns[1]
	before := txMustOne(ctx, t, other, "SELECT pg_backend_pid()")
	if v := txMustOne(ctx, t, conns[0], fmt.Sprintf("SELECT pg_terminate_backend(%d)", conns[0].PID())); v != "f" {
		t.Errorf("pg_terminate_backend of the minted pid returned %s", v)
	}
	if after := txMustOne(ctx, t, other, "SELECT pg_backend_pid()"); after != before {
		t.Errorf("the shared backend changed from %s to %s", before, after)
	}
}
