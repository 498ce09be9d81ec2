// relay_client.go: the requests' side of the relay: the client reader
// (run, process) reads the client's messages, gets a backend when a
// transaction starts, rewrites and writes them to it (build), and refuses
// what it must (size limits, policy reject; the refused request is
// discarded by clientStream.discardRequest, clientstream.go).

package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// errClientTerminated means the client sent Terminate.
var errClientTerminated = errors.New("client sent Terminate")

// errBackendMoved means the backend reader gave the backend back between the
// client reader's look at it and its use: the request needs a new one.
var errBackendMoved = errors.New("backend released meanwhile")

// maxWholeQuery is the largest Query the relay reads whole to inspect it;
// longer ones are streamed and not inspected.
const maxWholeQuery = 64 << 10

// run is the client reader: it reads client messages, gets a backend when a
// transaction starts, and writes the messages (rewritten where needed) to it.
func (c *clientConn) run() error {
	if c.loop.hand != nil {
		// Handed over by the loop (loop.go), which left something to do.
		if done, err := c.loopResume(); done || err != nil {
			return err
		}
	}
	for {
		n, err := c.readClient() // idle.go: no buffer held while idle
		if err == errParked {
			return err // park.go: hands off c, another goroutine may own it now
		}
		c.in.End += n
		if n > 0 {
			c.timeouts.reads.Add(1) // activity, for the idle timeouts
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) || c.leave.killed.Load() {
				return err
			}
			// A wake-up: the drain or a timeout wants this client looked at.
			if pe := c.leave.err.Load(); pe != nil {
				return pe
			}
			if c.srv.draining.Load() && c.stream.passRemaining == 0 {
				c.mu.Lock()
				between := c.exchange.atBoundaryLocked(c.be != nil, &c.stmts, &c.state)
				c.mu.Unlock()
				if between {
					return errDraining()
				}
			}
			c.idle.clearReadSignal(c.conn)
			if pe := c.leave.err.Load(); pe != nil {
				return pe // set between the look above and the reset
			}
			// Or notifications to deliver (after the reset, so a later one
			// wakes this reader again).
			if err := c.flushNotes(); err != nil {
				return err
			}
			if n == 0 && !c.spliceReplay() {
				continue
			}
		}
		if err := c.process(); err != nil {
			return err
		}
		c.in.Shrink(maxKeptBufSize, clientReadBufSize)
	}
}

// drainGate decides, while the server drains, whether the client message
// of type typ may go on: not when the client is between transactions (its
// next transaction would start after the SIGTERM: 57P01). A request
// pipelined behind one still in flight outside a transaction waits for
// that one's answer, which says whether a transaction is open.
func (c *clientConn) drainGate(typ byte) error {
	for {
		c.mu.Lock()
		between := c.be == nil || (c.exchange.q.len() == 0 && !c.exchange.inBatch && c.exchange.txStatus == 'I' && !c.exchange.writing && c.stmts.probe == nil)
		pipelined := !between && startsRequest(typ) && c.exchange.q.len() > 0 && !c.exchange.inBatch && c.exchange.txStatus == 'I'
		c.mu.Unlock()
		switch {
		case between:
			return errDraining()
		case !pipelined:
			return nil // inside a transaction, or part of a request under way
		}
		if err := c.leave.reason(); err != nil {
			return err // told to go meanwhile (closeWith, kill)
		}
		time.Sleep(drainPoll / 10) // only while draining, a few times per request
	}
}

// startsRequest reports whether a client message of type typ can begin a
// request (not COPY data, which belongs to the request in flight).
func startsRequest(typ byte) bool {
	switch typ {
	case pgwire.MsgQuery, pgwire.MsgParse, pgwire.MsgBind, pgwire.MsgDescribe, pgwire.MsgExecute, pgwire.MsgClose, pgwire.MsgSync, pgwire.MsgFunctionCall, pgwire.MsgFlush:
		return true
	}
	return false
}

