package proxy

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/xdg-go/scram"
)

// TestScramClientKeyRecovered: the ClientKey recovered from a client's
// proof is the one its password derives, and a wrong StoredKey gives none.
func TestScramClientKeyRecovered(t *testing.T) {
	creds, err := scramCredentials("u", "secret")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		t.Fatal(err)
	}
	client, err := scram.SHA256.NewClient("", "secret", "")
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := client.NewConversation(), srv.NewConversation()
	first, _ := cc.Step("")
	serverFirst, err := sc.Step(first)
	if err != nil {
		t.Fatal(err)
	}
	final, err := cc.Step(serverFirst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Step(final); err != nil || !sc.Valid() {
		t.Fatalf("exchange: %v", err)
	}
	key := scramClientKey(creds.StoredKey, first, serverFirst, []byte(final))
	if key == nil {
		t.Fatal("no key recovered")
	}
	if h := sha256.Sum256(key); !bytes.Equal(h[:], creds.StoredKey) {
		t.Fatal("recovered key does not hash to StoredKey")
	}
	bad := append([]byte(nil), creds.StoredKey...)
	bad[0] ^= 1
	if scramClientKey(bad, first, serverFirst, []byte(final)) != nil {
		t.Fatal("a key was recovered against the wrong StoredKey")
	}
}
