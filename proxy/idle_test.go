package proxy

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// idleTestClients is how many idle clients TestIdleClientMemory holds: a
// bounded count, enough for per-client figures well above the noise.
const idleTestClients = 400

// heapAndStack is the Go memory in use after two collections (the first
// shrinks the stacks of parked goroutines, the second empties sync.Pools'
// victim caches): heap spans and goroutine stacks, what RSS follows.
func heapAndStack() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse
}

// TestIdleClientMemory measures what an idle, logged-in client that has
// run one query costs the proxy in heap and goroutine stack, at
// idleTestClients clients in process (the clients' own socket ends are
// measured separately and taken off), and fails past idleClientBudget.
// The RSS figure at 10,000 clients comes from test/tools/rssmeter
// against a fresh process (README, "Memory per idle client").
func TestIdleClientMemory(t *testing.T) {
	n := idleTestClients
	// The clients' ends: n bare socket pairs cost two sockets each.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h0, s0 := heapAndStack()
	var pairs []net.Conn
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, c, a)
	}
	h1, s1 := heapAndStack()
	socketEnd := (float64(h1+s1) - float64(h0+s0)) / float64(2*n)
	for _, c := range pairs {
		c.Close()
	}
	ln.Close()
	pairs = nil

	script := beScript{}
	for range n {
		script = append(script, queryResult("SELECT 1", "SELECT 1", 'I', "1"))
	}
	e := startFake(t, fakeOpts{config: func(c *Config) {
		parkFast(c)
		c.MaxClientConn, c.MaxStartupConn = n+10, n+10
	}}, script)
	// One client first: the proxy's one-time structures (server
	// parameters, pools, the backend) are not counted per client.
	warm := e.dialRaw(t)
	warm.query(t, "SELECT 1")
	warm.readResult(t)
	h0, s0 = heapAndStack()
	conns := make([]net.Conn, 0, n)
	for range n - 1 {
		rc := e.dialRaw(t)
		rc.query(t, "SELECT 1")
		if rows, errResp, _ := rc.readResult(t); errResp != nil || len(rows) != 1 {
			t.Fatalf("SELECT 1: %v %v", rows, errResp)
		}
		conns = append(conns, rc.conn) // the client's decoder and its buffers are dropped
	}
	waitFor(t, "every client idle", func() bool { return e.pool.Stats().Active == 0 })
	if runtime.GOOS == "linux" {
		e.waitParked(t, int64(n)) // park.go: no goroutine per idle client
	} else {
		time.Sleep(10 * time.Millisecond) // each client reader back in its idle wait
	}
	h1, s1 = heapAndStack()
	k := float64(len(conns))
	heap := (float64(h1)-float64(h0))/k - socketEnd
	stack := (float64(s1) - float64(s0)) / k
	t.Logf("per idle client: %.0f B heap + %.0f B stack = %.0f B (%d clients; each client's own socket end, %.0f B, taken off)",
		heap, stack, heap+stack, len(conns), socketEnd)
	if heap+stack > float64(idleClientBudget()) {
		t.Errorf("an idle client costs %.0f B of heap and stack, over the budget of %d B", heap+stack, idleClientBudget())
	}
	for _, c := range conns {
		c.Close()
	}
}

// idleClientBudget is TestIdleClientMemory's bound (bytes of heap and
// stack per idle client). Measured 2026-11-28 with idle clients parked
// (park.go): about 3.4 KB, all heap (no goroutine, so no stack; about 0.5
// KB of it is the test's own t.Cleanup per client), 3.1 KB under -race.
// Before parking it was 7.3 KB (a 4 KB stack and 3.3 KB of heap; 11.3 KB
// under -race, whose frames kept the stack at 8 KB), and 21.6 KB before
// idle clients gave back their read buffer and request ring: a client
// that no longer parks fails this bound. Where clients cannot park (not
// Linux) they keep their goroutine, and the bound is the one before.
func idleClientBudget() int {
	switch {
	case runtime.GOOS != "linux" && raceBuild:
		return 12 << 10
	case runtime.GOOS != "linux":
		return 8 << 10
	case raceBuild:
		return 5 << 10
	}
	return 9 << 9 // 4.5 KB
}

