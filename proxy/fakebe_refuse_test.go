package proxy

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Refusals, through the wire: what the client gets when the proxy refuses
// a message or a request, and what the scripted backend sees of it
// (nothing).

// TestFakeUnknownMessageType: a client message type PostgreSQL does not
// know gets FATAL 08P01 and the connection is closed, as directly; nothing
// of it reaches the backend (the script would fail on any message it did
// not expect), and the backend, untouched, serves the next client: the
// pool opens no second connection.
func TestFakeUnknownMessageType(t *testing.T) {
	for _, tc := range []struct {
		name  string
		raw   []byte
		first bool // the client ran a transaction on the backend first
	}{
		{"empty body", []byte{'y', 0, 0, 0, 4}, false},
		{"with a body", []byte{'y', 0, 0, 0, 9, 'h', 'e', 'l', 'l', 'o'}, false},
		{"after a transaction", []byte{'y', 0, 0, 0, 4}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := beScript{queryResult("SELECT 'next'", "SELECT 1", 'I', "next")}
			if tc.first {
				script = append(beScript{queryResult("SELECT 'first'", "SELECT 1", 'I', "first")}, script...)
			}
			e := startFake(t, fakeOpts{}, script)
			rc := e.dialRaw(t)
			if tc.first {
				rc.query(t, "SELECT 'first'")
				if rows, er, _ := rc.readResult(t); er != nil || len(rows) != 1 {
					t.Fatalf("first query: %q %v", rows, er)
				}
			}
			if _, err := rc.conn.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			var got []pgproto3.BackendMessage
			rc.conn.SetReadDeadline(time.Now().Add(fakeStepTimeout))
			for {
				m, err := rc.fe.Receive()
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("client: %v, want the connection closed after the FATAL", err)
					}
					break
				}
				switch m := m.(type) {
				case *pgproto3.ErrorResponse:
					cp := *m
					got = append(got, &cp)
				default:
					got = append(got, m)
				}
			}
			last, ok := got[len(got)-1].(*pgproto3.ErrorResponse)
			if !ok || last.Severity != "FATAL" || last.Code != pgwire.CodeProtocolViolation {
				t.Fatalf("client got %#v last, want FATAL 08P01", got[len(got)-1])
			}
			if last.Message != "invalid frontend message type 121" {
				t.Errorf("message %q, want PostgreSQL's %q", last.Message, "invalid frontend message type 121")
			}
			for _, m := range got[:len(got)-1] {
				if _, ok := m.(*pgproto3.ErrorResponse); ok {
					t.Fatalf("two ErrorResponses: %#v", got)
				}
			}
			waitFor(t, "the backend's release", func() bool { return e.pool.Stats().Active == 0 })
			next := e.connect(t, nil)
			mustExec(t, next, "SELECT 'next'", "next")
			if n := e.fb.sessionCount(); n != 1 {
				t.Fatalf("%d backend connections, want 1: the backend must be reused", n)
			}
		})
	}
}

// TestFakeRefusedExtendedBatch: an extended-protocol batch (Parse, Bind,
// Describe, Execute, Sync) that cannot get a backend (acquire timeout:
// 53300) is answered with exactly one ErrorResponse 53300 and one
// ReadyForQuery 'I', as PostgreSQL answers a failed batch: no
// ParseComplete, nothing per message. It holds when the Sync comes after
// the refusal too. The backend sees none of it, and the client stays
// connected: its next batch runs once the backend is free.
func TestFakeRefusedExtendedBatch(t *testing.T) {
	for _, split := range []bool{false, true} {
		name := "one write"
		if split {
			name = "Sync after the refusal"
		}
		t.Run(name, func(t *testing.T) {
			const timeout = 150 * time.Millisecond
			e := startFake(t, fakeOpts{acquireTimeout: timeout}, beScript{
				queryResult("BEGIN", "BEGIN", 'T'),
				queryResult("COMMIT", "COMMIT", 'I'),
				queryResult("SELECT 'later'", "SELECT 1", 'I', "later"),
			})
			holder := e.connect(t, nil)
			mustExec(t, holder, "BEGIN")
			rc := e.dialRaw(t)
			rc.fe.Send(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int"})
			rc.fe.Send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}})
			rc.fe.Send(&pgproto3.Describe{ObjectType: 'P'})
			rc.fe.Send(&pgproto3.Execute{})
			if split {
				rc.flush(t)
				waitFor(t, "the acquire timeout", func() bool { return e.pool.Stats().AcquireTimeouts == 1 })
				// Nothing may come before the Sync.
				rc.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if m, err := rc.fe.Receive(); err == nil {
					t.Fatalf("client got %T before its Sync", m)
				}
				// A timed-out read leaves the frontend's reader unusable: a
				// fresh one reads on (nothing was consumed).
				rc.fe = pgproto3.NewFrontend(rc.conn, rc.conn)
			}
			rc.fe.Send(&pgproto3.Sync{})
			rc.flush(t)
			var got []pgproto3.BackendMessage
			for {
				m := rc.receive(t)
				if er, ok := m.(*pgproto3.ErrorResponse); ok {
					cp := *er
					m = &cp
				}
				got = append(got, m)
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			if len(got) != 2 {
				t.Fatalf("client got %d messages %#v, want ErrorResponse 53300 and ReadyForQuery", len(got), got)
			}
			er, ok := got[0].(*pgproto3.ErrorResponse)
			if !ok || er.Code != pgwire.CodeTooManyConnections || er.Severity != "ERROR" {
				t.Fatalf("first reply %#v, want ERROR 53300", got[0])
			}
			if z := got[1].(*pgproto3.ReadyForQuery); z.TxStatus != 'I' {
				t.Fatalf("ReadyForQuery %c, want I", z.TxStatus)
			}
			mustExec(t, holder, "COMMIT")
			rc.query(t, "SELECT 'later'")
			if rows, er, st := rc.readResult(t); er != nil || len(rows) != 1 || rows[0] != "later" || st != 'I' {
				t.Fatalf("the refused client's next query: rows %q, error %v, status %c", rows, er, st)
			}
			if n := e.fb.sessionCount(); n != 1 {
				t.Fatalf("%d backend connections, want 1", n)
			}
		})
	}
}
