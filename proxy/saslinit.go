// The SASLInitialResponse's data length, which pgproto3 drops: a null
// initial response (-1) and a length that disagrees with the message,
// told apart as PostgreSQL does (headTap, saslInitialData).

package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// headTap passes a client's bytes to pgproto3 and keeps the first of
// them: the SASLInitialResponse's header, mechanism and data length, when
// SCRAM is the first exchange after the startup packet.
type headTap struct {
	r    io.Reader
	head [64]byte
	n    int
}

func (t *headTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if t.n < len(t.head) && n > 0 {
		t.n += copy(t.head[t.n:], p[:n])
	}
	return n, err
}

// saslInitialData checks the data length of the SASLInitialResponse the
// client sent first, whose data (the rest of the message) pgproto3
// returned as data: it reports a null initial response (length -1, no
// data), and refuses a length that disagrees with the message, as
// PostgreSQL does ("invalid message format", 08P01). A head that does not
// hold the message (the tap saw something else first) passes.
func saslInitialData(t *headTap, mechanism string, data []byte) (null bool, err error) {
	if t == nil {
		return false, nil
	}
	h := t.head[:t.n]
	at := 5 + len(mechanism) + 1 // type, length, mechanism and its NUL
	if len(h) < at+4 || h[0] != 'p' || !bytes.Equal(h[5:at-1], []byte(mechanism)) || h[at-1] != 0 {
		return false, nil
	}
	n := int32(binary.BigEndian.Uint32(h[at:]))
	switch {
	case n == -1 && len(data) == 0:
		return true, nil
	case n == -1:
		return false, newFatal(pgwire.CodeProtocolViolation,
			fmt.Sprintf("invalid message format: SASLInitialResponse has no initial response (length -1) but %d more bytes", len(data)),
			authProtocolHint)
	case int(n) != len(data):
		return false, newFatal(pgwire.CodeProtocolViolation,
			fmt.Sprintf("invalid message format: SASLInitialResponse says its initial response has %d bytes, the message holds %d", n, len(data)),
			authProtocolHint)
	}
	return false, nil
}
