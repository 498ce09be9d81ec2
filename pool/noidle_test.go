package pool

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
)

// NoIdle (a template database's pool): a backend free with nobody
// waiting is closed, never kept idle, the first-contact backend included;
// one a waiter wants is handed on; MinSize above 0 is refused.
func TestNoIdleClosesFreeBackends(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.NoIdle = true
		p := startPool(t, cfg)
		synctest.Wait()
		if open, _, _, _ := db.stats(); open != 0 || p.Stats().Idle != 0 {
			t.Fatalf("after the first connect: %d open, %d idle; want none kept", open, p.Stats().Idle)
		}

		c := mustAcquire(t, p)
		w := acquireAsync(context.Background(), p) // room for a second backend: its own connect
		r := <-w
		if r.err != nil {
			t.Fatal(r.err)
		}
		// A third caller waits (MaxSize 2) and takes the first one released.
		w3 := acquireAsync(context.Background(), p)
		synctest.Wait()
		first := fake(c)
		c.Release()
		r3 := <-w3
		if r3.err != nil || fake(r3.c) != first {
			t.Fatalf("the waiter did not get the released backend: %v", r3.err)
		}
		r.c.Release()
		r3.c.Release()
		synctest.Wait()
		if open, _, _, _ := db.stats(); open != 0 {
			t.Fatalf("%d servers open after every client released; want 0", open)
		}
		if s := p.Stats(); s.Total != 0 || s.Idle != 0 || s.Retired.Idle < 2 || s.State != StateHealthy {
			t.Fatalf("stats: total %d idle %d retired idle %d state %s", s.Total, s.Idle, s.Retired.Idle, s.State)
		}

		cfg.MinSize = 1
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "NoIdle") {
			t.Fatalf("MinSize 1 with NoIdle: %v, want refused", err)
		}
	})
}