// process handles every complete (or streamable) message in the buffer.
func (c *clientConn) process() error {
	if !c.loop.running && c.hub != nil && c.stream.passRemaining == 0 {
		// On the loop thread loopableNow has just made sure that no
		// message buffered holds the word LISTEN: nothing to do. While a
		// message is streamed, the buffer holds its middle, not messages.
		c.hub.preListen(c, c.in.Buf[c.in.Start:c.in.End])
	}
	for c.spliceReplay() || c.in.Pending() > 0 {
		if c.stream.discard.on {
			reply, err := c.stream.discardRequest(&c.in, c.srv.cfg.MaxMessageSize, c.log)
			if reply != nil {
				err = c.writeClient(reply)
			}
			if err != nil || c.stream.discard.on {
				return err
			}
			continue
		}
		if c.stream.passRemaining == 0 {
			if more, err := checkHead(&c.in, &c.stream, c.srv.cfg.MaxMessageSize, c.log); more || err != nil {
				return err
			}
			if c.srv.draining.Load() {
				if err := c.drainGate(c.in.Buf[c.in.Start]); err != nil {
					return err
				}
			}
		}
		b, err := c.backendForRequest()
		if err != nil {
			return err
		}
		if b == nil {
			continue // refused or answered, or now discarding
		}
		if c.replayCanceled(b) {
			continue // now discarding
		}
		if stop, err := c.forward(b); stop || err != nil {
			return err
		}
	}
	return nil
}

// backendForRequest is the backend the client's next message goes to: the
// one it holds, else, unless the message is refused before any backend is
// taken for it (clientStream.refuseOversized) or answered without one
// (clientStatements.answerLocally; both in transaction mode), one
// acquired for it (acquireForRequest). nil without an error: there is
// nothing to send now (refused or answered, or the acquire failed and the
// request is being discarded).
func (c *clientConn) backendForRequest() (*backend, error) {
	if b := c.heldBackend(); b != nil {
		return b, nil
	}
	if c.policy.rewriteStatements && c.stream.passRemaining == 0 {
		total, err := c.stream.refuseOversized(&c.in, c.srv.cfg.MaxClientBuffer, c.srv.cfg.MaxMessageSize, c.log)
		if err != nil {
			return nil, err
		}
		if total > 0 {
			return nil, c.writeClient(c.srv.tooLarge(c.log, total).appendTo(nil))
		}
		if reply, ok := c.stmts.answerLocally(&c.mu, c.srv.stmts, &c.in); ok {
			return nil, c.writeClient(reply)
		}
	}
	return c.acquireForRequest()
}

// forward sends b what the client's buffer holds for it and waits for
// what that needs: build turns the messages into the bytes for b,
// replay.recordLocked keeps them while b may still be replayed, planRelay
// says who reads the replies, the write goes out, unpin ends the client
// reader's use of b, and afterSend (the loop's, on the loop thread) waits
// for the replies, a probe's answer or backpressure. With stop or err set,
// process returns err; otherwise it goes on with the buffer: the next
// message, or the same request again when b went back to the pool before
// build pinned it (errBackendMoved) or died unanswered (replayAbandon: the
// request goes to another backend).
func (c *clientConn) forward(b *backend) (stop bool, err error) {
	from, streaming := c.in.Start, c.stream.passRemaining > 0
	out, wake, perr := c.build(b)
	if perr == errBackendMoved {
		return false, nil
	}
	// Kept while b may still be replayed (replay.go).
	c.mu.Lock()
	whole := !streaming && c.stream.passRemaining == 0 && c.state.checkWait == nil && from <= c.in.Start
	var req []byte
	if whole {
		req = c.in.Buf[from:c.in.Start]
	}
	c.replay.recordLocked(b, c.be == b, req, whole)
	c.mu.Unlock()
	inline := c.planRelay(b, len(out))
	var werr error
	if len(out) > 0 {
		werr = c.loop.writeBackend(&c.srv.park, b, out)
	}
	b.cout = out[:0]
	if cap(out) > maxKeptBufSize {
		b.cout = nil // a huge message passed: let the memory go
	}
	probe, readerDone := c.unpin(b, wake)
	if replayed, err := c.replayAbandon(b, werr); replayed || err != nil {
		return false, err // nil: the request goes to another backend
	}
	if werr != nil {
		c.log.Warn("server connection failed while sending", "err", werr)
		return true, fmt.Errorf("writing to the server: %w", werr)
	}
	if perr != nil {
		return true, perr
	}
	if c.loop.running {
		return true, c.loop.afterSend(b, inline, probe, readerDone) // loop.go: it never waits
	}
	return c.afterSend(b, inline, probe, readerDone)
}

// afterSend waits for what the request just sent to b needs before the
// client's next message is looked at: its replies (read inline), the
// probe's answer, or backpressure. stop says process returns (err, or
// nil: it needs more client input).
func (c *clientConn) afterSend(b *backend, inline bool, probe, readerDone chan struct{}) (stop bool, err error) {
	if inline {
		if err := c.relayInline(b); err != nil {
			return true, err
		}
		return c.in.Want > 0, nil
	}
	if probe != nil {
		// Hold the client's request until the server said whether the
		// statement still describes the result the client expects.
		select {
		case <-probe:
		case <-readerDone:
		case <-c.ctx.Done():
			return true, c.ctx.Err()
		}
		return false, nil
	}
	if err := c.backpressure(b); err != nil {
		return true, err
	}
	return c.in.Want > 0, nil
}

