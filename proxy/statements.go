// Statement tracking for transaction mode, in both directions: the
// registry of server-side names, each backend's LRU set of prepared
// statements, the client-to-server name map, the client's Parse, Bind,
// Describe and Close (and DEALLOCATE), and the bookkeeping of their
// replies (ParseComplete, ParameterDescription, RowDescription/NoData,
// CloseComplete, errors). The relay (buildMessageLocked, routeOneLocked)
// calls in here; the methods take the request queue and the backend they
// work on, so each one's signature says what it touches.

package proxy

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// clientStatements is the client's side of statement tracking
// (transaction mode), under clientConn.mu. A backend's unnamedOwner points
// at it: its address names the client.
type clientStatements struct {
	byName map[string]*statement // client statement name -> statement
	// The unnamed statement. PostgreSQL replaces it at an unnamed Parse,
	// and drops it at one that fails, at a simple Query and at a Close of
	// it; a message the server skips (after an error, up to the Sync)
	// changes nothing. Each such message the client sends is an event,
	// numbered from lastGen. unnamed is the client's unnamed statement
	// when hasUnnamed, as the events sent leave it if the server acts on
	// them all, and unnamedGen the event that made it so; settled (nil:
	// none) and settledGen are what the events the server answered left.
	// When the server skips the newest event, the events answered are all
	// there is: the client's unnamed statement is the settled one again
	// (unsent).
	unnamed    *statement
	unnamedGen uint64
	hasUnnamed bool
	lastGen    uint64
	settled    *statement
	settledGen uint64
	// spare is a statement no request refers to any more (the settled one
	// before the last), whose storage the next unnamed Parse takes: two
	// statements serve a client's unnamed Parses in turn.
	spare *statement
	// probe is closed when the proxy's Describe of a statement it prepared
	// on this backend has been answered (nil when none is in flight).
	probe chan struct{}
}

// named returns the statement a client's name refers to.
func (s *clientStatements) named(name []byte) *statement {
	return s.byName[string(name)]
}

// parseUnnamed makes rest (a Parse body without its name) the client's
// unnamed statement, in the spare storage when there is one, and returns
// it with its event's generation. The one it replaces is kept: the
// settled statement, or one whose Parse is in flight and may become it.
func (s *clientStatements) parseUnnamed(rest []byte) (*statement, uint64) {
	st := s.spare
	s.spare = nil
	if st == nil || st == s.settled || st == s.unnamed {
		st = &statement{}
	}
	st.reset(rest)
	s.lastGen++
	s.unnamed, s.unnamedGen, s.hasUnnamed = st, s.lastGen, true
	return st, s.lastGen
}

// settle records that the server acted on the unnamed-statement event gen
// (unnamedEvent), which left st as the unnamed statement (nil: none).
func (s *clientStatements) settle(st *statement, gen uint64) {
	if old := s.settled; old != nil && old != st && old != s.unnamed {
		// Every request that named old went out before event gen, and
		// was answered before it.
		s.spare = old
	}
	s.settled, s.settledGen = st, gen
}

// unsent records that the server did not act on the unnamed-statement
// event r (it skipped it after an error, or r was abandoned with its
// backend): unless a later event was sent, the client's unnamed statement
// is what the events answered left (settled).
func (s *clientStatements) unsent(r *request) {
	if s.unnamedGen != r.gen {
		return // a later event decides
	}
	if s.settled != nil {
		s.unnamed, s.unnamedGen, s.hasUnnamed = s.settled, s.settledGen, true
	} else {
		s.hasUnnamed = false
	}
}

// unnamedEvent reports whether r is the client's message that replaces or
// drops the unnamed statement: its Parse (not the proxy's own, which
// parses the client's statement again where the backend may lack it:
// useUnnamed), its Close, a simple Query (request.gen is the event's).
func unnamedEvent(r *request) bool {
	switch r.kind {
	case reqParse:
		return r.stmt != nil && r.stmt.name == "" && !r.swallow
	case reqClose, reqQuery:
		return r.gen != 0
	}
	return false
}

// answered records the server's answer to r (not an error) when r is an
// unnamed-statement event: an unnamed Parse's ParseComplete, an unnamed
// Close's CloseComplete, a simple Query's ReadyForQuery (failed or not:
// PostgreSQL drops the unnamed statement before it runs the query). The
// proxy's own Parse of the client's statement changes nothing the client
// did: its answer settles nothing (the client's Parse of that statement,
// answered before it or still in flight, does).
func (s *clientStatements) answered(r *request) {
	switch {
	case !unnamedEvent(r):
	case r.kind == reqParse:
		s.settle(r.stmt, r.gen)
	default:
		s.settle(nil, r.gen)
	}
}

// endProbe lets the client reader go on after a probe was answered.
func (s *clientStatements) endProbe() {
	if s.probe != nil {
		close(s.probe)
		s.probe = nil
	}
}

// statement is one Parse a client sent (named, or the unnamed statement):
// the body of its Parse message without the name (query text and parameter
// types). Every named Parse gets a server-side name of its own, so a
// client's statement is never another client's server copy: the server
// really parses it (as directly, with the schema of that moment), and the
// proxy prepares it again only under that name, for this client, on
// backends that lack it.
type statement struct {
	name  string // server-side name ("" for the client's unnamed statement)
	query string // for logs and leak reports
	hash  string // content hash, computed when first needed (markKnown)
	// parseBody is the Parse body after the statement name:
	// query\0 int16 nparams [int32 oid]...
	parseBody []byte
	// fixedBody is parseBody with every parameter type the server chose
	// when it parsed the client's statement (nil until described). Copies
	// prepared later on other backends use it: a prepared statement keeps
	// its parameter types when PostgreSQL revalidates it after DDL, and
	// the client encodes its parameters for those types.
	fixedBody []byte
	hasFixed  bool
	// fingerprint identifies the result description of the statement as
	// the server first described it ("" while unknown). A copy prepared
	// afresh on another backend is described again (a probe) and must
	// match, or the client gets the 0A000 PostgreSQL gives a statement
	// whose result type changed: stale is then set for good, as directly.
	// noData statements are not probed: PostgreSQL checks the result type
	// only of statements that return rows, and a FETCH's depends on the
	// cursor of the moment.
	fingerprint string
	noData      bool
	stale       bool
	// commits: the statement may commit before it answers
	// (commitsBeforeAnswer), so a request that runs it is never replayed
	// (replay.go); read at each Bind of it.
	commits bool
	// shape is what a server copy must match to serve this statement on a
	// backend where it has none of its own (see preparedSet.shared): the
	// text with the parameter types the server gave it (fixedBody) and
	// its result description (fingerprint). "" until both are known, and
	// always for the unnamed statement, which is never shared.
	shape string
}

