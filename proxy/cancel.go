// Cancel requests: the keys clients cancel with (cancelKeys), and the
// forwarding of a client's cancel to the backend running its request,
// which stays pinned to the client meanwhile (cancelPinned, handleCancel).

package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"sync"
	"time"
)

// cancelKeys maps the process ids handed to clients in BackendKeyData to
// those clients: in transaction mode proxy-minted keys, in session mode the
// pid of the client's one backend with a minted secret. A backend's own
// secret never leaves the proxy, so a client can only cancel its own work.
type cancelKeys struct {
	mu      sync.Mutex
	clients map[uint32]*clientConn
}

func newCancelKeys() *cancelKeys {
	return &cancelKeys{clients: make(map[uint32]*clientConn)}
}

// maxServerPID is Linux's largest pid_max (2^22, PID_MAX_LIMIT): no
// PostgreSQL backend has a larger process id. Minted ids are above it, so a
// client's pg_terminate_backend / pg_cancel_backend of the id it was given
// can never reach some unrelated session.
const maxServerPID = 1 << 22

// register mints a unique (pid, secret) for c, pid in (maxServerPID, 2^31).
func (k *cancelKeys) register(c *clientConn) {
	var b [8]byte
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		// libpq reads the pid as a signed int: at most 2^31-1.
		pid := maxServerPID + 1 + binary.BigEndian.Uint32(b[:4])%(0x7fffffff-maxServerPID)
		if _, taken := k.clients[pid]; taken {
			continue
		}
		c.identity.pid, c.identity.secret = pid, binary.BigEndian.Uint32(b[4:])
		k.clients[pid] = c
		return
	}
}

// rekey gives c the pid of its backend (session mode), keeping c's own
// minted secret: a session-mode backend serves one client after another,
// and its own secret, handed to each, would let a client that left cancel
// the queries of the next one (PostgreSQL gives every session a new key).
// A cancel with c's key is forwarded with the backend's (cancelPinned).
// It keeps the minted pid and reports false when another client already
// has that pid (two databases' servers can hand out the same one).
func (k *cancelKeys) rekey(c *clientConn, pid uint32) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if other, taken := k.clients[pid]; taken && other != c {
		return false
	}
	if k.clients[c.identity.pid] == c {
		delete(k.clients, c.identity.pid)
	}
	c.identity.pid = pid
	k.clients[pid] = c
	return true
}

// pidOf is the pid c was given, for readers other than c's own login
// (SHOW CLIENTS), which may run while register or rekey writes it.
func (k *cancelKeys) pidOf(c *clientConn) uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return c.identity.pid
}

func (k *cancelKeys) unregister(c *clientConn) {
	k.mu.Lock()
	if k.clients[c.identity.pid] == c {
		delete(k.clients, c.identity.pid)
	}
	k.mu.Unlock()
}

// lookup is the client whose key is (pid, secret), or nil. Read under
// k.mu: register writes the secret before the client enters the map, and
// the map (and the pid) change under it (rekey, while a session-mode
// client logs in, when a cancel request may already be under way).
func (k *cancelKeys) lookup(pid, secret uint32) *clientConn {
	k.mu.Lock()
	c := k.clients[pid]
	var want, got [4]byte
	if c != nil {
		binary.BigEndian.PutUint32(want[:], c.identity.secret)
	}
	k.mu.Unlock()
	if c == nil {
		return nil
	}
	binary.BigEndian.PutUint32(got[:], secret)
	if subtle.ConstantTimeCompare(want[:], got[:]) != 1 {
		return nil
	}
	return c
}

// cancelTrack is the cancel requests being sent for a client to its
// backend (under clientConn.mu): while n > 0 the backend stays held, and
// a request the client sends meanwhile waits (awaitLocked), so the
// cancel cannot reach it.
type cancelTrack struct {
	n    int
	done chan struct{} // closed when n drops back to 0
}

// addLocked counts one more cancel request being sent. Under clientConn.mu.
func (t *cancelTrack) addLocked() {
	if t.n == 0 {
		t.done = make(chan struct{})
	}
	t.n++
}

// awaitLocked waits, with mu (the client's c.mu, held on entry and on
// return) let go meanwhile, until no cancel request is being sent, or ctx
// (the client's) ends: build calls it before writing a request, which a
// cancel for the previous one could otherwise cancel. serverOpTimeout
// bounds each cancel request, so the wait.
func (t *cancelTrack) awaitLocked(ctx context.Context, mu *sync.Mutex) {
	for t.n > 0 {
		done := t.done
		mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
		}
		mu.Lock()
		if ctx.Err() != nil {
			return
		}
	}
}

// endLocked counts one off; the last one closes done. Under clientConn.mu.
func (t *cancelTrack) endLocked() {
	t.n--
	if t.n == 0 {
		close(t.done)
		t.done = nil
	}
}

