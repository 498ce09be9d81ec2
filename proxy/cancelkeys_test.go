package proxy

import (
	"sync"
	"testing"
)

// TestCancelKeysLookupDuringRekey: a cancel request looked up while a
// session-mode login gives the client its backend's key (rekey) reads the
// key under the lock; the race detector fails this test otherwise. The
// lookup finds the client by the minted key or by the backend's, never by
// a key it never had.
func TestCancelKeysLookupDuringRekey(t *testing.T) {
	k := newCancelKeys()
	c := &clientConn{}
	k.register(c)
	mintedPID, mintedSecret := c.identity.pid, c.identity.secret
	const backendPID, backendSecret = 4242, 0x5eC4e7
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !k.rekey(c, backendPID, backendSecret) {
			t.Error("rekey refused a free pid")
		}
	}()
	for i := 0; i < 1000; i++ {
		if got := k.lookup(mintedPID, mintedSecret); got != nil && got != c {
			t.Fatalf("lookup by the minted key found %p, want c or nil", got)
		}
		if got := k.lookup(backendPID, backendSecret); got != nil && got != c {
			t.Fatalf("lookup by the backend's key found %p, want c or nil", got)
		}
		if got := k.lookup(backendPID, backendSecret+1); got != nil {
			t.Fatal("lookup with a wrong secret found a client")
		}
	}
	wg.Wait()
	if got := k.lookup(backendPID, backendSecret); got != c {
		t.Fatal("after rekey, the backend's key does not find the client")
	}
	if got := k.lookup(mintedPID, mintedSecret); got != nil {
		t.Fatal("after rekey, the minted key still finds the client")
	}
}
