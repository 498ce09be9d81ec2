// relay_server.go: the replies' side of the relay: reading a backend
// (relayInline, or a backendReader), routing its replies to the client,
// and letting the backend go (release at transaction end, destroy,
// backendLost, and finish when the client leaves).

package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// errLostTrack means the server sent a reply the proxy did not expect: its
// bookkeeping no longer matches the server, so the backend is closed.
var errLostTrack = errors.New("server reply does not match the requests sent")

// The replies of a backend are read by one of two readers (see doc.go):
//
//   - inline (relayInline), by the client goroutine itself, right after it
//     wrote a request the backend answers without further client input:
//     the common request/response exchange of transaction mode. No
//     goroutine is started and nobody has to be woken: the goroutine that
//     wrote the request reads the reply, writes it to the client and gives
//     the backend back.
//   - asynchronously (backendReader), by a goroutine of its own, where the
//     client may send more while replies arrive: COPY FROM STDIN, a client
//     pipelining past one read or leaving an extended-protocol batch open,
//     a write too large to be sure the backend reads it while it answers,
//     and session mode (a held backend's notifications and notices reach
//     an idle client). Once started it serves the backend until it is
//     released, lost, or finish stops it.
//
// Both route through relayReplies, so the bookkeeping is the same.

// inlineWriteMax is the largest write after which the client goroutine
// reads the backend's replies itself. The backend was quiet before the
// write (nothing was outstanding); a write this small fits the socket
// buffers even if the backend, answering the first requests of it, stops
// reading until its replies are read. Larger writes go with the server
// reader running, so that the proxy and the backend can never both block
// writing to each other.
const inlineWriteMax = 32 << 10

// errBackendLost means the client's backend failed under it; the client
// was told (backendLost) and is closed.
var errBackendLost = errors.New("server connection lost")

// backendReader is the backend reader: it reads backend b, routes each reply
// (forward, swallow, or add the proxy's own), writes to the client, and
// gives b back to the pool when the client's transaction is over.
func (c *clientConn) backendReader(b *backend, done chan struct{}) {
	defer close(done)
	nc := b.nc
	for {
		b.in.Prepare()
		n, err := nc.Read(b.in.Free())
		b.in.End += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				// Unless the request may go to another backend (replay.go).
				c.mu.Lock()
				armed := c.replay.armed && c.be == b
				c.mu.Unlock()
				if !armed {
					c.backendLost(b, err)
					return
				}
			} else {
				// A wake-up: the client reader queued replies of the proxy's
				// own, wants the backend back, or the client is gone.
				nc.SetReadDeadline(time.Time{})
			}
		}
		if stop, _ := c.relayReplies(b, err, false); stop {
			return
		}
	}
}

// relayInline is the client goroutine reading backend b's replies itself
// after writing a request (see planRelay): it routes them to the
// client until nothing it sent is outstanding, gives b back when the
// transaction is over, and returns to reading the client. It hands b to a
// backend reader instead when the backend starts waiting for client input
// (COPY FROM STDIN).
func (c *clientConn) relayInline(b *backend) error {
	c.mu.Lock()
	c.reader.inline = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.reader.inline = false
		c.mu.Unlock()
	}()
	// closeWith and kill close b's socket while c.reader.inline is set (a Close is
	// the only honest way to end a blocked read); a reason set before that
	// is seen here.
	if err := c.leave.reason(); err != nil {
		return err
	}
	var readErr error
	var dl inlineDeadline
	for {
		stop, err := c.relayReplies(b, readErr, true)
		if err != nil {
			return err
		}
		if stop {
			// Released (or handed over for a replay): notifications that
			// waited for the end of the transaction go out now.
			return c.flushNotes()
		}
		c.mu.Lock()
		next, cancelsDone := c.inlineNextLocked(b, &dl)
		c.mu.Unlock()
		switch next {
		case inlineReturn:
			return nil
		case inlineAwaitCancels:
			select {
			case <-cancelsDone:
			case <-c.ctx.Done():
				return c.leave.reason()
			}
			readErr = nil
			continue
		}
		b.in.Prepare()
		n, rerr := b.nc.Read(b.in.Free())
		b.in.End += n
		if rerr != nil {
			if err := c.leave.reason(); err != nil {
				return err
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				b.nc.SetReadDeadline(time.Time{})
				c.mu.Lock()
				if c.be == b && !c.reader.async {
					c.startReaderLocked(b)
				}
				c.mu.Unlock()
				return nil
			}
		}
		readErr = rerr
	}
}

// inlineNext is what relayInline does once relayReplies routed what b
// sent and b is still held.
type inlineNext uint8

const (
	inlineRead         inlineNext = iota // read b on: it answers without more client input
	inlineReturn                         // back to the client: b is not its any more, a backend reader has it now, or it waits for client input
	inlineAwaitCancels                   // wait for the cancel requests being sent to b, then look again
)

