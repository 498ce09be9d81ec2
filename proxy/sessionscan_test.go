package proxy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// touchesSessionStateByByte is the byte-by-byte touchesSessionState that
// sessionScan replaced: the oracle sessionScan is checked against.
func touchesSessionStateByByte(q []byte) bool {
	for i := 0; i < len(q); i++ {
		c := q[i] | 0x20
		switch c {
		case 'l', 'u', 'p', 't', 'h', 'd', 'c', 'r', 'a':
		default:
			continue
		}
		if i > 0 && isIdentChar(q[i-1]) {
			continue
		}
		for _, k := range stateKeywords {
			if k[0] == c && hasPrefixFold(q[i:], k) {
				return true
			}
		}
	}
	return false
}

// changesSettingsByLexer is changesSettings as it was, lexing all of q:
// the oracle for sessionScan's filter and changesSettingsLexed's shortcut.
func changesSettingsByLexer(q []byte) bool {
	if containsFold(q, "set_config") {
		return true
	}
	l := sqlLexer{q: q}
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

// sessionScanTokens build random queries for TestSessionScanMatchesOracle:
// the keywords, their parts and neighbours, and every byte class the
// lexer and the word split treat specially.
var sessionScanTokens = []string{
	"select", "SET", "Set", "reset", "RESET", "discard", "DISCARD", "set_config", "SET_CONFIG", "setx", "xset",
	"listen", "UNLISTEN", "pg_advisory_lock", "pg_try_advisory_lock", "temp", "TEMPORARY", "pg_temp", "hold",
	"prepare", "deallocate", "drop", "close", "role", "authorization", "all", "x", "t", "s", "e", "d", "1", "42",
	"$1", "$$", "$q$", "'", "''", "\"", ";", "; ", ";\n", " ", "\t", "\n", "\f", "\v", "\r", "--", "/*", "*/", "_", "é", "E'", "e'", "\\", "(", ")",
	",", "=", ".", "\x00", "\xff", "S", "D", "di", "scard", "se", "t_config",
}

// TestSessionScanMatchesOracle: on queries made of random tokens, and on
// the benchmark's, sessionScan says what the byte-by-byte scan says about
// session state, its settings hint agrees with the full lexer pass
// (none: no change; sure: a change), and changesSettings (sessionScan,
// then the lexer, which stops at the first token of a query without a
// semicolon) says what the full lexer pass says.
func TestSessionScanMatchesOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 1))
	check := func(q []byte) {
		t.Helper()
		touches, settings := sessionScan(q)
		if want := touchesSessionStateByByte(q); touches != want {
			t.Fatalf("sessionScan(%q): touches %v, the byte scan says %v", q, touches, want)
		}
		want := changesSettingsByLexer(q)
		if want && settings == settingsNone || !want && settings == settingsSure {
			t.Fatalf("sessionScan(%q): settings hint %d, the full lexer pass says %v", q, settings, want)
		}
		if got := changesSettings(q); got != want {
			t.Fatalf("changesSettings(%q) = %v, the full lexer pass says %v", q, got, want)
		}
	}
	for _, q := range sessionScanQueries {
		check(q)
	}
	var sb strings.Builder
	for range 50000 {
		sb.Reset()
		for n := 1 + r.IntN(8); n > 0; n-- {
			sb.WriteString(sessionScanTokens[r.IntN(len(sessionScanTokens))])
		}
		check([]byte(sb.String()))
	}
}

// sessionScanQueries are what the per-query session-state scans see: the
// pgbench select and update, and a longer ORM-style query.
var sessionScanQueries = map[string][]byte{
	"pgbench-select": []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
	"pgbench-update": []byte("UPDATE pgbench_accounts SET abalance = abalance + -4213 WHERE aid = 48213;"),
	"orm": []byte(`SELECT "users"."id", "users"."email", "users"."created_at", "users"."updated_at", "orders"."total" ` +
		`FROM "users" LEFT OUTER JOIN "orders" ON "orders"."user_id" = "users"."id" WHERE "users"."account_id" = $1 ` +
		`AND "orders"."placed_at" > $2 ORDER BY "orders"."placed_at" DESC LIMIT 50`),
}

// BenchmarkSessionScans compares lastStatement.scan's scans of a query,
// as they were (a byte scan, then set_config and the lexer) and as they
// are (sessionScan, and the lexer only when a word contains SET, RESET or
// DISCARD).
func BenchmarkSessionScans(b *testing.B) {
	for _, name := range []string{"pgbench-select", "pgbench-update", "orm"} {
		q := sessionScanQueries[name]
		b.Run(name+"/before", func(b *testing.B) {
			for b.Loop() {
				touchesSessionStateByByte(q)
				changesSettingsByLexer(q)
			}
		})
		b.Run(name+"/after", func(b *testing.B) {
			for b.Loop() {
				_, settings := sessionScan(q)
				settings.changes(q)
			}
		})
	}
}

// TestInspectRemembersScans: sessionTrack.inspect scans a statement once and answers
// its repeats from what it found, and never carries one statement's
// findings over to another, a statement whose start c.last.text keeps
// included.
func TestInspectRemembersScans(t *testing.T) {
	c, _ := testRelay(ModeTransaction, 0)
	check := func(q string, dirty, paramsDirty bool) {
		t.Helper()
		c.state.dirty, c.state.paramsDirty = false, false
		if h := c.state.inspect(&c.last, []byte(q), true, c.srv.cfg.SessionState == SessionStateReject, c.hub != nil); h != hazardNone {
			t.Fatalf("%.40q: hazard %v", q, h)
		}
		if c.state.dirty != dirty || c.state.paramsDirty != paramsDirty {
			t.Fatalf("%.40q: dirty %v, paramsDirty %v; want %v, %v", q, c.state.dirty, c.state.paramsDirty, dirty, paramsDirty)
		}
	}
	check("SELECT 1", false, false)
	check("SELECT 1", false, false)
	if !c.last.scanOK {
		t.Fatal("a repeated statement's findings are not kept")
	}
	check("CREATE TEMP TABLE t (a int)", true, false)
	check("CREATE TEMP TABLE t (a int)", true, false) // from the memory
	check("SET search_path = x", false, true)
	check("SET search_path = x", false, true)
	check("SELECT 1", false, false)

	// Longer than c.last.text: its first len(c.last.text) bytes are a statement of
	// their own, which must be scanned for itself.
	prefix := "SELECT " + strings.Repeat("a", len(c.last.text)-len("SELECT "))
	check(prefix+"; LISTEN x", true, false)
	check(prefix, false, false)
	check(prefix, false, false)
	check(prefix+"; SET x.y = 1", false, true)
	check(prefix, false, false)
}
