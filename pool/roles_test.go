package pool

import (
	"context"
	"testing"
	"time"
)

// TestRolesPauseResumeReconnect: PAUSE on a database acts on every role's
// pool, and a role's pool opened while the database is paused starts
// paused (its first client waits like the others); RESUME runs them all
// again; RECONNECT recycles every role's backends.
func TestRolesPauseResumeReconnect(t *testing.T) {
	db := newFakeDB()
	base := testConfig(db, newLogRecorder())
	r := NewRoles(base, func(string, func() ScramKeys) ConnectFunc { return db.connect })
	t.Cleanup(r.Close)
	alice, _, err := r.Open("alice", ScramKeys{})
	if err != nil {
		t.Fatal(err)
	}
	held := mustAcquire(t, alice)

	waits := r.Pause()
	if len(waits) != 1 || !alice.Paused() {
		t.Fatalf("Pause: %d channels, alice paused %v; want 1, true", len(waits), alice.Paused())
	}
	select {
	case <-waits[0]:
		t.Fatal("PAUSE's wait ended while alice holds a backend")
	case <-time.After(50 * time.Millisecond):
	}
	bob, created, err := r.Open("bob", ScramKeys{})
	if err != nil || !created {
		t.Fatalf("Open bob: %v, created %v", err, created)
	}
	if !bob.Paused() {
		t.Fatal("a role's pool opened while the database is paused runs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bobWaits := acquireAsync(ctx, bob)
	waitFor(t, "bob's client waiting", waiting(bob, 1))
	held.Release()
	select {
	case <-waits[0]:
	case <-time.After(5 * time.Second):
		t.Fatal("PAUSE's wait did not end after alice released her backend")
	}

	r.Resume()
	if alice.Paused() || bob.Paused() {
		t.Fatalf("after Resume: alice paused %v, bob paused %v", alice.Paused(), bob.Paused())
	}
	res := <-bobWaits
	if res.err != nil {
		t.Fatalf("bob's Acquire after Resume: %v", res.err)
	}
	bobPID := fake(res.c).pid
	res.c.Release()
	if carol, _, err := r.Open("carol", ScramKeys{}); err != nil || carol.Paused() {
		t.Fatalf("carol opened after Resume: %v, paused %v", err, carol != nil && carol.Paused())
	}

	c := mustAcquire(t, alice)
	alicePID := fake(c).pid
	c.Release()
	if c := mustAcquire(t, alice); fake(c).pid != alicePID {
		t.Fatalf("alice's idle backend %d not reused (got %d)", alicePID, fake(c).pid)
	} else {
		c.Release()
	}
	r.Reconnect()
	for _, x := range []struct {
		p   *Pool
		old uint32
	}{{alice, alicePID}, {bob, bobPID}} {
		c := mustAcquire(t, x.p)
		if fake(c).pid == x.old {
			t.Errorf("%s: backend %d still handed out after Reconnect", x.p.Name(), x.old)
		}
		c.Release()
	}
}
