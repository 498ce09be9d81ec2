// Recognising DEALLOCATE, DISCARD ALL and RESET ALL (classifyQuery, and
// needsClassify, the cheap filter before it and parseSetStatement), and,
// a second concern, the ASCII case-insensitive byte matching the relay's
// text checks share (skipSpace, hasPrefixFold, containsFold).

package proxy

import "bytes"

import "strings"

// queryKind classifies the statements the relay must act on.
type queryKind uint8

const (
	queryOther queryKind = iota
	queryDeallocate
	queryDeallocateAll
	queryDiscardAll
	queryResetAll
)

// classifyQuery recognises DEALLOCATE / DISCARD ALL / RESET ALL as a whole
// single statement and returns the statement name for DEALLOCATE name.
func classifyQuery(q []byte) (queryKind, string) {
	s := strings.TrimSpace(string(q[skipSpace(q):]))
	s = strings.TrimRight(s, "; \t\r\n")
	if len(s) > 200 || strings.Contains(s, ";") {
		return queryOther, ""
	}
	w, rest := nextWord(s)
	switch strings.ToLower(w) {
	case "deallocate":
		n, rest := nextWord(rest)
		if strings.EqualFold(n, "prepare") {
			n, rest = nextWord(rest)
		}
		if strings.TrimSpace(rest) != "" || n == "" {
			return queryOther, ""
		}
		if strings.EqualFold(n, "all") {
			return queryDeallocateAll, ""
		}
		if strings.HasPrefix(n, `"`) && strings.HasSuffix(n, `"`) && len(n) >= 2 {
			return queryDeallocate, strings.ReplaceAll(n[1:len(n)-1], `""`, `"`)
		}
		return queryDeallocate, strings.ToLower(n)
	case "discard":
		if n, rest := nextWord(rest); strings.EqualFold(n, "all") && strings.TrimSpace(rest) == "" {
			return queryDiscardAll, ""
		}
	case "reset":
		if n, rest := nextWord(rest); strings.EqualFold(n, "all") && strings.TrimSpace(rest) == "" {
			return queryResetAll, ""
		}
	}
	return queryOther, ""
}

// needsClassify is a cheap first filter, run on every Query: only texts
// starting with these words can be a statement classifyQuery or
// parseSetStatement acts on.
func needsClassify(q []byte) bool {
	q = q[skipSpace(q):]
	return hasPrefixFold(q, "set ") || hasPrefixFold(q, "reset ") || hasPrefixFold(q, "deallocate ") ||
		hasPrefixFold(q, "discard ")
}

func skipSpace(q []byte) int {
	i := 0
	for i < len(q) && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r') {
		i++
	}
	return i
}

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
