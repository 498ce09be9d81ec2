// Poisoning a segment: a Bind the server rejects, sent so that it fails
// the segment (and the transaction) where the proxy reports an error of
// its own.

package proxy

import "github.com/pgsidecar/pgsidecar/internal/pgwire"

// poisonStatement names a statement no server has: a Bind of it fails, and
// the server then skips to Sync and aborts the transaction exactly as for
// the error the proxy reports in its place.
const poisonStatement = "pgsidecar_no_such_statement"

// appendPoisonBind appends a Bind that the server rejects.
func appendPoisonBind(dst []byte) []byte {
	dst = pgwire.AppendHeader(dst, pgwire.MsgBind, 1+len(poisonStatement)+1+2+2+2)
	dst = append(dst, 0)
	dst = append(dst, poisonStatement...)
	return append(dst, 0, 0, 0, 0, 0, 0, 0)
}

// poison sends a request the server rejects, so that it fails the segment
// (and the transaction) as it would for pe, which the client gets instead.
func (q *requestQueue) poison(out []byte, pe *pgError) []byte {
	q.push(request{kind: reqBind, errorReplacement: pe.appendTo(nil)})
	return appendPoisonBind(out)
}