// inlineNextLocked decides relayInline's next step on b (see inlineNext),
// and hands b to a backend reader where only one can wait on it: the
// backend waits for COPY data, or the client goes idle holding b. dl is
// relayInline's read deadline on b, set before it reads on and cleared
// before it leaves b. cancelsDone is closed when the cancel requests being
// sent to b are done (inlineAwaitCancels). Under c.mu.
func (c *clientConn) inlineNextLocked(b *backend, dl *inlineDeadline) (next inlineNext, cancelsDone chan struct{}) {
	if c.be != b {
		return inlineReturn, nil
	}
	if c.reader.copyIn {
		// The backend waits for COPY data: the client sends it while a
		// backend reader watches the backend for its verdict.
		dl.clear(b)
		c.startReaderLocked(b)
		return inlineReturn, nil
	}
	if c.exchange.q.len() == 0 && c.exchange.cancels.n > 0 && !c.exchange.inBatch && c.exchange.txStatus == 'I' {
		// Over, but a cancel request is still being sent to b: it is
		// released once that is done (serverOpTimeout bounds it).
		return inlineAwaitCancels, c.exchange.cancels.done
	}
	// Read on while the backend answers without more client input:
	// requests are outstanding and the last ends in Sync (or a
	// Query), or a probe's Describe ends in Flush.
	if more := c.exchange.q.len() > 0 && (!c.exchange.inBatch || c.stmts.probe != nil); !more {
		dl.clear(b)
		if c.in.Start == c.in.End {
			// The client goes idle holding b (a transaction is open, or
			// it is pinned): the backend may still speak (a FATAL from
			// pg_terminate_backend, idle_in_transaction_session_timeout),
			// and the client must hear it as it would directly. Only a
			// goroutine of its own can wait on b while this one waits on
			// the client.
			c.startReaderLocked(b)
		}
		return inlineReturn, nil
	}
	// While this goroutine waits on b it does not see the client: past
	// inlineWait it hands b to a backend reader and goes back to the
	// client (which may have left, or be pipelining more). A time limit
	// of this read, not a signal from anyone.
	dl.set(b)
	return inlineRead, nil
}

// inlineDeadline is relayInline's read deadline on b (inlineWait), and
// whether it is set.
type inlineDeadline struct {
	on bool
}

// set sets the deadline inlineWait from now, unless it is set already.
func (d *inlineDeadline) set(b *backend) {
	if !d.on {
		d.on = true
		b.setReadDeadline(time.Now().Add(inlineWait))
	}
}

// clear clears the deadline if it is set. b is still the client's.
func (d *inlineDeadline) clear(b *backend) {
	if d.on {
		b.nc.SetReadDeadline(time.Time{})
		d.on = false
	}
}

// inlineWait is how long the client goroutine waits for a backend's reply
// itself (relayInline) before a backend reader takes over: a slow statement
// does not keep the proxy from seeing the client leave (its query is then
// cancelled and the backend closed, see finish), and a goroutine started
// after this long costs nothing that matters.
const inlineWait = 100 * time.Millisecond

// startReaderLocked starts the backend reader on b, which the client holds.
// Under c.mu.
func (c *clientConn) startReaderLocked(b *backend) {
	done := make(chan struct{})
	c.reader.done, c.reader.async, c.reader.stop = done, true, false
	go c.backendReader(b, done) // ends when b is released or lost, or finish stops it
}

