package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The relay must never deadlock where a direct connection does not: the
// client goroutine reads a backend's replies itself only when the backend
// answers without more client input; a client that keeps writing while
// the replies come (a pipeline, COPY data) is served with a server reader
// alongside. These tests push both far past every socket and relay
// buffer, bounded in time, and compare the results with a direct
// connection.

// pipelineStatements is how many statements TestPipelineHundredThousand
// sends before it has read a single reply.
const pipelineStatements = 100_000

// TestPipelineHundredThousand sends 100,000 extended-protocol statements
// (Bind/Execute of "SELECT $1::int", a Sync after every 100: 1,000
// transactions) from one goroutine while another reads, as pipelining
// drivers do, through transaction mode with a pool of 2, and directly. The
// replies must be the same: every value in order, 1,000 ReadyForQuery.
func TestPipelineHundredThousand(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	direct, err := runPipeline(ctx, t, txDirectURL())
	if err != nil {
		t.Fatalf("direct: %v", err)
	}
	proxied, err := runPipeline(ctx, t, txProxyURL(p))
	if err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	if direct != proxied {
		t.Fatalf("replies differ: direct %s, through the proxy %s", direct, proxied)
	}
}

// runPipeline runs the pipeline on a raw connection to url and returns a
// digest of the replies (counts, and a hash of every message's type and
// data rows).
func runPipeline(ctx context.Context, t *testing.T, url string) (string, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return "", err
	}
	cfg.ConnectTimeout = 10 * time.Second
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	hj, err := pc.Hijack()
	if err != nil {
		return "", err
	}
	nc := hj.Conn
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline) // a deadlock fails with a timeout, not a hang

	writeErr := make(chan error, 1)
	go func() { // ends when everything is written or the deadline cuts it
		w := bufio.NewWriterSize(nc, 64<<10)
		var buf []byte
		buf, _ = (&pgproto3.Parse{Query: "SELECT $1::int", ParameterOIDs: []uint32{23}}).Encode(buf)
		for i := 1; i <= pipelineStatements; i++ {
			buf, _ = (&pgproto3.Bind{Parameters: [][]byte{strconv.AppendInt(nil, int64(i), 10)}}).Encode(buf)
			buf, _ = (&pgproto3.Execute{}).Encode(buf)
			if i%100 == 0 {
				buf, _ = (&pgproto3.Sync{}).Encode(buf)
			}
			if len(buf) > 32<<10 {
				if _, err := w.Write(buf); err != nil {
					writeErr <- err
					return
				}
				buf = buf[:0]
			}
		}
		_, err := w.Write(buf)
		if err == nil {
			err = w.Flush()
		}
		writeErr <- err
	}()

	// pgconn's own Frontend: it reads through pgconn's background reader,
	// which may still hold (or be about to read) bytes after a slow
	// startup write; a Frontend of our own on nc would lose those.
	fe := hj.Frontend
	h := sha256.New()
	rows, ready, next := 0, 0, 1
	for ready < pipelineStatements/100 {
		msg, err := fe.Receive()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				return "", fmt.Errorf("deadlocked: %d of %d rows and %d ReadyForQuery read before the deadline", rows, pipelineStatements, ready)
			}
			return "", fmt.Errorf("after %d rows: %w", rows, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if got := string(m.Values[0]); got != strconv.Itoa(next) {
				return "", fmt.Errorf("row %d: got %q", next, got)
			}
			next++
			rows++
			h.Write(m.Values[0])
		case *pgproto3.ReadyForQuery:
			ready++
			h.Write([]byte{'Z', m.TxStatus})
		case *pgproto3.ErrorResponse:
			return "", fmt.Errorf("after %d rows: %s %s", rows, m.Code, m.Message)
		case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CommandComplete:
			writeType(h, msg)
		default:
			return "", fmt.Errorf("unexpected %T", msg)
		}
	}
	if err := <-writeErr; err != nil {
		return "", fmt.Errorf("writing: %w", err)
	}
	return fmt.Sprintf("rows=%d ready=%d sha256=%s", rows, ready, hex.EncodeToString(h.Sum(nil))), nil
}

