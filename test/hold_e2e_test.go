package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 11, "Holding clients across a database restart": with
// pool.hold_on_restart, a restart of the database (a fast shutdown, then
// start) costs the clients latency, not errors. Workers run one-statement
// transactions in a loop through the proxy while the cluster restarts;
// only a statement that was running on a backend at the shutdown may fail
// (at most one per worker), and every worker goes on after the restart on
// the same client connection. The same run with the hold off fails many
// statements fast (08006), so the test can tell the two apart.
func TestHoldAcrossDatabaseRestart(t *testing.T) {
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	run := func(hold string) (int64, int64, time.Duration) {
		var ok, failed atomic.Int64
		p := StartProxy(t,
			WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", hold),
			WithEnv("PGSIDECAR_POOL__MAX_SIZE", "4"),
			WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
		const workers = 8
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conns := make([]*pgconn.PgConn, workers)
		for i := range conns {
			c, err := pgconn.Connect(ctx, p.AppURL())
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			conns[i] = c
		}
		var (
			stop    atomic.Bool
			wg      sync.WaitGroup
			mu      sync.Mutex
			maxTook time.Duration
		)
		for _, c := range conns {
			wg.Add(1)
			go func() { // ends when stop is set (bounded by ctx and 2000 statements)
				defer wg.Done()
				for i := 0; i < 2000 && !stop.Load() && ctx.Err() == nil; i++ {
					start := time.Now()
					_, err := c.Exec(ctx, "SELECT 1").ReadAll()
					took := time.Since(start)
					mu.Lock()
					maxTook = max(maxTook, took)
					mu.Unlock()
					if err != nil {
						failed.Add(1)
						if c.IsClosed() {
							if c, err = pgconn.Connect(ctx, p.AppURL()); err != nil {
								failed.Add(1)
								return
							}
							t.Cleanup(func() { c.Close(context.Background()) })
						}
						time.Sleep(20 * time.Millisecond)
						continue
					}
					ok.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		restartStart := time.Now()
		if err := pg.Stop(); err != nil {
			t.Fatalf("stop the cluster: %v", err)
		}
		time.Sleep(300 * time.Millisecond) // down for a moment, as a restart is
		if err := pg.Start(); err != nil {
			t.Fatalf("start the cluster: %v", err)
		}
		t.Logf("hold_on_restart %s: database down for %v", hold, time.Since(restartStart).Round(time.Millisecond))
		before := ok.Load()
		waitFor(t, 15*time.Second, "statements to succeed again after the restart", func() bool { return ok.Load() > before+workers })
		time.Sleep(300 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		return ok.Load(), failed.Load(), maxTook
	}

	ok, failed, longest := run("10s")
	t.Logf("hold_on_restart 10s: %d statements ok, %d failed, longest %v", ok, failed, longest.Round(time.Millisecond))
	if failed > 8 {
		t.Errorf("with the hold, %d statements failed across the restart; want at most one per worker (8), those running at the shutdown", failed)
	}
	ok, failedOff, _ := run("0")
	t.Logf("hold_on_restart 0: %d statements ok, %d failed", ok, failedOff)
	if failedOff <= failed {
		t.Errorf("without the hold %d statements failed, with it %d: the test does not see the hold", failedOff, failed)
	}
}

// TestHoldNewLoginDuringRestart: the hold covers clients that connect
// while the database is away too (their login waits for a backend to
// check the server's parameters), not only those already connected: a new
// pgx client and an idle client's next statement, both sent while the
// database is down, succeed once it is back. With the hold off both fail
// at once with 08006.
func TestHoldNewLoginDuringRestart(t *testing.T) {
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	for _, hold := range []string{"10s", "0"} {
		p := StartProxy(t, WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", hold), WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		idle := connect(t, p.AppURL())
		if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if err := pg.Stop(); err != nil {
			t.Fatalf("stop the cluster: %v", err)
		}
		newLogin, next := make(chan error, 1), make(chan error, 1)
		go func() { // ends within ctx
			c, err := pgconn.Connect(ctx, p.AppURL())
			if err == nil {
				_, err = c.Exec(ctx, "SELECT 1").ReadAll()
				c.Close(context.Background())
			}
			newLogin <- err
		}()
		go func() { // ends within ctx
			_, err := idle.Exec(ctx, "SELECT 2")
			next <- err
		}()
		time.Sleep(time.Second) // down for a second, with both waiting
		if err := pg.Start(); err != nil {
			t.Fatalf("start the cluster: %v", err)
		}
		errLogin, errNext := <-newLogin, <-next
		cancel()
		t.Logf("hold_on_restart %s: login during the restart: %v; idle client's next statement: %v", hold, errLogin, errNext)
		if hold != "0" {
			if errLogin != nil || errNext != nil {
				t.Errorf("with the hold, the login (%v) and the statement (%v) sent while the database was down must succeed", errLogin, errNext)
			}
		} else if sqlState(errLogin) != "08006" || sqlState(errNext) != "08006" {
			t.Errorf("without the hold, want 08006 for both: login %v, statement %v", errLogin, errNext)
		}
	}
}
