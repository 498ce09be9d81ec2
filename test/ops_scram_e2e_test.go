package e2e

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// opsSCRAMProof is the client-final-message for withoutProof (the
// client-final-message-without-proof, extensions included, as the proof
// covers them) in the exchange of clientFirstBare and serverFirst, for
// password.
func opsSCRAMProof(t *testing.T, password, clientFirstBare, serverFirst, withoutProof string) string {
	t.Helper()
	var salt []byte
	iter := 0
	for _, f := range strings.Split(serverFirst, ",") {
		switch {
		case strings.HasPrefix(f, "s="):
			salt, _ = base64.StdEncoding.DecodeString(f[2:])
		case strings.HasPrefix(f, "i="):
			iter, _ = strconv.Atoi(f[2:])
		}
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	mac := func(key []byte, s string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	sig := mac(stored[:], clientFirstBare+","+serverFirst+","+withoutProof)
	for i := range clientKey {
		clientKey[i] ^= sig[i]
	}
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(clientKey)
}

// opsSASLNull is a SASLInitialResponse for SCRAM-SHA-256 whose data length
// is -1 (no initial response), followed by extra bytes in the message.
func opsSASLNull(extra string) []byte {
	body := append([]byte("SCRAM-SHA-256"), 0)
	body = binary.BigEndian.AppendUint32(body, 0xffffffff)
	return aaMsg('p', append(body, extra...))
}

// opsSCRAMLogin logs in as app/app on addr with SCRAM driven by hand:
// null sends the SASLInitialResponse with length -1 (the client-first-
// message then goes in a SASLResponse, if the server asks with an empty
// challenge), ext is put between the nonce and the proof of the
// client-final-message (the proof computed over it), rawFinal replaces the
// client-final-message's body when set. It returns the shape of what came
// back, as aaReadRest's words, stopped at AuthenticationOk ("R0"), and
// the error messages.
func opsSCRAMLogin(t *testing.T, addr string, null bool, ext string, rawFinal []byte) (string, []string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(aaStartup(3, 0, "user", "app", "database", "app")); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(c, c)
	if msg, err := fe.Receive(); err != nil {
		t.Fatalf("%s: %v", addr, err)
	} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("%s: want AuthenticationSASL, got %#v", addr, msg)
	}
	const bare = "n=,r=opsnonce0123456789abcdef"
	var words, msgs []string
	next := func() (*pgproto3.AuthenticationSASLContinue, bool) {
		msg, err := fe.Receive()
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASLContinue:
			words = append(words, "R11")
			return m, true
		case *pgproto3.ErrorResponse:
			words = append(words, "E:"+m.Code)
			msgs = append(msgs, m.Code+" "+m.Message)
			return nil, false
		}
		if err != nil {
			words = append(words, "closed")
		} else {
			words = append(words, "unexpected")
		}
		return nil, false
	}
	rest := func() (string, []string) {
		if len(words) > 0 && strings.HasPrefix(words[len(words)-1], "E:") {
			return aaReadRest(c, c, words, msgs)
		}
		return strings.Join(words, " "), msgs
	}
	if null {
		if _, err := c.Write(opsSASLNull("")); err != nil {
			t.Fatal(err)
		}
		cont, ok := next()
		if !ok {
			return rest()
		}
		if len(cont.Data) != 0 {
			words[len(words)-1] = "R11(" + string(cont.Data) + ")"
			return strings.Join(words, " "), nil
		}
		if _, err := c.Write(aaMsg('p', []byte("n,,"+bare))); err != nil {
			t.Fatal(err)
		}
	} else if _, err := c.Write(aaSASLInitial("SCRAM-SHA-256", "n,,"+bare)); err != nil {
		t.Fatal(err)
	}
	cont, ok := next()
	if !ok {
		return rest()
	}
	serverFirst := string(cont.Data)
	nonce := strings.TrimPrefix(strings.Split(serverFirst, ",")[0], "r=")
	withoutProof := "c=biws,r=" + nonce
	if ext != "" {
		withoutProof += "," + ext
	}
	final := []byte(opsSCRAMProof(t, "app", bare, serverFirst, withoutProof))
	if rawFinal != nil {
		final = rawFinal
	}
	if _, err := c.Write(aaMsg('p', final)); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			words = append(words, "closed")
			return strings.Join(words, " "), msgs
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASLFinal:
			words = append(words, "R12")
		case *pgproto3.AuthenticationOk:
			words = append(words, "R0")
			return strings.Join(words, " "), msgs
		case *pgproto3.ErrorResponse:
			words = append(words, "E:"+m.Code)
			msgs = append(msgs, m.Code+" "+m.Message)
			return aaReadRest(c, c, words, msgs)
		default:
			words = append(words, "unexpected")
			return strings.Join(words, " "), msgs
		}
	}
}

