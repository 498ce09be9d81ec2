// auth.passthrough's login to the server: connecting as a role without its
// password, with the SCRAM keys recovered from the client's proof
// (PassthroughConnector, scramClient), over TLS as sslmode and sslcertmode ask.

package pool

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// PassthroughConnector returns a ConnectFunc that logs in to the server as
// cfg.User without its password (auth.passthrough): it does the startup and
// the SCRAM-SHA-256 exchange itself with pgproto3, proving the ClientKey that
// keys returns (recovered from the client's own proof), and then hands the
// connection to pgconn (Construct), so the rest of the pool is unchanged.
// pgconn itself cannot: it wants the password. TLS follows cfg (the
// upstream URL's sslmode): its TLSConfig first, then its fallbacks (prefer
// falls back to plain text), as pgconn tries them; channel binding follows
// its channel_binding as pgconn's does (see scramClient).
func PassthroughConnector(cfg *pgconn.Config, keys func() ScramKeys) ConnectFunc {
	return func(ctx context.Context) (Server, error) {
		tries := append([]*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}}, cfg.Fallbacks...)
		var errs []error
		for _, fb := range tries {
			pg, err := passthroughConnect(ctx, cfg, fb, keys())
			if err == nil {
				return NewPgServer(pg), nil
			}
			errs = append(errs, err)
			if ctx.Err() != nil || !worthNextTry(err) {
				return nil, errors.Join(errs...)
			}
		}
		return nil, errors.Join(errs...)
	}
}

