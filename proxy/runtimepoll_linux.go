//go:build linux

// runtimePoll: taking the event loop's sockets out of the Go runtime's
// epoll set, and putting them back.

package proxy

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/pgsidecar/pgsidecar/internal/sockpeek"
)

// The event loop's sockets, out of the Go runtime's epoll set.
//
// Every socket of a net.Conn is in the runtime's own epoll set (edge
// triggered), where the runtime learns readiness for the goroutines that
// wait on it. The sockets the event loop owns (a parked or loop-served
// client's; the backend a loop client waits on) are in the parker's set
// as well, and no goroutine waits on them in the runtime's: yet each of
// their events wakes the thread the runtime left sleeping in epoll_pwait
// (an idle processor polls the network), which finds nothing to run and
// sleeps again. Measured with 16 pgbench clients on 2 cores: one
// epoll_pwait and about 0.6 context switches per transaction, and 25-30 %
// of pgsidecar's CPU (lab, one interleaved run: 18-19 us per transaction
// without them, 26-29 us with).
//
// So while the loop owns a socket it is taken out of the runtime's set
// (EPOLL_CTL_DEL), and put back exactly as the runtime registered it
// before a goroutine may wait on it: a client when a goroutine takes it
// over (parker.leaveSetLocked), a backend when a goroutine takes it over
// (unwatchLocked) or, while it waits idle in the pool still out of the
// set for the loop's next client, before the pool itself uses it (the
// reclaim hook, pool.Conn.SetReclaim: an Acquire, the validation query,
// an idle check read it through pgconn). The runtime's close takes a
// socket out of its set whether or not it is there.
//
// Go has no API for this. runtimePoll finds the runtime's epoll descriptor
// among the process's (/proc/self/fd) and computes what the runtime
// registers for a socket: its pollDesc (which reflect reads from the
// net.TCPConn), packed with that pollDesc's sequence number as the runtime
// packs tagged pointers. Both are checked against the kernel's record of
// the runtime's registration of the first socket (/proc/self/fdinfo): if
// anything differs (another Go version lays it out differently), the
// runtime's set is left alone for the life of the process and the loop
// works as it did, paying the wake-ups.
//
// Every epoll_ctl on a socket runs inside its RawConn's Control, which
// holds the descriptor open: a concurrent Close cannot make it name
// another socket meanwhile.

// runtimePoll is the Go runtime's epoll set, as far as the event loop
// takes its sockets out of it and puts them back.
type runtimePoll struct {
	log    *slog.Logger // set before the first pollKey
	once   sync.Once
	on     bool   // the check passed: take and give work
	epfd   int    // the runtime's epoll descriptor
	shift  uint   // a pollDesc pointer's shift in the registered value
	events uint32 // the events the runtime registers
}

// pollSeqOffset is where the runtime's pollDesc keeps its sequence number
// (after link and fd); the check proves it for the running runtime.
const pollSeqOffset = 2 * unsafe.Sizeof(uintptr(0))

// pollKey is what the runtime registered for conn's socket, or 0 when it
// cannot be known (not a TCP socket, or the check failed). The first call
// runs the check on conn. Call it while the socket is open and before
// anything else may close it.
func (r *runtimePoll) pollKey(conn net.Conn) uint64 {
	desc, seq, ok := pollDescOf(conn)
	if !ok {
		return 0
	}
	r.once.Do(func() {
		r.check(conn, desc, seq)
		if r.log != nil {
			r.log.Debug("event loop: sockets it owns leave the Go runtime's poller", "on", r.on)
		}
	})
	if !r.on {
		return 0
	}
	return uint64(desc)<<r.shift | uint64(seq)
}

// check finds the runtime's epoll set and how it packs a socket's value,
// from conn's registration as the kernel reports it.
func (r *runtimePoll) check(conn net.Conn, desc, seq uintptr) {
	rc, err := sockpeek.RawConn(conn)
	if err != nil {
		return
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil || fd < 0 {
		return
	}
	// What the runtime asks for (EPOLLET is negative in package syscall);
	// the kernel adds EPOLLERR and EPOLLHUP, which it always reports.
	want := uint32(syscall.EPOLLIN|syscall.EPOLLOUT|syscall.EPOLLRDHUP) | 1<<31
	always := uint32(syscall.EPOLLERR | syscall.EPOLLHUP)
	found := 0
	for _, e := range ents {
		epfd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || l != "anon_inode:[eventpoll]" {
			continue
		}
		events, data, ok := epollEntry(epfd, fd)
		if !ok || events&^always != want {
			continue
		}
		for s := uint(0); s < 40; s++ {
			if uint64(desc)<<s|uint64(seq) == data && uint64(desc)<<s>>s == uint64(desc) {
				r.epfd, r.shift, r.events = epfd, s, want
				found++
				break
			}
		}
	}
	// Exactly one set holds conn's socket as the runtime registers it.
	r.on = found == 1
}

// epollEntry reads epoll set epfd's entry for fd from /proc/self/fdinfo.
func epollEntry(epfd, fd int) (events uint32, data uint64, ok bool) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// tfd: <fd> events: <hex> data: <hex> pos:...
		if len(fs) < 6 || fs[0] != "tfd:" || fs[1] != strconv.Itoa(fd) || fs[2] != "events:" || fs[4] != "data:" {
			continue
		}
		ev, err1 := strconv.ParseUint(fs[3], 16, 32)
		d, err2 := strconv.ParseUint(fs[5], 16, 64)
		return uint32(ev), d, err1 == nil && err2 == nil
	}
	return 0, 0, false
}

// pollDescOf reads the runtime's pollDesc of conn's socket and its
// sequence number (net.TCPConn -> netFD -> poll.FD -> pollDesc).
func pollDescOf(conn net.Conn) (desc, seq uintptr, ok bool) {
	tc, isTCP := conn.(*net.TCPConn)
	if !isTCP || tc == nil {
		return 0, 0, false
	}
	v := reflect.ValueOf(tc).Elem()
	for _, name := range []string{"conn", "fd"} {
		if v.Kind() != reflect.Struct {
			return 0, 0, false
		}
		if v = v.FieldByName(name); !v.IsValid() {
			return 0, 0, false
		}
	}
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return 0, 0, false
	}
	v = v.Elem()
	for _, name := range []string{"pfd", "pd", "runtimeCtx"} {
		if v.Kind() != reflect.Struct {
			return 0, 0, false
		}
		if v = v.FieldByName(name); !v.IsValid() {
			return 0, 0, false
		}
	}
	if v.Kind() != reflect.Uintptr || v.Uint() == 0 {
		return 0, 0, false
	}
	desc = uintptr(v.Uint())
	// The pollDesc lives outside the Go heap (the runtime's poll cache)
	// for the life of the process.
	seq = *(*uintptr)(unsafe.Add(unsafe.Pointer(nil), desc+pollSeqOffset))
	return desc, seq, true
}

// take takes socket fd out of the runtime's set. Inside the socket's
// RawConn.Control.
func (r *runtimePoll) take(fd uintptr) bool {
	var ev syscall.EpollEvent
	return syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, int(fd), &ev) == nil
}

// give puts socket fd back into the runtime's set as the runtime
// registered it (key: pollKey). The kernel reports readiness already
// there at once, so a goroutine that waits next misses nothing. Inside
// the socket's RawConn.Control. It fails only when the kernel refuses
// (out of memory, or of epoll watches): the caller closes the socket, as
// a goroutine would otherwise wait on it for ever.
func (r *runtimePoll) give(fd uintptr, key uint64) bool {
	ev := syscall.EpollEvent{Events: r.events, Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
	return syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev) == nil
}
