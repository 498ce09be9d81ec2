package proxy

import "testing"

func TestFdTable(t *testing.T) {
	var tb fdTable
	a, b := &clientConn{}, &clientConn{}
	if tb.get(0) != nil || tb.get(-1) != nil || tb.get(1<<20) != nil {
		t.Fatal("an empty table has a client")
	}
	tb.del(7) // nothing there: no panic
	tb.set(3, a)
	tb.set(1000, b)
	if tb.get(3) != a || tb.get(1000) != b {
		t.Fatal("set then get")
	}
	for fd := range 1100 {
		if fd != 3 && fd != 1000 && tb.get(fd) != nil {
			t.Fatalf("descriptor %d has a client", fd)
		}
	}
	tb.set(3, b) // replaced
	if tb.get(3) != b {
		t.Fatal("replace")
	}
	tb.del(3)
	tb.del(-1)
	tb.del(1 << 20)
	if tb.get(3) != nil || tb.get(1000) != b {
		t.Fatal("del took the wrong one")
	}
	n := len(tb.slot)
	tb.set(n-1, a) // within the slice: no growth
	if len(tb.slot) != n {
		t.Fatalf("grew from %d to %d for a descriptor it has room for", n, len(tb.slot))
	}
}
