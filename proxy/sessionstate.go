// Session state in transaction mode: the policy (pin or reject), the scan
// of the client's SQL, the state check run on the backend, and pinning
// (PinnedClients).

package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Session state in transaction mode.
//
// LISTEN, session advisory locks, temporary tables, WITH HOLD cursors, SQL
// PREPARE and SET ROLE live in a server session, not in a transaction. In
// transaction mode a backend serves many clients, so such state would
// outlive its client or reach another one. Policy SessionStatePin keeps
// the backend bound to the client while the state exists; SessionStateReject
// refuses the statements that create it.
//
// Whether state exists is asked of the server, not guessed from SQL text:
// when a client's traffic may have created or dropped some (a cheap,
// deliberately over-eager scan of the text, see touchesSessionState), the
// proxy runs stateCheckSQL on the backend once the transaction is over and
// before the backend can go to anyone else. The same query reads the
// session's settings (pg_settings, source 'session'), so SETs the relay
// could not follow statement by statement (inside a multi-statement query,
// undone by ROLLBACK, made by set_config) are taken from the server.

// SessionStatePolicy says what transaction mode does with session state.
type SessionStatePolicy string

const (
	// SessionStatePin keeps the backend bound to its client while the
	// client has session state on it.
	SessionStatePin SessionStatePolicy = "pin"
	// SessionStateReject refuses statements that create session state with
	// 0A000 feature_not_supported.
	SessionStateReject SessionStatePolicy = "reject"
)

// SessionStatePolicies lists the policies, as configuration spells them.
var SessionStatePolicies = []SessionStatePolicy{SessionStatePin, SessionStateReject}

// ParseSessionStatePolicy reads a policy, ignoring case and surrounding space.
func ParseSessionStatePolicy(s string) (SessionStatePolicy, error) {
	return parseName(s, SessionStatePolicies)
}

// UnmarshalText makes a SessionStatePolicy readable from configuration.
func (p *SessionStatePolicy) UnmarshalText(text []byte) (err error) {
	*p, err = ParseSessionStatePolicy(string(text))
	return err
}

// hazard is a kind of session state.
type hazard uint8

const (
	hazardNone hazard = iota
	hazardListen
	hazardAdvisoryLock
	hazardHoldCursor
	hazardTempTable
	hazardSQLPrepare
	hazardRole
	hazardCount
)

// hazardText is what a client is told when policy reject refuses a
// statement, and what the log and /stats call a pin reason. In msg and
// hint, %[1]s is the option that sets the policy (Config.SessionState) and
// %[2]s the one that sets the pooling mode.
var hazardText = [hazardCount]struct{ name, msg, hint string }{
	hazardListen: {"LISTEN", "LISTEN is not supported in transaction pooling mode with %[1]s = reject",
		"use %[1]s pin, %[2]s session, or connect the listener directly to the database"},
	hazardAdvisoryLock: {"session advisory lock", "session advisory locks are not supported in transaction pooling mode with %[1]s = reject",
		"use pg_advisory_xact_lock inside a transaction, or %[1]s pin"},
	hazardHoldCursor: {"WITH HOLD cursor", "WITH HOLD cursors are not supported in transaction pooling mode with %[1]s = reject",
		"fetch the cursor inside one transaction, or use %[1]s pin"},
	hazardTempTable: {"temporary table", "temporary tables that outlive the transaction are not supported in transaction pooling mode with %[1]s = reject",
		"use ON COMMIT DROP inside one transaction, or %[1]s pin"},
	hazardSQLPrepare: {"SQL PREPARE", "SQL-level PREPARE is not supported in transaction pooling mode with %[1]s = reject",
		"use the protocol-level prepared statements of your driver (pgsidecar carries those), or %[1]s pin"},
	hazardRole: {"SET ROLE / SESSION AUTHORIZATION", "", ""},
}

// stateKeywords are the words whose presence at the start of a word
// anywhere in a query (strings and comments included, so DO blocks and
// dynamic SQL count) makes the proxy ask the server about session state at
// the end of the transaction. A false positive costs one round trip; a miss
// would leak state, so the list errs on the eager side.
var stateKeywords = [...]string{
	"listen", "unlisten", "pg_advisory", "pg_try_advisory", "temp", "pg_temp", "hold", "prepare",
	"deallocate", "discard", "drop", "close", "role", "authorization",
}

