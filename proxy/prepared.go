package proxy

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

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
	s.hasFixed, s.fingerprint, s.noData, s.stale = false, "", false, false
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
// under that client's lock.
type preparedSet struct {
	max   int
	order *list.List // front = most recently used; values are *preparedEntry
	items map[string]*preparedEntry
	// toClose are statements to Close on the backend before the next
	// request (LRU evictions and statements a server invalidated).
	toClose []*preparedEntry
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
}

func newPreparedSet(max int) *preparedSet {
	return &preparedSet{max: max, order: list.New(), items: make(map[string]*preparedEntry)}
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
		e.pending = seg
		return
	}
	p.insert(&preparedEntry{name: name, pending: seg})
}

func (p *preparedSet) insert(e *preparedEntry) {
	e.elem = p.order.PushFront(e)
	p.items[e.name] = e
	for p.max > 0 && p.order.Len() > p.max {
		old := p.order.Back().Value.(*preparedEntry)
		p.order.Remove(old.elem)
		delete(p.items, old.name)
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

// remove forgets name (DEALLOCATE ran on the backend).
func (p *preparedSet) remove(name string) {
	if e, ok := p.items[name]; ok {
		p.order.Remove(e.elem)
		delete(p.items, name)
	}
}

// clear forgets everything (DEALLOCATE ALL / DISCARD ALL ran on the backend).
func (p *preparedSet) clear() {
	p.order.Init()
	clear(p.items)
	p.toClose = p.toClose[:0]
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