// maxPendingRequests bounds the requests of one client awaiting a reply
// (160 bytes of bookkeeping each). A client that pipelines more is not read
// until the server answered half of them, so a 100,000-statement pipeline
// costs a bounded queue instead of one entry per statement.
const maxPendingRequests = 2048

// backpressure stops reading the client while it has maxPendingRequests
// awaiting a reply from backend b, until the server answered half of them.
// It first sends the server a Flush (which changes nothing but makes it
// send the replies it still buffers, as a pipeline need not end in Sync),
// so the replies keep coming and the client, which reads them while its
// writes are blocked, is never left waiting on the proxy while the proxy
// waits on it.
//
// With reader.drainAll (a message build left for later, see
// clientStatements.judgedByAnswersAhead) it waits until nothing is
// pending at all.
func (c *clientConn) backpressure(b *backend) error {
	c.mu.Lock()
	// drainAll is set by build for this wait only: kept while waiting
	// (wakeDrainedLocked reads it), cleared whichever way the wait ends.
	all := c.reader.drainAll
	c.reader.drainAll = false
	if c.be != b || c.exchange.q.len() < maxPendingRequests && (!all || c.exchange.q.len() == 0) || c.stream.passRemaining > 0 || c.stmts.probe != nil {
		c.mu.Unlock()
		return nil
	}
	drained := make(chan struct{})
	c.reader.drained, c.reader.drainAll = drained, all
	readerDone := c.reader.done
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.reader.drained == drained {
			c.reader.drained, c.reader.drainAll = nil, false
		}
		c.mu.Unlock()
	}()
	if _, err := b.nc.Write(pgwire.FlushMessage); err != nil {
		return fmt.Errorf("writing to the server: %w", err)
	}
	select {
	case <-drained:
	case <-readerDone:
		if c.heldBackend() == b {
			// The reader ended and left b with this client: it could not
			// write to the client (it closed it). Nobody drains the queue
			// now: leave, or this loop would flush b forever.
			return errors.New("the client stopped taking its replies")
		}
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
	return nil
}

// wakeDrainedLocked ends the client reader's backpressure wait once half
// the pending requests are answered, or all of them with drainAll:
// pending is how many await a reply now. Runs under c.mu.
func (r *readerState) wakeDrainedLocked(pending int) {
	if r.drained != nil && (pending <= maxPendingRequests/2 && !r.drainAll || pending == 0) {
		close(r.drained)
		r.drained, r.drainAll = nil, false
	}
}

// heldBackend is the backend this client holds, or nil.
func (c *clientConn) heldBackend() *backend {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.be
}

// acquireForRequest acquires a backend when the client's transaction
// starts. It returns nil (and switches to discarding) when none can be had.
func (c *clientConn) acquireForRequest() (*backend, error) {
	var b *backend
	var err error
	if c.loop.running {
		b, err = c.srv.park.loopAcquire(c) // loop.go: it never waits
		_, refused := err.(*pool.AcquireError)
		if err != errWaitCanceled && !refused {
			return b, err // a backend, or what the loop does instead (loopProcess)
		}
		if refused {
			c.log.Warn("no server connection for client", "err", err) // as acquire logs it
		}
	} else {
		b, err = c.acquire(false)
	}
	if err != nil {
		var pe *pgError
		if errors.As(err, &pe) && pe.Code == pgwire.CodeAdminShutdown || errors.Is(err, errClientGone) {
			return nil, err // serveConn tells the client, if it is there
		}
		c.stream.discard.on, c.stream.discard.err = true, err
		c.mu.Lock()
		c.replay.resending, c.replay.canceled = false, false // answered with err
		c.mu.Unlock()
		return nil, nil
	}
	return b, nil
}

