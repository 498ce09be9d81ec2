package pgwire

import (
	"bytes"
	"testing"
)

// A header that claims 1 GiB makes the buffer grow with the bytes that
// arrive, never to the claimed length.
func TestReadBufferGrowsWithData(t *testing.T) {
	r := ReadBuffer{Buf: make([]byte, 16)}
	r.Want = 1 << 30
	fed := 0
	for i := 0; i < 10; i++ {
		r.Prepare()
		fed += copy(r.Free(), bytes.Repeat([]byte{1}, len(r.Free())))
		r.End = len(r.Buf)
	}
	if len(r.Buf) > 2*fed {
		t.Fatalf("buffer %d bytes after %d bytes arrived", len(r.Buf), fed)
	}
	r = ReadBuffer{Buf: make([]byte, 16), Want: 1 << 30}
	r.Prepare()
	if len(r.Buf) != 16 {
		t.Fatalf("an empty buffer grew to %d bytes for a claimed length", len(r.Buf))
	}
}
