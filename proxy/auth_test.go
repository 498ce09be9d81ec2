package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Values the harness sends after a successful login, checked by clients.
const (
	authTestPID           = 777
	authTestServerVersion = "15.0 (pgsidecar auth test)"
	authTestQueryError    = "the auth test harness answers no queries"
)

// authOutcome is what the harness saw for one client connection.
type authOutcome struct {
	sm  *startupMessage
	err error
}

// authHarness is a minimal PostgreSQL server on 127.0.0.1: readStartup,
// authenticate, then the post-login messages the real caller sends. It
// answers every query with an ERROR, so real clients (pgconn, psql) can be
// driven through the whole login.
type authHarness struct {
	t        *testing.T
	ln       net.Listener
	method   AuthMethod
	mu       sync.Mutex
	users    map[string]string
	outcomes chan authOutcome
	wg       sync.WaitGroup
}

// authStart starts a harness; its cleanup stops the listener, waits for
// every connection goroutine and checks for leaks.
func authStart(t *testing.T, method AuthMethod, users map[string]string) *authHarness {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &authHarness{t: t, ln: ln, method: method, users: users, outcomes: make(chan authOutcome, 64)}
	h.wg.Add(1)
	go h.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		h.wg.Wait()
		goleak.VerifyNone(t, opt)
	})
	return h
}

func (h *authHarness) setPassword(user, password string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.users[user] = password
}

func (h *authHarness) lookup(user string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pw, ok := h.users[user]
	return pw, ok
}

func (h *authHarness) acceptLoop() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return // listener closed by the cleanup
		}
		h.wg.Add(1)
		go h.serve(c)
	}
}

func (h *authHarness) serve(c net.Conn) {
	defer h.wg.Done()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // bounds even a stuck client
	sm, err := readStartup(c, startupMaxPacketLen)
	if err == nil {
		pw, known := h.lookup(sm.user)
		err = authenticate(sm, c, h.method, pw, known, "auth.users")
	}
	if err != nil {
		var perr *pgError
		if errors.As(err, &perr) {
			_, _ = c.Write(perr.appendTo(nil))
		}
		h.outcomes <- authOutcome{sm, err}
		return
	}
	b := sm.backend
	b.Send(&pgproto3.AuthenticationOk{})
	b.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: authTestServerVersion})
	b.Send(&pgproto3.BackendKeyData{ProcessID: authTestPID, SecretKey: []byte{0, 0, 1, 2}})
	b.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	err = b.Flush()
	h.outcomes <- authOutcome{sm, err}
	for err == nil {
		var msg pgproto3.FrontendMessage
		msg, err = b.Receive()
		switch msg.(type) {
		case *pgproto3.Query:
			out := newError(pgwire.CodeFeatureNotSupported, authTestQueryError, "connect to a real server").appendTo(nil)
			out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
			_, err = c.Write(out)
		case *pgproto3.Terminate:
			return
		}
	}
}

// outcome returns the harness's view of the next connection.
func (h *authHarness) outcome() authOutcome {
	h.t.Helper()
	select {
	case o := <-h.outcomes:
		return o
	case <-time.After(10 * time.Second):
		h.t.Fatal("harness saw no connection")
		return authOutcome{}
	}
}

func (h *authHarness) port() int { return h.ln.Addr().(*net.TCPAddr).Port }

// authConnect logs in with pgconn, the client library the proxy itself
// uses for its backends.
func authConnect(t *testing.T, h *authHarness, user, password, extra string) (*pgconn.PgConn, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=db sslmode=disable %s", h.port(), extra))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = user, password
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

// authWantLoginFailed asserts the client saw the one 28P01 answer.
func authWantLoginFailed(t *testing.T, err error, user string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a server error, got %v", err)
	}
	if pgErr.Code != pgwire.CodeInvalidPassword || pgErr.Severity != "FATAL" || pgErr.SeverityUnlocalized != "FATAL" ||
		pgErr.Message != fmt.Sprintf("password authentication failed for user %q", user) || pgErr.Hint != authFailedHint("auth.users") {
		t.Fatalf("got %+v", pgErr)
	}
}

