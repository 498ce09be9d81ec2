package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// startupResult is what the server side of a startup test produced.
type startupResult struct {
	sm  *startupMessage
	err error
}

// readStartup is admit without TLS (every SSLRequest answered 'N'), for
// the tests of the startup packet itself. The proxy has no such path: its
// one admission is admit, called by serveConn.
func readStartup(conn net.Conn, maxBodyLen int) (*startupMessage, error) {
	_, sm, err := admit(conn, maxBodyLen, nil)
	return sm, err
}

// startupPipe runs readStartup on one end of a net.Pipe in a goroutine
// owned by the test and returns the client end and the result channel. The
// cleanup closes both ends, which ends the goroutine if the test did not,
// and checks that nothing leaked.
func startupPipe(t *testing.T, maxBodyLen int) (net.Conn, <-chan startupResult) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	client, server := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = client.SetDeadline(deadline)
	_ = server.SetDeadline(deadline)
	done := make(chan startupResult, 1) // buffered: the send never blocks
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		sm, err := readStartup(server, maxBodyLen)
		done <- startupResult{sm, err}
	}()
	t.Cleanup(func() {
		client.Close()
		server.Close() // ends readStartup if the test did not
		<-finished
		goleak.VerifyNone(t, opt)
	})
	return client, done
}

// startupWait returns the server's result, failing the test after 5 s.
func startupWait(t *testing.T, ch <-chan startupResult) startupResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("readStartup did not return")
		return startupResult{}
	}
}

// startupWrite writes b to the client end from a goroutine, since net.Pipe
// writes block until the server reads them; the returned channel carries
// the write's error.
func startupWrite(c net.Conn, b []byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		ch <- err
	}()
	return ch
}

// startupEncode encodes a frontend message the way a client sends it.
func startupEncode(t *testing.T, msg pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := msg.Encode(nil)
	if err != nil {
		t.Fatalf("encode %T: %v", msg, err)
	}
	return b
}

// startupRawPacket frames body as a startup packet (length prefix only).
func startupRawPacket(body []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	return append(out, body...)
}

// startupReadByte reads the single-byte answer to SSLRequest/GSSENCRequest.
func startupReadByte(t *testing.T, c net.Conn) byte {
	t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("read negotiation answer: %v", err)
	}
	return b[0]
}

// startupWantPgError asserts err is a FATAL *pgError with code whose
// message contains substr.
func startupWantPgError(t *testing.T, err error, code, substr string) *pgError {
	t.Helper()
	var perr *pgError
	if !errors.As(err, &perr) {
		t.Fatalf("want *pgError %s, got %T %v", code, err, err)
	}
	if perr.Code != code || perr.Severity != "FATAL" {
		t.Fatalf("want FATAL %s, got %s %s: %s", code, perr.Severity, perr.Code, perr.Message)
	}
	if !strings.Contains(perr.Message, substr) {
		t.Fatalf("message %q does not contain %q", perr.Message, substr)
	}
	if perr.Hint == "" {
		t.Fatalf("error %q has no hint", perr.Message)
	}
	return perr
}

func TestReadStartupPlain(t *testing.T) {
	c, res := startupPipe(t, startupMaxPacketLen)
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": "alice", "database": "shop", "application_name": "web", "client_encoding": "UTF8",
	}})
	werr := make(chan error, 1)
	go func() { werr <- fe.Flush() }()
	r := startupWait(t, res)
	if r.err != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("client write: %v", err)
	}
	sm := r.sm
	if sm.cancel || sm.user != "alice" || sm.database != "shop" || sm.backend == nil {
		t.Fatalf("got %+v", sm)
	}
	want := map[string]string{"application_name": "web", "client_encoding": "UTF8"}
	if len(sm.params) != len(want) {
		t.Fatalf("params %v, want %v", sm.params, want)
	}
	for k, v := range want {
		if sm.params[k] != v {
			t.Fatalf("params %v, want %v", sm.params, want)
		}
	}
}