// TestIdleWaitAllocatesNothing: a client reader that waits for its next
// request without a buffer (giving it back to the pool, parking, taking
// one again) allocates nothing.
func TestIdleWaitAllocatesNothing(t *testing.T) {
	peer, sock := tcpPair(t)
	c := &clientConn{conn: sock, sock: sock}
	msg := []byte{'Q', 0, 0, 0, 5, 0}
	send := make(chan struct{})
	done := make(chan struct{})
	go func() { // ends when send is closed
		defer close(done)
		for range send {
			time.Sleep(time.Millisecond) // most reads find nothing and park first
			peer.Write(msg)
		}
	}()
	defer func() { close(send); <-done }()
	// Nothing to read: the callback gives the buffer back and asks to park.
	if c.idle.open(c.conn, c.sock) {
		c.idle.read = c.readIdle // as readClient sets it up
	}
	if c.idle.raw == nil {
		t.Fatal("a plain TCP client has no buffer-less wait")
	}
	var parks, bufferless bool
	c.idle.raw.Read(func(fd uintptr) bool {
		parks = !c.readIdle(fd)
		bufferless = c.in.Buf == nil
		return true
	})
	if !parks || !bufferless {
		t.Fatalf("with nothing to read: park %v, buffer given back %v; want both", parks, bufferless)
	}
	allocs := testing.AllocsPerRun(50, func() {
		send <- struct{}{}
		got := 0
		for got < len(msg) {
			n, err := c.readClient()
			if err != nil {
				t.Fatal(err)
			}
			c.in.End += n
			got += n
			c.in.Start = c.in.End // handled
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per idle wait, want 0", allocs)
	}
}

// TestIdleClientsShareBuffersSafely: idle clients give their read buffer
// back and take whichever one the pool has when they speak again; each
// query still reaches the backend exactly as its client sent it, with
// queries of several sizes (one larger than a pooled buffer) going
// through the same buffers in turn, each round's sent to parked clients.
func TestIdleClientsShareBuffersSafely(t *testing.T) {
	const clients, rounds = 8, 3
	sql := func(i, r int) string {
		// Sizes differ per client and round; client 0's third query is
		// larger than clientReadBufSize, so its buffer grows once.
		pad := strings.Repeat(string(rune('a'+i)), (i*97+r*31)%300)
		if i == 0 && r == 2 {
			pad = strings.Repeat("z", clientReadBufSize+100)
		}
		return fmt.Sprintf("SELECT '%d-%d-%s'", i, r, pad)
	}
	script := beScript{}
	for r := range rounds {
		for i := range clients {
			script = append(script, queryResult(sql(i, r), "SELECT 1", 'I', fmt.Sprintf("%d-%d", i, r)))
		}
	}
	e := startFake(t, fakeOpts{config: parkFast}, script)
	var rcs []*rawClient
	for range clients {
		rcs = append(rcs, e.dialRaw(t))
	}
	for r := range rounds {
		if r > 0 && runtime.GOOS == "linux" {
			e.waitParked(t, clients) // each query below wakes a parked client
		}
		for i, rc := range rcs {
			rc.query(t, sql(i, r))
			rows, errResp, _ := rc.readResult(t)
			if errResp != nil || len(rows) != 1 || rows[0] != fmt.Sprintf("%d-%d", i, r) {
				t.Fatalf("client %d round %d: rows %v, error %v", i, r, rows, errResp)
			}
		}
	}
}

// tcpPair is a connected loopback TCP pair: peer, the client's end, and
// sock, the proxy's; both are closed when the test ends.
func tcpPair(t *testing.T) (peer, sock net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	sock, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	return peer, sock
}