// acquire gets a backend for this client and brings it to the client's
// session parameters. In session mode it starts the backend reader on it;
// in transaction mode the client goroutine reads the replies itself until
// a request needs a backend reader (planRelay). With ifFree it takes a
// backend only if none must be released for it, and returns
// pool.ErrWouldWait otherwise (pool.AcquireIfFree; bindSession).
func (c *clientConn) acquire(ifFree bool) (*backend, error) {
	s := c.srv
	ctx, canceled := c.wait.begin(&c.mu, c.ctx)
	if canceled {
		return nil, errWaitCanceled // in the loop's queue (waitcancel.go)
	}
	s.stats.waiting.Add(1)
	c.timeouts.waiting.Store(true)
	defer c.timeouts.waiting.Store(false)
	// The pool peeks a backend idle longer than pool.peek_after_idle, so
	// one the server closed while it sat idle never gets here; one released
	// more recently is not peeked, and if it died its first reply says so
	// and the request goes to another backend (replay.go).
	start := time.Now()
	conn, err := c.db.acquire(ctx, ifFree)
	s.stats.waiting.Add(-1)
	if c.wait.end(&c.mu) {
		if err == nil {
			conn.Release() // untouched
		}
		return nil, errWaitCanceled
	}
	if err != nil {
		if c.leave.killed.Load() || errors.Is(err, context.Canceled) {
			return nil, errDraining()
		}
		if err == pool.ErrWouldWait {
			return nil, err // the caller does without (bindSession)
		}
		c.log.Warn("no server connection for client", "err", err)
		return nil, err
	}
	if s.draining.Load() {
		// The drain began while this client waited: its transaction must
		// not start. The backend is untouched, so it goes straight back.
		conn.Release()
		return nil, errDraining()
	}
	if time.Since(start) >= goneCheckAfter && c.idle.leftWhileWaiting(c.sock, c.log) {
		conn.Release() // untouched (clientgone.go)
		return nil, errClientGone
	}
	return c.takeBackend(conn), nil
}

// takeBackend makes the acquired conn the client's backend and brings it
// to the client's session parameters (queued ahead of the request).
func (c *clientConn) takeBackend(conn pool.Conn) *backend {
	s := c.srv
	s.stats.active.Add(1)
	conn.SetOwner(c)
	b := s.backendFor(conn)
	if !c.loop.running && b.inLoopSet.Load() {
		// A goroutine reads b now: out of the event loop's set, which
		// would wake for each of its replies (loop.go).
		p := &s.park
		p.mu.Lock()
		p.unwatchLocked(b)
		p.mu.Unlock()
	}
	b.queries = 0
	if c.policy.readerPerHold {
		// The pool counts a new hold as busy until told otherwise (right
		// for transaction mode). A session's hold starts between
		// transactions (the backend comes idle from the pool, to a client
		// at login or between transactions), so tell the pool now: left
		// busy until the first ReadyForQuery 'I', a client idle after its
		// login for longer than pool.leak_timeout was reported as a
		// leaked transaction, and a session that never opens a
		// transaction block was timed whole.
		b.busy, b.busyReported = false, false
		conn.SetBusy(false)
	}

	c.mu.Lock()
	c.be = b
	c.wait.canceled = false // a cancel from now on goes to b (cancelPinned)
	c.replay.armLocked(c.loop.now(&c.srv.park))
	b.unnamedOwner = nil
	c.exchange.txStatus = 'I'
	if !paramsInSync(c.params.want, b.params, b.defaults) {
		// The backend's values change only if the SETs succeed: they run
		// as one implicit transaction, all or nothing.
		next := maps.Clone(b.params.vals)
		sql := paramSyncSQL(c.params.want, next, b.defaults)
		c.log.Debug("bringing the server connection to the client's parameters", "sql", sql)
		b.cout = pgwire.AppendQuery(b.cout[:0], sql)
		c.exchange.q.push(request{kind: reqQuery, swallow: true, syncTo: next})
	}
	if c.policy.readerPerHold {
		// The session's backend is read whenever it speaks: notifications
		// and notices reach an idle client as they would directly.
		c.startReaderLocked(b)
	}
	c.mu.Unlock()
	return b
}

// planRelay decides, after build and before the write, who reads the
// replies to what the client reader is about to send to b: itself, inline
// (true), when the backend will answer everything outstanding without more
// client input and no backend reader runs; else a backend reader, started
// now if none runs, so that it reads while the write goes out.
//
// Inline takes transaction mode (the backend goes back at the
// transaction's end), the whole client buffer handled (a client with more
// on the way may be pipelining: it is read while a backend reader
// answers; a Terminate, or a message that ends the session
// (msgHead.endsSession), waiting its turn is fine: nothing after it is
// read, onlyEndLeft), no message half sent, every request closed by a
// Sync or a Query (or a probe ending in Flush), nothing waiting for a
// state check, no COPY FROM STDIN, and a write small enough
// (inlineWriteMax).
func (c *clientConn) planRelay(b *backend, outLen int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.be != b || c.reader.async {
		return false
	}
	pending, probe := c.in.Buf[c.in.Start:c.in.End], c.stmts.probe != nil
	if c.policy.releaseAtTransactionEnd && outLen <= inlineWriteMax && c.stream.passRemaining == 0 &&
		(len(pending) == 0 || probe || onlyEndLeft(pending, c.srv.cfg.MaxMessageSize)) &&
		(!c.exchange.inBatch || probe) && c.state.checkWait == nil && !c.reader.copyIn {
		return true
	}
	c.startReaderLocked(b)
	return false
}

