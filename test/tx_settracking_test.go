package e2e

import (
	"context"
	"testing"
	"time"
)

// Issue 6, point 6: SETs the relay cannot read statement by statement - in
// a multi-statement Query, through set_config(), undone by ROLLBACK or
// ROLLBACK TO SAVEPOINT - still follow their client to every backend, and
// never reach another client. Unreported parameters (work_mem, search_path,
// statement_timeout, a custom option) are taken from the server at the end
// of such a transaction; reported ones from ParameterStatus.

var txSetChecks = []string{
	"SHOW work_mem",
	"SHOW search_path",
	"SHOW statement_timeout",
	// A custom option some client once set on a backend exists there from
	// then on (PostgreSQL cannot drop it): others read '' where a fresh
	// session reads NULL. Its value never leaks; the README says so.
	"SELECT coalesce(nullif(current_setting('myapp.tenant', true), ''), '<unset>')",
	"SHOW DateStyle",
	"SELECT '2024-03-05'::date::text",
}

// checkSet compares txSetChecks and DateStyle's ParameterStatus on both
// connections of tw.
func (tw *txTwin) checkSet(ctx context.Context, t *testing.T, step string) {
	t.Helper()
	for _, sql := range txSetChecks {
		got, want := txResult(ctx, tw.proxy, sql), txResult(ctx, tw.direct, sql)
		if got != want {
			t.Errorf("after %q: client %s: %s: through the proxy %q, directly %q", step, tw.name, sql, got, want)
		}
	}
	if got, want := tw.proxy.ParameterStatus("DateStyle"), tw.direct.ParameterStatus("DateStyle"); got != want {
		t.Errorf("after %q: client %s: ParameterStatus DateStyle: through the proxy %q, directly %q", step, tw.name, got, want)
	}
}

// TestTxSetTrackingHoles: pool of 2, a client and two holders (the holders'
// open transactions force the client onto each backend in turn). After each
// step the client must see, on both backends, what its direct twin sees,
// and the holders (no SETs of their own) what theirs see.
func TestTxSetTrackingHoles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := txStartProxy(t, "transaction", 2)
	a := txNewTwin(ctx, t, p, "a", map[string]string{"application_name": "tx-set-a"})
	holders := []*txTwin{txNewTwin(ctx, t, p, "h1", nil), txNewTwin(ctx, t, p, "h2", nil)}

	// walk runs a's checks on each backend in turn, and the holders' checks
	// inside their transactions.
	walk := func(step string) {
		t.Helper()
		for _, h := range holders {
			h.do(ctx, t, "BEGIN")
		}
		pids := map[string]bool{}
		for _, h := range holders {
			h.checkSet(ctx, t, step)
			h.do(ctx, t, "COMMIT")
			pids[txMustOne(ctx, t, a.proxy, "SELECT pg_backend_pid()")] = true
			a.checkSet(ctx, t, step)
			h.do(ctx, t, "BEGIN")
		}
		for _, h := range holders {
			h.do(ctx, t, "COMMIT")
		}
		if len(pids) != 2 {
			t.Errorf("after %q: client a ran on backends %v, want both", step, pids)
		}
	}

	steps := [][]string{
		{"SELECT 1; SET work_mem = '7MB'; SELECT 2"},
		{"SELECT set_config('search_path', 'tx_nowhere, public', false)"},
		{"SELECT set_config('myapp.tenant', 'tenant-1', false), 1"},
		{"BEGIN; SET statement_timeout = '7s'", "ROLLBACK"},
		{"BEGIN", "SET work_mem = '9MB'", "SAVEPOINT s", "SET work_mem = '10MB'", "SET myapp.tenant = 'tenant-2'", "ROLLBACK TO SAVEPOINT s", "COMMIT"},
		{"BEGIN", "SAVEPOINT s", "SELECT set_config('DateStyle', 'German', false)", "ROLLBACK TO s", "SET statement_timeout = 1234", "COMMIT"},
		{"SELECT set_config('DateStyle', 'SQL, DMY', false); SET search_path = public"},
		{"SET work_mem = '3MB'; RESET work_mem"},
		{"BEGIN", "SET work_mem = '5MB'", "SELECT 1/0", "ROLLBACK"},
		{"RESET ALL"},
	}
	for _, step := range steps {
		for _, sql := range step {
			a.do(ctx, t, sql)
		}
		walk(step[0])
		if t.Failed() {
			t.FailNow()
		}
	}
}
