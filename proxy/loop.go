// loop: the event loop, the parker's thread relaying transaction mode's
// small requests itself and handing whatever could wait to a goroutine,
// with its queue per saturated pool and its reads and writes.

package proxy

import (
	"errors"
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// The event loop: transaction mode's common exchange, run on the parker's
// thread without a goroutine.
//
// A goroutine per client pays, for every request, the runtime's way of
// waiting: each read that finds nothing parks the goroutine, the
// netpoller wakes it on another thread, idle threads spin and sleep. That
// is most of the proxy's CPU per transaction (BENCHMARKS.md, the c406254
// run: "Where the gap is").
// So a parked client (park.go) is not handed a goroutine when its socket
// becomes readable: the parker's goroutine (the loop, locked to its
// thread) reads the request, takes an idle backend without waiting
// (pool.TryAcquireAt, on the loop's clock), runs the relay's own code on
// it (process, build, relayReplies: the same bookkeeping), writes it, and
// waits for the backend's reply in the same epoll set. When the reply is
// relayed and the backend released, the client is parked again. One
// thread, one epoll_wait for every ready socket, no wake-up of anyone.
//
// The loop never waits for anything but its epoll set. Whatever could
// wait is handed to a goroutine (loopHandOff: resume, which carries the
// session on from where the loop left it, see loopNext):
//   - a request that is not whole, or not small (loopMaxRequest), or of a
//     kind that may wait (COPY, a Terminate, LISTEN, a function call), or
//     a client that has something else pending (loopableNow);
//   - no idle backend while the pool has room to open one (only Acquire
//     opens backends); a pool at its size makes the request wait in the
//     loop's own FIFO for that pool instead (loopEnqueue, serveQueues),
//     up to loopQueueWait, then on a goroutine in the pool's queue. A
//     backend the loop releases goes to that queue once the epoll batch
//     is done (serveAfterBatch), and a request arriving while others wait
//     queues behind them;
//   - a backend with TLS (crypto/tls buffers records);
//   - a probe or a state check the request must wait for, backpressure;
//   - a client that does not take its reply at once: what a non-blocking
//     write leaves over goes to the goroutine, which writes it first;
//   - a reply slower than inlineWait (the goroutine then watches the
//     client too), a transaction left open, COPY, a cancel in flight;
//   - every wake-up (drain, timeouts, KILL, notifications): wake on a
//     client the loop waits for hands it over at once; on one the loop is
//     running, it marks it woken and the loop hands it over at the next
//     step.
//
// A client whose requests the loop keeps handing over (loopColdAfter in a
// row) stops parking after each request and keeps its goroutine, as
// before, until it parks after idleParkAfter idle: then the loop tries
// again.
//
// Ownership: a client is owned by exactly one of its goroutine, the parker
// (parked), or the loop thread (loopBusy, loopWaiting, loopQueued); the
// changes happen under parker.mu. Its socket is in the epoll set (edge
// triggered, park_linux.go) exactly while it is not its goroutine's; a
// backend's joins at the loop's first use and leaves when a goroutine
// takes it. Sockets are read and written through their RawConn, so
// a Close from another goroutine (kill, closeWith's sever) waits for the
// loop's system call instead of letting it touch a reused descriptor.

// The client's state in the loop (loopState.st).
const (
	loopIdle    int32 = iota // not the loop's: a goroutine runs it, or it is parked
	loopBusy                 // the loop thread runs it now
	loopWaiting              // the loop waits for its backend's reply (byBackend)
	loopQueued               // the loop waits for an idle backend for it (queues)
)

// loopMaxRequest is the largest request (all its messages) the loop
// builds: a small write always fits the socket buffers, so the loop's
// write to the backend never waits.
const loopMaxRequest = 8 << 10

// loopColdAfter is how many requests in a row the loop may hand over
// before the client stops parking after each request (see above).
const loopColdAfter = 3

// loopQueueWait is how long a request waits in the loop's queue for an
// idle backend before its client is handed to a goroutine, which waits in
// the pool's own queue (acquire_timeout, PAUSE, the errors): a pool
// answering within this time is one the loop keeps up with.
const loopQueueWait = 100 * time.Millisecond

// loopYieldEvery is how often the loop goroutine gives the Go scheduler
// a turn (yieldIfDue). The runtime's sysmon treats a goroutine that has
// run for forcePreemptNS (10 ms) without passing through the scheduler as
// one to preempt: the loop never does on its own, as it only makes system
// calls. So every 10 ms sysmon took the loop's P away in the middle of a
// system call, and each such take reset sysmon to polling every 20 µs for
// the next millisecond. Measured at 256 clients: sysmon woke 0.09-0.10
// times per transaction, 0.03 with the yield, and the loop thread was
// switched out 0.28-0.34 times per transaction, 0.22 with it; pgsidecar's
// CPU per transaction fell by 2-2.5 µs. A yield is not free: a locked
// goroutine's Gosched hands its P to another thread, which hands it back
// (startlockedm), two futex wake-ups. Unlocking the thread around the
// Gosched spares them (perf put the runtime's scheduling at 1.8% of
// pgsidecar's CPU instead of 3.5%, 16 clients), but costs more than it
// saves: the goroutine then moves between threads, and at 1 client the
// kernel moved the loop's thread to the other CPU at 0.5-1.8 of its
// wake-ups per transaction (perf stat cpu-migrations; PgBouncer 0.00):
// 32-46 µs of CPU per transaction against 27-31 locked, which moved 0.02
// times (lab, 11 rounds interleaved; at 16 and 64 clients, where the loop
// seldom sleeps, locked was no worse: 11.4-14.3 against 11.7-14.5). So
// the loop stays locked to its thread. Half of forcePreemptNS, so that
// sysmon, whose samples can be up to 10 ms apart, always sees a new
// scheduling tick. Each yield stops the loop for the two handoffs (170-220
// µs under load on a slow host); yielding every 9 ms, never, only when
// the loop has nothing ready, or unlocked measured no better
// (BENCHMARKS.md, the lab at 52594b6).
const loopYieldEvery = 5 * time.Millisecond

// loopRetry is how often the loop tries again for queued requests when it
// released no backend itself (one a goroutine released went to the idle
// list without a word to the loop).
const loopRetry = time.Millisecond

// errLoopWait and errLoopHandOff are what process returns on the loop
// thread instead of waiting: wait for the backend's reply in the loop, or
// hand the client to a goroutine (c.loop.hand says where it goes on).
var (
	errLoopWait    = errors.New("loop: wait for the reply")
	errLoopHandOff = errors.New("loop: hand over to a goroutine")
	errLoopQueue   = errors.New("loop: wait for an idle backend")
)

// loopNext is where the goroutine the loop hands a client to goes on.
type loopNext uint8

const (
	loopNextRead      loopNext = iota // read the client (run's loop)
	loopNextProcess                   // process what is buffered first
	loopNextAfterSend                 // the request is out: wait for its probe, or backpressure (afterSend)
	loopNextInline                    // read the backend's replies (relayInline)
)

// loopState is one client's part in the loop.
type loopState struct {
	st      atomic.Int32 // loopIdle, loopBusy, loopWaiting, loopQueued: changed under parker.mu
	running bool         // the loop thread runs the client (loop thread only)
	woken   bool         // a wake-up came while loopBusy (under parker.mu)
	more    bool         // the socket became readable while the loop had the client, not parked, or its end came with the request (onReady); under parker.mu
	cold    uint8        // requests in a row handed over (owner only)
	bfd     int32        // the backend descriptor waited on
	since   int64        // loopWaiting or loopQueued since (parker's clock, ns)
	hand    *loopHand    // set by the loop for the goroutine it hands the client to
}

// loopHand is what the goroutine a client is handed to does first.
type loopHand struct {
	next              loopNext
	err               error // end the session with this
	b                 *backend
	probe, readerDone chan struct{}
	out               []byte // client bytes a non-blocking write left over: written first
}

// loopOn reports whether the loop serves the client's requests: the
// client parks (plain TCP, transaction mode; the parker, which is the
// loop, runs).
func (ps *parkState) loopOn() bool {
	return ps.can
}

// hotPark reports whether the client should park right after a request
// (instead of after idleParkAfter idle): the loop serves its requests
// (loopOn, parkState's) and has not handed loopColdAfter of them over in
// a row.
func (ls *loopState) hotPark(loopOn bool) bool {
	return loopOn && ls.cold < loopColdAfter
}

// loopRequest is the loop's answer to a parked client's readable socket:
// it reads the request and relays it, or hands the client over. Loop
// thread, c in loopBusy.
func (p *parker) loopRequest(c *clientConn) {
	c.loop.running = true // until it gives the client up: loopPark, loopWait, loopEnqueue, loopHandOff
	p.cache.lendReadBuffer(&c.in)
	c.in.Prepare()
	if c.exchange.q.buf == nil {
		// The ring from the loop's cache, before a push takes one from
		// the sync.Pool (a parked client holds no backend: no backend
		// reader looks at c.exchange.q).
		c.mu.Lock()
		c.exchange.q.takeRingLocked(&p.cache)
		c.mu.Unlock()
	}
	n, err := p.rawRead(c.idle.raw, c.idle.signalled.Load(), c.in.Free())
	switch {
	case err == syscall.EAGAIN:
		p.cache.reclaimReadBuffer(&c.in)
		p.loopPark(c)
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		// A wake-up's read deadline (or a park request's) is set: the
		// goroutine's read sees it and deals with it, as run does.
		p.cache.reclaimReadBuffer(&c.in)
		p.loopHandOff(c, &loopHand{next: loopNextRead})
		return
	case err != nil:
		p.loopHandOff(c, &loopHand{err: err})
		return
	case n == 0:
		p.loopHandOff(c, &loopHand{err: io.EOF})
		return
	}
	c.in.End += n
	c.timeouts.reads.Add(1)
	// A read that filled the buffer may have left more behind, which edge
	// triggered readiness will not report: a goroutine reads on.
	if c.in.End == len(c.in.Buf) || !c.loopableNow() {
		c.loop.cold++
		p.loopHandOff(c, &loopHand{next: loopNextProcess})
		return
	}
	p.loopProcess(c)
}

// loopProcess runs process on the loop thread and acts on how it ended.
func (p *parker) loopProcess(c *clientConn) {
	err := c.process()
	if p.queuedFor == c {
		// serveQueues took a backend the request did not use after all.
		p.queuedConn.Release()
		p.queuedConn, p.queuedFor = pool.Conn{}, nil
	}
	switch err {
	case nil:
		p.loopPark(c)
	case errLoopWait:
		p.requests.Add(1)
		p.loopWait(c)
	case errLoopHandOff:
		p.loopHandOff(c, c.loop.hand)
	case errLoopQueue:
		p.loopEnqueue(c)
	default:
		p.loopHandOff(c, &loopHand{err: err})
	}
}

// loopableNow reports whether the client's buffer holds whole requests the
// loop can relay without waiting: every message whole and of a kind the
// common exchange has, the last one ending a request (Query or Sync), all
// of it small, no LISTEN the shared listener must confirm, and nothing
// else pending for the client.
func (c *clientConn) loopableNow() bool {
	if !c.stream.settled() || c.leave.reason() != nil || c.srv.draining.Load() {
		return false
	}
	buf := c.in.Buf[c.in.Start:c.in.End]
	if len(buf) > loopMaxRequest {
		return false
	}
	var last byte
	for len(buf) > 0 {
		if len(buf) < pgwire.HeaderLen {
			return false
		}
		typ, bodyLen := pgwire.ParseHeader(buf)
		if bodyLen < 0 || len(buf) < pgwire.HeaderLen+bodyLen {
			return false
		}
		switch typ {
		case pgwire.MsgQuery, pgwire.MsgParse:
			if c.hub != nil && containsFold(buf[pgwire.HeaderLen:pgwire.HeaderLen+bodyLen], "listen") {
				return false
			}
		case pgwire.MsgBind, pgwire.MsgDescribe, pgwire.MsgExecute, pgwire.MsgSync, pgwire.MsgClose:
		default:
			return false
		}
		last = typ
		buf = buf[pgwire.HeaderLen+bodyLen:]
	}
	if last != pgwire.MsgQuery && last != pgwire.MsgSync {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.settledLocked()
}

// loopAcquire is acquireForRequest on the loop thread: a backend now, or
// the client goes to a goroutine that waits for one.
func (p *parker) loopAcquire(c *clientConn) (*backend, error) {
	conn, fromQueue := p.queuedConn, p.queuedFor == c
	ok := fromQueue
	queued := 0 // requests in the loop's queue for c's pool
	if !fromQueue && p.queued.Load() > 0 {
		queued = p.queueLen(c.db.Pool)
	}
	if fromQueue {
		p.queuedConn, p.queuedFor = pool.Conn{}, nil // serveQueues took it for this request
	} else if queued > 0 {
		// Requests wait in the loop's queue for this pool: a backend
		// free now (one released in this batch, served at its end) is
		// theirs, oldest first, as in the pool's own queue and
		// PgBouncer's. This one waits behind them. Were the pool to have
		// room to grow meanwhile, they all go to goroutines, whose
		// Acquire opens backends, after loopQueueWait.
		return nil, p.enqueueOrRefuse(c, queued)
	} else {
		conn, ok = c.db.Pool.TryAcquireAt(p.clock)
	}
	if !ok {
		if !c.db.Pool.Busy() {
			// The pool can grow, or its idle backend on top is due for
			// validation, a peek or retirement: only Acquire opens,
			// validates or closes backends, so a goroutine does it, and
			// the client's next request is the loop's again.
			c.loop.hand = &loopHand{next: loopNextProcess}
			return nil, errLoopHandOff
		}
		// Saturated (every backend it may open is held or promised to a
		// waiter) or paused: the request waits in the loop's queue
		// (loopEnqueue), in order, or on a goroutine past loopQueueWait.
		// Nothing of it was consumed: process starts over when a backend
		// is free.
		return nil, p.enqueueOrRefuse(c, queued)
	}
	if c.srv.draining.Load() {
		conn.Release()
		c.loop.hand = &loopHand{next: loopNextProcess}
		return nil, errLoopHandOff
	}
	if fromQueue && p.loopSocketEvent(c) && c.idle.leftWhileWaiting(c.sock, c.log) {
		conn.Release() // untouched (clientgone.go)
		return nil, errClientGone
	}
	if fromQueue && c.wait.takeCanceled(&c.mu) {
		conn.Release() // untouched (waitcancel.go)
		return nil, errWaitCanceled
	}
	return c.takeBackend(conn), nil
}

// enqueueOrRefuse is loopAcquire's answer for a request that must wait:
// errLoopQueue (it joins the loop's queue), or the pool's 53300 when
// pool.max_waiters requests already wait for the pool, in the loop's
// queue and the pool's own together, so the request is refused at once,
// as Acquire refuses it, instead of after loopQueueWait in the loop's
// queue. queued is how many wait in the loop's queue for c's pool now.
// Loop thread.
func (p *parker) enqueueOrRefuse(c *clientConn, queued int) error {
	if qe := c.db.Pool.RefuseWaiter(queued); qe != nil {
		return qe
	}
	return errLoopQueue
}

// loopSocketEvent reports whether the client's socket became readable
// while the loop held the client (loop.more: more input, or the client
// closing). Loop thread.
func (p *parker) loopSocketEvent(c *clientConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return c.loop.more
}

// afterSend is clientConn.afterSend on the loop thread: the loop waits for
// the reply of an inline request itself (errLoopWait); anything else goes
// on a goroutine (errLoopHandOff), which starts where ls.hand says.
func (ls *loopState) afterSend(b *backend, inline bool, probe, readerDone chan struct{}) error {
	if inline && probe == nil {
		return errLoopWait
	}
	ls.hand = &loopHand{next: loopNextAfterSend, b: b, probe: probe, readerDone: readerDone}
	if inline {
		ls.hand.next = loopNextInline
	}
	return errLoopHandOff
}

// loopWait waits, in the loop's epoll set, for the reply of the request
// the client just sent to its backend; or hands the client over where
// the loop cannot (a backend without a descriptor of its own, more client
// input buffered, bytes owed to the client, a wake-up).
func (p *parker) loopWait(c *clientConn) {
	c.mu.Lock()
	b := c.be
	c.mu.Unlock()
	if b == nil {
		p.loopHandOff(c, &loopHand{next: loopNextProcess})
		return
	}
	if b.raw == nil || c.in.Start != c.in.End || c.loop.owes() {
		p.loopHandOff(c, &loopHand{next: loopNextInline, b: b})
		return
	}
	p.mu.Lock()
	if c.loop.woken {
		p.mu.Unlock()
		p.loopHandOff(c, &loopHand{next: loopNextInline, b: b})
		return
	}
	if !b.inLoopSet.Load() {
		if err := p.os.add(b.fd); err != nil {
			p.mu.Unlock()
			p.loopHandOff(c, &loopHand{next: loopNextInline, b: b})
			return
		}
		b.inLoopSet.Store(true)
	}
	if b.rtKey != 0 && !b.rtOut.Load() {
		b.rtOut.Store(p.controlLocked(b.raw, p.rtTake, b.rtKey))
	}
	c.loop.bfd, c.loop.since = int32(b.fd), p.now
	c.loop.running = false
	p.byBackend.set(b.fd, c)
	p.waitingN.Add(1)
	c.loop.st.Store(loopWaiting)
	p.mu.Unlock()
}

// loopReply is the loop's answer to readiness of the backend a client
// waits on: it relays what the backend sent, as relayInline does, and
// parks the client once its backend is released. Loop thread, c in
// loopBusy.
func (p *parker) loopReply(c *clientConn) {
	c.loop.running = true // until it gives the client up: loopPark, loopWait, loopHandOff
	c.mu.Lock()
	b := c.be
	c.mu.Unlock()
	if b == nil || int32(b.fd) != c.loop.bfd {
		p.loopHandOff(c, &loopHand{next: loopNextProcess})
		return
	}
again:
	b.in.Prepare()
	free := len(b.in.Free())
	n, rerr := p.rawRead(b.raw, b.deadline.Load(), b.in.Free())
	switch {
	case rerr == syscall.EAGAIN:
		p.loopWait(c) // nothing yet (a stale readiness): wait on
		return
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		// A wake-up's deadline on b (the asynchronous path's signal):
		// relayInline deals with it.
		p.loopHandOff(c, &loopHand{next: loopNextInline, b: b})
		return
	case rerr == nil && n == 0:
		rerr = io.EOF
	case rerr == nil:
		b.in.End += n
	}
	stop, err := c.relayReplies(b, rerr, true)
	if err != nil {
		p.loopHandOff(c, &loopHand{err: err})
		return
	}
	if stop {
		// Released, or handed over for a replay: the goroutine's
		// process sends it again.
		p.loopPark(c)
		if p.queued.Load() > 0 {
			// The backend just released serves the oldest queued
			// request once the batch is done (serveAfterBatch).
			p.serveAfterBatch = true
		}
		return
	}
	c.mu.Lock()
	more := c.be == b && !c.reader.copyIn && c.exchange.q.len() > 0 && (!c.exchange.inBatch || c.stmts.probe != nil)
	c.mu.Unlock()
	if more {
		if n == free && !c.loop.owes() {
			// The read filled the buffer: more may be there, and edge
			// triggered readiness says nothing of what was already. (A
			// client that did not take the last write is handed over
			// instead, by loopWait: reading on would buffer the reply.)
			goto again
		}
		p.loopWait(c)
		return
	}
	// A transaction left open (or a pin, COPY, a cancel in flight): the
	// client holds b between its requests; relayInline knows what to do.
	c.loop.cold++
	p.loopHandOff(c, &loopHand{next: loopNextInline, b: b})
}

// loopEnqueue puts the client at the end of the loop's queue for its pool
// (FIFO; serveQueues takes it from the front). Loop thread, c in loopBusy.
func (p *parker) loopEnqueue(c *clientConn) {
	if c.loop.owes() {
		p.loopHandOff(c, c.loop.hand)
		return
	}
	p.mu.Lock()
	if c.loop.woken || !p.on {
		p.mu.Unlock()
		p.loopHandOff(c, &loopHand{next: loopNextProcess})
		return
	}
	c.loop.running = false
	c.loop.since = p.now
	q := p.queues[c.db.Pool]
	if q == nil {
		q = &loopQueue{}
		pl := c.db.Pool
		p.queues[pl] = q
		// A goroutine's Acquire counts this queue against max_waiters,
		// as the loop counts the pool's (enqueueOrRefuse): it asks the
		// queue itself, so no count can drift from it.
		pl.CountWaitingElsewhere(func() int { return p.queueLen(pl) })
	}
	q.list = append(q.list, c)
	p.queued.Add(1)
	c.loop.st.Store(loopQueued)
	c.srv.stats.waiting.Add(1)
	p.mu.Unlock()
}

// loopQueue is the loop's FIFO of requests waiting for an idle backend
// of one pool.
type loopQueue struct {
	list []*clientConn
}

// popLocked takes the oldest client out of q. Under p.mu.
func (q *loopQueue) popLocked() { q.removeAtLocked(0) }

// removeLocked takes c out of q (a wake-up hands it over). Under p.mu.
func (q *loopQueue) removeLocked(c *clientConn) {
	for i, x := range q.list {
		if x == c {
			q.removeAtLocked(i)
			return
		}
	}
}

// removeAtLocked takes the i-th client out of q, keeping the order and
// the backing array (no client stays reachable from it). Under p.mu.
func (q *loopQueue) removeAtLocked(i int) {
	copy(q.list[i:], q.list[i+1:])
	q.list[len(q.list)-1] = nil
	q.list = q.list[:len(q.list)-1]
}

// queueLen is how many requests wait in the loop's queue for pl. The loop
// thread, and pl's Acquire on any goroutine (CountWaitingElsewhere): it
// takes p.mu, which no caller into the pool holds.
func (p *parker) queueLen(pl *pool.Pool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if q := p.queues[pl]; q != nil {
		return len(q.list)
	}
	return 0
}

// serveQueues gives idle backends to queued requests, oldest first per
// pool, for as long as TryAcquire finds one. Loop thread.
func (p *parker) serveQueues() {
	p.lastTry = p.now
	for pl, q := range p.queues {
		for {
			p.mu.Lock()
			if len(q.list) == 0 {
				p.mu.Unlock()
				break
			}
			c := q.list[0]
			p.mu.Unlock()
			conn, ok := pl.TryAcquireAt(p.clock) // not under p.mu: the pool's lock is never taken inside it
			if !ok {
				break
			}
			p.mu.Lock()
			if len(q.list) == 0 || q.list[0] != c {
				// Handed over meanwhile (a wake-up): the next one.
				p.mu.Unlock()
				conn.Release()
				continue
			}
			q.popLocked()
			p.queued.Add(-1)
			c.loop.st.Store(loopBusy)
			c.srv.stats.waiting.Add(-1)
			p.mu.Unlock()
			c.loop.running = true
			p.queuedConn, p.queuedFor = conn, c
			p.loopProcess(c)
		}
	}
}

// handQueuedLocked gives a queued client to a goroutine, which waits for
// a backend in the pool's own queue. Under p.mu.
func (p *parker) handQueuedLocked(c *clientConn) {
	if q := p.queues[c.db.Pool]; q != nil {
		q.removeLocked(c)
	}
	p.queued.Add(-1)
	p.handoffs.Add(1)
	c.srv.stats.waiting.Add(-1)
	c.loop.hand = &loopHand{next: loopNextProcess}
	p.handOverLocked(c)
	go c.srv.resume(c) // as loopHandOff
}

// owes reports whether a non-blocking write to the client left bytes
// over (they go to the goroutine the client is handed to, in hand.out).
func (ls *loopState) owes() bool {
	return ls.hand != nil && len(ls.hand.out) > 0
}

// loopPark parks the client again after the loop served it (its socket
// never left the epoll set). Where it may not park (something pending: a
// replay, notifications, a wake-up, more input that came meanwhile), a
// goroutine takes it.
func (p *parker) loopPark(c *clientConn) {
	if c.loop.owes() {
		c.loop.hand.next = loopNextProcess
		p.loopHandOff(c, c.loop.hand)
		return
	}
	c.loop.cold = 0
	p.mu.Lock()
	if !c.loop.woken && !c.loop.more && p.on && c.in.Start == c.in.End && p.byFd.get(c.park.fd) == c {
		c.park.parked.Store(true) // before the checks: see park.go, Ordering
		if c.parkableNow() {
			p.cache.reclaimReadBuffer(&c.in)
			c.loop.running = false
			c.loop.st.Store(loopIdle)
			p.count.Add(1)
			p.parks++ // see tryPark
			p.mu.Unlock()
			return
		}
		c.park.parked.Store(false)
	}
	p.mu.Unlock()
	p.loopHandOff(c, &loopHand{next: loopNextProcess})
}

// loopHandOff gives the client a goroutine (resume), which first does
// what h says. Loop thread, c in loopBusy.
func (p *parker) loopHandOff(c *clientConn, h *loopHand) {
	if hook := c.srv.cfg.beforeLoopHandOff; hook != nil {
		hook()
	}
	if h == nil {
		h = &loopHand{next: loopNextProcess}
	}
	if c.loop.owes() && h != c.loop.hand {
		h.out = c.loop.hand.out // the client's bytes go first, whatever comes next
	}
	c.loop.hand = h
	c.loop.running = false
	p.handoffs.Add(1)
	p.mu.Lock()
	p.handOverLocked(c)
	c.loop.woken = false
	p.mu.Unlock()
	go c.srv.resume(c) // ends when the client leaves or parks again; it holds the client's s.wg count
}

// loopResume is where a goroutine handed a client by the loop starts:
// it writes what the loop owed the client, then does what the loop could
// not. done says the caller (run) returns err; else it reads on.
func (c *clientConn) loopResume() (done bool, err error) {
	h := c.loop.hand
	c.loop.hand = nil
	if h == nil {
		return false, nil
	}
	if len(h.out) > 0 {
		if err := c.writeClient(h.out); err != nil {
			return true, err
		}
	}
	if h.err != nil {
		return true, h.err
	}
	switch h.next {
	case loopNextProcess:
		return false, c.process()
	case loopNextAfterSend:
		if stop, err := c.afterSend(h.b, false, h.probe, h.readerDone); err != nil || stop {
			return err != nil, err
		}
		return false, c.process()
	case loopNextInline:
		if err := c.relayInline(h.b); err != nil {
			return true, err
		}
		return false, c.process()
	}
	return false, nil
}

// writeBackend writes a request to b: through b's net.Conn (its
// deadlines, TLS), or on the loop thread, for a backend with a socket of
// its own, straight to the socket (loopSend). The loop only builds
// requests of up to loopMaxRequest, which an idle backend's socket always
// takes at once; if it did not, the rest is not written and the error
// (EAGAIN) ends the backend like any failed write: the net.Conn's write
// would have waited on the runtime's poller, which the loop's backend
// sockets are out of.
//
// ls says whether the loop thread runs the client (running); p is the
// parker, whose raw I/O the loop's write goes through.
func (ls *loopState) writeBackend(p *parker, b *backend, out []byte) error {
	if ls.running && b.raw != nil {
		_, err := p.rawWrite(b.raw, out)
		return err
	}
	_, err := b.nc.Write(out)
	return err
}

// writeClientBlocking writes p to the client through its net.Conn,
// under c.wmu: the client's goroutine's write, and the only one a backend
// reader makes (it never reads c.loop.running, the loop thread's).
func (c *clientConn) writeClientBlocking(p []byte) error {
	c.wmu.Lock()
	_, err := c.conn.Write(p)
	c.wmu.Unlock()
	return err
}

// writeClient writes p to the client: a blocking write on the client's
// goroutine; on the loop thread one that never waits, leaving what the
// socket does not take to the goroutine the client is then handed to
// (loopState.owes), which writes it before anything else. Both hold c.wmu, so
// they come after a backend reader's last write of the previous
// transaction (replyAndRelease); the loop does not wait for it, it hands
// the client over as if the socket were full.
func (c *clientConn) writeClient(p []byte) error {
	if !c.loop.running {
		return c.writeClientBlocking(p)
	}
	if c.loop.owes() {
		c.loop.hand.out = append(c.loop.hand.out, p...)
		return nil
	}
	var n int
	var err error
	if c.wmu.TryLock() {
		n, err = c.srv.park.rawWrite(c.idle.raw, p)
		c.wmu.Unlock()
	}
	if err != nil && err != syscall.EAGAIN {
		return err
	}
	if n < len(p) {
		if c.loop.hand == nil {
			c.loop.hand = &loopHand{next: loopNextProcess}
		}
		c.loop.hand.out = append(c.loop.hand.out[:0], p[n:]...)
	}
	return nil
}

// loopScan hands over clients whose reply took longer than inlineWait:
// their goroutine watches the client too (relayInline, then a backend
// reader), so a client that leaves during a slow query is seen. Loop
// thread.
func (p *parker) loopScan() {
	if p.waitingN.Load() == 0 && p.queued.Load() == 0 {
		return
	}
	old := p.now - int64(inlineWait)
	p.mu.Lock()
	for fd, c := range p.byBackend.slot {
		if c != nil && c.loop.since <= old {
			p.handWaitingLocked(fd, c)
		}
	}
	// Queued requests past loopQueueWait wait on goroutines, in the pool.
	oldQ := p.now - int64(p.queueWait)
	for pl, q := range p.queues {
		for len(q.list) > 0 && q.list[0].loop.since <= oldQ {
			p.handQueuedLocked(q.list[0])
		}
		if len(q.list) == 0 {
			delete(p.queues, pl)
		}
	}
	p.mu.Unlock()
}

// handWaitingLocked gives a client the loop waits for a goroutine that
// reads its backend's reply itself (relayInline). Under p.mu.
func (p *parker) handWaitingLocked(fd int, c *clientConn) {
	p.byBackend.del(fd)
	p.waitingN.Add(-1)
	p.handoffs.Add(1)
	c.mu.Lock()
	b := c.be
	c.mu.Unlock()
	c.loop.hand = &loopHand{next: loopNextInline, b: b}
	p.handOverLocked(c)
	go c.srv.resume(c) // as loopHandOff
}

// handOverLocked ends the loop's ownership of c before a goroutine takes
// it: its socket leaves the set (the goroutine reads it), and so does its
// backend's, if it holds one (the goroutine reads that too). Under p.mu.
func (p *parker) handOverLocked(c *clientConn) {
	p.leaveSetLocked(c)
	c.loop.more = false
	c.mu.Lock()
	b := c.be
	c.mu.Unlock()
	if b != nil {
		p.unwatchLocked(b)
	}
	c.loop.st.Store(loopIdle)
}

// unwatchLocked takes a backend's socket out of the set: a goroutine
// reads it now, and each reply would wake the loop for nothing. Under
// p.mu.
func (p *parker) unwatchLocked(b *backend) {
	if b.inLoopSet.Load() {
		_ = p.os.del(b.fd)
		b.inLoopSet.Store(false)
	}
	p.giveBackendLocked(b)
}

// giveBackendLocked puts b's socket back into the Go runtime's poller if
// the loop took it out: a goroutine, the client's or the pool's, may wait
// on it next. A socket the kernel refuses to take back is closed (its
// reader sees the backend fail). Under p.mu.
func (p *parker) giveBackendLocked(b *backend) {
	if !b.rtOut.Load() {
		return
	}
	b.rtOut.Store(false)
	if !p.controlLocked(b.raw, p.rtGive, b.rtKey) {
		b.nc.Close()
	}
}

// backendReady is the loop's answer to readiness of fd, a backend a
// client may wait on.
func (p *parker) backendReady(fd int) bool {
	p.mu.Lock()
	c := p.byBackend.get(fd)
	if c == nil {
		p.mu.Unlock()
		return false
	}
	p.byBackend.del(fd)
	p.waitingN.Add(-1)
	c.loop.st.Store(loopBusy)
	c.loop.woken = false
	p.mu.Unlock()
	p.loopReply(c)
	return true
}

// The loop's socket I/O goes through RawConn.Control, not RawConn.Read
// and Write. All three hold the descriptor open for the call, so a Close
// from another goroutine (kill, closeWith, a severed client) can never
// make the loop read or write a reused descriptor, and a closed socket
// fails the call (net.ErrClosed). Read and Write add, at each of the
// loop's 4 socket calls per transaction, what the loop does not need: a
// lock against other readers or writers (while the loop owns a socket
// nobody else reads it; writes to a client are ordered by c.wmu, and
// nobody else writes to the loop's backend), and the runtime's deadline
// check, which the relay uses as a wake-up signal (together about 0.3 µs
// per transaction, 3% of pgsidecar's CPU at 16 clients: lab, 4 rounds
// interleaved). The signal is kept: a socket that may have a read
// deadline (the client's idle.signalled, the backend's deadline) is read
// through RawConn.Read, which sees it as before. Write deadlines are set
// only on a client that is being ended (closeWith, a lost backend), which
// the loop hands over or finds closed.

// rawRead reads once into buf from a socket, never waiting (EAGAIN when
// there is nothing). signalled says a read deadline may be set on it: it
// is then read through RawConn.Read, which returns os.ErrDeadlineExceeded
// when the deadline has passed. Loop thread.
func (p *parker) rawRead(rc rawConn, signalled bool, buf []byte) (int, error) {
	p.ioBuf, p.ioN, p.ioErr = buf, 0, nil
	var err error
	if signalled {
		err = rc.Read(p.readFn)
	} else {
		err = rc.Control(p.controlReadFn)
	}
	if err != nil {
		return 0, err
	}
	return p.ioN, p.ioErr
}

// rawWrite writes buf once to a socket, never waiting: it returns how
// much the socket took. Loop thread.
func (p *parker) rawWrite(rc rawConn, buf []byte) (int, error) {
	p.ioBuf, p.ioN, p.ioErr = buf, 0, nil
	if err := rc.Control(p.writeFn); err != nil {
		return 0, err
	}
	return p.ioN, p.ioErr
}

// readOnce is RawConn.Read's callback: readInto, done.
func (p *parker) readOnce(fd uintptr) bool {
	p.readInto(fd)
	return true
}

func (p *parker) readInto(fd uintptr) {
	for {
		n, err := loopRecv(fd, p.ioBuf)
		if err == syscall.EINTR {
			continue
		}
		p.ioN, p.ioErr = max(n, 0), err
		return
	}
}

func (p *parker) writeAll(fd uintptr) {
	for len(p.ioBuf) > 0 {
		n, err := loopSend(fd, p.ioBuf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			p.ioErr = err
			return
		}
		p.ioN += n
		p.ioBuf = p.ioBuf[n:]
	}
}

// rawConn is the part of syscall.RawConn the loop uses.
type rawConn interface {
	Control(func(fd uintptr)) error
	Read(func(fd uintptr) bool) error
}

// now is the time for the client's bookkeeping: on the loop thread
// (running) the loop's clock, p's (readClock), at most a batch of events
// old, elsewhere time.Now().
func (ls *loopState) now(p *parker) time.Time {
	if ls.running {
		return p.clock
	}
	return time.Now()
}

// readClock reads the loop's clock: once per batch of events, which
// spares each request the two clock reads of each time.Now the pool
// would otherwise make to stamp a hold's start and end (TryAcquireAt,
// ReleaseAt). Loop thread.
func (p *parker) readClock(now time.Time) {
	p.clock, p.now = now, now.UnixNano()
}

// loopFields is the parker's part in the loop.
type loopFields struct {
	// Stats.LoopRequests and LoopHandoffs: requests the loop sent to a
	// backend itself, and those it handed to a goroutine.
	requests, handoffs atomic.Uint64
	byBackend          fdTable // loopWaiting clients by backend descriptor (under mu)
	// clock: the time at the loop's last wake-up, at the first event of
	// a batch (readClock), at most a batch old; now is its UnixNano.
	// Loop thread.
	clock      time.Time
	now        int64
	clockStale bool // clock predates the epoll_wait under way (loop thread)
	lastScan   int64
	// queues: requests waiting for an idle backend, per pool (loopEnqueue,
	// serveQueues); queued counts them. Under mu.
	queues   map[*pool.Pool]*loopQueue
	queued   atomic.Int32 // len of every queue (written under mu)
	waitingN atomic.Int32 // len(byBackend) (written under mu)
	lastTry  int64        // serveQueues' last run (loop thread)
	// serveAfterBatch: the loop released a backend in this epoll batch
	// while requests were queued; serveQueues runs when the batch is done
	// (loop thread). As PgBouncer hands freed servers to waiting clients
	// once per loop (per_loop_activate): every reply of the batch reaches
	// its client first, in one burst, and the requests for the freed
	// backends then go out together. Serving each at its release instead
	// interleaved those writes: at 256 clients pgbench then woke 0.20-0.23
	// times per transaction against 0.13-0.17 now (PgBouncer 0.15-0.18),
	// and spent 1-1.5 µs more per transaction polling its sockets (lab).
	serveAfterBatch bool
	// lastYield: yieldIfDue's last runtime.Gosched (loop thread); yields
	// counts them (tests).
	lastYield int64
	yields    atomic.Uint64
	// queuedConn: the backend serveQueues took for queuedFor's request,
	// which loopAcquire hands it (loop thread only).
	queuedConn pool.Conn
	queuedFor  *clientConn
	// cache: the loop thread's free lists (loopcache.go); tail: the
	// copy of a reply's last bytes replyAndRelease makes on the loop
	// thread.
	cache loopCache
	tail  [clientReadBufSize]byte
	// queueWait is loopQueueWait (a field so tests can shorten it before
	// the first client).
	queueWait time.Duration
	// The loop thread's raw I/O: the callbacks, made once (a method value
	// passed on would allocate), and their arguments and results.
	readFn                 func(fd uintptr) bool
	controlReadFn, writeFn func(fd uintptr)
	ioBuf                  []byte
	ioN                    int
	ioErr                  error
}

func (p *parker) initLoop() {
	p.queues = make(map[*pool.Pool]*loopQueue)
	p.queueWait = loopQueueWait
	p.readFn, p.controlReadFn, p.writeFn = p.readOnce, p.readInto, p.writeAll
}

// yieldIfDue lets the loop goroutine through the Go scheduler once every
// loopYieldEvery (see there). Loop thread, between events: the loop owns
// nothing another goroutine waits for across the yield, and a wake-up
// that comes meanwhile finds the client where it left it.
func (p *parker) yieldIfDue() {
	if p.now-p.lastYield < int64(loopYieldEvery) {
		return
	}
	p.lastYield = p.now
	p.yields.Add(1)
	// Locked: see loopYieldEvery for why the thread is not let go.
	runtime.Gosched()
}
