package proxy

import "testing"

// TestClientsDuringLogins: SHOW CLIENTS (Server.Clients) lists clients
// while others log in. A client joins the list before its login mints its
// cancel key (and, in session mode, takes its backend's), so the listing
// reads a key a login may be writing: under -race both sides must take
// the key's lock.
func TestClientsDuringLogins(t *testing.T) {
	for _, mode := range []Mode{ModeTransaction, ModeSession} {
		t.Run(string(mode), func(t *testing.T) {
			const n = 20
			scripts := make([]beScript, n+1)
			e := startFake(t, fakeOpts{mode: mode, maxSize: n + 1}, scripts...)
			stop, done := make(chan struct{}), make(chan struct{})
			go func() { // ends when stop is closed
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
						for _, ci := range e.srv.Clients() {
							_ = ci.PID
						}
					}
				}
			}()
			rcs := make([]*rawClient, n)
			for i := range rcs {
				rcs[i] = e.dialRaw(t)
			}
			close(stop)
			<-done
			seen := map[uint32]bool{}
			for _, ci := range e.srv.Clients() {
				seen[ci.PID] = true
			}
			for _, rc := range rcs {
				if !seen[rc.pid] {
					t.Fatalf("SHOW CLIENTS lacks the pid %d the client was given (%v)", rc.pid, seen)
				}
			}
		})
	}
}
