// loopCache: the loop thread's free lists of read buffers and request
// rings.

package proxy

import "github.com/pgsidecar/pgsidecar/internal/pgwire"

// loopCache: the loop thread's own free lists of client read buffers and
// request rings, and the lending of a client's read buffer from them, or
// from the sync.Pools off the loop thread.
//
// An idle client holds neither (idle.go): a client the loop serves takes
// both for each request and gives both back when it parks again. Through
// the sync.Pools that was two Gets and two Puts per transaction, each
// pinning the P, besides a third pair for the reply's tail
// (replyAndRelease). The loop thread is one thread: it keeps short stacks
// of its own instead, and a tail buffer (loopFields.tail). What a stack
// has no room for goes to the sync.Pool as before, and the parker drops
// both stacks when it gives a wave's memory back (releaseAfterWave).

// bufCache is where a client's read buffer and request ring come from and
// go to: the cache of s's loop while the loop thread runs the client
// (l.running), nil (the sync.Pools) elsewhere. Only the loop thread may
// use its cache.
func (l *loopState) bufCache(s *Server) *loopCache {
	if l.running {
		return &s.park.cache
	}
	return nil
}

// loopCacheMax is how many buffers, and rings, the loop keeps. A client
// the loop serves holds one of each from its request until it parks: while
// its backend answers (at most a pool's worth at once) or while it waits
// in the loop's queue. 32 covers a pool of 20 answering; what a queue
// gives back beyond that goes to the sync.Pools. At 8 KB a buffer, the
// buffers are 256 KB at most.
const loopCacheMax = 32

// loopCache is the loop thread's free lists, used on that thread only. A
// nil *loopCache is none: its methods then use the sync.Pools, as every
// goroutine but the loop's does (bufCache).
type loopCache struct {
	bufs  freeList[[clientReadBufSize]byte]
	rings freeList[[requestRingSize]request]
}

// buf returns a read buffer of clientReadBufSize.
func (lc *loopCache) buf() []byte {
	if lc != nil {
		if b := lc.bufs.pop(); b != nil {
			return b[:]
		}
	}
	return clientBufPool.Get().(*[clientReadBufSize]byte)[:]
}

// putBuf takes back a read buffer of clientReadBufSize.
func (lc *loopCache) putBuf(b []byte) {
	p := (*[clientReadBufSize]byte)(b)
	if lc == nil || !lc.bufs.push(p) {
		clientBufPool.Put(p)
	}
}

// ring returns an empty request ring of requestRingSize entries.
func (lc *loopCache) ring() []request {
	if lc != nil {
		if r := lc.rings.pop(); r != nil {
			return r[:]
		}
	}
	return newRequestRing()
}

// putRing takes back an empty ring of requestRingSize entries (all zero,
// as requestRingPool's).
func (lc *loopCache) putRing(r []request) {
	p := (*[requestRingSize]request)(r)
	if lc == nil || !lc.rings.push(p) {
		requestRingPool.Put(p)
	}
}

// lendReadBuffer gives in a read buffer when it has none: a client reader
// is about to read into it.
func (lc *loopCache) lendReadBuffer(in *pgwire.ReadBuffer) {
	if in.Buf == nil {
		in.Buf = lc.buf()
		in.Start, in.End = 0, 0
	}
}

// reclaimReadBuffer takes in's buffer back when nothing is left in it: its
// reader waits for input. A buffer a large message grew is kept (Shrink
// bounds it), so a client streaming large messages does not reallocate at
// every wait.
func (lc *loopCache) reclaimReadBuffer(in *pgwire.ReadBuffer) {
	if in.Start != in.End || len(in.Buf) != clientReadBufSize {
		return
	}
	lc.putBuf(in.Buf)
	in.Buf, in.Start, in.End = nil, 0, 0
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
