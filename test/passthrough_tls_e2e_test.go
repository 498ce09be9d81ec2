package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// sslPG is a second cluster, with ssl = on, for the tests of TLS between
// the proxy and PostgreSQL (the shared cluster pg stays plain). Only the
// tests that need it start it (sharedSSLCluster), once; TestMain destroys
// it (destroySharedSSLCluster).
var sslPG struct {
	once sync.Once
	c    *sslCluster // nil until started, or when the start failed
	err  error
}

// sslCluster is the TLS cluster: its certificate (for 127.0.0.1 and
// localhost) is signed by ca, which the tests generate; otherCA signs only
// certificates of impostors.
//
// pg_hba.conf: alice and bob may log in over TLS only (hostnossl reject),
// carol over TLS with a client certificate of clientCA besides her
// password (clientcert=verify-ca), pt_plainonly in plain text only
// (hostssl reject), the rest (app, the auth user) either way; all with
// SCRAM-SHA-256. Database app has the lookup function of passthroughQuery.
type sslCluster struct {
	*Cluster
	dir        string // certificates and keys
	ca         *tlsCA
	otherCA    *tlsCA
	otherCert  tls.Certificate // by otherCA, for 127.0.0.1: an impostor's
	serverCert string          // the server's certificate file (by ca)
	serverDER  []byte          // and its DER
	serverPair tls.Certificate // and with its key
	clientCA   *tlsCA          // the server trusts the client certificates it signs
	clientCert string          // by clientCA (CN pgsidecar-backend), for the upstream URL's sslcert
	clientKey  string
}

const sslClusterHBA = `local all all trust
hostnossl all alice,bob,carol 127.0.0.1/32 reject
hostssl all pt_plainonly 127.0.0.1/32 reject
hostssl all carol 127.0.0.1/32 scram-sha-256 clientcert=verify-ca
host all all 127.0.0.1/32 scram-sha-256
`

// sharedSSLCluster starts the TLS cluster at its first use (about 2 s)
// and returns it; a failed start fails every test that asks.
func sharedSSLCluster(t *testing.T) *sslCluster {
	t.Helper()
	sslPG.once.Do(func() { sslPG.c, sslPG.err = startSharedSSLCluster(t) })
	if sslPG.c == nil {
		t.Fatalf("the TLS cluster did not start: %v", sslPG.err)
	}
	return sslPG.c
}

func startSharedSSLCluster(t *testing.T) (*sslCluster, error) {
	dir, err := os.MkdirTemp("", "pgsc-e2e-ssl-")
	if err != nil {
		return nil, err
	}
	s := &sslCluster{dir: dir}
	started := false
	defer func() {
		if !started {
			if s.Cluster != nil {
				_ = s.Cluster.Destroy()
			}
			_ = os.RemoveAll(dir)
		}
	}()
	s.ca = newTLSCA(t, dir, "pg-ca")
	s.otherCA = newTLSCA(t, dir, "impostor-ca")
	var key string
	s.serverCert, key, s.serverDER = s.ca.issue(t, dir, "pg-server", "postgres", true)
	if s.serverPair, err = tls.LoadX509KeyPair(s.serverCert, key); err != nil {
		return nil, err
	}
	s.clientCA = newTLSCA(t, dir, "pg-client-ca")
	s.clientCert, s.clientKey, _ = s.clientCA.issue(t, dir, "backend-client", "pgsidecar-backend", false)
	oc, ok, _ := s.otherCA.issue(t, dir, "impostor", "postgres", true)
	if s.otherCert, err = tls.LoadX509KeyPair(oc, ok); err != nil {
		return nil, err
	}
	// Not testpg.Start: the cluster outlives the first test using it.
	if s.Cluster, err = StartCluster(nil); err != nil {
		return nil, err
	}
	if err := s.EnableSSL(s.serverCert, key, s.clientCA.Path, sslClusterHBA); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, s.AdminURLDB("app"))
	if err != nil {
		return nil, err
	}
	defer admin.Close(context.Background())
	for _, q := range []string{
		"CREATE ROLE alice LOGIN PASSWORD 'alice-pw'",
		"CREATE ROLE bob LOGIN PASSWORD 'bob-pw'",
		"CREATE ROLE carol LOGIN PASSWORD 'carol-pw'",
		"CREATE ROLE pt_plainonly LOGIN PASSWORD 'plain-pw'",
		`CREATE FUNCTION pgsidecar_get_auth(p_user text, OUT uname text, OUT phash text)
		RETURNS SETOF record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
		$$ SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = p_user AND rolcanlogin $$`,
		"REVOKE ALL ON FUNCTION pgsidecar_get_auth(text) FROM PUBLIC",
		"GRANT EXECUTE ON FUNCTION pgsidecar_get_auth(text) TO app",
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	started = true
	return s, nil
}

