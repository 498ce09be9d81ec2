package e2e

// Hostile clients against startup, authentication, client TLS and the
// admin console: raw bytes over net.Conn, compared with what PostgreSQL
// itself answers the same bytes wherever PostgreSQL has an answer, and
// after each attack the proxy still counts its slots right and a normal
// login still works.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// aaStep is one write of a raw exchange. single: the answer expected is
// one byte ('S' or 'N', to an SSLRequest or GSSENCRequest), not a message.
type aaStep struct {
	out    []byte
	single bool
}

// aaPacket frames a startup packet: its length, then code, then body.
func aaPacket(code uint32, body ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, body...)
}

// aaParams is a startup packet body of name/value pairs and the terminator.
func aaParams(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

// aaStartup is a StartupMessage of protocol major.minor with kv.
func aaStartup(major, minor uint16, kv ...string) []byte {
	return aaPacket(uint32(major)<<16|uint32(minor), aaParams(kv...)...)
}

const (
	aaCodeSSL    = 80877103
	aaCodeGSSEnc = 80877104
	aaCodeCancel = 80877102
)

// aaExchange runs steps against addr and describes, one word per answer,
// what came back: "S" / "N" for single bytes, "E:<SQLSTATE>" for an
// ErrorResponse, "R<n>" for an authentication request, "v" for
// NegotiateProtocolVersion, and last "closed" or "open" (nothing more within
// a short wait). It returns the error messages too.
func aaExchange(t *testing.T, addr string, steps ...aaStep) (shape string, msgs []string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var words []string
	for i, st := range steps {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(st.out); err != nil {
			words = append(words, "write-failed")
			return strings.Join(words, " "), msgs
		}
		if !st.single {
			continue
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			words = append(words, "closed")
			return strings.Join(words, " "), msgs
		}
		if b[0] != 'S' && b[0] != 'N' {
			// A message instead (an ErrorResponse): read it below.
			return aaReadRest(c, io.MultiReader(bytes.NewReader(b[:]), c), words, msgs)
		}
		words = append(words, string(b[:]))
		if i == len(steps)-1 {
			break
		}
	}
	return aaReadRest(c, c, words, msgs)
}

// aaReadRest reads messages until the connection closes, or nothing comes
// for 500ms, or an authentication request (the login goes on: "open").
func aaReadRest(c net.Conn, r io.Reader, words, msgs []string) (string, []string) {
	var hdr [5]byte
	for {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				words = append(words, "open")
			} else {
				words = append(words, "closed")
			}
			return strings.Join(words, " "), msgs
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<20 {
			words = append(words, fmt.Sprintf("bad-length(%c,%d)", hdr[0], n))
			return strings.Join(words, " "), msgs
		}
		body := make([]byte, n)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(r, body); err != nil {
			words = append(words, "truncated")
			return strings.Join(words, " "), msgs
		}
		switch hdr[0] {
		case 'E':
			var e pgproto3.ErrorResponse
			_ = e.Decode(body)
			words = append(words, "E:"+e.Code)
			msgs = append(msgs, e.Code+" "+e.Message)
		case 'R':
			words = append(words, "R"+strconv.Itoa(int(binary.BigEndian.Uint32(body))))
		case 'v':
			words = append(words, "v")
		default:
			words = append(words, string(hdr[:1]))
		}
	}
}

