package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestBrakeDelaySchedule(t *testing.T) {
	const ms = time.Millisecond
	for failures, want := range []time.Duration{0, 100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second} {
		if got := brakeDelay(100*ms, time.Second, failures); got != want {
			t.Errorf("failures %d: delay %v, want %v", failures, got, want)
		}
	}
	if got := brakeDelay(0, time.Second, 5); got != 0 {
		t.Errorf("initial 0 (off): delay %v", got)
	}
	// Many failures neither overflow nor pass the cap.
	if got := brakeDelay(time.Second, time.Minute, 1000); got != time.Minute {
		t.Errorf("after 1000 failures: %v", got)
	}
}

func TestBrakeAdmitSpacesAttempts(t *testing.T) {
	const d, dmax, limit = 100 * time.Millisecond, 400 * time.Millisecond, 10 * time.Second
	b := newLoginBrake()
	a, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	now := time.Unix(1000, 0)

	if w, ok := b.admit(a, now, d, dmax, limit); w != 0 || !ok {
		t.Fatalf("first attempt: wait %v ok %v", w, ok)
	}
	// Sequential failures: each next attempt waits the doubled delay.
	for i, want := range []time.Duration{100, 200, 400, 400} {
		b.failed(a, now, d, dmax)
		w, ok := b.admit(a, now, d, dmax, limit)
		if !ok || w != want*time.Millisecond {
			t.Fatalf("after failure %d: wait %v ok %v, want %v", i+1, w, ok, want*time.Millisecond)
		}
		now = now.Add(w)
	}
	// Parallel attempts are spaced by the current delay (400ms).
	b.failed(a, now, d, dmax)
	var waits []time.Duration
	for range 3 {
		w, ok := b.admit(a, now, d, dmax, limit)
		if !ok {
			t.Fatal("parallel attempt refused within the limit")
		}
		waits = append(waits, w)
	}
	if waits[0] != 400*time.Millisecond || waits[1] != 800*time.Millisecond || waits[2] != 1200*time.Millisecond {
		t.Fatalf("parallel waits %v, want 400ms, 800ms, 1.2s", waits)
	}
	// Beyond the limit: refused, and nothing reserved.
	if w, ok := b.admit(a, now, d, dmax, time.Second); ok || w != 1600*time.Millisecond {
		t.Fatalf("attempt past the limit: wait %v ok %v", w, ok)
	}
	if w, _ := b.admit(a, now, d, dmax, limit); w != 1600*time.Millisecond {
		t.Fatalf("a refused attempt reserved a slot: next wait %v", w)
	}
	// Another address is not slowed.
	if w, ok := b.admit(other, now, d, dmax, limit); w != 0 || !ok {
		t.Fatalf("other address: wait %v ok %v", w, ok)
	}
	// A success clears the address.
	b.succeeded(a)
	if w, _ := b.admit(a, now, d, dmax, limit); w != 0 {
		t.Fatalf("after a success: wait %v", w)
	}
}

func TestBrakeForgetsAndStaysBounded(t *testing.T) {
	const d, dmax = 10 * time.Millisecond, 100 * time.Millisecond
	b := newLoginBrake()
	a := netip.MustParseAddr("192.0.2.1")
	now := time.Unix(1000, 0)
	b.failed(a, now, d, dmax)
	later := now.Add(brakeForgetFactor*dmax + time.Millisecond)
	if w, _ := b.admit(a, later, d, dmax, time.Second); w != 0 || b.len() != 0 {
		t.Fatalf("idle address not forgotten: wait %v, %d entries", w, b.len())
	}

	// A flood from more addresses than the cap never grows the table past it.
	for i := range brakeMaxEntries + 5000 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		b.failed(ip, now, d, dmax)
		if b.len() > brakeMaxEntries {
			t.Fatalf("%d entries after %d addresses, cap %d", b.len(), i+1, brakeMaxEntries)
		}
	}
}

func TestBrakeKey(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	for _, c := range []struct {
		addr     net.Addr
		loopback bool
		want     string
		ok       bool
	}{
		{tcp("192.0.2.7:5000"), false, "192.0.2.7", true},
		{tcp("[::ffff:192.0.2.7]:5000"), false, "192.0.2.7", true},
		{tcp("127.0.0.1:5000"), false, "", false},
		{tcp("127.0.0.2:5000"), true, "127.0.0.2", true},
		{tcp("[::1]:5000"), false, "", false},
		{tcp("[2001:db8:1:2:aaaa::1]:5000"), false, "2001:db8:1:2::", true},
		{tcp("[2001:db8:1:2:bbbb::9]:5000"), false, "2001:db8:1:2::", true},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, true, "", false},
	} {
		k, ok := brakeKey(c.addr, c.loopback)
		if ok != c.ok || (ok && k.String() != c.want) {
			t.Errorf("brakeKey(%v, loopback %v) = %v, %v; want %q, %v", c.addr, c.loopback, k, ok, c.want, c.ok)
		}
	}
}
