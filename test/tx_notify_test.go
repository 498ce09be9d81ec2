package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 6, point 5: LISTEN / NOTIFY in transaction mode through one shared
// listener connection, no backend pinned. The pool has two backends and
// four clients: two pinned listeners would block everyone else.

// txNote is a notification as a listener saw it.
func txNote(ctx context.Context, conn *pgx.Conn, wait time.Duration) (string, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s|%s|%d", n.Channel, n.Payload, n.PID), nil
}

// txNotes collects want notifications (or what came within wait).
func txNotes(ctx context.Context, conn *pgx.Conn, want int, wait time.Duration) []string {
	var got []string
	for len(got) < want {
		n, err := txNote(ctx, conn, wait)
		if err != nil {
			break
		}
		got = append(got, n)
	}
	return got
}

// TestTxListenNotifyShared: pgx clients LISTEN through the proxy and
// WaitForNotification; a third client NOTIFYs. Each proxy listener gets
// exactly what a direct listener running the same statements gets - same
// channels, payloads, order and sender PID (the real sender backend's) -
// including quoted channel names, multi-statement and extended-protocol
// LISTEN, NOTIFY inside a transaction and pg_notify(), delivery held until
// a listener's own transaction ends, UNLISTEN and UNLISTEN *, and the loss
// of the shared listener connection. No client is pinned, and the one
// backend never keeps a LISTEN.
func TestTxListenNotifyShared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)

	l1 := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeSimpleProtocol)
	l2 := txConnectPgx(ctx, t, txProxyURL(p), pgx.QueryExecModeCacheStatement)
	d1 := txConnectPgx(ctx, t, txDirectURL(), pgx.QueryExecModeSimpleProtocol)
	d2 := txConnectPgx(ctx, t, txDirectURL(), pgx.QueryExecModeCacheStatement)
	sender := txConnect(ctx, t, txProxyURL(p), nil)
	other := txConnect(ctx, t, txProxyURL(p), nil)

	exec := func(sql string, conns ...*pgx.Conn) {
		t.Helper()
		for _, c := range conns {
			if _, err := c.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	// compare waits for want notifications on the proxy listener and its
	// direct twin and compares them.
	compare := func(step string, proxyConn, directConn *pgx.Conn, want int) {
		t.Helper()
		got := txNotes(ctx, proxyConn, want, 5*time.Second)
		ref := txNotes(ctx, directConn, want, 5*time.Second)
		if len(ref) != want {
			t.Fatalf("%s: the direct listener got %q, want %d notifications: the test is wrong", step, ref, want)
		}
		if strings.Join(got, "\n") != strings.Join(ref, "\n") {
			t.Errorf("%s: through the proxy %q, directly %q", step, got, ref)
		}
		// Nothing more than directly.
		if extra, err := txNote(ctx, proxyConn, 300*time.Millisecond); err == nil {
			t.Errorf("%s: extra notification through the proxy: %s", step, extra)
		}
	}

	exec("LISTEN tx_chan_a", l1, d1)
	exec(`/* two */ listen "Tx Chan B"; LISTEN tx_chan_a`, l2, d2)
	if n, _ := txPinned(t, p); n != 0 {
		t.Errorf("listeners pinned: clients_pinned %d", n)
	}
	// Neither backend keeps a LISTEN (two open transactions take both).
	txMustExec(ctx, t, other, "BEGIN")
	txMustExec(ctx, t, sender, "BEGIN")
	for _, c := range []*pgconn.PgConn{other, sender} {
		if v := txMustOne(ctx, t, c, "SELECT count(*) FROM pg_listening_channels()"); v != "0" {
			t.Errorf("a pooled backend still listens on %s channels", v)
		}
		txMustExec(ctx, t, c, "COMMIT")
	}

	txMustExec(ctx, t, sender, "NOTIFY tx_chan_a, 'p1'")
	compare("NOTIFY tx_chan_a", l1, d1, 1)
	compare("NOTIFY tx_chan_a", l2, d2, 1)

	txMustExec(ctx, t, sender, `SELECT pg_notify('Tx Chan B', 'p2'); BEGIN; NOTIFY tx_chan_a, 'p3'; NOTIFY "Tx Chan B", 'p4'; COMMIT`)
	compare("pg_notify and NOTIFY in a transaction", l2, d2, 3)
	compare("pg_notify and NOTIFY in a transaction", l1, d1, 1)

	// A listener inside a transaction gets nothing until it ends.
	exec("BEGIN", l1, d1)
	txMustExec(ctx, t, sender, "NOTIFY tx_chan_a, 'p5'")
	for _, c := range []*pgx.Conn{l1, d1} {
		if n, err := txNote(ctx, c, 300*time.Millisecond); err == nil {
			t.Errorf("notification %s delivered inside the listener's transaction", n)
		}
	}
	exec("SELECT 1", l1, d1)
	exec("COMMIT", l1, d1)
	compare("after the listener's transaction", l1, d1, 1)
	compare("while the other listener was idle", l2, d2, 1)

	// UNLISTEN one channel, then UNLISTEN *.
	exec("UNLISTEN tx_chan_a", l1, d1)
	txMustExec(ctx, t, sender, "NOTIFY tx_chan_a, 'p6'")
	compare("after UNLISTEN", l2, d2, 1)
	compare("after UNLISTEN", l1, d1, 0)
	exec("UNLISTEN *", l2, d2)
	txMustExec(ctx, t, sender, `NOTIFY tx_chan_a, 'p7'; NOTIFY "Tx Chan B", 'p8'`)
	compare("after UNLISTEN *", l2, d2, 0)

	// The shared listener connection is killed: it reconnects and listens
	// again; notifications sent after that arrive.
	exec("LISTEN tx_chan_a", l1, d1)
	var killed int
	if err := adminConn(t).QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgsidecar listener'").Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d shared listener connections (%v), want 1", killed, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var got string
	for i := 0; got == "" && time.Now().Before(deadline); i++ {
		txMustExec(ctx, t, sender, fmt.Sprintf("NOTIFY tx_chan_a, 'after-loss-%d'", i))
		if n, err := txNote(ctx, l1, 500*time.Millisecond); err == nil {
			got = n
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiting after the listener loss: %v", err)
		}
	}
	if !strings.HasPrefix(got, "tx_chan_a|after-loss-") {
		t.Errorf("after the shared listener was killed: no notification within 10s (got %q)", got)
	}
	if !p.Logs.ContainsWithin("reconnecting and listening again", 2*time.Second) {
		t.Errorf("no log line about the lost shared listener")
	}
}