// stateKeywordsByLetter are stateKeywords by first letter ('a' is 0).
var stateKeywordsByLetter = func() (t [26][]string) {
	for _, k := range stateKeywords {
		t[k[0]-'a'] = append(t[k[0]-'a'], k)
	}
	return t
}()

// identCharTable is isIdentChar as a table, for sessionScan's byte loop.
var identCharTable = func() (t [256]bool) {
	for c := range t {
		t[c] = isIdentChar(byte(c))
	}
	return t
}()

// settingsHint is what sessionScan found about settings: none (q changes
// no setting), maybe (a word contains "set", "reset" or "discard": whether
// one starts a statement takes the lexer, settingStatement) or sure
// (set_config).
type settingsHint uint8

const (
	settingsNone settingsHint = iota
	settingsMaybe
	settingsSure
)

// sessionScan reads q once, word by word (a word is a run of isIdentChar
// bytes), for the two checks every query in transaction mode gets:
// touches is touchesSessionState(q), and settings says how far it got
// with changesSettings(q). Every keyword either looks for is made of word
// bytes, so it lies inside one word: a set_config anywhere, and every word
// the SQL lexer sees. Most queries contain none of them, and the lexer
// never runs. It does not allocate.
func sessionScan(q []byte) (touches bool, settings settingsHint) {
	for i := 0; i < len(q); {
		if !identCharTable[q[i]] {
			i++
			continue
		}
		// A keyword at a word's start.
		if c := q[i] | 0x20; !touches && c >= 'a' && c <= 'z' {
			for _, k := range stateKeywordsByLetter[c-'a'] {
				if hasPrefixFold(q[i:], k) {
					touches = true
					break
				}
			}
		}
		for ; i < len(q) && identCharTable[q[i]]; i++ {
			// Only S, s, D and d turn into 's' and 'd' here.
			switch q[i] | 0x20 {
			case 's':
				if hasPrefixFold(q[i:], "set") {
					settings = max(settings, settingsMaybe)
					if hasPrefixFold(q[i:], "set_config") {
						settings = settingsSure
					}
				}
			case 'd':
				if hasPrefixFold(q[i:], "discard") {
					settings = max(settings, settingsMaybe)
				}
			}
		}
		if touches && settings == settingsSure {
			break
		}
	}
	return touches, settings
}

// touchesSessionState reports whether q may create or drop session state:
// a stateKeywords word at the start of a word anywhere in q (strings and
// comments included).
func touchesSessionState(q []byte) bool {
	touches, _ := sessionScan(q)
	return touches
}

// changesSettings reports whether q may change a setting the relay does not
// follow exactly: a statement starting with SET or RESET anywhere in a
// multi-statement query, set_config anywhere (even in dynamic SQL), or
// DISCARD. Like touchesSessionState it is eager and allocation-free.
func changesSettings(q []byte) bool {
	_, settings := sessionScan(q)
	return settings.changes(q)
}

// changes is changesSettings(q) given q's sessionScan hint h.
func (h settingsHint) changes(q []byte) bool {
	return h == settingsSure || h == settingsMaybe && settingStatement(q)
}

// settingStatement reports whether a statement of q starts with SET,
// RESET or DISCARD (strings and comments do not count).
func settingStatement(q []byte) bool {
	l := sqlLexer{q: q}
	if oneStatement(q) {
		// Only the first token can be a statement's first word, so the
		// rest need not be lexed.
		w, k := l.next()
		return k == tokWord && (eqFold(w, "set") || eqFold(w, "reset") || eqFold(w, "discard"))
	}
	for {
		w, ok := l.nextStatementWord()
		if !ok {
			return false
		}
		if eqFold(w, "set") || eqFold(w, "reset") || eqFold(w, "discard") {
			return true
		}
	}
}

// oneStatement reports whether a statement can start only at q's
// beginning: q has no ';' but in a tail of ';' and white space (as most
// queries end). Whether a ';' is in a string or comment does not matter:
// after one that is, no word follows either.
func oneStatement(q []byte) bool {
	i := bytes.IndexByte(q, ';')
	if i < 0 {
		return true
	}
	for _, c := range q[i:] {
		switch c {
		case ';', ' ', '\t', '\n', '\r', '\f', '\v':
		default:
			return false
		}
	}
	return true
}

