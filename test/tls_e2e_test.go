package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// tlsCA is a certificate authority a test generates, with its certificate
// written (PEM) to Path.
type tlsCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	Path string
}

var tlsSerial int64 = 1

// newTLSCA makes a CA named name in dir.
func newTLSCA(t *testing.T, dir, name string) *tlsCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tlsSerial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(tlsSerial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &tlsCA{cert: cert, key: key, Path: filepath.Join(dir, name+".crt")}
	tlsWritePEM(t, ca.Path, "CERTIFICATE", der)
	return ca
}

// issue writes a certificate signed by ca (and its key) to dir/base.crt and
// dir/base.key: a server certificate for 127.0.0.1, ::1 and localhost, or a
// client certificate with common name cn. It returns the paths and the
// certificate's DER.
func (ca *tlsCA) issue(t *testing.T, dir, base, cn string, server bool) (certPath, keyPath string, der []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tlsSerial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(tlsSerial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	tlsWritePEM(t, certPath, "CERTIFICATE", der)
	tlsWritePEM(t, keyPath, "PRIVATE KEY", keyDER) // 0600: libpq refuses a readable client key
	return certPath, keyPath, der
}

// tlsWritePEM writes one PEM block, replacing the file in one rename so a
// reload never reads half a file.
func tlsWritePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// tlsSetup is a CA and a server certificate of it in a temp dir.
type tlsSetup struct {
	dir            string
	ca             *tlsCA
	cert, key      string
	certDER        []byte
	clientCA       *tlsCA
	otherCA        *tlsCA // signs nothing the proxy trusts
	clientCertFile string // CN app, by clientCA
	clientKeyFile  string
}

func newTLSSetup(t *testing.T) *tlsSetup {
	t.Helper()
	s := &tlsSetup{dir: t.TempDir()}
	s.ca = newTLSCA(t, s.dir, "server-ca")
	s.cert, s.key, s.certDER = s.ca.issue(t, s.dir, "server", "pgsidecar", true)
	s.clientCA = newTLSCA(t, s.dir, "client-ca")
	s.otherCA = newTLSCA(t, s.dir, "other-ca")
	s.clientCertFile, s.clientKeyFile, _ = s.clientCA.issue(t, s.dir, "client-app", "app", false)
	return s
}

// startTLSProxy runs the proxy with tls.mode mode and s's files.
func startTLSProxy(t *testing.T, s *tlsSetup, mode string, opts ...ProxyOption) *Proxy {
	t.Helper()
	all := []ProxyOption{
		WithEnv("PGSIDECAR_TLS__MODE", mode),
		WithEnv("PGSIDECAR_TLS__CERT_FILE", s.cert),
		WithEnv("PGSIDECAR_TLS__KEY_FILE", s.key),
		WithEnv("PGSIDECAR_TLS__CA_FILE", s.clientCA.Path),
	}
	return StartProxy(t, append(all, opts...)...)
}

// tlsURL is the app's URL through p with the given libpq parameters
// instead of sslmode=disable.
func tlsURL(p *Proxy, params map[string]string) string {
	u, _ := url.Parse(p.AppURL())
	q := url.Values{}
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// TestTLSPsqlVerifyFullChannelBinding: psql (libpq) verifies the proxy's
// certificate against the test CA (sslmode=verify-full) and, with
// channel_binding=require, logs in with SCRAM-SHA-256-PLUS. A wrong root
// CA fails verification; a plain-text client is refused under require.
func TestTLSPsqlVerifyFullChannelBinding(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "require")

	out, err := runPsql(t, tlsURL(p, map[string]string{
		"sslmode": "verify-full", "sslrootcert": s.ca.Path, "channel_binding": "require",
	}), "-c", `\conninfo`, "-At", "-c", "SELECT current_user")
	if err != nil {
		t.Fatalf("psql verify-full + channel_binding=require: %v", err)
	}
	if !strings.Contains(out, "SSL connection (protocol: TLSv1.3") || !strings.HasSuffix(strings.TrimSpace(out), "app") {
		t.Fatalf("psql output: %q, want an SSL connection as app", out)
	}
	if !p.Logs.ContainsWithin(`"tls":"TLS 1.3`, 2*time.Second) {
		t.Errorf("the proxy's log lines do not say the client is on TLS")
	}

	// A root that did not sign the proxy's certificate: libpq refuses it.
	_, err = runPsql(t, tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": s.otherCA.Path}), "-c", "SELECT 1")
	if err == nil || !strings.Contains(err.Error(), "certificate verify failed") {
		t.Fatalf("psql with the wrong root CA: %v, want certificate verify failed", err)
	}

	// Plain text under require: FATAL 28000 with a hint, for psql and pgx.
	_, err = runPsql(t, tlsURL(p, map[string]string{"sslmode": "disable"}), "-c", "SELECT 1")
	if err == nil || !strings.Contains(err.Error(), "connection without TLS refused") ||
		!strings.Contains(err.Error(), "HINT:  connect with sslmode=require") {
		t.Fatalf("plain psql under tls.mode require: %v, want the refusal with its hint", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, p.AppURL())
	if got := sqlState(err); got != "28000" {
		t.Fatalf("plain pgx under tls.mode require: %v (SQLSTATE %q), want 28000", err, got)
	}

	// A CancelRequest in plain text is still served under require (libpq
	// before 17 sends cancels unencrypted): this one's key matches nobody,
	// so it is counted as unknown rather than refused.
	raw, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cr, err := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write(cr); err != nil {
		t.Fatal(err)
	}
	if !testEventually(5*time.Second, func() bool {
		n, _ := num(p.Stats(t)["clients"].(map[string]any), "cancels_unknown")
		return n == 1
	}) {
		t.Fatalf("a plain-text CancelRequest under tls.mode require was not processed: %v", p.Stats(t)["clients"])
	}
}

// TestTLSSASLMechanisms: on TLS the proxy offers SCRAM-SHA-256-PLUS before
// SCRAM-SHA-256, in plain text only SCRAM-SHA-256 (tls.mode prefer serves
// both). A SCRAM-PLUS client binding to other data than the certificate's
// hash is refused (08P01), one binding to the right hash logs in.
func TestTLSSASLMechanisms(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "prefer")

	plain := tlsRawConn(t, p.Addr, false)
	if got := tlsRawMechanisms(t, plain); strings.Join(got, ",") != "SCRAM-SHA-256" {
		t.Fatalf("plain text mechanisms %v, want SCRAM-SHA-256 only", got)
	}
	enc := tlsRawConn(t, p.Addr, true)
	if got := tlsRawMechanisms(t, enc); strings.Join(got, ",") != "SCRAM-SHA-256-PLUS,SCRAM-SHA-256" {
		t.Fatalf("TLS mechanisms %v, want SCRAM-SHA-256-PLUS,SCRAM-SHA-256", got)
	}

	// tls-server-end-point of an ECDSA-SHA256 certificate: its SHA-256.
	sum := sha256.Sum256(s.certDER)
	if msg := tlsRawSCRAMPlus(t, p.Addr, sum[:]); msg != "" {
		t.Fatalf("SCRAM-PLUS with the certificate's hash: %s", msg)
	}
	if msg := tlsRawSCRAMPlus(t, p.Addr, make([]byte, 32)); msg != "28000 SCRAM channel binding check failed" {
		t.Fatalf("SCRAM-PLUS with a wrong hash: %q, want 28000 SCRAM channel binding check failed", msg)
	}
}

// tlsRawSCRAMPlus logs in to addr over TLS as app with SCRAM-SHA-256-PLUS
// binding to cbData, and returns "" on success or the error's
// "SQLSTATE message".
func tlsRawSCRAMPlus(t *testing.T, addr string, cbData []byte) string {
	t.Helper()
	return tlsRawSCRAMPlusAs(t, addr, "app", "app", cbData)
}

// tlsRawSCRAMPlusAs is tlsRawSCRAMPlus as user with password.
func tlsRawSCRAMPlusAs(t *testing.T, addr, user, password string, cbData []byte) string {
	t.Helper()
	fe := tlsRawConnAs(t, addr, true, user)
	tlsRawMechanisms(t, fe)
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := client.NewConversationWithChannelBinding(scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: cbData})
	first, _ := conv.Step("")
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte(first)})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %#v, want AuthenticationSASLContinue", msg)
	}
	final, err := conv.Step(string(cont.Data))
	if err != nil {
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASLFinal:
		if _, err := conv.Step(string(m.Data)); err != nil {
			t.Fatalf("server signature: %v", err)
		}
		return ""
	case *pgproto3.ErrorResponse:
		return m.Code + " " + m.Message
	}
	t.Fatalf("got %#v, want AuthenticationSASLFinal or ErrorResponse", msg)
	return ""
}

