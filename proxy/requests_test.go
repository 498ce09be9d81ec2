package proxy

import "testing"

// TestRequestQueueOrder: the ring keeps FIFO order across wrap-around and
// growth (from requestRingSize to twice and four times that), counts the
// Syncs it holds, and finds its newest entry (lastIsSynthetic).
func TestRequestQueueOrder(t *testing.T) {
	var q requestQueue
	next, want := 0, 0
	push := func(n int) {
		for range n {
			kind := reqParse
			if next%5 == 4 {
				kind = reqSync
			}
			q.push(request{kind: kind, seg: int64(next)})
			next++
		}
	}
	pop := func(n int) {
		for range n {
			if r := q.pop(); r.seg != int64(want) {
				t.Fatalf("popped %d, want %d", r.seg, want)
			}
			want++
		}
	}
	push(10)
	pop(7)   // the head moves past the middle
	push(12) // wraps around the end of 16
	if len(q.buf) != requestRingSize {
		t.Fatalf("ring of %d after 15 held, want %d", len(q.buf), requestRingSize)
	}
	push(40) // grows twice while wrapped
	if len(q.buf) != 4*requestRingSize {
		t.Fatalf("ring of %d after 55 held, want %d", len(q.buf), 4*requestRingSize)
	}
	if got, w := q.syncs, syncsIn(want, next); got != w {
		t.Fatalf("syncs %d with %d held", got, next-want)
	}
	if q.lastIsSynthetic() {
		t.Fatal("lastIsSynthetic with a Sync or Parse last")
	}
	q.push(request{kind: reqSynthetic, seg: int64(next)})
	next++
	if !q.lastIsSynthetic() {
		t.Fatal("lastIsSynthetic does not see the newest entry of a wrapped, grown ring")
	}
	pop(next - want)
	if q.len() != 0 || q.syncs != 0 {
		t.Fatalf("emptied: len %d syncs %d", q.len(), q.syncs)
	}
}

// syncsIn counts the reqSync entries TestRequestQueueOrder pushed as
// numbers from to to-1 (every fifth, from the fifth).
func syncsIn(from, to int) int {
	n := 0
	for i := from; i < to; i++ {
		if i%5 == 4 {
			n++
		}
	}
	return n
}