// relayReplies routes what b sent (readErr: the read's error, nil when
// nothing new was read), writes the client's bytes and any request of the
// proxy's own, and gives b back when the transaction is over. inline says
// the client's own side reads b: its goroutine (relayInline) or the loop
// thread (loopReply), not a backend reader. stop says the reader must stop: b
// was released, lost, or abandoned for a replay; err (inline only) ends
// the client.
func (c *clientConn) relayReplies(b *backend, readErr error, inline bool) (stop bool, err error) {
	nc := b.nc
	c.mu.Lock()
	if route, stop, err := c.beforeRouteLocked(b, readErr, inline); !route {
		return stop, err // c.mu was let go
	}
	out, release, rerr := c.routeLocked(b)
	// diedBetween: b's FATAL came between the client's transactions
	// (routeOneLocked). b is let go of now, before the client reader
	// can write it another request, and closed once the replies before
	// the FATAL are the client's: the client goes on as if b had been
	// released. Not while the client reader is still in a write to b: it
	// must find b its own when it comes back; then b's end is seen as a
	// loss (backendLost).
	ended := rerr == nil && b.diedBetween && c.be == b && !c.exchange.writing
	if ended {
		c.dropBackendLocked()
		c.stmts.endProbe()
		c.state.endCheck()
	}
	if rerr == nil && !release && !inline && c.exchange.writing {
		release = c.awaitWriteLocked(b)
	}
	if len(out) > 0 {
		c.replay.armed = false // the client has part of the reply: no replay now
	}
	c.reader.wakeDrainedLocked(c.exchange.q.len())
	var send []byte
	if rerr == nil && c.exchange.idleLocked(c.policy, b) {
		// The transaction is over and nothing is in flight on b: ask the
		// server about session state if the client's traffic may have
		// touched it (send, the proxy's own Query to write to b now; b
		// stays held until it is answered); with none, b is still idle
		// and the shared listener's queued notifications go after the
		// ReadyForQuery.
		if send = c.state.afterTransaction(&c.listen, c.params.want, b, &c.exchange.q); send != nil {
			release = false
		} else if len(c.listen.notes) > 0 {
			out = c.listen.appendNotes(b, out)
		}
	}
	late := c.listen.takeLate()
	c.mu.Unlock()
	if len(late) > 0 {
		c.hub.listenLate(c, late)
	}
	if rerr != nil {
		c.backendLost(b, rerr)
		return lostReply(inline)
	}
	if send != nil {
		if _, err := nc.Write(send); err != nil {
			c.mu.Lock()
			stopping := c.reader.stop
			c.mu.Unlock()
			if stopping { // finish closes it: its request is in flight
				return true, nil
			}
			c.backendLost(b, fmt.Errorf("writing to the server: %w", err))
			return lostReply(inline)
		}
	}
	if ended {
		if len(out) > 0 {
			stop, err = c.reply(out, inline)
		}
		c.destroyBackend(b, "ended by the server between the client's transactions")
		c.log.Info("server connection ended by the server between the client's transactions: closed; the client goes on")
		if stop {
			return stop, err
		}
		return true, nil // as released
	}
	b.reportBusy()
	if release {
		return c.replyAndRelease(b, out, inline)
	}
	if len(out) > 0 {
		if stop, err := c.reply(out, inline); stop {
			return stop, err
		}
	}
	// A huge reply grew the buffers: in session mode the backend may
	// stay with this client for hours, so give the memory back now.
	b.shrinkReplyBuffers()
	return false, nil
}

// beforeRouteLocked is relayReplies' look at a read of b (readErr: its
// error) before anything in it is routed. It runs under c.mu; route says
// relayReplies goes on, c.mu still held. Otherwise it has let c.mu go and
// stop and err are relayReplies' answer: the reader was told to stop, or
// b was abandoned for a replay; kill or closeWith closed b's socket; the
// first reply of a request kept for a replay says b died before
// answering, or is not whole yet (read on); or the read failed and b is
// lost (backendLost).
func (c *clientConn) beforeRouteLocked(b *backend, readErr error, inline bool) (route, stop bool, err error) {
	if c.reader.stop || b.replayed {
		c.mu.Unlock()
		return false, true, nil
	}
	if c.reader.severed && readErr != nil && !errors.Is(readErr, os.ErrDeadlineExceeded) {
		// kill or closeWith closed b's socket: not the backend dying (no
		// replay, no 08006); the client goes and finish destroys b.
		c.mu.Unlock()
		return false, true, c.leave.reason()
	}
	if c.replay.armed && c.be == b {
		dead, wait := c.replay.firstReplyLocked(b, readErr)
		if dead || wait {
			// A dead b is destroyed here, or by the client reader when it
			// is still writing to b (abandonLocked, replayAbandon).
			destroy, tries := false, 0
			if dead {
				c.replay.failLocked(b, c.exchange.cancels.n > 0)
				destroy, tries = c.abandonLocked(b), c.replay.tries
			}
			c.mu.Unlock()
			if destroy {
				c.destroyDead(b, tries)
			}
			return false, dead, nil
		}
	}
	if readErr != nil && !errors.Is(readErr, os.ErrDeadlineExceeded) {
		c.mu.Unlock()
		c.backendLost(b, readErr)
		stop, err = lostReply(inline)
		return false, stop, err
	}
	return true, false, nil
}

// lostReply is a reader's answer once backendLost dealt with b: stop;
// inline, the client goroutine ends with errBackendLost, while a backend
// reader just stops.
func lostReply(inline bool) (stop bool, err error) {
	if inline {
		return true, errBackendLost
	}
	return true, nil
}

// reply writes out, routed replies of b, to the client: one write per read
// of the backend (PostgreSQL flushes its replies at ReadyForQuery, so a
// request's reply is one write). stop says the caller must stop reading b:
// the client is gone (err, inline only: finish deals with b; a backend
// reader closes the client, whose goroutine then cleans up).
func (c *clientConn) reply(out []byte, inline bool) (stop bool, err error) {
	// A backend reader (not inline) never makes the loop's non-blocking
	// write, whose parker state belongs to the loop thread (c.loop.running
	// is the loop thread's to read, and may be true while the loop still
	// runs the client that started this reader).
	if inline {
		err = c.writeClient(out)
	} else {
		err = c.writeClientBlocking(out)
	}
	if err != nil {
		return c.clientGone(err, inline)
	}
	return false, nil
}

