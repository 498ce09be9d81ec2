package proxy

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Relay paths that need a second reader or carry the server's own
// messages, through the wire: they guard the relay's rebuild.

// TestFakeRelayCopyIn: COPY FROM STDIN relays the client's CopyData and
// CopyDone to the backend unchanged, the server's CommandComplete back, and
// the backend is released after it.
func TestFakeRelayCopyIn(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("COPY items FROM STDIN"),
		send(&pgproto3.CopyInResponse{OverallFormat: 0, ColumnFormatCodes: []uint16{0}}),
		expect(&pgproto3.CopyData{Data: []byte("1\n2\n")}),
		expect(&pgproto3.CopyData{Data: []byte("3\n")}),
		expect(&pgproto3.CopyDone{}),
		result("COPY 3", 'I'),
		queryResult("SELECT 'next'", "SELECT 1", 'I', "next"),
	})
	c := e.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	// pgconn sends what it reads in chunks of its own: one CopyData per read.
	tag, err := c.CopyFrom(ctx, &chunks{parts: []string{"1\n2\n", "3\n"}}, "COPY items FROM STDIN")
	if err != nil || tag.String() != "COPY 3" {
		t.Fatalf("CopyFrom: %q, %v", tag, err)
	}
	waitFor(t, "the backend's release", func() bool { return e.pool.Stats().Active == 0 })
	b := e.connect(t, nil)
	mustExec(t, b, "SELECT 'next'", "next")
}

// chunks is an io.Reader that returns one part per Read.
type chunks struct{ parts []string }

func (r *chunks) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts[0] = r.parts[0][n:]
	if r.parts[0] == "" {
		r.parts = r.parts[1:]
	}
	return n, nil
}

// TestFakeRelayCopyOut: COPY TO STDOUT relays the server's CopyData to the
// client as sent.
func TestFakeRelayCopyOut(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		expectQuery("COPY items TO STDOUT"),
		send(&pgproto3.CopyOutResponse{OverallFormat: 0, ColumnFormatCodes: []uint16{0}},
			&pgproto3.CopyData{Data: []byte("1\n")},
			&pgproto3.CopyData{Data: []byte("2\n")},
			&pgproto3.CopyDone{},
			&pgproto3.CommandComplete{CommandTag: []byte("COPY 2")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
	})
	c := e.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
	defer cancel()
	var out strings.Builder
	tag, err := c.CopyTo(ctx, &out, "COPY items TO STDOUT")
	if err != nil || tag.String() != "COPY 2" || out.String() != "1\n2\n" {
		t.Fatalf("CopyTo: %q, %q, %v", tag, out.String(), err)
	}
}

// TestFakeRelayServerMessages: what the server says besides replies (a
// NoticeResponse, a ParameterStatus) inside a transaction reaches the
// client in place, and the backend stays with the client until the
// transaction ends.
func TestFakeRelayServerMessages(t *testing.T) {
	e := startFake(t, fakeOpts{}, beScript{
		queryResult("BEGIN", "BEGIN", 'T'),
		expectQuery("SELECT 'noisy'"),
		send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "hello from the server"},
			&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Europe/Paris"}),
		result("SELECT 1", 'T', "noisy"),
		queryResult("COMMIT", "COMMIT", 'I'),
	})
	rc := e.dialRaw(t)
	rc.query(t, "BEGIN")
	if _, er, st := rc.readResult(t); er != nil || st != 'T' {
		t.Fatalf("BEGIN: %v, status %c", er, st)
	}
	rc.query(t, "SELECT 'noisy'")
	var seen []string
	for {
		m := rc.receive(t)
		switch m := m.(type) {
		case *pgproto3.NoticeResponse:
			seen = append(seen, "notice:"+m.Message)
		case *pgproto3.ParameterStatus:
			seen = append(seen, "param:"+m.Name+"="+m.Value)
		case *pgproto3.DataRow:
			seen = append(seen, "row:"+string(m.Values[0]))
		}
		if rfq, ok := m.(*pgproto3.ReadyForQuery); ok {
			if rfq.TxStatus != 'T' {
				t.Fatalf("status %c, want T", rfq.TxStatus)
			}
			break
		}
	}
	if got := strings.Join(seen, " "); got != "notice:hello from the server param:TimeZone=Europe/Paris row:noisy" {
		t.Fatalf("client saw %s", got)
	}
	if st := e.pool.Stats(); st.Active != 1 {
		t.Fatalf("pool: %d active inside the transaction, want 1 (held)", st.Active)
	}
	rc.query(t, "COMMIT")
	if _, er, st := rc.readResult(t); er != nil || st != 'I' {
		t.Fatalf("COMMIT: %v, status %c", er, st)
	}
}