func TestAuthenticateWithPgconn(t *testing.T) {
	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5, AuthPlain} {
		t.Run(string(method), func(t *testing.T) {
			h := authStart(t, method, map[string]string{"alice": "s3cret pw", "bob": "other"})

			conn, err := authConnect(t, h, "alice", "s3cret pw", "")
			if err != nil {
				t.Fatalf("right password: %v", err)
			}
			if o := h.outcome(); o.err != nil || o.sm.user != "alice" || o.sm.database != "db" {
				t.Fatalf("harness: %+v", o)
			}
			if conn.PID() != authTestPID || conn.ParameterStatus("server_version") != authTestServerVersion {
				t.Fatalf("post-login messages not seen: pid %d, version %q", conn.PID(), conn.ParameterStatus("server_version"))
			}
			// The first query after login gets the harness's ERROR, proving
			// the connection is in sync after authentication.
			_, err = conn.Exec(context.Background(), "SELECT 1").ReadAll()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Message != authTestQueryError || pgErr.Severity != "ERROR" {
				t.Fatalf("query: %v", err)
			}
			conn.Close(context.Background())

			_, err = authConnect(t, h, "alice", "s3cret pW", "")
			authWantLoginFailed(t, err, "alice")
			o := h.outcome()
			var perr *pgError
			if !errors.As(o.err, &perr) || perr.Code != pgwire.CodeInvalidPassword {
				t.Fatalf("harness: %v", o.err)
			}

			// Another user's password is not this user's.
			_, err = authConnect(t, h, "alice", "other", "")
			authWantLoginFailed(t, err, "alice")
			h.outcome()

			// An unknown user gets exactly what a wrong password gets.
			_, err = authConnect(t, h, "mallory", "anything", "")
			authWantLoginFailed(t, err, "mallory")
			h.outcome()
		})
	}
}

func TestAuthenticateTrust(t *testing.T) {
	h := authStart(t, AuthTrust, map[string]string{"alice": "ignored"})
	conn, err := authConnect(t, h, "alice", "", "")
	if err != nil {
		t.Fatalf("trust: %v", err)
	}
	conn.Close(context.Background())
	if o := h.outcome(); o.err != nil {
		t.Fatal(o.err)
	}
	_, err = authConnect(t, h, "mallory", "", "")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgwire.CodeInvalidAuthorization || pgErr.Hint == "" {
		t.Fatalf("unknown user under trust: %v", err)
	}
	h.outcome()
}

func TestAuthenticateSCRAMPasswordChange(t *testing.T) {
	h := authStart(t, AuthSCRAM, map[string]string{"alice": "first"})
	conn, err := authConnect(t, h, "alice", "first", "")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	h.outcome()

	// A reload changes the password: the cached credentials of the old one
	// must not let the old password in.
	h.setPassword("alice", "second")
	_, err = authConnect(t, h, "alice", "first", "")
	authWantLoginFailed(t, err, "alice")
	h.outcome()
	conn, err = authConnect(t, h, "alice", "second", "")
	if err != nil {
		t.Fatalf("new password: %v", err)
	}
	conn.Close(context.Background())
	h.outcome()
}

func TestScramCredentialsCache(t *testing.T) {
	a1, err := scramCredentials("cache-user", "pw1")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := scramCredentials("cache-user", "pw1")
	b, _ := scramCredentials("cache-user", "pw2")
	c, _ := scramCredentials("cache-other", "pw1")
	if a1.Salt != a2.Salt || string(a1.StoredKey) != string(a2.StoredKey) {
		t.Fatal("second lookup of the same (user, password) derived new credentials")
	}
	if len(a1.Salt) != authScramSaltLen || a1.Iters != authScramIterations {
		t.Fatalf("salt %d bytes, %d iterations", len(a1.Salt), a1.Iters)
	}
	if string(b.StoredKey) == string(a1.StoredKey) || c.Salt == a1.Salt {
		t.Fatal("another password derived the same keys, or two users share a salt")
	}
	// One salt per user, whatever the password and whether the user is
	// configured: the salt shown must not tell a prober which logins exist
	// or which database a login belongs to.
	m1, m2 := scramMockCredentials("cache-user"), scramMockCredentials("cache-user")
	if b.Salt != a1.Salt || m1.Salt != a1.Salt || m2.Salt != a1.Salt || scramMockCredentials("ghost2").Salt == m1.Salt {
		t.Fatal("salts must be stable per user, equal for real and mock credentials, and differ between users")
	}
}

