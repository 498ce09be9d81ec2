package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// startupBytesConn is a net.Conn that reads a fixed input and swallows
// writes, so the fuzz target needs no goroutine and no network.
type startupBytesConn struct {
	r       *bytes.Reader
	written int
}

func (c *startupBytesConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *startupBytesConn) Write(p []byte) (int, error) { c.written += len(p); return len(p), nil }
func (c *startupBytesConn) Close() error                { return nil }
func (c *startupBytesConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6432}
}
func (c *startupBytesConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
}
func (c *startupBytesConn) SetDeadline(t time.Time) error      { return nil }
func (c *startupBytesConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *startupBytesConn) SetWriteDeadline(t time.Time) error { return nil }

// startupFuzzSeeds are well-formed and near-miss inputs for the corpus.
func startupFuzzSeeds(tb testing.TB) [][]byte {
	enc := func(msgs ...pgproto3.FrontendMessage) []byte {
		var out []byte
		for _, m := range msgs {
			b, err := m.Encode(out)
			if err != nil {
				tb.Fatal(err)
			}
			out = b
		}
		return out
	}
	startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d", "options": `-c a=b --c-d=e\ f`}}
	return [][]byte{
		nil,
		{0, 0, 0, 8},
		enc(startup),
		enc(&pgproto3.SSLRequest{}, startup),
		enc(&pgproto3.GSSEncRequest{}, &pgproto3.SSLRequest{}, startup),
		enc(&pgproto3.SSLRequest{}, &pgproto3.SSLRequest{}),
		enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}),
		enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: make([]byte, 32)}),
		enc(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32,
			Parameters: map[string]string{"user": "u", "_pq_.x": "y"}}),
		binary.BigEndian.AppendUint32(nil, 1<<30),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
}

// FuzzReadStartup feeds arbitrary bytes to readStartup: it must not panic,
// must answer with a result that is consistent with its own contract, and
// must not allocate in proportion to a length the client merely claims.
func FuzzReadStartup(f *testing.F) {
	for _, s := range startupFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &startupBytesConn{r: bytes.NewReader(data)}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		sm, err := readStartup(conn, startupMaxPacketLen)
		runtime.ReadMemStats(&after)

		// Everything readStartup keeps comes from bytes it actually read, and
		// any single buffer is at most the cap: the bound is the cap plus a
		// generous constant factor of the input (map and string overhead).
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > startupMaxPacketLen+uint64(64*len(data))+64<<10 {
			t.Fatalf("allocated %d bytes for a %d-byte input", alloc, len(data))
		}
		if err != nil {
			if sm != nil {
				t.Fatal("both a result and an error")
			}
			var perr *pgError
			if errors.As(err, &perr) {
				if perr.Severity != "FATAL" || len(perr.Code) != 5 || perr.Message == "" || perr.Hint == "" {
					t.Fatalf("incomplete client error: %+v", perr)
				}
			} else if !errors.Is(err, io.EOF) {
				// A byte reader fails only by running out.
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if sm.cancel {
			if sm.backend != nil || sm.user != "" || sm.params != nil {
				t.Fatalf("cancel request with startup fields: %+v", sm)
			}
			return
		}
		if sm.user == "" || sm.database == "" || sm.backend == nil {
			t.Fatalf("startup message without user, database or backend: %+v", sm)
		}
		for _, k := range []string{"user", "database", "options", "replication"} {
			if _, ok := sm.params[k]; ok {
				t.Fatalf("%q must not be in params: %q", k, sm.params)
			}
		}
		if conn.written > 2+1024 {
			t.Fatalf("wrote %d bytes in answer to %d", conn.written, len(data))
		}
	})
}