// tlsRawConn opens a connection to addr (the proxy or PostgreSQL), over
// TLS (SSLRequest, verifying the certificate is not the point here) or
// not, and sends the app's StartupMessage.
func tlsRawConn(t *testing.T, addr string, useTLS bool) *pgproto3.Frontend {
	t.Helper()
	return tlsRawConnAs(t, addr, useTLS, "app")
}

// tlsRawConnAs is tlsRawConn with user's StartupMessage (database app).
func tlsRawConnAs(t *testing.T, addr string, useTLS bool, user string) *pgproto3.Frontend {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var conn net.Conn = c
	if useTLS {
		if _, err := c.Write(tlsSSLRequest()); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, %v; want S", b[0], err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		conn = tc
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": "app"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return fe
}

// tlsRawMechanisms reads the AuthenticationSASL request and returns its
// mechanisms.
func tlsRawMechanisms(t *testing.T, fe *pgproto3.Frontend) []string {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	sasl, ok := msg.(*pgproto3.AuthenticationSASL)
	if !ok {
		t.Fatalf("got %#v, want AuthenticationSASL", msg)
	}
	return sasl.AuthMechanisms
}

// tlsSSLRequest is the 8-byte SSLRequest.
func tlsSSLRequest() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, 8)
	binary.BigEndian.PutUint32(b[4:], 80877103)
	return b
}

