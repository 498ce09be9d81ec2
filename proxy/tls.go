// Client TLS: the modes, the loaded setup (NewClientTLS), the handshake
// (startTLS), the checks at login (tlsCheckLogin) and admit's TLS helpers
// (errUnencryptedAfterSSL, prefixConn).

package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// TLSMode is how the proxy treats client TLS, with PgBouncer's
// client_tls_sslmode semantics.
type TLSMode string

// Client TLS modes.
const (
	// TLSDisable answers an SSLRequest 'N': plain text only.
	TLSDisable TLSMode = "disable"
	// TLSAllow and TLSPrefer accept TLS when the client asks, plain text
	// otherwise (the server side of allow and prefer is the same).
	TLSAllow  TLSMode = "allow"
	TLSPrefer TLSMode = "prefer"
	// TLSRequire refuses a client that logs in without TLS (28000).
	TLSRequire TLSMode = "require"
	// TLSVerifyCA also requires a client certificate signed by the CA file.
	TLSVerifyCA TLSMode = "verify-ca"
	// TLSVerifyFull also requires the certificate's common name to be the
	// user name the client logs in as (PostgreSQL's clientcert=verify-full).
	TLSVerifyFull TLSMode = "verify-full"
)

// TLSModes lists the client TLS modes, as configuration spells them.
var TLSModes = []TLSMode{TLSDisable, TLSAllow, TLSPrefer, TLSRequire, TLSVerifyCA, TLSVerifyFull}

// ParseTLSMode reads a TLS mode, ignoring case and surrounding space.
func ParseTLSMode(s string) (TLSMode, error) { return parseName(s, TLSModes) }

// UnmarshalText makes a TLSMode readable from configuration.
func (m *TLSMode) UnmarshalText(text []byte) (err error) {
	*m, err = ParseTLSMode(string(text))
	return err
}

// Offers reports whether the mode accepts TLS at all (a certificate is needed).
func (m TLSMode) Offers() bool { return m != "" && m != TLSDisable }

// Requires reports whether a client must be on TLS to log in.
func (m TLSMode) Requires() bool {
	return m == TLSRequire || m == TLSVerifyCA || m == TLSVerifyFull
}

// VerifiesClient reports whether the mode demands a client certificate
// (the CA file is needed).
func (m TLSMode) VerifiesClient() bool { return m == TLSVerifyCA || m == TLSVerifyFull }

// alpnPostgreSQL is the ALPN protocol name PostgreSQL 17 registered; it is
// mandatory for direct TLS and, when a client sends ALPN at all, on the
// SSLRequest path too.
const alpnPostgreSQL = "postgresql"

// tlsRecordHandshake is the first byte of a TLS ClientHello record: a
// connection starting with it is direct TLS (sslnegotiation=direct).
const tlsRecordHandshake = 0x16

// ClientTLSOptions is what NewClientTLS builds a client TLS setup from.
type ClientTLSOptions struct {
	Mode TLSMode
	// Certificate is the proxy's certificate chain and key; required
	// unless Mode is disable.
	Certificate tls.Certificate
	// ClientCAs verify client certificates; required for verify-ca and
	// verify-full, ignored otherwise.
	ClientCAs *x509.CertPool
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13.
	MinVersion uint16
	// CipherSuites restricts the TLS 1.2 suites; nil is Go's default
	// (secure) set. TLS 1.3 suites are not configurable in Go.
	CipherSuites []uint16
}

// ClientTLS is a loaded client TLS setup. It is immutable: a reload builds
// a new one and Server.Reload swaps it in, so a connection keeps the
// certificate (and channel binding data) it was accepted with while new
// connections get the new one.
type ClientTLS struct {
	mode   TLSMode
	config *tls.Config
	// endPoint is the tls-server-end-point channel binding data (RFC 5929:
	// the certificate's hash by its signature hash): what a client using
	// SCRAM-SHA-256-PLUS binds to. nil when the certificate's signature
	// algorithm defines none (Ed25519): then -PLUS is not offered.
	endPoint []byte
	// fingerprint is the SHA-256 of the leaf certificate.
	fingerprint [sha256.Size]byte
}

// NewClientTLS checks o and builds the tls.Config clients are served with.
// A nil *ClientTLS is valid and means disable.
func NewClientTLS(o ClientTLSOptions) (*ClientTLS, error) {
	if _, err := ParseTLSMode(string(o.Mode)); err != nil {
		return nil, fmt.Errorf("proxy: TLS mode: %w", err)
	}
	if !o.Mode.Offers() {
		return &ClientTLS{mode: TLSDisable}, nil
	}
	if len(o.Certificate.Certificate) == 0 || o.Certificate.PrivateKey == nil {
		return nil, fmt.Errorf("proxy: TLS mode %s needs a certificate and key", o.Mode)
	}
	if o.Mode.VerifiesClient() && o.ClientCAs == nil {
		return nil, fmt.Errorf("proxy: TLS mode %s needs CA certificates to verify clients with", o.Mode)
	}
	if o.MinVersion != tls.VersionTLS12 && o.MinVersion != tls.VersionTLS13 {
		return nil, fmt.Errorf("proxy: TLS minimum version %#x: must be TLS 1.2 or 1.3", o.MinVersion)
	}
	leaf := o.Certificate.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(o.Certificate.Certificate[0]); err != nil {
			return nil, fmt.Errorf("proxy: TLS certificate: %w", err)
		}
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{o.Certificate},
		MinVersion:   o.MinVersion,
		CipherSuites: o.CipherSuites,
		// A client that sends ALPN must name postgresql (Go refuses any
		// other list with a no_application_protocol alert, as PostgreSQL
		// 17 does); direct TLS additionally requires it (startTLS).
		NextProtos: []string{alpnPostgreSQL},
	}
	if o.Mode.VerifiesClient() {
		// IfGiven, not RequireAndVerify: a client without a certificate
		// gets a clear FATAL after the handshake instead of a bare alert.
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.ClientCAs = o.ClientCAs
	}
	return &ClientTLS{
		mode:        o.Mode,
		config:      cfg,
		endPoint:    pgwire.TLSServerEndPoint(leaf),
		fingerprint: sha256.Sum256(leaf.Raw),
	}, nil
}

