// ReadBuffer: the bytes read from one side and not handled yet, and how its
// buffer grows and shrinks with the messages.

package pgwire

// ReadBuffer holds bytes read from one side and not handled yet:
// Buf[Start:End]. Messages are handled in place; a message that must be
// handled whole but is not all there yet sets Want to its size. See the
// package documentation for who owns the bytes.
type ReadBuffer struct {
	Buf        []byte
	Start, End int
	Want       int
}

// Prepare makes room for the next read: it starts an emptied buffer over,
// moves a partial message to the front, and grows a full buffer for a
// message larger than it. Growth doubles at most, and only once the buffer
// is full, so memory follows the bytes that actually arrived, never a
// length a peer merely claims (a 5-byte header saying 1 GiB costs nothing).
func (r *ReadBuffer) Prepare() {
	if r.Start == r.End {
		r.Start, r.End = 0, 0
	}
	if r.Start > 0 && (r.Want > len(r.Buf)-r.Start || r.End == len(r.Buf)) {
		r.End = copy(r.Buf, r.Buf[r.Start:r.End])
		r.Start = 0
	}
	if r.End == len(r.Buf) && r.Want > len(r.Buf) {
		nb := make([]byte, max(2*len(r.Buf), 512))
		r.End = copy(nb, r.Buf[:r.End])
		r.Buf = nb
	}
}

// Free is where the next read goes.
func (r *ReadBuffer) Free() []byte { return r.Buf[r.End:] }

// Pending is the number of unhandled bytes.
func (r *ReadBuffer) Pending() int { return r.End - r.Start }

// Shrink replaces an empty buffer that one huge message grew past keep
// bytes with a fresh one of size bytes, so the memory goes back.
func (r *ReadBuffer) Shrink(keep, size int) {
	if len(r.Buf) > keep && r.Start == r.End {
		r.Buf = make([]byte, size)
		r.Start, r.End = 0, 0
	}
}