// TestTLSClientCertificates: under verify-full psql logs in with a client
// certificate whose CN is its user; no certificate, a certificate of
// another user, and one from an untrusted CA are refused. verify-ca
// accepts the other user's certificate (it checks the chain only).
func TestTLSClientCertificates(t *testing.T) {
	s := newTLSSetup(t)
	bobCert, bobKey, _ := s.clientCA.issue(t, s.dir, "client-bob", "bob", false)
	strayCert, strayKey, _ := s.otherCA.issue(t, s.dir, "client-stray", "app", false)
	p := startTLSProxy(t, s, "verify-full")
	base := map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path}
	with := func(cert, key string) string {
		m := map[string]string{"sslcert": cert, "sslkey": key}
		for k, v := range base {
			m[k] = v
		}
		return tlsURL(p, m)
	}

	out, err := runPsql(t, with(s.clientCertFile, s.clientKeyFile), "-At", "-c", "SELECT current_user")
	if err != nil || strings.TrimSpace(out) != "app" {
		t.Fatalf("psql with app's certificate: %q, %v", out, err)
	}
	// No certificate at all (sslcert names no file, so libpq sends none).
	_, err = runPsql(t, with(filepath.Join(s.dir, "none.crt"), filepath.Join(s.dir, "none.key")), "-c", "SELECT 1")
	if err == nil || !strings.Contains(err.Error(), "connection requires a valid client certificate") {
		t.Fatalf("psql without a certificate: %v", err)
	}
	_, err = runPsql(t, with(bobCert, bobKey), "-c", "SELECT 1")
	if err == nil || !strings.Contains(err.Error(), `certificate validation (clientcert=verify-full) failed for user "app": CN mismatch`) {
		t.Fatalf("psql as app with bob's certificate: %v", err)
	}
	_, err = runPsql(t, with(strayCert, strayKey), "-c", "SELECT 1")
	if err == nil {
		t.Fatal("psql with a certificate of an untrusted CA logged in")
	}
	if !p.Logs.ContainsWithin("TLS handshake failed", 5*time.Second) {
		t.Errorf("the proxy did not log the failed handshake of the untrusted certificate")
	}

	ca := startTLSProxy(t, s, "verify-ca")
	m := map[string]string{"sslcert": bobCert, "sslkey": bobKey, "sslmode": "verify-full", "sslrootcert": s.ca.Path}
	if out, err := runPsql(t, tlsURL(ca, m), "-At", "-c", "SELECT current_user"); err != nil || strings.TrimSpace(out) != "app" {
		t.Fatalf("verify-ca: psql as app with bob's certificate: %q, %v (verify-ca checks no name)", out, err)
	}
}