// Mode is the setup's TLS mode; a nil setup is disable.
func (t *ClientTLS) Mode() TLSMode {
	if t == nil {
		return TLSDisable
	}
	return t.mode
}

// Fingerprint is the SHA-256 of the served certificate in hex (what
// openssl x509 -fingerprint -sha256 shows), "" when TLS is off: logs say
// which certificate a reload put in place.
func (t *ClientTLS) Fingerprint() string {
	if t == nil || t.config == nil {
		return ""
	}
	return hex.EncodeToString(t.fingerprint[:])
}

// tlsHandshakeError is a failed TLS handshake: nothing can be sent to the
// client (the channel is not established), so it is only logged.
type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "TLS handshake failed: " + e.err.Error() }
func (e *tlsHandshakeError) Unwrap() error { return e.err }

// startTLS runs the server side of a TLS handshake on conn (the caller's
// deadline bounds it) and returns the encrypted connection. direct is
// sslnegotiation=direct: the client must have negotiated ALPN postgresql.
// On a failure after the handshake the TLS connection is still returned,
// so the FATAL goes out encrypted.
func startTLS(conn net.Conn, t *ClientTLS, direct bool) (*tls.Conn, error) {
	tc := tls.Server(conn, t.config)
	if err := tc.Handshake(); err != nil {
		return nil, &tlsHandshakeError{err}
	}
	st := tc.ConnectionState()
	if direct && st.NegotiatedProtocol != alpnPostgreSQL {
		// PostgreSQL 17's words: a TLS client that does not say it speaks
		// PostgreSQL may be a confused HTTPS client (ALPACA attacks).
		return tc, newFatal(pgwire.CodeProtocolViolation,
			"received direct SSL connection request without ALPN protocol negotiation extension",
			"direct TLS (sslnegotiation=direct) needs a client that sends ALPN \"postgresql\" (libpq 17 and later)")
	}
	if t.mode.VerifiesClient() && len(st.PeerCertificates) == 0 {
		return tc, newFatal(pgwire.CodeInvalidAuthorization,
			"connection requires a valid client certificate",
			fmt.Sprintf("pgsidecar's tls.mode is %s: connect with sslcert and sslkey naming a certificate signed by the CA of tls.ca_file", t.mode))
	}
	return tc, nil
}

// tlsCheckLogin applies the mode to a client's StartupMessage: require and
// stricter modes refuse a client in plain text; verify-full refuses a
// certificate whose common name is not the user name (PostgreSQL's
// clientcert=verify-full check).
func tlsCheckLogin(t *ClientTLS, tc *tls.Conn, user string) error {
	mode := t.Mode()
	if tc == nil {
		if mode.Requires() {
			return newFatal(pgwire.CodeInvalidAuthorization,
				fmt.Sprintf("connection without TLS refused: pgsidecar requires TLS (tls.mode %s) for user %q", mode, user),
				"connect with sslmode=require, verify-ca or verify-full")
		}
		return nil
	}
	if mode != TLSVerifyFull {
		return nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 || certs[0].Subject.CommonName != user {
		cn := ""
		if len(certs) > 0 {
			cn = certs[0].Subject.CommonName
		}
		return &pgError{Severity: "FATAL", Code: pgwire.CodeInvalidAuthorization,
			Message: fmt.Sprintf("certificate validation (clientcert=verify-full) failed for user %q: CN mismatch", user),
			Detail:  fmt.Sprintf("The client certificate's common name is %q.", cn),
			Hint:    "tls.mode verify-full requires the client certificate's CN to be the user name it logs in as"}
	}
	return nil
}

// errUnencryptedAfterSSL is CVE-2021-23214's guard: bytes that came with
// the SSLRequest, before the proxy answered 'S', would otherwise be read as
// if they had come through TLS (a man in the middle injecting commands).
// PostgreSQL (which reads ahead into its buffer) sends it after the
// handshake; the proxy sees the bytes still waiting on the socket and
// refuses before answering, in plain text.
func errUnencryptedAfterSSL() *pgError {
	return &pgError{Severity: "FATAL", Code: pgwire.CodeProtocolViolation,
		Message: "received unencrypted data after SSL request",
		Detail:  "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
		Hint:    "a client must wait for the server's 'S' before it starts the TLS handshake"}
}

// socketHasData reports whether bytes are waiting on conn's socket, without
// reading or blocking (peekSocket). A connection that is no socket
// (net.Pipe in tests) reports false: the proxy reads startup packets
// unbuffered, so no bytes of its own are ever held.
func socketHasData(conn net.Conn) bool {
	return peekSocket(conn) == socketData
}

// prefixConn replays bytes already read from a connection before reading
// it further: the first byte of a direct TLS connection, read to tell it
// from a startup packet, belongs to the ClientHello.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// tlsStatus is what a client's TLS looks like in logs: "" in plain text.
func tlsStatus(tc *tls.Conn) string {
	if tc == nil {
		return ""
	}
	st := tc.ConnectionState()
	return tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
}
