package proxy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestCommitsBeforeAnswer: the statements whose request is never kept
// for a replay (replay.go), because they may commit before they answer.
func TestCommitsBeforeAnswer(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1":                 false,
		"INSERT INTO t VALUES (1)": false,
		"do $$ BEGIN INSERT INTO t VALUES (1); COMMIT; END $$": true,
		"  /* x */ CALL p(1);  ":                               true,
		"CALL p(); SELECT 1":                                   false, // one implicit block: p cannot commit
		"SELECT 1; CALL p()":                                   false,
		"VACUUM t":                                             true,
		"REINDEX INDEX CONCURRENTLY i":                         true,
		"CREATE INDEX CONCURRENTLY i ON t(a)":                  true,
		"create index i on t(a)":                               false,
		"CREATE INDEX i ON t(a) WHERE b = 'concurrently'":      false,
		"DROP DATABASE d":                                      true,
		"ALTER SYSTEM SET work_mem = '1MB'":                    true,
		"COMMIT PREPARED 'x'":                                  true,
		"SELECT 'do'":                                          false,
		"":                                                     false,
	} {
		if got := commitsBeforeAnswer([]byte(q)); got != want {
			t.Errorf("commitsBeforeAnswer(%q) = %v, want %v", q, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { commitsBeforeAnswer([]byte("CREATE INDEX CONCURRENTLY i ON t(a)")) }); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

// TestCommitsBeforeAnswerShortcut: on queries made of random tokens (the
// session scan's, plus the words commitsBeforeAnswer looks for and
// strings' prefixes), the first-letter shortcut answers as lexing the
// first word does.
func TestCommitsBeforeAnswerShortcut(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 7))
	tokens := append([]string{"do", "CALL", "vacuum", "Cluster", "reindex", "commit", "ROLLBACK", "create", "drop",
		"alter", "refresh", "concurrently", "database", "b'", "X'", "n'", "U&'", "U&\"", "select", "insert", "a", "V"},
		sessionScanTokens...)
	var sb strings.Builder
	for range 50000 {
		sb.Reset()
		for n := 1 + r.IntN(6); n > 0; n-- {
			sb.WriteString(tokens[r.IntN(len(tokens))])
		}
		q := []byte(sb.String())
		if got, want := commitsBeforeAnswer(q), commitsBeforeAnswerLexed(q); got != want {
			t.Fatalf("commitsBeforeAnswer(%q) = %v, lexing the first word says %v", q, got, want)
		}
	}
}

// BenchmarkCommitsBeforeAnswer: the check on pgbench's SELECT, lexing its
// first word (lexed) and as it is (the first-letter shortcut).
func BenchmarkCommitsBeforeAnswer(b *testing.B) {
	q := sessionScanQueries["pgbench-select"]
	b.Run("lexed", func(b *testing.B) {
		for b.Loop() {
			commitsBeforeAnswerLexed(q)
		}
	})
	b.Run("now", func(b *testing.B) {
		for b.Loop() {
			commitsBeforeAnswer(q)
		}
	})
}
