// Client authentication: the password exchanges a client logs in with
// (cleartext, md5, SCRAM-SHA-256 and -PLUS, run to the end for unknown
// users too), and the stored password formats a login may be configured
// with (md5 hashes, SCRAM verifiers).

package proxy

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// authFailedHint tells a user whose login failed where the proxy's idea of
// their password comes from; users is the logins option's name.
func authFailedHint(users string) string {
	return "check the user name and password the application connects with (pgsidecar " + users + " or the upstream URL)"
}

// authProtocolHint is attached to malformed authentication messages.
const authProtocolHint = "the client library sent an unexpected authentication message; " +
	"update it or report the client and version"

// authenticate runs the authentication exchange method demands with the
// client that sent sm, checking against password. known=false means the user
// may not log in here (not configured, or not for this database; password is
// then "" or the user's password elsewhere): the exchange still runs to its
// end, so a prober cannot tell unknown users, or users of another database,
// from wrong passwords, and then fails.
//
// On success nothing has been sent that grants access: the caller sends
// AuthenticationOk, the ParameterStatus set, BackendKeyData and
// ReadyForQuery. A *pgError result is for the caller to send before closing
// (28P01 for a wrong password); any other error means the connection itself
// failed (the client hung up, a deadline passed) and there is nobody to tell.
// All I/O goes through sm.backend; conn only names the peer in errors. The
// caller bounds the exchange with conn's deadline.
func authenticate(sm *startupMessage, conn net.Conn, method AuthMethod, password string, known bool, usersOption string) error {
	if sm == nil || sm.backend == nil || sm.cancel {
		return errors.New("authenticate: no StartupMessage to authenticate")
	}
	var (
		ok  bool
		err error
	)
	switch method {
	case AuthTrust:
		if !known {
			return newFatal(pgwire.CodeInvalidAuthorization,
				fmt.Sprintf("user %q is not configured in pgsidecar", sm.user),
				"connect as the upstream URL's user or add the user to "+usersOption)
		}
		return nil
	case AuthPlain:
		ok, err = authPlain(sm, password)
		// A stored SCRAM verifier is no password: a client sending the
		// verifier text itself must not match it.
		ok = ok && !IsSCRAMVerifier(password)
	case AuthMD5:
		// An md5 hash is what the challenge needs; a client sending the
		// hash (pass-the-hash) gets in, as with PostgreSQL's md5.
		ok, err = authMD5(sm, password)
		ok = ok && !IsSCRAMVerifier(password)
	case AuthSCRAM:
		ok, err = authSCRAM(sm, password, known)
	default:
		// New and Reload accept only the methods above; refuse rather
		// than crash should that ever change.
		return newFatal(pgwire.CodeInvalidAuthorization,
			fmt.Sprintf("pgsidecar is configured with an unknown authentication method %q", method), "")
	}
	if err != nil {
		var perr *pgError
		if errors.As(err, &perr) {
			return perr
		}
		return fmt.Errorf("authenticate %s (user %q, %s): %w", conn.RemoteAddr(), sm.user, method, err)
	}
	if !ok || !known {
		return authFailed(sm.user, usersOption)
	}
	return nil
}

// authFailed is the one answer to a wrong password and to an unknown user
// alike, so neither the message nor the code tells them apart.
func authFailed(user, usersOption string) *pgError {
	return newFatal(pgwire.CodeInvalidPassword,
		fmt.Sprintf("password authentication failed for user %q", user), authFailedHint(usersOption))
}

// authPlain asks for the password in clear text and compares it, or its
// md5 hash with a stored one, as PostgreSQL's password method does.
func authPlain(sm *startupMessage, password string) (bool, error) {
	got, err := authAskPassword(sm, &pgproto3.AuthenticationCleartextPassword{}, pgproto3.AuthTypeCleartextPassword)
	if err != nil {
		return false, err
	}
	if IsMD5Hash(password) {
		return authEqual(MD5Hash(sm.user, got), password), nil
	}
	return authEqual(got, password), nil
}

// authMD5 runs PostgreSQL's md5 challenge: the client answers
// "md5" + hex(md5(hex(md5(password + user)) + salt)).
func authMD5(sm *startupMessage, password string) (bool, error) {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return false, fmt.Errorf("md5 salt: %w", err)
	}
	got, err := authAskPassword(sm, &pgproto3.AuthenticationMD5Password{Salt: salt}, pgproto3.AuthTypeMD5Password)
	if err != nil {
		return false, err
	}
	return authEqual(got, md5Response(sm.user, password, salt)), nil
}

