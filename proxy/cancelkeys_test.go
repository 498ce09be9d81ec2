package proxy

import (
	"sync"
	"testing"
)

// TestCancelKeysLookupDuringRekey: a cancel request looked up while a
// session-mode login gives the client its backend's pid (rekey) reads the
// key under the lock; the race detector fails this test otherwise. The
// lookup finds the client by the minted key or by the backend's pid with
// the minted secret, never by a key it never had, nor by the backend's own
// secret, which would outlive the client's session.
func TestCancelKeysLookupDuringRekey(t *testing.T) {
	k := newCancelKeys()
	c := &clientConn{}
	k.register(c)
	mintedPID, mintedSecret := c.identity.pid, c.identity.secret
	const backendPID = 4242
	backendSecret := mintedSecret + 1 // the backend's own
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !k.rekey(c, backendPID) {
			t.Error("rekey refused a free pid")
		}
	}()
	for i := 0; i < 1000; i++ {
		if got := k.lookup(mintedPID, mintedSecret); got != nil && got != c {
			t.Fatalf("lookup by the minted key found %p, want c or nil", got)
		}
		if got := k.lookup(backendPID, mintedSecret); got != nil && got != c {
			t.Fatalf("lookup by the backend's pid found %p, want c or nil", got)
		}
		if got := k.lookup(backendPID, backendSecret); got != nil {
			t.Fatal("lookup with the backend's own secret found a client")
		}
	}
	wg.Wait()
	if got := k.lookup(backendPID, mintedSecret); got != c {
		t.Fatal("after rekey, the backend's pid does not find the client")
	}
	if got := k.lookup(mintedPID, mintedSecret); got != nil {
		t.Fatal("after rekey, the minted key still finds the client")
	}
}
