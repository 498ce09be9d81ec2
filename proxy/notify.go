// LISTEN / NOTIFY in transaction mode: one shared listener connection per
// database (notifyHub), the client's LISTEN and UNLISTEN read on their way
// (preListen), and the queueing and delivery of notifications.

package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// LISTEN / NOTIFY in transaction mode.
//
// A client's LISTEN cannot stay on the backend it ran on: that backend goes
// to other clients. Instead each database has one shared listener
// connection (outside the pool) that LISTENs on the union of the channels
// its clients listen on, and hands each notification to the clients
// listening on that channel.
//
// The client's LISTEN / UNLISTEN statements still run on its backend, so
// the client gets PostgreSQL's own replies (and errors); before they are
// sent, the proxy reads them (parseListens) and updates the hub, waiting
// until the listener's LISTEN is done, so that no notification sent after
// the client's LISTEN returns can be missed. At the end of the transaction
// the state check sees the backend listening and sends UNLISTEN * there
// (swallowed); notifications a backend receives meanwhile are dropped, as
// the hub delivers them.
//
// Delivery, as PostgreSQL does it, happens only while the client is
// between transactions: the notification is queued on the client and
// written by its client reader when it holds no backend, or by its server
// reader after a ReadyForQuery that ends a transaction.

// maxPendingNotifications bounds a client's queue of undelivered
// notifications (a client that never reads); more are dropped and logged.
const maxPendingNotifications = 10000

// hubWait bounds how long a client's LISTEN waits for the shared listener.
const hubWait = 10 * time.Second

// hubLinger is how long the listener connection stays open once no
// client listens, for the next LISTEN (a variable for the tests).
var hubLinger = 30 * time.Second

// hubRetry is the wait between attempts to (re)connect the listener.
const hubRetry = time.Second

// notifyHub is one database's shared listener.
type notifyHub struct {
	srv *Server
	db  *Database
	log *slog.Logger

	mu        sync.Mutex
	byChannel map[string]map[*clientConn]struct{}
	byClient  map[*clientConn]map[string]struct{}
	running   bool
	gen, done uint64             // changes requested / applied on the listener
	waiters   []hubWaiter        // LISTENs waiting for done >= gen
	cancel    context.CancelFunc // interrupts the listener's wait
	failures  int                // consecutive connect failures, for the log
}

type hubWaiter struct {
	gen uint64
	ch  chan struct{}
}

// hubFor returns db's hub, or nil when db has no listener configuration
// or the mode does not carry session state (session mode: LISTEN stays
// on the client's own backend).
func (s *Server) hubFor(db *Database) *notifyHub {
	if db.Listen == nil || !s.cfg.Mode.policy().carrySessionState {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.hubs[db.Name]
	if h == nil {
		h = &notifyHub{srv: s, db: db, log: s.log.With("database", db.Name, "component", "listener"),
			byChannel: make(map[string]map[*clientConn]struct{}), byClient: make(map[*clientConn]map[string]struct{})}
		s.hubs[db.Name] = h
	}
	return h
}

// listen adds channel for c and waits until the listener LISTENs on it.
func (h *notifyHub) listen(c *clientConn, channel string) {
	h.mu.Lock()
	if h.byClient[c] == nil {
		h.byClient[c] = make(map[string]struct{})
	}
	h.byClient[c][channel] = struct{}{}
	cs := h.byChannel[channel]
	if cs == nil {
		cs = make(map[*clientConn]struct{})
		h.byChannel[channel] = cs
	}
	cs[c] = struct{}{}
	h.gen++
	w := hubWaiter{gen: h.gen, ch: make(chan struct{})}
	h.waiters = append(h.waiters, w)
	h.kickLocked()
	h.mu.Unlock()
	t := time.NewTimer(hubWait)
	defer t.Stop()
	select {
	case <-w.ch:
	case <-t.C:
		c.log.Warn("the shared LISTEN connection did not confirm in time; notifications may be missed until it does", "channel", channel)
	case <-c.ctx.Done():
	}
}

// unlisten removes channel (all channels when all) for c.
func (h *notifyHub) unlisten(c *clientConn, channel string, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	chans := h.byClient[c]
	if chans == nil {
		return
	}
	for ch := range chans {
		if all || ch == channel {
			delete(chans, ch)
			if cs := h.byChannel[ch]; cs != nil {
				delete(cs, c)
				if len(cs) == 0 {
					delete(h.byChannel, ch)
				}
			}
		}
	}
	if len(chans) == 0 {
		delete(h.byClient, c)
	}
	h.gen++
	h.kickLocked()
}

// listening reports whether c listens on channel through the hub.
func (h *notifyHub) listening(c *clientConn, channel string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.byClient[c][channel]
	return ok
}

// listenLate makes sure the hub listens for c on each channel of late,
// those c's backend was found listening on (listenTrack.late): the
// client expects their notifications. c.mu is not held.
func (h *notifyHub) listenLate(c *clientConn, late []string) {
	for _, ch := range late {
		if !h.listening(c, ch) {
			h.listen(c, ch)
		}
	}
}

// kickLocked makes the listener apply the changes, starting it if needed.
func (h *notifyHub) kickLocked() {
	if h.running {
		if h.cancel != nil {
			h.cancel()
		}
		return
	}
	if len(h.byChannel) == 0 {
		h.releaseWaitersLocked(h.gen)
		return
	}
	s := h.srv
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.hubWG.Add(1)
	}
	s.mu.Unlock()
	if closed {
		h.releaseWaitersLocked(h.gen)
		return
	}
	h.running = true
	go func() {
		defer s.hubWG.Done()
		h.run(s.hubCtx)
	}()
}

