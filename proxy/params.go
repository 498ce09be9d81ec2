// Parameter tracking, in both directions: the values a client expects
// (its startup packet, its SETs and RESETs, the server's ParameterStatus)
// against what its backend has, and the SQL that brings a backend to them
// at acquire (paramSyncSQL).

package proxy

import (
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unique"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
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

// paramSet is a session parameter map that knows when it changed: the
// client's wanted values (clientParams.want) and a backend's current ones
// (backend.params). Write vals only through set, del, replace and
// resetTo, which bump ver; read it directly. paramsInSync, checked on
// every acquire, relies on ver to skip its map walk when nothing changed
// (TestParamSetWritesGoThroughMethods finds direct writes).
type paramSet struct {
	vals map[string]paramValue
	ver  uint64 // bumped by every change of vals

	// key names vals's content (exactly: equal keys, equal content) as of
	// keyVer; valid when keyed. See contentKey.
	key    unique.Handle[string]
	keyVer uint64
	keyed  bool

	// inSync remembers paramsInSync's last true answer for this set as a
	// backend's values: a client whose wanted values had content key
	// inSyncWant found it in sync while ver was inSyncVer.
	inSyncWant unique.Handle[string]
	inSyncVer  uint64
	inSyncOK   bool
}

func newParamSet() *paramSet { return &paramSet{vals: make(map[string]paramValue)} }

// get returns k's value.
func (p *paramSet) get(k string) (paramValue, bool) {
	v, ok := p.vals[k]
	return v, ok
}

// set makes k's value v.
func (p *paramSet) set(k string, v paramValue) {
	if old, ok := p.vals[k]; ok && old == v {
		return
	}
	p.vals[k] = v
	p.ver++
}

// del removes k.
func (p *paramSet) del(k string) {
	if _, ok := p.vals[k]; !ok {
		return
	}
	delete(p.vals, k)
	p.ver++
}

// replace makes m the set's content; the set owns m from now on.
func (p *paramSet) replace(m map[string]paramValue) {
	p.vals = m
	p.ver++
}

// resetTo makes the set's content a copy of m.
func (p *paramSet) resetTo(m map[string]paramValue) {
	clear(p.vals)
	maps.Copy(p.vals, m)
	p.ver++
}

// contentKey returns a handle that equals another set's exactly when the
// two have the same content (unique interns the canonical encoding:
// sorted entries, each length-prefixed so no two contents encode alike).
// It is recomputed only after a change, so clients that connected with
// the same parameters share one key until one of them runs a SET.
func (p *paramSet) contentKey() unique.Handle[string] {
	if p.keyed && p.keyVer == p.ver {
		return p.key
	}
	keys := make([]string, 0, len(p.vals))
	for k := range p.vals {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b []byte
	for _, k := range keys {
		v := p.vals[k]
		b = strconv.AppendInt(b, int64(len(k)), 10)
		b = append(b, ':')
		b = append(b, k...)
		if v.raw {
			b = append(b, 'r')
		} else {
			b = append(b, 'p')
		}
		b = strconv.AppendInt(b, int64(len(v.val)), 10)
		b = append(b, ':')
		b = append(b, v.val...)
	}
	p.key, p.keyVer, p.keyed = unique.Make(string(b)), p.ver, true
	return p.key
}

// paramsInSync reports whether a backend already has the values the client
// expects; it is checked on every acquire and allocates nothing unless a
// set changed since. have must be the backend's own set and defaults its
// connect-time values, which never change: have remembers its last true
// answer, so a client whose wanted values have the same content as the
// last one found in sync (clients connected with the same parameters),
// on a backend whose values did not change since, is answered without
// walking the maps.
func paramsInSync(want, have *paramSet, defaults map[string]paramValue) bool {
	wk := want.contentKey()
	if have.inSyncOK && have.inSyncVer == have.ver && have.inSyncWant == wk {
		return true
	}
	if !paramMapsInSync(want.vals, have.vals, defaults) {
		return false
	}
	have.inSyncWant, have.inSyncVer, have.inSyncOK = wk, have.ver, true
	return true
}

// paramMapsInSync is paramsInSync's walk of the maps.
func paramMapsInSync(want, have, defaults map[string]paramValue) bool {
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
// client expects (want), or "" when they already match. It updates have,
// a copy of the backend's map that replaces it once the SETs succeeded.
func paramSyncSQL(wantSet *paramSet, have, defaults map[string]paramValue) string {
	want := wantSet.vals
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

// clientParams is a client's side of the session parameters: want, the
// values it expects (the startup packet's, then every SET, RESET and
// ParameterStatus it saw), and startup, the startup packet's own, which a
// RESET goes back to, as directly. want is under c.mu; startup is written
// at login only. Its methods track a change on the client's backend and
// in want together.
type clientParams struct {
	want    *paramSet
	startup map[string]paramValue
}

// currentAppName is the client's application_name now, as
// pg_stat_activity shows it directly: want holds it from the startup
// packet on and follows every SET, RESET and SET LOCAL that ended; a
// client that never set it has none ("", as directly). Under c.mu (want
// is the client's).
func currentAppName(want *paramSet) string {
	v, _ := want.get("application_name")
	return v.val
}

// trackParameterStatus tracks a reported parameter's new value (the
// ParameterStatus msg, whole) on backend b and in want, the values the
// client expects, and says whether to swallow the message: a reply to the
// proxy's own request (head.swallow), or replaced, in repl, by the
// client's startup value after a RESET. It returns repl, reused.
func (p *clientParams) trackParameterStatus(b *backend, head *request, msg, repl []byte) (swallow bool, _ []byte) {
	name, rest, ok := pgwire.CString(msg[pgwire.HeaderLen:])
	val, _, ok2 := pgwire.CString(rest)
	if ok && ok2 {
		k := strings.ToLower(string(name))
		if !unsettable[k] {
			v := paramValue{val: string(val)}
			b.params.set(k, v)
			if sv, ok := p.startup[k]; ok && head != nil && !head.swallow && head.resets(k) && sv != v {
				// A reset goes back to the session's default, which for the
				// client is its startup value, not the pooled backend's:
				// tell the client its own value; the next acquire applies it.
				p.want.set(k, sv)
				repl, _ = (&pgproto3.ParameterStatus{Name: string(name), Value: sv.val}).Encode(repl[:0])
				return true, repl
			}
			if _, wanted := p.want.get(k); wanted || head == nil || !head.swallow {
				p.want.set(k, v)
			}
		}
	}
	return head != nil && head.swallow, repl
}

// trackParamChange tracks a SET / RESET (ch) of a parameter the server does
// not report, on backend b and in want, the values the client expects;
// reported ones are tracked from ParameterStatus instead. A RESET goes
// back to the client's startup value, as directly. Under c.mu (want is
// the client's).
func (p *clientParams) trackParamChange(b *backend, ch paramChange) {
	if ch.all {
		for k := range p.want.vals {
			if _, reported := b.defaults[k]; !reported {
				if v, ok := p.startup[k]; ok {
					p.want.set(k, v)
				} else {
					p.want.del(k)
				}
			}
		}
		for k := range b.params.vals {
			if _, reported := b.defaults[k]; !reported {
				b.params.del(k)
			}
		}
		return
	}
	if _, reported := b.defaults[ch.name]; reported || unsettable[ch.name] {
		return
	}
	if ch.reset {
		if v, ok := p.startup[ch.name]; ok {
			p.want.set(ch.name, v)
		} else {
			p.want.del(ch.name)
		}
		b.params.del(ch.name)
		return
	}
	p.want.set(ch.name, ch.value)
	b.params.set(ch.name, ch.value)
}

// trackCheckedSettings makes the tracked values of settings the server
// does not report (reported ones follow ParameterStatus) what the server
// has: settings, the session's settings the state check (sessionstate.go)
// read on b. Both b's values and want, the client's, become settings; a
// setting that is gone goes back to the client's startup value, or is
// dropped. Under c.mu, as trackParamChange (want is the client's).
func (p *clientParams) trackCheckedSettings(b *backend, settings map[string]string) {
	for k, v := range settings {
		k = strings.ToLower(k)
		if _, reported := b.defaults[k]; reported || unsettable[k] {
			continue
		}
		pv := paramValue{val: v}
		b.params.set(k, pv)
		p.want.set(k, pv)
	}
	for k := range b.params.vals {
		if _, reported := b.defaults[k]; reported {
			continue
		}
		if _, ok := settings[k]; !ok {
			b.params.del(k)
		}
	}
	for k := range p.want.vals {
		if _, reported := b.defaults[k]; reported {
			continue
		}
		if _, ok := settings[k]; ok {
			continue
		}
		if v, ok := p.startup[k]; ok {
			// RESET goes back to the client's startup value, as directly.
			p.want.set(k, v)
		} else {
			p.want.del(k)
		}
	}
}
