package proxy

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"sync"
	"sync/atomic"
)

// statement is a named prepared statement as a client defined it: the body
// of its Parse message without the name (query text and parameter types).
// Its proxy-wide name is derived from that content, so every client that
// prepares the same text shares one server-side statement per backend.
type statement struct {
	name  string // proxy-wide name used on backends
	hash  string // hex content hash, without the epoch
	epoch uint32 // invalidation epoch the name was made for
	query string // for logs and leak reports
	// parseBody is the Parse body after the statement name:
	// query\0 int16 nparams [int32 oid]...
	parseBody []byte
	// fingerprint identifies the result description the client was given
	// when it described the statement ("" if it never did); stale is set
	// when a backend that prepared it afresh describes another result (a
	// schema change): the client would decode rows with the wrong types.
	fingerprint string
	stale       bool
}

// descriptionFingerprint identifies a RowDescription or NoData message.
func descriptionFingerprint(msg []byte) string {
	sum := sha256.Sum256(msg)
	return string(sum[:16])
}

// appendParse appends a Parse message that prepares s under its proxy name.
func (s *statement) appendParse(dst []byte) []byte {
	dst = appendHeader(dst, msgParse, len(s.name)+1+len(s.parseBody))
	dst = append(dst, s.name...)
	dst = append(dst, 0)
	return append(dst, s.parseBody...)
}

// statementRegistry hands out statements and remembers which content hashes
// were invalidated by a server ("cached plan must not change result type"),
// so the next prepare of that content uses a fresh name.
type statementRegistry struct {
	mu     sync.Mutex
	epochs map[string]uint32 // only hashes that were ever invalidated
	gen    atomic.Uint64     // bumped on every invalidation
	// known holds the content hashes some server prepared without error,
	// so a later Parse of the same text can be answered by the proxy.
	known map[string]struct{}
}

// maxKnownStatements bounds the known set; it starts over when full.
const maxKnownStatements = 10000

func newStatementRegistry() *statementRegistry {
	return &statementRegistry{epochs: make(map[string]uint32), known: make(map[string]struct{})}
}

// markKnown records that a server accepted st's text.
func (r *statementRegistry) markKnown(st *statement) {
	r.mu.Lock()
	if len(r.known) >= maxKnownStatements {
		clear(r.known)
	}
	r.known[st.hash] = struct{}{}
	r.mu.Unlock()
}

func (r *statementRegistry) isKnown(st *statement) bool {
	r.mu.Lock()
	_, ok := r.known[st.hash]
	r.mu.Unlock()
	return ok
}

// newStatement builds the statement for a Parse body (after the name).
func (r *statementRegistry) newStatement(parseBody []byte) *statement {
	st := &statement{hash: contentHash(parseBody), parseBody: append([]byte(nil), parseBody...)}
	if q, _, ok := cstring(parseBody); ok {
		st.query = string(q)
	}
	r.name(st)
	return st
}

// contentHash names a statement's content: its text and parameter types.
func contentHash(parseBody []byte) string {
	sum := sha256.Sum256(parseBody)
	return hex.EncodeToString(sum[:12])
}

func (r *statementRegistry) name(st *statement) {
	var e uint32
	if r.gen.Load() != 0 {
		r.mu.Lock()
		e = r.epochs[st.hash]
		r.mu.Unlock()
	}
	st.epoch = e
	if e == 0 {
		st.name = "pgsc_" + st.hash
	} else {
		st.name = "pgsc_" + st.hash + "_" + strconv.FormatUint(uint64(e), 10)
	}
}

// current returns st, or a renamed copy when its content was invalidated
// since st was named. The fast path is one atomic load.
func (r *statementRegistry) current(st *statement, seenGen *uint64) *statement {
	g := r.gen.Load()
	if g == *seenGen {
		return st
	}
	*seenGen = g
	r.mu.Lock()
	e := r.epochs[st.hash]
	r.mu.Unlock()
	if e == st.epoch {
		return st
	}
	ns := *st
	r.name(&ns)
	return &ns
}

// invalidate retires the server-side name of st's content everywhere.
func (r *statementRegistry) invalidate(st *statement) {
	r.mu.Lock()
	if r.epochs[st.hash] == st.epoch {
		r.epochs[st.hash] = st.epoch + 1
		r.gen.Add(1)
	}
	r.mu.Unlock()
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

// retire forgets name and closes it on the backend at the next chance.
func (p *preparedSet) retire(name string) {
	if e, ok := p.items[name]; ok {
		p.remove(name)
		p.toClose = append(p.toClose, e)
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
	return cstring(body)
}

// parseBindNames returns the portal and statement names of a Bind body and
// the offset where the rest (parameter formats onwards) begins.
func parseBindNames(body []byte) (portal, stmt []byte, restOff int, ok bool) {
	portal, r, ok1 := cstring(body)
	if !ok1 {
		return nil, nil, 0, false
	}
	stmt, r2, ok2 := cstring(r)
	if !ok2 {
		return nil, nil, 0, false
	}
	return portal, stmt, len(body) - len(r2), true
}

// appendBindRenamed appends a Bind that is body with its statement renamed.
func appendBindRenamed(dst []byte, body []byte, portal []byte, restOff int, name string) []byte {
	rest := body[restOff:]
	dst = appendHeader(dst, msgBind, len(portal)+1+len(name)+1+len(rest))
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

// appendDescribeStatement appends Describe('S', name).
func appendDescribeStatement(dst []byte, name string) []byte {
	dst = appendHeader(dst, msgDescribe, 1+len(name)+1)
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}
