package pool

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// Pause: the held backend is waited for, new Acquires queue past
// AcquireTimeout without an error and are served in order at Resume;
// Reconnect closes idle backends now and held ones at release;
// MaxBackendErrors retires at release; Backends lists them.
func TestPauseResumeReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		cfg := testConfig(db, newLogRecorder())
		cfg.AcquireTimeout = time.Second
		cfg.MaxBackendErrors = 2
		p := startPool(t, cfg)

		held := mustAcquire(t, p)
		done := p.Pause()
		select {
		case <-done:
			t.Fatal("Pause finished with a backend held")
		case <-time.After(100 * time.Millisecond):
		}
		ctx := context.Background()
		first := acquireAsync(ctx, p)
		synctest.Wait()
		second := acquireAsync(ctx, p)
		synctest.Wait()
		held.Release()
		<-done
		time.Sleep(3 * cfg.AcquireTimeout) // held past the timeout: no error
		if s := p.Stats(); s.Waiting != 2 || !s.Paused || s.Active != 0 {
			t.Fatalf("paused: waiting %d paused %v active %d", s.Waiting, s.Paused, s.Active)
		}
		p.Resume()
		r1, r2 := <-first, <-second
		if r1.err != nil || r2.err != nil {
			t.Fatalf("after Resume: %v, %v", r1.err, r2.err)
		}
		if bs := p.Backends(); len(bs) != 2 || bs[0].State != "active" || bs[1].State != "active" {
			t.Fatalf("Backends: %+v", bs)
		}

		old1, old2 := fake(r1.c), fake(r2.c)
		r1.c.AddErrors(3, 1)
		r1.c.Release() // one error: kept
		p.Reconnect()  // r1's backend is idle: closed now
		synctest.Wait()
		if !old1.closed.Load() || old2.closed.Load() {
			t.Fatalf("Reconnect: idle closed %v, held closed %v", old1.closed.Load(), old2.closed.Load())
		}
		if bs := p.Backends(); len(bs) != 1 || !bs[0].Recycle {
			t.Fatalf("held backend not marked for recycling: %+v", bs)
		}
		r2.c.Release()
		synctest.Wait()
		if !old2.closed.Load() || p.Stats().Retired.Reconnect != 2 {
			t.Fatalf("held backend not closed at release: %+v", p.Stats().Retired)
		}

		c := mustAcquire(t, p)
		c.AddErrors(2, 2)
		bs := p.Backends()
		if len(bs) != 1 || bs[0].Errors != 2 || bs[0].SQLErrors != 2 || bs[0].Recycle {
			t.Fatalf("Backends: %+v", bs)
		}
		c.Release()
		synctest.Wait()
		if !fake(c).closed.Load() || p.Stats().Retired.Error != 1 {
			t.Fatalf("MaxBackendErrors 2: backend kept: %+v", p.Stats().Retired)
		}
	})
}

// Resume resets the circuit breaker: the next connect happens now, not
// after the backoff.
func TestResumeResetsCircuit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newFakeDB()
		db.setDown(errors.New("fake: connection refused"))
		cfg := testConfig(db, newLogRecorder())
		cfg.BackoffInitial, cfg.BackoffMax = time.Hour, time.Hour
		p := startPool(t, cfg)
		synctest.Wait()
		if p.State() != StateUnhealthy {
			t.Fatalf("state %s", p.State())
		}
		_, _, attempts, _ := db.stats()
		db.setDown(nil)
		p.Resume()
		synctest.Wait()
		if _, _, now, _ := db.stats(); now != attempts+1 {
			t.Fatalf("connect attempts %d -> %d after Resume, want one more at once", attempts, now)
		}
		if s := p.State(); s == StateUnhealthy {
			t.Fatalf("still UNHEALTHY after Resume with the database back")
		}
	})
}