// rejectedHazard finds, for policy reject, a statement in q that creates
// session state. It reads the statements token by token (strings and
// comments do not count) and allocates nothing. State created where it
// cannot see (inside a function) is caught by the check at transaction end.
func rejectedHazard(q []byte, allowListen bool) hazard {
	l := sqlLexer{q: q}
	var first, prev, prev2 []byte
	n := 0
	temp, onCommitDrop := false, false
	end := func() hazard {
		if temp && !onCommitDrop {
			return hazardTempTable
		}
		return hazardNone
	}
	for {
		w, k := l.next()
		switch k {
		case tokEOF:
			return end()
		case tokSemicolon:
			if h := end(); h != hazardNone {
				return h
			}
			first, prev, prev2, n, temp, onCommitDrop = nil, nil, nil, 0, false, false
			continue
		case tokOther:
			prev2, prev = prev, nil
			continue
		}
		n++
		if n == 1 {
			first = w
			switch {
			case eqFold(w, "listen") && !allowListen:
				return hazardListen
			case eqFold(w, "prepare"):
				return hazardSQLPrepare
			}
		}
		switch {
		case eqFold(w, "pg_advisory_lock"), eqFold(w, "pg_try_advisory_lock"),
			eqFold(w, "pg_advisory_lock_shared"), eqFold(w, "pg_try_advisory_lock_shared"):
			return hazardAdvisoryLock
		case eqFold(first, "declare") && eqFold(w, "hold") && eqFold(prev, "with"):
			return hazardHoldCursor
		case eqFold(w, "temp") || eqFold(w, "temporary"):
			// CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP ..., SELECT ... INTO TEMP.
			if eqFold(first, "create") && n <= 5 || eqFold(prev, "into") {
				temp = true
			}
		case eqFold(w, "pg_temp"):
			if eqFold(first, "create") && n <= 8 || eqFold(prev, "into") {
				temp = true
			}
		case eqFold(w, "drop") && eqFold(prev, "commit") && eqFold(prev2, "on"):
			onCommitDrop = true
		}
		prev2, prev = prev, w
	}
}

// rejectQuerySQL is the Query sent instead of a refused one: the server
// raises the error itself, so the transaction fails (or not) exactly as it
// would for a server error.
func rejectQuerySQL(pe *pgError) string {
	return "DO $pgsidecar$BEGIN RAISE EXCEPTION USING ERRCODE = " + quoteLiteral(pe.Code) +
		", MESSAGE = " + quoteLiteral(pe.Message) + ", HINT = " + quoteLiteral(pe.Hint) + "; END$pgsidecar$"
}

// refuseState logs, to the client's logger lg (appName: its
// application_name), that policy reject refused its statement, which
// creates session state h (sessionTrack.inspect), and returns what the
// client is told (rejectError).
func (cfg *Config) refuseState(lg *slog.Logger, appName string, h hazard) *pgError {
	lg.Info("refused a statement that creates session state ("+cfg.option("SessionState")+" = reject)",
		"application_name", appName, "state", hazardText[h].name)
	return cfg.rejectError(h)
}

func (cfg *Config) rejectError(h hazard) *pgError {
	t := hazardText[h]
	opt, mode := cfg.option("SessionState"), cfg.option("Mode")
	return newError(pgwire.CodeFeatureNotSupported, "pgsidecar: "+fmt.Sprintf(t.msg, opt, mode), fmt.Sprintf(t.hint, opt, mode))
}

// stateCheckRow is the name of the check's first row; the others are
// session settings.
const stateCheckRow = "pgsidecar.state"

// stateListenRow names the check's rows of channels the backend listens on.
const stateListenRow = "pgsidecar.listen"

// stateCheckSQL reads, on the backend, every kind of session state in one
// row (counts in hazard order) followed by a row per channel the backend
// listens on (stateListenRow) and the settings the session set.
const stateCheckSQL = `SELECT '` + stateCheckRow + `', concat_ws(',',` +
	` (SELECT count(*) FROM pg_catalog.pg_listening_channels()),` +
	` (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),` +
	` (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable),` +
	` (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()),` +
	` (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql),` +
	` (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()` +
	` AND (usename <> current_user OR usename <> session_user)))` +
	` UNION ALL SELECT '` + stateListenRow + `', c FROM pg_catalog.pg_listening_channels() c` +
	` UNION ALL SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'`