func TestAuthenticateSCRAMSASLprep(t *testing.T) {
	// PostgreSQL SASLpreps SCRAM passwords: a no-break space maps to a space,
	// so both spellings log in, with pgconn as with libpq.
	h := authStart(t, AuthSCRAM, map[string]string{"alice": "pä\u00a0ss"})
	for _, pw := range []string{"pä\u00a0ss", "pä ss"} {
		conn, err := authConnect(t, h, "alice", pw, "")
		if err != nil {
			t.Fatalf("password %q: %v", pw, err)
		}
		conn.Close(context.Background())
		h.outcome()
	}
}

func TestAuthenticateProtocol32Client(t *testing.T) {
	// pgx asking for protocol 3.2 (PostgreSQL 18) is negotiated down to 3.0
	// and then logs in normally.
	h := authStart(t, AuthSCRAM, map[string]string{"alice": "pw"})
	conn, err := authConnect(t, h, "alice", "pw", "max_protocol_version=3.2")
	if err != nil {
		t.Fatalf("3.2 client: %v", err)
	}
	defer conn.Close(context.Background())
	if o := h.outcome(); o.err != nil {
		t.Fatal(o.err)
	}
	if len(conn.SecretKey()) != 4 {
		t.Fatalf("secret key %d bytes, want 4", len(conn.SecretKey()))
	}
}

// authPipe runs readStartup+authenticate on one end of a net.Pipe for a
// hand-driven client, returning a Frontend for the client end and the
// server's result channel.
func authPipe(t *testing.T, method AuthMethod, users map[string]string, startupUser string) (*pgproto3.Frontend, net.Conn, <-chan error) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	client, server := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = client.SetDeadline(deadline)
	_ = server.SetDeadline(deadline)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		sm, err := readStartup(server, startupMaxPacketLen)
		if err == nil {
			pw, known := users[sm.user]
			err = authenticate(sm, server, method, pw, known, "auth.users")
		}
		done <- err
	}()
	t.Cleanup(func() {
		client.Close()
		server.Close()
		<-finished
		goleak.VerifyNone(t, opt)
	})
	fe := pgproto3.NewFrontend(client, client)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": startupUser}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return fe, client, done
}

// authReceiveAs receives the next message and checks its type.
func authReceiveAs[T pgproto3.BackendMessage](t *testing.T, fe *pgproto3.Frontend) T {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	m, ok := msg.(T)
	if !ok {
		t.Fatalf("got %T %+v", msg, msg)
	}
	return m
}

// authFlush flushes the client's messages from a goroutine: on a net.Pipe
// the write completes only when the server reads it, and the server may
// instead answer with an error the test wants to read.
func authFlush(fe *pgproto3.Frontend) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- fe.Flush() }()
	return ch
}

// scramClientLogin drives a SCRAM exchange with xdg-go's client, which can
// produce the gs2 flags and SCRAM user names pgconn never sends.
func scramClientLogin(t *testing.T, fe *pgproto3.Frontend, conv *scram.ClientConversation) {
	t.Helper()
	sasl := authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
	if strings.Join(sasl.AuthMechanisms, ",") != "SCRAM-SHA-256" {
		t.Fatalf("mechanisms %v: only SCRAM-SHA-256 may be offered without TLS", sasl.AuthMechanisms)
	}
	c1, err := conv.Step("")
	if err != nil {
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(c1)})
	<-authFlush(fe)
	cont := authReceiveAs[*pgproto3.AuthenticationSASLContinue](t, fe)
	c2, err := conv.Step(string(cont.Data))
	if err != nil {
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(c2)})
	<-authFlush(fe)
	final := authReceiveAs[*pgproto3.AuthenticationSASLFinal](t, fe)
	if _, err := conv.Step(string(final.Data)); err != nil || !conv.Valid() {
		t.Fatalf("server signature rejected: %v", err)
	}
}

