package proxy

import "strings"

// hazard is a feature that is bound to a server session and so cannot work
// when a client's transactions land on different backends.
type hazard uint8

const (
	hazardNone hazard = iota
	hazardListen
	hazardAdvisoryLock
	hazardHoldCursor
	hazardTempTable
	hazardSQLPrepare
	hazardCount
)

// hazardText holds each hazard's notice; %s in the hint is the pooling
// mode's option name.
var hazardText = [hazardCount]struct{ msg, hint string }{
	hazardListen: {"LISTEN does not work in transaction pooling mode: notifications reach this client only while it happens to hold the server connection",
		"use %s session for listeners, or connect the listener directly to the database"},
	hazardAdvisoryLock: {"session advisory locks are held by the server connection, not by this client, in transaction pooling mode",
		"use pg_advisory_xact_lock inside a transaction, or %s session"},
	hazardHoldCursor: {"WITH HOLD cursors outlive the transaction but not the server connection, which transaction pooling gives to other clients",
		"fetch the cursor inside one transaction, or use %s session"},
	hazardTempTable: {"temporary tables outlive the transaction but belong to the server connection, which transaction pooling gives to other clients",
		"use ON COMMIT DROP inside one transaction, or %s session"},
	hazardSQLPrepare: {"SQL PREPARE statements belong to the server connection, which transaction pooling gives to other clients",
		"use the protocol-level prepared statements of your driver (pgsidecar carries those), or %s session"},
}

// queryKind classifies the statements the relay must act on.
type queryKind uint8

const (
	queryOther queryKind = iota
	queryDeallocate
	queryDeallocateAll
	queryDiscardAll
	queryResetAll
)

// maxInspect bounds how much of a query text is searched, so huge queries
// cost no more than small ones.
const maxInspect = 8 << 10

// findHazard looks for a session-bound feature in a query text. It runs on
// every query in transaction mode, so it scans once without allocating.
func findHazard(q []byte) hazard {
	if len(q) > maxInspect {
		q = q[:maxInspect]
	}
	start := skipSpace(q)
	if hasPrefixFold(q[start:], "listen") {
		return hazardListen
	}
	if hasPrefixFold(q[start:], "prepare ") {
		return hazardSQLPrepare
	}
	for i := start; i < len(q); i++ {
		switch q[i] | 0x20 {
		case 'p':
			if hasPrefixFold(q[i:], "pg_advisory_lock") || hasPrefixFold(q[i:], "pg_try_advisory_lock") {
				return hazardAdvisoryLock
			}
		case 'w':
			if hasPrefixFold(q[i:], "with hold") && containsFold(q[start:], "declare") {
				return hazardHoldCursor
			}
		case 't':
			if (hasPrefixFold(q[i:], "temp ") || hasPrefixFold(q[i:], "temporary ")) && i >= 7 &&
				containsFold(q[start:i], "create") && !containsFold(q[i:], "on commit drop") {
				return hazardTempTable
			}
		}
	}
	return hazardNone
}

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
	for i := 0; i+len(lower) <= len(b); i++ {
		if hasPrefixFold(b[i:], lower) {
			return true
		}
	}
	return false
}