func TestReadStartupDatabaseDefaultsToUser(t *testing.T) {
	for _, params := range []map[string]string{{"user": "bob"}, {"user": "bob", "database": ""}} {
		c, res := startupPipe(t, startupMaxPacketLen)
		w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}))
		r := startupWait(t, res)
		if r.err != nil || <-w != nil {
			t.Fatalf("readStartup: %v", r.err)
		}
		if r.sm.database != "bob" {
			t.Fatalf("database %q, want bob", r.sm.database)
		}
	}
}

func TestReadStartupSSLThenStartup(t *testing.T) {
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.SSLRequest{}))
	if got := startupReadByte(t, c); got != 'N' {
		t.Fatalf("SSLRequest answered %q, want 'N'", got)
	}
	if err := <-w; err != nil {
		t.Fatal(err)
	}
	w = startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	if r.sm.user != "u" || r.sm.database != "d" {
		t.Fatalf("got %+v", r.sm)
	}
}

func TestReadStartupGSSEncThenSSLThenStartup(t *testing.T) {
	c, res := startupPipe(t, startupMaxPacketLen)
	for _, req := range []pgproto3.FrontendMessage{&pgproto3.GSSEncRequest{}, &pgproto3.SSLRequest{}} {
		w := startupWrite(c, startupEncode(t, req))
		if got := startupReadByte(t, c); got != 'N' {
			t.Fatalf("%T answered %q, want 'N'", req, got)
		}
		if err := <-w; err != nil {
			t.Fatal(err)
		}
	}
	w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u"}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
}

func TestReadStartupRepeatedNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  pgproto3.FrontendMessage
	}{
		{"SSLRequest", &pgproto3.SSLRequest{}},
		{"GSSENCRequest", &pgproto3.GSSEncRequest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, res := startupPipe(t, startupMaxPacketLen)
			w := startupWrite(c, startupEncode(t, tc.msg))
			if got := startupReadByte(t, c); got != 'N' {
				t.Fatalf("first answer %q", got)
			}
			<-w
			w = startupWrite(c, startupEncode(t, tc.msg))
			r := startupWait(t, res)
			startupWantPgError(t, r.err, pgwire.CodeFeatureNotSupported, "duplicate "+tc.name)
			if err := <-w; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestReadStartupCancelRequest(t *testing.T) {
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{0xde, 0xad, 0xbe, 0xef}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	if !r.sm.cancel || r.sm.pid != 4242 || r.sm.secret != 0xdeadbeef || r.sm.backend != nil {
		t.Fatalf("got %+v", r.sm)
	}
}

func TestReadStartupCancelAfterSSLRequest(t *testing.T) {
	// libpq 17 negotiates encryption for cancel connections too.
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.SSLRequest{}))
	if got := startupReadByte(t, c); got != 'N' {
		t.Fatalf("answer %q", got)
	}
	<-w
	w = startupWrite(c, startupEncode(t, &pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{0, 0, 0, 9}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	if !r.sm.cancel || r.sm.pid != 7 || r.sm.secret != 9 {
		t.Fatalf("got %+v", r.sm)
	}
}

func TestReadStartupCancelLongKey(t *testing.T) {
	// Protocol 3.2 allows keys up to 256 bytes; the proxy mints 4-byte keys.
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: bytes.Repeat([]byte{1}, 32)}))
	r := startupWait(t, res)
	startupWantPgError(t, r.err, pgwire.CodeProtocolViolation, "4-byte secret key")
	<-w
}

