// Command relaylab is a measuring stick, not a pooler: three minimal
// transaction-mode relays with none of pgsidecar's features, to tell what
// the Go runtime's way of waiting costs from what pgsidecar's own code
// costs. All three trust every client (no authentication), relay only the simple
// and extended query protocols as pgbench -S sends them, and hand a client
// a backend from a fixed set for each exchange that ends in ReadyForQuery.
//
//   - -relay goroutine: a goroutine per client reading its socket through
//     net.Conn (Go's netpoller), backends handed over a channel. The
//     cheapest shape pgsidecar's relay could have.
//   - -relay epoll: one OS thread, its own level-triggered epoll set over
//     raw non-blocking sockets, no goroutine per client: PgBouncer's shape.
//   - -relay raw: the epoll relay making PgBouncer's system calls
//     (recvfrom and sendto, not read and write) without the runtime's
//     entersyscall around them, and an epoll_wait that polls before it
//     blocks: the cheapest a Go relay's system calls get, and so the floor
//     of what pgsidecar's loop (proxy/loop.go) could cost.
//
// -spin N adds N steps of arithmetic per exchange to the epoll and raw
// relays: a pooler's own work, without its memory traffic, to measure what
// each microsecond of it costs in TPS. -touch N writes N cache lines per
// exchange instead, walking a region of -touch-region bytes: memory
// traffic, fresh from memory or from a working set the caches keep. Both
// are lab knobs; bench.sh never sets them.
//
// bench.sh's BENCH_TARGETS runs it beside pgsidecar and PgBouncer; the
// README's benchmark section quotes it. Loopback only.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	relay := flag.String("relay", "goroutine", "goroutine, epoll or raw")
	listen := flag.String("listen", "127.0.0.1:6499", "client address (loopback)")
	upstream := flag.String("upstream", os.Getenv("DATABASE_URL"), "backend URL")
	size := flag.Int("pool", 20, "backends")
	flag.IntVar(&spin, "spin", 0, "epoll and raw: steps of pure arithmetic per exchange, as work a pooler's own code adds (about 1 ns each on the 2-core lab machine)")
	flag.IntVar(&touch, "touch", 0, "epoll and raw: cache lines of memory written per exchange, as the memory a pooler's own code touches (walking -touch-region)")
	flag.IntVar(&touchRegionSize, "touch-region", 256<<20, "the region -touch walks, in bytes: far larger than the caches (the default), every line is fresh; a few tens of KB, a working set reused every few exchanges, as a pooler's per-client structures")
	flag.Parse()
	if touch > 0 && touchRegionSize < 64 {
		log.Fatalf("-touch-region %d: at least one cache line (64 bytes)", touchRegionSize)
	}
	backends := make([]net.Conn, *size)
	for i := range backends {
		pc, err := pgconn.Connect(context.Background(), *upstream)
		if err != nil {
			log.Fatal(err)
		}
		h, err := pc.Hijack()
		if err != nil {
			log.Fatal(err)
		}
		backends[i] = h.Conn
	}
	switch *relay {
	case "goroutine":
		serveGoroutines(*listen, backends)
	case "epoll":
		serveEpoll(*listen, backends)
	case "raw":
		rawIO = true
		serveEpoll(*listen, backends)
	default:
		log.Fatalf("unknown -relay %q", *relay)
	}
}

// greeting is what a trusted client gets after its startup packet.
func greeting() []byte {
	var b []byte
	msg := func(t byte, body []byte) {
		b = append(b, t)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)+4))
		b = append(b, body...)
	}
	msg('R', []byte{0, 0, 0, 0})
	for _, kv := range [][2]string{{"server_version", "15.0"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"}} {
		msg('S', []byte(kv[0]+"\x00"+kv[1]+"\x00"))
	}
	msg('K', []byte{0, 0, 0, 1, 0, 0, 0, 1})
	msg('Z', []byte{'I'})
	return b
}

// complete returns the length of the complete messages at the start of b,
// how many of them end an exchange (Query, Sync) and whether a Terminate
// is among them.
func complete(b []byte) (n, exchanges int, terminate bool) {
	for len(b)-n >= 5 {
		l := int(binary.BigEndian.Uint32(b[n+1:]))
		if len(b)-n < 1+l {
			break
		}
		switch b[n] {
		case 'Q', 'S':
			exchanges++
		case 'X':
			terminate = true
		}
		n += 1 + l
	}
	return n, exchanges, terminate
}

