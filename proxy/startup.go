// Admission: reading a connection's startup packets, negotiating TLS on
// the way (admit), and decoding its StartupMessage (parameters, options)
// or CancelRequest.

package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// startupMaxPacketLen is PostgreSQL's MAX_STARTUP_PACKET_LENGTH: no
// legitimate startup packet body is longer, so a larger claimed length is
// refused before anything is allocated for it.
const startupMaxPacketLen = 10000

// Request codes that share the startup packet's framing.
const (
	startupCodeCancel = 80877102 // CancelRequest
	startupCodeSSL    = 80877103 // SSLRequest
	startupCodeGSSEnc = 80877104 // GSSENCRequest
)

// startupHint is the hint attached to malformed startup packets: the usual
// cause is something that is not a PostgreSQL client talking to the port.
const startupHint = "connect with a PostgreSQL client (libpq, pgx, JDBC, ...); " +
	"health checks should use the health listener or a plain TCP connect"

// startupMessage is what a client sent before authentication: either a
// CancelRequest or a StartupMessage.
type startupMessage struct {
	cancel         bool              // CancelRequest: pid/secret valid, nothing else
	pid, secret    uint32            // the key of the session a CancelRequest targets
	user, database string            // database defaults to user
	params         map[string]string // every other startup parameter, "options" expanded
	backend        *pgproto3.Backend // reads the client from here on (authentication)
	// head holds the first bytes backend read after the startup packet:
	// SCRAM's SASLInitialResponse, whose data length pgproto3 does not
	// keep (-1 is a null initial response).
	head *headTap
	// tls describes the client's TLS session ("TLS 1.3 TLS_AES_128_GCM_SHA256"),
	// "" in plain text.
	tls string
	// cbind is the tls-server-end-point channel binding data of the
	// certificate the client was served (SCRAM-SHA-256-PLUS); nil in plain
	// text or when the certificate defines none.
	cbind []byte
}

