// exchange: where a client's exchange with its backend stands (what awaits
// a reply, the transaction status, an open extended-protocol batch, a
// server skipping to Sync, and the pins that keep the backend in use),
// what the relay asks of it (whether the transaction is over, whether the
// backend can go back, whether the client is between transactions), and
// what an ErrorResponse does to it.

package proxy

// exchange is where the client's exchange with its backend (c.be) stands
// (c.exchange). Shared with backendReader and cancel requests: under c.mu,
// as are all its methods.
type exchange struct {
	q       requestQueue // what awaits a reply, in order (requests.go)
	cancels cancelTrack  // cancel requests being sent to the backend: it stays held (cancel.go)
	inBatch bool         // extended-protocol messages sent since the last Sync
	writing bool         // the client reader is writing to the backend: it stays held
	// txStatus is the transaction status of the last ReadyForQuery.
	txStatus byte
	// serverSkipping: an extended-protocol error came back before the
	// client's Sync was sent; the server discards everything up to it.
	serverSkipping bool
	// replacement is a message the reply routing (routeOneLocked,
	// errorResponseLocked) wants sent instead of the one it swallowed
	// (nil when none); routeLocked sends it and clears it.
	replacement []byte
}

// answeredLocked reports whether, in transaction mode (p), everything the
// client sent has been answered and its transaction is over: what
// transactionOverLocked and betweenTransactionsLocked both start from.
// Under c.mu.
func (x *exchange) answeredLocked(p *modePolicy) bool {
	return p.releaseAtTransactionEnd && x.q.len() == 0 && !x.inBatch && x.txStatus == 'I'
}

// transactionOverLocked reports whether nothing the client sent is still in
// flight and its transaction is over (transaction mode, p): nothing is
// unanswered, and neither the client reader's write nor a cancel request
// pins the backend. Under c.mu.
func (x *exchange) transactionOverLocked(p *modePolicy) bool {
	return x.answeredLocked(p) && !x.writing && x.cancels.n == 0
}

// idleLocked reports whether the client's transaction is over and nothing
// is in flight on b. Only b's reader calls it (see releasableLocked).
// Under c.mu.
func (x *exchange) idleLocked(p *modePolicy, b *backend) bool {
	return x.transactionOverLocked(p) && b.settled()
}

// releasableLocked reports whether the client's transaction is over and
// nothing is in flight, so b can serve another client: nor does session
// state pin the client (s) or the backend still LISTEN for it (l). Only
// b's reader calls it (the backend reader, or relayReplies on the client
// goroutine or the loop, whichever reads b): b's buffer indexes are its
// own. Under c.mu.
func (x *exchange) releasableLocked(p *modePolicy, b *backend, s *sessionTrack, l *listenTrack) bool {
	return x.idleLocked(p, b) && s.pin == nil && !l.unlistenBackend
}

// betweenTransactionsLocked reports whether, in transaction mode (p),
// nothing the client sent is unanswered, its transaction is over and no
// session state (s, l) ties it to its backend: a backend lost now costs
// the client nothing (routeOneLocked, on a FATAL). Unlike
// transactionOverLocked it holds while a cancel request is being sent
// (cancels.n) and while the client reader has yet to come back from a
// write the backend has answered (writing; a request being written is in
// q). Not while the session tracking owes the backend a look
// (sessionTrack.owesCheck): the client's SET would be lost with it. Under
// c.mu.
func (x *exchange) betweenTransactionsLocked(p *modePolicy, s *sessionTrack, l *listenTrack) bool {
	return x.answeredLocked(p) && s.pin == nil && !l.unlistenBackend && !s.owesCheck()
}

// atBoundaryLocked reports whether the client is at a transaction
// boundary, in any mode: it holds no backend (held false), or nothing it
// sent is in flight, its last ReadyForQuery said 'I', nothing pins the
// backend, and neither a probe (stmts) nor a state check (s) is awaited.
// What it sends next would start a new transaction (the drain's test, in
// run). Under c.mu.
func (x *exchange) atBoundaryLocked(held bool, stmts *clientStatements, s *sessionTrack) bool {
	return !held || (x.q.len() == 0 && !x.inBatch && x.txStatus == 'I' && !x.writing && x.cancels.n == 0 && stmts.probe == nil && s.checkWait == nil)
}

// errorResponseLocked books an ErrorResponse (body: its fields) that
// routeOneLocked found to be the client's: it ends copy-in mode, fails
// the requests it fails (requestQueue.fail with stmts, the client's
// statements: in the extended protocol, everything the server now skips
// up to the client's Sync, which sets serverSkipping), and says whether
// to swallow it, replacement then holding what the client gets instead:
// timedOut, the proxy's own error for its query_timeout cancel, when not
// nil; the error with the client's name for the statement; a refused
// request's error. Under c.mu.
func (x *exchange) errorResponseLocked(b *backend, body []byte, stmts *clientStatements, timedOut *pgError) (swallow bool) {
	x.q.copyIn = false // an error ends copy-in mode
	if timedOut != nil {
		x.replacement = timedOut.appendTo(x.replacement[:0])
		swallow = true
	}
	if h := x.q.peek(); h != nil && h.quiet {
		swallow = true
	} else if !swallow && h != nil && h.stmt != nil {
		// The server named its copy of the statement (pgsc_N): the
		// client hears its own name, as directly.
		if renamed, ok := stmts.appendErrorClientNamed(x.replacement[:0], h, body); ok {
			x.replacement = renamed
			swallow = true
		}
	}
	replacement, toSync := x.q.fail(stmts, b, body)
	if replacement != nil {
		x.replacement = append(x.replacement[:0], replacement...)
		swallow = true
	}
	if toSync {
		x.serverSkipping = true
	}
	return swallow
}