// descriptionFingerprint identifies a RowDescription or NoData message.
func descriptionFingerprint(msg []byte) string {
	sum := sha256.Sum256(msg)
	return string(sum[:16])
}

// appendParse appends a Parse message that prepares s under its name, with
// the parameter types the server gave the client's own Parse when known.
func (s *statement) appendParse(dst []byte) []byte {
	body := s.parseBody
	if s.hasFixed {
		body = s.fixedBody
	}
	dst = pgwire.AppendHeader(dst, pgwire.MsgParse, len(s.name)+1+len(body))
	dst = append(dst, s.name...)
	dst = append(dst, 0)
	return append(dst, body...)
}

// learnResult records the result description the server gave for s
// (RowDescription or NoData, msg whole with its header).
func (s *statement) learnResult(msg []byte) {
	s.fingerprint = descriptionFingerprint(msg)
	q, _, _ := pgwire.CString(s.parseBody)
	s.noData = msg[0] == pgwire.MsgNoData || startsWithKeyword(q, "fetch") || startsWithKeyword(q, "move")
	if s.name != "" && s.hasFixed {
		sum := sha256.Sum256(s.fixedBody)
		s.shape = string(sum[:16]) + s.fingerprint
	}
}

// learnParams records a ParameterDescription body (int16 n, n int32 oids):
// copies of s made later are parsed with exactly these types.
func (s *statement) learnParams(body []byte) {
	if len(body) < 2 || s.hasFixed {
		return
	}
	q, _, ok := pgwire.CString(s.parseBody)
	if !ok {
		return
	}
	s.fixedBody = append(append(append(s.fixedBody[:0], q...), 0), body...)
	s.hasFixed = true
}

// reset makes s (a client's unnamed statement, whose storage is reused)
// the statement of a new Parse body.
func (s *statement) reset(parseBody []byte) {
	s.parseBody = append(s.parseBody[:0], parseBody...)
	s.hasFixed, s.fingerprint, s.noData, s.stale, s.shape = false, "", false, false, ""
	q, _, _ := pgwire.CString(parseBody)
	s.commits = commitsBeforeAnswer(q)
}

// startsWithKeyword reports whether query's first word is kw (lower case).
func startsWithKeyword(query []byte, kw string) bool {
	i := 0
	for i < len(query) && (query[i] == ' ' || query[i] == '\t' || query[i] == '\n' || query[i] == '\r' || query[i] == '(') {
		i++
	}
	if len(query)-i < len(kw) {
		return false
	}
	for j := 0; j < len(kw); j++ {
		if query[i+j]|0x20 != kw[j] {
			return false
		}
	}
	return len(query)-i == len(kw) || !isIdentByte(query[i+len(kw)])
}

func isIdentByte(b byte) bool {
	return b == '_' || b >= '0' && b <= '9' || b|0x20 >= 'a' && b|0x20 <= 'z' || b >= 0x80
}

// statementRegistry names statements and remembers which texts some server
// prepared without error.
type statementRegistry struct {
	seq atomic.Uint64 // server-side names are unique for the process's life
	mu  sync.Mutex
	// known holds the content hashes some server prepared without error,
	// so a later Parse+Sync of the same text can be answered by the proxy
	// (and parsed for real where the statement is first used).
	known map[string]struct{}
}

// maxKnownStatements bounds the known set; it starts over when full.
const maxKnownStatements = 10000

func newStatementRegistry() *statementRegistry {
	return &statementRegistry{known: make(map[string]struct{})}
}

// markKnown records that a server accepted st's text.
func (r *statementRegistry) markKnown(st *statement) {
	if st.hash == "" {
		st.hash = contentHash(st.parseBody)
	}
	r.mu.Lock()
	if len(r.known) >= maxKnownStatements {
		clear(r.known)
	}
	r.known[st.hash] = struct{}{}
	r.mu.Unlock()
}

func (r *statementRegistry) isKnown(parseBody []byte) bool {
	h := contentHash(parseBody)
	r.mu.Lock()
	_, ok := r.known[h]
	r.mu.Unlock()
	return ok
}

// newStatement builds the statement for a client's named Parse body
// (after the name), under a server-side name no other Parse has.
func (r *statementRegistry) newStatement(parseBody []byte) *statement {
	st := newUnnamedStatement(parseBody)
	st.name = "pgsc_" + strconv.FormatUint(r.seq.Add(1), 10)
	return st
}

// newUnnamedStatement builds the statement for a client's unnamed Parse.
func newUnnamedStatement(parseBody []byte) *statement {
	st := &statement{parseBody: append([]byte(nil), parseBody...)}
	if q, _, ok := pgwire.CString(parseBody); ok {
		st.query = string(q)
		st.commits = commitsBeforeAnswer(q)
	}
	return st
}

// contentHash names a statement's content: its text and parameter types.
func contentHash(parseBody []byte) string {
	sum := sha256.Sum256(parseBody)
	return hex.EncodeToString(sum[:12])
}

// preparedSet is the LRU set of proxy statements one backend has prepared.
// It is only touched by the goroutines of the client holding the backend,
// under that client's lock; and by finish's reset of a backend the
// leaving client has already dropped (resetToDefaults), which nobody else
// holds.
type preparedSet struct {
	max   int
	order *list.List // front = most recently used; values are *preparedEntry
	items map[string]*preparedEntry
	// toClose are statements to Close on the backend before the next
	// request (LRU evictions, and a client's own copy made redundant by a
	// shared one).
	toClose []*preparedEntry
	// shapes indexes the copies other clients' statements may share, by
	// statement shape (see statement.shape and shared). Only copies whose
	// description is known to be that shape are here.
	shapes map[string]*preparedEntry
}

// preparedEntry is one statement on a backend. A Parse is sent before its
// outcome is known; pending is the Sync segment of the Parse that claims
// the statement until its ParseComplete confirms it (then -1). A later
// segment cannot count on it: an error in the earlier segment makes the
// server skip that Parse.
type preparedEntry struct {
	name    string
	pending int64
	elem    *list.Element
	// shape is the statement shape this copy is known to have ("" while
	// not verified, or retired after the server said it changed).
	shape string
}

