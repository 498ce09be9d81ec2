package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestLoopGrowsThePool: requests relayed by the event loop (proxy/loop.go)
// still make the pool open backends up to pool.max_size when every open
// one is busy: 8 clients each running a 300 ms query at once, on a pool
// that starts with one backend and may open 8, finish together, in about
// one query's time, on 8 backends (pg_stat_activity), not one after the
// other. (The loop takes only idle backends; opening one is Acquire's.)
func TestLoopGrowsThePool(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"), WithEnv("PGSIDECAR_POOL__MAX_SIZE", "8"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 8
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = connect(t, p.AppURL())
		// A few requests each first, so that every client is parked and
		// its next request is read by the loop.
		for range 3 {
			if _, err := conns[i].Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	before := loopRequests(t, p)
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			if _, err := c.Exec(ctx, "SELECT pg_sleep(0.3)"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if took > 1500*time.Millisecond {
		t.Fatalf("8 concurrent 300 ms queries took %v: the pool did not grow past its idle backends", took)
	}
	if got := loopRequests(t, p) - before; got == 0 {
		t.Fatalf("no request went through the event loop (loop_requests unchanged at %v)", before)
	}
	direct := adminConn(t)
	var backends int
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'").Scan(&backends); err != nil {
		t.Fatal(err)
	}
	if backends < n {
		t.Fatalf("%d backends open for %d concurrent queries, want %d", backends, n, n)
	}
}

// loopRequests is /stats' count of requests the event loop relayed.
func loopRequests(t *testing.T, p *Proxy) float64 {
	t.Helper()
	clients, _ := p.Stats(t)["clients"].(map[string]any)
	v, ok := clients["loop_requests"].(float64)
	if !ok {
		t.Fatalf("/stats has no clients.loop_requests: %v", clients)
	}
	return v
}
