// Recognising DEALLOCATE, DISCARD ALL and RESET ALL (classifyQuery, and
// needsClassify, the cheap filter before it and parseSetStatement).

package proxy

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