// admit is the proxy's one admission path (login calls it, through
// admitLogin, for every accepted connection; client TLS lives here and in tls.go, nowhere else):
// it reads the client's startup packets from conn until it has a
// StartupMessage or a CancelRequest, negotiating TLS as t says (nil means
// disable), and returns the connection to use from then on: conn, or TLS
// over conn, so the rest of the session is the same either way. On an error
// the returned connection is where the FATAL goes (encrypted once TLS is up).
//
// TLS comes two ways: an SSLRequest answered 'S' and then the handshake, or
// direct TLS (PostgreSQL 17's sslnegotiation=direct), told apart by the
// first byte being a TLS handshake record and then requiring ALPN
// "postgresql". Without TLS on offer SSLRequest and GSSENCRequest are
// answered 'N' (once each). Under tls.mode require and stricter a
// StartupMessage in plain text is refused with 28000; a CancelRequest in
// plain text is served (libpq before 17 sends cancels unencrypted, as
// PostgreSQL allows). A protocol 3.x minor version above 0 or "_pq_."
// options are answered with NegotiateProtocolVersion and the session
// continues with 3.0, as PostgreSQL does. maxBodyLen caps the startup packet
// and every message later read through startupMessage.backend (the
// authentication answers); values above PostgreSQL's 10000 bytes, or <= 0,
// mean 10000, so passing the relay's 1 GiB message limit cannot let a client
// that has not logged in make the proxy allocate more than that.
//
// Malformed input returns a FATAL *pgError for the caller to send before it
// closes the connection; an EOF before the first byte (a TCP health check)
// returns an error for which errors.Is(err, io.EOF) holds; a failed TLS
// handshake a *tlsHandshakeError (nothing can be sent). The caller bounds
// the exchange with conn's deadline.
//
// The packets are read with exact-size reads instead of
// pgproto3.Backend.ReceiveStartupMessage for three reasons: that method
// reads ahead (bytes sent after an SSLRequest must not sit in a plain-text
// buffer: CVE-2021-23214), it ignores SetMaxBodyLen, and it rejects protocol
// 3.1 and 3.3+ outright where PostgreSQL negotiates.
func admit(conn net.Conn, maxBodyLen int, t *ClientTLS) (net.Conn, *startupMessage, error) {
	limit := maxBodyLen
	if limit <= 0 || limit > startupMaxPacketLen {
		limit = startupMaxPacketLen
	}
	var (
		tc             *tls.Conn // the TLS session once established
		cur            = conn    // what packets are read from: conn or tc
		sawSSL, sawGSS bool
		after          string // what happened before this packet, for error messages
	)
	for {
		var first []byte // a byte of the packet already read
		if after == "" && t.Mode().Offers() {
			var b [1]byte
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				if errors.Is(err, io.EOF) {
					return conn, nil, io.EOF // a TCP health check
				}
				return conn, nil, fmt.Errorf("read startup packet: %w", err)
			}
			if b[0] == tlsRecordHandshake {
				var err error
				if tc, err = startTLS(&prefixConn{Conn: conn, prefix: b[:]}, t, true); err != nil {
					return connOf(tc, conn), nil, err
				}
				cur, sawSSL, after = tc, true, "its direct TLS handshake"
				continue
			}
			first = b[:]
		}
		body, err := startupReadPacket(cur, limit, after, first)
		if err != nil {
			return cur, nil, err
		}
		switch code := binary.BigEndian.Uint32(body); code {
		case startupCodeSSL, startupCodeGSSEnc:
			name := "SSLRequest"
			seen := &sawSSL
			if code == startupCodeGSSEnc {
				name, seen = "GSSENCRequest", &sawGSS
			}
			if len(body) != 4 {
				return cur, nil, newFatal(pgwire.CodeProtocolViolation,
					fmt.Sprintf("invalid %s: %d bytes long, expected 8", name, len(body)+4), startupHint)
			}
			if *seen {
				why, hint := "encryption was already refused on this connection",
					"the client must continue with a StartupMessage after the 'N' reply"
				if tc != nil {
					why, hint = "the connection is already encrypted", "the client must send its StartupMessage over TLS"
				}
				// 0A000: PostgreSQL reads a request code once negotiation
				// is over as a protocol version (1234.5679) it does not
				// support.
				return cur, nil, newFatal(pgwire.CodeFeatureNotSupported, fmt.Sprintf("duplicate %s: %s", name, why), hint)
			}
			*seen = true
			if code == startupCodeSSL && t.Mode().Offers() && tc == nil {
				// Nothing may come before the handshake: a client waits
				// for 'S'. Bytes already here were sent in plain text.
				if socketHasData(conn) {
					return conn, nil, errUnencryptedAfterSSL()
				}
				if _, err := conn.Write([]byte{'S'}); err != nil {
					return conn, nil, fmt.Errorf("answer %s: %w", name, err)
				}
				if tc, err = startTLS(conn, t, false); err != nil {
					return connOf(tc, conn), nil, err
				}
				cur, after = tc, "its TLS handshake"
				continue
			}
			// 'N': no encryption; the client may go on as it is or hang up.
			if _, err := cur.Write([]byte{'N'}); err != nil {
				return cur, nil, fmt.Errorf("answer %s: %w", name, err)
			}
			after = "its " + name + " was refused"
		case startupCodeCancel:
			sm, err := startupParseCancel(body)
			return cur, sm, err
		default:
			sm, err := startupParseMessage(cur, body, limit)
			if err != nil {
				return cur, nil, err
			}
			if err := tlsCheckLogin(t, tc, sm.user); err != nil {
				return cur, nil, err
			}
			if tc != nil {
				sm.tls = tlsStatus(tc)
				sm.cbind = t.endPoint
			}
			return cur, sm, nil
		}
	}
}

// connOf is tc when the TLS session is up, else conn.
func connOf(tc *tls.Conn, conn net.Conn) net.Conn {
	if tc != nil {
		return tc
	}
	return conn
}

// startupReadPacket reads one length-prefixed startup packet and returns its
// body (the 4-byte code onwards). after says what happened before this
// packet ("its SSLRequest was refused"), or is empty for the first packet;
// first holds the packet's bytes already read (at most the header's).
func startupReadPacket(conn net.Conn, limit int, after string, first []byte) ([]byte, error) {
	var hdr [4]byte
	pre := copy(hdr[:], first)
	n, err := io.ReadFull(conn, hdr[pre:])
	n += pre
	switch {
	case err == nil:
	case n == 0 && errors.Is(err, io.EOF):
		if after == "" {
			// A TCP connect-and-close (load balancer health check): not an error
			// worth a message, and there is nobody left to send one to.
			return nil, io.EOF
		}
		// Normal for a client that requires encryption and got 'N'.
		return nil, fmt.Errorf("client closed the connection after %s: %w", after, io.EOF)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return nil, newSilentFatal(pgwire.CodeProtocolViolation, "incomplete startup packet", startupHint)
	default:
		return nil, fmt.Errorf("read startup packet: %w", err)
	}
	if perr := startupSniffForeign(hdr); perr != nil {
		return nil, perr
	}
	bodyLen := int64(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if bodyLen < 4 || bodyLen > int64(limit) {
		return nil, newSilentFatal(pgwire.CodeProtocolViolation,
			fmt.Sprintf("invalid length of startup packet: %d bytes (allowed 8 to %d)", bodyLen+4, limit+4),
			startupHint)
	}
	body := make([]byte, bodyLen)
	if _, err := io.ReadFull(conn, body); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, newSilentFatal(pgwire.CodeProtocolViolation, "incomplete startup packet", startupHint)
		}
		return nil, fmt.Errorf("read startup packet: %w", err)
	}
	return body, nil
}

