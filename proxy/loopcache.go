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
// has no room for goes to the sync.Pool as before, and the parker drops
// both stacks when it gives a wave's memory back (releaseAfterWave).

// newReadBuffer, freeReadBuffer and freeRequestRing are where c's read
// buffers and request rings come from and go to: the loop's cache on the
// loop thread, the sync.Pools elsewhere.
func (c *clientConn) newReadBuffer() []byte {
	if c.loop.running {
		return c.srv.park.cache.buf()
	}
	return clientBufPool.Get().(*[clientReadBufSize]byte)[:]
}

func (c *clientConn) freeReadBuffer(b []byte) {
	if c.loop.running {
		c.srv.park.cache.putBuf(b)
		return
	}
	clientBufPool.Put((*[clientReadBufSize]byte)(b))
}

func (c *clientConn) freeRequestRing(r []request) {
	if c.loop.running {
		c.srv.park.cache.putRing(r)
		return
	}
	requestRingPool.Put((*[requestRingSize]request)(r))
}

// loopCacheMax is how many buffers, and rings, the loop keeps. A client
// the loop serves holds one of each from its request until it parks: while
// its backend answers (at most a pool's worth at once) or while it waits
// in the loop's queue. 32 covers a pool of 20 answering; what a queue
// gives back beyond that goes to the sync.Pools. At 8 KB a buffer, the
// buffers are 256 KB at most.
const loopCacheMax = 32

type loopCache struct {
	bufs  freeList[[clientReadBufSize]byte]
	rings freeList[[requestRingSize]request]
}

// buf returns a read buffer. Loop thread.
func (lc *loopCache) buf() []byte {
	if b := lc.bufs.pop(); b != nil {
		return b[:]
	}
	return clientBufPool.Get().(*[clientReadBufSize]byte)[:]
}

// putBuf takes back a read buffer of clientReadBufSize. Loop thread.
func (lc *loopCache) putBuf(b []byte) {
	if p := (*[clientReadBufSize]byte)(b); !lc.bufs.push(p) {
		clientBufPool.Put(p)
	}
}

// ring returns an empty request ring. Loop thread.
func (lc *loopCache) ring() []request {
	if r := lc.rings.pop(); r != nil {
		return r[:]
	}
	return newRequestRing()
}

// putRing takes back an empty ring of requestRingSize entries (all zero,
// as requestRingPool's). Loop thread.
func (lc *loopCache) putRing(r []request) {
	if p := (*[requestRingSize]request)(r); !lc.rings.push(p) {
		requestRingPool.Put(p)
	}
}

// freeList is a stack of at most loopCacheMax free objects.
type freeList[T any] struct {
	s []*T
}

// pop returns the object pushed last, or nil.
func (f *freeList[T]) pop() *T {
	n := len(f.s)
	if n == 0 {
		return nil
	}
	p := f.s[n-1]
	f.s[n-1] = nil // no stale pointer beyond the length
	f.s = f.s[:n-1]
	return p
}

// push keeps p, unless the list is full: it reports whether it did.
func (f *freeList[T]) push(p *T) bool {
	if len(f.s) == loopCacheMax {
		return false
	}
	if f.s == nil {
		f.s = make([]*T, 0, loopCacheMax)
	}
	f.s = append(f.s, p)
	return true
}
