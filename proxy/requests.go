// The request queue: what the client sent that awaits a reply, in order
// (requestQueue), which request each reply ends, and what a completed
// Query changes (applySucceeded).

package proxy

import (
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// reqKind is what one request sent to a backend (or answered by the proxy)
// expects back; it decides which backend message completes it.
type reqKind uint8

const (
	reqQuery          reqKind = iota // 'Q' or 'F': everything up to 'Z'
	reqSync                          // 'S': 'Z'
	reqParse                         // '1'
	reqBind                          // '2'
	reqClose                         // '3'
	reqDescribeStmt                  // 't' then 'T' or 'n'
	reqDescribePortal                // 'T' or 'n'
	reqExecute                       // 'C', 'I', 's'
	reqSynthetic                     // answered by the proxy: emit payload when it reaches the head
)

// request is one entry of the response-routing queue. Requests the client
// sent are forwarded; requests the proxy injected (a Parse a backend lacks,
// the SETs that bring a backend to the client's parameters, an LRU Close)
// are swallowed; synthetic ones carry the reply the proxy makes itself.
type request struct {
	kind    reqKind
	swallow bool // drop the replies (errors still reach the client, unless quiet)
	quiet   bool // drop its error too (the proxy's own request, whose failure the client's next request reports)
	// closes marks a client's Close of a statement, or its DEALLOCATE of
	// one: the proxy forgets the statement when it sends the request, and
	// takes it back (clientStatements.undoClose) if the server fails or
	// skips it, as the server then still has it. The statement is stmt
	// under clientName, whose copy on the backend the request closes when
	// prepared (seg is then the request's Sync segment); with clientName
	// "" it is the unnamed statement of generation gen.
	closes  bool
	payload []byte // synthetic reply bytes (shared, never modified)
	// stmt and clientName tie a Parse to the statement it prepares, so an
	// error (or a skip after one) can undo the bookkeeping.
	stmt       *statement
	clientName string
	// prepared is set when this Parse made the backend's prepared set claim
	// stmt, in Sync segment seg.
	prepared bool
	seg      int64
	// entry is the server copy a Bind or Describe of a client statement
	// named (its own or a shared one, see useStatement), so an error the
	// server gives for it can retire it.
	entry *preparedEntry
	// sets are the client SET/RESET statements of this Query, applied to the
	// client's tracked parameters when it completes without error.
	sets     []paramChange
	resetAll bool // RESET ALL or DISCARD ALL: parameters go back to the session defaults
	failed   bool // an ErrorResponse arrived within this Query
	// syncTo is the backend's parameter set once the proxy's own SETs succeed.
	syncTo map[string]paramValue
	// gen is the client's unnamed-statement event a request about the
	// unnamed statement belongs to, or that it is: its Parse or Close, or
	// a simple Query, which drops it (see clientStatements.unnamedGen).
	gen uint64
	// learn marks the proxy's Describe right after a statement's first
	// Parse: its answer is recorded as the statement's description.
	learn bool
	// probe marks the proxy's Describe of a statement it prepared on a new
	// backend, to compare the result with what the client was told.
	probe bool
	// stateCheck marks the proxy's session-state check (sessionstate.go);
	// serverWrote any Query the backend reader sent (the client reader waits
	// for its ReadyForQuery, see sessionTrack.afterTransaction).
	stateCheck, serverWrote bool
	// errorReplacement, on a request sent only to make the server fail the
	// segment, is the ErrorResponse the client gets instead of the server's.
	errorReplacement []byte
	// copyEpoch is the number of CopyDone and CopyFail the client had
	// sent before this request (requestQueue.copyEnds): a request of the
	// same epoch as a COPY FROM STDIN's reached the server in its copy-in
	// mode (copyInStarted).
	copyEpoch uint32
}

// requestQueue is a FIFO ring of requests; it reuses its storage so the
// relay does not allocate per message.
type requestQueue struct {
	buf        []request
	head, size int
	// syncs counts reqQuery and reqSync entries: the 'Z's still expected.
	syncs int
	// seg counts every reqQuery and reqSync ever pushed: the number of the
	// current Sync segment, within which an error skips everything.
	seg int64
	// copyEnds counts the CopyDone and CopyFail messages the client sent;
	// copyIn says the server is in copy-in mode (it sent CopyInResponse)
	// and the client has not ended it yet, so a Sync it sends now is
	// ignored by the server and expects no ReadyForQuery.
	copyEnds uint32
	copyIn   bool
}

func (q *requestQueue) len() int { return q.size }

func (q *requestQueue) push(r request) {
	if q.size == len(q.buf) {
		var nb []request
		if len(q.buf) == 0 {
			nb = newRequestRing() // pooled while the client is idle (idle.go)
		} else {
			nb = make([]request, len(q.buf)*2)
		}
		for i := 0; i < q.size; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	r.copyEpoch = q.copyEnds
	q.buf[(q.head+q.size)%len(q.buf)] = r
	q.size++
	if r.kind == reqQuery || r.kind == reqSync {
		q.syncs++
		q.seg++
	}
}

// peek returns the head, or nil when empty. The pointer is valid until the
// next push or pop.
func (q *requestQueue) peek() *request {
	if q.size == 0 {
		return nil
	}
	return &q.buf[q.head]
}

func (q *requestQueue) pop() request {
	r := q.buf[q.head]
	q.buf[q.head] = request{}
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	if r.kind == reqQuery || r.kind == reqSync {
		q.syncs--
	}
	if q.size == 0 && len(q.buf) > maxKeptRequests {
		// A long pipeline grew the ring (up to maxPendingRequests): let
		// the memory go rather than keep it for the client's life.
		q.buf, q.head = nil, 0
	}
	return r
}

// maxKeptRequests is the largest ring an empty queue keeps (160 bytes an
// entry); pipelines deeper than this reallocate it.
const maxKeptRequests = 256

// at returns the i-th request from the head (0 is the head), i < q.len().
// The pointer is valid until the next push or pop.
func (q *requestQueue) at(i int) *request {
	return &q.buf[(q.head+i)%len(q.buf)]
}

// parsesLater reports whether a Parse behind the head, sent in Sync
// segment seg, claims the backend's copy name (request.prepared).
func (q *requestQueue) parsesLater(name string, seg int64) bool {
	for i := 1; i < q.size; i++ {
		if r := q.at(i); r.kind == reqParse && r.prepared && r.seg == seg && r.stmt != nil && r.stmt.name == name {
			return true
		}
	}
	return false
}

// parsesLaterAs reports whether a client's Parse behind the head prepares
// st under the client's name.
func (q *requestQueue) parsesLaterAs(name string, st *statement) bool {
	for i := 1; i < q.size; i++ {
		if r := q.at(i); r.kind == reqParse && r.stmt == st && r.clientName == name {
			return true
		}
	}
	return false
}

// lastIsSynthetic reports whether the newest entry is answered by the proxy,
// i.e. nothing the backend will send comes after it to carry it out.
func (q *requestQueue) lastIsSynthetic() bool {
	if q.size == 0 {
		return false
	}
	return q.buf[(q.head+q.size-1)%len(q.buf)].kind == reqSynthetic
}

func (q *requestQueue) reset() {
	for q.size > 0 {
		q.pop()
	}
	q.copyIn = false
}

// noteClientMessage keeps the copy-in bookkeeping for a client message of
// type typ on its way to the server: it counts the copy's ends (CopyDone,
// CopyFail), and any message but CopyData, Flush and Sync ends copy-in
// mode (the server fails the copy over it). ignoredSync says typ is a
// Sync the server, in copy-in mode, ignores: no ReadyForQuery comes for
// it. Under c.mu, by the client reader.
func (q *requestQueue) noteClientMessage(typ byte) (ignoredSync bool) {
	switch typ {
	case pgwire.MsgCopyData, pgwire.MsgFlush:
	case pgwire.MsgSync:
		return q.copyIn
	case pgwire.MsgCopyDone, pgwire.MsgCopyFail:
		q.copyEnds++
		q.copyIn = false
	default:
		q.copyIn = false
	}
	return false
}

// pushStreamed queues the request of a client message of type typ that
// is streamed to the server, not read whole: a Query or a FunctionCall
// (uninspected: its text is not looked at, so the server is asked about
// session state afterwards), a Parse or a Bind (opensBatch: an
// extended-protocol batch is open until its Sync). Other types expect no
// reply of their own. Under c.mu, by the client reader (build).
func (q *requestQueue) pushStreamed(typ byte) (opensBatch, uninspected bool) {
	switch typ {
	case pgwire.MsgQuery, pgwire.MsgFunctionCall:
		q.push(request{kind: reqQuery})
		return false, true
	case pgwire.MsgParse:
		q.push(request{kind: reqParse})
		return true, false
	case pgwire.MsgBind:
		q.push(request{kind: reqBind})
		return true, false
	}
	return false, false
}

// copyInStarted runs when the server answers the head request (a Query or
// an Execute of COPY FROM STDIN) with CopyInResponse. PostgreSQL ignores
// Sync (and Flush) in copy-in mode, so a client may pipeline a Sync behind
// the Execute before the copy data: the Syncs queued right behind the head
// that the client sent before its CopyDone or CopyFail get no
// ReadyForQuery, and are dropped here. (The first other message sent
// meanwhile ends the copy with an error, and is not ignored: the scan
// stops there.) Syncs the client sends from now until it ends the copy
// are not queued at all (q.copyIn).
func (q *requestQueue) copyInStarted() {
	h := q.peek()
	if h == nil {
		return
	}
	epoch := h.copyEpoch
	for q.size > 1 {
		i := (q.head + 1) % len(q.buf)
		if e := q.buf[i]; e.kind != reqSync || e.copyEpoch != epoch {
			break
		}
		// Remove the entry after the head: the entries behind it move up.
		for k := 1; k < q.size-1; k++ {
			q.buf[(q.head+k)%len(q.buf)] = q.buf[(q.head+k+1)%len(q.buf)]
		}
		q.buf[(q.head+q.size-1)%len(q.buf)] = request{}
		q.size--
		q.syncs--
	}
	q.copyIn = epoch == q.copyEnds
}

// resets reports whether this Query resets parameter k (RESET k, SET k TO
// DEFAULT, RESET ALL, DISCARD ALL).
func (r *request) resets(k string) bool {
	if r.resetAll {
		return true
	}
	for _, ch := range r.sets {
		if ch.all || (ch.reset && ch.name == k) {
			return true
		}
	}
	return false
}

// What the queue itself does with the server's replies (routeOneLocked
// calls these under clientConn.mu, as the queue is): which request a reply
// ends, and what an error ends with it. What the reply changes elsewhere
// (the transaction status, the session's tracked state, the bytes the
// client gets) is the caller's.

// popSynthetic appends the replies of the proxy's own that reached the
// head of the queue (reqSynthetic: everything sent before them is
// answered) to dst and pops them.
func (q *requestQueue) popSynthetic(dst []byte) []byte {
	for h := q.peek(); h != nil && h.kind == reqSynthetic; h = q.peek() {
		dst = append(dst, h.payload...)
		q.pop()
	}
	return dst
}

// popReady pops the Query or Sync at the head, which a ReadyForQuery
// ends. Any other head means the proxy lost track of the server
// (errLostTrack).
func (q *requestQueue) popReady() (request, error) {
	if h := q.peek(); h == nil || (h.kind != reqQuery && h.kind != reqSync) {
		return request{}, fmt.Errorf("%w: unexpected ReadyForQuery", errLostTrack)
	}
	return q.pop(), nil
}

// popCompleted pops the Parse, Bind or Close at the head that typ, a
// ParseComplete, BindComplete or CloseComplete, answers. Any other head
// means the proxy lost track of the server (errLostTrack).
func (q *requestQueue) popCompleted(typ byte) (request, error) {
	k := reqClose
	switch typ {
	case pgwire.MsgParseComplete:
		k = reqParse
	case pgwire.MsgBindComplete:
		k = reqBind
	}
	if h := q.peek(); h == nil || h.kind != k {
		return request{}, fmt.Errorf("%w: unexpected %q", errLostTrack, typ)
	}
	return q.pop(), nil
}

// fail books an ErrorResponse (errBody, without its header) against the
// head request. A Query or Sync is only marked failed: its ReadyForQuery
// still comes. Any other request is popped, and with it everything up to
// the client's Sync, which the server skips after an error; stmts undoes
// their statement bookkeeping. replacement is the failed request's
// errorReplacement, the error the client gets instead of the server's (nil
// when none); toSync says that Sync is not sent yet, so the server
// discards what the client sends until it.
func (q *requestQueue) fail(stmts *clientStatements, b *backend, errBody []byte) (replacement []byte, toSync bool) {
	head := q.peek()
	if head == nil {
		return nil, false
	}
	if head.kind == reqQuery || head.kind == reqSync {
		head.failed = true
		return nil, false
	}
	r := q.pop()
	stmts.failed(b, &r, errBody)
	for h := q.peek(); h != nil && h.kind != reqSync; h = q.peek() {
		s := q.pop()
		stmts.failed(b, &s, nil)
	}
	return r.errorReplacement, q.len() == 0
}

// applySucceeded updates the tracked state once Query r completed without
// an error: b's parameters after the proxy's own SETs, the client's SET
// and RESET statements of parameters the server does not report, on b and
// in the client's params (clientParams.trackParamChange: a RESET goes
// back to the startup packet's value). (The statements a DEALLOCATE ALL or
// DISCARD ALL dropped are followed from the server's CommandComplete:
// clientStatements.deallocated.)
func (r *request) applySucceeded(b *backend, params *clientParams) {
	if r.syncTo != nil {
		b.params.replace(r.syncTo)
	}
	for _, ch := range r.sets {
		params.trackParamChange(b, ch)
	}
	if r.resetAll {
		params.trackParamChange(b, paramChange{all: true, reset: true})
	}
}