func newPreparedSet(max int) *preparedSet {
	return &preparedSet{max: max, order: list.New(), items: make(map[string]*preparedEntry),
		shapes: make(map[string]*preparedEntry)}
}

// shared returns a copy of shape that a statement without a copy of its own
// on this backend can use in segment seg (marking it recently used), or nil.
func (p *preparedSet) shared(shape string, seg int64) *preparedEntry {
	e := p.shapes[shape]
	if e == nil || !e.certain(seg) {
		return nil
	}
	p.order.MoveToFront(e.elem)
	return e
}

// share records that e is a verified copy of shape. If another confirmed
// copy of that shape is already shared, e is redundant: it is returned
// the other copy and left to the caller.
func (p *preparedSet) share(e *preparedEntry, shape string) (other *preparedEntry) {
	if o := p.shapes[shape]; o != nil && o != e && o.pending < 0 {
		return o
	}
	e.shape = shape
	p.shapes[shape] = e
	return nil
}

// unshare takes e out of the shape index (it leaves the set, or the server
// said its description changed).
func (p *preparedSet) unshare(e *preparedEntry) {
	if e.shape != "" && p.shapes[e.shape] == e {
		delete(p.shapes, e.shape)
	}
}

// retire takes e out of the shape index for good: no other statement
// shares it again.
func (p *preparedSet) retire(e *preparedEntry) {
	p.unshare(e)
	e.shape = ""
}

// discard moves e (in the set) to toClose: a shared copy serves its
// statement, so it is closed before the next request.
func (p *preparedSet) discard(e *preparedEntry) {
	p.unshare(e)
	p.order.Remove(e.elem)
	delete(p.items, e.name)
	p.toClose = append(p.toClose, e)
}

// lookup returns the backend's entry for name (marking it recently used),
// or nil. A statement evicted but not yet closed on the backend is still
// there: it is taken back instead of being prepared twice.
func (p *preparedSet) lookup(name string) *preparedEntry {
	if e, ok := p.items[name]; ok {
		p.order.MoveToFront(e.elem)
		return e
	}
	for i, e := range p.toClose {
		if e.name == name {
			p.toClose = append(p.toClose[:i], p.toClose[i+1:]...)
			p.insert(e)
			return e
		}
	}
	return nil
}

// has reports whether the backend has (or is being sent) name, without
// touching the LRU order or taking back an evicted statement as lookup does.
func (p *preparedSet) has(name string) bool {
	if _, ok := p.items[name]; ok {
		return true
	}
	for _, e := range p.toClose {
		if e.name == name {
			return true
		}
	}
	return false
}

// certain reports whether e can be relied on in segment seg.
func (e *preparedEntry) certain(seg int64) bool { return e.pending < 0 || e.pending == seg }

// add records that a Parse of name is sent in segment seg.
func (p *preparedSet) add(name string, seg int64) {
	if e := p.lookup(name); e != nil {
		// Parsed again: its description is verified anew (shareCopy)
		// before anyone shares it.
		p.retire(e)
		e.pending = seg
		return
	}
	p.insert(&preparedEntry{name: name, pending: seg})
}

func (p *preparedSet) insert(e *preparedEntry) {
	e.elem = p.order.PushFront(e)
	p.items[e.name] = e
	if e.shape != "" && p.shapes[e.shape] == nil {
		p.shapes[e.shape] = e // an evicted copy taken back
	}
	for p.max > 0 && p.order.Len() > p.max {
		old := p.order.Back().Value.(*preparedEntry)
		p.order.Remove(old.elem)
		delete(p.items, old.name)
		p.unshare(old)
		p.toClose = append(p.toClose, old)
	}
}

// confirm records the ParseComplete of the Parse sent in segment seg.
func (p *preparedSet) confirm(name string, seg int64) {
	if e := p.items[name]; e != nil && e.pending == seg {
		e.pending = -1
	}
}

// undo forgets name if the Parse of segment seg, which failed or was
// skipped, is what claimed it.
func (p *preparedSet) undo(name string, seg int64) {
	if e := p.items[name]; e != nil && e.pending == seg {
		p.remove(name)
	}
}

// uncertain records that the backend may or may not have name (a Close
// of it, sent in segment seg, was skipped): it is closed and parsed again
// before a later segment uses it (certain, closeUncertain).
func (p *preparedSet) uncertain(name string, seg int64) {
	if !p.has(name) {
		p.insert(&preparedEntry{name: name, pending: seg})
	}
}

// remove forgets name: a DEALLOCATE or Close of it goes to the backend
// (deallocate, close), or the Parse that claimed it failed (undo).
func (p *preparedSet) remove(name string) {
	if e, ok := p.items[name]; ok {
		p.order.Remove(e.elem)
		delete(p.items, name)
		p.unshare(e)
	}
}

// clear forgets everything: DISCARD ALL ran on the backend with nothing in
// flight (resetToDefaults, after its client left).
func (p *preparedSet) clear() {
	p.order.Init()
	clear(p.items)
	clear(p.shapes)
	p.toClose = p.toClose[:0]
}

// dropAllBut forgets every statement (DEALLOCATE ALL or DISCARD ALL ran
// on the backend) but those a Parse sent after it claims (q.parsesLater):
// the server prepares them after it dropped the others.
func (p *preparedSet) dropAllBut(q *requestQueue) {
	for name, e := range p.items {
		if e.pending < 0 || !q.parsesLater(name, e.pending) {
			p.remove(name)
		}
	}
	kept := p.toClose[:0]
	for _, e := range p.toClose {
		if e.pending >= 0 && q.parsesLater(e.name, e.pending) {
			kept = append(kept, e) // evicted by a later Parse: still to be closed
		}
	}
	clear(p.toClose[len(kept):])
	p.toClose = kept
}

func (p *preparedSet) len() int { return p.order.Len() }

// parseParseMessage splits a Parse body into the statement name and the rest.
func parseParseMessage(body []byte) (name, rest []byte, ok bool) {
	return pgwire.CString(body)
}

// parseBindNames returns the portal and statement names of a Bind body and
// the offset where the rest (parameter formats onwards) begins.
func parseBindNames(body []byte) (portal, stmt []byte, restOff int, ok bool) {
	portal, r, ok1 := pgwire.CString(body)
	if !ok1 {
		return nil, nil, 0, false
	}
	stmt, r2, ok2 := pgwire.CString(r)
	if !ok2 {
		return nil, nil, 0, false
	}
	return portal, stmt, len(body) - len(r2), true
}

