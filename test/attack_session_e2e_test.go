package e2e

// Attacks on session mode and on the asynchronous, long-lived parts of
// transaction mode (LISTEN/NOTIFY, COPY, pins, cancel keys): a client that
// leaves in the middle of something, or misbehaves, must cost only its own
// work, and never hand state, a key or a notification to the next client
// of its backend. Each result is compared with a direct connection where
// PostgreSQL has the behaviour.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// asSendCancel sends a CancelRequest with (pid, secret) to addr, as a
// driver does, and waits for the server to close the connection.
func asSendCancel(t *testing.T, addr string, pid uint32, secret []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s for a cancel: %v", addr, err)
	}
	defer conn.Close()
	buf := make([]byte, 12, 12+len(secret))
	binary.BigEndian.PutUint32(buf[0:], uint32(12+len(secret)))
	binary.BigEndian.PutUint32(buf[4:], 80877102)
	binary.BigEndian.PutUint32(buf[8:], pid)
	buf = append(buf, secret...)
	if _, err := conn.Write(buf); err != nil {
		t.Fatalf("write cancel: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var one [1]byte
	_, _ = conn.Read(one[:]) // the server closes it
}

// TestAttackSessionStaleCancelKey: the cancel key a session-mode client was
// given must die with its session, as PostgreSQL's does. Directly, a new
// session has a new key, so a cancel with the key of a session that ended
// (a late cancel of a client that just left, or a former client of the
// pool that kept the key) reaches nobody. Through the proxy the next client
// of the same backend must not be cancelled by it either.
func TestAttackSessionStaleCancelKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "session", 1)
	direct := pg.URL(txAppUser, txAppPassword, txAppDB)
	for _, target := range []struct{ name, url, addr string }{
		{"direct", direct, directAddr(t, direct)},
		{"proxy", txProxyURL(p), p.Addr},
	} {
		a := txConnect(ctx, t, target.url, nil)
		aPID, aKey := a.PID(), append([]byte(nil), a.SecretKey()...)
		aBackend := txMustOne(ctx, t, a, "SELECT pg_backend_pid()")
		txClosePgconn(a)

		b := txConnect(ctx, t, target.url, nil)
		bBackend := txMustOne(ctx, t, b, "SELECT pg_backend_pid()")
		if target.name == "proxy" && bBackend != aBackend {
			t.Fatalf("proxy: the second client got backend %s, not %s of the first (pool of 1)", bBackend, aBackend)
		}
		res := make(chan error, 1)
		go func() { // ends with the query: 1.5 s, or cancelled
			_, err := b.Exec(ctx, "SELECT pg_sleep(1.5)").ReadAll()
			res <- err
		}()
		time.Sleep(300 * time.Millisecond)
		asSendCancel(t, target.addr, aPID, aKey)
		if err := <-res; err != nil {
			t.Errorf("%s: a cancel with the key of a client that left cancelled the next client's query: %v", target.name, err)
		}
		// The next client's own key still works.
		go func() {
			_, err := b.Exec(ctx, "SELECT pg_sleep(10)").ReadAll()
			res <- err
		}()
		time.Sleep(300 * time.Millisecond)
		if err := b.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-res; txCode(err) != "57014" {
			t.Errorf("%s: the client's own cancel: %v, want 57014", target.name, err)
		}
		txClosePgconn(b)
	}
}

// directAddr is the host:port of url.
func directAddr(t *testing.T, url string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
}

var _ = strings.Contains
var _ sync.Mutex