// onlyEndLeft reports whether pending, the client's bytes build left in
// its buffer, is only the session's end: a Terminate, or a message that
// ends the session (msgHead.endsSession, judged against maxMessageSize).
func onlyEndLeft(pending []byte, maxMessageSize int) bool {
	return len(pending) == pgwire.HeaderLen && pending[0] == pgwire.MsgTerminate ||
		judgeHead(pending, maxMessageSize).endsSession()
}

// unpin ends the client reader's use of b (see build). It wakes the server
// reader when the proxy owes the client replies of its own, or when the
// request left the backend with nothing in flight, so it is released.
// It returns what the request waits for, if anything: the state check in
// flight (checkWait), else the probe build started (nil if none); and the
// done channel of the backend reader, if one runs.
func (c *clientConn) unpin(b *backend, wake bool) (probe, readerDone chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exchange.writing = false
	if c.reader.writeDone != nil {
		close(c.reader.writeDone)
		c.reader.writeDone = nil
	}
	if c.be == b && c.reader.async && (wake || c.exchange.transactionOverLocked(c.policy)) {
		// The backend reader is blocked reading b and must act now: the
		// remaining deadline wake-up, on the asynchronous path only.
		b.setReadDeadline(time.Now())
	}
	if c.state.checkWait != nil {
		return c.state.checkWait, c.reader.done
	}
	return c.stmts.probe, c.reader.done
}

// build turns the buffered client messages into the bytes for backend b,
// recording what each expects back. It takes c.mu itself.
func (c *clientConn) build(b *backend) (out []byte, wake bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.exchange.cancels.awaitLocked(c.ctx, &c.mu) // a cancel for the previous request must not hit this one
	if c.be != b {
		return nil, false, errBackendMoved
	}
	// Pinned until unpin: the backend reader must not give b away while
	// this goroutine still writes to it or uses its buffer.
	c.exchange.writing = true
	out = b.cout
	if c.stmts.probe != nil || c.state.checkWait != nil {
		return out, false, nil // the held request waits for the probe's (or check's) answer
	}
	tx := c.policy.rewriteStatements
	if tx && c.exchange.q.len() == 0 && !c.exchange.inBatch {
		out = b.prepared.closeEvicted(&c.exchange.q, out)
	}
	for c.in.Start < c.in.End {
		if c.stream.passRemaining == 0 && c.exchange.q.len() >= maxPendingRequests {
			break // backpressure: process waits for replies first
		}
		if c.stream.passRemaining > 0 {
			out = c.stream.passOn(&c.in, out)
			continue
		}
		var step buildStep
		out, step, err = c.buildNextLocked(b, out, tx)
		if step == buildHeld {
			return out, false, err
		}
		if step == buildDone {
			break
		}
	}
	return out, c.exchange.q.lastIsSynthetic(), nil
}

// buildStep is what build does once buildNextLocked handled a message.
type buildStep uint8

const (
	buildMore buildStep = iota // on to the next message
	buildDone                  // stop (more client input is needed, or a Terminate waits its turn); wake as the queue says
	buildHeld                  // stop, with err or with a message waiting for a probe's answer; no wake
)

