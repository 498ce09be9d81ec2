// pgError: the proxy's own errors and notices to clients, and their
// ErrorResponse and NoticeResponse encoding.

package proxy

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// pgError is an error the proxy reports to a client as an ErrorResponse.
// It is also a Go error, so the code that detects a problem can return it
// and the code that owns the client connection decides to write it.
type pgError struct {
	Severity, Code, Message, Detail, Hint string
	// Routine is the server function that raises the error PostgreSQL
	// would give, where drivers recognise an error by it (see
	// staleStatementError); "" for the proxy's own errors.
	Routine string
	// silent: logged, never sent. PostgreSQL answers a startup packet it
	// cannot even frame (bad length, cut short, another protocol) by
	// closing without a word (COMMERROR), and so does the proxy.
	silent bool
}

// Error formats the error the way psql prints a server error, with the
// SQLSTATE appended so logs can be grepped by code.
func (e *pgError) Error() string {
	return e.Severity + ": " + e.Message + " (SQLSTATE " + e.Code + ")"
}

// newError returns an ERROR-severity pgError: the statement failed but the
// session goes on.
func newError(code, message, hint string) *pgError {
	return &pgError{Severity: "ERROR", Code: code, Message: message, Hint: hint}
}

// newFatal returns a FATAL-severity pgError: the proxy closes the
// connection after sending it.
func newFatal(code, message, hint string) *pgError {
	return &pgError{Severity: "FATAL", Code: code, Message: message, Hint: hint}
}

// newSilentFatal is newFatal for input answered by closing in silence.
func newSilentFatal(code, message, hint string) *pgError {
	e := newFatal(code, message, hint)
	e.silent = true
	return e
}

// appendTo appends e as an ErrorResponse ('E') wire message to dst.
func (e *pgError) appendTo(dst []byte) []byte {
	msg := pgproto3.ErrorResponse{
		Severity: e.Severity,
		// libpq >= 9.6 prefers the non-localized 'V' field; the proxy does not
		// localize, so both carry the same word.
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
		Routine:             e.Routine,
	}
	return pgerrAppend(dst, &msg)
}

// appendNotice appends a NOTICE-severity NoticeResponse ('N') to dst.
func appendNotice(dst []byte, code, message, hint string) []byte {
	msg := pgproto3.NoticeResponse{
		Severity:            "NOTICE",
		SeverityUnlocalized: "NOTICE",
		Code:                code,
		Message:             message,
		Hint:                hint,
	}
	return pgerrAppend(dst, &msg)
}

// pgerrAppend encodes msg after dst. Encode only fails for a body over 1 GiB,
// which the proxy's own short texts never reach; should it happen anyway,
// dst is returned unchanged rather than with a half-written message.
func pgerrAppend(dst []byte, msg pgproto3.BackendMessage) []byte {
	out, err := msg.Encode(dst)
	if err != nil {
		return dst
	}
	return out
}
