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
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// PassthroughConnector returns a ConnectFunc that logs in to the server as
// cfg.User without its password (auth.passthrough): it does the startup and
// the SCRAM-SHA-256 exchange itself with pgproto3, proving the ClientKey that
// keys returns (recovered from the client's own proof), and then hands the
// connection to pgconn (Construct), so the rest of the pool is unchanged.
// pgconn itself cannot: it wants the password. TLS follows cfg (the
// upstream URL's sslmode): its TLSConfig first, then its fallbacks (prefer
// falls back to plain text), as pgconn tries them.
func PassthroughConnector(cfg *pgconn.Config, keys func() ScramKeys) ConnectFunc {
	return func(ctx context.Context) (Server, error) {
		tries := append([]*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}}, cfg.Fallbacks...)
		var errs []error
		for _, fb := range tries {
			pg, err := passthroughConnect(ctx, cfg, fb, keys())
			if err == nil {
				return NewPgServer(pg), nil
			}
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) || ctx.Err() != nil {
				// The server answered (a wrong key, no such database):
				// another address or TLS setting would not change it.
				return nil, err
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
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
	// The login is bounded by ctx (the pool's connect_timeout).
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if fb.TLSConfig != nil {
		if conn, err = startTLS(conn, fb.TLSConfig); err != nil {
			return nil, err
		}
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
	if err := passthroughLogin(fe, cfg.User, keys, hc); err != nil {
		return nil, err
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
// and reads up to ReadyForQuery, filling hc.
func passthroughLogin(fe *pgproto3.Frontend, user string, keys ScramKeys, hc *pgconn.HijackedConn) error {
	var sc *scramClient
	for {
		msg, err := fe.Receive()
		if err != nil {
			return fmt.Errorf("read login reply: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
		case *pgproto3.AuthenticationSASL:
			if !containsString(m.AuthMechanisms, "SCRAM-SHA-256") {
				return fmt.Errorf("role %q: the server offers %v, not SCRAM-SHA-256 (auth.passthrough logs in with SCRAM only)", user, m.AuthMechanisms)
			}
			sc = &scramClient{keys: keys}
			first, err := sc.first()
			if err != nil {
				return err
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: first})
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

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// scramClient is the client side of SCRAM-SHA-256 (RFC 5802/7677) for one
// login, proving a known ClientKey instead of deriving it from a password.
type scramClient struct {
	keys                   ScramKeys
	clientFirstBare, nonce string
	authMessage            []byte
}

// first is client-first-message: no channel binding, empty user (the
// startup message names the role, as libpq does).
func (s *scramClient) first() ([]byte, error) {
	var raw [18]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	s.nonce = base64.RawStdEncoding.EncodeToString(raw[:])
	s.clientFirstBare = "n=,r=" + s.nonce
	return []byte("n,," + s.clientFirstBare), nil
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
	withoutProof := "c=biws,r=" + nonce
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
	return subtle.ConstantTimeCompare(got, scramHMAC(s.keys.ServerKey, s.authMessage)) == 1
}

func scramHMAC(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