var wireStateCheck = pgwire.AppendQuery(nil, stateCheckSQL)

var wireUnlistenAll = pgwire.AppendQuery(nil, "UNLISTEN *")

// maxCustomNames bounds the custom option names one check asks about.
const maxCustomNames = 64

// noteCustomNames remembers the dotted names (myapp.tenant) in q: custom
// options are not listed by pg_settings, so the check asks for each by
// name. Table references (public.t) come along; asking about them costs
// nothing. Only called for traffic that may change settings.
func (s *sessionTrack) noteCustomNames(q []byte) {
	for i := 0; i < len(q) && len(s.customNames) < maxCustomNames; i++ {
		if !isIdentStart(q[i]) || i > 0 && (isIdentChar(q[i-1]) || q[i-1] == '.') {
			continue
		}
		j := i
		for j < len(q) && isIdentChar(q[j]) {
			j++
		}
		if j+1 >= len(q) || q[j] != '.' || !isIdentStart(q[j+1]) {
			i = j
			continue
		}
		k := j + 1
		for k < len(q) && isIdentChar(q[k]) {
			k++
		}
		if s.customNames == nil {
			s.customNames = make(map[string]struct{})
		}
		s.customNames[strings.ToLower(string(q[i:k]))] = struct{}{}
		i = k
	}
}

// checkQuery is the check to send: stateCheckSQL, plus the custom
// options the client (want: what it set) or the backend (have) may have.
// It forgets the names noteCustomNames kept: they are asked about now.
func (s *sessionTrack) checkQuery(want, have *paramSet) []byte {
	names := s.customNames
	s.customNames = nil
	for _, m := range []map[string]paramValue{want.vals, have.vals} {
		for k := range m {
			if strings.Contains(k, ".") {
				if names == nil {
					names = make(map[string]struct{})
				}
				names[k] = struct{}{}
			}
		}
	}
	if len(names) == 0 {
		return wireStateCheck
	}
	var sb strings.Builder
	sb.WriteString(stateCheckSQL)
	sb.WriteString(" UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[")
	first := true
	for k := range names {
		if !first {
			sb.WriteString(", ")
		}
		first = false
		sb.WriteString(quoteLiteral(k))
	}
	sb.WriteString("]::text[]) n")
	return pgwire.AppendQuery(nil, sb.String())
}

// stateCheck collects the answer to stateCheckSQL.
type stateCheck struct {
	hazards  [hazardCount]bool
	seen     bool // the state row arrived
	listens  []string
	settings map[string]string
}

// noteRow records one DataRow of the check.
func (sc *stateCheck) noteRow(body []byte) {
	if len(body) < 2 || binary.BigEndian.Uint16(body) != 2 {
		return
	}
	body = body[2:]
	var cols [2][]byte
	for i := range cols {
		if len(body) < 4 {
			return
		}
		n := int(int32(binary.BigEndian.Uint32(body)))
		body = body[4:]
		if n == -1 {
			return // NULL: a custom option that is not set
		}
		if n < 0 || n > len(body) {
			return
		}
		cols[i], body = body[:n], body[n:]
	}
	if string(cols[0]) == stateListenRow {
		sc.listens = append(sc.listens, string(cols[1]))
		return
	}
	if string(cols[0]) != stateCheckRow {
		if sc.settings == nil {
			sc.settings = make(map[string]string)
		}
		sc.settings[string(cols[0])] = string(cols[1])
		return
	}
	sc.seen = true
	h := hazardListen
	for _, f := range bytes.Split(cols[1], []byte(",")) {
		if h >= hazardCount {
			break
		}
		if v, err := strconv.Atoi(string(f)); err != nil || v != 0 {
			sc.hazards[h] = true
		}
		h++
	}
}

func (sc *stateCheck) reasons() string {
	var r []string
	for h := hazardListen; h < hazardCount; h++ {
		if sc.hazards[h] {
			r = append(r, hazardText[h].name)
		}
	}
	return strings.Join(r, ", ")
}

// PinnedClient is a client that holds a backend between transactions.
type PinnedClient struct {
	Client          string    `json:"client"`
	ApplicationName string    `json:"application_name"`
	Database        string    `json:"database"`
	Reasons         string    `json:"reasons"`
	Since           time.Time `json:"since"`
}