func TestReadStartupMalformed(t *testing.T) {
	startup := func(version uint32, kv ...string) []byte {
		body := binary.BigEndian.AppendUint32(nil, version)
		for _, s := range kv {
			body = append(append(body, s...), 0)
		}
		return startupRawPacket(body)
	}
	cases := []struct {
		name, code, substr string
		input              []byte
	}{
		{"junk", pgwire.CodeProtocolViolation, "invalid length of startup packet", []byte("hello, is this redis?\r\n")},
		{"too long", pgwire.CodeProtocolViolation, "invalid length of startup packet",
			binary.BigEndian.AppendUint32(nil, startupMaxPacketLen+4+1)},
		{"too short", pgwire.CodeProtocolViolation, "invalid length of startup packet", []byte{0, 0, 0, 7, 1, 2, 3}},
		{"negative length", pgwire.CodeProtocolViolation, "invalid length of startup packet", []byte{0x80, 0, 0, 0}},
		{"http", pgwire.CodeProtocolViolation, "HTTP request", []byte("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"direct tls", pgwire.CodeProtocolViolation, "TLS handshake", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}},
		{"truncated header", pgwire.CodeProtocolViolation, "incomplete startup packet", []byte{0, 0}},
		{"truncated body", pgwire.CodeProtocolViolation, "incomplete startup packet", []byte{0, 0, 0, 40, 0, 3, 0, 0}},
		{"protocol 2", pgwire.CodeFeatureNotSupported, "unsupported frontend protocol 2.0", startup(2<<16, "user", "u", "")},
		{"protocol 4", pgwire.CodeFeatureNotSupported, "unsupported frontend protocol 4.0", startup(4<<16, "user", "u", "")},
		{"no user", pgwire.CodeInvalidAuthorization, "no PostgreSQL user name", startup(3<<16, "database", "d", "")},
		{"empty user", pgwire.CodeInvalidAuthorization, "no PostgreSQL user name", startup(3<<16, "user", "", "")},
		{"no parameters", pgwire.CodeInvalidAuthorization, "no PostgreSQL user name", startup(3<<16, "")},
		{"no terminator", pgwire.CodeProtocolViolation, "expected terminator", startup(3<<16, "user", "u")},
		{"no value", pgwire.CodeProtocolViolation, `parameter "user" has no value`, startup(3<<16, "user")},
		{"bytes after terminator", pgwire.CodeProtocolViolation, "after the terminator", startup(3<<16, "user", "u", "", "x")},
		{"short ssl request", pgwire.CodeProtocolViolation, "invalid SSLRequest", startupRawPacket([]byte{4, 0xd2, 0x16, 0x2f, 9, 9, 9, 9})},
		{"replication", pgwire.CodeFeatureNotSupported, "replication connections", startup(3<<16, "user", "u", "replication", "database", "")},
		{"bad options", pgwire.CodeProtocolViolation, "needs the form name=value", startup(3<<16, "user", "u", "options", "-c search_path", "")},
		{"server switch", pgwire.CodeFeatureNotSupported, `"-B"`, startup(3<<16, "user", "u", "options", "-B 100", "")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, res := startupPipe(t, startupMaxPacketLen)
			w := startupWrite(c, tc.input)
			if tc.substr == "incomplete startup packet" {
				<-w
				c.Close() // the client hangs up mid-packet
			}
			r := startupWait(t, res)
			perr := startupWantPgError(t, r.err, tc.code, tc.substr)
			// PostgreSQL closes without a reply when it cannot frame the
			// packet at all; what it can read, it answers.
			silent := false
			for _, s := range []string{"invalid length of startup packet", "incomplete startup packet", "HTTP request", "TLS handshake"} {
				silent = silent || tc.substr == s
			}
			if perr.silent != silent {
				t.Fatalf("%q: silent = %v, want %v", perr.Message, perr.silent, silent)
			}
		})
	}
}

func TestReadStartupRespectsSmallerCap(t *testing.T) {
	c, res := startupPipe(t, 100)
	w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": strings.Repeat("u", 200)}}))
	r := startupWait(t, res)
	startupWantPgError(t, r.err, pgwire.CodeProtocolViolation, "invalid length of startup packet")
	c.Close()
	<-w
}

func TestReadStartupEOF(t *testing.T) {
	t.Run("before any byte", func(t *testing.T) {
		c, res := startupPipe(t, startupMaxPacketLen)
		c.Close()
		r := startupWait(t, res)
		if !errors.Is(r.err, io.EOF) {
			t.Fatalf("want io.EOF, got %v", r.err)
		}
		var perr *pgError
		if errors.As(r.err, &perr) {
			t.Fatalf("a silent health check must not produce a client error: %v", perr)
		}
	})
	t.Run("after SSLRequest", func(t *testing.T) {
		c, res := startupPipe(t, startupMaxPacketLen)
		w := startupWrite(c, startupEncode(t, &pgproto3.SSLRequest{}))
		if got := startupReadByte(t, c); got != 'N' {
			t.Fatalf("answer %q", got)
		}
		<-w
		c.Close() // sslmode=require gives up here
		r := startupWait(t, res)
		if !errors.Is(r.err, io.EOF) || !strings.Contains(r.err.Error(), "SSLRequest") {
			t.Fatalf("want wrapped io.EOF naming SSLRequest, got %v", r.err)
		}
	})
}

func TestReadStartupOptions(t *testing.T) {
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{
			"user":             "u",
			"options":          `-c search_path=foo -c statement_timeout=5s --lock-timeout=1s -capplication_name=fromopts -c DateStyle=ISO,\ DMY`,
			"application_name": "direct",
		}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	want := map[string]string{
		"search_path":       "foo",
		"statement_timeout": "5s",
		"lock_timeout":      "1s",
		"application_name":  "direct", // a direct parameter wins over options, as in PostgreSQL
		"DateStyle":         "ISO, DMY",
	}
	if len(r.sm.params) != len(want) {
		t.Fatalf("params %q, want %q", r.sm.params, want)
	}
	for k, v := range want {
		if r.sm.params[k] != v {
			t.Fatalf("params %q, want %q", r.sm.params, want)
		}
	}
	if _, ok := r.sm.params["options"]; ok {
		t.Fatal("options must be expanded, not passed on")
	}
}

func TestStartupParseOptions(t *testing.T) {
	cases := []struct {
		in   string
		want map[string]string
		code string // non-empty: an error with this SQLSTATE
	}{
		{in: "", want: map[string]string{}},
		{in: "   \t ", want: map[string]string{}},
		{in: "-c a=1", want: map[string]string{"a": "1"}},
		{in: "-ca=1 --b=2", want: map[string]string{"a": "1", "b": "2"}},
		{in: `-c search_path=my\ schema,public`, want: map[string]string{"search_path": "my schema,public"}},
		{in: `-c x=a\\b`, want: map[string]string{"x": `a\b`}},
		{in: "-c a=1 -c a=2", want: map[string]string{"a": "2"}},
		{in: "--work-mem=64MB", want: map[string]string{"work_mem": "64MB"}},
		{in: "-c x=", want: map[string]string{"x": ""}},
		{in: "-c x=a=b", want: map[string]string{"x": "a=b"}},
		{in: "-c", code: pgwire.CodeProtocolViolation},
		{in: "-c noval", code: pgwire.CodeProtocolViolation},
		{in: "-c =v", code: pgwire.CodeProtocolViolation},
		{in: "stray", code: pgwire.CodeProtocolViolation},
		{in: "-d 5", code: pgwire.CodeFeatureNotSupported},
	}
	for _, tc := range cases {
		got, err := startupParseOptions(tc.in)
		if tc.code != "" {
			var perr *pgError
			if !errors.As(err, &perr) || perr.Code != tc.code {
				t.Errorf("%q: want error %s, got %v, %v", tc.in, tc.code, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
			}
		}
	}
}

func TestReadStartupNegotiatesProtocolVersion(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint32
		params  map[string]string
		unknown []string
	}{
		{"3.2", pgproto3.ProtocolVersion32, map[string]string{"user": "u"}, nil},
		{"3.1", 3<<16 | 1, map[string]string{"user": "u"}, nil},
		{"3.9 with _pq_", 3<<16 | 9, map[string]string{"user": "u", "_pq_.compression": "on"}, []string{"_pq_.compression"}},
		{"3.0 with _pq_", pgproto3.ProtocolVersion30, map[string]string{"user": "u", "_pq_.x": "1"}, []string{"_pq_.x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, res := startupPipe(t, startupMaxPacketLen)
			fe := pgproto3.NewFrontend(c, c)
			// Encode does not validate the version, so it frames any 3.x.
			w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: tc.version, Parameters: tc.params}))
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
			if !ok {
				t.Fatalf("want NegotiateProtocolVersion, got %T", msg)
			}
			if npv.NewestMinorProtocol != 0 || strings.Join(npv.UnrecognizedOptions, ",") != strings.Join(tc.unknown, ",") {
				t.Fatalf("got %+v, want minor 0 and %v", npv, tc.unknown)
			}
			r := startupWait(t, res)
			if r.err != nil || <-w != nil {
				t.Fatalf("readStartup: %v", r.err)
			}
			for k := range r.sm.params {
				if strings.HasPrefix(k, "_pq_.") {
					t.Fatalf("protocol option %s leaked into params", k)
				}
			}
		})
	}
}

