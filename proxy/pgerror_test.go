package proxy

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

func TestPgErrorError(t *testing.T) {
	e := newFatal(pgwire.CodeInvalidPassword, `password authentication failed for user "a"`, "h")
	if got, want := e.Error(), `FATAL: password authentication failed for user "a" (SQLSTATE 28P01)`; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if e := newError(pgwire.CodeQueryCanceled, "canceled", ""); e.Severity != "ERROR" || e.Code != "57014" {
		t.Fatalf("newError: %+v", e)
	}
}

func TestPgErrorAppendTo(t *testing.T) {
	e := newFatal(pgwire.CodeTooManyConnections, "timed out after 30s waiting for a server connection", "raise pool.max_size")
	e.Detail = "pool app/app: 10 of 10 busy"
	prefix := []byte("prefix")
	b := e.appendTo(prefix)
	if string(b[:6]) != "prefix" {
		t.Fatalf("appendTo clobbered dst: %q", b[:6])
	}
	msg := b[6:]
	if msg[0] != 'E' {
		t.Fatalf("message type %q, want 'E'", msg[0])
	}
	var got pgproto3.ErrorResponse
	if err := got.Decode(msg[5:]); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if int(binary.BigEndian.Uint32(msg[1:5])) != len(msg)-1 {
		t.Fatalf("length field does not match the message")
	}
	if got.Severity != "FATAL" || got.SeverityUnlocalized != "FATAL" || got.Code != "53300" ||
		got.Message != e.Message || got.Detail != e.Detail || got.Hint != e.Hint {
		t.Fatalf("decoded %+v", got)
	}
}

func TestAppendNotice(t *testing.T) {
	b := appendNotice(nil, pgwire.CodeFeatureNotSupported, "LISTEN does not work in transaction pooling mode", "use session mode")
	if b[0] != 'N' {
		t.Fatalf("message type %q, want 'N'", b[0])
	}
	var got pgproto3.NoticeResponse
	if err := got.Decode(b[5:]); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if got.Severity != "NOTICE" || got.SeverityUnlocalized != "NOTICE" || got.Code != "0A000" ||
		got.Message != "LISTEN does not work in transaction pooling mode" || got.Hint != "use session mode" {
		t.Fatalf("decoded %+v", got)
	}
}
