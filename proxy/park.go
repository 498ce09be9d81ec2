// Parking: the parker goroutine, and an idle client's goroutine given up
// (tryPark) and given back (resume, wake, unpark), with the release of
// memory after a wave of parks.

package proxy

import (
	"errors"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Parked clients: an idle client without a goroutine.
//
// An idle client's goroutine costs more than the rest of the client (a 4
// KB stack at least, the GC never shrinks it further), so a client that
// stays idle is parked: its goroutine ends and its socket waits in the
// parker's epoll set (park_linux.go) until it is readable, when a fresh
// goroutine (resume) carries the session on from clientConn, where all of
// its state lives (statements, parameters, LISTEN channels, the cancel
// key). PgBouncer keeps every client this way.
//
// Who parks: a plain-TCP client (TLS keeps its goroutine: crypto/tls
// buffers records of its own, so a readable socket says nothing) of a
// pool mode that releases the backend at transaction end, that holds no
// backend (so is not pinned either), has nothing buffered, in flight or
// queued for it (notifications), and is not being told to go. Session
// mode never parks: its client holds a backend, and a backend reader,
// for its whole life.
//
// When: the parker goroutine sweeps the clients every park interval
// (idleParkAfter) and asks a client reader that has waited idle through
// a whole interval to park: it sets park.want and wakes the reader with a
// read deadline, the relay's usual wake-up. The reader then parks itself
// (tryPark), so every change of owner happens on the owner's side: a
// client is never parked from under its goroutine. A client whose
// requests the event loop serves (loop.go) parks at once after each
// request instead (hotPark, tryPark(true)).
//
// Waking: readiness on the socket (a request, the client closing) makes
// the parker relay the request itself (loop.go), or take the socket out
// of its set and start resume. The relay's
// other wake-ups (drain, timeouts, LISTEN delivery, KILL, closeWith,
// kill) go through wake: it sets the read deadline, as before, and
// unparks the client, whose new goroutine's first read then returns at
// once with that deadline and handles the wake-up as the old goroutine
// would have. A parked client that the sweeper, the admin console or a
// cancel request looks at is looked at as before: its state is in
// clientConn, under the same locks, and unchanged while parked.
//
// Ordering: tryPark marks the client parked before it checks, under the
// parker's lock, that nothing is pending; a waker records what is pending
// before it looks whether the client is parked (all sequentially
// consistent atomics or c.mu). So either tryPark sees the reason and does
// not park, or the waker sees the client parked and unparks it.
//
// Ownership: a parked client keeps its count in Server.wg, so Shutdown
// and Close wait for parked clients as for running ones; the goroutine
// resume starts inherits that count and gives it back when the client
// leaves. Its socket is closed only by its own goroutine (connEnd) or by
// kill, which unparks it first: so the descriptor in the parker's set is
// never closed, and never reused, while parked. Any other goroutine that
// ends a client (a backend reader) shuts its socket down instead
// (hangUp), which epoll reports. The parker goroutine is
// started by Serve and ended by Shutdown and Close once every client has
// left (no client parks once a drain began).

// idleParkAfter is how long a client reader waits idle before it parks
// (between one and two of these): long enough that a client in a steady
// exchange never pays a goroutine start per request, short enough that
// applications' idle pools shrink to their parked size in about a second.
const idleParkAfter = 500 * time.Millisecond

// After a wave of parks (releaseAfterParks since the last release, then
// a sweep interval with none), the parker has the runtime collect and
// hand free memory back to the OS (debug.FreeOSMemory), at most once per
// releaseEvery. A wave of logins leaves garbage, and its goroutines'
// stacks, resident until the GC's pacing and the background scavenger
// get to them: up to as much again as the parked clients' live memory.
// One collection per wave, on a goroutine of its own so that no wake-up
// waits for it.
const (
	releaseAfterParks = 1000
	releaseEvery      = 30 * time.Second
)

// errParked is what run returns when the client parked: the goroutine
// ends and must not touch the client any more (another may own it).
var errParked = errors.New("client parked")

// parker is the Server's parking goroutine and the clients it holds. The
// goroutine is also the event loop (loop.go): the loop's steps on a client
// are the parker's methods that take the client (loopRequest, loopReply,
// loopPark, loopHandOff, ...).
type parker struct {
	os      parkOS
	mu      sync.Mutex
	byFd    fdTable                  // clients whose socket is in the set (parked, or the loop's), by descriptor
	on      bool                     // the epoll set is open and the loop runs
	stopped bool                     // stopParker ran: the loop never starts again
	done    chan struct{}            // closed when the loop has ended
	count   atomic.Int64             // parked clients now (Stats.ClientsParked)
	tid     atomic.Int32             // the loop's thread (Linux: its kernel id, logged at debug for perf -t; BenchmarkLoopExchange reads its CPU; 0 before it runs)
	every   time.Duration            // sweep interval
	ready   func(fd int, ended bool) // onReady, made once
	list    []*clientConn            // the sweep's reused snapshot (loop only)
	parks   int                      // parks since the last memory release (under mu)
	// The loop's: parks at the last sweep, the last release, and the
	// release goroutine (stopParker waits for it).
	seenParks int
	released  time.Time
	freeing   sync.WaitGroup
	loopFields
	// rt is the Go runtime's epoll set (runtimepoll_linux.go). rtTake and
	// rtGive run its take and give inside a socket's RawConn.Control, for
	// rtKey, setting rtOK (controlLocked): made once, so that the loop
	// allocates nothing; used under mu.
	rt             runtimePoll
	rtTake, rtGive func(fd uintptr)
	rtKey          uint64
	rtOK           bool
}

// parkState is one client's part in parking.
type parkState struct {
	fd int // the socket's descriptor, when can
	// The sweep's memory of the client (parker goroutine only): seen
	// idle, with reads at mark, at the last sweep.
	mark uint64
	seen bool
	can  bool // a plain-TCP client of a mode that parks (setUp)
	// parked: the parker holds the client and no goroutine runs it.
	// Changed under parker.mu only.
	parked atomic.Bool
	want   atomic.Bool // the parker asked the client reader to park
	off    atomic.Bool // adding the socket to the epoll set failed: never again
	// rtKey is the socket's registration in the Go runtime's poller (0:
	// unknown, it is never taken out); rtOut: taken out while in the
	// parker's set (runtimepoll_linux.go). rtOut under parker.mu.
	rtKey uint64
	rtOut bool
}

// setUp makes the client parkable: raw is its socket (idleReader.open
// found it), conn its connection, rt the runtime's poller, which
// registered it. The descriptor is for the parker's epoll set; it stays
// valid while the client is parked (see Ownership above). Client
// goroutine, once, in a mode that parks.
func (ps *parkState) setUp(raw syscall.RawConn, rt *runtimePoll, conn net.Conn) {
	raw.Control(func(fd uintptr) { ps.fd, ps.can = int(fd), true })
	ps.rtKey = rt.pollKey(conn)
}

func (p *parker) init(every time.Duration) {
	p.done = make(chan struct{})
	p.every = every
	if p.every <= 0 {
		p.every = idleParkAfter
	}
	p.ready = p.onReady
	p.rtTake = func(fd uintptr) { p.rtOK = p.rt.take(fd) }
	p.rtGive = func(fd uintptr) { p.rtOK = p.rt.give(fd, p.rtKey) }
	p.initLoop()
}

// startParker opens the epoll set and starts the parking goroutine, once
// (on the first Serve). Where it cannot (not Linux, no epoll), clients
// keep their goroutines. The goroutine ends in stopParker.
func (s *Server) startParker() {
	p := &s.park
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.on || p.stopped {
		return
	}
	if err := p.os.open(); err != nil {
		p.stopped = true
		s.log.Info("idle clients keep a goroutine each (no parking)", "err", err)
		return
	}
	p.on = true
	go s.parkLoop() // ends when stopParker closes the stop pipe
}

// stopParker ends the parking goroutine and waits for it. Called by
// Shutdown and Close once no client is left, so none is parked.
func (s *Server) stopParker() {
	p := &s.park
	p.mu.Lock()
	running := p.on
	p.on, p.stopped = false, true
	p.mu.Unlock()
	if running {
		p.os.stop()
		<-p.done
		p.freeing.Wait()
	}
}

// parkLoop is the parking goroutine: it waits on the epoll set for
// parked clients' sockets and sweeps the clients every p.every.
func (s *Server) parkLoop() {
	// The loop runs requests (loop.go): a thread of its own, blocked in
	// epoll_wait, is what makes it cheaper than the netpoller's wake-ups.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p := &s.park
	p.tid.Store(p.os.threadID())
	s.log.Debug("event loop running", "thread", p.tid.Load()) // for perf -t, top -H
	defer close(p.done)
	defer p.os.close()
	next := time.Now().Add(p.every)
	p.clockStale = true
	for {
		// One clock read per wake-up: the batch's first event read it
		// (onReady), else (a wait that timed out, the first pass) it is
		// read here. Reading it here too after every batch made two
		// time.Now a wake-up, each two clock reads (wall and monotonic),
		// at every transaction or two at 16 clients. What follows (the
		// sweep, loopScan, the queue's retry, the yield, the wait's
		// timeout) runs up to a batch's work late, microseconds against
		// their milliseconds.
		if p.clockStale {
			p.readClock(time.Now())
		}
		now := p.clock
		d := next.Sub(now)
		if d <= 0 {
			s.sweepIdle()
			p.releaseAfterWave()
			next = now.Add(p.every)
			d = p.every
		}
		queued := p.queued.Load() > 0
		if queued && p.now-p.lastTry >= int64(loopRetry) {
			p.serveQueues()
		}
		if queued || p.waitingN.Load() > 0 {
			if p.now-p.lastScan >= int64(inlineWait/2) {
				p.lastScan = p.now
				p.loopScan()
			}
			d = min(d, inlineWait/2)
			if queued {
				d = min(d, loopRetry)
			}
		}
		p.yieldIfDue()      // between batches: no request is half read or half written
		p.clockStale = true // onReady reads the clock once for the batch
		if !p.os.wait(max(d, time.Millisecond), p.ready) {
			return
		}
		if p.serveAfterBatch {
			p.serveAfterBatch = false
			p.serveQueues()
		}
	}
}

// sweepIdle asks each client reader that has waited idle (and parkable)
// since the last sweep, without reading anything, to park.
func (s *Server) sweepIdle() {
	p := &s.park
	s.mu.Lock()
	list := p.list[:0]
	for c := range s.clients {
		list = append(list, c)
	}
	s.mu.Unlock()
	for _, c := range list {
		ps := &c.park
		if ps.parked.Load() || !c.idle.parkable.Load() && !c.idleAfterRelease() {
			ps.seen = false
			continue
		}
		r := c.timeouts.reads.Load()
		if ps.seen && ps.mark == r {
			ps.seen = false
			ps.want.Store(true)
			c.idle.signalRead(c.conn)
			continue
		}
		ps.seen, ps.mark = true, r
	}
	clear(list) // keep no client alive past its end
	p.list = list[:0]
}

// idleAfterRelease reports whether c may be idle although its reader did
// not say so: the reader began to wait while a backend reader still held
// the client's backend (the end of a transaction block, COPY), and that
// reader has released it since. The sweep then treats c as any idle
// client: if it reads nothing for a whole interval, it is asked to park,
// and parks if parkableNow agrees.
func (c *clientConn) idleAfterRelease() bool {
	// Not c.park.can: the client's goroutine sets it unsynchronised; the
	// goroutine checks it again when asked to park (tryPark).
	if !c.policy.releaseAtTransactionEnd || !c.timeouts.running.Load() || c.timeouts.waiting.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.be == nil && c.exchange.q.len() == 0 && !c.exchange.inBatch
}

// releaseAfterWave returns memory to the OS once a wave of parks is over
// (see releaseAfterParks). Parker goroutine only.
func (p *parker) releaseAfterWave() {
	p.mu.Lock()
	n := p.parks
	quiet := n >= releaseAfterParks && n == p.seenParks && time.Since(p.released) >= releaseEvery
	if quiet {
		p.parks = 0
	}
	p.mu.Unlock()
	p.seenParks = n
	if !quiet {
		return
	}
	p.seenParks, p.released = 0, time.Now()
	p.cache = loopCache{} // the loop's free lists go too (loopcache.go)
	p.freeing.Add(1)
	go func() { // ends when the collection and the release are done
		defer p.freeing.Done()
		debug.FreeOSMemory()
	}()
}

// onReady is the loop's answer to readiness on fd: a parked client's
// request, which the loop relays itself when it can (loop.go) and a
// goroutine otherwise, or the reply of a backend the loop waits on.
// ended says the event also reported the end of the stream (parkOS.wait).
func (p *parker) onReady(fd int, ended bool) {
	if p.clockStale {
		p.readClock(time.Now())
		p.clockStale = false
	}
	p.mu.Lock()
	c := p.byFd.get(fd)
	if c == nil {
		p.mu.Unlock()
		p.backendReady(fd)
		return
	}
	if !c.park.parked.Load() {
		// The loop runs the client or waits for its backend: it sent
		// more meanwhile (or closed). Edge triggered, this is said once:
		// the loop hands it to a goroutine instead of parking it.
		c.loop.more = true
		p.mu.Unlock()
		return
	}
	if !c.park.loopOn() || c.loop.cold >= loopColdAfter {
		p.unparkLocked(c)
		p.mu.Unlock()
		return
	}
	// The loop's now; its socket stays in the set (and byFd) while the
	// loop has it.
	c.park.parked.Store(false)
	p.count.Add(-1)
	c.loop.st.Store(loopBusy)
	c.loop.woken = false
	// A FIN (or an error) reported with the request: the loop's one read
	// takes the request but not the end, and the set, edge triggered,
	// will not report it again. Served, the client goes to a goroutine,
	// whose read finds the end, instead of parking on a closed stream.
	c.loop.more = ended
	p.mu.Unlock()
	p.loopRequest(c)
}

// unparkLocked takes c out of the epoll set and gives it a goroutine
// again. Under p.mu, with c parked.
func (p *parker) unparkLocked(c *clientConn) {
	p.takeLocked(c)
	s := c.srv
	go s.resume(c) // ends when the client leaves (or parks again); it holds the client's s.wg count
}

// takeLocked takes parked c out of the epoll set. Under p.mu.
func (p *parker) takeLocked(c *clientConn) {
	p.leaveSetLocked(c)
	c.park.parked.Store(false)
	p.count.Add(-1)
}

// leaveSetLocked takes c's socket out of the epoll set, for a goroutine
// to read it. Under p.mu.
func (p *parker) leaveSetLocked(c *clientConn) {
	fd := c.park.fd
	if p.byFd.get(fd) != c {
		return
	}
	// The socket is open (see Ownership above); a failure here could only
	// leave a stale registration, which the fd's close removes.
	_ = p.os.del(fd)
	p.byFd.del(fd)
	if c.park.rtOut {
		c.park.rtOut = false
		if !p.controlLocked(c.idle.raw, p.rtGive, c.park.rtKey) && !c.leave.killed.Load() {
			// (kill closes the socket of a client the loop still runs,
			// which the loop lets go of at its next step: there is then
			// nothing to give back, and nothing wrong.)
			c.log.Error("cannot give the client's socket back to the Go runtime's poller: closing it")
			c.conn.Close()
		}
	}
}

// controlLocked runs op (rtTake or rtGive) on rc's socket for key, inside
// rc.Control (which holds the descriptor open), and reports whether it
// was done. Under p.mu.
func (p *parker) controlLocked(rc rawConn, op func(fd uintptr), key uint64) bool {
	p.rtKey, p.rtOK = key, false
	rc.Control(op)
	return p.rtOK
}

// resume carries a client's session on, on a goroutine of its own: a
// parked client (unparkLocked) or one the loop hands over (loopHandOff,
// handWaitingLocked, handQueuedLocked).
func (s *Server) resume(c *clientConn) {
	if s.session(c) {
		return // parked again: the count goes with it
	}
	e := c.parkedEnd()
	e.run()
	s.wg.Done()
}

// wake makes the client reader look at the client now: its wait for
// input ends with a read deadline in the past (a running reader), or its
// goroutine is started again and its first read sees that deadline (a
// parked one). What to look at must be recorded before the call.
func (c *clientConn) wake() {
	c.idle.signalRead(c.conn)
	c.srv.park.unpark(c)
}

// unpark gives c its goroutine again if it has none: a parked client's
// starts at once, as does that of a client the loop waits for (it reads
// the backend's reply) or has queued (it waits in the pool's queue); a
// client the loop runs now is handed over at the loop's next step.
func (p *parker) unpark(c *clientConn) {
	if !c.park.parked.Load() && c.loop.st.Load() == loopIdle {
		return
	}
	p.mu.Lock()
	switch {
	case c.park.parked.Load():
		p.unparkLocked(c)
	case c.loop.st.Load() == loopBusy:
		c.loop.woken = true // the loop hands it over at its next step
	case c.loop.st.Load() == loopWaiting:
		p.handWaitingLocked(int(c.loop.bfd), c)
	case c.loop.st.Load() == loopQueued:
		p.handQueuedLocked(c)
	}
	p.mu.Unlock()
}

// tryPark parks the client, on its reader's goroutine, when the parker
// asked and nothing stands in the way; true means the caller must return
// errParked at once and touch c no more.
//
// hot says the client parks right after a request, for the loop (loop.go),
// not after idleParkAfter idle at the parker's request.
func (c *clientConn) tryPark(hot bool) bool {
	if !c.park.can || c.park.off.Load() {
		return false
	}
	if !hot {
		// The park request's wake-up is spent; a later wake-up sets a new one.
		c.idle.clearReadSignal(c.conn)
		c.loop.cold = 0 // idle a while: the loop tries its requests again
	}
	p := &c.srv.park
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.on {
		return false
	}
	c.park.parked.Store(true) // before the checks: see Ordering above
	if !c.parkableNow() {
		c.park.parked.Store(false)
		return false
	}
	c.loop.bufCache(c.srv).reclaimReadBuffer(&c.in)
	if err := p.os.add(c.park.fd); err != nil {
		c.park.parked.Store(false)
		c.park.off.Store(true)
		c.log.Warn("cannot park the idle client: it keeps its goroutine", "err", err)
		return false
	}
	if c.park.rtKey != 0 && !c.park.rtOut {
		c.park.rtOut = p.controlLocked(c.idle.raw, p.rtTake, c.park.rtKey)
	}
	p.byFd.set(c.park.fd, c)
	p.count.Add(1)
	// Every park counts, hot ones too (loop.go): a wave of logins that
	// each ran a query parks hot, and its garbage is what the release is
	// for; parks under steady load keep the parker from seeing a quiet
	// sweep, so no release runs then.
	p.parks++
	return true
}

// settledLocked reports whether nothing of the client is held, in flight
// or owed between it and a backend: no backend, no request awaiting a
// reply or open batch, no notification to deliver, no replay, pin, state
// check, probe, cancel or backpressure wait under way. Parking and the
// event loop's requests (loopableNow) both need it. Under c.mu.
func (c *clientConn) settledLocked() bool {
	return c.be == nil && c.exchange.q.len() == 0 && !c.exchange.inBatch && len(c.listen.notes) == 0 && !c.replay.pending &&
		c.state.pin == nil && c.state.checkWait == nil && c.stmts.probe == nil && c.exchange.cancels.n == 0 && c.reader.drained == nil
}

// parkableNow reports whether the client may park: nothing of it is in
// flight, buffered, held or owed, and it is not being told to go. It
// gives the request ring back to its pool when so. Under parker.mu, on
// the client reader's goroutine (tryPark) or the loop thread (loopPark).
func (c *clientConn) parkableNow() bool {
	if c.leave.reason() != nil || c.srv.draining.Load() {
		return false
	}
	if c.in.Start != c.in.End || !c.stream.settled() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := c.settledLocked()
	if ok {
		c.exchange.q.releaseRingLocked(c.loop.bufCache(c.srv))
	}
	return ok
}