// aaMsg frames a frontend message of type typ.
func aaMsg(typ byte, body []byte) []byte {
	b := append([]byte{typ}, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// aaSASLInitial is a SASLInitialResponse for mech with data.
func aaSASLInitial(mech, data string) []byte {
	body := append([]byte(mech), 0)
	body = binary.BigEndian.AppendUint32(body, uint32(len(data)))
	return aaMsg('p', append(body, data...))
}

// aaSCRAM drives a SCRAM login as user (database app) on addr, password
// being what the client proves. initial makes the first message from the
// client-first-message a real client would send (nil: send it as it is);
// final makes the second from the real client-final-message and the
// server-first-message (nil: as it is). It returns the shape of what came
// back (aaReadRest's words, "R11" for the server-first-message) and the
// error messages.
func aaSCRAM(t *testing.T, addr, user, password string, initial func(first string) []byte, final func(final, serverFirst string) []byte) (string, []string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(aaStartup(3, 0, "user", user, "database", "app")); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(c, c)
	msg, err := fe.Receive()
	if _, ok := msg.(*pgproto3.AuthenticationSASL); err != nil || !ok {
		t.Fatalf("%s: want AuthenticationSASL, got %#v, %v", addr, msg, err)
	}
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := client.NewConversation()
	first, _ := conv.Step("")
	out := aaSASLInitial("SCRAM-SHA-256", first)
	if initial != nil {
		out = initial(first)
	}
	if _, err := c.Write(out); err != nil {
		return "write-failed", nil
	}
	msg, err = fe.Receive()
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if err != nil || !ok {
		var words, msgs []string
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			words, msgs = append(words, "E:"+e.Code), append(msgs, e.Code+" "+e.Message)
		} else if err != nil {
			words = append(words, "closed")
			return strings.Join(words, " "), msgs
		}
		return aaReadRest(c, c, words, msgs)
	}
	serverFirst := string(cont.Data)
	if initial != nil {
		// The client-first-message was not the conversation's own.
		return "R11 stop", nil
	}
	fin, err := conv.Step(serverFirst)
	if err != nil {
		t.Fatalf("client-final: %v", err)
	}
	out = aaMsg('p', []byte(fin))
	if final != nil {
		out = final(fin, serverFirst)
	}
	if _, err := c.Write(out); err != nil {
		return "R11 write-failed", nil
	}
	return aaReadRest(c, c, []string{"R11"}, nil)
}

// aaLoginRaw logs in to url with pgconn and returns the raw connection
// (pgconn.Hijack), ready for a message; closed at cleanup.
func aaLoginRaw(t *testing.T, url string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("login %s: %v", redact(url), err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return hc.Conn
}

// aaFatalThenClose reads what c answers to out: it must be one FATAL
// ErrorResponse and then the end of the connection. It returns
// "SQLSTATE message", or fails.
func aaFatalThenClose(t *testing.T, c net.Conn, what string, out []byte) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(out); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	fe := pgproto3.NewFrontend(c, c)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("%s: no answer, the connection just ended: %v", what, err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" {
		t.Fatalf("%s: got %#v, want a FATAL ErrorResponse", what, msg)
	}
	if msg, err := fe.Receive(); err == nil {
		t.Fatalf("%s: after the FATAL: %#v, want the connection closed", what, msg)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: after the FATAL: %v, want the connection closed", what, err)
	}
	return e.Code + " " + e.Message
}

// TestAttackAuthConsoleUndecodableMessage: a message the admin console
// cannot decode (longer than the 10000 bytes a console message may be, of
// a type the protocol does not have, a Query without its terminating NUL)
// ends the session with FATAL 08P01 that says why, as PostgreSQL ends a
// session with "invalid frontend message type" (compared with a direct
// connection), and is logged; the session never just vanishes. The slot
// of each session is given back: max_client_conn logins work after.
func TestAttackAuthConsoleUndecodableMessage(t *testing.T) {
	const maxClients = 2
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", strconv.Itoa(maxClients)))
	console := p.URL("app", "app", "pgsidecar")

	unknownType := aaMsg('z', nil)
	direct := aaFatalThenClose(t, aaLoginRaw(t, pg.URL("app", "app", "app")), "PostgreSQL: unknown type", unknownType)
	got := aaFatalThenClose(t, aaLoginRaw(t, console), "console: unknown type", unknownType)
	if got[:5] != direct[:5] || !strings.Contains(got, "z") {
		t.Errorf("console, message type 'z': %q; PostgreSQL answers %q", got, direct)
	}
	for _, tc := range []struct {
		name string
		out  []byte
	}{
		{"a Query of 20000 bytes", aaMsg('Q', append([]byte("SHOW POOLS"+strings.Repeat(" ", 20000)), 0))},
		{"a Query without its NUL", aaMsg('Q', []byte("SHOW POOLS"))},
	} {
		if got := aaFatalThenClose(t, aaLoginRaw(t, console), "console: "+tc.name, tc.out); !strings.HasPrefix(got, "08P01 ") {
			t.Errorf("console, %s: %q, want 08P01", tc.name, got)
		}
	}
	if !p.Logs.ContainsWithin("admin console: invalid message", 2*time.Second) {
		t.Errorf("the refused console messages are not logged")
	}
	aaLoginsStillWork(t, p, maxClients)
}

// aaLoginsStillWork checks that the proxy counts no connection as logging
// in any more and that n clients (max_client_conn) log in and query at once.
func aaLoginsStillWork(t *testing.T, p *Proxy, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, "clients_logging_in back to 0", func() bool { return clientsStat(t, p, "clients_logging_in") == 0 })
	waitFor(t, 10*time.Second, "clients_total back to 0", func() bool { return clientsStat(t, p, "clients_total") == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var conns []*pgconn.PgConn
	defer func() {
		for _, c := range conns {
			c.Close(ctx)
		}
	}()
	for i := 0; i < n; i++ {
		c, err := pgconn.Connect(ctx, p.AppURL())
		if err != nil {
			t.Fatalf("login %d of %d after the attack: %v", i+1, n, err)
		}
		conns = append(conns, c)
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			t.Fatalf("query %d of %d after the attack: %v", i+1, n, err)
		}
	}
}

// TestAttackAuthSCRAMUnboundChannelBindingAttribute: a client that chose
// SCRAM-SHA-256 without channel binding ("n,," in its first message) must
// send c=biws in its final one. Anything else is a malformed message, not
// a failed channel binding check (there is no binding, and in plain text
// no certificate): PostgreSQL answers 08P01 "unexpected SCRAM
// channel-binding attribute in client-final-message", and so must the
// proxy, not 28000 with a hint about TLS-intercepting middleboxes.
// Compared with a direct connection; the login works after.
func TestAttackAuthSCRAMUnboundChannelBindingAttribute(t *testing.T) {
	p := StartProxy(t)
	for _, c := range []string{"eSws" /* "y,," */, "Zm9vLCw=" /* "foo,," */, "cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAAA" /* "p=tls-server-end-point,,\0\0\0" */} {
		final := func(f, _ string) []byte { return aaMsg('p', []byte("c="+c+f[strings.Index(f, ",r="):])) }
		wantShape, want := aaSCRAM(t, pg.Addr(), "app", "app", nil, final)
		gotShape, got := aaSCRAM(t, p.Addr, "app", "app", nil, final)
		if wantShape != "R11 E:08P01 closed" {
			t.Fatalf("PostgreSQL answers c=%s with %s %q: the test's premise does not hold", c, wantShape, want)
		}
		if gotShape != wantShape || len(got) != 1 || got[0] != want[0] {
			t.Errorf("c=%s after n,,: proxy %s %q, PostgreSQL %s %q", c, gotShape, got, wantShape, want)
		}
	}
	aaLoginsStillWork(t, p, 1)
}

// TestAttackAuthUnsupportedProtocolCode: a startup packet of a protocol
// the server does not speak (4.0; 1234.5677, a code beside the special
// request codes; an SSLRequest again after the 'N', which PostgreSQL reads
// as protocol 1234.5679 once negotiation is over) is refused with FATAL
// 0A000 (feature not supported), the code PostgreSQL uses for
// "unsupported frontend protocol", and the connection closed. Compared
// with a direct connection (tls.mode disable on both sides). Protocol 2.0
// is left out: PostgreSQL answers it in the version-2 format.
func TestAttackAuthUnsupportedProtocolCode(t *testing.T) {
	p := StartProxy(t)
	for _, tc := range []struct {
		name  string
		steps []aaStep
	}{
		{"protocol 4.0", []aaStep{{out: aaStartup(4, 0, "user", "app", "database", "app")}}},
		{"protocol 1234.5677", []aaStep{{out: aaPacket(1234<<16 | 5677)}}},
		{"a second SSLRequest", []aaStep{{out: aaPacket(aaCodeSSL), single: true}, {out: aaPacket(aaCodeSSL), single: true}}},
	} {
		wantShape, want := aaExchange(t, pg.Addr(), tc.steps...)
		if !strings.HasSuffix(wantShape, "E:0A000 closed") {
			t.Fatalf("%s: PostgreSQL answers %s %q: the test's premise does not hold", tc.name, wantShape, want)
		}
		if gotShape, got := aaExchange(t, p.Addr, tc.steps...); gotShape != wantShape {
			t.Errorf("%s: proxy %s %q, PostgreSQL %s %q", tc.name, gotShape, got, wantShape, want)
		}
	}
	aaLoginsStillWork(t, p, 1)
}

// TestAttackAuthBadStartupFloodLogIsRateLimited: anyone can send the port
// a startup packet the proxy refuses with an answer (a protocol it does
// not speak, no user name, a malformed CancelRequest, an options switch it
// refuses) as often as they like, like the junk it closes in silence. Each
// such client still gets its ErrorResponse, but the log says so at most
// once per 10 s with the number it left out, as for junk: a flood must not
// flood the log. Bounded: 3 x 40 connections.
func TestAttackAuthBadStartupFloodLogIsRateLimited(t *testing.T) {
	p := StartProxy(t)
	const n = 40
	kinds := []struct {
		name string
		out  []byte
		code string
	}{
		{"protocol 4.0", aaStartup(4, 0, "user", "app"), "0A000"},
		{"no user", aaStartup(3, 0, "database", "app"), "28000"},
		{"CancelRequest of 12 bytes", aaPacket(aaCodeCancel, 0, 0, 0, 1), "08P01"},
	}
	before := p.Logs.Count(`"msg":"client rejected"`)
	for _, k := range kinds {
		for i := 0; i < n; i++ {
			shape, msgs := aaExchange(t, p.Addr, aaStep{out: k.out})
			if shape != "E:"+k.code+" closed" {
				t.Fatalf("%s, attempt %d: %s %q, want E:%s closed", k.name, i+1, shape, msgs, k.code)
			}
		}
	}
	// One line per interval; the run may straddle an interval's end.
	if got := p.Logs.Count(`"msg":"client rejected"`) - before; got > 2*len(kinds) {
		t.Errorf("%d bad startup packets were logged in %d lines, want them rate limited", n*len(kinds), got)
	}
	aaLoginsStillWork(t, p, 1)
}

// TestAttackAuthThrottledLoginsLogIsRateLimited: an address that keeps
// trying after failed logins is refused at once with 28000 (the
// failed-login brake) while its wait would outlast the login timeout. That
// refusal is exactly what a password-guessing flood gets, as fast as it
// can connect: each attempt is told and counted (logins_throttled), but
// the log says so at most once per 10 s with the number left out, like
// the warning about an address reaching the maximum delay. Then the
// address logs in with the right password. Bounded: 50 attempts.
func TestAttackAuthThrottledLoginsLogIsRateLimited(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY_LOOPBACK", "true"),
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY", "500ms"),
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY_MAX", "8s"),
		WithEnv("PGSIDECAR_POOL__CLIENT_LOGIN_TIMEOUT", "3s"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		_, err := pgconn.Connect(ctx, p.URL("app", "wrong", "app"))
		if got := sqlState(err); got != "28P01" {
			t.Fatalf("wrong password %d: %v, want 28P01", i+1, err)
		}
	}
	const n = 50
	refused := 0
	for i := 0; i < n; i++ {
		shape, msgs := aaExchange(t, p.Addr, aaStep{out: aaStartup(3, 0, "user", "app", "database", "app")})
		if shape == "E:28000 closed" && strings.Contains(msgs[0], "too many failed logins") {
			refused++
		}
	}
	if refused < n/2 {
		t.Fatalf("only %d of %d attempts after 3 failures were refused by the brake: the test's premise does not hold", refused, n)
	}
	if got := p.Logs.Count("too many failed logins"); got > 2 {
		t.Errorf("%d refused attempts were logged in %d lines, want them rate limited", refused, got)
	}
	stats, _ := p.Stats(t)["clients"].(map[string]any)
	if got, _ := num(stats, "logins_throttled"); int(got) < refused {
		t.Errorf("logins_throttled %v, want at least the %d refusals", got, refused)
	}
	// The brake lets the address in once its wait fits the login timeout.
	var err error
	if !testEventually(20*time.Second, func() bool {
		var c *pgconn.PgConn
		if c, err = pgconn.Connect(ctx, p.AppURL()); err == nil {
			c.Close(ctx)
			return true
		}
		time.Sleep(500 * time.Millisecond)
		return false
	}) {
		t.Fatalf("the right password is still refused: %v", err)
	}
	aaLoginsStillWork(t, p, 1)
}

// TestAttackAuthPassthroughNonUTF8RoleName: under auth.passthrough a user
// name that is not valid UTF-8 is no role the auth query can find (the
// server refuses such bytes as a parameter: 22021), and must be refused
// like any unknown role: the same SCRAM exchange and 28P01, as PostgreSQL
// answers directly (compared). Answering 08006 "could not look up the
// password" instead tells the client something else went on, and warns
// the operator of an unreachable database at every such attempt. The
// role still logs in after.
func TestAttackAuthPassthroughNonUTF8RoleName(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw")
	p := startPassthroughProxy(t, "30s")
	for _, user := range []string{"\xff\xfe", "al\xe9ice"} {
		wantShape, want := aaSCRAM(t, pg.Addr(), user, "alice-pw", nil, nil)
		if wantShape != "R11 E:28P01 closed" {
			t.Fatalf("user %q directly: %s %q: the test's premise does not hold", user, wantShape, want)
		}
		if gotShape, got := aaSCRAMOrRefusal(t, p.Addr, user, "alice-pw"); gotShape != wantShape {
			t.Errorf("user %q: proxy %s %q, PostgreSQL %s %q", user, gotShape, got, wantShape, want)
		}
	}
	if p.Logs.ContainsWithin("looking up the role's password failed", time.Second) {
		t.Errorf("a user name that is not UTF-8 was logged as a failed lookup")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if role, err := loginUser(ctx, p.URL("alice", "alice-pw", "app")); err != nil || role != "alice" {
		t.Errorf("alice after the attempts: %q, %v", role, err)
	}
}

// aaSCRAMOrRefusal is aaSCRAM, or the shape of an ErrorResponse sent in
// place of the AuthenticationSASL request.
func aaSCRAMOrRefusal(t *testing.T, addr, user, password string) (string, []string) {
	t.Helper()
	shape, msgs := aaExchange(t, addr, aaStep{out: aaStartup(3, 0, "user", user, "database", "app")})
	if !strings.HasPrefix(shape, "R10") {
		return shape, msgs
	}
	return aaSCRAM(t, addr, user, password, nil, nil)
}

// TestAttackAuthSCRAMMalformedProof: a client-final-message whose proof
// is not a SHA-256 digest (too short, too long, not base64) is a
// malformed message: PostgreSQL answers 08P01 "malformed SCRAM message"
// ("Malformed proof in client-final-message."). The proxy answers 08P01
// too, and its message says what was wrong, not the SCRAM library's
// internal error ("xorBytes arguments must have equal length"), which
// the client was given before. The login works after.
func TestAttackAuthSCRAMMalformedProof(t *testing.T) {
	p := StartProxy(t)
	for _, proof := range []string{"AAAA", strings.Repeat("A", 64), "!!!!"} {
		final := func(f, _ string) []byte { return aaMsg('p', []byte(f[:strings.LastIndex(f, ",p=")+3]+proof)) }
		wantShape, _ := aaSCRAM(t, pg.Addr(), "app", "app", nil, final)
		gotShape, got := aaSCRAM(t, p.Addr, "app", "app", nil, final)
		if wantShape != "R11 E:08P01 closed" {
			t.Fatalf("PostgreSQL answers proof %q with %s: the test's premise does not hold", proof, wantShape)
		}
		if gotShape != wantShape || len(got) != 1 || got[0] != "08P01 invalid SCRAM client-final-message: malformed proof" {
			t.Errorf("proof %q: proxy %s %q, want %s and a message naming the malformed proof", proof, gotShape, got, wantShape)
		}
	}
	aaLoginsStillWork(t, p, 1)
}

// TestAttackAuthPassthroughLookupFailureLogIsRateLimited: under
// auth.passthrough, a password lookup that fails (the auth query cannot
// run: the database is down, or here the query names no table) fails
// every login, and any client can make as many as it likes: each still
// gets its 08006, but the proxy's warning about it is written at most
// once per 10 s, with the number left out, not once per login.
func TestAttackAuthPassthroughLookupFailureLogIsRateLimited(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw")
	p := startPassthroughProxy(t, "30s",
		WithEnv("PGSIDECAR_AUTH__QUERY", "SELECT usename, passwd FROM no_such_table WHERE usename = $1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const logins = 12
	for i := range logins {
		c, err := pgconn.Connect(ctx, p.URL("alice", "alice-pw", "app"))
		if err == nil {
			c.Close(ctx)
			t.Fatalf("login %d succeeded with an auth query that cannot run", i+1)
		}
		if code := sqlState(err); code != "08006" {
			t.Fatalf("login %d: %v (SQLSTATE %s), want 08006", i+1, err, code)
		}
	}
	if got := p.Logs.Count("looking up the role's password failed"); got < 1 || got > 2 {
		t.Errorf("%d failed logins logged the failed lookup %d times, want once (at most twice, should the 10 s interval end during the test)", logins, got)
	}
}