// startupSniffForeign recognises the two foreign protocols that most often
// reach a PostgreSQL port by mistake, so the error says what happened
// instead of quoting a nonsense packet length.
func startupSniffForeign(hdr [4]byte) *pgError {
	if hdr[0] == tlsRecordHandshake && hdr[1] == 0x03 {
		return newSilentFatal(pgwire.CodeProtocolViolation,
			"received a TLS handshake without an SSLRequest, but TLS is disabled (tls.mode disable)",
			"connect with sslnegotiation=postgres (the default) and sslmode=disable or prefer, or configure tls.mode")
	}
	switch string(hdr[:]) {
	case "GET ", "POST", "HEAD", "PUT ", "OPTI", "DELE", "PATC":
		return newSilentFatal(pgwire.CodeProtocolViolation,
			"received an HTTP request on the PostgreSQL port",
			"/health, /stats and /metrics are served on the health listener's address")
	}
	return nil
}

// startupParseCancel decodes a CancelRequest body. The proxy mints 4-byte
// secret keys (protocol 3.0), so a longer key (protocol 3.2 allows up to 256
// bytes) can never match and is refused as malformed.
func startupParseCancel(body []byte) (*startupMessage, error) {
	if len(body) != 12 {
		return nil, newFatal(pgwire.CodeProtocolViolation,
			fmt.Sprintf("invalid CancelRequest: %d bytes long, expected 16 (a 4-byte secret key)", len(body)+4),
			"pgsidecar issues protocol 3.0 cancel keys; the client must send back the key it was given")
	}
	var cr pgproto3.CancelRequest
	if err := cr.Decode(body); err != nil {
		return nil, newFatal(pgwire.CodeProtocolViolation, "invalid CancelRequest: "+err.Error(), startupHint)
	}
	return &startupMessage{
		cancel: true,
		pid:    cr.ProcessID,
		secret: binary.BigEndian.Uint32(cr.SecretKey),
	}, nil
}

// startupParseMessage decodes a StartupMessage body and, when the client
// asked for more than protocol 3.0, tells it that 3.0 is what it gets.
//
// pgproto3's StartupMessage.Decode is not used: it refuses protocol 3.1 and
// 3.3+, and a packet without parameters.
func startupParseMessage(conn net.Conn, body []byte, limit int) (*startupMessage, error) {
	version := binary.BigEndian.Uint32(body)
	major, minor := version>>16, version&0xFFFF
	if major != 3 {
		// 0A000, as PostgreSQL: the packet is well formed, of a protocol
		// not supported.
		return nil, newFatal(pgwire.CodeFeatureNotSupported,
			fmt.Sprintf("unsupported frontend protocol %d.%d: pgsidecar supports 3.0 (and negotiates later 3.x down to 3.0)",
				major, minor),
			"use a client library that speaks protocol 3 (PostgreSQL 7.4 and later); "+
				"if this is not a PostgreSQL client, it is connecting to the wrong port")
	}

	raw, err := startupParseParams(body[4:])
	if err != nil {
		return nil, err
	}

	sm := &startupMessage{params: make(map[string]string, len(raw))}
	var unrecognized []string // _pq_. protocol options, all of which are unknown to 3.0
	var options string
	for _, kv := range raw {
		switch {
		case kv[0] == "user":
			sm.user = kv[1]
		case kv[0] == "database":
			sm.database = kv[1]
		case kv[0] == "options":
			options = kv[1]
		case kv[0] == "replication":
			if !startupIsFalse(kv[1]) {
				return nil, newFatal(pgwire.CodeFeatureNotSupported,
					"replication connections are not supported through pgsidecar",
					"connect replication clients (pg_basebackup, logical replication) to the database directly")
			}
		case strings.HasPrefix(kv[0], "_pq_."):
			unrecognized = append(unrecognized, kv[0])
		default:
			sm.params[kv[0]] = kv[1]
		}
	}
	if sm.user == "" {
		return nil, newFatal(pgwire.CodeInvalidAuthorization,
			"no PostgreSQL user name specified in startup packet",
			"set the user in the connection string (user=... or PGUSER)")
	}
	if sm.database == "" {
		sm.database = sm.user
	}
	if options != "" {
		opts, perr := startupParseOptions(options)
		if perr != nil {
			return nil, perr
		}
		// PostgreSQL applies "options" before the other startup parameters,
		// so a parameter given directly wins over the same one in options.
		for k, v := range opts {
			if _, ok := sm.params[k]; !ok {
				sm.params[k] = v
			}
		}
	}

	if minor > 0 || len(unrecognized) > 0 {
		npv := pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized}
		buf, err := npv.Encode(nil)
		if err != nil {
			return nil, fmt.Errorf("encode NegotiateProtocolVersion: %w", err)
		}
		if _, err := conn.Write(buf); err != nil {
			return nil, fmt.Errorf("send NegotiateProtocolVersion: %w", err)
		}
	}

	sm.head = &headTap{r: conn}
	sm.backend = pgproto3.NewBackend(sm.head, conn)
	sm.backend.SetMaxBodyLen(limit) // pgproto3's default is unlimited
	return sm, nil
}