// TestSCRAMExtensionAndNullResponse: what PostgreSQL answers, the proxy
// answers (SQLSTATE, and whether the connection goes on or is closed),
// compared on the same bytes with a direct connection:
//   - a client-final-message with an extension (m=..., or another
//     letter) between the nonce and the proof, the proof computed over it:
//     PostgreSQL ignores extensions there, and the login succeeds;
//   - a SASLInitialResponse whose length is -1 (a null initial response):
//     PostgreSQL answers an empty AuthenticationSASLContinue, takes the
//     client-first-message in the next SASLResponse, and the login succeeds;
//   - that length -1 followed by bytes anyway: 08P01, closed;
//   - a client-first-message with an m= extension (which a server that
//     does not know it must refuse): 0A000, closed;
//   - a SASLResponse whose body is 0xffffffff (a -1 length where a
//     client-final-message belongs): 08P01, closed, and the proxy's
//     message is about the client's message, not the SCRAM library's
//     internals.
func TestSCRAMExtensionAndNullResponse(t *testing.T) {
	p := StartProxy(t)
	for _, tc := range []struct {
		name     string
		null     bool
		ext      string
		rawFinal []byte
		extra    string
	}{
		{name: "client-final with m=", ext: "m=ext"},
		{name: "client-final with x= and m=", ext: "x=1,m=2"},
		{name: "null initial response", null: true},
		{name: "client-final of length -1", rawFinal: []byte{0xff, 0xff, 0xff, 0xff}},
	} {
		want, wantMsgs := opsSCRAMLogin(t, pg.Addr(), tc.null, tc.ext, tc.rawFinal)
		got, gotMsgs := opsSCRAMLogin(t, p.Addr, tc.null, tc.ext, tc.rawFinal)
		t.Logf("%s: PostgreSQL %s %q; proxy %s %q", tc.name, want, wantMsgs, got, gotMsgs)
		if got != want {
			t.Errorf("%s: proxy %s %q, PostgreSQL %s %q", tc.name, got, gotMsgs, want, wantMsgs)
		}
		for _, m := range gotMsgs {
			if strings.Contains(m, "server message") || strings.Contains(m, "xorBytes") {
				t.Errorf("%s: the proxy's message %q speaks of the SCRAM library's internals", tc.name, m)
			}
		}
	}
	startup := aaStep{out: aaStartup(3, 0, "user", "app", "database", "app")}
	for _, tc := range []struct {
		name  string
		first []byte
	}{
		{"length -1 followed by data", opsSASLNull("n,,n=,r=abc")},
		{"client-first with m=", aaSASLInitial("SCRAM-SHA-256", "n,,m=ext,n=,r=abc")},
	} {
		want, wantMsgs := aaExchange(t, pg.Addr(), startup, aaStep{out: tc.first})
		got, gotMsgs := aaExchange(t, p.Addr, startup, aaStep{out: tc.first})
		t.Logf("%s: PostgreSQL %s %q; proxy %s %q", tc.name, want, wantMsgs, got, gotMsgs)
		if !strings.HasSuffix(want, "closed") {
			t.Fatalf("%s: PostgreSQL answers %s %q: the test's premise does not hold", tc.name, want, wantMsgs)
		}
		if got != want {
			t.Errorf("%s: proxy %s %q, PostgreSQL %s %q", tc.name, got, gotMsgs, want, wantMsgs)
		}
	}
	aaLoginsStillWork(t, p, 1)
}
