package pool

import (
	"net"
	"strings"
	"testing"
)

// TestScramClientMechanism covers the choices of the passthrough's SCRAM
// toward the server that the e2e tests cannot reach (there the auth user's
// own pgconn login fails first with the same URL): off TLS, channel_binding
// =require is refused before anything is sent, prefer says "n" (it cannot
// bind), and a server offering only SCRAM-SHA-256-PLUS, or no SCRAM at
// all, is refused. The TLS choices (-PLUS, "y" on a downgraded offer) are
// proven against PostgreSQL in test/passthrough_tls_e2e_test.go.
func TestScramClientMechanism(t *testing.T) {
	plainConn, other := net.Pipe()
	defer plainConn.Close()
	defer other.Close()
	both := []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}
	for _, c := range []struct {
		name, cb string
		offered  []string
		wantErr  string
		wantMech string
		wantGS2  string
	}{
		{"prefer, plain text", "prefer", []string{"SCRAM-SHA-256"}, "", "SCRAM-SHA-256", "n,,"},
		{"prefer, plain text, -PLUS offered", "prefer", both, "", "SCRAM-SHA-256", "n,,"},
		{"disable", "disable", both, "", "SCRAM-SHA-256", "n,,"},
		{"require, not offered", "require", []string{"SCRAM-SHA-256"}, "does not offer SCRAM-SHA-256-PLUS", "", ""},
		{"require, offered but no TLS", "require", both, "not on TLS", "", ""},
		{"only -PLUS, no TLS", "prefer", []string{"SCRAM-SHA-256-PLUS"}, "offers only", "", ""},
		{"no SCRAM", "prefer", []string{"OAUTHBEARER"}, "not SCRAM-SHA-256", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc, err := newScramClient(ScramKeys{}, c.offered, c.cb, plainConn)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one with %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			first, err := sc.first()
			if err != nil {
				t.Fatal(err)
			}
			if sc.mechanism != c.wantMech || !strings.HasPrefix(string(first), c.wantGS2+"n=,r=") {
				t.Fatalf("mechanism %s, first message %q; want %s, %q...", sc.mechanism, first, c.wantMech, c.wantGS2)
			}
		})
	}
}
