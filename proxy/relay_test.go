package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// testRelay builds a client and a backend wired as after an acquire,
// without sockets: the tests drive build (client -> server) and route
// (server -> client) directly, as run() and backendReader() do.
func testRelay(mode Mode, maxPrepared int) (*clientConn, *backend) {
	s := &Server{
		cfg:   Config{Mode: mode, MaxMessageSize: 1 << 20, MaxClientBuffer: 4 << 20, MaxPreparedStatements: maxPrepared, SessionState: SessionStatePin},
		stmts: newStatementRegistry(),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	c := &clientConn{
		srv: s, policy: mode.policy(), log: s.log, exchange: exchange{txStatus: 'I'},
		params: clientParams{want: newParamSet(), startup: map[string]paramValue{}}, stmts: clientStatements{byName: map[string]*statement{}},
		in: pgwire.ReadBuffer{Buf: make([]byte, 16)},
	}
	return c, attachBackend(c, maxPrepared)
}

func attachBackend(c *clientConn, maxPrepared int) *backend {
	b := &backend{
		defaults: map[string]paramValue{"timezone": {val: "UTC"}},
		params:   &paramSet{vals: map[string]paramValue{"timezone": {val: "UTC"}}},
		prepared: newPreparedSet(maxPrepared),
		in:       pgwire.ReadBuffer{Buf: make([]byte, 16)},
	}
	c.be = b
	return b
}

// pumpClient feeds client bytes in the given chunk sizes (0 = all at once)
// through build, managing the buffer as run() does.
func pumpClient(t testing.TB, c *clientConn, b *backend, data []byte, chunk int) []byte {
	t.Helper()
	var out []byte
	for len(data) > 0 || c.in.Start < c.in.End {
		c.in.Prepare()
		n := len(data)
		if chunk > 0 {
			n = min(n, chunk)
		}
		n = copy(c.in.Buf[c.in.End:], data[:n])
		c.in.End += n
		data = data[n:]
		o, _, err := c.build(b)
		if err != nil {
			t.Fatalf("build: %v", err)
		}
		out = append(out, o...)
		b.cout = o[:0]
		c.exchange.writing = false
		if c.stmts.probe != nil || (n == 0 && len(data) == 0) {
			break // process() waits for a probe's answer
		}
	}
	return out
}

// pumpServer feeds backend bytes through route in chunks.
func pumpServer(t testing.TB, c *clientConn, b *backend, data []byte, chunk int) (out []byte, release bool) {
	t.Helper()
	for len(data) > 0 || b.in.Start < b.in.End {
		b.in.Prepare()
		n := len(data)
		if chunk > 0 {
			n = min(n, chunk)
		}
		n = copy(b.in.Buf[b.in.End:], data[:n])
		b.in.End += n
		data = data[n:]
		o, rel, err := c.routeLocked(b)
		if err != nil {
			t.Fatalf("route: %v", err)
		}
		out = append(out, o...)
		release = rel
		if n == 0 && len(data) == 0 {
			break
		}
	}
	return out, release
}

func enc(msgs ...pgproto3.Message) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		b, err = m.Encode(b)
		if err != nil {
			panic(err)
		}
	}
	return b
}

// decodeBackend decodes a stream the proxy sends to a server.
func decodeFrontendMsgs(t testing.TB, data []byte) []pgproto3.FrontendMessage {
	t.Helper()
	be := pgproto3.NewBackend(bytes.NewReader(data), io.Discard)
	var msgs []pgproto3.FrontendMessage
	for {
		m, err := be.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return msgs
			}
			t.Fatalf("decoding what the proxy sent: %v", err)
		}
		// Receive reuses message structs: keep a description.
		msgs = append(msgs, copyFrontend(m))
	}
}

func copyFrontend(m pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	switch v := m.(type) {
	case *pgproto3.Parse:
		c := *v
		return &c
	case *pgproto3.Bind:
		c := *v
		return &c
	case *pgproto3.Describe:
		c := *v
		return &c
	case *pgproto3.Close:
		c := *v
		return &c
	case *pgproto3.Query:
		c := *v
		return &c
	}
	return m
}

func decodeBackendMsgs(t testing.TB, data []byte) []byte {
	t.Helper()
	var types []byte
	for len(data) > 0 {
		if len(data) < 5 {
			t.Fatalf("truncated message in %q", data)
		}
		typ, n := pgwire.ParseHeader(data)
		types = append(types, typ)
		data = data[5+n:]
	}
	return types
}

// A response split at every possible byte boundary routes to the same
// bytes and the same release decision as the whole response.
func TestRouteSplitsAtEveryBoundary(t *testing.T) {
	resp := enc(
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(strings.Repeat("7", 40))}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("8")}},
		&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hi"},
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Europe/Paris"},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
	for chunk := 1; chunk <= len(resp); chunk++ {
		c, b := testRelay(ModeTransaction, 10)
		c.exchange.q.push(request{kind: reqQuery})
		out, release := pumpServer(t, c, b, resp, chunk)
		if !bytes.Equal(out, resp) {
			t.Fatalf("chunk %d: output differs:\n got %q\nwant %q", chunk, out, resp)
		}
		if !release || c.exchange.q.len() != 0 || c.exchange.txStatus != 'I' {
			t.Fatalf("chunk %d: release=%v queue=%d status=%c", chunk, release, c.exchange.q.len(), c.exchange.txStatus)
		}
		if c.params.want.vals["timezone"].val != "Europe/Paris" || b.params.vals["timezone"].val != "Europe/Paris" {
			t.Fatalf("chunk %d: ParameterStatus not tracked: client %v backend %v", chunk, c.params.want, b.params)
		}
	}
}

