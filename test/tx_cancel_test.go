package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Cancel requests through the proxy: the client only knows the proxy-minted
// key from BackendKeyData, and the cancel must reach exactly the query that
// client is running, on whichever backend, and nothing else.

// txQueryResult is the outcome of a query run in the background.
type txQueryResult struct {
	err     error
	elapsed time.Duration
	done    time.Time
}

// txRunAsync runs sql on conn in a goroutine the caller owns: it must
// receive from the returned channel (every query here is bounded).
func txRunAsync(ctx context.Context, conn *pgconn.PgConn, sql string) <-chan txQueryResult {
	ch := make(chan txQueryResult, 1)
	go func() {
		start := time.Now()
		_, err := conn.Exec(ctx, sql).ReadAll()
		ch <- txQueryResult{err: err, elapsed: time.Since(start), done: time.Now()}
	}()
	return ch
}

// TestTxCancelRunningQuery: a client's pg_sleep(30) is cancelled through
// the proxy within 1s (57014) while another client's pg_sleep(2) on the
// other backend runs to its end.
func TestTxCancelRunningQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURL(), nil) // watches pg_stat_activity
	a := txConnect(ctx, t, txProxyURL(p), nil)
	b := txConnect(ctx, t, txProxyURL(p), nil)

	aRes := txRunAsync(ctx, a, "SELECT pg_sleep(30) /* tx-cancel-a */")
	bRes := txRunAsync(ctx, b, "SELECT pg_sleep(2) /* tx-cancel-b */")
	waitActive(ctx, t, admin, "tx-cancel-", 2, 10*time.Second)

	sent := time.Now()
	if err := a.CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	select {
	case r := <-aRes:
		if code := sqlState(r.err); code != "57014" {
			t.Errorf("cancelled query: want query_canceled (57014), got %v after %v", r.err, r.elapsed)
		}
		if took := r.done.Sub(sent); took > time.Second {
			t.Errorf("cancelled query returned %v after the cancel request, want within 1s", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("pg_sleep(30) still running 5s after the cancel request")
	}
	r := <-bRes
	if r.err != nil {
		t.Errorf("the other client's pg_sleep(2) failed: %v", r.err)
	}
	if r.elapsed < 2*time.Second {
		t.Errorf("the other client's pg_sleep(2) returned after %v: it was cut short", r.elapsed)
	}
	// Both clients carry on.
	for name, conn := range map[string]*pgconn.PgConn{"a": a, "b": b} {
		if v := txMustOne(ctx, t, conn, "SELECT 41 + 1"); v != "42" {
			t.Errorf("client %s after the cancel: got %q", name, v)
		}
	}
}

// TestTxCancelWrongKey: cancel requests with the client's pid and a wrong
// secret, or another pid and the right secret, change nothing.
func TestTxCancelWrongKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	admin := txConnect(ctx, t, pg.AdminURL(), nil) // watches pg_stat_activity
	a := txConnect(ctx, t, txProxyURL(p), nil)
	secret := a.SecretKey()
	if len(secret) == 0 {
		t.Fatalf("the proxy sent no BackendKeyData secret")
	}
	wrong := make([]byte, len(secret))
	for i := range secret {
		wrong[i] = secret[i] ^ 0x5a
	}

	aRes := txRunAsync(ctx, a, "SELECT pg_sleep(1.5) /* tx-cancel-wrong */")
	waitActive(ctx, t, admin, "tx-cancel-wrong", 1, 10*time.Second)
	sendRawCancel(t, p.Addr, a.PID(), wrong)
	sendRawCancel(t, p.Addr, a.PID()^0x7fff, secret)
	r := <-aRes
	if r.err != nil {
		t.Errorf("a cancel with a wrong key cancelled the query: %v", r.err)
	}
	if r.elapsed < 1500*time.Millisecond {
		t.Errorf("pg_sleep(1.5) returned after %v", r.elapsed)
	}

	// The same raw packet with the right key does cancel: the wrong-key
	// packets above were well-formed and really were refused for the key.
	aRes = txRunAsync(ctx, a, "SELECT pg_sleep(30) /* tx-cancel-right */")
	waitActive(ctx, t, admin, "tx-cancel-right", 1, 10*time.Second)
	sendRawCancel(t, p.Addr, a.PID(), secret)
	select {
	case r := <-aRes:
		if sqlState(r.err) != "57014" {
			t.Errorf("raw cancel with the right key: want 57014, got %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("raw cancel with the right key did not cancel pg_sleep(30) within 5s")
	}
}

// TestTxCancelIdleClient: a cancel from a client that is between
// transactions is dropped. With a pool of one, the backend that client used
// last is running another client's query at that moment: that query must
// not be cancelled, and neither is the idle client's next query.
func TestTxCancelIdleClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	admin := txConnect(ctx, t, pg.AdminURL(), nil) // watches pg_stat_activity
	a := txConnect(ctx, t, txProxyURL(p), nil)
	c := txConnect(ctx, t, txProxyURL(p), nil)

	aPid := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
	cRes := txRunAsync(ctx, c, "SELECT pg_backend_pid(), pg_sleep(1.5) /* tx-cancel-idle-other */")
	waitActive(ctx, t, admin, "tx-cancel-idle-other", 1, 10*time.Second)
	if err := a.CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	r := <-cRes
	if r.err != nil {
		t.Errorf("idle client a's cancel hit client c's query on the shared backend (a used %s): %v", aPid, r.err)
	}
	if r.elapsed < 1500*time.Millisecond {
		t.Errorf("client c's pg_sleep(1.5) returned after %v", r.elapsed)
	}

	// And with nobody else around: the cancel is not kept for later.
	if err := a.CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	if _, err := a.Exec(ctx, "SELECT pg_sleep(0.5)").ReadAll(); err != nil {
		t.Errorf("client a's next query after an idle cancel failed: %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Errorf("client a's pg_sleep(0.5) returned after %v", el)
	}
}
