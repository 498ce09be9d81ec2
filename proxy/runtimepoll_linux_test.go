//go:build linux

package proxy

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestRuntimePollTakeGive: on this Go runtime the check passes (it fails
// here first if a new Go lays out its poller differently: the loop then
// pays the runtime's wake-ups again, see runtimepoll_linux.go). A socket
// taken out of the runtime's epoll set is gone from the kernel's record
// of it, and given back it is there exactly as the runtime registered it;
// data that came meanwhile is read, and a goroutine that waits on it
// afterwards is woken by the next data.
func TestRuntimePollTakeGive(t *testing.T) {
	peer, sock := tcpPair(t)
	var r runtimePoll
	key := r.pollKey(sock)
	if key == 0 || !r.on {
		t.Fatal("the check of the Go runtime's poller failed: the event loop's sockets stay in it")
	}
	rc, err := sock.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	if _, data, ok := epollEntry(r.epfd, fd); !ok || data != key {
		t.Fatalf("the runtime's registration: %x %v, pollKey %x", data, ok, key)
	}
	// Another socket gets its own key.
	_, other := tcpPair(t)
	if k2 := r.pollKey(other); k2 == 0 || k2 == key {
		t.Fatalf("a second socket's key %x (first %x)", k2, key)
	}

	ok := false
	rc.Control(func(f uintptr) { ok = r.take(f) })
	if !ok {
		t.Fatal("take failed")
	}
	if _, _, in := epollEntry(r.epfd, fd); in {
		t.Fatal("the socket is still in the runtime's set after take")
	}
	if _, err := peer.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the byte is there before the give
	rc.Control(func(f uintptr) { ok = r.give(f, key) })
	if !ok {
		t.Fatal("give failed")
	}
	if _, data, in := epollEntry(r.epfd, fd); !in || data != key {
		t.Fatalf("after give: %x %v, want %x", data, in, key)
	}
	buf := make([]byte, 8)
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := sock.Read(buf); err != nil || string(buf[:n]) != "a" {
		t.Fatalf("read after give: %q %v", buf[:n], err)
	}
	got := make(chan string, 1)
	go func() { // ends with the read: data, or the deadline
		n, err := sock.Read(buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	time.Sleep(50 * time.Millisecond) // let it wait in the poller
	if _, err := peer.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "b" {
		t.Fatalf("a goroutine waiting on the given-back socket got %q, want it woken by the data", s)
	}
}

// TestLoopSocketsLeaveRuntimePoller: the sockets the event loop serves
// are out of the Go runtime's epoll set: a parked client's, and its
// backend's, which stays out while idle in the pool for the loop's next
// client. Before anyone else uses that backend the pool reclaims it: an
// Acquire gets it back in the runtime's set, registered as before, and
// usable by a goroutine.
// Acquire reclaims on both of its paths: its fast one (no peek due), and
// the long way (a peek due at every acquire).
func TestLoopSocketsLeaveRuntimePoller(t *testing.T) {
	for _, peek := range []time.Duration{time.Hour, 0} {
		t.Run(fmt.Sprintf("peek_after_idle=%v", peek), func(t *testing.T) { testLoopSocketsLeaveRuntimePoller(t, peek) })
	}
}

func testLoopSocketsLeaveRuntimePoller(t *testing.T, peekAfterIdle time.Duration) {
	e := startFake(t, fakeOpts{config: parkFast, maxSize: 1, peekAfterIdle: peekAfterIdle}, beScript{
		queryResult("SELECT 1", "SELECT 1", 'I', "1"),
		queryResult("SELECT 2", "SELECT 1", 'I', "2"),
		queryResult("SELECT 3", "SELECT 1", 'I', "3"),
	})
	needParking(t, e)
	p := &e.srv.park
	rc := e.dialRaw(t)
	for _, v := range []string{"1", "2"} {
		rc.query(t, "SELECT "+v)
		if rows, _, _ := rc.readResult(t); len(rows) != 1 || rows[0] != v {
			t.Fatalf("SELECT %s: %v", v, rows)
		}
		e.waitParked(t, 1)
	}
	if st := e.srv.Stats(); st.LoopRequests == 0 {
		t.Fatal("the loop relayed nothing")
	}
	if !p.rt.on {
		t.Fatal("the Go runtime's poller failed the check (see TestRuntimePollTakeGive)")
	}
	p.mu.Lock()
	for fd, c := range p.byFd.slot {
		if c == nil {
			continue
		}
		if !c.park.rtOut {
			t.Errorf("parked client %d: still in the runtime's poller", fd)
		}
		if _, _, in := epollEntry(p.rt.epfd, fd); in {
			t.Errorf("parked client %d: in the runtime's epoll set", fd)
		}
	}
	p.mu.Unlock()

	conn, ok := e.pool.TryAcquire() // as the loop does: no reclaim
	if !ok {
		t.Fatal("no idle backend")
	}
	b := conn.Attachment().(*backend)
	if !b.rtOut.Load() {
		t.Fatal("the loop's idle backend is back in the runtime's poller")
	}
	if _, _, in := epollEntry(p.rt.epfd, b.fd); in {
		t.Fatal("the loop's idle backend is in the runtime's epoll set")
	}
	conn.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.rtOut.Load() {
		t.Fatal("Acquire handed out a backend out of the runtime's poller")
	}
	if _, data, in := epollEntry(p.rt.epfd, b.fd); !in || data != b.rtKey {
		t.Fatalf("after Acquire: %x %v, want %x", data, in, b.rtKey)
	}
	conn.Release()
	// The loop takes it out again for its next client, and a goroutine
	// client after that (the transaction below) gets it back.
	rc.query(t, "SELECT 3")
	if rows, _, _ := rc.readResult(t); len(rows) != 1 || rows[0] != "3" {
		t.Fatalf("SELECT 3: %v", rows)
	}
	e.waitParked(t, 1)
	if !b.rtOut.Load() {
		t.Fatal("the loop did not take its backend out again")
	}
}