// readyCount is like complete for a backend's replies: how many
// ReadyForQuery messages the complete part holds.
func readyCount(b []byte) (n, ready int) {
	for len(b)-n >= 5 {
		l := int(binary.BigEndian.Uint32(b[n+1:]))
		if len(b)-n < 1+l {
			break
		}
		if b[n] == 'Z' {
			ready++
		}
		n += 1 + l
	}
	return n, ready
}

// startupLen is the length of a complete startup packet at the start of b
// (0 if incomplete) and whether it is an SSLRequest.
func startupLen(b []byte) (int, bool) {
	if len(b) < 8 {
		return 0, false
	}
	l := int(binary.BigEndian.Uint32(b))
	if len(b) < l {
		return 0, false
	}
	return l, binary.BigEndian.Uint32(b[4:]) == 80877103
}

func serveGoroutines(addr string, backends []net.Conn) {
	free := make(chan net.Conn, len(backends))
	for _, b := range backends {
		free <- b
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	hello := greeting()
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			in := make([]byte, 0, 8192)
			out := make([]byte, 0, 32768)
			buf := make([]byte, 8192)
			for { // startup
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				in = append(in, buf[:n]...)
				l, ssl := startupLen(in)
				if l == 0 {
					continue
				}
				in = in[l:]
				if ssl {
					c.Write([]byte{'N'})
					continue
				}
				c.Write(hello)
				break
			}
			for {
				n, ex, term := complete(in)
				if term {
					return
				}
				if ex == 0 {
					m, err := c.Read(buf)
					if err != nil {
						return
					}
					in = append(in, buf[:m]...)
					continue
				}
				be := <-free
				if _, err := be.Write(in[:n]); err != nil {
					log.Fatal(err)
				}
				in = append(in[:0], in[n:]...)
				out = out[:0]
				for ex > 0 {
					m, err := be.Read(buf)
					if err != nil {
						log.Fatal(err)
					}
					out = append(out, buf[:m]...)
					k, z := readyCount(out)
					ex -= z
					if k > 0 {
						c.Write(out[:k])
						out = append(out[:0], out[k:]...)
					}
				}
				free <- be
			}
		}()
	}
}

// epoll relay ---------------------------------------------------------------

type eclient struct {
	fd      int
	in      []byte
	started bool
	be      *ebackend
	queued  bool
}

type ebackend struct {
	fd   int
	out  []byte
	wait int // ReadyForQuery still expected
	c    *eclient
}

// keep holds the files rawFD took the descriptors from: a collected
// *os.File's finalizer would close its descriptor under the loop.
var keep []*os.File

func rawFD(c net.Conn) int {
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		log.Fatal(err)
	}
	keep = append(keep, f)
	c.Close()
	fd := int(f.Fd())
	if err := syscall.SetNonblock(fd, true); err != nil {
		log.Fatal(err)
	}
	return fd
}

// rawIO: -relay raw, the epoll relay with PgBouncer's system calls
// (recvfrom, sendto) made without the runtime's entersyscall (the sockets
// never block), and an epoll_wait that polls before it blocks.
var rawIO bool

