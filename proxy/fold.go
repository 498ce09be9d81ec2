// ASCII case-insensitive matching of SQL text, without allocating: what
// the relay's text checks share (needsClassify and classifyQuery, the
// session-state and LISTEN scans, the event loop's LISTEN check).

package proxy

import "bytes"

// skipSpace is the length of the blanks (space, tab, newline, carriage
// return) q starts with.
func skipSpace(q []byte) int {
	i := 0
	for i < len(q) && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r') {
		i++
	}
	return i
}

// hasPrefixFold reports whether b starts with lowerPrefix, a lower-case
// ASCII string, in any case.
func hasPrefixFold(b []byte, lowerPrefix string) bool {
	if len(b) < len(lowerPrefix) {
		return false
	}
	for i := 0; i < len(lowerPrefix); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lowerPrefix[i] {
			return false
		}
	}
	return true
}

// containsFold reports whether b contains lower, a lower-case ASCII
// string, in any case. It does not allocate.
func containsFold(b []byte, lower string) bool {
	if len(lower) == 0 {
		return true
	}
	end := len(b) - len(lower) + 1 // candidates start before end
	if end <= 0 {
		return false
	}
	// Candidates start with lower's first letter in either case, found with
	// bytes.IndexByte (vectorised): most queries hold none of the words
	// looked for, so this is most of the scan. next[k] is the next
	// candidate position of either case at or after pos (end: none).
	cases := [2]byte{lower[0], lower[0]}
	if c := lower[0]; c >= 'a' && c <= 'z' {
		cases[1] = c - ('a' - 'A')
	}
	next := [2]int{-1, -1}
	for pos := 0; pos < end; {
		for k, c := range cases {
			if next[k] < pos {
				next[k] = end
				if n := bytes.IndexByte(b[pos:end], c); n >= 0 {
					next[k] = pos + n
				}
			}
		}
		i := min(next[0], next[1])
		if i >= end {
			return false
		}
		if hasPrefixFold(b[i:], lower) {
			return true
		}
		pos = i + 1
	}
	return false
}

// eqFold reports whether word equals lower (ASCII case-insensitive).
func eqFold(word []byte, lower string) bool {
	return len(word) == len(lower) && hasPrefixFold(word, lower)
}
