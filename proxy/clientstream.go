// clientstream.go: the framing of the client's bytes (clientStream): the
// rules for each client message's header, judged in one place (judgeHead:
// checkLength, known types) and acted on (checkHead), a message streamed
// to the backend or dropped part by part, a refused request discarded up
// to its end (refuseOversized, discardRequest), and a client that broke
// the protocol.

package proxy

import (
	"fmt"
	"log/slog"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// clientStream is where the client goroutine is in the client's byte
// stream (c.in) beyond one whole message: a message being streamed to the
// backend or dropped as it arrives, a request being discarded, a client
// that broke the protocol. Owned by the client goroutine, or the event
// loop while it runs the client; the methods take the read buffer they
// work on, which the loop lends and reclaims (loopcache.go), as a
// parameter.
type clientStream struct {
	passRemaining int          // bytes of a message being streamed to the backend
	passDrop      bool         // ... or dropped (dropRest): the message was refused, an error went out in its place
	poisoned      bool         // the client broke the protocol: its backend is closed, not reused
	discard       discardState // acquire failed (or a Parse was refused): drop to Sync / Query
}

// settled reports whether the next byte of the client's stream starts a
// message: nothing is left of one being streamed or dropped, no request is
// being discarded, and the client did not break the protocol. Only then
// may the event loop run the client, or the client park.
func (s *clientStream) settled() bool {
	return s.passRemaining == 0 && !s.discard.on && !s.poisoned
}

// passOn moves the bytes of the message being streamed that are at in's
// head to out, or drops them (passDrop), and returns out. The stream is
// over once passRemaining is 0.
func (s *clientStream) passOn(in *pgwire.ReadBuffer, out []byte) []byte {
	if out, s.passRemaining = passOn(in, out, s.passRemaining, s.passDrop); s.passRemaining == 0 {
		s.passDrop = false
	}
	return out
}

// dropRest drops a message of total bytes starting at in's head: what is
// here now, and the rest as it arrives (passDrop, which build hands to
// passOn).
func (s *clientStream) dropRest(in *pgwire.ReadBuffer, total int) {
	if _, s.passRemaining = passOn(in, nil, total, true); s.passRemaining > 0 {
		s.passDrop = true
	}
}

// streamRest goes on with a message of total bytes at in's head whose
// first sent bytes went out: they leave in, and the rest is streamed to
// the backend as it arrives (passOn).
func (s *clientStream) streamRest(in *pgwire.ReadBuffer, sent, total int) {
	in.Start += sent
	s.passRemaining = total - sent
}

// protocolViolation logs pe, the client's malformed input (checkLength),
// to the client's logger lg, and marks the client poisoned: the caller
// returns pe, the client is told and closed, and its backend, whose state
// is unknown, is closed too.
func (s *clientStream) protocolViolation(lg *slog.Logger, pe *pgError) error {
	lg.Warn("protocol violation from client", "err", pe.Message)
	s.poisoned = true
	return pe
}

// msgHead is what the header of the client message at the head of a
// buffer says, judged once by judgeHead: the one place where the rules
// for a client message's header are (knownFrontendType, checkLength).
// Those who act on it (checkHead, buildNextLocked, discardRequest) only
// choose, in their order, what to do with a bad one.
type msgHead struct {
	present bool     // a first byte is here
	known   bool     // its type is one PostgreSQL accepts after startup
	whole   bool     // the header is all here: typ and bodyLen are read
	typ     byte     // with present
	bodyLen int      // with whole
	lenErr  *pgError // with whole: the length checkLength refuses, else nil
}

// judgeHead judges the header at the start of buf, a client's pending
// bytes, against maxMessageSize (max_message_size).
func judgeHead(buf []byte, maxMessageSize int) (h msgHead) {
	if len(buf) == 0 {
		return h
	}
	h.present, h.typ, h.known = true, buf[0], knownFrontendType(buf[0])
	if len(buf) < pgwire.HeaderLen {
		return h
	}
	h.whole = true
	_, h.bodyLen = pgwire.ParseHeader(buf)
	h.lenErr = checkLength(h.typ, h.bodyLen, maxMessageSize)
	return h
}

// endsSession reports whether checkHead refuses the message for good (an
// unknown type; a length checkLength refuses, but on a Terminate, which
// ends the session its own way): nothing after it is ever read.
func (h msgHead) endsSession() bool {
	return h.present && (!h.known || h.whole && h.typ != pgwire.MsgTerminate && h.lenErr != nil)
}

// checkHead looks at the client message at the head of in, the client's
// buffer, before anything is done for it: more says its header is not all
// here (in.Want asks for it); err is the client's Terminate
// (errClientTerminated), a type no PostgreSQL server accepts
// (unknownMessage, logged to lg; judged on the type byte alone, as
// PostgreSQL does), or a length checkLength refuses (s.protocolViolation,
// which poisons the client). Whatever the client sent before it has been
// answered by now where it could be (build stops in front of such a
// message, msgHead.endsSession), as PostgreSQL answers each message before
// it reads the next.
func checkHead(in *pgwire.ReadBuffer, s *clientStream, maxMessageSize int, lg *slog.Logger) (more bool, err error) {
	h := judgeHead(in.Buf[in.Start:in.End], maxMessageSize)
	switch {
	case h.present && !h.known:
		return false, unknownMessage(lg, h.typ)
	case !h.whole:
		in.Want = pgwire.HeaderLen
		return true, nil
	case h.typ == pgwire.MsgTerminate:
		return false, errClientTerminated
	case h.lenErr != nil:
		return false, s.protocolViolation(lg, h.lenErr)
	}
	return false, nil
}

// passOn moves, of the remaining bytes of a message being streamed, those
// at in's head to out, or drops them (drop: the message was refused, or
// its request is being discarded). It returns out and how many bytes of
// the message are still to come (the client's passRemaining).
func passOn(in *pgwire.ReadBuffer, out []byte, remaining int, drop bool) ([]byte, int) {
	n := min(remaining, in.End-in.Start)
	if !drop {
		out = append(out, in.Buf[in.Start:in.Start+n]...)
	}
	in.Start += n
	return out, remaining - n
}

// smallMessageMax is PostgreSQL's PQ_SMALL_MESSAGE_LIMIT: the longest
// Sync, Flush, Describe, Close, Execute or Terminate it accepts. These are
// read whole, so without this bound a client could make the proxy buffer
// up to max_message_size for one of them.
const smallMessageMax = 10000

// isSmallMessage reports whether typ is bounded by smallMessageMax.
func isSmallMessage(typ byte) bool {
	switch typ {
	case pgwire.MsgSync, pgwire.MsgFlush, pgwire.MsgDescribe, pgwire.MsgClose, pgwire.MsgExecute, pgwire.MsgTerminate:
		return true
	}
	return false
}

// checkLength returns the protocol violation (FATAL 08P01) for a client
// message length below 4, a body (bodyLen, the length less its own 4
// bytes) above maxMessageSize (max_message_size), or a length above
// smallMessageMax for the small message types, as PostgreSQL does; or
// nil. The caller hands it to protocolViolation.
func checkLength(typ byte, bodyLen, maxMessageSize int) *pgError {
	if bodyLen < 0 || bodyLen > maxMessageSize || isSmallMessage(typ) && bodyLen+4 > smallMessageMax {
		return newFatal(pgwire.CodeProtocolViolation, fmt.Sprintf("invalid message length %d for message type %q", bodyLen+4, typ),
			"the client sent a malformed message; this is a driver bug or not a PostgreSQL client")
	}
	return nil
}

// knownFrontendType reports whether typ is a message a client may send
// after startup (PostgreSQL's PostgresMain accepts exactly these).
func knownFrontendType(typ byte) bool {
	switch typ {
	case pgwire.MsgQuery, pgwire.MsgParse, pgwire.MsgBind, pgwire.MsgDescribe, pgwire.MsgExecute, pgwire.MsgClose, pgwire.MsgSync, pgwire.MsgFlush,
		pgwire.MsgTerminate, pgwire.MsgFunctionCall, pgwire.MsgCopyData, pgwire.MsgCopyDone, pgwire.MsgCopyFail:
		return true
	}
	return false
}

// unknownMessage answers a message type no PostgreSQL server accepts the
// way the server does (FATAL 08P01, then close), without forwarding it: the
// client's backend is not lost over it. Logged to the client's logger lg,
// once per client, which it ends.
func unknownMessage(lg *slog.Logger, typ byte) error {
	msg := fmt.Sprintf("invalid frontend message type %d", typ)
	lg.Warn("protocol violation from client", "err", msg)
	return newFatal(pgwire.CodeProtocolViolation, msg, "the client sent a message type PostgreSQL does not know; this is a driver bug or not a PostgreSQL client")
}

// discardState is the client goroutine's dropping of a request that gets
// only an error: no backend could be had for it, or its Parse was larger
// than max_client_buffer (refuseOversized).
type discardState struct {
	on      bool  // drop messages until Sync / Query
	query   bool  // the message being dropped is a Query: answer when it ends
	err     error // why, for the reply (an acquire error)
	errSent bool  // the error went out already; only 'Z' is owed
}

// answer ends the discarding and returns the client's answer to the
// request dropped: the error, unless it went out already (errSent), and
// ReadyForQuery 'I'.
func (d *discardState) answer() []byte {
	var reply []byte
	if !d.errSent {
		reply = acquireErrorResponse(d.err, false).appendTo(nil)
	}
	reply = pgwire.AppendReadyForQuery(reply, 'I')
	*d = discardState{}
	return reply
}

// refuseOversized refuses, before any backend is taken for it, a message
// at the head of in, the client's buffer, that transaction mode would
// have to hold whole (a Parse, whose text names the statement) but that
// is larger than maxClientBuffer (max_client_buffer). It returns the
// message's total bytes, or 0 when it is not refused: the caller
// (backendForRequest, in transaction mode) writes the client 54000
// (Server.tooLarge) at once, as PostgreSQL reports an error in the
// extended protocol, and everything up to its Sync is dropped unread
// (discardRequest), so the claimed length is never allocated. A length
// checkLength refuses (against maxMessageSize) is a protocol violation
// (logged to lg) instead.
func (s *clientStream) refuseOversized(in *pgwire.ReadBuffer, maxClientBuffer, maxMessageSize int, lg *slog.Logger) (total int, err error) {
	if in.Pending() < pgwire.HeaderLen {
		return 0, nil
	}
	typ, bodyLen := pgwire.ParseHeader(in.Buf[in.Start:])
	if typ != pgwire.MsgParse || pgwire.HeaderLen+bodyLen <= maxClientBuffer {
		return 0, nil
	}
	if pe := checkLength(typ, bodyLen, maxMessageSize); pe != nil {
		return 0, s.protocolViolation(lg, pe)
	}
	s.discard.on, s.discard.errSent = true, true
	return pgwire.HeaderLen + bodyLen, nil
}

// discardRequest drops the client's messages at in's head after a failed
// acquire (or a Parse refused by refuseOversized) up to the end of the
// request (Sync or Query), and then returns the client's answer to it,
// the error and 'Z' (discardState.answer), which the caller (process)
// writes. It checks the messages' headers as build does (against
// maxMessageSize: protocolViolation, logged to lg; unknownMessage;
// Terminate). reply is nil while the request's end is still to come.
func (s *clientStream) discardRequest(in *pgwire.ReadBuffer, maxMessageSize int, lg *slog.Logger) (reply []byte, err error) {
	for {
		if s.passRemaining > 0 {
			if _, s.passRemaining = passOn(in, nil, s.passRemaining, true); s.passRemaining > 0 {
				return nil, nil
			}
			if s.discard.query {
				return s.discard.answer(), nil
			}
			continue
		}
		h := judgeHead(in.Buf[in.Start:in.End], maxMessageSize)
		if !h.whole {
			in.Want = pgwire.HeaderLen
			return nil, nil
		}
		if h.lenErr != nil {
			return nil, s.protocolViolation(lg, h.lenErr)
		}
		if h.typ == pgwire.MsgTerminate {
			return nil, errClientTerminated
		}
		if !h.known {
			return nil, unknownMessage(lg, h.typ)
		}
		avail, typ, bodyLen := in.End-in.Start, h.typ, h.bodyLen
		total := pgwire.HeaderLen + bodyLen
		if avail < total {
			s.passRemaining = total - avail
			in.Start = in.End
			s.discard.query = typ == pgwire.MsgQuery
			return nil, nil
		}
		in.Start += total
		if typ == pgwire.MsgQuery || typ == pgwire.MsgSync {
			return s.discard.answer(), nil
		}
	}
}