// buildNextLocked handles the client message at the head of the buffer,
// none of which has gone out yet (c.stream.passRemaining is 0), appending to out
// what b must get for it (tx: transaction mode rewrites statements): it
// checks the header, streams or refuses a Parse or Bind too large to hold
// whole, waits for a message it must read whole, streams the rest of one
// it need not read, and builds a whole one (buildMessageLocked). err is
// the client's malformed or unknown message. Under c.mu (build).
func (c *clientConn) buildNextLocked(b *backend, out []byte, tx bool) (_ []byte, step buildStep, err error) {
	h := judgeHead(c.in.Buf[c.in.Start:c.in.End], c.srv.cfg.MaxMessageSize)
	if c.exchange.q.len() > 0 && h.endsSession() {
		// A message that ends the session (checkHead refuses it) behind
		// requests: PostgreSQL answers those first, then ends the
		// session over it. Left where it is: what went before goes out,
		// its replies are relayed (inline: see planRelay), and
		// process's checkHead then ends the session.
		c.in.Want = 0
		return out, buildDone, nil
	}
	if !h.whole {
		c.in.Want = pgwire.HeaderLen
		return out, buildDone, nil
	}
	avail := c.in.End - c.in.Start
	typ, bodyLen := h.typ, h.bodyLen
	if h.lenErr != nil {
		return out, buildHeld, c.stream.protocolViolation(c.log, h.lenErr)
	}
	if !h.known {
		// Not forwarded: the server would end the session over it.
		// What went out before it is written; the backend is kept
		// only if its state is known (see finish).
		return out, buildHeld, unknownMessage(c.log, typ)
	}
	// The copy-in bookkeeping sees every message once it is known, in
	// whichever way it goes on below. (Again for one that waits for its
	// bytes or a probe and comes back here: what it does is the same the
	// second time, as the copy ends it counts are never held back.)
	ignoredSync := c.exchange.q.noteClientMessage(typ)
	total := pgwire.HeaderLen + bodyLen
	if c.policy.tooLargeToHold(typ, total, c.srv.cfg.MaxClientBuffer) && !c.exchange.serverSkipping {
		// Too large to hold whole (max_client_buffer): a Bind is
		// streamed with its statement renamed (clientStatements.streamBind:
		// only its names, at its start, must be here), a Parse refused.
		head := c.in.Buf[c.in.Start:min(c.in.End, c.in.Start+total)]
		how := bindIncomplete
		if typ == pgwire.MsgBind {
			out, how = c.stmts.streamBind(&c.exchange.q, b, out, head)
		}
		if how == bindIncomplete && typ == pgwire.MsgBind && len(head) < c.srv.cfg.MaxClientBuffer {
			c.in.Want = min(total, c.in.End-c.in.Start+clientReadBufSize)
			return out, buildDone, nil // the Bind's names are not all here yet
		}
		c.in.Want = 0
		switch how {
		case bindIncomplete:
			// A Parse, or a Bind whose names are longer than the buffer
			// (no client sends that), refused while the client holds a
			// backend: a request the server rejects goes out in its
			// place, so the client gets 54000 in the order of its
			// replies and the server skips to the client's Sync; the
			// message itself is dropped unread.
			c.exchange.inBatch = true
			out = c.exchange.q.poison(out, c.srv.tooLarge(c.log, total))
			c.stream.dropRest(&c.in, total)
		case bindDropped: // the poison went out in its place
			c.stream.dropRest(&c.in, total)
		case bindSent: // the rest of its parameters is streamed
			c.exchange.inBatch = true
			c.stream.streamRest(&c.in, len(head), total)
		}
		if c.stmts.probe != nil {
			return out, buildHeld, nil // the Bind waits for the probe, unread
		}
		return out, buildMore, nil
	}
	if avail < total && c.policy.needsWhole(typ, bodyLen, c.srv.cfg.MaxClientBuffer) {
		c.in.Want = total
		return out, buildDone, nil
	}
	c.in.Want = 0
	if avail < total {
		// Stream the rest of a message nobody needs to read.
		if !c.exchange.serverSkipping {
			opens, uninspected := c.exchange.q.pushStreamed(typ)
			if opens {
				c.exchange.inBatch = true
			}
			if uninspected && c.policy.carrySessionState {
				c.state.noteUninspected()
			}
		}
		out = append(out, c.in.Buf[c.in.Start:c.in.End]...)
		c.stream.streamRest(&c.in, avail, total)
		return out, buildMore, nil
	}
	if typ == pgwire.MsgTerminate {
		return out, buildDone, nil // left in the buffer: process ends the session with it (checkHead)
	}
	if tx && c.exchange.q.len() > 0 && c.stmts.judgedByAnswersAhead(typ, c.in.Buf[c.in.Start+pgwire.HeaderLen:c.in.Start+total], b, &c.exchange.q) {
		// Left in the buffer until everything ahead is answered
		// (backpressure waits for that): a DEALLOCATE ALL ahead may drop
		// the statement it names, an error ahead make the server skip
		// the unnamed Parse it would use.
		c.reader.drainAll = true
		return out, buildDone, nil
	}
	msg := c.in.Buf[c.in.Start : c.in.Start+total]
	c.in.Start += total
	if ignoredSync || c.exchange.serverSkipping && typ != pgwire.MsgSync {
		// The server discards it unread (skipping to a Sync after an
		// error), or ignores it (a Sync in copy-in mode): no reply, no
		// bookkeeping, and an open batch stays open.
		return append(out, msg...), buildMore, nil
	}
	out = c.buildMessageLocked(b, out, typ, msg, tx)
	if c.stmts.probe != nil {
		// A probe went out in place of this message, which waits for
		// the answer and is handled again afterwards.
		c.in.Start -= total
		return out, buildHeld, nil
	}
	return out, buildMore, nil
}