// md5Response is what a client that knows password answers to salt. A
// password that is an md5 hash (MD5Hash of user's password) is used as the
// inner hash it stands for.
func md5Response(user, password string, salt [4]byte) string {
	inner := MD5Hash(user, password)
	if IsMD5Hash(password) {
		inner = password
	}
	outer := md5.New()
	outer.Write([]byte(inner[len(md5HashPrefix):]))
	outer.Write(salt[:])
	return md5HashPrefix + hex.EncodeToString(outer.Sum(nil))
}

// md5HashPrefix starts an md5 hash as PostgreSQL stores it.
const md5HashPrefix = "md5"

// MD5Hash is password's md5 hash for user as PostgreSQL stores it in
// pg_authid.rolpassword (and PgBouncer's userlist.txt holds it):
// "md5" + hex(md5(password + user)). It is salted with the user name, so it
// is valid for that user only.
func MD5Hash(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return md5HashPrefix + hex.EncodeToString(sum[:])
}

// IsMD5Hash reports whether a configured password is an md5 hash ("md5"
// and 32 lower-case hex digits) rather than a cleartext password, as
// PostgreSQL decides for CREATE ROLE ... PASSWORD.
func IsMD5Hash(password string) bool {
	rest, ok := strings.CutPrefix(password, md5HashPrefix)
	if !ok || len(rest) != 2*md5.Size {
		return false
	}
	for _, c := range rest {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// IsPasswordHash reports whether a configured password is stored as a hash
// (SCRAM verifier or md5) that cannot log in to a server.
func IsPasswordHash(password string) bool { return IsSCRAMVerifier(password) || IsMD5Hash(password) }

// authEqual compares two secrets in constant time. Hashing first makes the
// time independent of the lengths too, which ConstantTimeCompare is not.
func authEqual(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// authAskPassword sends request and returns the PasswordMessage's text.
func authAskPassword(sm *startupMessage, request pgproto3.BackendMessage, authType uint32) (string, error) {
	if err := authSend(sm.backend, request, authType); err != nil {
		return "", err
	}
	pw, err := authExpect[*pgproto3.PasswordMessage](sm.backend, "password message")
	if err != nil {
		return "", err
	}
	return pw.Password, nil
}

// authSend sends one authentication request and tells the backend which
// kind of 'p' message to decode next (they share one message type).
func authSend(b *pgproto3.Backend, request pgproto3.BackendMessage, authType uint32) error {
	if err := b.SetAuthType(authType); err != nil {
		return fmt.Errorf("set auth type %d: %w", authType, err)
	}
	b.Send(request)
	if err := b.Flush(); err != nil {
		return fmt.Errorf("send authentication request: %w", err)
	}
	return nil
}

// authExpect reads the client's next message, which must be a T (want
// names it in errors): anything else is a protocol violation
// (authUnexpected). Errors are authReceive's.
func authExpect[T pgproto3.FrontendMessage](b *pgproto3.Backend, want string) (T, error) {
	var none T
	msg, err := authReceive(b, want)
	if err != nil {
		return none, err
	}
	m, ok := msg.(T)
	if !ok {
		return none, authUnexpected(want, msg)
	}
	return m, nil
}

// authReceive reads the client's next message. Connection failures come
// back wrapped as they are; anything pgproto3 could not make sense of is a
// protocol violation the client is told about.
func authReceive(b *pgproto3.Backend, want string) (pgproto3.FrontendMessage, error) {
	msg, err := b.Receive()
	if err == nil {
		if _, quit := msg.(*pgproto3.Terminate); quit {
			return nil, fmt.Errorf("client sent Terminate instead of a %s: %w", want, io.EOF)
		}
		return msg, nil
	}
	if isConnError(err) {
		// psql does this on purpose: it hangs up when asked for a password it
		// does not have, prompts the user, and connects again.
		return nil, fmt.Errorf("read %s: %w", want, err)
	}
	return nil, newFatal(pgwire.CodeProtocolViolation, fmt.Sprintf("invalid %s: %v", want, err), authProtocolHint)
}

// isConnError reports whether an error of pgproto3.Backend.Receive is the
// connection's (the client left, a deadline passed), where nobody can be
// told anything, rather than a message it could not decode.
func isConnError(err error) bool {
	var netErr net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr)
}

// authUnexpected reports a message of the wrong type during authentication.
func authUnexpected(want string, got pgproto3.FrontendMessage) *pgError {
	return newFatal(pgwire.CodeProtocolViolation,
		fmt.Sprintf("expected a %s during authentication, got %T", want, got), authProtocolHint)
}

// authMAC is a keyed hash used where a value must be stable per input but
// unpredictable to clients (mock SCRAM salts).
func authMAC(key []byte, parts ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// SCRAM-SHA-256 parameters. 4096 iterations is PostgreSQL's default
// (scram_iterations) and what clients expect at minimum.
const (
	authScramIterations = 4096
	authScramSaltLen    = 16
	// authScramCacheMax bounds the credential cache; past it the cache is
	// emptied, which costs one PBKDF2 per user on their next login.
	authScramCacheMax = 1024
)

// authSCRAM runs a SCRAM-SHA-256 exchange (RFC 7677) as PostgreSQL does:
// AuthenticationSASL, SASLInitialResponse, AuthenticationSASLContinue,
// SASLResponse, and AuthenticationSASLFinal on success. It reports false
// for a wrong proof. A client on TLS (sm.cbind set) is offered
// SCRAM-SHA-256-PLUS first, with tls-server-end-point channel binding
// (RFC 5929) to the certificate it was served, so libpq's
// channel_binding=require works; in plain text only SCRAM-SHA-256 is.
func authSCRAM(sm *startupMessage, password string, known bool) (bool, error) {
	// PostgreSQL clients send an empty SCRAM user name ("n=,"): the user is
	// the startup packet's, so the lookup ignores what SCRAM says.
	var creds scram.StoredCredentials
	if known || password != "" {
		// password without known: the user may not use this database; the
		// exchange runs with its real credentials all the same and fails
		// at the end, exactly like a wrong password.
		var err error
		creds, err = scramCredentials(sm.user, password)
		if err != nil {
			return false, err
		}
	} else {
		creds = scramMockCredentials(sm.user)
	}
	ok, _, err := authSCRAMWith(sm, creds, known)
	return ok, err
}

// authSCRAMWith runs the exchange against creds. On success it also
// returns the ClientKey the client proved it knows, recovered from its
// proof (ClientProof XOR HMAC(StoredKey, AuthMessage)), which
// auth.passthrough logs in to the server with.
func authSCRAMWith(sm *startupMessage, creds scram.StoredCredentials, known bool) (bool, []byte, error) {
	b := sm.backend
	mechanisms := []string{pgwire.SCRAMSHA256}
	if sm.cbind != nil {
		mechanisms = []string{pgwire.SCRAMSHA256Plus, pgwire.SCRAMSHA256}
	}
	err := authSend(b, &pgproto3.AuthenticationSASL{AuthMechanisms: mechanisms}, pgproto3.AuthTypeSASL)
	if err != nil {
		return false, nil, err
	}
	first, err := authExpect[*pgproto3.SASLInitialResponse](b, "SASL initial response")
	if err != nil {
		return false, nil, err
	}
	if !slices.Contains(mechanisms, first.AuthMechanism) {
		hint := "pgsidecar offers SCRAM-SHA-256 only in plain text (channel binding needs TLS: connect with sslmode=require)"
		if sm.cbind != nil {
			hint = "pgsidecar offers SCRAM-SHA-256-PLUS and SCRAM-SHA-256"
		}
		return false, nil, newFatal(pgwire.CodeProtocolViolation,
			fmt.Sprintf("client selected an invalid SASL authentication mechanism %q", first.AuthMechanism), hint)
	}
	null, err := saslInitialData(sm.head, first.AuthMechanism, first.Data)
	if err != nil {
		return false, nil, err
	}
	// A copy: first.Data lies in the reader's buffer, which the next
	// message overwrites, and the ClientKey's AuthMessage needs it then.
	clientFirst := string(first.Data)
	if null {
		// No initial response: as PostgreSQL does, an empty challenge,
		// answered by the client-first-message in a SASLResponse.
		err := authSend(b, &pgproto3.AuthenticationSASLContinue{}, pgproto3.AuthTypeSASLContinue)
		if err != nil {
			return false, nil, err
		}
		msg, err := authReceive(b, "SASL response")
		if err != nil {
			return false, nil, err
		}
		resp, ok := msg.(*pgproto3.SASLResponse)
		if !ok {
			return false, nil, authUnexpected("SASL response", msg)
		}
		clientFirst = string(resp.Data)
	}
	// The gs2 header's flag must agree with the mechanism, as PostgreSQL
	// checks: "p=" (binding used) with -PLUS only, and -PLUS only with "p=".
	usesBinding := len(clientFirst) > 0 && clientFirst[0] == 'p'
	if plus := first.AuthMechanism == pgwire.SCRAMSHA256Plus; plus != usesBinding {
		what := "client selected SCRAM-SHA-256-PLUS without channel binding data"
		if usesBinding {
			what = "client requested channel binding with SCRAM-SHA-256; it must select SCRAM-SHA-256-PLUS for that"
		}
		return false, nil, newFatal(pgwire.CodeProtocolViolation, "invalid SCRAM client-first-message: "+what, authProtocolHint)
	}

	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return false, nil, fmt.Errorf("scram server: %w", err)
	}
	conv := server.NewConversation()
	if sm.cbind != nil {
		// Also refuses a client that says "y" (it supports binding but
		// thinks the server does not): a downgrade, since -PLUS was offered.
		conv = server.NewConversationWithChannelBinding(scram.ChannelBinding{
			Type: scram.ChannelBindingTLSServerEndpoint, Data: sm.cbind})
	}

	if bare, ok := scramClientFirstBare(clientFirst); ok && strings.HasPrefix(bare, "m") {
		// PostgreSQL's words and code: a mandatory extension the server
		// does not know.
		return false, nil, newFatal(pgwire.CodeFeatureNotSupported,
			"client requires an unsupported SCRAM extension (m= in its client-first-message)", authProtocolHint)
	}
	serverFirst, err := conv.Step(clientFirst)
	if err != nil {
		err = scramParseError(err, "n= and r=")
		// The client's first message is malformed, asks for channel binding
		// ("p=...") that was not offered or of another type than
		// tls-server-end-point, or says "y" although -PLUS was offered.
		return false, nil, newFatal(pgwire.CodeProtocolViolation, "invalid SCRAM client-first-message: "+err.Error(), authProtocolHint)
	}
	if conv.AuthzID() != "" {
		return false, nil, newFatal(pgwire.CodeFeatureNotSupported,
			"client uses an authorization identity (SCRAM a=), which is not supported", authProtocolHint)
	}
	err = authSend(b, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}, pgproto3.AuthTypeSASLContinue)
	if err != nil {
		return false, nil, err
	}
	final, err := authExpect[*pgproto3.SASLResponse](b, "SASL response")
	if err != nil {
		return false, nil, err
	}
	if !wellFormedProof(final.Data) {
		return false, nil, newFatal(pgwire.CodeProtocolViolation, "invalid SCRAM client-final-message: malformed proof", authProtocolHint)
	}
	serverFinal, err := conv.Step(string(final.Data))
	if err != nil {
		if serverFinal == scram.ErrInvalidProof {
			return false, nil, nil // wrong password, or a user that is not configured
		}
		if serverFinal == scram.ErrChannelBindingsDontMatch && !usesBinding {
			// No binding was chosen ("n" or "y"), so c= must be that
			// header: another value is a malformed message, not a
			// binding to the wrong certificate (PostgreSQL's words and
			// code).
			return false, nil, newFatal(pgwire.CodeProtocolViolation,
				"unexpected SCRAM channel-binding attribute in client-final-message", authProtocolHint)
		}
		if serverFinal == scram.ErrChannelBindingsDontMatch {
			// PostgreSQL's words and code. The client bound to another certificate
			// than the one the proxy served: a man in the middle, or a
			// client hashing it wrong.
			return false, nil, newFatal(pgwire.CodeInvalidAuthorization, "SCRAM channel binding check failed",
				"the client's tls-server-end-point data does not match pgsidecar's certificate; a TLS-intercepting middlebox between client and proxy causes this")
		}
		return false, nil, newFatal(pgwire.CodeProtocolViolation, "invalid SCRAM client-final-message: "+scramParseError(err, "c=, r= and p=").Error(), authProtocolHint)
	}
	if !conv.Valid() || !known {
		return false, nil, nil
	}
	clientKey := scramClientKey(creds.StoredKey, clientFirst, serverFirst, final.Data)
	// The server signature proves to the client that the proxy knows its
	// password too; AuthenticationOk follows from the caller.
	err = authSend(b, &pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}, pgproto3.AuthTypeSASLFinal)
	if err != nil {
		return false, nil, err
	}
	return true, clientKey, nil
}

