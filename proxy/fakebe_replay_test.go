package proxy

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The replay (replay.go), through the wire: a backend that dies before it
// answered anything the client could see is replaced, and the client's
// request runs on the next backend as if nothing happened.

// fatalTerminated is PostgreSQL's FATAL for pg_terminate_backend.
var fatalTerminated = &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01",
	Message: "terminating connection due to administrator command"}

// TestFakeReplayAfterPreExecutionReplies: PostgreSQL buffers the replies
// that precede execution (ParseComplete, BindComplete, RowDescription...)
// and the FATAL of a backend terminated under the request flushes them
// with it: those replies in front of the FATAL still mean nothing ran to
// completion, so the request goes to another backend, for a simple Query
// (RowDescription first) and an extended batch.
func TestFakeReplayAfterPreExecutionReplies(t *testing.T) {
	rowDesc := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}}
	t.Run("simple", func(t *testing.T) {
		e := startFake(t, fakeOpts{maxSize: 2}, beScript{
			expectQuery("SELECT 'x'"),
			send(rowDesc, fatalTerminated),
			drop(),
		}, beScript{
			queryResult("SELECT 'x'", "SELECT 1", 'I', "x"),
		})
		c := e.connect(t, nil)
		mustExec(t, c, "SELECT 'x'", "x")
		if st := e.pool.Stats(); st.Retired.Error != 1 {
			t.Fatalf("retired %+v, want the dead backend closed as an error", st.Retired)
		}
	})
	t.Run("extended", func(t *testing.T) {
		batch := func() beStep {
			return steps(expectAny(&pgproto3.Parse{}), expectAny(&pgproto3.Bind{}), expect(&pgproto3.Describe{ObjectType: 'P'}),
				expect(&pgproto3.Execute{}), expect(&pgproto3.Sync{}))
		}
		e := startFake(t, fakeOpts{maxSize: 2}, beScript{
			batch(),
			send(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, rowDesc, fatalTerminated),
			drop(),
		}, beScript{
			batch(),
			send(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, rowDesc,
				&pgproto3.DataRow{Values: [][]byte{[]byte("x")}},
				&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
				&pgproto3.ReadyForQuery{TxStatus: 'I'}),
		})
		c := e.connect(t, nil)
		ctx, cancel := context.WithTimeout(context.Background(), fakeStepTimeout)
		defer cancel()
		res := c.ExecParams(ctx, "SELECT $1::text AS v", [][]byte{[]byte("x")}, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "x" {
			t.Fatalf("ExecParams: rows %q, err %v", res.Rows, res.Err)
		}
	})
}