// clientGone is a reader's answer to a failed write to the client: inline,
// the client goroutine returns err and finish deals with b (if still
// held); a backend reader hangs up on the client (hangUp), and whoever
// runs the client notices and cleans up.
func (c *clientConn) clientGone(err error, inline bool) (stop bool, _ error) {
	if inline {
		return true, err
	}
	c.hangUp()
	return true, nil
}

// hangUp ends the client's connection for a goroutine that does not own
// its socket (a backend reader that could not write to the client, or
// lost its backend): the client is gone, nothing more is told to it
// (leave.killed), whatever it waits for stops (cancel: a request of its
// waiting for a backend is dropped, not run), and its socket is shut down
// both ways, never closed. The descriptor stays open until the client's
// owner closes it (connEnd): the client may have parked, or the loop may
// run it, once its backend was released (replyAndRelease writes after
// that), and its socket is then in the parker's epoll set, which a close
// would silently take it out of, leaving a parked client nothing reports
// the end of (it stayed, holding its max_client_conn slot, until the
// proxy stopped), and whose descriptor number the next accept or dial may
// reuse under the parker. After the shutdown the owner's next read sees
// the end: the client's goroutine directly, the loop through epoll (the
// shutdown reports EPOLLRDHUP).
func (c *clientConn) hangUp() {
	c.leave.killed.Store(true)
	c.cancel()
	sc, ok := c.sock.(syscall.Conn)
	if !ok {
		c.conn.Close() // not a socket (tests' pipes): nothing parks it
		return
	}
	if raw, err := sc.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	}
}

// replyAndRelease ends a transaction whose last reply, out, routeLocked
// found in b's buffer: b goes back to its pool before the client can see
// that ReadyForQuery. A client that answers at once (its next BEGIN) then
// finds its hold over and starts a new one, as through PgBouncer, instead
// of riding the old hold (one transaction counted, timed and balanced for
// two), and the pool's statistics count the transaction before the client
// knows it ended. out is a slice of b's buffers, which the next holder
// overwrites: all but its last clientReadBufSize bytes are written first,
// while b is still held, and those are copied to a pooled buffer. A
// backend reader holds c.wmu from before it gives b back until that write
// is done, so nothing the client's next request makes the client goroutine
// or the loop write can overtake it.
func (c *clientConn) replyAndRelease(b *backend, out []byte, inline bool) (stop bool, err error) {
	if len(out) > clientReadBufSize {
		head := out[:len(out)-clientReadBufSize]
		if stop, err := c.reply(head, inline); stop {
			return stop, err
		}
		out = out[len(head):]
	}
	// On the loop thread (inline and c.loop.running, which only the
	// client's own side may read: a backend reader may run while the
	// loop still runs the client that started it, see reply).
	onLoop := inline && c.loop.running
	var tail *[clientReadBufSize]byte
	if len(out) > 0 {
		if onLoop {
			// The loop thread's own (writeClient copies what it does
			// not write at once).
			tail = &c.srv.park.tail
		} else {
			tail = clientBufPool.Get().(*[clientReadBufSize]byte)
		}
		out = tail[:copy(tail[:], out)]
	}
	async := !inline
	if async {
		c.wmu.Lock()
	}
	stop, err = c.releaseAtTransactionEnd(b, inline)
	var werr error
	if len(out) > 0 {
		if async {
			_, werr = c.conn.Write(out) // under c.wmu already
		} else {
			werr = c.writeClient(out)
		}
		if tail != &c.srv.park.tail {
			clientBufPool.Put(tail)
		}
	}
	if async {
		c.wmu.Unlock()
	}
	if werr != nil {
		return c.clientGone(werr, inline)
	}
	return stop, err
}

// releaseAtTransactionEnd gives b back to its pool (or closes it, if it
// carries session state the configuration rejects) unless something
// changed since routeLocked said the transaction was over: stop is false
// when b stays with the client. err (set when kill or closeWith closed
// b's socket) ends the client; finish destroys b.
func (c *clientConn) releaseAtTransactionEnd(b *backend, inline bool) (stop bool, err error) {
	c.mu.Lock()
	if c.reader.stop || !c.exchange.releasableLocked(c.policy, b, &c.state, &c.listen) {
		c.mu.Unlock()
		return false, nil
	}
	if c.reader.severed {
		c.mu.Unlock()
		return true, c.leave.reason()
	}
	// The release's time, read while c still holds b: once b is dropped
	// the client may park, and the loop run it on its thread, which sets
	// c.loop.running and the clock c.loop.now reads. A backend reader
	// (not inline) reads neither: they are the loop thread's.
	now := time.Now()
	if inline {
		now = c.loop.now(&c.srv.park)
	}
	c.dropBackendLocked()
	c.state.endCheck()
	if len(c.listen.notes) > 0 && !inline {
		// The client reader delivers them now (inline, it is the caller).
		c.idle.signalRead(c.conn)
	}
	c.mu.Unlock()
	if b.tainted {
		c.destroyBackend(b, "session state created despite "+c.srv.cfg.option("SessionState")+" = reject")
		return true, nil
	}
	c.srv.releaseBackend(b, now)
	return true, nil
}

