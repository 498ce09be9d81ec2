// Replay: the first request of a transaction is sent again on another
// backend when its own died before answering.

package proxy

import (
	"bytes"
	"errors"
	"os"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Replaying the first request of a transaction on another backend.
//
// pg_terminate_backend (or a fast shutdown) only sends the backend a
// SIGTERM. A client that arrives within a millisecond or two can be handed
// an idle pooled backend that has the signal but has not yet acted on it:
// its socket is still quiet, so the pool's peek sees nothing, and its
// first reply to the client's request is FATAL 57P01 (or nothing: EOF, a
// reset). The database is healthy; only that backend was dying. The same
// holds for a backend that died outright but was released less than
// pool.peek_after_idle ago, which the pool hands out without a peek.
//
// The proxy then sends the same request to another backend instead of
// failing the client, because doing so cannot run anything twice:
//   - the backend was idle (between transactions) when it was handed out,
//     so the only work it could have done is this request;
//   - a backend that dies of SIGTERM while idle never reads the request:
//     it reports the FATAL from its idle loop and exits;
//   - a backend killed while it already runs the first statement of the
//     request runs it in a transaction that is not committed (an implicit
//     one for a simple Query or an extended-protocol batch before its Sync,
//     the client's own after BEGIN), and a dying backend rolls it back: the
//     FATAL comes before any CommandComplete or ReadyForQuery.
//   - except a statement that PostgreSQL runs outside any transaction
//     block, which may commit before it sends a byte: a DO block or a
//     procedure (CALL) with COMMIT, CREATE INDEX CONCURRENTLY, VACUUM and
//     the like (commitsBeforeAnswer). Killed after such a commit, the
//     backend's first reply is the same FATAL a dying idle one sends, so
//     the request is not kept for a replay at all (noReplayForLocked).
//     A multi-statement Query cannot do that: its statements run in one
//     implicit block, where they may not commit on their own, and an
//     explicit COMMIT in it leaves its CommandComplete in the output
//     buffer ahead of any later FATAL.
// So the replay is allowed only while not one byte of the backend's reply
// reached the client (the FATAL must be the very first message, or the
// connection must end before any), only for a backend acquired for this
// request, and at most maxReplays times in a row; a request streamed past
// the buffer (a huge message) is not replayed. The dead backend is
// destroyed (never released to the pool).

// maxReplays bounds the backends one request may find dying in a row;
// beyond that the client gets the server's error, as directly. When an
// operator terminates every idle backend at once, the first client can
// meet several in a row that still look alive (LIFO: they were all used a
// moment ago); 3 proved too few for 9 under load, while a database that is
// really going away refuses the connects instead, which ends the loop.
const maxReplays = 16

// replayWindow is how long after its backend was acquired a request may
// still be replayed. A backend that was dying when it was handed out
// answers at once (its FATAL is on the wire, or comes as soon as it acts
// on its SIGTERM); one that dies a second into the request was killed
// while running it: pg_terminate_backend aimed at that statement (a
// runaway query) ends it as it does directly, instead of having it
// started again on another backend (up to maxReplays terminations).
const replayWindow = time.Second

// replayState is one client's replay bookkeeping. armed, pending and tries
// are under c.mu; buf belongs to the client reader.
type replayState struct {
	armed   bool      // c.be is fresh for this request and none of its reply went to the client
	since   time.Time // when c.be was acquired (replayWindow)
	pending bool      // the backend died unanswered: buf must be handled again
	lost    bool      // ... but buf does not hold the whole request: the client is told
	again   bool      // the next acquire is for a replay (tries go on)
	// canceled: a cancel request came for the request while it was being
	// sent to the backend that died or waited for its replay; the request
	// is answered with 57014 instead of being sent again (spliceReplay).
	// While resending, it says the same of a cancel that came after the
	// splice, before the request was written again (replayCanceled).
	canceled bool
	// resending: the request was put back in front of the client's bytes
	// (spliceReplay) and is on its way to a new backend: acquired, or
	// about to be, but not written yet (recordLocked ends it). A cancel
	// request then has no backend to go to and no wait to end; it is
	// kept in canceled (cancelWaiting) instead of being dropped as for
	// an idle client, which let the statement run in full on the new
	// backend.
	resending bool
	// cancelSent: a cancel request went to c.be since it was acquired. A
	// backend that dies unanswered after it may have got the signal while
	// it was being terminated, when the cancel's sender had already let
	// go (c.exchange.cancels.n is 0 again): the request must not run elsewhere
	// either (failLocked).
	cancelSent bool
	tries      int    // replays in a row for the current request
	buf        []byte // the client bytes sent to c.be since it was acquired
}

// armLocked starts the bookkeeping for a backend acquired at now for a
// client between transactions. Under c.mu, by the client reader.
func (r *replayState) armLocked(now time.Time) {
	if !r.again {
		r.tries = 0
	}
	r.again, r.cancelSent = false, false
	r.buf = r.buf[:0]
	r.armed = r.tries < maxReplays
	if r.armed {
		r.since = now
	}
}

// recordLocked keeps req, the client bytes the client reader is about to
// send to b, while b may still be replayed; mine says b is the client's
// backend (c.be). A request that cannot be kept whole (whole false: a
// streamed message, or one sent while a state check is in flight) is not
// replayed. A probe (the proxy's Parse and Describe of a named statement
// b lacks, sent in place of the client's Bind, see useStatement) is no
// obstacle: the Bind waits unread in the client's buffer, so what was
// consumed is kept here and the rest is still there; a FATAL in answer to
// the probe is the backend's first reply like any other (pgbench -M
// prepared, pgx's statement cache). Under c.mu, by the client reader
// (forward).
func (r *replayState) recordLocked(b *backend, mine bool, req []byte, whole bool) {
	r.resending = false         // written: a cancel now goes to b (cancelPinned)
	dying := b.replayed && mine // the backend reader already saw it die
	if !r.armed && !dying || !mine {
		return
	}
	if !whole {
		r.armed = false
		r.lost = dying
		return
	}
	r.buf = append(r.buf, req...)
}

// noReplayForLocked disarms the replay when q, the text of a statement
// the client sends on the backend acquired for it (a Query's or a
// Parse's), may commit before it answers (commitsBeforeAnswer). A Bind
// of a statement prepared earlier reads the statement's own answer
// (statement.commits). Under c.mu (build).
func (r *replayState) noReplayForLocked(q []byte) {
	if r.armed && commitsBeforeAnswer(q) {
		r.armed = false
	}
}

// commitsBeforeAnswer reports whether q, one Query's or Parse's text, may
// commit work of its own before the backend sends any reply to it: one
// statement starting with DO or CALL (transaction control in a procedure
// or DO block), VACUUM, CLUSTER or REINDEX (a transaction per table), COMMIT
// or ROLLBACK (PREPARED), or a CREATE, DROP, ALTER or REFRESH naming
// CONCURRENTLY, DATABASE, TABLESPACE, SYSTEM or SUBSCRIPTION: the
// statements PostgreSQL refuses inside a transaction block because they
// commit as they go. Eager: any such word outside strings and comments
// counts for the latter. A Query of several statements cannot (see
// above). Most statements start with another word, and only that word is
// read. It allocates nothing.
func commitsBeforeAnswer(q []byte) bool {
	// A statement whose first byte is an ASCII letter that starts none of
	// the words above (SELECT, INSERT, UPDATE...) is answered from that
	// byte: the lexer's first token is then a word starting with it, or
	// a string (E'', B'', X'', N'', U&''), and neither matches. This runs
	// on every Query and Parse while a replay is armed (most requests),
	// where lexing the first word was 2% of pgsidecar's user time at 16
	// clients (perf); the letter costs a few instructions.
	if i := skipSpace(q); i < len(q) {
		if c := q[i] | 0x20; c >= 'a' && c <= 'z' && c != 'd' && c != 'c' && c != 'v' && c != 'r' && c != 'a' {
			return false
		}
	}
	return commitsBeforeAnswerLexed(q)
}

// commitsBeforeAnswerLexed is commitsBeforeAnswer without its first-letter
// shortcut: the lexer reads the first word, and the rest of the statement
// when that word may name one of the words that follow. The shortcut's
// test checks the two agree.
func commitsBeforeAnswerLexed(q []byte) bool {
	l := sqlLexer{q: q}
	w, k := l.next()
	if k != tokWord {
		return false
	}
	commits := false
	for _, s := range [...]string{"do", "call", "vacuum", "cluster", "reindex", "commit", "rollback"} {
		commits = commits || eqFold(w, s)
	}
	named := !commits && (eqFold(w, "create") || eqFold(w, "drop") || eqFold(w, "alter") || eqFold(w, "refresh"))
	if !commits && !named {
		return false
	}
	// The lexer, not oneStatement: a DO block's body holds semicolons.
	ended := false
	for {
		w, k := l.next()
		switch k {
		case tokEOF:
			return commits
		case tokSemicolon:
			ended = true
			continue
		}
		if ended {
			return false // a second statement: one implicit block
		}
		if named && k == tokWord {
			for _, s := range [...]string{"concurrently", "database", "tablespace", "system", "subscription"} {
				commits = commits || eqFold(w, s)
			}
		}
	}
}

// retryableFirstReply reports whether what an armed backend sent, in b's
// read buffer, says it was ending before it ran anything that could have
// committed: a FATAL 57P01 (terminated), 57P02 (crash shutdown) or 57P03
// (the server is shutting down or starting), or the end of the connection
// (ended: the read failed), after nothing but messages that precede any
// execution: ParseComplete, BindComplete, ParameterDescription,
// RowDescription, NoData. PostgreSQL keeps those in its output buffer until
// a flush, and the FATAL's send flushes them: a backend terminated between
// a Bind and its Execute, or while the statement runs (RowDescription goes
// out at its start), sends them and the FATAL together. complete is false
// while that cannot be told yet (a message not all there).
//
// The buffer is only scanned, never consumed, and nothing is allocated.
func retryableFirstReply(b *backend, ended bool) (retry, complete bool) {
	pending := b.in.Buf[b.in.Start:b.in.End]
	for {
		if len(pending) < pgwire.HeaderLen {
			// Only harmless messages so far: the connection's end decides,
			// else what follows them. A harmless reply that is all there
			// is (a client's Parse and Flush) is the backend answering:
			// waiting for more would keep it from the client.
			return ended, ended || len(pending) == 0
		}
		typ, bodyLen := pgwire.ParseHeader(pending)
		if bodyLen < 0 {
			return false, true
		}
		whole := len(pending) >= pgwire.HeaderLen+bodyLen
		switch typ {
		case pgwire.MsgParseComplete, pgwire.MsgBindComplete, pgwire.MsgParamDescription, pgwire.MsgRowDescription, pgwire.MsgNoData:
			if !whole {
				return ended, ended
			}
			pending = pending[pgwire.HeaderLen+bodyLen:]
			continue
		case pgwire.MsgErrorResponse:
		default:
			return false, true
		}
		if !whole {
			return ended, ended
		}
		body := pending[pgwire.HeaderLen : pgwire.HeaderLen+bodyLen]
		if !bytes.Equal(pgwire.ErrorField(body, 'V'), []byte("FATAL")) {
			return false, true
		}
		switch string(pgwire.ErrorField(body, 'C')) {
		case pgwire.CodeAdminShutdown, pgwire.CodeCrashShutdown, pgwire.CodeCannotConnectNow:
			return true, true
		}
		return false, true
	}
}

// firstReplyLocked is b's reader's look (beforeRouteLocked: a backend
// reader, the client goroutine inline, or the loop) at what b sent (and
// readErr) while the client's request may still be replayed: the caller
// found the replay armed and b the client's backend. dead true means b
// died before answering: the caller marks it dead (failLocked) and
// stops reading it. wait true means the first message is not whole yet:
// read on before routing anything. With both false, a mere wake-up leaves
// the replay armed; a backend that answered, or died too late
// (replayWindow), disarms it. Under c.mu.
func (r *replayState) firstReplyLocked(b *backend, readErr error) (dead, wait bool) {
	if errors.Is(readErr, os.ErrDeadlineExceeded) {
		// A wake-up (a deadline set to now: the proxy owes the client a
		// reply of its own, the transaction ended, a cancel finished, or
		// notifications wait; kill closes the socket instead), not the
		// backend dying: taking it for
		// a death would send a request the backend may be running (a
		// simple Query commits on its own) to a second one.
		readErr = nil
	}
	if b.in.Start == b.in.End {
		if readErr == nil {
			return false, false // a wake-up, not a reply
		}
	} else {
		retry, complete := retryableFirstReply(b, readErr != nil)
		if !complete && readErr == nil {
			return false, true
		}
		if !retry {
			r.armed, r.tries = false, 0 // the backend answered: it is alive
			return false, false
		}
	}
	if time.Since(r.since) > replayWindow {
		// Killed while running the request, not dying when handed out:
		// the client hears the server's FATAL, as directly.
		r.armed, r.tries = false, 0
		return false, false
	}
	return true, false
}

// failLocked marks b dead before its first reply and the client's
// request as pending a replay; cancelling says a cancel request for the
// request is being sent to b (c.exchange.cancels.n). The caller then abandons b
// (abandonLocked). Under c.mu.
func (r *replayState) failLocked(b *backend, cancelling bool) {
	b.replayed = true
	r.armed, r.pending = false, true
	r.tries++
	if cancelling || r.cancelSent {
		// A cancel request for this request is being sent, or was sent,
		// to b, which will never act on it: the request must not run
		// elsewhere.
		r.canceled = true
	}
}

// abandonLocked lets go of b, which died unanswered (replay.failLocked):
// nothing the client sent since the acquire counts (its statements are
// forgotten, as for a failed Parse) and the client reader is woken to
// send the request again. It does so at once unless the client reader is
// still writing to b (then the client reader does, see replayAbandon),
// and reports whether it did. Under c.mu.
func (c *clientConn) abandonLocked(b *backend) bool {
	if c.exchange.writing {
		return false
	}
	for c.exchange.q.len() > 0 {
		r := c.exchange.q.pop()
		c.stmts.undo(b, &r)
	}
	wake := c.reader.async && !c.exchange.writing
	c.dropBackendLocked()
	c.exchange.inBatch, c.exchange.serverSkipping = false, false
	c.exchange.txStatus = 'I'
	c.stmts.endProbe()
	c.state.endCheck()
	if wake {
		// A backend reader found b dead while the client reader waits for
		// client input: wake it to send the request again. (Inline, or
		// still writing, the client reader sees it itself.)
		c.idle.signalRead(c.conn)
	}
	return true
}

// replayAbandon is the client reader's part after it wrote to b: when b
// died unanswered (seen by the backend reader while this reader was still
// writing, or now as a write error on an armed backend), b is destroyed
// here and true is returned: the request is handled again from the top of
// process.
func (c *clientConn) replayAbandon(b *backend, werr error) (bool, error) {
	c.mu.Lock()
	if werr != nil && c.replay.armed && c.be == b && !b.replayed {
		c.replay.failLocked(b, c.exchange.cancels.n > 0)
		c.abandonLocked(b) // not writing any more: abandons b now
		tries := c.replay.tries
		c.mu.Unlock()
		c.destroyDead(b, tries)
		return true, nil
	}
	if !b.replayed {
		c.mu.Unlock()
		return false, nil
	}
	mine := c.be == b
	if mine {
		c.abandonLocked(b)
	}
	lost, tries := c.replay.lost, c.replay.tries
	if lost {
		c.replay.pending, c.replay.lost = false, false
	}
	c.mu.Unlock()
	if mine {
		c.destroyDead(b, tries)
	}
	if lost {
		return true, newFatal(pgwire.CodeConnectionFailure, "pgsidecar lost the server connection: it ended before answering",
			"the database closed the connection (restart or pg_terminate_backend); reconnect and retry the transaction")
	}
	return true, nil
}

// destroyDead closes a backend that died before answering. tries is
// c.replay.tries as the caller read it under c.mu: read here, unlocked, it
// would race with the replacement backend's reader, which may already
// fail it in turn (failLocked).
func (c *clientConn) destroyDead(b *backend, tries int) {
	c.log.Info("server connection ended before answering the first request of a transaction; sending the request to another one",
		"backend_pid", b.conn.Server().PID(), "replay", tries)
	c.destroyBackend(b, "ended before answering its first request (replayed on another backend)")
}

// spliceReplay puts a pending replay back in front of the client's unread
// bytes, once the dead backend is let go of, and reports whether there
// were any. Client reader only.
func (c *clientConn) spliceReplay() bool {
	c.mu.Lock()
	if !c.replay.pending || c.be != nil {
		c.mu.Unlock()
		return false
	}
	canceled := c.replay.canceled
	c.replay.pending, c.replay.again, c.replay.canceled = false, !canceled, false
	kept := c.replay.spliceInto(&c.in)
	c.replay.resending = kept && !canceled
	c.mu.Unlock()
	if canceled && kept {
		// The client cancelled it: dropped up to its end and answered
		// with 57014, as a cancelled wait for a backend is (discard).
		c.stream.discard.on, c.stream.discard.err = true, errReplayCanceled
	}
	return kept
}

// replayCanceled handles a cancel request that came while the request was
// being sent again (replay.resending) before it was written to b, the
// backend just acquired for it: b goes back to its pool untouched (the
// parameter sync takeBackend queued on it is dropped unsent) and the
// request is discarded and answered with 57014, as spliceReplay answers
// one cancelled before its splice. It reports whether it did. In session
// mode the backend is the session's and stays; the request runs. Client
// reader only.
func (c *clientConn) replayCanceled(b *backend) bool {
	c.mu.Lock()
	if !c.replay.resending || c.be != b {
		c.mu.Unlock()
		return false
	}
	canceled := c.replay.canceled
	c.replay.canceled = false
	if !canceled || !c.policy.releaseAtTransactionEnd || c.exchange.writing || c.exchange.cancels.n > 0 || c.reader.async {
		c.mu.Unlock()
		return false
	}
	c.replay.resending = false
	for c.exchange.q.len() > 0 {
		r := c.exchange.q.pop()
		c.stmts.undo(b, &r)
	}
	b.cout = b.cout[:0]
	c.dropBackendLocked()
	c.exchange.txStatus = 'I'
	now := c.loop.now(&c.srv.park)
	c.mu.Unlock()
	c.srv.releaseBackend(b, now)
	c.stream.discard.on, c.stream.discard.err = true, errReplayCanceled
	return true
}

// errReplayCanceled is what a client gets for a request it cancelled while
// the request was to be sent again (never modified: acquireErrorResponse
// copies it).
var errReplayCanceled = newError(pgwire.CodeQueryCanceled, "canceling statement due to user request",
	"the server connection ended before the statement ran, and the cancelled statement was not sent again")

// spliceInto moves the kept request, buf, in front of in's unread bytes
// and reports whether it held any. Client reader only (buf and in are
// its own).
func (r *replayState) spliceInto(in *pgwire.ReadBuffer) bool {
	kept, rest := r.buf, in.Buf[in.Start:in.End]
	if in.Start >= len(kept) {
		in.Start -= len(kept)
		copy(in.Buf[in.Start:], kept)
	} else {
		nb := make([]byte, max(len(in.Buf), len(kept)+len(rest)))
		copy(nb, kept)
		copy(nb[len(kept):], rest)
		in.Buf, in.Start, in.End = nb, 0, len(kept)+len(rest)
	}
	r.buf = r.buf[:0]
	return len(kept) > 0
}