func writeType(h hash.Hash, msg pgproto3.BackendMessage) {
	fmt.Fprintf(h, "%T", msg)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// copyRows is the number of rows of about 100 bytes each in the COPY test:
// a little over 100 MB.
const copyRows = 1 << 20

// copyReader produces the COPY text of copyRows rows (an id and 93
// characters of padding) without holding it, and hashes what it produced.
type copyReader struct {
	i    int
	line []byte
	h    hash.Hash
	n    int64
}

func (r *copyReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(r.line) == 0 {
			if r.i == copyRows {
				break
			}
			r.i++
			r.line = fmt.Appendf(r.line[:0], "%d\t%093d\n", r.i, r.i)
			r.h.Write(r.line)
			r.n += int64(len(r.line))
		}
		c := copy(p[n:], r.line)
		n += c
		r.line = r.line[c:]
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// TestCopyHundredMB copies 100 MB into a table through transaction mode
// (COPY FROM STDIN: pgconn sends the data while it watches for the
// server's answer) and 100 MB out (COPY TO STDOUT of a generated series),
// within a time bound, and compares with what was sent and with the same
// COPY run directly.
func TestCopyHundredMB(t *testing.T) {
	p := txStartProxy(t, "transaction", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dconn := txConnect(ctx, t, txDirectURL(), nil)
	pconn := txConnect(ctx, t, txProxyURL(p), nil)
	txMustExec(ctx, t, dconn, "DROP TABLE IF EXISTS e2e_copy100; CREATE UNLOGGED TABLE e2e_copy100 (id int, pad text)")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		txSimple(ctx, dconn, "DROP TABLE IF EXISTS e2e_copy100")
	})

	in := &copyReader{h: sha256.New()}
	tag, err := pconn.CopyFrom(ctx, in, "COPY e2e_copy100 FROM STDIN")
	if err != nil {
		t.Fatalf("COPY FROM STDIN of %d bytes through the proxy (deadlock if the context ran out): %v", in.n, err)
	}
	if tag.RowsAffected() != copyRows || in.n < 100<<20 {
		t.Fatalf("COPY FROM STDIN: %s for %d bytes, want %d rows of 100 MB", tag, in.n, copyRows)
	}
	const check = "SELECT count(*) || ' ' || sum(id) || ' ' || sum(length(pad)) FROM e2e_copy100"
	want := fmt.Sprintf("%d %d %d", copyRows, copyRows*(copyRows+1)/2, copyRows*93)
	if got := txMustOne(ctx, t, dconn, check); got != want {
		t.Fatalf("after COPY FROM STDIN the table holds %q, want %q", got, want)
	}

	const out = "COPY (SELECT i, lpad(i::text, 93, '0') FROM generate_series(1, 1048576) i) TO STDOUT"
	viaProxy, direct := &countHash{h: sha256.New()}, &countHash{h: sha256.New()}
	if _, err := pconn.CopyTo(ctx, viaProxy, out); err != nil {
		t.Fatalf("COPY TO STDOUT through the proxy after %d bytes (deadlock if the context ran out): %v", viaProxy.n, err)
	}
	if _, err := dconn.CopyTo(ctx, direct, out); err != nil {
		t.Fatalf("COPY TO STDOUT direct: %v", err)
	}
	if viaProxy.n != direct.n || viaProxy.sum() != direct.sum() || viaProxy.sum() != hex.EncodeToString(in.h.Sum(nil)) {
		t.Fatalf("COPY TO STDOUT: %d bytes sha256 %s through the proxy, %d bytes %s direct, %s sent in",
			viaProxy.n, viaProxy.sum(), direct.n, direct.sum(), hex.EncodeToString(in.h.Sum(nil)))
	}
	// The backend is clean and reusable after both.
	if got := txMustOne(ctx, t, pconn, "SELECT 41 + 1"); got != "42" {
		t.Fatalf("after the COPYs: %q", got)
	}
}

// countHash counts and hashes what is written to it.
type countHash struct {
	h hash.Hash
	n int64
}

func (c *countHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *countHash) sum() string { return hex.EncodeToString(c.h.Sum(nil)) }