// cancelPinned sends a cancel request to the backend serving c when c
// holds one and wantedLocked (called under c.mu) says a request is still
// to be cancelled. It reports whether it sent one, and the backend's pid
// (for the log), read while the backend was pinned: once this returns the
// backend may belong to another client, and its fields are not c's to read. While the request is sent the backend stays pinned to c
// (c.exchange.cancels.n, as c.exchange.writing pins it for a write), so it cannot pass to
// another client, and the client reader writes it no new request (build
// waits on c.exchange.cancels.done), so the signal cannot land on a later query. c.mu
// itself is not held across the dial: replies keep flowing meanwhile.
func (c *clientConn) cancelPinned(wantedLocked func() bool) (backendPID uint32, sent bool, err error) {
	c.mu.Lock()
	b := c.be
	if b == nil || !wantedLocked() {
		c.mu.Unlock()
		return 0, false, nil
	}
	c.exchange.cancels.addLocked()
	c.replay.cancelSent = true // see replayState.failLocked
	c.mu.Unlock()
	defer func() {
		// Unpin; if the transaction ended meanwhile, wake the server
		// reader so it releases the backend now.
		c.mu.Lock()
		c.exchange.cancels.endLocked() // the last one lets the client reader write again (build)
		if c.be == b && c.reader.async && c.exchange.transactionOverLocked(c.policy) {
			// A backend reader waits on b: wake it to release b. (Inline,
			// the client goroutine waits on c.exchange.cancels.done instead.)
			b.setReadDeadline(time.Now())
		}
		c.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), serverOpTimeout)
	defer cancel()
	srv := b.conn.Server()
	return srv.PID(), true, srv.CancelRequest(ctx)
}

// handleCancel forwards a client's cancel to the backend running that
// client's query, if it runs one now (see cancelPinned).
func (s *Server) handleCancel(pid, secret uint32) {
	c := s.cancels.lookup(pid, secret)
	if c == nil {
		// Stale keys are normal (the client left before its cancel came),
		// but a flood must not flood the log: counted always, logged at
		// most once per lograte.Interval.
		s.stats.cancelsUnknown.Add(1)
		if ok, held := s.cancelLog.Allow(time.Now()); ok {
			s.log.Info("cancel request with an unknown key dropped", "pid", pid,
				"unlogged", held, "log_interval", s.cancelLog.Interval)
		}
		return
	}
	// A request being sent again is not on c.be yet: what c.exchange.q may hold is
	// the parameter sync queued ahead of it (cancelWaiting keeps the
	// cancel for it instead).
	pid, sent, err := c.cancelPinned(func() bool { return (c.exchange.q.len() > 0 || c.exchange.inBatch) && !c.replay.resending })
	if !sent {
		if c.cancelWaiting() {
			s.stats.cancels.Add(1)
			s.log.Debug("cancel request for a client waiting for a server connection: its request is dropped", "client", c.identity.addr)
			return
		}
		s.log.Debug("cancel request for an idle client dropped", "client", c.identity.addr)
		return
	}
	if err != nil {
		s.log.Warn("forwarding a cancel request failed", "client", c.identity.addr, "err", err)
		return
	}
	s.stats.cancels.Add(1)
	s.log.Debug("cancel request forwarded", "client", c.identity.addr, "backend_pid", pid)
	s.recancelReplayed(c)
}

// recancelAfter are the pauses before each cancel request sent again for
// a replayed request (recancelReplayed): about 1.5 s in all, longer than
// a loaded host takes to schedule a backend that has a request waiting.
var recancelAfter = [...]time.Duration{20 * time.Millisecond, 80 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}

// recancelReplayed sends the cancel again while the client's request is a
// replay (replay.go) the new backend has not answered yet. PostgreSQL
// ignores a cancel that reaches a backend still waiting to read its next
// command, and a replayed request was written to its backend moments
// before: on a loaded host the backend may not have read it when the
// signal comes, and the statement the user cancelled then runs in full
// (TestTerminateWithCancelInFlight). Sent again, the cancel finds it
// running; the first reply (57014, or the statement's own end) stops the
// repeats, and each is sent with the backend pinned (cancelPinned), so
// none reaches another client's request. It runs on the cancel request's
// connection goroutine and ends with the server's quit.
func (s *Server) recancelReplayed(c *clientConn) {
	replayedUnanswered := func() bool {
		return (c.exchange.q.len() > 0 || c.exchange.inBatch) && c.replay.tries > 0 && c.replay.armed && !c.replay.resending
	}
	for _, d := range recancelAfter {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.quit:
			t.Stop()
			return
		}
		pid, sent, err := c.cancelPinned(replayedUnanswered)
		if !sent || err != nil {
			return
		}
		s.log.Debug("cancel request sent again: the request is a replay its backend has not answered", "client", c.identity.addr, "backend_pid", pid)
	}
}