// awaitWriteLocked is the backend reader finding b not releasable while
// the client goroutine writes to it (c.exchange.writing). If b could be released
// but for that write (the backend answered what it carried before the
// writer got back to unpin), the reader, with the transaction's last
// reply in hand, waits for the client goroutine to return from the write
// (unpin closes writeDone), so that b is given back before the client
// sees that reply (replyAndRelease). Written on, the client would send
// its next transaction on the old hold. The write cannot be blocked on
// the backend: everything in it has been answered. It reports whether b
// may be released now. Under c.mu, which it releases while it waits; only
// the backend reader calls it.
func (c *clientConn) awaitWriteLocked(b *backend) bool {
	c.exchange.writing = false
	ok := c.exchange.releasableLocked(c.policy, b, &c.state, &c.listen)
	c.exchange.writing = true
	if !ok {
		return false
	}
	done := make(chan struct{})
	c.reader.writeDone = done
	c.mu.Unlock()
	select {
	case <-done:
	case <-c.ctx.Done():
	}
	c.mu.Lock()
	if c.reader.writeDone == done {
		c.reader.writeDone = nil
	}
	return !c.reader.stop && c.exchange.releasableLocked(c.policy, b, &c.state, &c.listen)
}

// dropBackendLocked forgets the client's backend (released, lost or
// abandoned by whoever does that); a backend reader serving it ends.
// Under c.mu.
func (c *clientConn) dropBackendLocked() {
	c.be = nil
	c.reader.async = false
	c.reader.severed = false
	c.reader.copyIn = false
}

// releaseBackend gives a clean backend back to its pool at time at (the
// client's clock, clientConn.now), no longer counted active.
func (s *Server) releaseBackend(b *backend, at time.Time) {
	if b.deadline.Swap(false) {
		b.nc.SetReadDeadline(time.Time{}) // a backend reader's wake-up may be pending
	}
	b.shrinkReplyBuffers()
	if cap(b.cout) > maxKeptBufSize {
		b.cout = nil
	}
	b.flushCounts()
	if b.busyReported {
		b.busy, b.busyReported = false, false
		b.conn.SetBusy(false)
	}
	b.conn.ReleaseAt(at)
	s.stats.active.Add(-1)
}

// destroyBackend closes a backend whose state is unknown.
func (c *clientConn) destroyBackend(b *backend, reason string) {
	c.log.Debug("closing server connection", "reason", reason)
	b.in.Start, b.in.End, b.in.Want, b.passRemaining = 0, 0, 0, 0
	b.flushCounts()
	b.conn.Destroy(reason)
	c.srv.stats.active.Add(-1)
}

// backendLost handles a backend that failed under the client: the client's
// transaction is gone, so b is closed and the client is told and hung up
// on (hangUp).
// Whoever finds c.be == b here owns b from then on and closes it: even when
// finish is stopping this reader (the client left as the backend died, a
// FATAL the client hung up on), because finish, seeing c.be dropped, takes
// it that the reader dealt with b.
func (c *clientConn) backendLost(b *backend, err error) {
	c.mu.Lock()
	mine := c.be == b
	// Part of a message of b's was relayed to the client as it came (a
	// DataRow or CopyData passed on in pieces) and the rest will never
	// come: an ErrorResponse now would be read as that rest, a row
	// completed with the error's bytes. Only b's reader calls this, so
	// passRemaining is its own to read.
	midMessage := mine && b.midMessage()
	if mine {
		c.dropBackendLocked()
		c.state.unpinOnLeaveLocked(c.log, c.identity.appName, &c.srv.pinned, "its server connection was lost")
		c.exchange.q.reset()
		c.exchange.inBatch, c.exchange.serverSkipping = false, false
		c.stmts.endProbe()
		c.state.endCheck()
	}
	stopping := c.reader.stop
	c.mu.Unlock()
	if !mine {
		return
	}
	c.destroyBackend(b, "server connection failed: "+err.Error())
	if stopping || c.leave.killed.Load() {
		return // the client is leaving: nobody to tell
	}
	if midMessage {
		// The client is closed in the middle of that message, as
		// PostgreSQL ends a connection it was killed writing to: it sees
		// the connection end, never a wrong row.
		c.log.Warn("server connection lost under a client in the middle of a message to it: client closed without an error message, which it would read as the rest of that message", "err", err)
		c.hangUp()
		return
	}
	if b.fatal && !b.diedBetween {
		// The server's own FATAL (57P01 from pg_terminate_backend, a
		// shutdown) was relayed: that is the client's one error, as
		// directly. Nothing more is said; the client is closed. (One
		// swallowed between transactions, diedBetween, was not: b was
		// still in a write of the client reader's then, see
		// relayReplies, and the client is told below.)
		c.log.Info("server connection ended by the server with a FATAL relayed to the client", "err", err)
		c.hangUp()
		return
	}
	c.log.Warn("server connection lost under a client", "err", err)
	pe := newFatal(pgwire.CodeConnectionFailure, "pgsidecar lost the server connection: "+err.Error(),
		"the database closed the connection (restart, pg_terminate_backend or a crash); reconnect and retry the transaction")
	if errors.Is(err, errLostTrack) {
		pe.Code = pgwire.CodeProtocolViolation
	}
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.conn.Write(pe.appendTo(nil))
	c.hangUp()
}