func sysRead(fd int, b []byte) (int, error) {
	if !rawIO {
		return syscall.Read(fd, b)
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sysWrite(fd int, b []byte) (int, error) {
	if !rawIO {
		return syscall.Write(fd, b)
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func sysWait(ep int, events []syscall.EpollEvent) (int, error) {
	if rawIO {
		// epoll_pwait with no signal mask is epoll_wait (which arm64 lacks).
		n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		if e == 0 && n > 0 {
			return int(n), nil
		}
	}
	return syscall.EpollWait(ep, events, -1)
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := sysWrite(fd, b)
		if err == syscall.EAGAIN {
			continue // a measuring stick: small writes, spin
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func serveEpoll(addr string, conns []net.Conn) {
	runtime.LockOSThread()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		log.Fatal(err)
	}
	add := func(fd int) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			log.Fatal(err)
		}
	}
	byFD := map[int]any{}
	var free []*ebackend
	for _, c := range conns {
		b := &ebackend{fd: rawFD(c)}
		byFD[b.fd] = b
		free = append(free, b)
		add(b.fd)
	}
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Fatal(err)
	}
	syscall.SetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	var sa syscall.SockaddrInet4
	copy(sa.Addr[:], ta.IP.To4())
	sa.Port = ta.Port
	if err := syscall.Bind(lfd, &sa); err != nil {
		log.Fatal(err)
	}
	if err := syscall.Listen(lfd, 4096); err != nil {
		log.Fatal(err)
	}
	add(lfd)
	hello := greeting()
	var queue []*eclient
	buf := make([]byte, 32768)
	events := make([]syscall.EpollEvent, 128)
	closeClient := func(c *eclient) {
		syscall.Close(c.fd)
		delete(byFD, c.fd)
		c.fd = -1
	}
	// dispatch sends c's complete exchanges to a backend if it can get one.
	dispatch := func(c *eclient) {
		if c.be != nil || c.queued || c.fd < 0 {
			return
		}
		n, ex, term := complete(c.in)
		if term {
			closeClient(c)
			return
		}
		if ex == 0 {
			return
		}
		if len(free) == 0 {
			c.queued = true
			queue = append(queue, c)
			return
		}
		burn()
		b := free[len(free)-1]
		free = free[:len(free)-1]
		b.c, b.wait, c.be = c, ex, b
		if err := writeAll(b.fd, c.in[:n]); err != nil {
			log.Fatal(err)
		}
		c.in = append(c.in[:0], c.in[n:]...)
	}
	for {
		n, err := sysWait(ep, events)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					nfd, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
					if err != nil {
						break
					}
					syscall.SetsockoptInt(nfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
					byFD[nfd] = &eclient{fd: nfd}
					add(nfd)
				}
				continue
			}
			switch x := byFD[fd].(type) {
			case *eclient:
				m, err := sysRead(fd, buf)
				if err == syscall.EAGAIN {
					continue
				}
				if err != nil || m == 0 {
					if x.be == nil {
						closeClient(x)
					}
					continue
				}
				x.in = append(x.in, buf[:m]...)
				if !x.started {
					l, ssl := startupLen(x.in)
					if l == 0 {
						continue
					}
					x.in = x.in[l:]
					if ssl {
						writeAll(fd, []byte{'N'})
						continue
					}
					x.started = true
					writeAll(fd, hello)
					continue
				}
				dispatch(x)
			case *ebackend:
				m, err := sysRead(fd, buf)
				if err == syscall.EAGAIN {
					continue
				}
				if err != nil || m == 0 {
					log.Fatal(errors.New("backend lost"), err)
				}
				x.out = append(x.out, buf[:m]...)
				k, z := readyCount(x.out)
				x.wait -= z
				c := x.c
				if k > 0 && c.fd >= 0 {
					writeAll(c.fd, x.out[:k])
				}
				x.out = append(x.out[:0], x.out[k:]...)
				if x.wait > 0 {
					continue
				}
				x.c, c.be = nil, nil
				free = append(free, x)
				dispatch(c)
				for len(queue) > 0 && len(free) > 0 {
					q := queue[0]
					queue = queue[1:]
					q.queued = false
					dispatch(q)
				}
			}
		}
	}
}

// spin (-spin) and burn: work added per exchange, touching no memory, to
// measure what a microsecond of a pooler's own CPU costs in TPS on a
// saturated machine (BENCHMARKS.md, "What a microsecond of the pooler's CPU
// costs"): the chain of multiplications cannot be vectorised or elided.
var spin int

// burnSink keeps burn's result alive.
var burnSink uint64

func burn() {
	x := burnSink
	for range spin {
		x = x*6364136223846793005 + 1442695040888963407
	}
	burnSink = x
	if touch > 0 {
		if touchRegion == nil {
			touchRegion = make([]byte, touchRegionSize)
		}
		for range touch {
			touchRegion[touchAt]++
			touchAt = (touchAt + 64) % touchRegionSize
		}
	}
}

// touch (-touch) is the other half of burn: memory instead of arithmetic,
// to tell whether what a pooler's code costs the rest of the machine (the
// PostgreSQL and pgbench processes sharing its cores) follows its
// instructions or the cache lines it touches. Each exchange writes the
// next touch lines of a region of touchRegionSize (-touch-region) bytes,
// round and round.
var (
	touch, touchRegionSize int
	touchRegion            []byte
	touchAt                int
)

func init() { log.SetPrefix(fmt.Sprintf("relaylab[%d] ", os.Getpid())) }
