package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// A Bind larger than max_client_buffer is streamed in transaction mode,
// with the client's statement renamed, and arrives intact.
func TestLargeBindStreamedRenamed(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.srv.cfg.MaxClientBuffer = 1 << 10
	pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "s", Query: "select $1::bytea"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c, b, msgs(learned(nil, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 1<<10) // 16 KiB
	out := pumpClient(t, c, b, enc(&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{blob}}, &pgproto3.Execute{}, &pgproto3.Sync{}), 100)
	if len(c.in.Buf) > 4<<10 {
		t.Fatalf("client buffer grew to %d bytes for a streamed Bind", len(c.in.Buf))
	}
	msgs := decodeFrontendMsgs(t, out)
	bd, ok := msgs[0].(*pgproto3.Bind)
	if !ok || bd.PreparedStatement != c.stmts.byName["s"].name || !bytes.Equal(bd.Parameters[0], blob) {
		t.Fatalf("streamed Bind arrived as %#v", msgs[0])
	}
	if len(msgs) != 3 || c.exchange.q.len() != 3 {
		t.Fatalf("sent %d messages, %d requests queued", len(msgs), c.exchange.q.len())
	}
}

// A Parse larger than max_client_buffer while the client holds a backend:
// the server gets a request it rejects in its place, the client 54000 in
// order, and the Parse's bytes are dropped unread.
func TestLargeParseRefusedInFlight(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.srv.cfg.MaxClientBuffer = 1 << 10
	big := strings.Repeat("x", 8<<10)
	out := pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "s", Query: "select '" + big + "'"}, &pgproto3.Bind{PreparedStatement: "s"},
		&pgproto3.Execute{}, &pgproto3.Sync{}), 300)
	if bytes.Contains(out, []byte(big[:100])) {
		t.Fatal("the refused Parse was forwarded")
	}
	msgs := decodeFrontendMsgs(t, out)
	if bd, ok := msgs[0].(*pgproto3.Bind); !ok || bd.PreparedStatement != poisonStatement {
		t.Fatalf("sent %#v, want the poison Bind first", msgs)
	}
	reply, release := pumpServer(t, c, b, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: "x"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	fe := pgproto3.NewFrontend(bytes.NewReader(reply), io.Discard)
	m, _ := fe.Receive()
	if er, ok := m.(*pgproto3.ErrorResponse); !ok || er.Code != pgwire.CodeProgramLimitExceeded || !strings.Contains(er.Hint, "max_client_buffer") {
		t.Fatalf("client got %#v, want 54000 naming max_client_buffer", m)
	}
	if !release || c.stmts.byName["s"] != nil {
		t.Fatalf("release %v, statement %v", release, c.stmts.byName["s"])
	}
}

// Sync, Describe, Execute ... longer than PostgreSQL's 10000 bytes are a
// protocol violation, as in PostgreSQL: they are never buffered.
func TestSmallMessageLengthBound(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	msg := []byte{pgwire.MsgDescribe, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], 1<<30-1)
	c.in.Prepare()
	c.in.End += copy(c.in.Free(), msg)
	_, _, err := c.build(b)
	var pe *pgError
	if !errors.As(err, &pe) || pe.Code != pgwire.CodeProtocolViolation {
		t.Fatalf("got %v, want a protocol violation", err)
	}
}

// A pipelining client is read only up to maxPendingRequests unanswered
// requests; build stops there and leaves the rest in the buffer.
func TestPipelineBounded(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	var in []byte
	for i := 0; i < maxPendingRequests+500; i++ {
		in = append(in, pgwire.MsgSync, 0, 0, 0, 4)
	}
	c.in = pgwire.ReadBuffer{Buf: make([]byte, len(in))}
	c.in.End = copy(c.in.Buf, in)
	out, _, err := c.build(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.exchange.q.len() != maxPendingRequests || len(out) != 5*maxPendingRequests || c.in.Pending() != 5*500 {
		t.Fatalf("queued %d, sent %d bytes, left %d", c.exchange.q.len(), len(out), c.in.Pending())
	}
	c.reader.drained = make(chan struct{})
	drained := c.reader.drained
	var z []byte
	for i := 0; i < maxPendingRequests/2; i++ {
		z = pgwire.AppendReadyForQuery(z, 'I')
	}
	b.in = pgwire.ReadBuffer{Buf: make([]byte, len(z))}
	b.in.End = copy(b.in.Buf, z)
	if _, _, err := c.routeLocked(b); err != nil {
		t.Fatal(err)
	}
	c.reader.wakeDrainedLocked(c.exchange.q.len())
	select {
	case <-drained:
	default:
		t.Fatal("half the replies came and the client reader was not woken")
	}
	for c.exchange.q.len() > 0 {
		c.exchange.q.pop()
	}
	if len(c.exchange.q.buf) > maxKeptRequests {
		t.Fatalf("an emptied queue keeps %d entries after a pipeline", len(c.exchange.q.buf))
	}
}

// While the server skips to the client's Sync after an error, a Bind larger
// than max_client_buffer is passed on in pieces (the server drops it): not
// buffered whole, and no reply expected for it.
func TestLargeBindWhileServerSkips(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.srv.cfg.MaxClientBuffer = 1 << 10
	c.exchange.inBatch, c.exchange.serverSkipping = true, true
	blob := bytes.Repeat([]byte("x"), 16<<10)
	out := pumpClient(t, c, b, enc(&pgproto3.Bind{Parameters: [][]byte{blob}}, &pgproto3.Sync{}), 100)
	if len(c.in.Buf) > 4<<10 {
		t.Fatalf("client buffer grew to %d bytes", len(c.in.Buf))
	}
	if msgs := decodeFrontendMsgs(t, out); len(msgs) != 2 || c.exchange.q.len() != 1 {
		t.Fatalf("sent %d messages, %d requests queued; want the Bind and the Sync, only the Sync awaited", len(msgs), c.exchange.q.len())
	}
}