// testEventually polls cond every 20ms until it holds or d passes.
func testEventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTLSCertificateRotation: a pgx client on TLS stays connected and keeps
// working while the certificate files are replaced (by one of another CA)
// and SIGHUP reloads them; new clients get the new certificate (a client
// trusting only the old CA is refused, one trusting the new is served).
func TestTLSCertificateRotation(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "require")
	oldURL := tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path})

	a := connect(t, oldURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := a.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	tlsPeerIs(t, a, s.certDER)

	newCA := newTLSCA(t, s.dir, "server-ca-2")
	tmpDir := t.TempDir()
	cert2, key2, der2 := newCA.issue(t, tmpDir, "server2", "pgsidecar", true)
	for _, f := range [][2]string{{cert2, s.cert}, {key2, s.key}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		tmp := f[1] + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f[1]); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256(der2)
	p.Signal(syscall.SIGHUP)
	if !testEventually(10*time.Second, func() bool {
		return p.Logs.Contains(`"tls_cert_sha256":"` + hex.EncodeToString(sum[:]) + `"`)
	}) {
		t.Fatalf("SIGHUP did not load the new certificate")
	}
	if !p.Logs.Contains(`tls.cert_file (contents)`) {
		t.Errorf("the reload did not report the certificate change")
	}

	// The old client is still there, on its session with the old certificate.
	if err := a.QueryRow(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("TLS client after the reload: %d, %v", n, err)
	}
	tlsPeerIs(t, a, s.certDER)

	b := connect(t, tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": newCA.Path}))
	if err := b.QueryRow(ctx, "SELECT 3").Scan(&n); err != nil || n != 3 {
		t.Fatalf("new client: %d, %v", n, err)
	}
	tlsPeerIs(t, b, der2)
	if _, err := pgx.Connect(ctx, oldURL); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a client trusting only the old CA: %v, want a verification failure", err)
	}
	if got, _ := num(p.Stats(t)["clients"].(map[string]any), "clients_tls"); got != 2 {
		t.Errorf("/stats clients_tls = %v, want 2", got)
	}
	if err := a.QueryRow(ctx, "SELECT 4").Scan(&n); err != nil || n != 4 {
		t.Fatalf("old TLS client at the end: %d, %v", n, err)
	}

	// A key file that does not load: the reload fails, the running
	// certificate stays, clients carry on.
	if err := os.WriteFile(s.key, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	if !testEventually(10*time.Second, func() bool {
		return p.Logs.Contains("reload failed; keeping the running configuration") && p.Logs.Contains("tls.cert_file: cannot load the certificate")
	}) {
		t.Fatalf("a broken key file did not fail the reload")
	}
	c := connect(t, tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": newCA.Path}))
	if err := c.QueryRow(ctx, "SELECT 5").Scan(&n); err != nil || n != 5 {
		t.Fatalf("new client after a failed reload: %d, %v", n, err)
	}
	tlsPeerIs(t, c, der2)
	if err := a.QueryRow(ctx, "SELECT 6").Scan(&n); err != nil || n != 6 {
		t.Fatalf("old TLS client after a failed reload: %d, %v", n, err)
	}
}

// tlsPeerIs checks that conn's TLS session was served the certificate der.
func tlsPeerIs(t *testing.T, conn *pgx.Conn, der []byte) {
	t.Helper()
	tc, ok := conn.PgConn().Conn().(*tls.Conn)
	if !ok {
		t.Fatalf("pgx connection is %T, not TLS", conn.PgConn().Conn())
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 || string(certs[0].Raw) != string(der) {
		t.Fatalf("the TLS session's certificate is not the expected one")
	}
}

// TestTLSDirect: PostgreSQL 17's direct TLS (no SSLRequest, ALPN
// "postgresql"): pgx with sslnegotiation=direct logs in; a TLS client
// without ALPN gets FATAL 08P01 over TLS, one with another ALPN fails the
// handshake. psql 15 here cannot do direct TLS, so pgx stands in for libpq.
func TestTLSDirect(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "require")

	c := connect(t, tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "sslnegotiation": "direct"}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var user string
	if err := c.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != "app" {
		t.Fatalf("direct TLS: %q, %v", user, err)
	}
	if got := c.PgConn().Conn().(*tls.Conn).ConnectionState().NegotiatedProtocol; got != "postgresql" {
		t.Fatalf("ALPN %q, want postgresql", got)
	}

	dial := func(protos []string) (*tls.Conn, error) {
		raw, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: protos})
		return tc, tc.Handshake()
	}
	tc, err := dial(nil)
	if err != nil {
		t.Fatalf("handshake without ALPN: %v", err)
	}
	msg, err := pgproto3.NewFrontend(tc, tc).Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "08P01" ||
		e.Message != "received direct SSL connection request without ALPN protocol negotiation extension" {
		t.Fatalf("direct TLS without ALPN: %#v, %v", msg, err)
	}
	if _, err := dial([]string{"h2"}); err == nil || !strings.Contains(err.Error(), "no application protocol") {
		t.Fatalf("direct TLS with ALPN h2: %v, want no_application_protocol", err)
	}
}