// midMessage reports whether part of one of b's messages was relayed to
// the client as it came (a DataRow or CopyData passed on in pieces) and
// the rest is still to come: the client must not be written anything else
// now, which it would read as that rest. b's reader only, or with no
// reader running.
func (b *backend) midMessage() bool {
	return b.passRemaining > 0 && !b.passSwallow
}

// routeLocked walks the replies in b's buffer (routeOneLocked books each).
// It returns the bytes for the client: a slice of the read buffer when
// nothing was changed (the common case, no copy), else b.out; release
// says the transaction is over and b can go back (releasableLocked). It
// runs under c.mu.
func (c *clientConn) routeLocked(b *backend) (out []byte, release bool, err error) {
	rb := b.in.Buf
	pos, end := b.in.Start, b.in.End
	chunkStart := pos
	edited := false
	o := b.out[:0]
	// edit leaves the zero-copy path: from here on the output is built in
	// b.out, starting with what was passed through so far.
	edit := func() {
		if !edited {
			o = append(o, rb[chunkStart:pos]...)
			edited = true
		}
	}
	maxMsg := c.srv.cfg.MaxMessageSize
	for {
		if b.passRemaining == 0 {
			if h := c.exchange.q.peek(); h != nil && h.kind == reqSynthetic {
				edit()
				o = c.exchange.q.popSynthetic(o)
			}
		}
		if pos == end {
			break
		}
		if b.passRemaining > 0 {
			n := min(b.passRemaining, end-pos)
			if b.passSwallow {
				edit()
			} else if edited {
				o = append(o, rb[pos:pos+n]...)
			}
			pos += n
			b.passRemaining -= n
			continue
		}
		if end-pos < pgwire.HeaderLen {
			b.in.Want = pgwire.HeaderLen
			break
		}
		typ, bodyLen := pgwire.ParseHeader(rb[pos:])
		if bodyLen < 0 || bodyLen > maxMsg {
			b.in.Start = pos
			return nil, false, fmt.Errorf("%w: invalid message length %d from the server", errLostTrack, bodyLen+4)
		}
		total := pgwire.HeaderLen + bodyLen
		if end-pos < total && routedWhole(typ, c.exchange.q.peek()) {
			b.in.Want = total
			break
		}
		b.in.Want = 0
		swallow, rerr := c.routeOneLocked(b, typ, rb[pos:min(pos+total, end)])
		if rerr != nil {
			b.in.Start = pos
			return nil, false, rerr
		}
		n := min(total, end-pos)
		if swallow {
			edit()
			if c.exchange.replacement != nil {
				o = append(o, c.exchange.replacement...)
				c.exchange.replacement = nil
			}
		} else if edited {
			o = append(o, rb[pos:pos+n]...)
		}
		if n < total {
			b.passRemaining, b.passSwallow = total-n, swallow
		}
		pos += n
	}
	b.in.Start = pos
	if edited {
		b.out = o
		out = o
	} else {
		out = rb[chunkStart:pos]
	}
	return out, c.exchange.releasableLocked(c.policy, b, &c.state, &c.listen), nil
}

// routedWhole reports whether routeOneLocked reads the body of a reply of
// type typ (head: the request at the head of the queue), so it must be
// whole before it is routed; any other reply is routed once its header
// is in and the rest of it streamed as it comes (b.passRemaining).
func routedWhole(typ byte, head *request) bool {
	switch typ {
	case pgwire.MsgReadyForQuery, pgwire.MsgErrorResponse, pgwire.MsgParameterStatus,
		pgwire.MsgRowDescription, pgwire.MsgParamDescription, pgwire.MsgCommandComplete:
		return true
	case pgwire.MsgDataRow:
		return head != nil && head.stateCheck // a state check's answer
	}
	return false
}