func TestAuthenticateSCRAMChannelBindingFlagY(t *testing.T) {
	// "y": the client could bind but the server offered no -PLUS. Also the
	// SCRAM user name differs from the startup user: the startup user counts.
	fe, _, done := authPipe(t, AuthSCRAM, map[string]string{"alice": "pw"}, "alice")
	client, err := scram.SHA256.NewClient("someone-else", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	scramClientLogin(t, fe, client.NewConversationAdvertisingChannelBinding())
	if err := <-done; err != nil {
		t.Fatalf("authenticate: %v", err)
	}
}

func TestAuthenticateSCRAMRejects(t *testing.T) {
	users := map[string]string{"alice": "pw"}
	t.Run("channel binding p", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthSCRAM, users, "alice")
		client, _ := scram.SHA256.NewClient("", "pw", "")
		conv := client.NewConversationWithChannelBinding(scram.NewTLSUniqueBinding([]byte("not-a-real-tls-binding")))
		authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
		c1, _ := conv.Step("")
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(c1)})
		<-authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "client-first-message")
	})
	t.Run("PLUS mechanism", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthSCRAM, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
		<-authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "invalid SASL authentication mechanism")
	})
	t.Run("garbage first message", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthSCRAM, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("\x00\xffjunk")})
		<-authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "client-first-message")
	})
	t.Run("wrong nonce", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthSCRAM, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=clientnonce")})
		<-authFlush(fe)
		authReceiveAs[*pgproto3.AuthenticationSASLContinue](t, fe)
		fe.Send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=clientnonceBUTNOTTHESERVERS,p=AAAA")})
		<-authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "client-final-message")
	})
	t.Run("wrong proof", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthSCRAM, users, "alice")
		client, _ := scram.SHA256.NewClient("", "not-pw", "")
		conv := client.NewConversation()
		authReceiveAs[*pgproto3.AuthenticationSASL](t, fe)
		c1, _ := conv.Step("")
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(c1)})
		<-authFlush(fe)
		cont := authReceiveAs[*pgproto3.AuthenticationSASLContinue](t, fe)
		c2, _ := conv.Step(string(cont.Data))
		fe.Send(&pgproto3.SASLResponse{Data: []byte(c2)})
		w := authFlush(fe)
		err := <-done
		var perr *pgError
		if !errors.As(err, &perr) || perr.Code != pgwire.CodeInvalidPassword {
			t.Fatalf("want 28P01, got %v", err)
		}
		<-w
	})
}

