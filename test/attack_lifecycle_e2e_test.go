package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Attacks on the proxy's lifecycle and limits: drains, reloads and admin
// commands while clients wait for a saturated pool, timeouts on clients
// the event loop serves, and connect floods.

// alWaiters logs in n raw clients through p, each parked after a first
// query, so that the event loop reads their next request.
func alWaiters(t *testing.T, p *Proxy, n int) []*rawClient {
	t.Helper()
	rs := make([]*rawClient, n)
	for i := range rs {
		rs[i] = dialRaw(t, txProxyURL(p))
		rs[i].query(t, "SELECT 1")
	}
	return rs
}

// TestDrainEndsEveryWait: SIGTERM while requests wait for a backend of a
// saturated pool (one backend, held by an open transaction) ends every
// wait at once with FATAL 57P01, as the README says ("a client waiting for
// a backend gets 57P01 instead of one"), wherever the request waits: in
// the event loop's own queue (its first 100 ms), or on a goroutine in the
// pool's queue after that, or in the queue of a paused pool. None of the
// waiting requests runs; the open transaction commits and its client gets
// 57P01 at its end; the proxy exits 0 right after, far before
// shutdown_timeout and acquire_timeout.
func TestDrainEndsEveryWait(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // how long the requests wait before SIGTERM
		pause bool
	}{
		{"loop queue", 0, false},
		{"pool queue", 500 * time.Millisecond, false},
		{"paused pool", 500 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const waiters = 6
			table := "e2e_al_drainwait"
			if _, err := runPsql(t, txDirectURL(), "-c", "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+"(i int)"); err != nil {
				t.Fatalf("setup: %v", err)
			}
			p := txStartProxy(t, "transaction", 1,
				WithEnv("PGSIDECAR_SHUTDOWN_TIMEOUT", "20s"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "20s"))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			holder := dialRaw(t, txProxyURL(p))
			rs := alWaiters(t, p, waiters)
			if _, status := holder.query(t, "BEGIN; INSERT INTO "+table+" VALUES (-1)"); status != 'T' {
				t.Fatalf("holder: status %q", status)
			}
			if tc.pause {
				con := connect(t, consoleURL(p, "app", "app"))
				paused := make(chan error, 1)
				go func() { paused <- consoleExec(ctx, con, "PAUSE app") }() // returns at the holder's COMMIT, or ctx's end
				t.Cleanup(func() { cancel(); <-paused })
				waitFor(t, 5*time.Second, "the pool paused", func() bool { return p.Logs.Contains("pool paused") })
			}
			for i, r := range rs {
				r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO %s VALUES (%d)", table, i)})
			}
			waitFor(t, 10*time.Second, "every request waiting", func() bool {
				return clientsStat(t, p, "clients_waiting") == waiters
			})
			time.Sleep(tc.after)
			p.Signal(syscall.SIGTERM)
			signalled := time.Now()
			for i, r := range rs {
				e := receiveFatal(t, r, "57P01", 15*time.Second)
				if took := time.Since(signalled); took > 3*time.Second {
					t.Errorf("waiter %d got 57P01 %v after SIGTERM (%q): it waited for the backend instead", i, took.Round(time.Millisecond), e.Message)
				}
			}
			if _, status := holder.query(t, "COMMIT"); status != 'I' {
				t.Fatalf("COMMIT: status %q", status)
			}
			receiveFatal(t, holder, "57P01", 5*time.Second)
			if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
				t.Fatalf("proxy exit: %d %v", code, err)
			}
			if took := time.Since(signalled); took > 10*time.Second {
				t.Errorf("the drain took %v", took)
			}
			admin := connect(t, pg.AdminURLDB(txAppDB))
			var n int
			if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE i >= 0").Scan(&n); err != nil || n != 0 {
				t.Errorf("waiting requests that ran after SIGTERM: %d %v; want 0", n, err)
			}
		})
	}
}
