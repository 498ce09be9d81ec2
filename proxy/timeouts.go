// Client timeouts: the Server's sweeper goroutine, and the cancel or close
// it applies to a client that overstays.

package proxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// The client timeouts (query_timeout, idle_transaction_timeout,
// client_idle_timeout) are enforced by one sweeper goroutine per Server
// rather than by timers or deadlines per message: the relay only bumps two
// counters (reads per client read, responses per ReadyForQuery), and the
// sweeper, a tenth of the shortest timeout apart, notes since when each
// client has been in the same state without progress. A timeout thus fires
// up to one sweep interval late.

// Sweep interval bounds: often enough for sub-second timeouts to be
// roughly right, rarely enough that long ones cost nothing.
const (
	minSweepInterval = 10 * time.Millisecond
	maxSweepInterval = time.Second
)

// clientState is what the sweeper sees a client doing.
type clientState uint8

const (
	stateIdle     clientState = iota // between transactions, nothing in flight
	stateBusy                        // a request is in flight
	stateIdleInTx                    // inside a transaction, nothing in flight
	stateWaiting                     // waiting for a backend (pool.acquire_timeout applies)
)

// timeoutState is what the client timeouts watch on a client.
type timeoutState struct {
	running atomic.Bool // set once the client has logged in
	waiting atomic.Bool // in acquire: no timeout of the sweeper's applies (acquire_timeout does)
	// reads counts the client reader's reads (and the loop's): progress
	// the sweeper, and the parker's idle sweep, compare between looks.
	reads         atomic.Uint64
	responses     uint64 // ReadyForQuery replies relayed (under clientConn.mu)
	queryTimedOut bool   // the request in flight was cancelled by query_timeout (under clientConn.mu)
	sweep         sweepMark
}

// sweepMark is the sweeper's memory of one client; only the sweeper
// goroutine touches it.
type sweepMark struct {
	state clientState
	mark  uint64    // progress counter seen in that state
	since time.Time // when the sweeper first saw state with mark
	acted bool      // the timeout of this state was applied
	// reads is the client's read count when the query_timeout cancel
	// went out (clientStall).
	reads uint64
}

// sweeper is the Server's timeout goroutine and what it owns.
type sweeper struct {
	once    sync.Once
	stopped sync.Once
	stop    chan struct{} // closed by stopSweeper
	done    chan struct{} // closed when the goroutine has ended
	started bool          // under Server.mu
	cancels sync.WaitGroup
	list    []*clientConn // reused snapshot of the clients
}

func newSweeper() sweeper {
	return sweeper{stop: make(chan struct{}), done: make(chan struct{})}
}

// startSweeper starts the timeout goroutine once (on the first Serve). It
// ends when stopSweeper is called (Shutdown, Close).
func (s *Server) startSweeper() {
	s.sweep.once.Do(func() {
		s.mu.Lock()
		s.sweep.started = true
		s.mu.Unlock()
		go s.sweepLoop() // ends when stopSweeper closes sweep.stop
	})
}

// stopSweeper ends the timeout goroutine and the cancel requests it sent,
// and waits for them.
func (s *Server) stopSweeper() {
	s.sweep.stopped.Do(func() { close(s.sweep.stop) })
	s.mu.Lock()
	started := s.sweep.started
	s.mu.Unlock()
	if started {
		<-s.sweep.done
	}
	s.sweep.cancels.Wait()
}

// sweepInterval is a tenth of the shortest timeout in force, within
// [minSweepInterval, maxSweepInterval].
func sweepInterval(cfg *Config) time.Duration {
	d := maxSweepInterval
	for _, t := range []time.Duration{cfg.QueryTimeout, cfg.IdleTransactionTimeout, cfg.ClientIdleTimeout} {
		if t > 0 {
			d = min(d, t/10)
		}
	}
	return max(d, minSweepInterval)
}

func (s *Server) sweepLoop() {
	defer close(s.sweep.done)
	t := time.NewTimer(sweepInterval(s.live.Load()))
	defer t.Stop()
	for {
		select {
		case <-s.sweep.stop:
			return
		case <-t.C:
		}
		// Re-read every round: the timeouts change live (SIGHUP).
		live := s.live.Load()
		if live.QueryTimeout > 0 || live.IdleTransactionTimeout > 0 || live.ClientIdleTimeout > 0 {
			s.sweepOnce(live, time.Now())
		}
		t.Reset(sweepInterval(live))
	}
}