// scramClientFirstBare returns what follows the gs2 header (the flag and
// the optional authzid, each ending in a comma) of a client-first-message.
func scramClientFirstBare(clientFirst string) (string, bool) {
	_, rest, ok := strings.Cut(clientFirst, ",")
	if !ok {
		return "", false
	}
	_, bare, ok := strings.Cut(rest, ",")
	return bare, ok
}

// scramParseError words the SCRAM library's complaint about too few
// attributes, which it says of the "first server message" whichever
// message it parsed; want names the attributes the message needs.
func scramParseError(err error, want string) error {
	if strings.Contains(err.Error(), "not enough fields") {
		return fmt.Errorf("malformed, it needs the attributes %s", want)
	}
	return err
}

// wellFormedProof reports whether a client-final-message's proof (its
// last attribute, p=) is a SHA-256 digest in base64, as PostgreSQL checks
// it ("Malformed proof in client-final-message"). The SCRAM library
// reports another length with an error of its own internals ("xorBytes
// arguments must have equal length") and bad base64 with its decoder's,
// neither of them words for the client. A message without a proof is
// left to the library, which names what is missing.
func wellFormedProof(final []byte) bool {
	i := strings.LastIndex(string(final), ",p=")
	if i < 0 {
		return true
	}
	proof, err := base64.StdEncoding.DecodeString(string(final[i+3:]))
	return err == nil && len(proof) == sha256.Size
}

