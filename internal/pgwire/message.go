// Message framing and encoders.

package pgwire

// Message framing: type bytes, headers and the encoders for the messages
// the proxy writes itself.

import (
	"bytes"
	"encoding/binary"
)

// HeaderLen is the size of a message header: one type byte and an int32
// length that counts itself but not the type byte.
const HeaderLen = 5

// Message types the relay looks at. Everything else is forwarded unread.
const (
	// frontend
	MsgQuery        = 'Q'
	MsgParse        = 'P'
	MsgBind         = 'B'
	MsgDescribe     = 'D'
	MsgExecute      = 'E'
	MsgClose        = 'C'
	MsgSync         = 'S'
	MsgFlush        = 'H'
	MsgTerminate    = 'X'
	MsgFunctionCall = 'F'
	MsgCopyData     = 'd'
	MsgCopyDone     = 'c'
	MsgCopyFail     = 'f'

	// backend
	MsgReadyForQuery     = 'Z'
	MsgParameterStatus   = 'S'
	MsgErrorResponse     = 'E'
	MsgNoticeResponse    = 'N'
	MsgNotification      = 'A'
	MsgParseComplete     = '1'
	MsgBindComplete      = '2'
	MsgCloseComplete     = '3'
	MsgParamDescription  = 't'
	MsgRowDescription    = 'T'
	MsgNoData            = 'n'
	MsgCommandComplete   = 'C'
	MsgDataRow           = 'D'
	MsgEmptyQuery        = 'I'
	MsgPortalSuspended   = 's'
	MsgCopyInResponse    = 'G'
	MsgCopyOutResponse   = 'H'
	MsgCopyBothResponse  = 'W'
	MsgFunctionCallReply = 'V'
)

// ParseHeader reads a header at the start of b (which holds >= HeaderLen
// bytes) and returns the type and the body length. A negative body length
// means the length field was below 4.
func ParseHeader(b []byte) (typ byte, bodyLen int) {
	return b[0], int(int32(binary.BigEndian.Uint32(b[1:5]))) - 4
}

// AppendHeader appends a header for a body of bodyLen bytes.
func AppendHeader(dst []byte, typ byte, bodyLen int) []byte {
	return binary.BigEndian.AppendUint32(append(dst, typ), uint32(bodyLen+4))
}

// CString splits b at the first NUL: the string before it and the rest
// after it. ok is false when there is no NUL.
func CString(b []byte) (s, rest []byte, ok bool) {
	// bytes.IndexByte is vectorised: a Parse's query text is most of its
	// body, and a byte loop over it was most of onParse's own time.
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i], b[i+1:], true
	}
	return nil, nil, false
}

// Fixed messages the proxy synthesizes; shared, never written to.
var (
	ParseCompleteMessage = []byte{MsgParseComplete, 0, 0, 0, 4}
	CloseCompleteMessage = []byte{MsgCloseComplete, 0, 0, 0, 4}
	FlushMessage         = []byte{MsgFlush, 0, 0, 0, 4}
)

// AppendReadyForQuery appends ReadyForQuery with the transaction status
// ('I', 'T' or 'E').
func AppendReadyForQuery(dst []byte, status byte) []byte {
	return append(dst, MsgReadyForQuery, 0, 0, 0, 5, status)
}

// AppendQuery appends a simple-protocol Query message.
func AppendQuery(dst []byte, sql string) []byte {
	dst = AppendHeader(dst, MsgQuery, len(sql)+1)
	dst = append(dst, sql...)
	return append(dst, 0)
}

// AppendCloseStatement appends Close('S', name).
func AppendCloseStatement(dst []byte, name string) []byte {
	dst = AppendHeader(dst, MsgClose, 1+len(name)+1)
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// ErrorField returns the value of one field (e.g. 'C' for the SQLSTATE) of
// an ErrorResponse or NoticeResponse body, without allocating.
func ErrorField(body []byte, field byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		f := body[0]
		v, rest, ok := CString(body[1:])
		if !ok {
			return nil
		}
		if f == field {
			return v
		}
		body = rest
	}
	return nil
}