func TestAuthenticateClientBehaviour(t *testing.T) {
	users := map[string]string{"alice": "pw"}
	t.Run("hangs up when asked for a password", func(t *testing.T) {
		// psql without a password does this, then prompts and reconnects.
		fe, client, done := authPipe(t, AuthMD5, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationMD5Password](t, fe)
		client.Close()
		err := <-done
		var perr *pgError
		if err == nil || errors.As(err, &perr) {
			t.Fatalf("want a connection error, not a client message: %v", err)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("want an EOF-like error, got %v", err)
		}
	})
	t.Run("Terminate instead of password", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthPlain, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationCleartextPassword](t, fe)
		fe.Send(&pgproto3.Terminate{})
		<-authFlush(fe)
		if err := <-done; !errors.Is(err, io.EOF) {
			t.Fatalf("want io.EOF, got %v", err)
		}
	})
	t.Run("query instead of password", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthPlain, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationCleartextPassword](t, fe)
		fe.Send(&pgproto3.Query{String: "SELECT 1"})
		w := authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "expected a password message")
		<-w
	})
	t.Run("oversized password message", func(t *testing.T) {
		// Bounded by the startup cap: a client that has not logged in cannot
		// make the proxy buffer a huge message.
		fe, client, done := authPipe(t, AuthPlain, users, "alice")
		authReceiveAs[*pgproto3.AuthenticationCleartextPassword](t, fe)
		fe.Send(&pgproto3.PasswordMessage{Password: strings.Repeat("x", 20000)})
		w := authFlush(fe)
		startupWantPgError(t, <-done, pgwire.CodeProtocolViolation, "invalid password message")
		client.Close()
		<-w
	})
	t.Run("md5 answer computed by the client", func(t *testing.T) {
		fe, _, done := authPipe(t, AuthMD5, users, "alice")
		req := authReceiveAs[*pgproto3.AuthenticationMD5Password](t, fe)
		fe.Send(&pgproto3.PasswordMessage{Password: md5Response("alice", "pw", req.Salt)})
		<-authFlush(fe)
		if err := <-done; err != nil {
			t.Fatalf("authenticate: %v", err)
		}
	})
	t.Run("md5 salts differ", func(t *testing.T) {
		salts := map[[4]byte]bool{}
		for range 3 {
			fe, client, done := authPipe(t, AuthMD5, users, "alice")
			salts[authReceiveAs[*pgproto3.AuthenticationMD5Password](t, fe).Salt] = true
			client.Close()
			<-done
		}
		if len(salts) != 3 {
			t.Fatalf("md5 salts repeat: %v", salts)
		}
	})
}

func TestMD5Response(t *testing.T) {
	// Vector from an independent implementation (Python hashlib):
	// "md5" + md5(md5("secretalice").hexdigest() + b"\x01\x02\x03\x04").hexdigest().
	if got, want := md5Response("alice", "secret", [4]byte{1, 2, 3, 4}), "md598a0412b9c31436fc53776e863350083"; got != want {
		t.Fatalf("md5Response = %q, want %q", got, want)
	}
}

func TestAuthenticateWithPsql(t *testing.T) {
	// libpq is the reference client: SSLRequest refused (sslmode=prefer),
	// SCRAM and md5 through psql, PGOPTIONS parsing, and the proxy's
	// ErrorResponse as libpq prints it.
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("psql not installed")
	}
	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5} {
		t.Run(string(method), func(t *testing.T) {
			h := authStart(t, method, map[string]string{"alice": "pw with spaces"})
			run := func(password string) (string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, psql, "-X", "-w", "-c", "SELECT 1",
					fmt.Sprintf("host=127.0.0.1 port=%d user=alice dbname=shop sslmode=prefer application_name=psqltest", h.port()))
				cmd.Env = append(os.Environ(), "PGPASSWORD="+password, `PGOPTIONS=-c search_path=my\ schema --statement-timeout=5s`,
					"PGPASSFILE=/nonexistent", "PGSERVICEFILE=/nonexistent", "LC_ALL=C")
				out, err := cmd.CombinedOutput()
				return string(out), err
			}

			out, err := run("pw with spaces")
			if err == nil {
				t.Fatalf("psql succeeded although the harness answers every query with an error:\n%s", out)
			}
			if !strings.Contains(out, "ERROR:  "+authTestQueryError) || !strings.Contains(out, "HINT:  connect to a real server") {
				t.Fatalf("psql did not log in and print the harness's error:\n%s", out)
			}
			o := h.outcome()
			if o.err != nil {
				t.Fatalf("harness: %v", o.err)
			}
			want := map[string]string{"search_path": "my schema", "statement_timeout": "5s", "application_name": "psqltest"}
			for k, v := range want {
				if o.sm.params[k] != v {
					t.Fatalf("params %q, want %q", o.sm.params, want)
				}
			}
			if o.sm.database != "shop" {
				t.Fatalf("database %q", o.sm.database)
			}

			out, err = run("wrong")
			if err == nil || !strings.Contains(out, `FATAL:  password authentication failed for user "alice"`) {
				t.Fatalf("wrong password: %v\n%s", err, out)
			}
			h.outcome()
		})
	}
}