// scramClientKey recovers the ClientKey from a valid exchange: the client's
// proof is ClientKey XOR HMAC(StoredKey, AuthMessage), and AuthMessage is
// client-first-message-bare, server-first-message and
// client-final-message-without-proof joined by commas. nil if the messages
// do not parse (the conversation accepted them, so they do).
func scramClientKey(storedKey []byte, clientFirst, serverFirst string, clientFinal []byte) []byte {
	// client-first-message is gs2-header ("n,," or "p=...,,", with an
	// optional authzid between the commas) then the bare message.
	_, rest, ok1 := strings.Cut(clientFirst, ",")
	_, bare, ok2 := strings.Cut(rest, ",")
	i := strings.LastIndex(string(clientFinal), ",p=")
	if !ok1 || !ok2 || i < 0 {
		return nil
	}
	proof, err := base64.StdEncoding.DecodeString(string(clientFinal[i+3:]))
	if err != nil || len(proof) != sha256.Size {
		return nil
	}
	m := hmac.New(sha256.New, storedKey)
	m.Write([]byte(bare + "," + serverFirst + ","))
	m.Write(clientFinal[:i])
	sig := m.Sum(nil)
	key := make([]byte, sha256.Size)
	for k := range key {
		key[k] = proof[k] ^ sig[k]
	}
	if h := sha256.Sum256(key); !hmac.Equal(h[:], storedKey) {
		return nil
	}
	return key
}

