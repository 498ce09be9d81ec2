package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestAttackHTTPMetricsPassthroughUpstreamUser: under auth.passthrough a
// client logging in as the upstream URL's own user gets a pool per role
// like any other role. That pool must not share the configured pool's
// labels (pool, database, user): two series with one label set make every
// scrape drop one of them (here the pool doing the work) and log a warning
// per scrape, which anyone who can reach /metrics can repeat.
func TestAttackHTTPMetricsPassthroughUpstreamUser(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw")
	p := startPassthroughProxy(t, "30s", WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range [][2]string{{"app", "app"}, {"alice", "alice-pw"}} {
		c := connect(t, p.URL(u[0], u[1], "app"))
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: %v", u[0], err)
		}
	}
	text, fams := scrapeMetrics(t, p)
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, pr := range problems {
		t.Errorf("promlint: %s: %s", pr.Metric, pr.Text)
	}
	if p.Logs.Contains("was collected before with the same name and label values") {
		t.Errorf("/metrics logged duplicate series")
	}
	// The three pools (configured, app's role, alice's role) each have
	// their series, distinct by name as in /stats, and the queries the
	// two clients ran are all counted.
	var queries float64
	seen := map[string]int{}
	for _, m := range fams["pgsidecar_pool_queries_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "pool" {
				seen[l.GetValue()]++
			}
		}
		queries += m.GetCounter().GetValue()
	}
	if len(seen) != 3 {
		t.Errorf("pgsidecar_pool_queries_total series by pool: %v, want 3 pools", seen)
	}
	if queries < 2 {
		t.Errorf("pgsidecar_pool_queries_total sums to %v, want >= 2 (each client ran SELECT 1)", queries)
	}
	names := map[string]int{}
	for _, sp := range statsPools(p.Stats(t)) {
		names[str(sp, "name")]++
	}
	for n, k := range names {
		if k != 1 {
			t.Errorf("/stats lists %d pools named %q: %v", k, n, names)
		}
	}
}