func (h *notifyHub) releaseWaitersLocked(done uint64) {
	h.done = done
	kept := h.waiters[:0]
	for _, w := range h.waiters {
		if w.gen <= done {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	h.waiters = kept
}

// run is the listener goroutine. It ends when no client has listened for
// hubLinger (closing its connection) or when the server closes (ctx).
func (h *notifyHub) run(ctx context.Context) {
	var conn *pgconn.PgConn
	listened := map[string]bool{}
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
	}()
	// lingered: a whole hubLinger passed with no client listening.
	lingered := false
	for {
		if conn == nil {
			h.mu.Lock()
			if len(h.byChannel) == 0 {
				// Nobody listens (any more): no reason to connect.
				h.running = false
				h.releaseWaitersLocked(h.gen)
				h.mu.Unlock()
				return
			}
			h.mu.Unlock()
			var err error
			conn, err = h.connect(ctx)
			if err != nil {
				if ctx.Err() != nil || !h.retryAfter(ctx, err) {
					h.stop()
					return
				}
				continue
			}
			listened = map[string]bool{}
		}
		h.mu.Lock()
		idle := len(h.byChannel) == 0
		if (idle && lingered) || ctx.Err() != nil {
			h.running = false
			h.releaseWaitersLocked(h.gen)
			h.mu.Unlock()
			return
		}
		gen := h.gen
		var sql strings.Builder
		for ch := range h.byChannel {
			if !listened[ch] {
				sql.WriteString("LISTEN " + quoteIdentAlways(ch) + ";")
			}
		}
		var dropped []string
		for ch := range listened {
			if _, ok := h.byChannel[ch]; !ok {
				sql.WriteString("UNLISTEN " + quoteIdentAlways(ch) + ";")
				dropped = append(dropped, ch)
			}
		}
		want := make([]string, 0, len(h.byChannel))
		for ch := range h.byChannel {
			want = append(want, ch)
		}
		h.mu.Unlock()
		if sql.Len() > 0 {
			ectx, cancel := context.WithTimeout(ctx, hubWait)
			_, err := conn.Exec(ectx, sql.String()).ReadAll()
			cancel()
			if err != nil {
				h.log.Warn("the shared LISTEN connection failed; reconnecting and listening again", "err", err)
				conn.Close(context.Background())
				conn = nil
				// A LISTEN the server refuses (a hot standby's "cannot
				// execute LISTEN during recovery") fails again at once:
				// wait as after a failed connect, rather than reconnect in
				// a tight loop, thousands of times a second. LISTENs
				// waiting now are not kept waiting meanwhile.
				h.mu.Lock()
				h.releaseWaitersLocked(h.gen)
				h.mu.Unlock()
				t := time.NewTimer(hubRetry)
				select {
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
				continue
			}
			for _, ch := range want {
				listened[ch] = true
			}
			for _, ch := range dropped {
				delete(listened, ch)
			}
		}
		h.mu.Lock()
		h.releaseWaitersLocked(gen)
		// With no client listening the connection stays up to hubLinger
		// (its channels UNLISTENed above), then closes: a client that
		// LISTENs and UNLISTENs again and again must not cost the server
		// a new connection each time.
		var wctx context.Context
		var cancel context.CancelFunc
		if idle {
			wctx, cancel = context.WithTimeout(ctx, hubLinger)
		} else {
			wctx, cancel = context.WithCancel(ctx)
		}
		h.cancel = cancel
		if h.gen != gen {
			cancel()
		}
		h.mu.Unlock()
		err := conn.WaitForNotification(wctx)
		woken := wctx.Err() != nil
		lingered = idle && errors.Is(wctx.Err(), context.DeadlineExceeded)
		h.mu.Lock()
		h.cancel = nil
		h.mu.Unlock()
		cancel()
		if err != nil && (!woken || conn.IsClosed()) {
			h.log.Warn("the shared LISTEN connection was lost; reconnecting and listening again (notifications sent meanwhile are lost)", "err", err)
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// connect opens the listener connection.
func (h *notifyHub) connect(ctx context.Context) (*pgconn.PgConn, error) {
	cfg := h.db.Listen.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "pgsidecar listener"
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { h.deliver(n) }
	cctx, cancel := context.WithTimeout(ctx, hubWait)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err == nil {
		h.mu.Lock()
		h.failures = 0
		h.mu.Unlock()
	}
	return conn, err
}

// retryAfter logs a failed connect and waits before the next; it reports
// false when the listener should stop (nobody listens, or ctx ended).
func (h *notifyHub) retryAfter(ctx context.Context, err error) bool {
	h.mu.Lock()
	h.failures++
	if h.failures == 1 {
		h.log.Warn("cannot open the shared LISTEN connection; retrying", "err", err)
	}
	// LISTENs waiting now are not kept waiting for an outage.
	h.releaseWaitersLocked(h.gen)
	idle := len(h.byChannel) == 0
	h.mu.Unlock()
	if idle {
		return false
	}
	t := time.NewTimer(hubRetry)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (h *notifyHub) stop() {
	h.mu.Lock()
	h.running = false
	h.releaseWaitersLocked(h.gen)
	h.mu.Unlock()
}

// deliver queues n on every client listening on its channel. The sender
// PID is the real sending backend's, as PostgreSQL reports it.
func (h *notifyHub) deliver(n *pgconn.Notification) {
	msg := appendNotification(nil, n.PID, n.Channel, n.Payload)
	h.mu.Lock()
	cs := make([]*clientConn, 0, len(h.byChannel[n.Channel]))
	for c := range h.byChannel[n.Channel] {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.queueNotification(msg)
	}
}

func appendNotification(dst []byte, pid uint32, channel, payload string) []byte {
	dst = pgwire.AppendHeader(dst, pgwire.MsgNotification, 4+len(channel)+1+len(payload)+1)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	dst = append(dst, channel...)
	dst = append(dst, 0)
	dst = append(dst, payload...)
	return append(dst, 0)
}

func quoteIdentAlways(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// queueNotification queues msg for c and wakes whoever delivers it.
func (c *clientConn) queueNotification(msg []byte) {
	c.mu.Lock()
	if queued, first := c.listen.queue(msg); !queued {
		if first {
			c.log.Warn("client does not read its notifications; dropping new ones", "queued", len(c.listen.notes))
		}
		c.mu.Unlock()
		return
	}
	b := c.be
	async := b != nil && c.reader.async
	if async && c.exchange.transactionOverLocked(c.policy) {
		// Held between transactions by a backend reader (pinned, or about
		// to be released): it delivers.
		b.setReadDeadline(time.Now())
	}
	c.mu.Unlock()
	if !async {
		// The client reader delivers, between transactions (flushNotes);
		// one in the middle of an exchange delivers after its
		// ReadyForQuery, and sees this wake-up after that. A parked
		// client is given its goroutine back.
		c.wake()
	}
}

// queue queues msg, unless maxPendingNotifications wait already (a
// client that does not read): then msg is dropped, queued is false, and
// first says it is the first dropped since the last delivery, which the
// caller logs.
func (l *listenTrack) queue(msg []byte) (queued, first bool) {
	if len(l.notes) >= maxPendingNotifications {
		l.dropped++
		return false, l.dropped == 1
	}
	l.notes = append(l.notes, msg)
	return true, false
}

// takeNotes returns the queued notifications, or nil.
func (l *listenTrack) takeNotes() [][]byte {
	if len(l.notes) == 0 {
		return nil
	}
	n := l.notes
	l.notes = nil
	l.dropped = 0
	return n
}

// appendNotes appends the queued notifications to out, b's routed
// replies for the client, and returns the lot, now in b.out. Between
// transactions only (relayReplies), so that they go after the
// ReadyForQuery.
func (l *listenTrack) appendNotes(b *backend, out []byte) []byte {
	o := append(b.out[:0], out...)
	for _, m := range l.takeNotes() {
		o = append(o, m...)
	}
	b.out = o
	return o
}

// takeLate returns the channels the backend listened on that the hub may
// lack (notifyHub.listenLate deals with them once c.mu is let go), or nil.
func (l *listenTrack) takeLate() []string {
	late := l.late
	l.late = nil
	return late
}

// flushNotes writes queued notifications when the client is between
// transactions and no backend reader runs (client reader only: nobody else
// writes to the client then).
func (c *clientConn) flushNotes() error {
	c.mu.Lock()
	if c.be != nil && (c.reader.async || c.exchange.q.len() > 0 || c.exchange.inBatch || c.exchange.txStatus != 'I') {
		// A backend reader writes to the client, or a transaction is
		// open: delivered after its ReadyForQuery.
		c.mu.Unlock()
		return nil
	}
	notes := c.listen.takeNotes()
	c.mu.Unlock()
	for _, m := range notes {
		if err := c.writeClient(m); err != nil {
			return err
		}
	}
	return nil
}

// preListen reads the LISTEN / UNLISTEN statements in the whole Query and
// Parse messages of buffered, client c's unread bytes (which start at a
// message), and applies them for c before they are sent, so the shared
// listener listens before the client's LISTEN returns.
func (h *notifyHub) preListen(c *clientConn, buffered []byte) {
	for len(buffered) >= pgwire.HeaderLen {
		typ, bodyLen := pgwire.ParseHeader(buffered)
		if bodyLen < 0 || len(buffered) < pgwire.HeaderLen+bodyLen {
			return
		}
		body := buffered[pgwire.HeaderLen : pgwire.HeaderLen+bodyLen]
		buffered = buffered[pgwire.HeaderLen+bodyLen:]
		var q []byte
		switch typ {
		case pgwire.MsgQuery:
			q = body
		case pgwire.MsgParse:
			if _, rest, ok := parseParseMessage(body); ok {
				q, _, _ = pgwire.CString(rest)
			}
		default:
			continue
		}
		if !containsFold(q, "listen") {
			continue
		}
		parseListens(q, func(listen bool, channel string, all bool) {
			if listen {
				h.listen(c, channel)
			} else {
				h.unlisten(c, channel, all)
			}
		})
	}
}

// parseListens calls fn for each LISTEN / UNLISTEN statement in q, with
// the channel as PostgreSQL names it (unquoted names folded to lower case).
func parseListens(q []byte, fn func(listen bool, channel string, all bool)) {
	l := sqlLexer{q: q}
	for {
		w, ok := l.nextStatementWord()
		if !ok {
			return
		}
		if !eqFold(w, "listen") && !eqFold(w, "unlisten") {
			continue
		}
		listen := eqFold(w, "listen")
		start := l.i
		n, nk := l.next()
		// A name that is not valid UTF-8 is skipped: the server refuses
		// the statement itself (22021) when the client speaks UTF-8, and
		// in another client_encoding the bytes are not the name the
		// server converts them to. On the shared listener's connection
		// (UTF-8) its LISTEN would fail, and with it every channel's.
		switch {
		case nk == tokWord:
			if ch := truncIdent(foldIdent(n)); utf8.ValidString(ch) {
				fn(listen, ch, false)
			}
		case nk == tokOther && l.i > 0 && q[l.i-1] == '"':
			if s, ok := unquoteIdent(q[start:l.i]); ok && utf8.ValidString(s) {
				fn(listen, truncIdent(s), false)
			}
		case nk == tokOther && !listen && l.i > 0 && q[l.i-1] == '*':
			fn(false, "", true)
		}
	}
}

// unquoteIdent reads a "quoted" identifier (leading space allowed).
func unquoteIdent(b []byte) (string, bool) {
	s := strings.TrimLeft(string(b), " \t\r\n\f\v")
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", false
	}
	return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`), true
}

// foldIdent folds an unquoted identifier as PostgreSQL's
// downcase_identifier does in a multibyte server encoding: ASCII letters
// only ("Émile" stays "Émile"; strings.ToLower would make it "émile", a
// channel nobody notifies).
func foldIdent(b []byte) string {
	out := []byte(string(b))
	for i, ch := range out {
		if 'A' <= ch && ch <= 'Z' {
			out[i] = ch + 'a' - 'A'
		}
	}
	return string(out)
}

// truncIdent cuts an identifier to NAMEDATALEN-1 bytes at a character
// boundary, as the server's truncate_identifier does (pg_mbcliplen). The
// text is taken as UTF-8, the shared listener's client_encoding (and most
// drivers'): cutting in the middle of a character would leave a name that
// is not the server's, and invalid UTF-8 that makes the shared listener's
// LISTEN fail for every channel.
func truncIdent(s string) string {
	if len(s) <= 63 {
		return s
	}
	n := 63
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