// TestTLSBytesAfterSSLRequest: CVE-2021-23214. An SSLRequest followed in
// the same write by more bytes (a StartupMessage a man in the middle
// injected before the handshake) is refused with 08P01 in plain text; the
// same SSLRequest alone is answered 'S'.
func TestTLSBytesAfterSSLRequest(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "prefer")

	if got := tlsSSLRequestAnswer(t, p.Addr, false); got != "S" {
		t.Fatalf("SSLRequest alone: %q, want S", got)
	}
	if got := tlsSSLRequestAnswer(t, p.Addr, true); got != "08P01 received unencrypted data after SSL request" {
		t.Fatalf("SSLRequest with a StartupMessage: %q, want 08P01 received unencrypted data after SSL request", got)
	}
}

// tlsSSLRequestAnswer sends an SSLRequest to addr, followed in the same
// write by a StartupMessage when withStartup, and returns the answer: "S",
// "N", or the ErrorResponse's "SQLSTATE message" (after which the
// connection must be closed), read after the TLS handshake when the server
// said 'S' to an SSLRequest with bytes behind it.
func tlsSSLRequestAnswer(t *testing.T, addr string, withStartup bool) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	out := tlsSSLRequest()
	if withStartup {
		out = append(out, encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": "app", "database": "app"}})...)
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("no answer to the SSLRequest: %v", err)
	}
	var fe *pgproto3.Frontend
	var rest io.Reader = c // where the close shows after the error
	switch {
	case b[0] == 'S' && withStartup:
		// PostgreSQL answers 'S' and reports the injected bytes (which it
		// read into its buffer) after the handshake, over TLS; the proxy,
		// which never reads ahead, refuses at once in plain text.
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake after 'S': %v", err)
		}
		fe, rest = pgproto3.NewFrontend(tc, tc), tc
	case b[0] == 'E':
		fe = pgproto3.NewFrontend(io.MultiReader(bytes.NewReader(b[:]), c), c)
	default:
		return string(b[:])
	}
	msg, err := fe.Receive()
	e, ok := msg.(*pgproto3.ErrorResponse)
	if err != nil || !ok {
		t.Fatalf("after 'E': %#v, %v", msg, err)
	}
	// Closed: EOF, or a reset because the injected bytes were never read.
	if _, err := rest.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection not closed after the error: %v", err)
	}
	return e.Code + " " + e.Message
}

// TestTLSNodePostgres runs node-postgres over TLS (sslmode=verify-full with
// the test CA): 4 clients of named queries, each checking its socket is
// encrypted.
func TestTLSNodePostgres(t *testing.T) {
	txRequireTool(t, "node", "apt-get install -y nodejs npm")
	txNodeInstall(t)
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "require")
	const clients, iterations = 4, 10
	rep := txRunDriver(t, time.Minute, txNodeDir, []string{
		"PG_URL=" + tlsURL(p, map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path}),
		"CLIENTS=" + strconv.Itoa(clients),
		"ITERATIONS=" + strconv.Itoa(iterations),
		"TIMEOUT_MS=50000",
		"REQUIRE_TLS=1",
	}, "node", "named_queries.js")
	if rep.Queries == 0 {
		t.Fatalf("node-postgres over TLS ran no query: %v", rep.Failures)
	}
	if len(rep.Failures) > 0 {
		t.Fatalf("node-postgres over TLS: %s", strings.Join(rep.Failures, "\n"))
	}
	if !p.Logs.ContainsWithin(`"tls":"TLS 1.3`, 2*time.Second) {
		t.Errorf("no TLS client in the proxy's logs")
	}
}

