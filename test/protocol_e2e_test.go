package e2e

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestMalformedMessage: a client that sends a message with an impossible
// length, inside a transaction, gets a FATAL 08P01 with a hint and is
// closed; its backend (state unknown) is not handed to anyone, and the
// next client works.
func TestMalformedMessage(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"), WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	conn, err := pgconn.Connect(ctx, p.URL("app", "app", "app"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "BEGIN; SET LOCAL statement_timeout = '123s'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	hj, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	// 'Q' with a length of 2: below the 4 the length field itself takes.
	if _, err := hj.Conn.Write([]byte{'Q', 0, 0, 0, 2, 'x'}); err != nil {
		t.Fatal(err)
	}
	hj.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(hj.Conn, io.Discard)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("no error message before the close: %v", err)
	}
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || er.Code != "08P01" || er.Severity != "FATAL" || er.Hint == "" {
		t.Fatalf("got %#v, want FATAL 08P01 with a hint", msg)
	}
	if _, err := fe.Receive(); err == nil {
		t.Fatal("connection still open after the protocol violation")
	}

	// The next client gets a clean session on the (one) backend.
	next, err := pgconn.Connect(ctx, p.URL("app", "app", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close(ctx)
	res, err := next.Exec(ctx, "SHOW statement_timeout").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "0" {
		t.Fatalf("next client sees statement_timeout %q from the broken client's transaction", got)
	}
	if code, _ := p.Health(t); code != 200 {
		t.Fatalf("/health %d after a protocol violation", code)
	}
}