// sweepOnce looks at every client once.
func (s *Server) sweepOnce(live *Config, now time.Time) {
	s.mu.Lock()
	list := s.sweep.list[:0]
	for c := range s.clients {
		list = append(list, c)
	}
	s.mu.Unlock()
	for _, c := range list {
		s.sweepClient(c, live, now)
	}
	clear(list) // keep no client alive past its end
	s.sweep.list = list[:0]
}

// sweepClient applies the timeout of the state c has been in, without
// progress, for too long.
func (s *Server) sweepClient(c *clientConn, live *Config, now time.Time) {
	if !c.timeouts.running.Load() || c.leave.err.Load() != nil {
		return // still logging in, or already told to go
	}
	c.mu.Lock()
	st, mark := stateIdle, c.timeouts.responses
	timedOut := c.timeouts.queryTimedOut // its cancel is unanswered so far
	switch {
	case c.timeouts.waiting.Load() || c.loop.st.Load() == loopQueued:
		// Waiting for a backend, on a goroutine in the pool's queue or in
		// the event loop's own queue (whose request is not in c.exchange.q yet:
		// process starts over when a backend is free).
		st = stateWaiting
	case c.exchange.q.len() > 0:
		st = stateBusy
	case c.be != nil && c.exchange.txStatus != 'I':
		st = stateIdleInTx
	}
	c.mu.Unlock()
	if st != stateBusy {
		// Idle ends with anything the client sends; a request in flight
		// only with its answer (a client pipelining more does not reset it).
		mark += c.timeouts.reads.Load()
	}
	sw := &c.timeouts.sweep
	if st != sw.state || mark != sw.mark || sw.since.IsZero() {
		*sw = sweepMark{state: st, mark: mark, since: now}
		return
	}
	elapsed := now.Sub(sw.since)
	if sw.acted {
		if st == stateBusy && timedOut && live.QueryTimeout > 0 && elapsed >= live.QueryTimeout+serverOpTimeout {
			// The query_timeout cancel began at least serverOpTimeout ago
			// and the server has not answered it (its 57014, or the
			// request's end, clears queryTimedOut): it does not act on it
			// (a stopped or cut-off host; the cancel request could not
			// reach it). Only closing the backend ends the client's wait;
			// finish destroys it (a request is in flight), so it is never
			// handed on, and sends no second cancel. A client still
			// streaming COPY data after the 57014 is not closed: the
			// server did answer. (closeWith sets leave.err: the next
			// sweep returns at its first line.)
			opt := live.option("QueryTimeout")
			c.mu.Lock()
			copyIn, b := c.reader.copyIn, c.be
			c.mu.Unlock()
			if stall := c.timeouts.clientStall(copyIn, b, c.sock); stall != "" {
				// The server waits for the client, and acts on a cancel
				// only once the client sends or reads: the client, not
				// the server, is to be named. The backend is closed all
				// the same (finish: a request in flight), its state
				// unknown.
				c.log.Info("the client "+stall+" after the "+opt+" cancel: client closed, its server connection closed",
					"query_timeout", live.QueryTimeout.String(), "waited", serverOpTimeout.String(), "statement", c.last.load())
				c.closeWith(newFatal(pgwire.CodeQueryCanceled,
					fmt.Sprintf("pgsidecar closed the connection: the statement ran past %s (%s) and the client %s for %s after the cancel, so the server could not act on it",
						opt, live.QueryTimeout, stall, serverOpTimeout),
					"the server acts on a cancel only when the client sends its COPY data or reads its results; keep doing so, or raise "+opt))
				return
			}
			c.log.Warn("the server did not answer the "+opt+" cancel: client closed, its server connection closed",
				"query_timeout", live.QueryTimeout.String(), "waited", serverOpTimeout.String(), "statement", c.last.load())
			c.closeWith(newFatal(pgwire.CodeConnectionFailure,
				fmt.Sprintf("pgsidecar closed the server connection: the statement ran past %s (%s) and the server did not act on the cancel request within %s",
					opt, live.QueryTimeout, serverOpTimeout),
				"the database server is not responding (stopped, overloaded or cut off by the network); reconnect and retry the transaction"))
		}
		return
	}
	switch st {
	case stateBusy:
		if limit := live.QueryTimeout; limit > 0 && elapsed >= limit {
			sw.acted = true
			sw.reads = c.timeouts.reads.Load()
			s.sweep.cancels.Add(1)
			go func() { // ends when the cancel request is answered (bounded by serverOpTimeout)
				defer s.sweep.cancels.Done()
				s.cancelForTimeout(c, mark, limit)
			}()
		}
	case stateIdleInTx:
		if limit := live.IdleTransactionTimeout; limit > 0 && elapsed >= limit {
			sw.acted = true
			opt := live.option("IdleTransactionTimeout")
			c.log.Info("client idle in transaction longer than "+opt+": closed, its transaction rolled back",
				"timeout", limit.String())
			c.closeWith(newFatal(pgwire.CodeIdleInTransactionTimeout,
				fmt.Sprintf("terminating connection due to idle-in-transaction timeout (pgsidecar %s %s)", opt, limit),
				"the transaction was rolled back; commit or roll back promptly, or raise "+opt))
		}
	case stateIdle:
		if limit := live.ClientIdleTimeout; limit > 0 && elapsed >= limit {
			sw.acted = true
			opt := live.option("ClientIdleTimeout")
			c.log.Debug("client idle longer than "+opt+": closed", "timeout", limit.String())
			c.closeWith(newFatal(pgwire.CodeIdleSessionTimeout,
				fmt.Sprintf("terminating connection due to idle-session timeout (pgsidecar %s %s)", opt, limit),
				"reconnect; raise "+opt+" if clients legitimately stay idle longer"))
		}
	}
}

