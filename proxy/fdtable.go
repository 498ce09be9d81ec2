package proxy

// fdTable: the parker's clients by socket descriptor, a slice indexed by
// descriptor instead of a map.
//
// The loop looks a descriptor up for every epoll event and files a client
// under its backend's descriptor for every request: as map operations
// that was about 1% of the loop's CPU at 16 clients (perf). The kernel
// hands out the lowest free descriptor, so they stay dense and the slice
// stays as long as the highest one in use: 8 bytes per open descriptor,
// not per client of the table.
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
