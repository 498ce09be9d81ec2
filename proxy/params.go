package proxy

import (
	"sort"
	"strings"
)

// paramValue is a session parameter's value. raw values are SQL text taken
// from a client's SET statement and are replayed as "SET name TO raw";
// plain values come from startup packets or ParameterStatus and are replayed
// with set_config, which parses them exactly as a startup packet would.
type paramValue struct {
	val string
	raw bool
}

// paramChange is one SET / RESET a client ran, tracked for parameters the
// server does not report with ParameterStatus.
type paramChange struct {
	name  string // lower case; "" with all = RESET ALL
	value paramValue
	reset bool
	all   bool
}

// unsettable are reported parameters a session cannot change; they are
// never compared or replayed.
var unsettable = map[string]bool{
	"server_version": true, "server_encoding": true, "integer_datetimes": true,
	"is_superuser": true, "session_authorization": true, "in_hot_standby": true,
	"scram_iterations": true,
}

// notSessionParams are startup packet keys that are not GUCs.
var notSessionParams = map[string]bool{
	"user": true, "database": true, "replication": true, "options": true,
}

// canonicalParamNames maps lower-case names to the spelling PostgreSQL
// reports in ParameterStatus, which some drivers compare case-sensitively.
var canonicalParamNames = map[string]string{
	"datestyle": "DateStyle", "intervalstyle": "IntervalStyle", "timezone": "TimeZone",
}

func canonicalParamName(lower string) string {
	if n, ok := canonicalParamNames[lower]; ok {
		return n
	}
	return lower
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	if strings.ContainsRune(s, '\\') {
		return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// current is the value a backend has for k: what the proxy saw set, else
// its connect-time default.
func current(have, defaults map[string]paramValue, k string) (paramValue, bool) {
	if h, ok := have[k]; ok {
		return h, true
	}
	h, ok := defaults[k]
	return h, ok
}

// needsReset reports whether a value the client does not ask for differs
// from the backend's default (or has no known default) and must be RESET.
func needsReset(defaults map[string]paramValue, k string, h paramValue) bool {
	d, ok := defaults[k]
	return !ok || d != h
}

// paramsInSync reports whether a backend already has the values the client
// expects; it is the allocation-free check done on every acquire.
func paramsInSync(want, have, defaults map[string]paramValue) bool {
	for k, w := range want {
		if h, ok := current(have, defaults, k); !ok || h != w {
			return false
		}
	}
	for k, h := range have {
		if _, ok := want[k]; !ok && needsReset(defaults, k, h) {
			return false
		}
	}
	return true
}

// paramSyncSQL returns the statements that bring a backend whose current
// values are have (with connect-time defaults defaults) to the values the
// client expects (want), or "" when they already match. It updates have.
func paramSyncSQL(want, have, defaults map[string]paramValue) string {
	var b strings.Builder
	var setConfigs []string
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w := want[k]
		if h, ok := current(have, defaults, k); ok && h == w {
			continue
		}
		if w.raw {
			b.WriteString("SET " + quoteIdent(k) + " TO " + w.val + ";")
		} else {
			setConfigs = append(setConfigs, "set_config("+quoteLiteral(k)+", "+quoteLiteral(w.val)+", false)")
		}
		have[k] = w
	}
	var resets []string
	for k, h := range have {
		if _, ok := want[k]; !ok && needsReset(defaults, k, h) {
			resets = append(resets, k)
		}
	}
	sort.Strings(resets)
	for _, k := range resets {
		b.WriteString("RESET " + quoteIdent(k) + ";")
		if d, ok := defaults[k]; ok {
			have[k] = d
		} else {
			delete(have, k)
		}
	}
	if len(setConfigs) > 0 {
		return "SELECT " + strings.Join(setConfigs, ", ") + ";" + b.String()
	}
	return b.String()
}

// quoteIdent quotes a parameter name when it is not a plain identifier
// (custom options like "myapp.tenant" are fine unquoted as two parts).
func quoteIdent(s string) string {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
		}
	}
	return s
}

// parseSetStatement recognises a single session-level SET or RESET in a
// simple Query. It returns ok=false for anything it cannot read reliably
// (SET LOCAL, several statements, SET SESSION AUTHORIZATION, ...).
func parseSetStatement(q []byte) (paramChange, bool) {
	s := strings.TrimSpace(string(q))
	s = strings.TrimRight(s, "; \t\r\n")
	if s == "" || strings.ContainsAny(s, ";") || strings.Contains(s, "--") || strings.Contains(s, "/*") {
		return paramChange{}, false
	}
	word, rest := nextWord(s)
	switch strings.ToLower(word) {
	case "reset":
		name, rest := nextWord(rest)
		if name == "" || strings.TrimSpace(rest) != "" {
			return paramChange{}, false
		}
		if strings.EqualFold(name, "all") {
			return paramChange{all: true, reset: true}, true
		}
		return paramChange{name: strings.ToLower(name), reset: true}, true
	case "set":
		name, rest := nextWord(rest)
		switch strings.ToLower(name) {
		case "local", "transaction", "constraints", "role", "time":
			return paramChange{}, false
		case "session":
			name, rest = nextWord(rest)
			switch strings.ToLower(name) {
			case "authorization", "characteristics", "role", "time", "":
				return paramChange{}, false
			}
		}
		if name == "" || strings.HasPrefix(name, `"`) {
			return paramChange{}, false
		}
		rest = strings.TrimSpace(rest)
		switch {
		case strings.HasPrefix(rest, "="):
			rest = rest[1:]
		case len(rest) > 3 && strings.EqualFold(rest[:3], "to "):
			rest = rest[3:]
		default:
			return paramChange{}, false
		}
		rest = strings.TrimSpace(rest)
		if rest == "" {
			return paramChange{}, false
		}
		if strings.EqualFold(rest, "default") {
			return paramChange{name: strings.ToLower(name), reset: true}, true
		}
		return paramChange{name: strings.ToLower(name), value: paramValue{val: rest, raw: true}}, true
	}
	return paramChange{}, false
}

func nextWord(s string) (word, rest string) {
	s = strings.TrimLeft(s, " \t\r\n")
	i := strings.IndexAny(s, " \t\r\n=")
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}