// clientStall says how the client, not the server, keeps its request in
// flight, or "" when nothing shows it. PostgreSQL acts on a cancel only
// at its next read or write to the client, so a cancel cannot end a
// request whose server waits for the client:
//   - in COPY FROM STDIN (copyIn: the client's backend b sent
//     CopyInResponse), the client has sent nothing since the cancel (its
//     read count is still t.sweep.reads) and the server has taken all the
//     proxy sent it (nothing unacknowledged towards the server: a stopped
//     server behind a streaming client is the server's stall);
//   - the client does not read: bytes wait, unacknowledged, in its
//     socket, sock.
//
// The caller reads copyIn and b under clientConn.mu.
func (t *timeoutState) clientStall(copyIn bool, b *backend, sock net.Conn) string {
	if copyIn && b != nil && t.reads.Load() == t.sweep.reads && unsentBytes(b.nc) == 0 {
		return "sent no COPY data"
	}
	if unsentBytes(sock) > 0 {
		return "did not read its results"
	}
	return ""
}

// cancelForTimeout cancels the request c has had in flight since the
// sweeper saw mark, if it still runs; the backend is pinned to c meanwhile,
// as for a client's own cancel (see cancelPinned).
func (s *Server) cancelForTimeout(c *clientConn, mark uint64, limit time.Duration) {
	pid, sent, err := c.cancelPinned(func() bool {
		if c.exchange.q.len() == 0 || c.timeouts.responses != mark {
			return false // it finished meanwhile
		}
		c.timeouts.queryTimedOut = true
		return true
	})
	if !sent {
		return
	}
	if err != nil {
		c.log.Warn(s.live.Load().option("QueryTimeout")+": cancelling the query on the server failed", "err", err)
		return
	}
	stmt := c.last.load()
	c.log.Info("query ran longer than "+s.live.Load().option("QueryTimeout")+": cancelled on the server",
		"query_timeout", limit.String(), "backend_pid", pid, "statement", stmt)
}

// queryTimeoutError is what the client gets instead of the server's
// "canceling statement due to user request" after a query_timeout cancel.
func (s *Server) queryTimeoutError() *pgError {
	live := s.live.Load()
	opt := live.option("QueryTimeout")
	return newError(pgwire.CodeQueryCanceled,
		fmt.Sprintf("canceling statement due to pgsidecar %s (%s)", opt, live.QueryTimeout),
		"the statement ran longer than "+opt+"; make it faster or raise the option")
}