// worthNextTry reports whether a failed login may succeed with the next
// address or TLS setting, by pgconn's rule (connectPreferred): anything
// but a wrong password (28P01), an unknown database (3D000) or a missing
// CONNECT privilege (42501), which the server would answer again. So under
// sslmode=prefer a server whose pg_hba.conf refuses the role on TLS
// (hostssl ... reject, 28000) is tried again in plain text, as pgconn and
// libpq do for a password login.
func worthNextTry(err error) bool {
	var certErr *sslCertModeError
	if errors.As(err, &certErr) {
		return false // as pgconn: sslcertmode=require fails the whole connect
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	switch pgErr.Code {
	case pgwire.CodeInvalidPassword, pgwire.CodeInvalidCatalogName, pgwire.CodeInsufficientPrivilege:
		return false
	}
	return true
}

// passthroughConnect opens one connection to fb and logs in with keys.
func passthroughConnect(ctx context.Context, cfg *pgconn.Config, fb *pgconn.FallbackConfig, keys ScramKeys) (*pgconn.PgConn, error) {
	network, addr := pgconn.NetworkAddress(fb.Host, fb.Port)
	conn, err := cfg.DialFunc(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	// The login is bounded by ctx (the pool's connect_timeout). The
	// deadline goes on the TCP connection, which TLS wraps: conn itself is
	// replaced below while this may run.
	tcp := conn
	stop := context.AfterFunc(ctx, func() { tcp.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	tlsCfg := fb.TLSConfig
	var certReq *certRequest
	if tlsCfg != nil && cfg.SSLCertMode == "require" {
		tlsCfg, certReq = watchClientCert(tlsCfg)
	}
	if tlsCfg != nil {
		// A separate variable: on failure conn must stay the TCP
		// connection the deferred Close closes (it was set to nil here,
		// and sslmode=prefer against a server without ssl crashed).
		var tc net.Conn
		if cfg.SSLNegotiation == "direct" {
			// PostgreSQL 17's direct TLS: the handshake first, no
			// SSLRequest (pgconn's TLSConfig then has ALPN "postgresql").
			c := tls.Client(conn, tlsCfg)
			if err := c.Handshake(); err != nil {
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			tc = c
		} else if tc, err = startTLS(conn, tlsCfg); err != nil {
			return nil, err
		}
		conn = tc
	}
	fe := pgproto3.NewFrontend(conn, conn)
	params := map[string]string{"user": cfg.User, "database": cfg.Database}
	for k, v := range cfg.RuntimeParams {
		params[k] = v
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := fe.Flush(); err != nil {
		return nil, fmt.Errorf("send startup: %w", err)
	}
	hc := &pgconn.HijackedConn{Conn: conn, TLSConfig: fb.TLSConfig, ParameterStatuses: map[string]string{}, Config: cfg}
	if err := passthroughLogin(fe, cfg, keys, conn, hc); err != nil {
		return nil, err
	}
	if cfg.SSLCertMode == "require" {
		if err := certReq.check(); err != nil {
			return nil, err
		}
	}
	if stop() {
		conn.SetDeadline(time.Time{})
	} else {
		return nil, ctx.Err()
	}
	pg, err := pgconn.Construct(hc)
	if err != nil {
		return nil, fmt.Errorf("construct pgconn: %w", err)
	}
	ok = true
	return pg, nil
}

// certRequest records, for sslcertmode=require, whether the server asked
// for a client certificate during the handshake and whether one was sent.
type certRequest struct{ requested, sent bool }

// sslCertModeError is a login that sslcertmode=require refuses.
type sslCertModeError struct{ msg string }

func (e *sslCertModeError) Error() string { return "sslcertmode=require: " + e.msg }

// watchClientCert is cfg for one connection, recording in the returned
// certRequest what happens to the client certificate, as pgconn's
// prepareTLSConfigForConnect does for sslcertmode=require.
func watchClientCert(cfg *tls.Config) (*tls.Config, *certRequest) {
	req := &certRequest{}
	c := cfg.Clone()
	c.ClientSessionCache = nil // a resumed session skips the certificate request
	c.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		req.requested = true
		var cert *tls.Certificate
		var err error
		if cfg.GetClientCertificate != nil {
			cert, err = cfg.GetClientCertificate(cri)
		} else {
			cert = new(tls.Certificate) // none, unless one of cfg's fits
			for i := range cfg.Certificates {
				if cri.SupportsCertificate(&cfg.Certificates[i]) == nil {
					cert = &cfg.Certificates[i]
					break
				}
			}
		}
		req.sent = err == nil && cert != nil && len(cert.Certificate) > 0
		return cert, err
	}
	return c, req
}

// check is the sslcertmode=require verdict on a finished login (nil r: it
// was not on TLS).
func (r *certRequest) check() error {
	if r == nil || !r.requested {
		return &sslCertModeError{"the server did not request an SSL certificate"}
	}
	if !r.sent {
		return &sslCertModeError{"the server accepted the connection without a valid SSL certificate"}
	}
	return nil
}

// startTLS sends an SSLRequest and wraps conn in TLS if the server agrees.
func startTLS(conn net.Conn, cfg *tls.Config) (net.Conn, error) {
	// SSLRequest: length 8, code 80877103.
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return nil, fmt.Errorf("send SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := conn.Read(answer[:]); err != nil {
		return nil, fmt.Errorf("read SSLRequest answer: %w", err)
	}
	if answer[0] != 'S' {
		return nil, errors.New("server refused TLS")
	}
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// passthroughLogin answers the server's authentication request with keys
// and reads up to ReadyForQuery, filling hc. conn is the connection after
// any TLS handshake: its server certificate is what channel binding binds.
func passthroughLogin(fe *pgproto3.Frontend, cfg *pgconn.Config, keys ScramKeys, conn net.Conn, hc *pgconn.HijackedConn) error {
	user := cfg.User
	var sc *scramClient
	for {
		msg, err := fe.Receive()
		if err != nil {
			return fmt.Errorf("read login reply: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			if sc != nil && !sc.verified {
				// The server's signature proves it knew the verifier; a
				// server (or a man in the middle) that skips it is not
				// the one the client's password was checked against.
				return fmt.Errorf("role %q: the server ended SCRAM without its signature", user)
			}
			if cfg.ChannelBinding == "require" && (sc == nil || !sc.bound()) {
				return fmt.Errorf("role %q: channel_binding=require, but the server let the login in without SCRAM-SHA-256-PLUS", user)
			}
		case *pgproto3.AuthenticationSASL:
			sc, err = newScramClient(keys, m.AuthMechanisms, cfg.ChannelBinding, conn)
			if err != nil {
				return fmt.Errorf("role %q: %w", user, err)
			}
			first, err := sc.first()
			if err != nil {
				return err
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: sc.mechanism, Data: first})
			if err := fe.Flush(); err != nil {
				return fmt.Errorf("send SASL initial response: %w", err)
			}
		case *pgproto3.AuthenticationSASLContinue:
			if sc == nil {
				return errors.New("server sent SASLContinue before SASL")
			}
			final, err := sc.final(m.Data)
			if err != nil {
				return fmt.Errorf("role %q: %w", user, err)
			}
			fe.Send(&pgproto3.SASLResponse{Data: final})
			if err := fe.Flush(); err != nil {
				return fmt.Errorf("send SASL response: %w", err)
			}
		case *pgproto3.AuthenticationSASLFinal:
			if sc == nil || !sc.verify(m.Data) {
				return fmt.Errorf("role %q: the server's SCRAM signature does not match the verifier the login was checked against", user)
			}
		case *pgproto3.AuthenticationCleartextPassword, *pgproto3.AuthenticationMD5Password:
			return fmt.Errorf("role %q: the server asks for a password in clear text or md5; auth.passthrough needs SCRAM-SHA-256 for it in pg_hba.conf", user)
		case *pgproto3.ParameterStatus:
			hc.ParameterStatuses[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			hc.PID, hc.SecretKey = m.ProcessID, append([]byte(nil), m.SecretKey...)
		case *pgproto3.NoticeResponse:
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			hc.TxStatus = m.TxStatus
			return nil
		default:
			return fmt.Errorf("unexpected %T during login", msg)
		}
	}
}

// scramClient is the client side of SCRAM-SHA-256 (RFC 5802/7677) for one
// login, proving a known ClientKey instead of deriving it from a password.
//
// Channel binding: the client's own proof bound the client's TLS session
// with the proxy (if any); toward the server this is a new exchange, with
// its own nonces and AuthMessage, and the proof is computed here from the
// ClientKey, so the proxy binds its own TLS session with the server
// (tls-server-end-point, the hash of the server's certificate) exactly as
// a client knowing the password would. It follows the upstream URL's
// channel_binding as pgconn does: prefer (the default) uses
// SCRAM-SHA-256-PLUS when the connection is on TLS and the server offers
// it, require fails otherwise, disable never binds. Binding is what
// exposes a man in the middle under sslmode=require or prefer, where the
// certificate is not verified.
type scramClient struct {
	keys                   ScramKeys
	mechanism              string // SCRAM-SHA-256 or SCRAM-SHA-256-PLUS
	gs2Header              string // "n,,", "y,," or "p=tls-server-end-point,,"
	cbData                 []byte // the server certificate's hash, with -PLUS
	clientFirstBare, nonce string
	authMessage            []byte
	verified               bool // the server's signature checked out
}

// newScramClient picks the mechanism among offered for channelBinding
// (pgconn's channel_binding: prefer, require or disable) on conn.
func newScramClient(keys ScramKeys, offered []string, channelBinding string, conn net.Conn) (*scramClient, error) {
	if !slices.Contains(offered, pgwire.SCRAMSHA256) && !slices.Contains(offered, pgwire.SCRAMSHA256Plus) {
		return nil, fmt.Errorf("the server offers %v, not SCRAM-SHA-256 (auth.passthrough logs in with SCRAM only)", offered)
	}
	serverPlus := slices.Contains(offered, pgwire.SCRAMSHA256Plus)
	if channelBinding == "require" && !serverPlus {
		return nil, errors.New("channel_binding=require, but the server does not offer SCRAM-SHA-256-PLUS (is the upstream connection on TLS?)")
	}
	s := &scramClient{keys: keys, mechanism: pgwire.SCRAMSHA256, gs2Header: "n,,"}
	tc, onTLS := conn.(*tls.Conn)
	if onTLS && channelBinding != "disable" {
		hash, err := tlsServerEndPoint(tc)
		switch {
		case err != nil && channelBinding == "require":
			return nil, fmt.Errorf("channel_binding=require: %w", err)
		case err != nil:
			// No binding data (an unusual certificate): "y" tells the
			// server the client could bind, as pgconn does.
			s.gs2Header = "y,,"
		case serverPlus:
			s.mechanism, s.gs2Header, s.cbData = pgwire.SCRAMSHA256Plus, "p=tls-server-end-point,,", hash
		default:
			// On TLS but not offered: "y" lets a server that does offer
			// it detect a downgrade by a man in the middle.
			s.gs2Header = "y,,"
		}
	}
	if channelBinding == "require" && s.cbData == nil {
		return nil, errors.New("channel_binding=require, but the upstream connection is not on TLS")
	}
	if s.mechanism == pgwire.SCRAMSHA256 && !slices.Contains(offered, pgwire.SCRAMSHA256) {
		return nil, fmt.Errorf("the server offers only %v, and channel binding is disabled or impossible here", offered)
	}
	return s, nil
}

// bound reports whether the login was channel-bound and the server proved
// itself.
func (s *scramClient) bound() bool { return s.verified && s.cbData != nil }

// tlsServerEndPoint is the tls-server-end-point channel binding data of
// the server's certificate (pgwire.TLSServerEndPoint), or an error saying
// why there is none.
func tlsServerEndPoint(tc *tls.Conn) ([]byte, error) {
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("the server sent no certificate to bind to")
	}
	if h := pgwire.TLSServerEndPoint(certs[0]); h != nil {
		return h, nil
	}
	return nil, fmt.Errorf("tls-server-end-point is undefined for the server certificate's signature algorithm %v", certs[0].SignatureAlgorithm)
}

// first is client-first-message: the GS2 header, then an empty user (the
// startup message names the role, as libpq does).
func (s *scramClient) first() ([]byte, error) {
	var raw [18]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	s.nonce = base64.RawStdEncoding.EncodeToString(raw[:])
	s.clientFirstBare = "n=,r=" + s.nonce
	return []byte(s.gs2Header + s.clientFirstBare), nil
}

// final is client-final-message for serverFirst: the proof is
// ClientKey XOR HMAC(H(ClientKey), AuthMessage).
func (s *scramClient) final(serverFirst []byte) ([]byte, error) {
	var nonce string
	var haveSalt, haveIter bool
	for attr := range strings.SplitSeq(string(serverFirst), ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			haveSalt = true
		case strings.HasPrefix(attr, "i="):
			_, err := strconv.Atoi(attr[2:])
			haveIter = err == nil
		}
	}
	if !strings.HasPrefix(nonce, s.nonce) || len(nonce) == len(s.nonce) || !haveSalt || !haveIter {
		return nil, errors.New("invalid SCRAM server-first-message")
	}
	if len(s.keys.ClientKey) != sha256.Size {
		return nil, errors.New("no SCRAM ClientKey recovered for this role")
	}
	// c= is the GS2 header and, with -PLUS, the binding data.
	withoutProof := "c=" + base64.StdEncoding.EncodeToString(append([]byte(s.gs2Header), s.cbData...)) + ",r=" + nonce
	s.authMessage = []byte(s.clientFirstBare + "," + string(serverFirst) + "," + withoutProof)
	stored := sha256.Sum256(s.keys.ClientKey)
	sig := scramHMAC(stored[:], s.authMessage)
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = s.keys.ClientKey[i] ^ sig[i]
	}
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// verify checks server-final-message's signature, HMAC(ServerKey,
// AuthMessage).
func (s *scramClient) verify(serverFinal []byte) bool {
	v, ok := strings.CutPrefix(string(serverFinal), "v=")
	if !ok || s.authMessage == nil {
		return false
	}
	got, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return false
	}
	s.verified = subtle.ConstantTimeCompare(got, scramHMAC(s.keys.ServerKey, s.authMessage)) == 1
	return s.verified
}

func scramHMAC(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