// startupParseParams splits the NUL-terminated name/value pairs of a
// StartupMessage, which end with an empty name. Order is kept so a
// duplicated name behaves as in PostgreSQL: the last one wins.
func startupParseParams(b []byte) ([][2]string, error) {
	var out [][2]string
	for {
		if len(b) == 0 {
			return nil, newFatal(pgwire.CodeProtocolViolation,
				"invalid startup packet layout: expected terminator as last byte", startupHint)
		}
		if b[0] == 0 {
			if len(b) != 1 {
				return nil, newFatal(pgwire.CodeProtocolViolation,
					fmt.Sprintf("invalid startup packet layout: %d bytes after the terminator", len(b)-1), startupHint)
			}
			return out, nil
		}
		name, rest, ok := startupCutNUL(b)
		if !ok {
			return nil, newFatal(pgwire.CodeProtocolViolation,
				"invalid startup packet layout: parameter name not terminated", startupHint)
		}
		value, rest, ok := startupCutNUL(rest)
		if !ok {
			return nil, newFatal(pgwire.CodeProtocolViolation,
				fmt.Sprintf("invalid startup packet layout: parameter %q has no value", name), startupHint)
		}
		out = append(out, [2]string{name, value})
		b = rest
	}
}

// startupCutNUL returns the string before the first NUL of b and the bytes
// after it.
func startupCutNUL(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// startupIsFalse reports whether v is one of PostgreSQL's spellings of a
// false boolean (parse_bool: unique prefixes of "false", "no", "off", and
// "0"). "replication" also takes "database", which is not false.
func startupIsFalse(v string) bool {
	v = strings.ToLower(v)
	switch {
	case v == "":
		return false
	case v == "0", strings.HasPrefix("false", v), strings.HasPrefix("no", v):
		return true
	case len(v) >= 2 && strings.HasPrefix("off", v):
		return true
	}
	return false
}

// startupParseOptions expands the "options" startup parameter the way a
// PostgreSQL backend does: split at unescaped whitespace (a backslash
// escapes the next character, as libpq's PGOPTIONS quoting expects), then
// take "-c name=value", "-cname=value" and "--name=value" settings, with
// dashes in names turned into underscores. Other server switches (-B, -d,
// ...) set things a pooled backend cannot change per client and are refused.
func startupParseOptions(options string) (map[string]string, error) {
	args := startupSplitOptions(options)
	out := make(map[string]string, len(args))
	for i := 0; i < len(args); i++ {
		arg := args[i]
		var setting string
		switch {
		case arg == "-c":
			if i+1 >= len(args) {
				return nil, newFatal(pgwire.CodeProtocolViolation,
					"invalid options startup parameter: -c without a setting",
					`write options as "-c name=value"`)
			}
			i++
			setting = args[i]
		case strings.HasPrefix(arg, "--") && len(arg) > 2:
			setting = arg[2:]
		case strings.HasPrefix(arg, "-c"):
			setting = arg[2:]
		case strings.HasPrefix(arg, "-"):
			return nil, newFatal(pgwire.CodeFeatureNotSupported,
				fmt.Sprintf("server option %q in the options startup parameter is not supported by pgsidecar", arg),
				`only "-c name=value" and "--name=value" settings can be passed in options`)
		default:
			return nil, newFatal(pgwire.CodeProtocolViolation,
				fmt.Sprintf("invalid options startup parameter: unexpected argument %q", arg),
				`write options as "-c name=value"; escape spaces inside a value with a backslash`)
		}
		name, value, ok := strings.Cut(setting, "=")
		if !ok || name == "" {
			return nil, newFatal(pgwire.CodeProtocolViolation,
				fmt.Sprintf("invalid options startup parameter: %q needs the form name=value", setting),
				`write options as "-c name=value"`)
		}
		out[strings.ReplaceAll(name, "-", "_")] = value
	}
	return out, nil
}

// startupSplitOptions is PostgreSQL's pg_split_opts: whitespace separates
// arguments unless escaped, and a backslash makes the next character literal.
func startupSplitOptions(s string) []string {
	var args []string
	var cur strings.Builder
	inArg, escaped := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped, inArg = true, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}
