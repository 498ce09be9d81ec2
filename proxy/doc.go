// Package proxy is the relay: it speaks the PostgreSQL protocol to clients
// and moves their messages to and from backends it borrows from a
// pool.Pool, one per database.
//
// # Who owns what
//
// A Server (server.go) owns its listeners, the set of clients, the cancel
// keys it mints, the statement registry shared by all clients, and the
// settings: cfg is fixed at New, live (an atomic pointer) is what Reload
// may replace (client limit, auth method, logins, timeouts). It knows no
// configuration file: the option names its hints show come from
// Config.OptionName.
//
// Each accepted connection is logged in by the Server (login.go), and is
// then a clientConn (clientconn.go). Its fields marked as guarded by c.mu
// are shared with a backend reader and cancel requests; the rest belong to
// the client goroutine. A backend (backend.go) is a pool.Conn plus what the
// proxy tracks per server session: parameters, prepared statements
// (statements.go), buffers. It belongs to at most one clientConn at a time,
// in c.be.
//
// # A client's state, by feature
//
// clientConn holds the session: the sockets, the held backend (c.be), the
// lock and the relay's orchestration (relay_client.go, relay_server.go:
// reading the client, acquiring, writing, reading replies, releasing,
// finish). Each feature's state is a type of its own, a field of
// clientConn; what concerns that state alone is the type's methods (or
// plain functions), which take what else they touch as parameters (the
// request queue, the backend) instead of the client, so a signature says
// what a feature reaches:
//
//   - exchange (exchange.go; c.exchange): where the exchange
//     with c.be stands: the requestQueue (requests.go: what awaits a
//     reply, and which request a reply ends: popReady, popCompleted,
//     fail), the transaction status, an open batch, a server skipping to
//     Sync, the pins (writing, cancels) and replacement, what the reply
//     routing sends in place of one it swallowed; whether the transaction
//     is over (transactionOverLocked), b can go back (releasableLocked),
//     or the client is between transactions (betweenTransactionsLocked,
//     atBoundaryLocked); what the client's ErrorResponse does to it
//     (errorResponseLocked);
//   - clientStatements (statements.go): the client's statements and the
//     rewriting of Parse/Bind/Describe/Close (a Bind too large to hold
//     whole too, streamBind), the requests the proxy answers without a
//     backend (answerLocally), and the messages that wait until
//     everything ahead is answered (judgedByAnswersAhead: a Parse of a
//     name in use or being closed, a DEALLOCATE of one, a Bind of an
//     unnamed statement parsed in an earlier segment); a backend's own
//     side is its preparedSet;
//   - clientParams (params.go): the values the client expects and its
//     startup packet's; trackParameterStatus, trackParamChange and
//     trackCheckedSettings track a change on the backend and in them;
//   - sessionTrack and listenTrack (sessionstate.go, notify.go): the
//     inspection of the client's statements (inspect), the session-state
//     check, and LISTEN through the shared listener;
//   - readerState (clientconn.go; relay_server.go's readers): who reads
//     c.be, and its hand-overs with the client reader (writeDone; drained,
//     wakeDrainedLocked, for backpressure, and drainAll for a message
//     held until everything ahead is answered);
//   - cancelTrack (cancel.go; in exchange): the cancel requests being sent to c.be,
//     which pin it; a request written meanwhile waits (awaitLocked);
//   - clientStream (clientstream.go): where the client goroutine is in the
//     client's bytes beyond one whole message: a message streamed to the
//     backend or dropped as it arrives (passOn, dropRest, streamRest), a
//     Parse too large refused before a backend is taken (refuseOversized),
//     a refused request discarded up to its end (discardState,
//     discardRequest), a client that broke the protocol
//     (protocolViolation); settled says none of these holds;
//   - replayState (replay.go): the replay of a first request: what went
//     to a fresh backend (recordLocked), its first reply
//     (firstReplyLocked), its death before answering (failLocked), the
//     request put back in front of the client's bytes (spliceInto);
//   - waitState (waitcancel.go): a request's wait for a backend, which a
//     cancel request or the drain ends (begin, end, takeCanceled and
//     endForDrain take c.mu, passed in);
//   - idleReader and parkState (idle.go, park.go): the wait for input
//     without a buffer (open finds the socket, leftWhileWaiting peeks at
//     it) and parking (setUp keeps the descriptor for the parker);
//   - loopState (loop.go, loopcache.go): the client's part in the event
//     loop; whether the loop thread runs the client says which clock it
//     reads (now), how a request goes to the backend (writeBackend) and
//     which buffer cache it borrows from (bufCache);
//   - timeoutState, lastStatement, leaveState: timeouts (clientStall),
//     the last statement, why the client must go (leaveState.reason).
//
// What stays a clientConn method takes c.mu across several of these,
// writes to the client, logs as the client or moves the backend: build
// and its steps (buildNextLocked, buildMessageLocked, onParse, onQuery),
// for one, hand each client message to the types above under c.mu and
// queue a request per reply it expects. The event loop's steps on a
// client are the parker's methods (loop.go), and the login's steps are
// the Server's (login.go), but for bindSession, which acquires a backend
// as the client does.
//
// # The goroutines of one client
//
//   - The client goroutine (started by Serve; serveConn) logs the client in
//     (login.go): it reads the startup packet and negotiates client TLS
//     (startup.go, tls.go), authenticates (auth.go, loginbrake.go), greets;
//     then it runs the relay (relay_client.go: run, process). In transaction
//     mode it relays the common exchange alone: it writes the request to the
//     backend, reads the replies itself (relay_server.go: relayInline,
//     relayReplies, routeLocked), writes them to the client and releases the
//     backend; no other goroutine takes part and nobody is woken. It ends
//     when the client leaves or is closed (Shutdown, Close), after finish.
//   - A backend reader (relay_server.go: backendReader) is started
//     (startReaderLocked) only where the client may send more while replies
//     arrive, or the backend may speak while the client goroutine waits on
//     the client: COPY FROM STDIN, a client pipelining past one read or
//     leaving an extended-protocol batch open, a write over inlineWriteMax,
//     a reply slower than inlineWait, a client idle with its backend held
//     (open transaction, pin), and session mode (acquire). It routes the
//     replies and gives the backend back to the pool when the transaction
//     is over (transaction mode). It ends then, or when the backend fails
//     (backendLost), or when finish stops it (reader.stop + a read deadline).
//
// An idle client has no goroutine at all once parked (park.go): its
// goroutine ends and the parker goroutine waits on its socket; readiness
// or a wake-up starts a new one (resume), which carries the session on
// from clientConn.
//
// The event loop (loop.go) is the parker's goroutine, locked to its
// thread, doing more than waking: in transaction mode a plain-TCP client
// parks right after each request, and when its next request arrives the
// loop relays it itself, with the same code (process, build,
// relayReplies) and a backend taken without waiting (pool.TryAcquireAt),
// waits for the reply in its own epoll set, relays it and parks the
// client again: no goroutine runs and nobody is woken. A request for a
// saturated pool waits in the loop's own queue (serveQueues) for up to
// loopQueueWait, in order; backends the loop releases are given to it
// once the epoll batch is done. Whatever else would wait (a pool to grow or a backend to
// validate, a client that does not read, a slow reply, COPY, a
// transaction left open, any wake-up) goes to a goroutine (resume,
// loopResume), which goes on from where the loop left off. The sockets
// the loop owns are out of the Go runtime's epoll set meanwhile
// (runtimepoll_linux.go), so their events wake no runtime thread either.
//
// Besides those, the Server runs one sweeper goroutine (timeouts.go) from
// the first Serve until Shutdown or Close, short-lived goroutines that send
// cancel requests for a query_timeout, and one shared LISTEN connection per
// database while transaction-mode clients listen (notify.go); Shutdown and
// Close wait for all of them, and from the first Serve the parker goroutine
// (park.go), which Shutdown and Close end once every client has left.
// goleak checks every one in the package's tests.
//
// # Pins: a backend cannot move while it is in use
//
// Whoever reads the backend releases it when transactionOverLocked holds:
// the client goroutine inline, or the backend reader. Two pins keep that
// from happening while the backend is still in use outside c.mu: c.exchange.writing
// while the client goroutine writes to it (build ... unpin), and
// c.exchange.cancels.n while a cancel request is being sent to it (cancelPinned).
// Neither holds c.mu across network I/O. With a backend reader running, the
// unpin wakes it (a read deadline) so the release happens then; inline,
// the client goroutine releases after its own write, or waits for
// c.exchange.cancels.done.
//
// # Wake-ups
//
// The inline path has none. A read deadline set to now still wakes the
// client goroutine while it waits for an idle client (drain, closeWith,
// notifications, a replay found by a backend reader), and a backend reader
// on the asynchronous path (unpin, a cancel's end, notifications, finish);
// kill, and closeWith during an inline read, close the socket instead.
// ARCHITECTURE.md lists each and why it remains.
//
// # Lock order
//
// Server.mu before parker.mu before clientConn.mu (park.go).
// Server.mu before clientConn.mu: Close takes each client's lock (kill)
// while it holds the server's; nothing takes Server.mu under a client's
// lock (the sweeper copies the client list and lets Server.mu go first).
// A notifyHub's lock comes before Server.mu, and is never held while a
// notification is queued for a client.
// clientConn.wmu, which orders the writes to a client, before
// clientConn.mu: a backend reader holds it from before it releases the
// backend until its write of the transaction's last reply
// (replyAndRelease). The spare descriptor's lock (Server.spareMu) before
// Server.mu (isClosed). No lock is held across a call into the pool or a
// network read or write but those two: c.wmu across the client write it
// orders (and a backend reader's release before it), spareMu across
// refuseOutOfFDs' accept and refusal (bounded by deadlines). The remaining
// mutexes (idleReader.signalMu, cancelKeys, statementRegistry, loginBrake,
// lograte.Limiter, clientConn.last.mu) are leaves: nothing is locked under them.
//
// # Glossary
//
// Server: the proxy's listener and owner of its clients (server.go), never
// a database. backend: a server connection, the only name for one; a
// backend reader is the goroutine that reads it. probe: a Describe the
// proxy sends before reusing a statement whose result type may have
// changed (statements.go), and nothing else in this module; a liveness
// look at a socket is a peek (internal/sockpeek; peekSocket here for
// clients, and in package pool for idle backends), the pool's connect
// while the database is away a reconnect attempt, and Kubernetes' probes
// are its own (/livez, /readyz). A function whose name ends in Locked runs under c.mu and does
// not take it.
//
// request: what the client sent that awaits a reply (requests.go), in
// order. hazard: a statement whose effect is bound to a server session and
// so does not survive transaction pooling (sessionstate.go).
package proxy