// scramVerifierFor writes password's verifier as PostgreSQL stores it.
func scramVerifierFor(t *testing.T, password string) string {
	t.Helper()
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "0123456789abcdef", Iters: 4096})
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", creds.Iters, b64([]byte(creds.Salt)), b64(creds.StoredKey), b64(creds.ServerKey))
}

func TestAuthenticateSCRAMVerifier(t *testing.T) {
	verifier := scramVerifierFor(t, "cleartext pw")
	h := authStart(t, AuthSCRAM, map[string]string{"alice": verifier})
	conn, err := authConnect(t, h, "alice", "cleartext pw", "")
	if err != nil {
		t.Fatalf("the verifier's password: %v", err)
	}
	conn.Close(context.Background())
	h.outcome()
	_, err = authConnect(t, h, "alice", "other", "")
	authWantLoginFailed(t, err, "alice")
	h.outcome()
	// The verifier text is no password.
	_, err = authConnect(t, h, "alice", verifier, "")
	authWantLoginFailed(t, err, "alice")
	h.outcome()

	// With plain, sending the verifier text must not match it either.
	hp := authStart(t, AuthPlain, map[string]string{"alice": verifier})
	_, err = authConnect(t, hp, "alice", verifier, "")
	authWantLoginFailed(t, err, "alice")
	hp.outcome()

	for _, bad := range []string{
		"SCRAM-SHA-256$4096:c2FsdA==",           // no keys
		"SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",    // iterations
		"SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA", // key length
		"SCRAM-SHA-256$4096:!!$AAAA:AAAA",       // base64
	} {
		if _, err := ParseSCRAMVerifier(bad); err == nil || strings.Contains(err.Error(), "c2FsdA") {
			t.Errorf("ParseSCRAMVerifier(%q) = %v", bad, err)
		}
	}
	if _, err := ParseSCRAMVerifier(verifier); err != nil {
		t.Fatal(err)
	}
}

// TestAuthenticateMD5Hash: a login stored as an md5 hash (as in
// pg_authid or a PgBouncer userlist.txt) answers the md5 challenge and the
// plain method as its password would; the hash text is no password for
// plain, and only "md5" + 32 lower-case hex digits is a hash.
func TestAuthenticateMD5Hash(t *testing.T) {
	if got, want := MD5Hash("alice", "secret"), "md54a0a68b43b6cd5cf266fa02f196e2371"; got != want {
		t.Fatalf("MD5Hash = %q, want %q (python: 'md5'+md5(b'secretalice').hexdigest())", got, want)
	}
	hash := MD5Hash("alice", "s3cret pw")
	for _, method := range []AuthMethod{AuthMD5, AuthPlain} {
		h := authStart(t, method, map[string]string{"alice": hash})
		conn, err := authConnect(t, h, "alice", "s3cret pw", "")
		if err != nil {
			t.Fatalf("%s: the hash's password: %v", method, err)
		}
		conn.Close(context.Background())
		h.outcome()
		_, err = authConnect(t, h, "alice", "other", "")
		authWantLoginFailed(t, err, "alice")
		h.outcome()
		if method == AuthPlain {
			_, err = authConnect(t, h, "alice", hash, "")
			authWantLoginFailed(t, err, "alice")
			h.outcome()
		}
	}
	for in, want := range map[string]bool{
		hash:                                true,
		strings.ToUpper(hash[3:]):           false,
		"md5" + strings.ToUpper(hash[3:]):   false,
		hash[:34]:                           false,
		hash + "0":                          false,
		"md5" + strings.Repeat("g", 32):     false,
		"SCRAM-SHA-256$4096:c2FsdA==$AA:AA": false,
	} {
		if IsMD5Hash(in) != want {
			t.Errorf("IsMD5Hash(%q) = %v, want %v", in, !want, want)
		}
	}
}
