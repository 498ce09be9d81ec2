// Package pgwire is the PostgreSQL v3 wire layer pgsidecar's packages share:
// message type bytes, header framing, the few encoders the proxy needs for
// messages it synthesizes, the read buffer the relay parses in place, and
// every SQLSTATE pgsidecar reports (sqlstate.go), each defined once.
//
// It decodes nothing it does not have to: the relay walks headers and
// forwards bodies as slices of the buffer they arrived in. Whole messages
// are decoded with github.com/jackc/pgx/v5/pgproto3 where a decode is
// worth its allocations (startup, authentication, the admin console).
//
// # Buffer ownership
//
//   - A ReadBuffer's bytes Buf[Start:End] belong to the goroutine that reads
//     into it. A slice of them (a message, a body, a field returned by
//     CString or ErrorField) is valid only until that goroutine's next
//     Prepare, which may move or replace Buf; keep a copy to hold it longer.
//   - Append* functions append to dst and return it, as append does: the
//     caller owns dst and decides when it is reused (the relay keeps one
//     output buffer per backend and per client and resets it to [:0]
//     after each write).
//   - The fixed messages (ParseCompleteMessage, CloseCompleteMessage,
//     FlushMessage) are shared and must never be written to.
//   - Memory follows the bytes received, never a length a peer claims: a
//     ReadBuffer grows only when it is full and the message it holds
//     needs more (see Prepare).
package pgwire
