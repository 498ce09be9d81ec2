package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
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
	before := clientsStat(t, p, "loop_requests")
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
	if got := clientsStat(t, p, "loop_requests") - before; got == 0 {
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

// TestPipelinerThatLeavesIsCleanedUp: a client pipelines 20,000 queries
// (about 40 MB of replies), reads nothing and closes. The proxy must
// forget it and free its backend. Before the fix (found by the loop
// guards), in about one attempt in 6-12 the backend reader failed writing
// to the client and ended, and the client reader, waiting in backpressure
// for replies nobody would drain any more, flushed the backend forever:
// the client stayed listed, held its backend and half a CPU until
// shutdown. Each attempt closes at a different moment of the write.
func TestPipelinerThatLeavesIsCleanedUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 3)
	var msgs []pgproto3.FrontendMessage
	for range 20000 {
		msgs = append(msgs, &pgproto3.Query{String: "SELECT repeat('y', 2000)"})
	}
	batch := encodeMsgs(t, msgs...)
	for attempt := range 10 {
		stuck := dialRaw(t, p.AppURL())
		written := make(chan error, 1)
		go func() {
			_ = stuck.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
			_, err := stuck.conn.Write(batch)
			written <- err
		}()
		time.Sleep(time.Duration(150+attempt*37%400) * time.Millisecond)
		stuck.conn.Close()
		<-written
		deadline := time.Now().Add(5 * time.Second)
		for clientCount(t, p.Stats(t)) != 0 || poolStat(t, p, "active") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("attempt %d: 5 s after the client closed, %v clients and %d active backends remain",
					attempt, clientCount(t, p.Stats(t)), poolStat(t, p, "active"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The pool still serves.
	c := txConnect(ctx, t, txProxyURL(p), nil)
	txMustOne(ctx, t, c, "SELECT 1")
}
