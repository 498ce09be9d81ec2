package proxy

import "testing"

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