func TestReadStartupNoNegotiationFor30(t *testing.T) {
	// A plain 3.0 client must get nothing before authentication starts:
	// the first bytes it reads must come from the authentication exchange.
	c, res := startupPipe(t, startupMaxPacketLen)
	w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u"}}))
	r := startupWait(t, res)
	if r.err != nil || <-w != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	r.sm.backend.Send(&pgproto3.AuthenticationOk{})
	go func() { _ = r.sm.backend.Flush() }()
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("first message %T, want the one sent after startup", msg)
	}
}

func TestReadStartupDoesNotReadAhead(t *testing.T) {
	// A client that pipelines its password right behind the StartupMessage
	// must find it still readable through sm.backend: readStartup reads
	// exactly one packet at a time.
	c, res := startupPipe(t, startupMaxPacketLen)
	in := startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u"}})
	in = append(in, startupEncode(t, &pgproto3.PasswordMessage{Password: "early"})...)
	w := startupWrite(c, in)
	r := startupWait(t, res)
	if r.err != nil {
		t.Fatalf("readStartup: %v", r.err)
	}
	if err := r.sm.backend.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		t.Fatal(err)
	}
	msg, err := r.sm.backend.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if pw, ok := msg.(*pgproto3.PasswordMessage); !ok || pw.Password != "early" {
		t.Fatalf("got %T %+v", msg, msg)
	}
	if err := <-w; err != nil {
		t.Fatal(err)
	}
}