// startSSLCluster starts a cluster of its own (the shared one stays plain)
// with ssl = on and s's server certificate, so the proxy's TLS can be
// compared with PostgreSQL's. It returns the cluster and its hba file.
func startSSLCluster(t *testing.T, s *tlsSetup) (*Cluster, string) {
	t.Helper()
	c := testpg.Start(t)
	if err := c.EnableSSL(s.cert, s.key, "", ""); err != nil {
		t.Fatal(err)
	}
	return c, c.HBAFile()
}

// TestTLSComparedWithPostgreSQL puts the proxy's TLS beside PostgreSQL's
// own (ssl = on, the same certificate): the same SASL mechanisms on TLS and
// in plain text, the same answer to a SCRAM-PLUS binding to the right and
// to a wrong hash, the same refusal of bytes after an SSLRequest, the same
// SQLSTATE for a plain-text client where TLS is required (hostnossl reject
// for PostgreSQL), and psql with verify-full and channel_binding=require
// through both.
func TestTLSComparedWithPostgreSQL(t *testing.T) {
	s := newTLSSetup(t)
	c, hba := startSSLCluster(t, s)
	p := startTLSProxy(t, s, "prefer")
	sum := sha256.Sum256(s.certDER)
	direct := c.Addr()

	for _, useTLS := range []bool{false, true} {
		want := strings.Join(tlsRawMechanisms(t, tlsRawConn(t, direct, useTLS)), ",")
		if got := strings.Join(tlsRawMechanisms(t, tlsRawConn(t, p.Addr, useTLS)), ","); got != want {
			t.Errorf("TLS %v: mechanisms %s, PostgreSQL offers %s", useTLS, got, want)
		}
	}
	for _, cb := range [][]byte{sum[:], make([]byte, 32)} {
		want := tlsRawSCRAMPlus(t, direct, cb)
		if got := tlsRawSCRAMPlus(t, p.Addr, cb); got != want {
			t.Errorf("SCRAM-PLUS binding to %x: proxy %q, PostgreSQL %q", cb[:4], got, want)
		}
	}
	for _, withStartup := range []bool{false, true} {
		want := tlsSSLRequestAnswer(t, direct, withStartup)
		if got := tlsSSLRequestAnswer(t, p.Addr, withStartup); got != want {
			t.Errorf("SSLRequest (StartupMessage in the same write: %v): proxy %q, PostgreSQL %q", withStartup, got, want)
		}
	}
	directURL := func(params map[string]string) string {
		u, _ := url.Parse(c.URL("app", "app", "app"))
		q := url.Values{}
		for k, v := range params {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	strict := map[string]string{"sslmode": "verify-full", "sslrootcert": s.ca.Path, "channel_binding": "require"}
	for name, u := range map[string]string{"PostgreSQL": directURL(strict), "proxy": tlsURL(p, strict)} {
		if out, err := runPsql(t, u, "-At", "-c", "SELECT current_user"); err != nil || strings.TrimSpace(out) != "app" {
			t.Errorf("psql verify-full + channel_binding=require to %s: %q, %v", name, out, err)
		}
	}

	// TLS required: PostgreSQL by hostnossl reject, the proxy by tls.mode.
	if err := os.WriteFile(hba, []byte("local all all trust\nhostnossl all all 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 scram-sha-256\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := connect(t, c.AdminURL())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := admin.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	var want string
	if !testEventually(10*time.Second, func() bool {
		_, err := pgx.Connect(ctx, c.URL("app", "app", "app"))
		want = sqlState(err)
		return err != nil
	}) {
		t.Fatal("PostgreSQL still accepts plain text after hostnossl reject")
	}
	req := startTLSProxy(t, s, "require")
	_, err := pgx.Connect(ctx, req.AppURL())
	if got := sqlState(err); got != want || want != "28000" {
		t.Errorf("plain text where TLS is required: proxy SQLSTATE %q (%v), PostgreSQL %q", got, err, want)
	}
}
