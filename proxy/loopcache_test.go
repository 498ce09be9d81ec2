package proxy

import "testing"

func TestLoopCacheKeepsAtMostItsMax(t *testing.T) {
	var lc loopCache
	bufs := make([][]byte, 0, loopCacheMax+5)
	rings := make([][]request, 0, loopCacheMax+5)
	for range loopCacheMax + 5 {
		b, r := lc.buf(), lc.ring()
		if len(b) != clientReadBufSize || len(r) != requestRingSize {
			t.Fatalf("sizes %d and %d", len(b), len(r))
		}
		bufs, rings = append(bufs, b), append(rings, r)
	}
	for i := range bufs {
		lc.putBuf(bufs[i])
		lc.putRing(rings[i])
	}
	if len(lc.bufs.s) != loopCacheMax || len(lc.rings.s) != loopCacheMax {
		t.Fatalf("keeps %d buffers and %d rings, want %d each", len(lc.bufs.s), len(lc.rings.s), loopCacheMax)
	}
	// Last in, first out: the buffer given back last comes out first.
	if b := lc.buf(); &b[0] != &bufs[loopCacheMax-1][0] {
		t.Fatal("buf is not the one given back last")
	}
	if r := lc.ring(); &r[0] != &rings[loopCacheMax-1][0] {
		t.Fatal("ring is not the one given back last")
	}
	if lc.bufs.s[len(lc.bufs.s):cap(lc.bufs.s)][0] != nil || lc.rings.s[len(lc.rings.s):cap(lc.rings.s)][0] != nil {
		t.Fatal("a taken slot still points at its buffer")
	}
}

func TestLoopCacheDoesNotAllocate(t *testing.T) {
	var lc loopCache
	lc.putBuf(lc.buf())
	lc.putRing(lc.ring())
	if n := testing.AllocsPerRun(100, func() {
		b, r := lc.buf(), lc.ring()
		lc.putBuf(b)
		lc.putRing(r)
	}); n != 0 {
		t.Fatalf("%v allocations per take and give", n)
	}
}

// TestQuietParkerDropsLoopCache: when the parker gives a wave's memory
// back (releaseAfterWave: enough parks, then a quiet sweep), the loop's
// free lists go too; before that, a sweep that is not quiet keeps them.
func TestQuietParkerDropsLoopCache(t *testing.T) {
	var p parker
	p.cache.putBuf(p.cache.buf())
	p.cache.putRing(p.cache.ring())

	p.parks = releaseAfterParks // parks since the last sweep: not quiet
	p.releaseAfterWave()
	if len(p.cache.bufs.s) != 1 || len(p.cache.rings.s) != 1 {
		t.Fatal("a sweep that was not quiet dropped the loop's free lists")
	}

	p.releaseAfterWave() // no park since: quiet (released is long ago)
	p.freeing.Wait()
	if len(p.cache.bufs.s) != 0 || len(p.cache.rings.s) != 0 {
		t.Fatalf("a quiet sweep kept %d buffers and %d rings", len(p.cache.bufs.s), len(p.cache.rings.s))
	}
}
