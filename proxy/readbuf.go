package proxy

// readBuffer holds bytes read from one side and not handled yet:
// buf[start:end]. Messages are handled in place; a message that must be
// handled whole but is not all there yet sets want to its size.
type readBuffer struct {
	buf        []byte
	start, end int
	want       int
}

// prepare makes room for the next read: it starts an emptied buffer over,
// moves a partial message to the front, and grows a full buffer for a
// message larger than it. Growth doubles at most, and only once the buffer
// is full, so memory follows the bytes that actually arrived, never a
// length a peer merely claims (a 5-byte header saying 1 GiB costs nothing).
func (r *readBuffer) prepare() {
	if r.start == r.end {
		r.start, r.end = 0, 0
	}
	if r.start > 0 && (r.want > len(r.buf)-r.start || r.end == len(r.buf)) {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	if r.end == len(r.buf) && r.want > len(r.buf) {
		nb := make([]byte, max(2*len(r.buf), 512))
		r.end = copy(nb, r.buf[:r.end])
		r.buf = nb
	}
}

// free is where the next read goes.
func (r *readBuffer) free() []byte { return r.buf[r.end:] }

// pending is the number of unhandled bytes.
func (r *readBuffer) pending() int { return r.end - r.start }

// shrink drops a buffer that one huge message grew past maxKeptBufSize,
// once it is empty, so the memory goes back.
func (r *readBuffer) shrink(size int) {
	if len(r.buf) > maxKeptBufSize && r.start == r.end {
		r.buf = make([]byte, size)
		r.start, r.end = 0, 0
	}
}
