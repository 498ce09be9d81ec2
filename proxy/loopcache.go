package proxy

// loopCache: the loop thread's own free lists of client read buffers and
// request rings.
//
// An idle client holds neither (idle.go): a client the loop serves takes
// both for each request and gives both back when it parks again. Through
// the sync.Pools that was two Gets and two Puts per transaction, each
// pinning the P, besides a third pair for the reply's tail
// (replyAndRelease). The loop thread is one thread: it keeps short stacks
// of its own instead, and a tail buffer (loopFields.tail). What a stack
// has no room for goes to the sync.Pool as before, and a quiet parker
// drops both stacks before it gives memory back (releaseAfterWave), so an
// idle proxy keeps none of it.

// loopCacheMax is how many buffers, and rings, the loop keeps: its clients
// hold at most one each per backend they wait on, so a pool's worth or two
// covers a busy loop; at 8 KB a buffer it is 256 KB at most.
const loopCacheMax = 32

type loopCache struct {
	bufs  []*[clientReadBufSize]byte
	rings []*[requestRingSize]request
}

// buf returns a read buffer. Loop thread.
func (lc *loopCache) buf() []byte {
	if n := len(lc.bufs); n > 0 {
		b := lc.bufs[n-1]
		lc.bufs[n-1] = nil
		lc.bufs = lc.bufs[:n-1]
		return b[:]
	}
	return clientBufPool.Get().(*[clientReadBufSize]byte)[:]
}

// putBuf takes back a read buffer of clientReadBufSize. Loop thread.
func (lc *loopCache) putBuf(b []byte) {
	p := (*[clientReadBufSize]byte)(b)
	if len(lc.bufs) < loopCacheMax {
		if lc.bufs == nil {
			lc.bufs = make([]*[clientReadBufSize]byte, 0, loopCacheMax)
		}
		lc.bufs = append(lc.bufs, p)
		return
	}
	clientBufPool.Put(p)
}

// ring returns an empty request ring. Loop thread.
func (lc *loopCache) ring() []request {
	if n := len(lc.rings); n > 0 {
		r := lc.rings[n-1]
		lc.rings[n-1] = nil
		lc.rings = lc.rings[:n-1]
		return r[:]
	}
	return newRequestRing()
}

// putRing takes back an empty ring of requestRingSize entries (all zero,
// as requestRingPool's). Loop thread.
func (lc *loopCache) putRing(r []request) {
	p := (*[requestRingSize]request)(r)
	if len(lc.rings) < loopCacheMax {
		if lc.rings == nil {
			lc.rings = make([]*[requestRingSize]request, 0, loopCacheMax)
		}
		lc.rings = append(lc.rings, p)
		return
	}
	requestRingPool.Put(p)
}
