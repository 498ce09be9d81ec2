package proxy

import "encoding/binary"

// headerLen is the size of a message header: one type byte and an int32
// length that counts itself but not the type byte.
const headerLen = 5

// Message types the relay looks at. Everything else is forwarded unread.
const (
	// frontend
	msgQuery        = 'Q'
	msgParse        = 'P'
	msgBind         = 'B'
	msgDescribe     = 'D'
	msgExecute      = 'E'
	msgClose        = 'C'
	msgSync         = 'S'
	msgFlush        = 'H'
	msgTerminate    = 'X'
	msgFunctionCall = 'F'
	msgCopyData     = 'd'
	msgCopyDone     = 'c'
	msgCopyFail     = 'f'

	// backend
	msgReadyForQuery     = 'Z'
	msgParameterStatus   = 'S'
	msgErrorResponse     = 'E'
	msgNoticeResponse    = 'N'
	msgNotification      = 'A'
	msgParseComplete     = '1'
	msgBindComplete      = '2'
	msgCloseComplete     = '3'
	msgParamDescription  = 't'
	msgRowDescription    = 'T'
	msgNoData            = 'n'
	msgCommandComplete   = 'C'
	msgDataRow           = 'D'
	msgEmptyQuery        = 'I'
	msgPortalSuspended   = 's'
	msgCopyInResponse    = 'G'
	msgCopyOutResponse   = 'H'
	msgCopyBothResponse  = 'W'
	msgFunctionCallReply = 'V'
)

// parseHeader reads a header at the start of b (which holds >= headerLen
// bytes) and returns the type and the body length. A negative body length
// means the length field was below 4.
func parseHeader(b []byte) (typ byte, bodyLen int) {
	return b[0], int(int32(binary.BigEndian.Uint32(b[1:5]))) - 4
}

// appendHeader appends a header for a body of bodyLen bytes.
func appendHeader(dst []byte, typ byte, bodyLen int) []byte {
	return binary.BigEndian.AppendUint32(append(dst, typ), uint32(bodyLen+4))
}

// cstring splits b at the first NUL: the string before it and the rest
// after it. ok is false when there is no NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// Fixed messages the proxy synthesizes.
var (
	wireParseComplete = []byte{msgParseComplete, 0, 0, 0, 4}
	wireCloseComplete = []byte{msgCloseComplete, 0, 0, 0, 4}
)

func appendReadyForQuery(dst []byte, status byte) []byte {
	return append(dst, msgReadyForQuery, 0, 0, 0, 5, status)
}

// appendQuery appends a simple-protocol Query message.
func appendQuery(dst []byte, sql string) []byte {
	dst = appendHeader(dst, msgQuery, len(sql)+1)
	dst = append(dst, sql...)
	return append(dst, 0)
}

// appendCloseStatement appends Close('S', name).
func appendCloseStatement(dst []byte, name string) []byte {
	dst = appendHeader(dst, msgClose, 1+len(name)+1)
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// errorField returns the value of one field (e.g. 'C' for the SQLSTATE) of
// an ErrorResponse or NoticeResponse body, without allocating.
func errorField(body []byte, field byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		f := body[0]
		v, rest, ok := cstring(body[1:])
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

// poisonStatement names a statement no server has: a Bind of it fails, and
// the server then skips to Sync and aborts the transaction exactly as for
// the error the proxy reports in its place.
const poisonStatement = "pgsidecar_no_such_statement"

// appendPoisonBind appends a Bind that the server rejects.
func appendPoisonBind(dst []byte) []byte {
	dst = appendHeader(dst, msgBind, 1+len(poisonStatement)+1+2+2+2)
	dst = append(dst, 0)
	dst = append(dst, poisonStatement...)
	return append(dst, 0, 0, 0, 0, 0, 0, 0)
}