// buildMessageLocked appends the client's whole message msg (of type typ,
// not Terminate) to out as the backend must get it, and queues the
// requests it expects replies for. Under c.mu.
func (c *clientConn) buildMessageLocked(b *backend, out []byte, typ byte, msg []byte, tx bool) []byte {
	body := msg[pgwire.HeaderLen:]
	switch typ {
	case pgwire.MsgParse, pgwire.MsgBind, pgwire.MsgDescribe, pgwire.MsgClose, pgwire.MsgExecute:
		// An extended-protocol batch is open until its Sync. Not a
		// Flush: it only makes the server send what it holds, and opens
		// nothing there; a lone one would hold the backend until a Sync
		// that may never come.
		c.exchange.inBatch = true
	}
	switch typ {
	case pgwire.MsgQuery:
		return c.onQuery(b, out, msg, body, tx)
	case pgwire.MsgSync:
		c.exchange.inBatch = false
		c.exchange.serverSkipping = false
		c.exchange.q.push(request{kind: reqSync})
		return append(out, msg...)
	case pgwire.MsgExecute:
		c.exchange.q.push(request{kind: reqExecute})
		return append(out, msg...)
	case pgwire.MsgParse:
		return c.onParse(b, out, msg, body, tx)
	case pgwire.MsgBind:
		if tx {
			out, bound := c.stmts.bind(&c.exchange.q, b, out, msg, body)
			if bound != nil && bound.commits {
				// A statement prepared in an earlier transaction (named,
				// or the unnamed one) runs: its text was not seen on this
				// backend, and it may commit before it answers.
				c.replay.armed = false
			}
			return out
		}
		c.exchange.q.push(request{kind: reqBind})
		return append(out, msg...)
	case pgwire.MsgDescribe:
		switch {
		case len(body) > 0 && body[0] == 'P':
			c.exchange.q.push(request{kind: reqDescribePortal})
		case tx && len(body) > 0 && body[0] == 'S':
			return c.stmts.describe(&c.exchange.q, b, out, msg, body)
		default:
			// Session mode, or a subtype PostgreSQL does not know: it
			// answers that with its 08P01 (an error that fails the request).
			c.exchange.q.push(request{kind: reqDescribeStmt})
		}
		return append(out, msg...)
	case pgwire.MsgClose:
		if tx {
			return c.stmts.close(&c.exchange.q, b, out, msg, body)
		}
		c.exchange.q.push(request{kind: reqClose})
		return append(out, msg...)
	case pgwire.MsgFunctionCall:
		// A fast-path call can run any function (an advisory lock, by
		// OID): ask the server afterwards.
		c.state.dirty = tx
		c.exchange.q.push(request{kind: reqQuery})
		return append(out, msg...)
	default: // Flush, CopyData, CopyDone, CopyFail (others were refused above)
		return append(out, msg...)
	}
}

// errInFailedTransaction is PostgreSQL's refusal of a message in an
// aborted transaction (never modified: poison copies it).
var errInFailedTransaction = newError(pgwire.CodeInFailedSQLTransaction,
	"current transaction is aborted, commands ignored until end of transaction block", "")

// onParse refuses a Parse whose name the client already uses, or whose text
// creates session state under policy reject (sessionTrack.inspect); statement tracking
// (clientStatements.parse) handles the rest in transaction mode.
func (c *clientConn) onParse(b *backend, out, msg, body []byte, tx bool) []byte {
	name, rest, ok := parseParseMessage(body)
	if tx && ok && len(name) > 0 && c.stmts.byName[string(name)] != nil {
		if c.exchange.txStatus == 'E' {
			// As PostgreSQL, an aborted transaction refuses the Parse
			// before its name is looked at. Nothing is in flight (build
			// held the Parse until all was answered:
			// judgedByAnswersAhead), so txStatus is the transaction's.
			return c.exchange.q.poison(out, errInFailedTransaction)
		}
		// As PostgreSQL: the name is taken until the client closes it.
		return c.exchange.q.poison(out, newError(pgwire.CodeDuplicatePreparedStatement, fmt.Sprintf("prepared statement %q already exists", name),
			"close (DEALLOCATE) the statement before preparing another one under its name"))
	}
	if ok {
		query, _, _ := pgwire.CString(rest)
		c.replay.noReplayForLocked(query)
		if h := c.state.inspect(&c.last, query, tx, c.srv.cfg.SessionState == SessionStateReject, c.hub != nil); h != hazardNone {
			return c.exchange.q.poison(out, c.srv.cfg.refuseState(c.log, c.identity.appName, h))
		}
	}
	if !tx || !ok {
		c.exchange.q.push(request{kind: reqParse})
		return append(out, msg...)
	}
	return c.stmts.parse(&c.exchange.q, c.srv.stmts, b, out, msg, name, rest)
}