// destroySharedSSLCluster stops the TLS cluster if a test started it.
func destroySharedSSLCluster() error {
	if sslPG.c == nil {
		return nil
	}
	err := sslPG.c.Destroy()
	return errors.Join(err, os.RemoveAll(sslPG.c.dir))
}

// url is the TCP URL of user to database app at addr (the cluster's own
// address when empty) with params as its query.
func (s *sslCluster) url(addr, user, password string, params map[string]string) string {
	if addr == "" {
		addr = s.Addr()
	}
	q := url.Values{}
	for k, v := range params {
		q.Set(k, v)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: addr, Path: "/app", RawQuery: q.Encode()}
	return u.String()
}

// sessionSSL returns current_user and whether the session's own backend is
// on TLS, as the server sees it (pg_stat_ssl).
func sessionSSL(t *testing.T, conn *pgx.Conn) (user string, ssl bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.QueryRow(ctx, "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&user, &ssl); err != nil {
		t.Fatalf("pg_stat_ssl: %v", err)
	}
	return user, ssl
}

// tcpBackendsSSL returns, per role, how many TCP backends in database app
// the server has and how many of them are on TLS.
func tcpBackendsSSL(t *testing.T, s *sslCluster) map[string][2]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin := connect(t, s.AdminURL())
	rows, err := admin.Query(ctx, `SELECT a.usename::text, count(*), count(*) FILTER (WHERE s.ssl)
		FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		WHERE a.datname = 'app' AND a.client_addr IS NOT NULL AND a.pid <> pg_backend_pid() GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][2]int{}
	for rows.Next() {
		var role string
		var n, ssl int
		if err := rows.Scan(&role, &n, &ssl); err != nil {
			t.Fatal(err)
		}
		m[role] = [2]int{n, ssl}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// tryLogin connects to u and returns current_user and whether the
// session's backend is on TLS (pg_stat_ssl), or the error of the connect or
// of that first query: the proxy admits a client before its role's pool
// has a backend, so a backend's failed login shows at the first query.
// Everything is bounded by 10 s; the connection is closed at once.
func tryLogin(u string) (user string, ssl bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return "", false, err
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&user, &ssl)
	return user, ssl, err
}

// TestPassthroughBackendTLS: with auth.passthrough, the proxy's backends
// follow the upstream URL's sslmode as a direct pgx connection with the
// same URL does. alice and bob, whom pg_hba.conf admits over TLS only, log
// in through the proxy as themselves under verify-full (with
// channel_binding=require, so the passthrough's own SCRAM toward the server
// is SCRAM-SHA-256-PLUS), verify-ca, require and prefer; the server's
// pg_stat_ssl shows every backend of the proxy on TLS: theirs and the auth
// user's (app's) that ran the lookups. Under sslmode=disable both the
// direct login and the proxy's are refused by hostnossl.
func TestPassthroughBackendTLS(t *testing.T) {
	s := sharedSSLCluster(t)
	for _, m := range []struct {
		name   string
		params map[string]string
	}{
		{"verify-full", map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "channel_binding": "require"}},
		{"verify-ca", map[string]string{"sslmode": "verify-ca", "sslrootcert": s.ca.Path}},
		{"require", map[string]string{"sslmode": "require"}},
		{"prefer", map[string]string{"sslmode": "prefer"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", m.params)))
			for _, r := range []struct{ role, pw string }{{"alice", "alice-pw"}, {"bob", "bob-pw"}} {
				direct := connect(t, s.url("", r.role, r.pw, m.params))
				if user, ssl := sessionSSL(t, direct); user != r.role || !ssl {
					t.Errorf("%s direct: current_user %q, ssl %v; want %s on TLS", r.role, user, ssl, r.role)
				}
				via := connect(t, p.URL(r.role, r.pw, "app"))
				if user, ssl := sessionSSL(t, via); user != r.role || !ssl {
					t.Errorf("%s through the proxy: current_user %q, ssl %v; want %s on TLS", r.role, user, ssl, r.role)
				}
			}
			got := tcpBackendsSSL(t, s)
			for _, role := range []string{"alice", "bob", "app"} {
				if n := got[role]; n[0] == 0 || n[1] != n[0] {
					t.Errorf("role %s: %d TCP backends, %d of them on TLS; want some, all on TLS (all: %v)", role, n[0], n[1], got)
				}
			}
		})
	}

	t.Run("disable", func(t *testing.T) {
		params := map[string]string{"sslmode": "disable"}
		_, _, err := tryLogin(s.url("", "alice", "alice-pw", params))
		if sqlState(err) != "28000" || !strings.Contains(err.Error(), "no encryption") {
			t.Fatalf("alice direct in plain text: %v, want 28000 from hostnossl reject", err)
		}
		p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", params)))
		_, _, err = tryLogin(p.URL("alice", "alice-pw", "app"))
		// The proxy's 08006 carries the server's refusal.
		if sqlState(err) != "08006" || !strings.Contains(err.Error(), "no encryption") {
			t.Fatalf("alice through the proxy with sslmode=disable: %v, want 08006 quoting hostnossl's refusal", err)
		}
		// Logged by the pool's connect, which may finish writing after
		// the client has its answer.
		if !p.Logs.ContainsWithin("no encryption", 5*time.Second) {
			t.Errorf("the proxy's log does not carry the server's refusal")
		}
	})
}

// pgFront stands between the proxy and the TLS cluster on a port of its
// own, as an attacker on the network could. In frontPass it forwards the
// bytes untouched; in frontImpostor it answers an SSLRequest and completes
// the TLS handshake with a certificate of otherCA, then hangs up (a server
// that is not the real one); in frontMITM it terminates TLS with that
// certificate and opens its own TLS session to the cluster, relaying the
// plain text in between: what sslmode=require cannot notice and channel
// binding can; frontDowngrade does the same and also strikes
// SCRAM-SHA-256-PLUS from the server's offer, so that a client would not
// bind. In frontDirect it plays PostgreSQL 17's direct TLS (sslnegotiation
// =direct: TLS from the first byte, ALPN "postgresql") with the real
// server's certificate (direct), in front of the cluster, which has only
// the SSLRequest way. It records how each connection began.
type pgFront struct {
	ln     net.Listener
	target string
	cert   tls.Certificate
	direct tls.Certificate // frontDirect's: the real server's
	mode   atomic.Int32    // frontPass, ...: for the connections accepted next

	mu     sync.Mutex
	starts []string // per connection, in order: "<mode>:ssl" or "<mode>:plain"
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup // the accept loop and every connection's goroutines
}

const (
	frontPass int32 = iota
	frontImpostor
	frontMITM
	frontDowngrade
	frontDirect
)

var frontModeNames = map[int32]string{frontPass: "pass", frontImpostor: "impostor", frontMITM: "mitm", frontDowngrade: "downgrade", frontDirect: "direct"}

// frontIOTimeout bounds a front connection's setup (SSLRequest, handshakes).
const frontIOTimeout = 10 * time.Second

// startPGFront listens on 127.0.0.1 in frontPass mode; it is closed, with
// every connection it relays, at cleanup.
func startPGFront(t *testing.T, target string, cert tls.Certificate) *pgFront {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &pgFront{ln: ln, target: target, cert: cert, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.accept() // ends when close closes ln
	t.Cleanup(f.close)
	return f
}

func (f *pgFront) addr() string { return f.ln.Addr().String() }

// since returns how the connections after the first n began.
func (f *pgFront) since(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.starts[n:]...)
}

func (f *pgFront) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.starts)
}

// track registers c to be closed by close; false (and c closed) once
// closing.
func (f *pgFront) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = true
	return true
}

func (f *pgFront) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *pgFront) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *pgFront) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			continue
		}
		f.wg.Add(1)
		go f.serve(c, f.mode.Load()) // ends when c or its peer closes, at the latest at close
	}
}

func (f *pgFront) serve(c net.Conn, mode int32) {
	defer f.wg.Done()
	defer f.untrack(c)
	_ = c.SetDeadline(time.Now().Add(frontIOTimeout))
	first := make([]byte, 8)
	if _, err := io.ReadFull(c, first); err != nil {
		return
	}
	isSSL := string(first) == string(tlsSSLRequest())
	isTLS := first[0] == 0x16 // a TLS handshake record: direct TLS
	kind := ":plain"
	switch {
	case isSSL:
		kind = ":ssl"
	case isTLS:
		kind = ":tls"
	}
	f.mu.Lock()
	f.starts = append(f.starts, frontModeNames[mode]+kind)
	f.mu.Unlock()
	dial := func() net.Conn {
		s, err := net.DialTimeout("tcp", f.target, frontIOTimeout)
		if err != nil || !f.track(s) {
			return nil
		}
		_ = s.SetDeadline(time.Now().Add(frontIOTimeout))
		return s
	}
	if mode == frontPass {
		s := dial()
		if s == nil {
			return
		}
		defer f.untrack(s)
		if _, err := s.Write(first); err != nil {
			return
		}
		f.pipe(c, s, false)
		return
	}
	var tc *tls.Conn
	switch {
	case mode == frontDirect && isTLS:
		// The bytes read belong to the ClientHello.
		pc := &prefixedConn{Conn: c, r: io.MultiReader(bytes.NewReader(first), c)}
		tc = tls.Server(pc, &tls.Config{Certificates: []tls.Certificate{f.direct}, NextProtos: []string{"postgresql"}})
		if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "postgresql" {
			return // PostgreSQL 17 refuses direct TLS without the ALPN
		}
	case mode != frontDirect && isSSL:
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
		tc = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{f.cert}})
		if err := tc.Handshake(); err != nil || mode == frontImpostor {
			return
		}
	default:
		return // they all speak TLS only
	}
	s := dial()
	if s == nil {
		return
	}
	defer f.untrack(s)
	answer := make([]byte, 1)
	if _, err := s.Write(tlsSSLRequest()); err != nil {
		return
	}
	if _, err := io.ReadFull(s, answer); err != nil || answer[0] != 'S' {
		return
	}
	ts := tls.Client(s, &tls.Config{InsecureSkipVerify: true}) // the attacker trusts anything
	if err := ts.Handshake(); err != nil {
		return
	}
	f.pipe(tc, ts, mode == frontDowngrade)
}

// prefixedConn reads r (bytes already read from Conn, then Conn).
type prefixedConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// strikePlus relays the server's messages from server to client up to its
// SASL offer, which it relays without SCRAM-SHA-256-PLUS. False when
// either side failed.
func strikePlus(client, server net.Conn) bool {
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(server, hdr[:]); err != nil {
			return false
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(server, body); err != nil {
			return false
		}
		sasl := hdr[0] == 'R' && len(body) >= 4 && binary.BigEndian.Uint32(body) == 10
		if sasl {
			body = append(body[:4:4], "SCRAM-SHA-256\x00\x00"...)
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
		}
		if _, err := client.Write(append(hdr[:], body...)); err != nil {
			return false
		}
		if sasl {
			return true
		}
	}
}

// pipe copies both ways until either side ends, then closes both; with
// downgrade, b to a goes through strikePlus first.
func (f *pgFront) pipe(a, b net.Conn, downgrade bool) {
	for _, c := range []net.Conn{a, b} {
		_ = c.SetDeadline(time.Time{})
	}
	done := make(chan struct{})
	go func() { // ends when a or b closes
		if !downgrade || strikePlus(a, b) {
			_, _ = io.Copy(a, b)
		}
		a.Close()
		b.Close()
		close(done)
	}()
	_, _ = io.Copy(b, a)
	a.Close()
	b.Close()
	<-done
}

// addr is the cluster's TCP address.

// TestPassthroughBackendTLSWrongServer: a server with a certificate the
// upstream URL's CA did not sign (an impostor in front of the cluster,
// after the real one admitted bob and the auth user) makes a role's login
// fail with the certificate error, through the proxy as directly with pgx
// and the same URL: under verify-full and verify-ca with no plain-text
// retry; under prefer (no verification) the impostor's hang-up is
// retried in plain text, in the same order pgconn tries.
func TestPassthroughBackendTLSWrongServer(t *testing.T) {
	s := sharedSSLCluster(t)
	for _, m := range []struct {
		name    string
		params  map[string]string
		wantErr string   // in both errors
		want    []string // how the attempts began, through the proxy and directly alike
	}{
		{"verify-full", map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path},
			"certificate signed by unknown authority", []string{"impostor:ssl"}},
		{"verify-ca", map[string]string{"sslmode": "verify-ca", "sslrootcert": s.ca.Path},
			"certificate signed by unknown authority", []string{"impostor:ssl"}},
		{"prefer", map[string]string{"sslmode": "prefer"},
			"", []string{"impostor:ssl", "impostor:plain"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			// One front for the proxy, one for pgx: the proxy's pool may
			// retry in the background meanwhile.
			f := startPGFront(t, s.Addr(), s.otherCert)
			df := startPGFront(t, s.Addr(), s.otherCert)
			df.mode.Store(frontImpostor)
			p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url(f.addr(), "app", "app", m.params)))
			// The real server behind the front: bob logs in, and the auth
			// user's backend is opened for his lookup.
			if user, ssl := sessionSSL(t, connect(t, p.URL("bob", "bob-pw", "app"))); user != "bob" || !ssl {
				t.Fatalf("bob through the proxy: %q, ssl %v", user, ssl)
			}
			f.mode.Store(frontImpostor)

			n := f.count()
			_, _, perr := tryLogin(p.URL("alice", "alice-pw", "app"))
			_, _, derr := tryLogin(s.url(df.addr(), "alice", "alice-pw", m.params))
			// How the attempts began, each kind once, in order: pgx may
			// open a connection more than once per kind, and the proxy's
			// pool retries in the background.
			viaProxy, direct := firstSeen(f.since(n)), firstSeen(df.since(0))
			if perr == nil || derr == nil {
				t.Fatalf("alice logged in with an impostor: proxy %v, direct %v", perr, derr)
			}
			t.Logf("proxy: %v\ndirect: %v", perr, derr)
			if sqlState(perr) != "08006" || !strings.Contains(perr.Error(), m.wantErr) || !strings.Contains(derr.Error(), m.wantErr) {
				t.Errorf("errors: proxy %v; direct %v; want 08006 and %q in both", perr, derr, m.wantErr)
			}
			if strings.Join(viaProxy, ",") != strings.Join(m.want, ",") || strings.Join(direct, ",") != strings.Join(m.want, ",") {
				t.Errorf("attempts: proxy %v, direct pgx %v; want %v", viaProxy, direct, m.want)
			}
		})
	}
}

// firstSeen is list without repeats, in order of first appearance.
func firstSeen(list []string) []string {
	var out []string
	for _, v := range list {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// TestPassthroughBackendChannelBinding: the passthrough's SCRAM toward the
// server is an exchange of its own (its nonce, its proof from the
// ClientKey), so it binds the proxy's TLS session with the server
// (SCRAM-SHA-256-PLUS, tls-server-end-point) as pgx does with a password,
// per the upstream URL's channel_binding. Through a man in the middle that
// terminates TLS (invisible to sslmode=require), every case ends as it does
// for pgx directly with the same URL:
//   - prefer: the login fails, the server's certificate hash is not the
//     one the proxy bound to;
//   - disable: both get through, which proves the failure is the binding's;
//   - prefer, with SCRAM-SHA-256-PLUS struck from the server's offer: the
//     client says it could bind ("y"), and the server, which can, refuses
//     the downgrade;
//   - require, with the same downgrade: refused before any proof is sent.
func TestPassthroughBackendChannelBinding(t *testing.T) {
	s := sharedSSLCluster(t)
	for _, c := range []struct {
		name    string
		cb      string
		mode    int32
		wantErr string // in both errors; "" = both log in
	}{
		{"prefer", "prefer", frontMITM, "SCRAM channel binding check failed"},
		{"disable", "disable", frontMITM, ""},
		{"prefer-downgraded", "prefer", frontDowngrade, "SCRAM channel binding negotiation error"},
		{"require-downgraded", "require", frontDowngrade, "SCRAM-SHA-256-PLUS"},
		{"disable-downgraded", "disable", frontDowngrade, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			params := map[string]string{"sslmode": "require", "channel_binding": c.cb}
			f := startPGFront(t, s.Addr(), s.otherCert)
			p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url(f.addr(), "app", "app", params)))
			// bob's login opens the auth user's backend to the real server.
			if user, _ := sessionSSL(t, connect(t, p.URL("bob", "bob-pw", "app"))); user != "bob" {
				t.Fatalf("bob through the proxy: %q", user)
			}
			f.mode.Store(c.mode)
			n := f.count()
			puser, pssl, perr := tryLogin(p.URL("alice", "alice-pw", "app"))
			duser, dssl, derr := tryLogin(s.url(f.addr(), "alice", "alice-pw", params))
			if got := f.since(n); len(got) < 2 || got[0] != frontModeNames[c.mode]+":ssl" {
				t.Fatalf("the logins did not go through the man in the middle: %v", got)
			}
			if c.wantErr == "" {
				if perr != nil || derr != nil || puser != "alice" || duser != "alice" || !pssl || !dssl {
					t.Fatalf("proxy %q ssl %v (%v), direct %q ssl %v (%v); want both alice on TLS", puser, pssl, perr, duser, dssl, derr)
				}
				return
			}
			if !strings.Contains(fmt.Sprint(derr), c.wantErr) || !strings.Contains(fmt.Sprint(perr), c.wantErr) || sqlState(perr) != "08006" {
				t.Fatalf("proxy %v; direct %v; want %q in both (08006 from the proxy)", perr, derr, c.wantErr)
			}
		})
	}
}

// TestPassthroughBackendPreferFallback: sslmode=prefer falls back to plain
// text through the proxy exactly when pgx (and psql) do with the same URL:
// against a server without ssl, and against one whose pg_hba.conf refuses
// the role on TLS (hostssl reject, pt_plainonly), where the TLS login's
// 28000 is retried in plain text; under require nothing falls back.
func TestPassthroughBackendPreferFallback(t *testing.T) {
	s := sharedSSLCluster(t)
	t.Run("hostssl-reject", func(t *testing.T) {
		prefer := map[string]string{"sslmode": "prefer"}
		p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", prefer)))
		for name, u := range map[string]string{
			"direct": s.url("", "pt_plainonly", "plain-pw", prefer),
			"proxy":  p.URL("pt_plainonly", "plain-pw", "app"),
		} {
			if user, ssl := sessionSSL(t, connect(t, u)); user != "pt_plainonly" || ssl {
				t.Errorf("%s: %q, ssl %v; want pt_plainonly in plain text", name, user, ssl)
			}
		}
		out, err := runPsql(t, s.url("", "pt_plainonly", "plain-pw", prefer), "-At", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		if err != nil || strings.TrimSpace(out) != "f" {
			t.Errorf("psql direct with prefer: %q, %v; want a plain-text session", out, err)
		}

		require := map[string]string{"sslmode": "require"}
		preq := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", require)))
		_, _, derr := tryLogin(s.url("", "pt_plainonly", "plain-pw", require))
		_, _, perr := tryLogin(preq.URL("pt_plainonly", "plain-pw", "app"))
		const want = `user "pt_plainonly", database "app", SSL encryption`
		if sqlState(derr) != "28000" || !strings.Contains(derr.Error(), want) || sqlState(perr) != "08006" || !strings.Contains(perr.Error(), want) {
			t.Errorf("require: direct %v; proxy %v; want hostssl's refusal in both", derr, perr)
		}
	})

	t.Run("server-without-ssl", func(t *testing.T) {
		setupPassthroughRoles(t, "alice:alice-pw")
		preferURL := func(user, pw string) string {
			return strings.Replace(pg.URL(user, pw, "app"), "sslmode=disable", "sslmode=prefer", 1)
		}
		p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", preferURL("app", "app")))
		for name, u := range map[string]string{"direct": preferURL("alice", "alice-pw"), "proxy": p.URL("alice", "alice-pw", "app")} {
			if user, ssl := sessionSSL(t, connect(t, u)); user != "alice" || ssl {
				t.Errorf("%s: %q, ssl %v; want alice in plain text", name, user, ssl)
			}
		}
	})
}

// TestPassthroughClientTLSChannelBinding: TLS on both sides under
// auth.passthrough. Clients with sslmode=verify-full and
// channel_binding=require (psql as alice, pgx as bob) log in through the
// proxy as their own roles with SCRAM-SHA-256-PLUS, checked against the
// verifier in the database, while the proxy's backends log in to a TLS
// PostgreSQL with verify-full and channel_binding=require themselves; psql
// directly to that PostgreSQL gets the same session. A SCRAM-PLUS proof
// binding to the right and to a wrong certificate hash gets the proxy's
// answer PostgreSQL gives, a wrong password 28P01; and a plain-text client
// with channel_binding=require is refused by its own library (pgx, libpq)
// exactly as when it connects straight to PostgreSQL in plain text.
func TestPassthroughClientTLSChannelBinding(t *testing.T) {
	s := sharedSSLCluster(t)
	cs := newTLSSetup(t) // the proxy's own certificate, for its clients
	upstream := s.url("", "app", "app", map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "channel_binding": "require"})
	p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", upstream),
		WithEnv("PGSIDECAR_TLS__MODE", "prefer"),
		WithEnv("PGSIDECAR_TLS__CERT_FILE", cs.cert),
		WithEnv("PGSIDECAR_TLS__KEY_FILE", cs.key))
	strict := func(ca string) map[string]string {
		return map[string]string{"sslmode": "verify-full", "sslrootcert": ca, "channel_binding": "require"}
	}
	const sql = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	for name, u := range map[string]string{
		"proxy":      s.url(p.Addr, "alice", "alice-pw", strict(cs.ca.Path)),
		"PostgreSQL": s.url("", "alice", "alice-pw", strict(s.ca.Path)),
	} {
		out, err := runPsql(t, u, "-At", "-c", sql)
		if err != nil || strings.TrimSpace(out) != "alice true" {
			t.Errorf("psql verify-full + channel_binding=require to %s as alice: %q, %v; want \"alice true\"", name, out, err)
		}
	}
	if user, ssl, err := tryLogin(s.url(p.Addr, "bob", "bob-pw", strict(cs.ca.Path))); err != nil || user != "bob" || !ssl {
		t.Errorf("pgx verify-full + channel_binding=require through the proxy as bob: %q, ssl %v, %v", user, ssl, err)
	}
	if _, _, err := tryLogin(s.url(p.Addr, "bob", "wrong", strict(cs.ca.Path))); sqlState(err) != "28P01" {
		t.Errorf("bob with a wrong password and channel binding: %v, want 28P01", err)
	}
	if got := tcpBackendsSSL(t, s); got["alice"][0] == 0 || got["alice"] != [2]int{got["alice"][0], got["alice"][0]} || got["bob"][1] == 0 {
		t.Errorf("the proxy's backends: %v; want alice's and bob's, all on TLS", got)
	}

	// SCRAM-PLUS by hand: the proxy's answers are PostgreSQL's, each
	// binding to its own certificate.
	proxySum, pgSum := sha256.Sum256(cs.certDER), sha256.Sum256(s.serverDER)
	for _, c := range []struct {
		name          string
		proxyCB, pgCB []byte
	}{{"right hash", proxySum[:], pgSum[:]}, {"wrong hash", make([]byte, 32), make([]byte, 32)}} {
		got := tlsRawSCRAMPlusAs(t, p.Addr, "alice", "alice-pw", c.proxyCB)
		want := tlsRawSCRAMPlusAs(t, s.Addr(), "alice", "alice-pw", c.pgCB)
		if got != want {
			t.Errorf("SCRAM-PLUS as alice, %s: proxy %q, PostgreSQL %q", c.name, got, want)
		}
	}

	// Plain text with channel_binding=require: the client library refuses
	// the SCRAM-SHA-256-only offer, of the proxy as of PostgreSQL (app may
	// log in there in plain text; alice may not).
	plain := map[string]string{"sslmode": "disable", "channel_binding": "require"}
	_, _, perr := tryLogin(s.url(p.Addr, "alice", "alice-pw", plain))
	_, _, derr := tryLogin(s.url("", "app", "app", plain))
	const pgxWant = "channel binding required but server does not support SCRAM-SHA-256-PLUS"
	if !strings.Contains(fmt.Sprint(perr), pgxWant) || !strings.Contains(fmt.Sprint(derr), pgxWant) {
		t.Errorf("pgx in plain text with channel_binding=require: proxy %v; PostgreSQL %v; want %q from both", perr, derr, pgxWant)
	}
	_, perr = runPsql(t, s.url(p.Addr, "alice", "alice-pw", plain), "-c", "SELECT 1")
	_, derr = runPsql(t, s.url("", "app", "app", plain), "-c", "SELECT 1")
	const libpqWant = "channel binding required, but SSL not in use"
	if !strings.Contains(fmt.Sprint(perr), libpqWant) || !strings.Contains(fmt.Sprint(derr), libpqWant) {
		t.Errorf("psql in plain text with channel_binding=require: proxy %v; PostgreSQL %v; want %q from both", perr, derr, libpqWant)
	}
}

// TestPassthroughBackendDirectTLS: with sslnegotiation=direct in the
// upstream URL the passthrough starts TLS at the first byte with ALPN
// "postgresql", as pgx does (PostgreSQL 17's direct TLS, played by a front
// with the server's own certificate, as the cluster is older): alice logs
// in through the proxy and directly with pgx and the same URL
// (verify-full, channel_binding=require), and no connection began with an
// SSLRequest or in plain text.
func TestPassthroughBackendDirectTLS(t *testing.T) {
	s := sharedSSLCluster(t)
	f := startPGFront(t, s.Addr(), s.otherCert)
	f.direct = s.serverPair
	f.mode.Store(frontDirect)
	params := map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "sslnegotiation": "direct", "channel_binding": "require"}
	p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url(f.addr(), "app", "app", params)))
	for name, u := range map[string]string{
		"proxy":  p.URL("alice", "alice-pw", "app"),
		"direct": s.url(f.addr(), "alice", "alice-pw", params),
	} {
		if user, ssl, err := tryLogin(u); err != nil || user != "alice" || !ssl {
			t.Errorf("%s: %q, ssl %v, %v; want alice on TLS", name, user, ssl, err)
		}
	}
	// The auth user's, alice's through the proxy, and pgx's.
	if got := firstSeen(f.since(0)); strings.Join(got, ",") != "direct:tls" || f.count() < 3 {
		t.Errorf("connections began %v (%d of them); want direct TLS only, at least 3", got, f.count())
	}
}

// TestPassthroughBackendClientCertificate: the upstream URL's sslcert and
// sslkey are presented by the passthrough's logins too, as by pgx: carol,
// whom pg_hba.conf admits only with a client certificate besides her
// password (hostssl ... clientcert=verify-ca), logs in through the proxy
// and directly with the same URL, and the server sees the certificate on
// her backend (pg_stat_ssl.client_dn); without sslcert both are refused
// by the server for want of a certificate. With sslcertmode=require, a
// man in the middle that asks for no certificate is refused by the proxy
// as by pgx.
func TestPassthroughBackendClientCertificate(t *testing.T) {
	s := sharedSSLCluster(t)
	with := map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "sslcert": s.clientCert, "sslkey": s.clientKey}
	without := map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path}
	const dnSQL = "SELECT current_user || ' ' || coalesce(client_dn, '(none)') FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	p := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", with)))
	for name, u := range map[string]string{"proxy": p.URL("carol", "carol-pw", "app"), "direct": s.url("", "carol", "carol-pw", with)} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var got string
		err := connect(t, u).QueryRow(ctx, dnSQL).Scan(&got)
		cancel()
		if err != nil || got != "carol /CN=pgsidecar-backend" {
			t.Errorf("%s: %q, %v; want carol with the client certificate", name, got, err)
		}
	}

	pno := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url("", "app", "app", without)))
	_, _, perr := tryLogin(pno.URL("carol", "carol-pw", "app"))
	_, _, derr := tryLogin(s.url("", "carol", "carol-pw", without))
	const want = "connection requires a valid client certificate"
	if sqlState(derr) != "28000" || !strings.Contains(derr.Error(), want) || sqlState(perr) != "08006" || !strings.Contains(perr.Error(), want) {
		t.Errorf("without sslcert: proxy %v; direct %v; want the server's %q in both", perr, derr, want)
	}

	// sslcertmode=require, no verification of the server, no channel
	// binding: only the certificate request can expose the man in the
	// middle (the server, with ssl_ca_file, asks every TLS client).
	certReq := map[string]string{"sslmode": "require", "sslcert": s.clientCert, "sslkey": s.clientKey,
		"sslcertmode": "require", "channel_binding": "disable"}
	f := startPGFront(t, s.Addr(), s.otherCert)
	pm := startPassthroughProxy(t, "30s", WithEnv("DATABASE_URL", s.url(f.addr(), "app", "app", certReq)))
	if user, _, err := tryLogin(pm.URL("carol", "carol-pw", "app")); err != nil || user != "carol" {
		t.Fatalf("carol through the proxy and the real server: %q, %v", user, err)
	}
	f.mode.Store(frontMITM)
	_, _, perr = tryLogin(pm.URL("alice", "alice-pw", "app"))
	_, _, derr = tryLogin(s.url(f.addr(), "alice", "alice-pw", certReq))
	const wantReq = "did not request an SSL certificate"
	if !strings.Contains(fmt.Sprint(perr), wantReq) || !strings.Contains(fmt.Sprint(derr), wantReq) || sqlState(perr) != "08006" {
		t.Errorf("sslcertmode=require through a man in the middle: proxy %v; direct %v; want %q in both", perr, derr, wantReq)
	}
}
