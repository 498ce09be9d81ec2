package config

import (
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// TestConnectionCaps: max_db_connections is every database's cap unless
// its entry sets its own (0 there is a value: no cap); the environment
// sets both levels; negative caps are refused naming the option; a
// reload changes them live.
func TestConnectionCaps(t *testing.T) {
	path := testpg.WriteYAML(t, "upstream: "+testURL+`
max_db_connections: 6
max_total_connections: 20
databases:
  own:
    url: postgres://o:p@127.0.0.1/own
    max_db_connections: 0
  inherit:
    url: postgres://i:p@127.0.0.1/inherit
`)
	cfg := mustLoad(t, path)
	targets, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, tg := range targets {
		got[tg.Name] = tg.MaxDBConnections
	}
	if got["appdb"] != 6 || got["inherit"] != 6 || got["own"] != 0 || cfg.MaxTotalConnections != 20 {
		t.Fatalf("caps %v, total %d; want appdb 6, inherit 6, own 0 (its own), total 20", got, cfg.MaxTotalConnections)
	}

	cfg = mustLoad(t, path, "PGSIDECAR_MAX_TOTAL_CONNECTIONS=7", "PGSIDECAR_DATABASES__INHERIT__MAX_DB_CONNECTIONS=3")
	targets, _ = cfg.Targets()
	for _, tg := range targets {
		if tg.Name == "inherit" && tg.MaxDBConnections != 3 {
			t.Fatalf("from the environment: inherit's cap %d, want 3", tg.MaxDBConnections)
		}
	}
	if cfg.MaxTotalConnections != 7 {
		t.Fatalf("from the environment: total %d, want 7", cfg.MaxTotalConnections)
	}

	wantErr(t, testpg.WriteYAML(t, "upstream: "+testURL+"\nmax_total_connections: -1\nmax_db_connections: -2\n"), nil,
		"max_total_connections: must be >= 0 (0 = no cap), got -1", "max_db_connections: must be >= 0 (0 = no cap), got -2")
	wantErr(t, testpg.WriteYAML(t, "upstream: "+testURL+"\ndatabases:\n  x:\n    url: postgres://o:p@127.0.0.1/x\n    max_db_connections: -1\n"), nil,
		"databases.x.max_db_connections: must be >= 0")

	next := mustLoad(t, testpg.WriteYAML(t, "upstream: "+testURL+`
max_db_connections: 2
max_total_connections: 4
databases:
  own:
    url: postgres://o:p@127.0.0.1/own
    max_db_connections: 1
  inherit:
    url: postgres://i:p@127.0.0.1/inherit
`))
	plan := Plan(mustLoad(t, path), next)
	if len(plan.Restart) != 0 {
		t.Fatalf("changing caps needs a restart: %v", plan.Restart)
	}
	for _, key := range []string{"max_db_connections", "max_total_connections", "databases.own.max_db_connections"} {
		found := false
		for _, k := range plan.Live {
			found = found || k == key
		}
		if !found {
			t.Errorf("reload: %s not among the live changes %v", key, plan.Live)
		}
	}
}
