// fdTable: the parker's clients by socket descriptor.

package proxy

// fdTable: the parker's clients by socket descriptor, a slice indexed by
// descriptor instead of a map.
//
// The loop looks a descriptor up for every epoll event and files a client
// under its backend's descriptor for every request: as map operations
// that was about 1% of the loop's CPU at 16 clients (perf). The kernel
// hands out the lowest free descriptor, so descriptors stay dense: the
// slice grows to the highest one ever filed (half as much again, so it
// grows rarely) and keeps that length, 8 bytes per descriptor up to it
// (80 KB at 10,000 clients).
type fdTable struct {
	slot []*clientConn
}

// get returns the client filed under fd, or nil.
func (t *fdTable) get(fd int) *clientConn {
	if uint(fd) < uint(len(t.slot)) {
		return t.slot[fd]
	}
	return nil
}

// set files c under fd (fd >= 0), replacing what was there.
func (t *fdTable) set(fd int, c *clientConn) {
	if fd >= len(t.slot) {
		t.slot = append(t.slot, make([]*clientConn, fd+1-len(t.slot)+len(t.slot)/2)...)
	}
	t.slot[fd] = c
}

// del takes what is filed under fd out.
func (t *fdTable) del(fd int) {
	if uint(fd) < uint(len(t.slot)) {
		t.slot[fd] = nil
	}
}