// routeOneLocked does the bookkeeping for one reply (msg holds at least its
// header; replies routeOneLocked reads are whole) and says whether to drop it.
func (c *clientConn) routeOneLocked(b *backend, typ byte, msg []byte) (swallow bool, err error) {
	head := c.exchange.q.peek()
	switch typ {
	case pgwire.MsgReadyForQuery:
		return c.readyForQueryLocked(b, msg)
	case pgwire.MsgErrorResponse:
		// The backend's error counts and a FATAL (noteError), then what
		// the error does to the exchange (exchange.errorResponseLocked).
		body := msg[pgwire.HeaderLen:]
		b.noteError(body)
		if b.fatal && c.exchange.betweenTransactionsLocked(c.policy, &c.state, &c.listen) {
			// pg_terminate_backend or a shutdown reached b after the
			// client's transaction ended: not the client's error.
			b.diedBetween = true
			return true, nil
		}
		var timedOut *pgError
		if c.timeouts.queryTimedOut && string(pgwire.ErrorField(body, 'C')) == pgwire.CodeQueryCanceled {
			// The proxy's query_timeout cancel: say so rather than the
			// server's "canceling statement due to user request".
			c.timeouts.queryTimedOut = false
			timedOut = c.srv.queryTimeoutError()
		}
		return c.exchange.errorResponseLocked(b, body, &c.stmts, timedOut), nil
	case pgwire.MsgParameterStatus:
		swallow, c.exchange.replacement = c.params.trackParameterStatus(b, head, msg, c.exchange.replacement)
		return swallow, nil

	case pgwire.MsgCopyInResponse, pgwire.MsgCopyBothResponse:
		// The backend now waits for the client's COPY data: nobody may
		// wait on the backend alone (relayInline hands it to a backend
		// reader).
		c.reader.copyIn = true
		c.exchange.q.copyInStarted()

	case pgwire.MsgNotification:
		// With a shared listener, the client's notifications come from it;
		// a backend's are for nobody (see notify.go).
		return c.hub != nil, nil

	case pgwire.MsgDataRow:
		if head != nil && head.stateCheck {
			c.state.check.noteRow(msg[pgwire.HeaderLen:])
			return true, nil
		}

	case pgwire.MsgParseComplete, pgwire.MsgBindComplete, pgwire.MsgCloseComplete:
		r, err := c.exchange.q.popCompleted(typ)
		if err != nil {
			return false, err
		}
		if r.kind == reqParse {
			parseCompleted(c.srv.stmts, b, &r)
		}
		c.stmts.answered(&r)
		return r.swallow, nil

	case pgwire.MsgParamDescription:
		if head != nil {
			c.stmts.paramsDescribed(head, msg)
		}

	case pgwire.MsgRowDescription, pgwire.MsgNoData:
		if head != nil && (head.kind == reqDescribeStmt || head.kind == reqDescribePortal) {
			r := c.exchange.q.pop()
			if c.stmts.resultDescribed(b, &r, msg) {
				c.log.Info("a prepared statement now describes another result than the client was told (schema change); the client gets 0A000 until it prepares it again",
					"statement", r.stmt.name)
			}
			return r.swallow, nil
		}

	case pgwire.MsgCommandComplete, pgwire.MsgEmptyQuery, pgwire.MsgPortalSuspended:
		if typ == pgwire.MsgCommandComplete && c.policy.rewriteStatements && droppedStatements(msg[pgwire.HeaderLen:]) {
			// Now, while the head is the request that dropped them: what
			// is queued behind it was prepared after (deallocated).
			c.stmts.deallocated(b, &c.exchange.q)
		}
		if head != nil && head.kind == reqExecute {
			r := c.exchange.q.pop()
			return r.swallow, nil
		}
	}
	// Part of the reply to the head request (rows, notices, COPY, ...).
	return head != nil && head.swallow, nil
}

// readyForQueryLocked ends the request at the head of the queue (a Query
// or Sync, popReady): the transaction status, the per-hold counts, and
// what the request changed once it succeeded. Under c.mu.
func (c *clientConn) readyForQueryLocked(b *backend, msg []byte) (swallow bool, err error) {
	r, err := c.exchange.q.popReady()
	if err != nil {
		return false, err
	}
	c.exchange.txStatus = msg[pgwire.HeaderLen]
	c.stmts.answered(&r)
	b.queries++
	c.timeouts.responses++
	c.timeouts.queryTimedOut = false
	if r.stateCheck {
		c.applyStateCheckLocked(b, &c.state.check, r.failed)
		c.state.check = stateCheck{}
		return true, nil
	}
	if r.serverWrote {
		c.state.endCheck()
	}
	if !r.failed {
		r.applySucceeded(b, &c.params)
	} else if r.closes {
		c.stmts.undoClose(b, &r) // a DEALLOCATE that failed deallocated nothing
	} else if r.syncTo != nil {
		c.log.Warn("bringing a server connection to the client's session parameters failed; the client sees the error")
	}
	if c.policy.readerPerHold {
		b.busy = c.exchange.txStatus != 'I'
	}
	return r.swallow, nil
}