// needsWhole reports whether, under policy p, a client message must be in
// the buffer whole before it is handled (it is inspected or rewritten).
// maxClientBuffer is max_client_buffer.
func (p *modePolicy) needsWhole(typ byte, bodyLen, maxClientBuffer int) bool {
	switch typ {
	case pgwire.MsgTerminate, pgwire.MsgSync, pgwire.MsgDescribe, pgwire.MsgClose, pgwire.MsgExecute:
		return true // small, and their replies depend on their content
	case pgwire.MsgQuery:
		return bodyLen <= maxWholeQuery
	case pgwire.MsgParse, pgwire.MsgBind:
		// Transaction mode rewrites them; past max_client_buffer they are
		// streamed or refused instead (build), never buffered.
		return p.rewriteStatements && pgwire.HeaderLen+bodyLen <= maxClientBuffer
	}
	return false
}

// tooLargeToHold reports whether, under policy p, a client message of
// type typ and total bytes is a Parse or Bind that transaction mode
// rewrites, and so would hold whole, but that is larger than
// maxClientBuffer (max_client_buffer): build streams it (a Bind) or
// refuses it (a Parse) instead.
func (p *modePolicy) tooLargeToHold(typ byte, total, maxClientBuffer int) bool {
	return (typ == pgwire.MsgParse || typ == pgwire.MsgBind) && p.rewriteStatements && total > maxClientBuffer
}

// tooLarge is the error for a client message of total bytes, larger than
// max_client_buffer, and logs it to the client's logger lg (rate limited
// across clients: a client can repeat it).
func (s *Server) tooLarge(lg *slog.Logger, total int) *pgError {
	limit := s.cfg.MaxClientBuffer
	if ok, held := s.tooLargeLog.Allow(time.Now()); ok {
		lg.Warn("client message larger than max_client_buffer refused", "bytes", total,
			"max_client_buffer", limit, "unlogged", held, "log_interval", s.tooLargeLog.Interval)
	}
	return newError(pgwire.CodeProgramLimitExceeded,
		fmt.Sprintf("message of %d bytes is larger than the %d bytes pgsidecar buffers per client", total, limit),
		"in transaction mode a Parse is read whole; raise max_client_buffer, or send so large a statement as a simple Query (which is streamed)")
}

// onQuery handles a simple Query (msg; body its body) for b: the text is
// inspected (sessionTrack.inspect) and refused under policy reject, the
// client's unnamed statement dropped, and a single SET, a DEALLOCATE
// (statement tracking) or a DISCARD ALL / RESET ALL (parameter tracking)
// noted on its request. Under c.mu (build).
func (c *clientConn) onQuery(b *backend, out, msg, body []byte, tx bool) []byte {
	q := body
	if n := len(q); n > 0 && q[n-1] == 0 {
		q = q[:n-1]
	}
	paramsDirty := c.state.paramsDirty
	c.replay.noReplayForLocked(q)
	h := c.state.inspect(&c.last, q, tx, c.srv.cfg.SessionState == SessionStateReject, c.hub != nil)
	var refused *pgError
	if h != hazardNone {
		refused = c.srv.cfg.refuseState(c.log, c.identity.appName, h)
	}
	// A simple Query drops the session's unnamed statement (the refusal
	// that goes in its place too).
	gen := c.stmts.dropUnnamed(b)
	if refused != nil {
		c.exchange.q.push(request{kind: reqQuery, gen: gen})
		return pgwire.AppendQuery(out, rejectQuerySQL(refused))
	}
	r := request{kind: reqQuery, gen: gen}
	if needsClassify(q) {
		if ch, ok := parseSetStatement(q); ok {
			r.sets = []paramChange{ch}
			if c.exchange.q.len() == 0 && c.exchange.txStatus == 'I' {
				// One SET in its own transaction: followed exactly from the
				// statement, no need to ask the server.
				c.state.paramsDirty = paramsDirty
			}
		}
		kind, name := classifyQuery(q)
		switch kind {
		case queryDeallocate:
			if tx {
				if o, ok := c.stmts.deallocate(&c.exchange.q, b, out, r, name); ok {
					return o
				}
			}
		case queryDiscardAll:
			r.resetAll = true
		case queryResetAll:
			r.resetAll = true
		}
	}
	c.exchange.q.push(r)
	return append(out, msg...)
}