// scan returns sessionScan's findings for q, the statement the client
// sends now: touches (touchesSessionState) and changes
// (changesSettings). again says q is the statement l kept (holds): its
// findings are reused when scanOK says they are known. Owner only.
func (l *lastStatement) scan(q []byte, again bool) (touches, changes bool) {
	if !again || !l.scanOK {
		found, settings := sessionScan(q) // one pass for both checks
		l.touches, l.changes = found, settings.changes(q)
		// Only of a statement l.text holds whole: a longer one's first
		// bytes could be another statement's whole text.
		l.scanOK = int(l.n) == len(q)
	}
	return l.touches, l.changes
}

// inspect remembers the client's statement q in last, for leak reports
// and the query_timeout log, and in transaction mode (tx) notes traffic
// that may touch session state (last.scan, noteTraffic). Under policy
// reject (reject; allowListen: the shared listener serves LISTEN) it
// returns instead the kind of session state q would create, and the
// caller refuses q (Config.refuseState). Under c.mu (build).
func (s *sessionTrack) inspect(last *lastStatement, q []byte, tx, reject, allowListen bool) hazard {
	again := last.holds(q)
	if !again {
		last.note(q)
	}
	if !tx {
		return hazardNone
	}
	if reject {
		if h := rejectedHazard(q, allowListen); h != hazardNone {
			return h
		}
	}
	touches, changes := last.scan(q, again)
	s.noteTraffic(q, touches, changes)
	return hazardNone
}

// noteUninspected records that the client sent a statement too long to
// inspect (streamed to the backend): it may have touched session state
// or settings, and the server is asked once the transaction is over.
func (s *sessionTrack) noteUninspected() {
	s.dirty, s.paramsDirty = true, true
}

// noteTraffic records, in transaction mode, that the client's statement q
// may have touched session state (touches) or settings (changes), as
// lastStatement.scan found; the server is asked once the transaction is
// over.
func (s *sessionTrack) noteTraffic(q []byte, touches, changes bool) {
	if touches {
		s.dirty = true
	}
	if changes {
		s.paramsDirty = true
		s.noteCustomNames(q)
	}
}

// afterTransaction runs when the client's transaction is over and nothing
// is in flight on b. It returns the proxy's own Query to send now, or nil:
// UNLISTEN * for a backend that still listens (l.unlistenBackend), the
// session-state check when the client's traffic may have touched session
// state or settings, or the SETs that bring a pinned client's backend to
// want, the parameters the client set. Its request goes on q. b's reader
// (relayReplies: a backend reader, the client goroutine inline, or the
// loop) writes the Query after unlocking; meanwhile checkWait holds the
// client reader's next request back, so the wire order matches q.
// owesCheck reports whether afterTransaction has work to do on the
// backend once the transaction is over: without it the proxy would not
// learn what the client's traffic did to its session (a SET's value), so
// that backend may not be let go of quietly (betweenTransactionsLocked).
func (s *sessionTrack) owesCheck() bool {
	return s.dirty || s.paramsDirty || s.resync
}

func (s *sessionTrack) afterTransaction(l *listenTrack, want *paramSet, b *backend, q *requestQueue) []byte {
	var msg []byte
	r := request{kind: reqQuery, swallow: true, serverWrote: true}
	switch {
	case l.unlistenBackend:
		l.unlistenBackend = false
		msg = wireUnlistenAll
	case s.dirty || s.paramsDirty:
		s.dirty, s.paramsDirty = false, false
		r.stateCheck = true
		msg = s.checkQuery(want, b.params)
	case s.resync:
		// A pinned client's backend no longer has the values the client
		// expects (a RESET of a startup parameter): bring it back now, as
		// the next acquire would.
		s.resync = false
		if paramsInSync(want, b.params, b.defaults) {
			return nil
		}
		next := maps.Clone(b.params.vals)
		r.syncTo = next
		msg = pgwire.AppendQuery(nil, paramSyncSQL(want, next, b.defaults))
	default:
		return nil
	}
	b.unnamedOwner = nil // a Query drops the unnamed statement
	s.checkWait = make(chan struct{})
	q.push(r)
	return msg
}