// finish runs when the client leaves: it stops the backend reader and gives
// the backend back only if its state can be verified clean (rolling back an
// open transaction, and in session mode running the reset query).
func (c *clientConn) finish() {
	if c.hub != nil {
		c.hub.unlisten(c, "", true)
	}
	c.mu.Lock()
	b := c.be
	if b == nil {
		c.state.unpinOnLeaveLocked(c.log, c.identity.appName, &c.srv.pinned, "it holds no server connection")
		c.mu.Unlock()
		return
	}
	nc := b.nc
	if c.reader.async {
		// A backend reader is blocked reading b: stop it without closing
		// b, which may still be clean. A read deadline is the only way to
		// end a blocked read short of a Close.
		c.reader.stop = true
		done := c.reader.done
		c.mu.Unlock()
		b.setReadDeadline(time.Now())
		<-done
		c.mu.Lock()
	}
	b = c.be
	severed := c.reader.severed
	// No reader runs on b now: its pass-through state is safe to read.
	c.leave.midReply = b != nil && b.midMessage()
	c.dropBackendLocked()
	// A cancel still being sent could land on the next holder's query.
	clean := b != nil && b.settled() && c.exchange.q.len() == 0 && !c.exchange.inBatch &&
		c.stream.passRemaining == 0 && !c.stream.poisoned && c.exchange.cancels.n == 0 && !severed
	status := c.exchange.txStatus
	inFlight := c.exchange.q.len() > 0
	// A query_timeout cancel of the request in flight went out already
	// (and, when the sweeper closed the client over it, went unanswered):
	// another would only hold the client's FATAL up for serverOpTimeout.
	timeoutCancelled := c.timeouts.queryTimedOut
	pinned := c.state.pin != nil || c.state.dirty || c.state.paramsDirty
	switch {
	case b == nil:
		c.state.unpinOnLeaveLocked(c.log, c.identity.appName, &c.srv.pinned, "its server connection was lost")
	case !clean || c.leave.killed.Load():
		c.state.unpinOnLeaveLocked(c.log, c.identity.appName, &c.srv.pinned, "its server connection is closed (in the middle of a request, or its state unknown)")
	default:
		c.state.unpinOnLeaveLocked(c.log, c.identity.appName, &c.srv.pinned, "its server connection is cleaned (or closed if that fails)")
	}
	c.exchange.q.reset()
	c.mu.Unlock()
	if b == nil {
		return // the reader gave it back (or closed it) itself
	}
	if !severed {
		nc.SetDeadline(time.Time{})
	}
	if !clean || c.leave.killed.Load() {
		if inFlight && !timeoutCancelled {
			// Closing the socket alone leaves the query running on the
			// server until it next writes; cancel it so the backend ends now.
			ctx, cancel := context.WithTimeout(context.Background(), serverOpTimeout)
			if err := b.conn.Server().CancelRequest(ctx); err != nil {
				c.log.Debug("cancelling the abandoned query failed", "err", err)
			}
			cancel()
		}
		c.destroyBackend(b, "client left in the middle of a request")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), serverOpTimeout)
	defer cancel()
	rolledBack, failure := b.resetAfterClient(ctx, c.policy, &c.srv.cfg, status, pinned)
	if rolledBack {
		c.log.Debug("rolled back the transaction of a client that left inside it")
	}
	if failure != "" {
		c.destroyBackend(b, failure)
		return
	}
	c.srv.releaseBackend(b, c.loop.now(&c.srv.park))
}

// resetAfterClient brings b, which a client left with transaction status
// status (pinned: it held session state, or its traffic since the last
// state check may have touched session state or settings), back to a
// state the proxy knows, so it can go back to the pool: an open
// transaction is rolled back (rolledBack), the session reset
// (policy.leaveReset) and the configured reset query run where the mode
// asks for them. failure, when not empty, is why b must be closed instead:
// a statement failed, or b holds session state SessionState = reject
// refused (b.tainted).
func (b *backend) resetAfterClient(ctx context.Context, policy *modePolicy, cfg *Config, status byte, pinned bool) (rolledBack bool, failure string) {
	srv := b.conn.Server()
	if status != 'I' {
		// Idle in a transaction: roll it back.
		if err := srv.Exec(ctx, "ROLLBACK"); err != nil {
			return false, "rollback after the client left failed: " + err.Error()
		}
		rolledBack = true
	}
	if b.tainted {
		return rolledBack, "session state created despite " + cfg.option("SessionState") + " = reject"
	}
	if status != 'I' || pinned {
		// Reset the session so the proxy's view of it is exact again
		// (modePolicy.leaveReset): DISCARD ALL also drops what the client
		// may have left in the session (temp tables, LISTEN, advisory
		// locks, cursors, SQL prepared statements), even state the proxy
		// did not see being created.
		q := policy.leaveReset
		discard := q == "DISCARD ALL"
		if err := srv.Exec(ctx, q); err != nil {
			return rolledBack, "reset after the client left failed: " + err.Error()
		}
		b.resetToDefaults(discard)
	}
	if policy.leaveResetQuery {
		if q := cfg.ResetQuery; q != "" {
			if err := srv.Exec(ctx, q); err != nil {
				return rolledBack, "reset query failed: " + err.Error()
			}
			up := strings.ToUpper(q)
			if strings.Contains(up, "DISCARD ALL") || strings.Contains(up, "RESET ALL") {
				b.resetToDefaults(strings.Contains(up, "DISCARD ALL"))
			}
		}
	}
	return rolledBack, ""
}