// appendBindRenamed appends a Bind that is body with its statement renamed.
func appendBindRenamed(dst []byte, body []byte, portal []byte, restOff int, name string) []byte {
	rest := body[restOff:]
	dst = pgwire.AppendHeader(dst, pgwire.MsgBind, len(portal)+1+len(name)+1+len(rest))
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

// appendDescribeStatement appends Describe('S', name).
func appendDescribeStatement(dst []byte, name string) []byte {
	dst = pgwire.AppendHeader(dst, pgwire.MsgDescribe, 1+len(name)+1)
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// parse handles a client's Parse in transaction mode (name and rest from
// parseParseMessage; the caller checked the name is free and the text
// allowed): the unnamed statement is remembered as the client's own, so
// that the Bind that uses it runs it on any backend and never runs another
// client's; a named one gets a server Parse under a name of its own, so
// the client gets the server's answer for the schema of now, never a copy
// someone else prepared earlier.
func (s *clientStatements) parse(q *requestQueue, reg *statementRegistry, b *backend, out, msg, name, rest []byte) []byte {
	if len(name) == 0 {
		st, gen := s.parseUnnamed(rest)
		b.unnamedOwner, b.unnamedGen, b.unnamedSeg = s, gen, q.seg
		q.push(request{kind: reqParse, stmt: st, gen: gen})
		return append(out, msg...)
	}
	st := reg.newStatement(rest)
	cname := string(name)
	s.byName[cname] = st
	out, _ = s.sendParse(q, b, out, st, request{clientName: cname})
	return out
}

// sendParse sends a Parse of st unless b certainly has it already, and
// claims st on b. r describes the Parse request: the client's own, or the
// proxy's (swallowed). It reports whether it sent one. The first Parse of
// a statement is followed by the proxy's Describe, whose answer becomes the
// statement's description (see statement).
func (s *clientStatements) sendParse(q *requestQueue, b *backend, out []byte, st *statement, r request) ([]byte, bool) {
	e := b.prepared.lookup(st.name)
	if e != nil && e.certain(q.seg) {
		return out, false
	}
	out = closeUncertain(q, out, e)
	b.prepared.add(st.name, q.seg)
	r.kind, r.stmt, r.prepared, r.seg = reqParse, st, true, q.seg
	q.push(r)
	out = st.appendParse(out)
	if st.fingerprint == "" {
		q.push(request{kind: reqDescribeStmt, swallow: true, learn: true, stmt: st})
		out = appendDescribeStatement(out, st.name)
	}
	return out, true
}

// ensurePrepared injects a Parse of st when backend b lacks it; its
// ParseComplete is swallowed.
func (s *clientStatements) ensurePrepared(q *requestQueue, b *backend, out []byte, st *statement) []byte {
	out, _ = s.sendParse(q, b, out, st, request{swallow: true})
	return out
}

// useStatement readies st on b for a Bind or Describe of the client's and
// returns the copy that message must name: st's own copy when b has it;
// else, once st's description is known, a copy of the same shape that b
// holds for another client's statement (see preparedSet.shareCopy: same
// text, same parameter types, same result description, nothing said it
// changed since); else st prepared afresh under its own name. When the
// client was told st's result description and b must prepare st afresh,
// the schema may have changed since: the proxy describes it too (build
// then waits for the answer, see probe) so the client is never handed rows
// of another type than it expects. ok is false when the message must not
// go out (a probe is in flight, or st is stale and the poison was sent
// instead).
func (s *clientStatements) useStatement(q *requestQueue, b *backend, out []byte, st *statement) (_ []byte, e *preparedEntry, ok bool) {
	if st.stale {
		return q.poison(out, staleStatementError()), nil, false
	}
	if st.shape != "" && b.prepared.items[st.name] == nil {
		if e = b.prepared.shared(st.shape, q.seg); e != nil {
			return out, e, true
		}
	}
	if st.fingerprint == "" || st.noData {
		out = s.ensurePrepared(q, b, out, st)
		return out, b.prepared.items[st.name], true
	}
	out, sent := s.sendParse(q, b, out, st, request{swallow: true})
	if !sent {
		return out, b.prepared.items[st.name], true
	}
	q.push(request{kind: reqDescribeStmt, swallow: true, probe: true, stmt: st})
	out = appendDescribeStatement(out, st.name)
	s.probe = make(chan struct{})
	return append(out, pgwire.MsgFlush, 0, 0, 0, 4), nil, false
}

// staleStatementError is PostgreSQL's error for a prepared statement whose
// result type changed, as the server raises it: pgjdbc (isWillHealViaReparse)
// heals only an error from routine RevalidateCachedQuery, by preparing the
// statement again and retrying, as it does directly.
func staleStatementError() *pgError {
	e := newError(pgwire.CodeFeatureNotSupported, "cached plan must not change result type",
		"the table changed since the statement was prepared; prepare it again")
	e.Routine = "RevalidateCachedQuery"
	return e
}

// serverName is the name a message of the client's about st must carry on
// the backend: that of copy e (from useStatement), or st's own.
func serverName(st *statement, e *preparedEntry) string {
	if e != nil {
		return e.name
	}
	return st.name
}

// shareCopy records that the set's own copy of st (confirmed by its
// ParseComplete) has st's shape, as the server described it: other
// clients' statements of that shape may use it on this backend. If the set
// already shares a copy of that shape, st's own copy is redundant: it is
// closed before the next request (what is in flight still runs on it) and
// st uses the shared one from now on.
//
// Why sharing is safe: a client's own Parse always reaches the server and
// the client is told the server's answer; a copy made for another client
// is used for it only if its text, its parameter types and its result
// description are the ones this client was told. PostgreSQL never changes
// a prepared statement's parameter types, and it never changes its result
// type either: after DDL it re-plans the statement (a stale plan with the
// same types is re-planned silently) or fails it with 0A000 "cached plan
// must not change result type", exactly as the client's own statement
// would; such a copy is retired (clientStatements.failed). A copy made
// before a DDL that changed a description differs from a statement
// prepared after it, so it is never taken for it.
func (p *preparedSet) shareCopy(st *statement) {
	e := p.items[st.name]
	if e == nil || e.pending >= 0 {
		return
	}
	if other := p.share(e, st.shape); other != nil {
		p.discard(e)
	}
}

// closeUncertain handles a statement whose Parse went out in an earlier,
// still unanswered segment: whether it exists depends on how that segment
// ends, so it is closed first (closing a missing statement is no error) and
// prepared again.
func closeUncertain(q *requestQueue, out []byte, e *preparedEntry) []byte {
	if e == nil {
		return out
	}
	q.push(request{kind: reqClose, swallow: true})
	return pgwire.AppendCloseStatement(out, e.name)
}

// useUnnamed makes b's unnamed statement the client's own before a Bind or
// Describe of it: parsed again (reply swallowed) unless the proxy parsed it
// there for this client during this hold, in this Sync segment or in an
// earlier one the server has answered it for. A client without one gets
// PostgreSQL's 26000, never whatever b's unnamed statement is. (A Parse
// still unanswered in an earlier segment may be skipped, an error before
// it in its segment: b's unnamed statement would then be the one before,
// maybe another client's. So a Bind or Describe behind such a Parse waits
// until it is answered (judgedByAnswersAhead), and the statement is then
// settled: the newest, or the one before it if the server skipped it.)
func (s *clientStatements) useUnnamed(q *requestQueue, b *backend, out []byte) ([]byte, bool) {
	st := s.unnamed
	if !s.hasUnnamed {
		return q.poison(out, newError(pgwire.CodeInvalidSQLStatementName, "unnamed prepared statement does not exist",
			"send a Parse for the unnamed statement before using it (a simple Query drops it)")), false
	}
	if b.unnamedOwner != s || b.unnamedGen != s.unnamedGen || b.unnamedSeg != q.seg && s.settledGen != s.unnamedGen {
		q.push(request{kind: reqParse, swallow: true, stmt: st, gen: s.unnamedGen})
		out = st.appendParse(out)
		b.unnamedOwner, b.unnamedGen, b.unnamedSeg = s, s.unnamedGen, q.seg
	}
	return out, true
}

// dropUnnamed forgets the client's unnamed statement (a simple Query, or a
// Close of it, drops it), on b too, and returns the event's generation.
func (s *clientStatements) dropUnnamed(b *backend) uint64 {
	s.lastGen++
	s.unnamedGen, s.hasUnnamed, b.unnamedOwner = s.lastGen, false, nil
	return s.lastGen
}

// bind handles a client's Bind (msg, body its body) in transaction mode:
// the statement it names is readied on b and the Bind renamed to the copy
// b has.
//
// bound is the client's statement the Bind runs (nil when it names none
// the client has, or waits for a probe), for the caller's replay check.
func (s *clientStatements) bind(q *requestQueue, b *backend, out, msg, body []byte) (_ []byte, bound *statement) {
	portal, name, restOff, ok := parseBindNames(body)
	if ok && len(name) == 0 {
		var mine bool
		if out, mine = s.useUnnamed(q, b, out); !mine {
			return out, nil
		}
		bound = s.unnamed
	}
	if ok && len(name) > 0 {
		if st := s.named(name); st != nil {
			out, e, ok := s.useStatement(q, b, out, st)
			if !ok {
				return out, nil
			}
			q.push(request{kind: reqBind, stmt: st, entry: e})
			return appendBindRenamed(out, body, portal, restOff, serverName(st, e)), st
		}
	}
	q.push(request{kind: reqBind})
	return append(out, msg...), bound
}

// bindStart is what streamBind made of the start of a Bind.
type bindStart uint8

const (
	bindIncomplete bindStart = iota // its names are not all here yet: nothing was done
	bindHeld                        // a probe must be answered first: the Bind is left unread
	bindDropped                     // the poison went out in its place: the Bind is to be dropped
	bindSent                        // its start went out, renamed: the rest of it follows unchanged
)

// streamBind handles, in transaction mode, the start of a Bind too large
// to hold whole (max_client_buffer), as bind does a whole one: head is
// its header and as much of its body as is here, which must hold its
// portal and statement names. The statement is readied on b and the
// Bind's start, renamed to the copy b has, appended to out; a Bind of the
// unnamed statement (made the client's on b) or of one unknown to the
// proxy goes out unchanged, for the server to judge.
func (s *clientStatements) streamBind(q *requestQueue, b *backend, out, head []byte) (_ []byte, how bindStart) {
	_, bodyLen := pgwire.ParseHeader(head)
	prefix := head[pgwire.HeaderLen:]
	portal, name, restOff, ok := parseBindNames(prefix)
	if !ok {
		return out, bindIncomplete
	}
	st := (*statement)(nil)
	if len(name) > 0 {
		st = s.named(name)
	} else {
		var mine bool
		if out, mine = s.useUnnamed(q, b, out); !mine {
			return out, bindDropped // no unnamed statement: the poison went out
		}
	}
	if st == nil {
		q.push(request{kind: reqBind})
		return append(out, head...), bindSent
	}
	out, e, sent := s.useStatement(q, b, out, st)
	if !sent {
		if s.probe != nil {
			return out, bindHeld
		}
		return out, bindDropped // stale statement: the poison went out instead
	}
	q.push(request{kind: reqBind, stmt: st, entry: e})
	sname := serverName(st, e)
	out = pgwire.AppendHeader(out, pgwire.MsgBind, len(portal)+1+len(sname)+1+bodyLen-restOff)
	out = append(out, portal...)
	out = append(out, 0)
	out = append(out, sname...)
	out = append(out, 0)
	return append(out, prefix[restOff:]...), bindSent
}

// describe handles a client's Describe of a statement (not a portal) in
// transaction mode, as bind does a Bind.
func (s *clientStatements) describe(q *requestQueue, b *backend, out, msg, body []byte) []byte {
	if len(body) > 1 {
		if name, _, ok := pgwire.CString(body[1:]); ok && len(name) == 0 {
			var mine bool
			if out, mine = s.useUnnamed(q, b, out); !mine {
				return out
			}
			q.push(request{kind: reqDescribeStmt, stmt: s.unnamed, gen: s.unnamedGen})
			return append(out, msg...)
		}
		if name, _, ok := pgwire.CString(body[1:]); ok && len(name) > 0 {
			if st := s.named(name); st != nil {
				out, e, ok := s.useStatement(q, b, out, st)
				if !ok {
					return out
				}
				q.push(request{kind: reqDescribeStmt, stmt: st, entry: e})
				return appendDescribeStatement(out, serverName(st, e))
			}
		}
	}
	q.push(request{kind: reqDescribeStmt})
	return append(out, msg...)
}

// close handles a client's Close in transaction mode. A named statement is
// the client's alone: closed on b if b has it; copies on other backends
// are never used again and leave with their LRU.
//
// The statement is forgotten now, before the server's answer: the
// messages after the Close in the same request see it closed, as on the
// server. An error earlier in the Sync segment makes the server skip the
// Close; the request then takes the statement back (undoClose).
func (s *clientStatements) close(q *requestQueue, b *backend, out, msg, body []byte) []byte {
	if len(body) > 1 && body[0] == 'S' {
		if name, _, ok := pgwire.CString(body[1:]); ok && len(name) == 0 {
			r := request{kind: reqClose, closes: s.hasUnnamed}
			r.gen = s.dropUnnamed(b)
			q.push(r)
			return append(out, msg...)
		} else if ok {
			st := s.byName[string(name)]
			delete(s.byName, string(name))
			r := request{kind: reqSynthetic, payload: pgwire.CloseCompleteMessage,
				closes: st != nil, stmt: st, clientName: string(name), seg: q.seg}
			if st != nil && b.prepared.has(st.name) {
				b.prepared.remove(st.name)
				r.kind, r.payload, r.prepared = reqClose, nil, true
				q.push(r)
				return pgwire.AppendCloseStatement(out, st.name)
			}
			q.push(r)
			return out
		}
	}
	q.push(request{kind: reqClose})
	return append(out, msg...)
}

// undoClose takes back the statement a Close or DEALLOCATE r dropped
// (request.closes) when the server failed or skipped r: the server still
// has it. The client's name means it again, unless a later Parse of that
// name, already sent, took it: the client is told that Parse succeeded,
// so its Binds must run that statement, not the one it replaced. (A
// client's Parse of the name waits until r is answered,
// judgedByAnswersAhead, and then fails with 42P05 as directly; only the
// proxy's own Parses go out meanwhile.) The
// backend's copy, which r was to close, may or may not exist (the Parse
// that made it may be what failed): it is recorded as uncertain, so the
// next request that needs it closes it and parses it again
// (closeUncertain). (A Close of the unnamed statement is an event the
// caller undoes: unsent.)
func (s *clientStatements) undoClose(b *backend, r *request) {
	if !r.closes || r.clientName == "" {
		return
	}
	if _, taken := s.byName[r.clientName]; !taken {
		s.byName[r.clientName] = r.stmt
	}
	if r.prepared {
		b.prepared.uncertain(r.stmt.name, r.seg)
	}
}

// undo undoes the bookkeeping of request r, which failed, was skipped
// after an error, or was abandoned with its backend. (A failed Parse of
// the unnamed statement was answered first: failed.)
func (s *clientStatements) undo(b *backend, r *request) {
	if unnamedEvent(r) {
		s.unsent(r)
	}
	if r.closes {
		s.undoClose(b, r)
		return
	}
	s.undoParse(b, r)
}

// answerLocally answers, without a backend, a request at the head of in
// made only of named Parse / Close messages and a Sync, when every
// statement's text is known to prepare cleanly (reg). Such a request
// changes nothing on a server: the statements are prepared on whichever
// backend runs them. Synchronous drivers (libpq's PQprepare in pgbench -M
// prepared) block a whole thread of clients in it, and waiting for a
// backend there can deadlock against that thread's own open transactions
// when the pool is smaller than the client count. With ok, the request is
// taken from in and reply is the client's answer, which the caller
// writes; else in is untouched and the request needs a backend. The
// caller (backendForRequest, in transaction mode) holds no backend, and
// mu, clientConn.mu, is taken around each look at or change of s.
func (s *clientStatements) answerLocally(mu *sync.Mutex, reg *statementRegistry, in *pgwire.ReadBuffer) (reply []byte, ok bool) {
	end, stmts, ok := s.localRequest(mu, reg, in)
	if !ok {
		return nil, false
	}
	for in.Start < end {
		typ, bodyLen := pgwire.ParseHeader(in.Buf[in.Start:])
		body := in.Buf[in.Start+pgwire.HeaderLen : in.Start+pgwire.HeaderLen+bodyLen]
		in.Start += pgwire.HeaderLen + bodyLen
		switch typ {
		case pgwire.MsgParse:
			name, _, _ := parseParseMessage(body)
			mu.Lock()
			s.byName[string(name)] = stmts[0]
			mu.Unlock()
			stmts = stmts[1:]
			reply = append(reply, pgwire.ParseCompleteMessage...)
		case pgwire.MsgClose:
			name, _, _ := pgwire.CString(body[1:])
			mu.Lock()
			delete(s.byName, string(name))
			mu.Unlock()
			reply = append(reply, pgwire.CloseCompleteMessage...)
		case pgwire.MsgSync:
			reply = pgwire.AppendReadyForQuery(reply, 'I')
		}
	}
	return reply, true
}

// localRequest checks whether in starts with a whole request the proxy
// can answer alone (see answerLocally): named Parses of text reg knows,
// under names free in s, Closes of statements, then a Sync. It returns
// where the request ends and the statements of its Parses, in order. mu
// is clientConn.mu, taken around each look at s.
func (s *clientStatements) localRequest(mu *sync.Mutex, reg *statementRegistry, in *pgwire.ReadBuffer) (end int, stmts []*statement, ok bool) {
	pos := in.Start
	for {
		if in.End-pos < pgwire.HeaderLen {
			return 0, nil, false
		}
		typ, bodyLen := pgwire.ParseHeader(in.Buf[pos:])
		if bodyLen < 0 || in.End-pos < pgwire.HeaderLen+bodyLen {
			return 0, nil, false
		}
		body := in.Buf[pos+pgwire.HeaderLen : pos+pgwire.HeaderLen+bodyLen]
		pos += pgwire.HeaderLen + bodyLen
		// Only well-formed messages: PostgreSQL refuses a Sync with a
		// body or a Close whose name does not end the body (08P01), so
		// those go to the server, which says so.
		switch typ {
		case pgwire.MsgSync:
			if bodyLen != 0 {
				return 0, nil, false
			}
			return pos, stmts, true
		case pgwire.MsgParse:
			name, rest, ok := parseParseMessage(body)
			if !ok || len(name) == 0 {
				return 0, nil, false
			}
			mu.Lock()
			taken := s.byName[string(name)] != nil
			mu.Unlock()
			if taken || !reg.isKnown(rest) {
				return 0, nil, false
			}
			// Not parsed now, but for real (a server Parse, under its own
			// name) where the client first uses it.
			stmts = append(stmts, reg.newStatement(rest))
		case pgwire.MsgClose:
			if len(body) < 2 || body[0] != 'S' {
				return 0, nil, false
			}
			if name, rest, ok := pgwire.CString(body[1:]); !ok || len(name) == 0 || len(rest) > 0 {
				return 0, nil, false
			}
		default:
			return 0, nil, false
		}
	}
}

// undoParse forgets a statement whose Parse failed or was skipped.
func (s *clientStatements) undoParse(b *backend, r *request) {
	if r.stmt == nil {
		return
	}
	if r.stmt.name == "" {
		if r.kind == reqParse && b.unnamedOwner == s && b.unnamedGen == r.gen {
			// b's unnamed statement is not this one: none after a
			// failed Parse, the one before after a skipped Parse, which
			// may be another client's.
			b.unnamedOwner = nil
		}
		return
	}
	if r.prepared {
		b.prepared.undo(r.stmt.name, r.seg)
	}
	if r.clientName != "" && s.byName[r.clientName] == r.stmt {
		delete(s.byName, r.clientName)
	}
}

// judgedByAnswersAhead reports whether the client message of type typ
// (body its body) must wait, in transaction mode, until every request
// ahead of it is answered: a Parse of a name the client uses or closes in
// a request still unanswered (the server may skip the Close: directly the
// Parse then fails with 42P05, and its Binds run the statement before it),
// and a DEALLOCATE of one. Directly, a DEALLOCATE ALL or DISCARD ALL pipelined
// ahead of them drops the statement first, so the Parse succeeds and the
// DEALLOCATE fails with 26000 naming the client's statement. The proxy
// learns of that drop only from the reply (droppedStatements): sent at
// once, the Parse was refused with 42P05, and the DEALLOCATE went out
// for the proxy's copy (named pgsc_N in its error, or deallocating a
// stand-in and succeeding). And a Bind or Describe of the unnamed
// statement whose newest Parse went out in an earlier Sync segment, still
// unanswered (q: the client's requests, b: its backend): the server may
// skip that Parse (an error before it in its segment), and directly the
// statement before it runs; sent at once, the proxy parsed its newest
// again (useUnnamed). No driver sends these in the common exchange (a
// Bind of the unnamed statement follows its Parse in the same segment),
// so the wait costs the common path nothing but this look. Under c.mu.
func (s *clientStatements) judgedByAnswersAhead(typ byte, body []byte, b *backend, q *requestQueue) bool {
	switch typ {
	case pgwire.MsgBind, pgwire.MsgDescribe:
		if !s.hasUnnamed || s.settledGen == s.unnamedGen ||
			b.unnamedOwner == s && b.unnamedGen == s.unnamedGen && b.unnamedSeg == q.seg {
			return false // settled, or parsed in this segment
		}
		if typ == pgwire.MsgDescribe {
			return len(body) >= 2 && body[0] == 'S' && body[1] == 0
		}
		_, stmt, _, ok := parseBindNames(body)
		return ok && len(stmt) == 0
	case pgwire.MsgParse:
		name, _, ok := parseParseMessage(body)
		if !ok || len(name) == 0 {
			return false
		}
		if s.byName[string(name)] != nil {
			return true
		}
		// A Close or DEALLOCATE of the name still unanswered: if the
		// server skips or fails it, the name is still taken.
		for i := range q.len() {
			if r := q.at(i); r.closes && r.clientName == string(name) {
				return true
			}
		}
		return false
	case pgwire.MsgQuery:
		q := body
		if n := len(q); n > 0 && q[n-1] == 0 {
			q = q[:n-1]
		}
		if !needsClassify(q) || !hasPrefixFold(q[skipSpace(q):], "deallocate ") {
			return false
		}
		kind, name := classifyQuery(q)
		return kind == queryDeallocate && s.byName[name] != nil
	}
	return false
}

// deallocate handles the client's "DEALLOCATE name" Query r: the client's
// name means a proxy statement, so that one is deallocated and the client
// sees exactly the reply PostgreSQL would give. ok is false when name is
// not the client's.
//
// A backend that lacks the statement's copy (or cannot tell whether it
// has it) gets a statement of that name first, so that the DEALLOCATE
// finds one: with an empty text, not the client's, which may no longer
// parse where the client's statement, prepared before, still exists
// directly (a table dropped since); and in a Sync segment of its own whose
// replies and error are dropped (request.quiet). An error there (25P02 in
// an aborted transaction) must not reach the client, and must not be
// followed by the Query without a Sync: the server would skip everything
// up to a Sync, the Query too, and the client would wait for its reply
// for ever. In an aborted transaction the DEALLOCATE then fails as it does
// directly, and a DEALLOCATE that fails deallocated nothing (r.closes).
func (s *clientStatements) deallocate(q *requestQueue, b *backend, out []byte, r request, name string) (_ []byte, ok bool) {
	st := s.byName[name]
	if st == nil {
		return out, false
	}
	delete(s.byName, name)
	if e := b.prepared.lookup(st.name); e == nil || !e.certain(q.seg) {
		if e != nil {
			q.push(request{kind: reqClose, swallow: true, quiet: true})
			out = pgwire.AppendCloseStatement(out, st.name)
		}
		q.push(request{kind: reqParse, swallow: true, quiet: true})
		out = pgwire.AppendHeader(out, pgwire.MsgParse, len(st.name)+1+1+2)
		out = append(append(out, st.name...), 0, 0, 0, 0) // name, empty text, no parameter types
		q.push(request{kind: reqSync, swallow: true})
		out = append(out, pgwire.MsgSync, 0, 0, 0, 4)
	}
	b.prepared.remove(st.name)
	r.closes, r.stmt, r.clientName, r.prepared, r.seg = true, st, name, true, q.seg
	q.push(r)
	return pgwire.AppendQuery(out, "DEALLOCATE "+st.name), true
}

// closeEvicted closes on the backend, ahead of the client's request
// (nothing is in flight), the statements in toClose (the LRU evicted them,
// or a shared copy made a client's own copy redundant: discard), in a
// Sync segment of their own whose replies are swallowed.
func (p *preparedSet) closeEvicted(q *requestQueue, out []byte) []byte {
	if len(p.toClose) == 0 {
		return out
	}
	for _, e := range p.toClose {
		out = pgwire.AppendCloseStatement(out, e.name)
		q.push(request{kind: reqClose, swallow: true})
	}
	p.toClose = p.toClose[:0]
	out = append(out, pgwire.MsgSync, 0, 0, 0, 4)
	q.push(request{kind: reqSync, swallow: true})
	return out
}

// parseCompleted does the bookkeeping of a ParseComplete (r popped): the
// text is known to prepare cleanly, and b's set holds the statement for
// sure.
func parseCompleted(reg *statementRegistry, b *backend, r *request) {
	if r.stmt == nil || r.stmt.name == "" {
		return
	}
	reg.markKnown(r.stmt)
	if r.prepared {
		b.prepared.confirm(r.stmt.name, r.seg)
		if r.swallow && r.stmt.noData && r.stmt.shape != "" {
			// A copy the proxy made with st's parameter types of a
			// statement that returns no rows: it has st's shape (such
			// statements are not probed, see statement).
			b.prepared.shareCopy(r.stmt)
		}
	}
}

// paramsDescribed records a ParameterDescription (msg whole) answering the
// head request: a Describe of a statement whose description the proxy
// learns (its own right after the first Parse, or the client's).
func (s *clientStatements) paramsDescribed(head *request, msg []byte) {
	if head.kind == reqDescribeStmt && head.stmt != nil && !head.probe && (head.learn || !head.swallow) &&
		(head.stmt.name != "" || head.gen == s.unnamedGen) {
		head.stmt.learnParams(msg[pgwire.HeaderLen:])
	}
}

// resultDescribed records a RowDescription or NoData (msg whole) answering
// Describe r (popped): the statement's description when first learned, or
// a probe's answer, which says whether the client's statement went stale
// (then stale is true, once: the caller logs it).
func (s *clientStatements) resultDescribed(b *backend, r *request, msg []byte) (stale bool) {
	if r.kind != reqDescribeStmt || r.stmt == nil {
		return false
	}
	switch {
	case r.probe:
		if descriptionFingerprint(msg) != r.stmt.fingerprint {
			r.stmt.stale, stale = true, true
		} else {
			b.prepared.shareCopy(r.stmt)
		}
		s.endProbe()
	case (r.learn || !r.swallow) && r.stmt.fingerprint == "" && (r.stmt.name != "" || r.gen == s.unnamedGen):
		r.stmt.learnResult(msg)
		if r.stmt.shape != "" {
			b.prepared.shareCopy(r.stmt)
		}
	}
	return stale
}

// failed undoes the bookkeeping of request r (popped), which an
// ErrorResponse (body, nil when r was skipped after one) failed or the
// server skipped. A copy the server says changed under it (0A000: its
// result type changed; XX000: a type it uses is gone) is shared no more.
func (s *clientStatements) failed(b *backend, r *request, errBody []byte) {
	if errBody != nil && r.kind == reqParse && unnamedEvent(r) {
		// The client's Parse of the unnamed statement failed: the server
		// dropped the statement before, and there is none.
		s.settle(nil, r.gen)
	}
	s.undo(b, r)
	if r.probe {
		s.endProbe()
	}
	if r.entry != nil && errBody != nil {
		if code := pgwire.ErrorField(errBody, 'C'); string(code) == pgwire.CodeFeatureNotSupported || string(code) == pgwire.CodeInternalError {
			b.prepared.retire(r.entry)
		}
	}
}

// appendErrorClientNamed appends to dst the server's ErrorResponse (body)
// to the client's request r about a named statement, with the server's
// name of the statement's copy in its message replaced by the client's
// own, and reports whether it did: PostgreSQL quotes the statement's name
// in the errors of a Bind or Describe that names it ("bind message
// supplies 1 parameters, but prepared statement \"pgsc_3\" requires 2"),
// and the client never used pgsc_3. An error on this path only, so the
// lookup of the client's name walks its statements, and it allocates.
func (s *clientStatements) appendErrorClientNamed(dst []byte, r *request, body []byte) ([]byte, bool) {
	server := serverName(r.stmt, r.entry)
	if server == "" {
		return dst, false // the unnamed statement: the same name directly
	}
	quoted := `"` + server + `"`
	if !bytes.Contains(pgwire.ErrorField(body, 'M'), []byte(quoted)) {
		return dst, false
	}
	client, found := "", false
	for name, st := range s.byName {
		if st == r.stmt {
			client, found = name, true
			break
		}
	}
	if !found {
		return dst, false
	}
	var e pgproto3.ErrorResponse
	if e.Decode(body) != nil {
		return dst, false
	}
	e.Message = strings.Replace(e.Message, quoted, `"`+client+`"`, 1)
	return pgerrAppend(dst, &e), true
}

// droppedStatements reports whether a CommandComplete's tag (body, NUL
// ended) says that the server dropped every prepared statement of the
// session: DEALLOCATE ALL or DISCARD ALL, however the client sent it (a
// simple Query of that one statement or of several, the extended
// protocol), as pgjdbc tells it too. The proxy does not read it from the
// client's SQL: a Query of several statements, and any Parse, would escape
// it, and the backend's set would then name statements the server no
// longer has, failing every client whose copy it holds with 26000.
func droppedStatements(tag []byte) bool {
	if n := len(tag); n > 0 && tag[n-1] == 0 {
		tag = tag[:n-1]
	}
	return string(tag) == "DEALLOCATE ALL" || string(tag) == "DISCARD ALL"
}

// deallocated records that DEALLOCATE ALL or DISCARD ALL, the request at
// the head of q, ran on b: the server dropped every statement prepared
// before it in the stream. The requests behind the head went out after it
// (pipelined before its reply came back): the statements their Parses
// prepare are made after the drop, so the client's names for them and b's
// copies stay. A Close or DEALLOCATE behind it of a statement it dropped
// takes nothing back if the server fails or skips it (request.closes):
// the statement is gone either way.
func (s *clientStatements) deallocated(b *backend, q *requestQueue) {
	for name, st := range s.byName {
		if !q.parsesLaterAs(name, st) {
			delete(s.byName, name)
		}
	}
	b.prepared.dropAllBut(q)
	for i := 1; i < q.len(); i++ {
		if r := q.at(i); r.closes && r.clientName != "" && !q.parsesLaterAs(r.clientName, r.stmt) {
			r.closes = false
		}
	}
}