func TestReadStartupBackendHonoursMaxBodyLen(t *testing.T) {
	for _, tc := range []struct {
		name          string
		maxBodyLen    int
		password, cap int
	}{
		{"caller's cap", 64, 100, 64},
		// The relay's 1 GiB limit must not reach a client that has not logged in.
		{"clamped to 10000", 1 << 30, 20000, 10000},
		{"zero means 10000", 0, 20000, 10000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, res := startupPipe(t, tc.maxBodyLen)
			w := startupWrite(c, startupEncode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
				Parameters: map[string]string{"user": "u"}}))
			r := startupWait(t, res)
			if r.err != nil || <-w != nil {
				t.Fatalf("readStartup: %v", r.err)
			}
			_ = r.sm.backend.SetAuthType(pgproto3.AuthTypeCleartextPassword)
			w = startupWrite(c, startupEncode(t, &pgproto3.PasswordMessage{Password: strings.Repeat("p", tc.password)}))
			_, err := r.sm.backend.Receive()
			var tooLong *pgproto3.ExceededMaxBodyLenErr
			if !errors.As(err, &tooLong) || tooLong.MaxExpectedBodyLen != tc.cap {
				t.Fatalf("want ExceededMaxBodyLenErr with cap %d, got %v", tc.cap, err)
			}
			c.Close()
			<-w
		})
	}
}

func TestStartupIsFalse(t *testing.T) {
	for v, want := range map[string]bool{
		"false": true, "FALSE": true, "f": true, "fal": true, "no": true, "n": true, "off": true, "of": true, "0": true,
		"": false, "o": false, "on": false, "true": false, "database": false, "1": false, "yes": false, "offf": false,
	} {
		if got := startupIsFalse(v); got != want {
			t.Errorf("startupIsFalse(%q) = %v, want %v", v, got, want)
		}
	}
}
