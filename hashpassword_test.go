package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/xdg-go/scram"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// TestHashPassword: `pgsidecar hash-password` prints a verifier in
// PostgreSQL's format whose keys are those of the password on stdin (less
// one trailing newline) under the verifier's own salt, with a fresh salt
// each time; input that is no single password is refused, and so is a
// password on the command line. (test/secrets_e2e_test.go shows PostgreSQL
// itself accepts the verifier.)
func TestHashPassword(t *testing.T) {
	hash := func(in string) (string, error) {
		var out bytes.Buffer
		err := hashPassword(strings.NewReader(in), &out)
		return out.String(), err
	}
	var salts []string
	for _, in := range []string{"pencil\n", "pencil\r\n", "pencil"} {
		out, err := hash(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		v, ok := strings.CutSuffix(out, "\n")
		if !ok || !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") {
			t.Fatalf("%q: output %q, want one verifier line", in, out)
		}
		creds, err := proxy.ParseSCRAMVerifier(v)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if len(creds.Salt) != 16 || creds.Iters != 4096 {
			t.Errorf("%q: salt of %d bytes, %d iterations; want PostgreSQL's 16 and 4096", in, len(creds.Salt), creds.Iters)
		}
		client, err := scram.SHA256.NewClient("", "pencil", "")
		if err != nil {
			t.Fatal(err)
		}
		want, err := client.GetStoredCredentialsWithError(creds.KeyFactors)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want.StoredKey, creds.StoredKey) || !bytes.Equal(want.ServerKey, creds.ServerKey) {
			t.Errorf("%q: the verifier's keys are not those of the password \"pencil\"", in)
		}
		salts = append(salts, creds.Salt)
	}
	if salts[0] == salts[1] || salts[1] == salts[2] {
		t.Errorf("the same salt twice: %q", salts)
	}
	for in, want := range map[string]string{
		"":                                      "no password on stdin",
		"\n":                                    "no password on stdin",
		"one\ntwo\n":                            "more than one line",
		strings.Repeat("x", maxPasswordInput+1): "more than 65536 bytes",
	} {
		if out, err := hash(in); err == nil || !strings.Contains(err.Error(), want) || out != "" {
			t.Errorf("input of %d bytes: output %q, error %v; want %q", len(in), out, err, want)
		}
	}
	err := run(context.Background(), []string{"hash-password", "pencil"}, nil, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "read on stdin, never from the command line") || strings.Contains(err.Error(), "pencil") {
		t.Errorf("password as an argument: %v", err)
	}
}
