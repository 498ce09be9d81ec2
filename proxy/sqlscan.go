// sqlLexer: the SQL lexer the session-state and LISTEN scans run on.

package proxy

// A small SQL lexer, enough to find where statements start and which words
// they contain outside string literals, quoted identifiers and comments.
// It never allocates: the relay runs it on queries in transaction mode.

type tokKind uint8

const (
	tokEOF tokKind = iota
	tokWord
	tokSemicolon
	tokOther // punctuation, numbers, literals, quoted identifiers
)

type sqlLexer struct {
	q []byte
	i int
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

// next returns the next token; word tokens are slices of the query text.
func (l *sqlLexer) next() ([]byte, tokKind) {
	q := l.q
	for l.i < len(q) {
		c := q[l.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && l.i+1 < len(q) && q[l.i+1] == '-':
			for l.i < len(q) && q[l.i] != '\n' {
				l.i++
			}
		case c == '/' && l.i+1 < len(q) && q[l.i+1] == '*':
			l.skipBlockComment()
		case c == ';':
			l.i++
			return nil, tokSemicolon
		case c == '\'':
			l.skipString(false)
			return nil, tokOther
		case c == '"':
			l.skipQuoted('"')
			return nil, tokOther
		case c == '$':
			if !l.skipDollar() {
				l.i++
			}
			return nil, tokOther
		case isIdentStart(c):
			if (c == 'e' || c == 'E') && l.i+1 < len(q) && q[l.i+1] == '\'' {
				l.i++
				l.skipString(true)
				return nil, tokOther
			}
			start := l.i
			for l.i < len(q) && isIdentChar(q[l.i]) {
				l.i++
			}
			return q[start:l.i], tokWord
		default:
			l.i++
			return nil, tokOther
		}
	}
	return nil, tokEOF
}

// nextStatementWord returns the next word that starts a statement (the
// first token of q or of what follows a semicolon), skipping every other
// token, including those the caller read itself after the previous one;
// false at the end of q. Callers look only at how statements begin.
func (l *sqlLexer) nextStatementWord() ([]byte, bool) {
	first := l.i == 0
	for {
		w, k := l.next()
		switch k {
		case tokEOF:
			return nil, false
		case tokSemicolon:
			first = true
			continue
		case tokWord:
			if first {
				return w, true
			}
		}
		first = false
	}
}

func (l *sqlLexer) skipBlockComment() {
	depth := 0
	for l.i+1 < len(l.q) {
		switch {
		case l.q[l.i] == '/' && l.q[l.i+1] == '*':
			depth++
			l.i += 2
		case l.q[l.i] == '*' && l.q[l.i+1] == '/':
			depth--
			l.i += 2
			if depth == 0 {
				return
			}
		default:
			l.i++
		}
	}
	l.i = len(l.q)
}

// skipString skips a '...' literal (two quotes in a row are one quote;
// with backslashes, as in E'...', \ escapes the next byte).
func (l *sqlLexer) skipString(backslashes bool) {
	l.i++ // opening quote
	for l.i < len(l.q) {
		c := l.q[l.i]
		l.i++
		switch {
		case c == '\\' && backslashes:
			l.i++
		case c == '\'':
			if l.i < len(l.q) && l.q[l.i] == '\'' {
				l.i++
				continue
			}
			return
		}
	}
}

func (l *sqlLexer) skipQuoted(quote byte) {
	l.i++
	for l.i < len(l.q) {
		c := l.q[l.i]
		l.i++
		if c == quote {
			if l.i < len(l.q) && l.q[l.i] == quote {
				l.i++
				continue
			}
			return
		}
	}
}

// skipDollar skips a $tag$...$tag$ string starting at l.i; it reports false
// when l.i does not start one (a parameter like $1).
func (l *sqlLexer) skipDollar() bool {
	q := l.q
	j := l.i + 1
	for j < len(q) && q[j] != '$' {
		if !isIdentChar(q[j]) || q[j] >= '0' && q[j] <= '9' && j == l.i+1 {
			return false
		}
		j++
	}
	if j >= len(q) {
		return false
	}
	tag := q[l.i : j+1]
	for k := j + 1; k+len(tag) <= len(q); k++ {
		if q[k] == '$' && string(q[k:k+len(tag)]) == string(tag) {
			l.i = k + len(tag)
			return true
		}
	}
	l.i = len(q)
	return true
}