// scramCache holds the stored credentials derived from each configured
// (user, password), keyed by a hash of both: a changed password on reload
// is a new key, so a stale entry is never used. scramCacheLen approximates
// its size for the bound.
var (
	scramCache    sync.Map // [32]byte -> scram.StoredCredentials
	scramCacheLen atomic.Int64
)

// scramMockKey keys the users' salts (scramSalt); it lives as long as the
// process.
var scramMockKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand.Read never fails (Go >= 1.24)
	return k
}()

// scramVerifierPrefix starts a SCRAM verifier as PostgreSQL stores it in
// pg_authid.rolpassword.
const scramVerifierPrefix = "SCRAM-SHA-256$"

// IsSCRAMVerifier reports whether a configured password is a SCRAM verifier
// rather than a cleartext password.
func IsSCRAMVerifier(password string) bool { return strings.HasPrefix(password, scramVerifierPrefix) }

// ParseSCRAMVerifier decodes a verifier as PostgreSQL writes it,
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64), into
// the credentials a SCRAM exchange checks against: a login configured so
// never has its cleartext password in the proxy's configuration. Errors
// never quote the verifier.
func ParseSCRAMVerifier(v string) (scram.StoredCredentials, error) {
	bad := func(what string) (scram.StoredCredentials, error) {
		return scram.StoredCredentials{}, fmt.Errorf("invalid SCRAM verifier: %s; "+
			"want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> as in pg_authid.rolpassword", what)
	}
	rest, ok := strings.CutPrefix(v, scramVerifierPrefix)
	if !ok {
		return bad("it does not start with " + scramVerifierPrefix)
	}
	factors, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("no '$' between the salt and the keys")
	}
	iterText, saltText, ok1 := strings.Cut(factors, ":")
	storedText, serverText, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return bad("a ':' is missing")
	}
	iters, err := strconv.Atoi(iterText)
	if err != nil || iters < 1 {
		return bad("the iteration count is not a positive number")
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltText)
	stored, err2 := base64.StdEncoding.DecodeString(storedText)
	server, err3 := base64.StdEncoding.DecodeString(serverText)
	if err1 != nil || err2 != nil || err3 != nil || len(salt) == 0 {
		return bad("the salt or a key is not base64")
	}
	if len(stored) != sha256.Size || len(server) != sha256.Size {
		return bad("a key is not 32 bytes (SHA-256)")
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// scramCredentials returns the stored credentials for user's password,
// deriving them (PBKDF2, 4096 rounds, the user's salt) on first use only.
// A password that is a SCRAM verifier is used as it is.
func scramCredentials(user, password string) (scram.StoredCredentials, error) {
	if IsSCRAMVerifier(password) {
		return ParseSCRAMVerifier(password)
	}
	key := sha256.Sum256([]byte(user + "\x00" + password))
	if v, ok := scramCache.Load(key); ok {
		return v.(scram.StoredCredentials), nil
	}
	creds, err := deriveSCRAM(password, scramSalt(user))
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	if scramCacheLen.Load() >= authScramCacheMax {
		scramCache.Clear()
		scramCacheLen.Store(0)
	}
	// Two first logins racing both derive; the first stored wins so every
	// later login sees one salt.
	v, loaded := scramCache.LoadOrStore(key, creds)
	if !loaded {
		scramCacheLen.Add(1)
	}
	return v.(scram.StoredCredentials), nil
}

// deriveSCRAM computes the stored credentials of password with salt, as
// PostgreSQL does: the password SASLprepped, or its raw bytes when that
// fails (the client libraries do the same), authScramIterations rounds.
func deriveSCRAM(password string, salt []byte) (scram.StoredCredentials, error) {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		client, err = scram.SHA256.NewClientUnprepped("", password, "")
		if err != nil {
			return scram.StoredCredentials{}, fmt.Errorf("scram credentials: %w", err)
		}
	}
	creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: authScramIterations})
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("scram credentials: %w", err)
	}
	return creds, nil
}

