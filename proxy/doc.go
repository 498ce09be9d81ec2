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
// Each accepted connection is a clientConn (clientConn.go). Its fields
// marked as guarded by c.mu are shared by its two goroutines; the rest
// belong to the client reader. A backend (backend.go) is a pool.Conn plus
// what the proxy tracks per server session: parameters, prepared
// statements (prepared.go), buffers. It belongs to at most one clientConn
// at a time, in c.be.
//
// # The goroutines of one client
//
//   - The client goroutine (started by Serve; serveConn) reads the startup
//     packet and negotiates client TLS (startup.go, tls.go), authenticates
//     (auth.go, loginbrake.go), greets, then runs the client reader
//     (relay_client.go: run, process). It ends when the client leaves or is
//     closed (Shutdown, Close), after finish.
//   - The server reader (relay_server.go: serverLoop), started by acquire
//     when the client gets a backend, routes the backend's replies to the
//     client and gives the backend back to the pool when the transaction
//     is over (transaction mode). It ends then, or when the backend fails
//     (serverLost), or when finish stops it (stopReader + a read deadline).
//
// Besides those, the Server runs one sweeper goroutine (timeouts.go) from
// the first Serve until Shutdown or Close, short-lived goroutines that send
// cancel requests for a query_timeout, and one shared LISTEN connection per
// database while transaction-mode clients listen (notify.go); Shutdown and
// Close wait for all of them. goleak checks every one in the package's tests.
//
// # Pins: a backend cannot move while it is in use
//
// In transaction mode the server reader releases the backend when
// transactionOverLocked holds. Two pins keep that from happening while the
// backend is still in use outside c.mu: c.writing while the client reader
// writes to it (build ... unpin), and c.cancelling while a cancel request
// is being sent to it (cancelPinned). Neither holds c.mu across network
// I/O; the unpin wakes the server reader so the release happens then.
//
// # Lock order
//
// Server.mu before clientConn.mu: Close takes each client's lock (kill)
// while it holds the server's; nothing takes Server.mu under a client's
// lock (the sweeper copies the client list and lets Server.mu go first).
// A notifyHub's lock comes before Server.mu, and is never held while a
// notification is queued for a client.
// No lock is held across a call into the pool or a network read or write. The
// remaining mutexes (cancelKeys, statementRegistry, loginBrake, logLimiter,
// clientConn.lastMu, the spare descriptor) are leaves: nothing is locked
// under them.
//
// # Glossary
//
// backend: a server connection. request: what the client sent that awaits
// a reply (requests.go), in order. hazard: a statement whose effect is bound
// to a server session and so does not survive transaction pooling
// (inspect.go). probe: a Describe the proxy sends before reusing a
// statement whose result type may have changed.
package proxy