// endCheck lets the client reader go on after a state check.
func (s *sessionTrack) endCheck() {
	if s.checkWait != nil {
		close(s.checkWait)
		s.checkWait = nil
	}
}

// applyStateCheckLocked takes the server's answer sc about b: it pins or
// unpins the client, brings the tracked settings to what the server has,
// and lets the client reader go on (endCheck) unless b is tainted. It
// stays on the client: it logs as the client and counts pins on the
// server. Under c.mu.
func (c *clientConn) applyStateCheckLocked(b *backend, sc *stateCheck, failed bool) {
	unknown := failed || !sc.seen
	if unknown {
		// The state is unknown: keep the backend bound to this client
		// (reject: close it once the client is done with it).
		c.log.Warn("checking a server connection's session state failed; it stays with its client")
		sc.hazards[hazardNone] = true
	} else {
		c.params.trackCheckedSettings(b, sc.settings)
	}
	if c.hub != nil && len(sc.listens) > 0 {
		// The shared listener serves the client's channels; the backend
		// stops listening before anyone else gets it.
		sc.hazards[hazardListen] = false
		c.listen.unlistenBackend = true
		c.listen.late = append(c.listen.late, sc.listens...)
	}
	reasons := sc.reasons()
	if sc.hazards[hazardNone] {
		reasons = "unknown (the check failed)"
	}
	has := reasons != ""
	if has && c.srv.cfg.SessionState == SessionStateReject {
		// Something got past the statement filter (a function, dynamic
		// SQL): the backend is not handed on. A tainted backend is never
		// used again, so the check is not ended here: the client waits
		// until b's reader has let go of it (releaseAtTransactionEnd, or
		// backendLost, ends the wait).
		b.tainted = true
		c.log.Warn("session state created despite "+c.srv.cfg.option("SessionState")+" = reject; the server connection will be closed",
			"application_name", c.identity.appName, "state", reasons)
		return
	}
	switch {
	case has && c.state.pin == nil:
		c.state.pin = &PinnedClient{Client: c.identity.addr, ApplicationName: currentAppName(c.params.want), Database: c.db.Name, Reasons: reasons, Since: time.Now()}
		c.srv.pinned.Add(1)
		c.log.Info("client pinned to its server connection: it holds session state", "application_name", c.identity.appName, "state", reasons)
	case has && c.state.pin.Reasons != reasons:
		c.state.pin = &PinnedClient{Client: c.identity.addr, ApplicationName: currentAppName(c.params.want), Database: c.db.Name, Reasons: reasons, Since: c.state.pin.Since}
		c.log.Info("pinned client's session state changed", "application_name", c.identity.appName, "state", reasons)
	case !has && c.state.pin != nil:
		c.log.Info("client unpinned: its session state is gone", "application_name", c.identity.appName,
			"pinned_for", time.Since(c.state.pin.Since).Round(time.Millisecond))
		c.state.pin = nil
		c.srv.pinned.Add(-1)
	}
	if c.state.pin != nil && !paramsInSync(c.params.want, b.params, b.defaults) {
		c.state.resync = true
	}
	if !b.tainted {
		// (Tainted earlier: b's reader ends the wait when it lets go of b, as above.)
		c.state.endCheck()
	}
}

// unpinOnLeaveLocked forgets the pin when the client leaves, logging it
// to lg, the client's log (appName: its startup application_name), and
// taking it off pinned, the server's count. fate says what becomes of the
// server connection (the log line's end): only the caller knows whether
// it is cleaned, closed or already lost. Under c.mu.
func (s *sessionTrack) unpinOnLeaveLocked(lg *slog.Logger, appName string, pinned *atomic.Int64, fate string) {
	if s.pin != nil {
		lg.Info("pinned client left; "+fate, "application_name", appName,
			"state", s.pin.Reasons, "pinned_for", time.Since(s.pin.Since).Round(time.Millisecond))
		s.pin = nil
		pinned.Add(-1)
	}
}

// PinnedClients lists the clients pinned to a backend now (for /stats).
func (s *Server) PinnedClients() []PinnedClient {
	if s.pinned.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	cs := make([]*clientConn, 0, len(s.clients))
	for c := range s.clients {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var out []PinnedClient
	for _, c := range cs {
		c.mu.Lock()
		if c.state.pin != nil {
			out = append(out, *c.state.pin)
		}
		c.mu.Unlock()
	}
	return out
}
