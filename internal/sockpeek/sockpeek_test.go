package sockpeek

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// tcpPair is a connected loopback TCP pair: a is ours, b the peer.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := <-done
	if p == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	return c.(*net.TCPConn), p.(*net.TCPConn)
}

// waitState peeks until the state is want (the peer's action reaches the
// socket a moment later), for at most 5 s.
func waitState(t *testing.T, conn net.Conn, want State) Result {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := Conn(conn)
		if r.State == want || time.Now().After(deadline) {
			if r.State != want {
				t.Fatalf("peek: state %d, want %d (%+v)", r.State, want, r)
			}
			return r
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPeekStates(t *testing.T) {
	a, b := tcpPair(t)
	if r := Conn(a); r.State != Empty {
		t.Fatalf("quiet socket: %+v, want Empty", r)
	}
	if _, err := b.Write([]byte("E....")); err != nil {
		t.Fatal(err)
	}
	r := waitState(t, a, Data)
	if r.First != 'E' || r.TLS {
		t.Fatalf("pending bytes: %+v, want First 'E', not TLS", r)
	}
	// A peek consumes nothing: the bytes are still there to read.
	buf := make([]byte, 5)
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "E...." {
		t.Fatalf("read after peek: %q, %v", buf[:n], err)
	}
	b.CloseWrite()
	waitState(t, a, EOF)

	c, d := tcpPair(t)
	d.SetLinger(0) // close with a reset
	d.Close()
	r = waitState(t, c, Failed)
	if !errors.Is(r.Err, syscall.ECONNRESET) {
		t.Fatalf("reset: %+v, want ECONNRESET", r)
	}

	c.Close()
	if r := Conn(c); r.State != ClosedHere || !errors.Is(r.Err, net.ErrClosed) {
		t.Fatalf("closed here: %+v, want ClosedHere with net.ErrClosed", r)
	}
}

func TestPeekNotASocket(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if r := Conn(p); r.State != Unknown {
		t.Fatalf("net.Pipe: %+v, want Unknown", r)
	}
	if r := Conn(nil); r.State != Unknown {
		t.Fatalf("nil: %+v, want Unknown", r)
	}
}

// A read deadline in the past makes the runtime refuse the read: the peek
// cannot look, and says so instead of guessing.
func TestPeekWithDeadlineIsUnknown(t *testing.T) {
	a, b := tcpPair(t)
	b.Write([]byte("x"))
	waitState(t, a, Data)
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if r := Conn(a); r.State != Unknown {
		t.Fatalf("deadline passed: %+v, want Unknown", r)
	}
}

// A TLS connection is peeked at underneath: its pending bytes are records.
func TestPeekUnderTLS(t *testing.T) {
	a, b := tcpPair(t)
	tc := tls.Client(a, &tls.Config{InsecureSkipVerify: true})
	b.Write([]byte{0x16, 3, 3})
	r := waitState(t, tc, Data)
	if !r.TLS || r.First != 0x16 {
		t.Fatalf("under TLS: %+v, want TLS and the record's first byte", r)
	}
}
