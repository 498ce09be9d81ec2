package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestLargeMessages sends messages far larger than the relay's buffers
// through transaction mode: a 6 MB bytea parameter in a named statement's
// Bind (read whole, because the proxy rewrites the statement name), a 1 MB
// simple Query (streamed), and a 6 MB result. Each must arrive intact, and
// the backend must be reusable afterwards.
func TestLargeMessages(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "2"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := connect(t, p.AppURL()) // pgx default mode: named prepared statements

	blob := bytes.Repeat([]byte("0123456789abcdef"), 6<<20/16)
	sum := md5.Sum(blob)
	var gotLen int
	var gotMD5 string
	if err := conn.QueryRow(ctx, "SELECT length($1::bytea), md5($1::bytea)", blob).Scan(&gotLen, &gotMD5); err != nil {
		t.Fatalf("6 MB Bind: %v", err)
	}
	if gotLen != len(blob) || gotMD5 != hex.EncodeToString(sum[:]) {
		t.Fatalf("6 MB Bind arrived as %d bytes, md5 %s", gotLen, gotMD5)
	}

	literal := strings.Repeat("x", 1<<20)
	var n int
	if err := conn.QueryRow(ctx, "SELECT length('"+literal+"')", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
		t.Fatalf("1 MB Query: %v", err)
	}
	if n != len(literal) {
		t.Fatalf("1 MB Query: length %d", n)
	}

	var back []byte
	if err := conn.QueryRow(ctx, "SELECT $1::bytea", blob).Scan(&back); err != nil {
		t.Fatalf("6 MB result: %v", err)
	}
	if !bytes.Equal(back, blob) {
		t.Fatalf("6 MB result differs (%d bytes)", len(back))
	}
	for i := 0; i < 20; i++ {
		if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("after the large messages: %v (%d)", err, n)
		}
	}
}
