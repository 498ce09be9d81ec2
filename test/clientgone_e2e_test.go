package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestWaitingClientLeaves: clients whose INSERT waits for a backend (the
// pool's one backend is held by an open transaction) and that then vanish
// must not have the INSERT run when the backend frees up: an application
// that retries after its own timeout would run it twice. PgBouncer 1.18,
// given the same (a pool of 1 held, 10 waiting INSERTs from psql killed
// with SIGKILL), runs none of them; pgsidecar ran all 10 before. A client
// waiting alongside that stays gets its INSERT run and answered. Twice:
// the holder commits at once, while the waiting requests are still in
// the event loop's own queue, and after 300 ms, when they wait on
// goroutines in the pool's queue (past the loop's 100 ms).
func TestWaitingClientLeaves(t *testing.T) {
	for _, tc := range []struct {
		name string
		hold time.Duration
	}{
		{"in the event loop's queue", 30 * time.Millisecond},
		{"in the pool's queue", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) { waitingClientLeaves(t, tc.hold) })
	}
}

func waitingClientLeaves(t *testing.T, hold time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS gone_waiters; CREATE TABLE gone_waiters(i int)")
	holder := dialRaw(t, txProxyURL(p))
	holder.query(t, "SELECT 1")
	var waiters []*rawClient
	for i := 0; i <= 10; i++ { // the last one stays
		r := dialRaw(t, txProxyURL(p))
		r.query(t, "SELECT 1") // parked after it: the event loop reads the INSERT
		r.query(t, "SELECT 1")
		waiters = append(waiters, r)
	}
	stays := waiters[10]
	holder.query(t, "BEGIN")
	for i, r := range waiters {
		r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO gone_waiters VALUES (%d)", i)})
	}
	waitFor(t, 10*time.Second, "11 clients waiting for the backend", func() bool {
		return clientsStat(t, p, "clients_waiting") == 11
	})
	for _, r := range waiters[:10] {
		r.vanish(t)
	}
	time.Sleep(hold)
	holder.query(t, "COMMIT")
	if _, err := lgReplies(stays, 1, 10*time.Second); err != nil {
		t.Fatalf("the client that stayed: %v", err)
	}
	res, err := admin.Exec(ctx, "SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM gone_waiters").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "10" {
		t.Fatalf("rows inserted: %q; want only the client that stayed (10), none of the 10 that left while waiting", got)
	}
	waitFor(t, 10*time.Second, "no client waiting, two left", func() bool {
		return clientsStat(t, p, "clients_waiting") == 0 && clientsStat(t, p, "clients_total") == 2
	})
	lgCleanBackends(ctx, t, p, 1)
	lgLogLoop(t, p)
}

// TestWaitingClientHalfCloses: a client that sends an INSERT and at once
// half-closes its socket (shutdown(SHUT_WR): it will send nothing more,
// and reads on) while its request waits for the pool's one backend, held
// by an open transaction. Directly PostgreSQL runs a request followed by
// the end of the stream: the row is there and the client gets the reply,
// then the end. Through the proxy too, whether the request waited in the
// event loop's queue (the holder commits at once) or on a goroutine in
// the pool's queue (after 300 ms, past the loop's 100 ms). A FIN cannot
// be told from a close; only a reset says the client is gone
// (TestWaitingClientLeaves).
func TestWaitingClientHalfCloses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 1)
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS halfclose_waiters; CREATE TABLE halfclose_waiters(i int)")
	rows := func() string {
		res, err := admin.Exec(ctx, "SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM halfclose_waiters").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return string(res[0].Rows[0][0])
	}
	insertThenHalfClose := func(r *rawClient, i int) {
		r.send(t, &pgproto3.Query{String: fmt.Sprintf("INSERT INTO halfclose_waiters VALUES (%d)", i)})
		if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}

	direct := dialRaw(t, txDirectURL())
	insertThenHalfClose(direct, 0)
	want, ended := alReadToEnd(direct, 10*time.Second)
	if !ended {
		t.Fatal("PostgreSQL kept the half-closed session open")
	}
	if got := rows(); got != "0" {
		t.Fatalf("directly, rows: %q, want 0", got)
	}

	holder := dialRaw(t, txProxyURL(p))
	holder.query(t, "SELECT 1")
	for i, hold := range []time.Duration{30 * time.Millisecond, 300 * time.Millisecond} {
		r := dialRaw(t, txProxyURL(p))
		r.query(t, "SELECT 1") // parked after it: the event loop reads the INSERT
		r.query(t, "SELECT 1")
		holder.query(t, "BEGIN")
		insertThenHalfClose(r, i+1)
		waitFor(t, 10*time.Second, "the client waiting for the backend", func() bool {
			return clientsStat(t, p, "clients_waiting") == 1
		})
		time.Sleep(hold)
		holder.query(t, "COMMIT")
		got, ended := alReadToEnd(r, 10*time.Second)
		if !ended {
			t.Fatalf("held %v: the proxy kept the half-closed client's connection open after %q", hold, got)
		}
		lgCompare(t, fmt.Sprintf("held %v", hold), got, want)
		if got, want := rows(), fmt.Sprintf("0,%d", i+1); !strings.HasPrefix(got, want) {
			t.Errorf("held %v: rows %q, want %s: the INSERT of the client that half-closed while it waited did not run", hold, got, want)
		}
		txMustExec(ctx, t, admin, "DELETE FROM halfclose_waiters WHERE i > 0")
	}
	waitFor(t, 10*time.Second, "no client waiting, the holder left", func() bool {
		return clientsStat(t, p, "clients_waiting") == 0 && clientsStat(t, p, "clients_total") == 1
	})
	lgCleanBackends(ctx, t, p, 1)
	lgLogLoop(t, p)
}