// A transaction ('T') or a failed one ('E') keeps the backend.
func TestRouteKeepsBackendInTransaction(t *testing.T) {
	for _, st := range []byte{'T', 'E'} {
		c, b := testRelay(ModeTransaction, 10)
		c.exchange.q.push(request{kind: reqQuery})
		_, release := pumpServer(t, c, b, enc(&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.ReadyForQuery{TxStatus: st}), 0)
		if release {
			t.Fatalf("status %c: backend released inside a transaction", st)
		}
	}
}

// Pipelined requests release only after the last 'Z'.
func TestRoutePipelineReleasesAfterLastReady(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.exchange.q.push(request{kind: reqQuery})
	c.exchange.q.push(request{kind: reqQuery})
	one := enc(&pgproto3.EmptyQueryResponse{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if _, release := pumpServer(t, c, b, one, 0); release {
		t.Fatal("released with a second query outstanding")
	}
	if _, release := pumpServer(t, c, b, one, 0); !release {
		t.Fatal("not released after the last ReadyForQuery")
	}
}

func TestRouteRejectsBadLength(t *testing.T) {
	for _, l := range []uint32{0, 3, 1 << 30} {
		c, b := testRelay(ModeTransaction, 10)
		c.exchange.q.push(request{kind: reqQuery})
		msg := []byte{'D', byte(l >> 24), byte(l >> 16), byte(l >> 8), byte(l), 0, 0}
		copy(b.in.Buf, msg)
		b.in.End = len(msg)
		if _, _, err := c.routeLocked(b); !errors.Is(err, errLostTrack) {
			t.Fatalf("length %d: got %v, want errLostTrack", l, err)
		}
	}
}

func TestBuildRejectsBadLength(t *testing.T) {
	for _, l := range []uint32{0, 3, 1<<20 + 100} {
		c, b := testRelay(ModeTransaction, 10)
		msg := []byte{'Q', byte(l >> 24), byte(l >> 16), byte(l >> 8), byte(l), 0}
		copy(c.in.Buf, msg)
		c.in.End = len(msg)
		_, _, err := c.build(b)
		var pe *pgError
		if !errors.As(err, &pe) || pe.Code != pgwire.CodeProtocolViolation || !c.stream.poisoned {
			t.Fatalf("length %d: got %v (poisoned %v), want a 08P01 protocol violation", l, err, c.stream.poisoned)
		}
	}
}

// Client messages split at every boundary reach the server unchanged
// (session mode) and with the same bookkeeping.
func TestBuildSplitsAtEveryBoundary(t *testing.T) {
	req := enc(
		&pgproto3.Parse{Name: "", Query: "select $1::int"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(strings.Repeat("1", 30))}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "select 1"},
	)
	for _, mode := range []Mode{ModeSession, ModeTransaction} {
		for chunk := 1; chunk <= len(req); chunk++ {
			c, b := testRelay(mode, 10)
			out := pumpClient(t, c, b, req, chunk)
			if !bytes.Equal(out, req) {
				t.Fatalf("%s chunk %d: forwarded bytes differ", mode, chunk)
			}
			if c.exchange.q.len() != 6 || c.exchange.q.syncs != 2 || c.exchange.inBatch {
				t.Fatalf("%s chunk %d: queue=%d syncs=%d inBatch=%v", mode, chunk, c.exchange.q.len(), c.exchange.q.syncs, c.exchange.inBatch)
			}
		}
	}
}

// learned is the server's answer to a client's named Parse and the proxy's
// Describe after it: ParseComplete, then the description.
func learned(params []uint32, desc pgproto3.Message) []pgproto3.Message {
	return []pgproto3.Message{&pgproto3.ParseComplete{}, &pgproto3.ParameterDescription{ParameterOIDs: params}, desc}
}

func msgs(parts ...any) []byte {
	var all []pgproto3.Message
	for _, p := range parts {
		switch v := p.(type) {
		case pgproto3.Message:
			all = append(all, v)
		case []pgproto3.Message:
			all = append(all, v...)
		}
	}
	return enc(all...)
}

// Every named Parse reaches the server as a Parse under a name of its own,
// followed by the proxy's Describe (swallowed); two clients with the same
// text on one backend get two server statements. A backend that lacks a
// client's statement gets a Parse injected before the Bind, with the
// parameter types the server chose for the client's Parse, whose
// ParseComplete the client never sees. A client's Close closes its copy.
func TestPreparedStatementsArePerParse(t *testing.T) {
	c1, b1 := testRelay(ModeTransaction, 10)
	out := pumpClient(t, c1, b1, enc(&pgproto3.Parse{Name: "s1", Query: "select $1"}, &pgproto3.Sync{}), 0)
	sent := decodeFrontendMsgs(t, out)
	p, ok := sent[0].(*pgproto3.Parse)
	if !ok || !strings.HasPrefix(p.Name, "pgsc_") || p.Query != "select $1" || len(sent) != 3 {
		t.Fatalf("Parse not renamed as expected: %#v", sent)
	}
	if d, ok := sent[1].(*pgproto3.Describe); !ok || d.ObjectType != 'S' || d.Name != p.Name {
		t.Fatalf("no Describe after the first Parse: %#v", sent[1])
	}
	proxyName := p.Name
	reply, release := pumpServer(t, c1, b1, msgs(learned([]uint32{25}, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "1Z" || !release {
		t.Fatalf("reply %q release %v", decodeBackendMsgs(t, reply), release)
	}

	// Another client, same text, same backend: a Parse of its own.
	c2 := &clientConn{srv: c1.srv, policy: ModeTransaction.policy(), log: c1.log, exchange: exchange{txStatus: 'I'}, params: clientParams{want: newParamSet(), startup: map[string]paramValue{}},
		stmts: clientStatements{byName: map[string]*statement{}}, in: pgwire.ReadBuffer{Buf: make([]byte, 16)}, be: b1}
	out = pumpClient(t, c2, b1, enc(&pgproto3.Parse{Name: "s1", Query: "select $1"}, &pgproto3.Sync{}), 0)
	sent = decodeFrontendMsgs(t, out)
	if p, ok := sent[0].(*pgproto3.Parse); !ok || p.Name == proxyName || p.Query != "select $1" {
		t.Fatalf("client 2's Parse was not sent as its own: %#v", sent)
	}
	reply, _ = pumpServer(t, c2, b1, msgs(learned([]uint32{25}, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "1Z" {
		t.Fatalf("client 2 reply %q, want ParseComplete then ReadyForQuery", decodeBackendMsgs(t, reply))
	}

	// Client 1 moves to a fresh backend: Parse injected with the learned
	// parameter type, Bind renamed.
	b2 := attachBackend(c1, 10)
	out = pumpClient(t, c1, b2, enc(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("5")}}, &pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	sent = decodeFrontendMsgs(t, out)
	if p, ok := sent[0].(*pgproto3.Parse); !ok || p.Name != proxyName || len(p.ParameterOIDs) != 1 || p.ParameterOIDs[0] != 25 {
		t.Fatalf("no Parse with the learned types injected before Bind: %#v", sent[0])
	}
	if bd, ok := sent[1].(*pgproto3.Bind); !ok || bd.PreparedStatement != proxyName || string(bd.Parameters[0]) != "5" {
		t.Fatalf("Bind not renamed: %#v", sent[1])
	}
	reply, release = pumpServer(t, c1, b2, enc(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.NoData{},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 3)
	if string(decodeBackendMsgs(t, reply)) != "2nCZ" || !release {
		t.Fatalf("injected ParseComplete not swallowed: %q release %v", decodeBackendMsgs(t, reply), release)
	}

	// Close closes the client's copy on the backend.
	out = pumpClient(t, c1, b2, enc(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{}), 0)
	if cl, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Close); !ok || cl.Name != proxyName {
		t.Fatalf("Close of the client's statement not sent: %q", out)
	}
	reply, _ = pumpServer(t, c1, b2, enc(&pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "3Z" || c1.stmts.byName["s1"] != nil || b2.prepared.has(proxyName) {
		t.Fatalf("Close: reply %q, client map %v", decodeBackendMsgs(t, reply), c1.stmts.byName)
	}
}

// The unnamed statement is the client's: a Bind of it on a backend whose
// unnamed statement may be another's (another client parsed one, or the
// backend was acquired anew) parses the client's again first; a client
// without one gets 26000.
func TestUnnamedStatementIsPrivate(t *testing.T) {
	c1, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c1, b, enc(&pgproto3.Parse{Query: "select 'c1'"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{}), 0)
	pumpServer(t, c1, b, enc(&pgproto3.ParseComplete{}, &pgproto3.ParameterDescription{}, &pgproto3.NoData{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	c2 := &clientConn{srv: c1.srv, policy: ModeTransaction.policy(), log: c1.log, exchange: exchange{txStatus: 'I'}, params: clientParams{want: newParamSet(), startup: map[string]paramValue{}},
		stmts: clientStatements{byName: map[string]*statement{}}, in: pgwire.ReadBuffer{Buf: make([]byte, 16)}, be: b}
	pumpClient(t, c2, b, enc(&pgproto3.Parse{Query: "select 'c2'"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c2, b, enc(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)

	c1.be = b
	out := pumpClient(t, c1, b, enc(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	sent := decodeFrontendMsgs(t, out)
	if p, ok := sent[0].(*pgproto3.Parse); !ok || p.Name != "" || p.Query != "select 'c1'" {
		t.Fatalf("client 1's unnamed statement not parsed again before its Bind: %#v", sent)
	}
	reply, _ := pumpServer(t, c1, b, enc(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "2CZ" {
		t.Fatalf("reply %q", decodeBackendMsgs(t, reply))
	}
	// Still on the same hold: no second Parse.
	out = pumpClient(t, c1, b, enc(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	if _, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Bind); !ok {
		t.Fatalf("parsed again though the backend has it: %q", out)
	}
	pumpServer(t, c1, b, enc(&pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)

	// A Query drops it: the Bind gets 26000, not the backend's statement.
	pumpClient(t, c1, b, enc(&pgproto3.Query{String: "select 1"}), 0)
	pumpServer(t, c1, b, enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	out = pumpClient(t, c1, b, enc(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	if bd, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Bind); !ok || bd.PreparedStatement != poisonStatement {
		t.Fatalf("no poison Bind sent: %q", out)
	}
	reply, _ = pumpServer(t, c1, b, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: "x"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	fe := pgproto3.NewFrontend(bytes.NewReader(reply), io.Discard)
	if m, _ := fe.Receive(); m.(*pgproto3.ErrorResponse).Code != "26000" || !strings.Contains(m.(*pgproto3.ErrorResponse).Message, "unnamed") {
		t.Fatalf("client got %#v, want 26000", m)
	}
}

// An error inside a pipeline makes the server skip to Sync; the proxy's
// bookkeeping skips with it and forgets the statement that failed to parse.
func TestPipelineErrorSkipsToSync(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c, b, enc(
		&pgproto3.Parse{Name: "bad", Query: "selec 1"},
		&pgproto3.Bind{PreparedStatement: "bad"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "select 1"},
	), 0)
	reply, release := pumpServer(t, c, b, enc(
		&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42601", Message: "syntax error"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.RowDescription{}, &pgproto3.DataRow{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	), 0)
	if string(decodeBackendMsgs(t, reply)) != "EZTDCZ" || !release || c.exchange.q.len() != 0 {
		t.Fatalf("reply %q release %v queue %d", decodeBackendMsgs(t, reply), release, c.exchange.q.len())
	}
	if c.stmts.byName["bad"] != nil || b.prepared.len() != 0 {
		t.Fatalf("failed Parse still tracked: client %v backend %d", c.stmts.byName, b.prepared.len())
	}
}

// A statement prepared in a pipeline segment that then fails is skipped by
// the server; a later segment built before that was known must not count on
// it: it is closed and prepared again there.
func TestPipelineLaterSegmentReprepares(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.stmts.byName["s"] = c.srv.stmts.newStatement(enc(&pgproto3.Parse{Query: "select $1::int"})[6:])
	out := pumpClient(t, c, b, enc(
		&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
	), 0)
	var kinds []string
	for _, m := range decodeFrontendMsgs(t, out) {
		kinds = append(kinds, fmt.Sprintf("%T", m)[len("*pgproto3."):])
	}
	want := "Parse Bind Execute Parse Describe Bind Execute Sync Close Parse Describe Bind Execute Sync"
	if strings.Join(kinds, " ") != want {
		t.Fatalf("sent %v\nwant %s", kinds, want)
	}
	reply, release := pumpServer(t, c, b, enc(
		&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ParameterDescription{}, &pgproto3.NoData{}, &pgproto3.BindComplete{},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
	), 0)
	if got := string(decodeBackendMsgs(t, reply)); got != "12EZ2CZ" || !release {
		t.Fatalf("reply %q release %v", got, release)
	}
	if e := b.prepared.lookup(c.stmts.byName["s"].name); e == nil || e.pending != -1 {
		t.Fatalf("statement not confirmed on the backend: %+v", e)
	}
}

// The per-backend set is an LRU: the oldest statement beyond the bound is
// closed on the backend (its CloseComplete swallowed) at the next boundary.
func TestPreparedLRUEviction(t *testing.T) {
	c, b := testRelay(ModeTransaction, 2)
	for i, q := range []string{"select 1", "select 2", "select 3"} {
		pumpClient(t, c, b, enc(&pgproto3.Parse{Name: string(rune('a' + i)), Query: q}, &pgproto3.Sync{}), 0)
		pumpServer(t, c, b, msgs(learned(nil, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	}
	if b.prepared.len() != 2 || len(b.prepared.toClose) != 1 {
		t.Fatalf("prepared %d, to close %d", b.prepared.len(), len(b.prepared.toClose))
	}
	// An evicted statement needed again before its Close went out is
	// taken back, not prepared a second time.
	evicted := b.prepared.toClose[0].name
	if b.prepared.lookup(evicted) == nil || len(b.prepared.toClose) != 1 || b.prepared.toClose[0].name == evicted {
		t.Fatalf("evicted %s not taken back", evicted)
	}
	out := pumpClient(t, c, b, enc(&pgproto3.Query{String: "select 4"}), 0)
	msgs := decodeFrontendMsgs(t, out)
	if cl, ok := msgs[0].(*pgproto3.Close); !ok || cl.ObjectType != 'S' {
		t.Fatalf("no Close for the evicted statement: %#v", msgs)
	}
	reply, release := pumpServer(t, c, b, enc(&pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.EmptyQueryResponse{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "IZ" || !release {
		t.Fatalf("eviction replies leaked to the client: %q", decodeBackendMsgs(t, reply))
	}
}

// DEALLOCATE of a client's name deallocates the proxy statement and keeps
// the reply PostgreSQL would give; DISCARD ALL clears everything on success.
func TestDeallocateAndDiscard(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "MyStmt", Query: "select 1"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c, b, msgs(learned(nil, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	name := c.stmts.byName["MyStmt"].name
	out := pumpClient(t, c, b, enc(&pgproto3.Query{String: `DEALLOCATE "MyStmt"`}), 0)
	if q, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Query); !ok || q.String != "DEALLOCATE "+name {
		t.Fatalf("DEALLOCATE not rewritten: %q", out)
	}
	if c.stmts.byName["MyStmt"] != nil || b.prepared.has(name) {
		t.Fatal("DEALLOCATE left the statement tracked")
	}
	pumpServer(t, c, b, enc(&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)

	pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "x", Query: "select 2"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c, b, msgs(learned(nil, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	c.params.want.set("search_path", paramValue{val: "foo", raw: true})
	b.params.set("search_path", paramValue{val: "foo", raw: true})
	pumpClient(t, c, b, enc(&pgproto3.Query{String: "discard all;"}), 0)
	pumpServer(t, c, b, enc(&pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if len(c.stmts.byName) != 0 || b.prepared.len() != 0 || c.params.want.vals["search_path"].val != "" || b.params.vals["search_path"].val != "" {
		t.Fatalf("DISCARD ALL not applied: stmts %v prepared %d want %v params %v", c.stmts.byName, b.prepared.len(), c.params.want, b.params)
	}
}

// SET of a parameter the server does not report is tracked when it
// succeeds, and replayed on another backend.
func TestSetTrackingAndReplay(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c, b, enc(&pgproto3.Query{String: "SET search_path TO app, public"}), 0)
	pumpServer(t, c, b, enc(&pgproto3.CommandComplete{CommandTag: []byte("SET")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if got := c.params.want.vals["search_path"]; got.val != "app, public" || !got.raw {
		t.Fatalf("SET not tracked: %v", c.params.want)
	}
	pumpClient(t, c, b, enc(&pgproto3.Query{String: "SET statement_timeout = 'x'"}), 0)
	pumpServer(t, c, b, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22023", Message: "bad"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if _, ok := c.params.want.vals["statement_timeout"]; ok {
		t.Fatal("a failed SET was tracked")
	}
	fresh := &backend{defaults: map[string]paramValue{"timezone": {val: "UTC"}}, params: &paramSet{vals: map[string]paramValue{"timezone": {val: "UTC"}}}}
	sql := paramSyncSQL(c.params.want, fresh.params.vals, fresh.defaults)
	if sql != "SET search_path TO app, public;" {
		t.Fatalf("replay SQL %q", sql)
	}
	if paramSyncSQL(c.params.want, fresh.params.vals, fresh.defaults) != "" {
		t.Fatal("second sync not empty")
	}
}

func TestParamSyncSQL(t *testing.T) {
	defaults := map[string]paramValue{"timezone": {val: "UTC"}, "datestyle": {val: "ISO, MDY"}, "application_name": {val: ""}}
	have := map[string]paramValue{"timezone": {val: "UTC"}, "datestyle": {val: "ISO, MDY"}, "application_name": {val: "other"},
		"search_path": {val: "x", raw: true}}
	want := &paramSet{vals: map[string]paramValue{"timezone": {val: "Europe/Paris"}, "datestyle": {val: "ISO, MDY"}}}
	got := paramSyncSQL(want, have, defaults)
	wantSQL := "SELECT set_config('timezone', 'Europe/Paris', false);RESET application_name;RESET search_path;"
	if got != wantSQL {
		t.Fatalf("got  %q\nwant %q", got, wantSQL)
	}
	if have["timezone"].val != "Europe/Paris" || have["application_name"].val != "" {
		t.Fatalf("have not updated: %v", have)
	}
	if _, ok := have["search_path"]; ok {
		t.Fatal("reset unreported parameter still recorded")
	}
	if quoteLiteral(`it's \ ok`) != `E'it''s \\ ok'` {
		t.Fatalf("quoteLiteral: %s", quoteLiteral(`it's \ ok`))
	}
}

func TestParseSetStatement(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		want paramChange
	}{
		{"SET search_path TO a, b", true, paramChange{name: "search_path", value: paramValue{val: "a, b", raw: true}}},
		{"set session Statement_Timeout = '5s';", true, paramChange{name: "statement_timeout", value: paramValue{val: "'5s'", raw: true}}},
		{"SET work_mem TO DEFAULT", true, paramChange{name: "work_mem", reset: true}},
		{"RESET search_path", true, paramChange{name: "search_path", reset: true}},
		{"reset all", true, paramChange{all: true, reset: true}},
		{"SET LOCAL search_path TO a", false, paramChange{}},
		{"SET search_path TO a; SELECT 1", false, paramChange{}},
		{"SET SESSION AUTHORIZATION bob", false, paramChange{}},
		{"SET TIME ZONE 'UTC'", false, paramChange{}},
		{"SELECT 1", false, paramChange{}},
	}
	for _, tc := range cases {
		got, ok := parseSetStatement([]byte(tc.in))
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("%q: got %+v %v, want %+v %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestRejectedHazard(t *testing.T) {
	cases := map[string]hazard{
		"LISTEN chan":                                          hazardListen,
		"  listen x":                                           hazardListen,
		"/* hi */ Listen x":                                    hazardListen,
		"select 1; listen x":                                   hazardListen,
		"-- c\nLISTEN x":                                       hazardListen,
		"select 'listen x'":                                    hazardNone,
		"select pg_advisory_lock(1)":                           hazardAdvisoryLock,
		"SELECT PG_TRY_ADVISORY_LOCK(1)":                       hazardAdvisoryLock,
		"select pg_advisory_lock_shared(1)":                    hazardAdvisoryLock,
		"select pg_advisory_xact_lock(1)":                      hazardNone,
		"DECLARE c CURSOR WITH HOLD FOR select 1":              hazardHoldCursor,
		"declare c no scroll cursor with hold for select 1":    hazardHoldCursor,
		"DECLARE c CURSOR WITHOUT HOLD FOR select 1":           hazardNone,
		"create temp table t (x int)":                          hazardTempTable,
		"CREATE TEMPORARY TABLE t (x int)":                     hazardTempTable,
		"create local temp view v as select 1":                 hazardTempTable,
		"create table pg_temp.t (x int)":                       hazardTempTable,
		"select 1 into temp t":                                 hazardTempTable,
		"create temp table t (x int) on commit drop":           hazardNone,
		"create temp table t (x int) on commit drop; select 1": hazardNone,
		"create temp table t (x int) on commit delete rows":    hazardTempTable,
		"PREPARE p AS select 1":                                hazardSQLPrepare,
		"select 1;\n\tprepare p as select 2":                   hazardSQLPrepare,
		"select * from template":                               hazardNone,
		"select 'with hold' as s":                              hazardNone,
		"select $$listen$$, $a$ prepare $a$":                   hazardNone,
		"select E'\\' listen'":                                 hazardNone,
		"update pgbench_accounts set abalance = abalance+1":    hazardNone,
		"select temp from weather":                             hazardNone,
	}
	for q, want := range cases {
		if got := rejectedHazard([]byte(q), false); got != want {
			t.Errorf("%q: got %d want %d", q, got, want)
		}
	}
}

func TestChangesSettings(t *testing.T) {
	cases := map[string]bool{
		"SET work_mem = '8MB'":                      true,
		"select 1; set work_mem = '8MB'":            true,
		"/* x */ reset all":                         true,
		"select set_config('a.b', 'c', false)":      true,
		"SELECT SET_CONFIG('a.b', 'c', false)":      true,
		"update t set x = 1":                        false,
		"select 'x; set work_mem = 1'":              false,
		"discard all":                               true,
		"select 1 offset 2":                         false,
		"with a as (select 1) update t set x = 1":   false,
		"begin; set local statement_timeout = 1; x": true,
	}
	for q, want := range cases {
		if got := changesSettings([]byte(q)); got != want {
			t.Errorf("%q: got %v want %v", q, got, want)
		}
	}
	for q, want := range map[string]bool{
		"select 1":                   false,
		"update t set x = 1":         false,
		"LISTEN x":                   true,
		"select pg_advisory_lock(1)": true,
		"DO $$BEGIN EXECUTE 'CREATE TEMP TABLE x ()'; END$$": true,
		"set role bob": true,
	} {
		if got := touchesSessionState([]byte(q)); got != want {
			t.Errorf("touchesSessionState(%q): got %v want %v", q, got, want)
		}
	}
}

// The relay's steady state allocates nothing per message: a client's
// extended-protocol request and a many-row reply.
func TestRelayAllocatesNothing(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.in.Buf = make([]byte, 8<<10)
	b.in.Buf = make([]byte, 32<<10)
	req := enc(&pgproto3.Parse{Query: "select $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	var rows []pgproto3.Message
	rows = append(rows, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{})
	for i := 0; i < 200; i++ {
		rows = append(rows, &pgproto3.DataRow{Values: [][]byte{[]byte("12345678")}})
	}
	rows = append(rows, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 200")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	resp := enc(rows...)
	round := func() {
		c.in.Start, c.in.End = 0, copy(c.in.Buf, req)
		out, _, err := c.build(b)
		if err != nil || len(out) != len(req) {
			t.Fatalf("build: %v %d", err, len(out))
		}
		b.cout = out[:0]
		c.exchange.writing = false
		b.in.Start, b.in.End = 0, copy(b.in.Buf, resp)
		out, release, err := c.routeLocked(b)
		if err != nil || !release || len(out) != len(resp) {
			t.Fatalf("route: %v release %v %d", err, release, len(out))
		}
	}
	round() // warm the queue and buffers
	if n := testing.AllocsPerRun(200, round); n != 0 {
		t.Fatalf("relay allocates %.1f times per request/response, want 0", n)
	}
}

// The inline relay (the client goroutine writes the request, reads the
// backend's reply itself and writes it to the client, relayInline) also
// allocates nothing per request: process runs whole, against scripted
// sockets. The reply leaves a transaction open, so the backend stays held
// (a release would need a pool), and the client's Terminate follows its
// request, so no backend reader is started for the idle transaction.
func TestInlineRelayAllocatesNothing(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	c.in.Buf = make([]byte, 8<<10)
	b.in.Buf = make([]byte, 32<<10)
	req := enc(&pgproto3.Parse{Query: "select $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Terminate{})
	var rows []pgproto3.Message
	rows = append(rows, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{})
	for i := 0; i < 200; i++ {
		rows = append(rows, &pgproto3.DataRow{Values: [][]byte{[]byte("12345678")}})
	}
	rows = append(rows, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 200")}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	resp := enc(rows...)
	client, server := &scriptConn{}, &scriptConn{}
	c.conn, b.nc = client, server
	round := func() {
		c.in.Start, c.in.End = 0, copy(c.in.Buf, req)
		server.reply, server.pos = resp, 0
		client.written, server.written = 0, 0
		if err := c.process(); err != errClientTerminated {
			t.Fatal(err)
		}
		if server.written != len(req)-pgwire.HeaderLen || client.written != len(resp) || server.pos != len(resp) || c.exchange.q.len() != 0 || c.be != b || c.reader.async {
			t.Fatalf("sent %d of %d, relayed %d of %d, read %d, queue %d, async %v", server.written, len(req),
				client.written, len(resp), server.pos, c.exchange.q.len(), c.reader.async)
		}
		if client.writes != 1 {
			t.Fatalf("the reply took %d writes to the client, want 1", client.writes)
		}
		client.writes = 0
	}
	round() // warm the queue and buffers
	if n := testing.AllocsPerRun(200, round); n != 0 {
		t.Fatalf("inline relay allocates %.1f times per request/response, want 0", n)
	}
}

// scriptConn is a socket for relay tests: reads return reply (one read
// at most 8 KB, as a socket would split it), writes are counted.
type scriptConn struct {
	net.Conn
	reply           []byte
	pos             int
	written, writes int
}

func (s *scriptConn) Read(p []byte) (int, error) {
	if s.pos == len(s.reply) {
		return 0, io.EOF // the relay read past the script
	}
	n := copy(p[:min(len(p), 8<<10)], s.reply[s.pos:])
	s.pos += n
	return n, nil
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.written += len(p)
	s.writes++
	return len(p), nil
}

func (s *scriptConn) SetReadDeadline(time.Time) error { return nil }

// FuzzScanner feeds arbitrary bytes, in arbitrary chunks, to both halves
// of the relay: it may reject them but must never panic or lose its place.
func FuzzScanner(f *testing.F) {
	f.Add(enc(&pgproto3.Query{String: "select 1"}), uint8(3), enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	f.Add(enc(&pgproto3.Parse{Name: "a", Query: "x"}, &pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Sync{}), uint8(1),
		enc(&pgproto3.ParseComplete{}, &pgproto3.ErrorResponse{Code: "0A000"}, &pgproto3.ReadyForQuery{TxStatus: 'E'}))
	f.Fuzz(func(t *testing.T, client []byte, chunk uint8, server []byte) {
		for _, mode := range []Mode{ModeTransaction, ModeSession} {
			c, b := testRelay(mode, 2)
			feed(c, b, client, int(chunk)+1, server)
		}
	})
}

// feed drives both halves like pumpClient/pumpServer but tolerates errors.
func feed(c *clientConn, b *backend, client []byte, chunk int, server []byte) {
	for len(client) > 0 {
		c.in.Prepare()
		n := copy(c.in.Buf[c.in.End:], client[:min(chunk, len(client))])
		c.in.End += n
		client = client[n:]
		out, _, err := c.build(b)
		b.cout = out[:0]
		c.exchange.writing = false
		if err != nil {
			return
		}
		if c.stream.passRemaining == 0 && c.in.Start < c.in.End && c.in.Buf[c.in.Start] == pgwire.MsgTerminate {
			return // process() ends the client here
		}
	}
	for len(server) > 0 {
		b.in.Prepare()
		n := copy(b.in.Buf[b.in.End:], server[:min(chunk, len(server))])
		b.in.End += n
		server = server[n:]
		if _, _, err := c.routeLocked(b); err != nil {
			return
		}
	}
}

// An error that comes back before the client's Sync was even sent: what the
// client sends until its Sync is discarded by the server, so it gets no
// bookkeeping, and the Sync's 'Z' lines up.
func TestErrorBeforeClientSync(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c, b, enc(&pgproto3.Parse{Query: "selec"}, &pgproto3.Bind{}), 0)
	reply, _ := pumpServer(t, c, b, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax"}), 0)
	if string(decodeBackendMsgs(t, reply)) != "E" || !c.exchange.serverSkipping {
		t.Fatalf("reply %q skipping %v", decodeBackendMsgs(t, reply), c.exchange.serverSkipping)
	}
	out := pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "n", Query: "select 1"}, &pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	if len(decodeFrontendMsgs(t, out)) != 3 || c.stmts.byName["n"] != nil || c.exchange.q.len() != 1 {
		t.Fatalf("messages the server skips were tracked: stmts %v queue %d", c.stmts.byName, c.exchange.q.len())
	}
	reply, release := pumpServer(t, c, b, enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "Z" || !release || c.exchange.serverSkipping {
		t.Fatalf("reply %q release %v", decodeBackendMsgs(t, reply), release)
	}
}

// Preparing a name the client already uses fails with 42P05 as directly:
// the server is made to fail the segment, and the client gets PostgreSQL's error.
func TestParseOfTakenNameFails(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "s", Query: "select 1"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c, b, msgs(learned(nil, &pgproto3.NoData{}), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	first := c.stmts.byName["s"]
	out := pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "s", Query: "select 2"}, &pgproto3.Sync{}), 0)
	if bd, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Bind); !ok || bd.PreparedStatement != poisonStatement {
		t.Fatalf("no poison Bind sent: %q", out)
	}
	reply, _ := pumpServer(t, c, b, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: "no such statement"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	fe := pgproto3.NewFrontend(bytes.NewReader(reply), io.Discard)
	m, err := fe.Receive()
	er, ok := m.(*pgproto3.ErrorResponse)
	if err != nil || !ok || er.Code != pgwire.CodeDuplicatePreparedStatement || !strings.Contains(er.Message, `"s" already exists`) {
		t.Fatalf("client got %#v (%v), want 42P05", m, err)
	}
	if c.stmts.byName["s"] != first {
		t.Fatal("the failed Parse replaced the client's statement")
	}
}

// A statement the client described, prepared afresh on another backend
// after a schema change, describes another result: the proxy holds the
// client's Bind, sees the difference, and fails it with 0A000 instead of
// handing the client rows of another type.
func TestProbeCatchesChangedResultType(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	rowDesc := func(oid uint32) *pgproto3.RowDescription {
		return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("c"), DataTypeOID: oid, DataTypeSize: -1, TypeModifier: -1}}}
	}
	pumpClient(t, c, b, enc(&pgproto3.Parse{Name: "s", Query: "select c from t"}, &pgproto3.Describe{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c, b, msgs(learned(nil, rowDesc(20)), &pgproto3.ParameterDescription{}, rowDesc(20), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if c.stmts.byName["s"].fingerprint == "" {
		t.Fatal("the description the client got was not recorded")
	}

	b2 := attachBackend(c, 10)
	out := pumpClient(t, c, b2, enc(&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}), 0)
	var kinds []string
	for _, m := range decodeFrontendMsgs(t, out) {
		kinds = append(kinds, fmt.Sprintf("%T", m)[len("*pgproto3."):])
	}
	if strings.Join(kinds, " ") != "Parse Describe Flush" || c.stmts.probe == nil {
		t.Fatalf("sent %v, want the probe only (the Bind held)", kinds)
	}
	reply, _ := pumpServer(t, c, b2, enc(&pgproto3.ParseComplete{}, &pgproto3.ParameterDescription{}, rowDesc(701)), 0)
	if len(reply) != 0 || c.stmts.probe != nil || !c.stmts.byName["s"].stale {
		t.Fatalf("probe: reply %q, stale %v", reply, c.stmts.byName["s"].stale)
	}
	c.exchange.writing = false
	out = pumpClient(t, c, b2, nil, 0) // the held messages go out now
	msgs := decodeFrontendMsgs(t, out)
	if bd, ok := msgs[0].(*pgproto3.Bind); !ok || bd.PreparedStatement != poisonStatement {
		t.Fatalf("stale statement executed: %#v", msgs)
	}
	reply, release := pumpServer(t, c, b2, enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: "x"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	fe := pgproto3.NewFrontend(bytes.NewReader(reply), io.Discard)
	if m, _ := fe.Receive(); m.(*pgproto3.ErrorResponse).Code != "0A000" || !release {
		t.Fatalf("client got %#v, want 0A000", m)
	}
}

func TestNeedsClassify(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1": false, "select set_config('a','b',false)": false, "  SET x TO 1": true, "reset all": true,
		"DEALLOCATE s1": true, "discard all": true, "settings": false, "deallocated": false,
	} {
		if got := needsClassify([]byte(q)); got != want {
			t.Errorf("%q: got %v want %v", q, got, want)
		}
	}
}

// A second client's statement of the same shape (text, parameter types,
// result description) as a copy the backend holds uses that copy once its
// own Parse was answered: its own copy is closed at the next boundary and
// its Binds name the shared one. A 0A000 from the shared copy retires it:
// the next Bind prepares the client's own copy again (and probes it).
// Another result description is never shared.
func TestSharedCopyRetiredOn0A000(t *testing.T) {
	c1, b := testRelay(ModeTransaction, 10)
	rows := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("c"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	pumpClient(t, c1, b, enc(&pgproto3.Parse{Name: "s", Query: "select c from t where id = $1"}, &pgproto3.Sync{}), 0)
	pumpServer(t, c1, b, msgs(learned([]uint32{23}, rows), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	shared := c1.stmts.byName["s"].name

	newClient := func() *clientConn {
		return &clientConn{srv: c1.srv, policy: ModeTransaction.policy(), log: c1.log, exchange: exchange{txStatus: 'I'}, params: clientParams{want: newParamSet(), startup: map[string]paramValue{}},
			stmts: clientStatements{byName: map[string]*statement{}}, in: pgwire.ReadBuffer{Buf: make([]byte, 16)}, be: b}
	}
	// Another result type (a DDL between the two Parses): not shared.
	c3 := newClient()
	pumpClient(t, c3, b, enc(&pgproto3.Parse{Name: "s", Query: "select c from t where id = $1"}, &pgproto3.Sync{}), 0)
	int8Rows := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("c"), DataTypeOID: 20, DataTypeSize: 8, TypeModifier: -1}}}
	pumpServer(t, c3, b, msgs(learned([]uint32{23}, int8Rows), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if b.prepared.len() != 2 || len(b.prepared.toClose) != 0 {
		t.Fatalf("a copy of another description was taken: prepared %d, to close %d", b.prepared.len(), len(b.prepared.toClose))
	}

	c2 := newClient()
	out := pumpClient(t, c2, b, enc(&pgproto3.Parse{Name: "s", Query: "select c from t where id = $1"}, &pgproto3.Sync{}), 0)
	own := c2.stmts.byName["s"].name
	if p, ok := decodeFrontendMsgs(t, out)[0].(*pgproto3.Parse); !ok || p.Name != own || own == shared {
		t.Fatalf("client 2's Parse did not reach the server as its own: %q", out)
	}
	pumpServer(t, c2, b, msgs(learned([]uint32{23}, rows), &pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if len(b.prepared.toClose) != 1 || b.prepared.toClose[0].name != own {
		t.Fatalf("client 2's redundant copy not closed: to close %+v", b.prepared.toClose)
	}

	bind := enc(&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	var kinds []string
	for _, m := range decodeFrontendMsgs(t, pumpClient(t, c2, b, bind, 0)) {
		kind := fmt.Sprintf("%T", m)[len("*pgproto3."):]
		switch m := m.(type) {
		case *pgproto3.Bind:
			kind += " " + m.PreparedStatement
		case *pgproto3.Close:
			kind += " " + m.Name
		}
		kinds = append(kinds, kind)
	}
	if want := "Close " + own + " Sync Bind " + shared + " Execute Sync"; strings.Join(kinds, " ") != want {
		t.Fatalf("sent %v\nwant %s", kinds, want)
	}
	reply, _ := pumpServer(t, c2, b, enc(&pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "0A000", Message: "cached plan must not change result type"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), 0)
	if string(decodeBackendMsgs(t, reply)) != "EZ" {
		t.Fatalf("client 2 got %q, want the server's error", decodeBackendMsgs(t, reply))
	}
	out = pumpClient(t, c2, b, bind, 0)
	sent := decodeFrontendMsgs(t, out)
	if p, ok := sent[0].(*pgproto3.Parse); !ok || p.Name != own {
		t.Fatalf("the retired copy was used again: %#v", sent)
	}
	if d, ok := sent[1].(*pgproto3.Describe); !ok || d.Name != own || c2.stmts.probe == nil {
		t.Fatalf("the copy prepared again is not probed: %#v", sent)
	}
}

// TestBackpressureEndsWhenReaderLeavesBackend: a client reader waiting in
// backpressure (maxPendingRequests unanswered) whose backend reader ended
// without releasing the backend (it could not write to the client, closed
// it and left) must leave, not flush the backend and wait again forever
// (found by the loop guards: the client stayed, holding its backend and
// half a CPU, until shutdown).
func TestBackpressureEndsWhenReaderLeavesBackend(t *testing.T) {
	c, b := testRelay(ModeTransaction, 10)
	server := &scriptConn{}
	b.nc = server
	c.ctx = context.Background()
	for range maxPendingRequests {
		c.exchange.q.push(request{kind: reqQuery})
	}
	done := make(chan struct{})
	close(done) // the backend reader has ended
	c.reader.done = done
	errc := make(chan error, 1)
	go func() { errc <- c.backpressure(b) }()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("backpressure returned nil with the backend reader gone and the backend still held: process would flush it again, forever")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backpressure did not return")
	}
	if server.writes != 1 {
		t.Fatalf("%d writes to the backend, want the one Flush", server.writes)
	}
}
