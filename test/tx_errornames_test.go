package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// An error PostgreSQL reports about a named prepared statement names it
// ("bind message supplies 1 parameters, but prepared statement \"two\"
// requires 2"). In transaction mode the server's copy has the proxy's own
// name (pgsc_N, possibly another client's shared copy): the client must
// see its own name, as directly, not one it never used. Compared with a
// direct connection, for a statement prepared on the backend at hand and
// for one prepared again on another backend (a second client holds the
// first in a transaction, so the next Bind lands elsewhere).
func TestTxErrorNamesClientStatement(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "2"), WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bindErr := func(url string, moveFirst bool) string {
		c, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer c.Close(context.Background())
		if _, err := c.Prepare(ctx, "two", "SELECT $1::int + $2::int", nil); err != nil {
			t.Fatalf("prepare: %v", err)
		}
		if moveFirst {
			// Hold the backend that has the copy, so the Bind goes to
			// the other one, where the proxy prepares it again.
			other, err := pgconn.Connect(ctx, p.AppURL())
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer other.Close(context.Background())
			if _, err := other.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				t.Fatalf("holder: %v", err)
			}
			defer other.Exec(ctx, "COMMIT").ReadAll()
		}
		res := c.ExecPrepared(ctx, "two", [][]byte{[]byte("1")}, nil, nil).Read()
		if res.Err == nil {
			t.Fatalf("a Bind with 1 of 2 parameters succeeded")
		}
		pe, ok := res.Err.(*pgconn.PgError)
		if !ok {
			t.Fatalf("Bind error %v (%T), want a server error", res.Err, res.Err)
		}
		// The session goes on, and the statement still works.
		if res := c.ExecPrepared(ctx, "two", [][]byte{[]byte("1"), []byte("2")}, nil, nil).Read(); res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "3" {
			t.Errorf("the statement after the error: %v %v, want 3", res.Rows, res.Err)
		}
		return pe.Code + " " + pe.Message
	}
	want := bindErr(txDirectURL(), false)
	for _, move := range []bool{false, true} {
		if got := bindErr(p.AppURL(), move); got != want {
			t.Errorf("through the proxy (statement moved to another backend: %v): %q, directly %q", move, got, want)
		}
	}
}