// NewSCRAMVerifier returns a SCRAM verifier of password as PostgreSQL
// writes it in pg_authid.rolpassword, with a random salt of PostgreSQL's
// length and its iteration count: what `pgsidecar hash-password` prints
// for auth.users, and what ALTER ROLE ... PASSWORD accepts as it is.
func NewSCRAMVerifier(password string) (string, error) {
	salt := make([]byte, authScramSaltLen)
	_, _ = rand.Read(salt) // crypto/rand.Read never fails (Go >= 1.24)
	creds, err := deriveSCRAM(password, salt)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", scramVerifierPrefix, creds.Iters, b64(salt), b64(creds.StoredKey), b64(creds.ServerKey)), nil
}

// scramSalt is user's SCRAM salt: random per process (scramMockKey) and
// user, but the same for every password, database and for a user that is
// not configured at all. So the salt a client is shown says nothing about
// whether the user exists, may use the database asked for, or whether that
// database exists (a login for another database, or for a database name
// that is not served, would otherwise show another salt than a refusal).
func scramSalt(user string) []byte {
	return authMAC(scramMockKey, "scram-salt", user)[:authScramSaltLen]
}

// scramMockCredentials stands in for a user that is not configured: the salt
// is stable per user name (as a real user's is), the keys are random, so the
// exchange proceeds exactly as for a wrong password and no proof matches.
func scramMockCredentials(user string) scram.StoredCredentials {
	stored, server := make([]byte, sha256.Size), make([]byte, sha256.Size)
	_, _ = rand.Read(stored)
	_, _ = rand.Read(server)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{
			Salt:  string(scramSalt(user)),
			Iters: authScramIterations,
		},
		StoredKey: stored,
		ServerKey: server,
	}
}
