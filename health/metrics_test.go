package health

import (
	"maps"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/pool"
)

// scrape returns /metrics parsed by the Prometheus text parser, so a
// malformed exposition fails the test rather than only a substring check.
func scrape(t *testing.T, cfg Config) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	rec := httptest.NewRecorder()
	New(cfg).handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics = %d: %s", rec.Code, rec.Body)
	}
	text := rec.Body.String()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, text)
	}
	return text, fams
}

func TestMetricsSeries(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.StateDegraded))
	text, fams := scrape(t, st.config())

	lbl := `{database="app",pool="app/app",user="app"}`
	want := []string{
		"pgsidecar_pool_backends" + lbl + " 7",
		"pgsidecar_pool_backends_idle" + lbl + " 3",
		"pgsidecar_pool_backends_active" + lbl + " 4",
		"pgsidecar_pool_waiting_clients" + lbl + " 5",
		"pgsidecar_pool_max_size" + lbl + " 10",
		"pgsidecar_pool_min_size" + lbl + " 2",
		"pgsidecar_pool_peak_active" + lbl + " 9",
		"pgsidecar_pool_peak_waiting" + lbl + " 11",
		"pgsidecar_pool_acquisitions_total" + lbl + " 1000",
		"pgsidecar_pool_acquire_timeouts_total" + lbl + " 12",
		"pgsidecar_pool_acquire_rejected_total" + lbl + " 13",
		"pgsidecar_pool_connects_total" + lbl + " 14",
		"pgsidecar_pool_connect_errors_total" + lbl + " 15",
		"pgsidecar_pool_validations_total" + lbl + " 16",
		"pgsidecar_pool_leaks_total" + lbl + " 17",
		"pgsidecar_pool_queries_total" + lbl + " 18",
		"pgsidecar_pool_clients" + lbl + " 27",
		`pgsidecar_pool_acquire_wait_seconds_bucket{database="app",pool="app/app",user="app",le="0.0001"} 3`,
		`pgsidecar_pool_acquire_wait_seconds_bucket{database="app",pool="app/app",user="app",le="0.001"} 3`,
		`pgsidecar_pool_acquire_wait_seconds_bucket{database="app",pool="app/app",user="app",le="0.0025"} 5`,
		`pgsidecar_pool_acquire_wait_seconds_bucket{database="app",pool="app/app",user="app",le="60"} 5`,
		`pgsidecar_pool_acquire_wait_seconds_bucket{database="app",pool="app/app",user="app",le="+Inf"} 6`,
		"pgsidecar_pool_acquire_wait_seconds_sum" + lbl + " 100",
		"pgsidecar_pool_acquire_wait_seconds_count" + lbl + " 6",
		`pgsidecar_pool_transaction_duration_seconds_bucket{database="app",pool="app/app",user="app",le="0.05"} 0`,
		`pgsidecar_pool_transaction_duration_seconds_bucket{database="app",pool="app/app",user="app",le="0.1"} 4`,
		"pgsidecar_pool_transaction_duration_seconds_sum" + lbl + " 0.4",
		"pgsidecar_pool_transaction_duration_seconds_count" + lbl + " 4",
		"# TYPE pgsidecar_pool_acquire_wait_seconds histogram",
		"# TYPE pgsidecar_pool_transaction_duration_seconds histogram",
		"pgsidecar_pool_state_since_timestamp_seconds" + lbl + " 1.7e+09",
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="lifetime",user="app"} 21`,
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="idle",user="app"} 22`,
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="queries",user="app"} 23`,
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="error",user="app"} 24`,
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="validation",user="app"} 25`,
		`pgsidecar_pool_retired_total{database="app",pool="app/app",reason="shutdown",user="app"} 26`,
		"pgsidecar_draining 0",
		"pgsidecar_ready 1",
		"# TYPE pgsidecar_pool_acquisitions_total counter",
		"# TYPE pgsidecar_pool_backends gauge",
	}
	for _, line := range want {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("metrics lack %q", line)
		}
	}
	// The Go runtime and process collectors are on the private registry.
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_open_fds"} {
		if fams[name] == nil {
			t.Errorf("metrics lack %s", name)
		}
	}
}

func TestMetricsStateOneHot(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.StateUnhealthy))
	st.draining.Store(true)
	_, fams := scrape(t, st.config())

	fam := fams["pgsidecar_pool_state"]
	if fam == nil {
		t.Fatal("no pgsidecar_pool_state")
	}
	ones, seen := 0, map[string]bool{}
	for _, m := range fam.GetMetric() {
		var state string
		for _, l := range m.GetLabel() {
			if l.GetName() == "state" {
				state = l.GetValue()
			}
		}
		seen[state] = true
		if v := m.GetGauge().GetValue(); v == 1 {
			ones++
			if state != stateName(pool.StateUnhealthy) {
				t.Errorf("state %q is 1, want only %q", state, stateName(pool.StateUnhealthy))
			}
		} else if v != 0 {
			t.Errorf("state %q = %v, want 0 or 1", state, v)
		}
	}
	if ones != 1 {
		t.Errorf("%d states are 1, want exactly 1", ones)
	}
	if n := int(pool.StateTerminated-pool.StateInitializing) + 1; len(seen) != n {
		t.Errorf("%d distinct state series, want %d", len(seen), n)
	}
	if v := fams["pgsidecar_draining"].GetMetric()[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("pgsidecar_draining = %v, want 1", v)
	}
	if v := fams["pgsidecar_ready"].GetMetric()[0].GetGauge().GetValue(); v != 0 {
		t.Errorf("pgsidecar_ready = %v, want 0", v)
	}
}

func TestMetricsUnknownStateStillOneHot(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.State(42)))
	text, _ := scrape(t, st.config())
	if !strings.Contains(text, `state="`+stateName(pool.State(42))+`",user="app"} 1`) {
		t.Errorf("unknown state not exported:\n%s", grepLines(text, "pgsidecar_pool_state{"))
	}
}

func TestMetricsClientsTyped(t *testing.T) {
	var st state
	st.clients = fakeClients{ClientsTotal: 40, ClientsActive: 6, ClientsWaiting: 2, ClientsAccepted: 900,
		ClientsRejected: 8, AuthFailures: 3, Cancels: 4, Note: "x", Unknown: 99}
	text, fams := scrape(t, st.config())

	for _, w := range []struct {
		name    string
		counter bool
		v       float64
	}{
		{"pgsidecar_clients", false, 40},
		{"pgsidecar_clients_active", false, 6},
		{"pgsidecar_clients_waiting", false, 2},
		{"pgsidecar_clients_accepted_total", true, 900},
		{"pgsidecar_clients_rejected_total", true, 8},
		{"pgsidecar_auth_failures_total", true, 3},
		{"pgsidecar_cancel_requests_total", true, 4},
	} {
		fam := fams[w.name]
		if fam == nil {
			t.Errorf("metrics lack %s:\n%s", w.name, grepLines(text, "pgsidecar_"))
			continue
		}
		m := fam.GetMetric()[0]
		got := m.GetGauge().GetValue()
		if w.counter {
			got = m.GetCounter().GetValue()
		}
		if typ := fam.GetType() == dto.MetricType_COUNTER; typ != w.counter || got != w.v {
			t.Errorf("%s: counter=%v value=%v, want counter=%v value=%v", w.name, typ, got, w.counter, w.v)
		}
	}
	for _, bad := range []string{"pgsidecar_clients_total", "note", "unknown_field"} {
		if strings.Contains(text, bad) {
			t.Errorf("%s exported:\n%s", bad, grepLines(text, bad))
		}
	}
}

func TestMetricsClientsOddValues(t *testing.T) {
	var st state
	// Values with no object form, and values JSON cannot encode, export
	// nothing and do not break the scrape.
	for _, odd := range []any{42, "text", []int{1}, make(chan int), map[string]any{"clients_total": "many"}} {
		st.clients = odd
		_, fams := scrape(t, st.config())
		for name := range fams {
			if strings.HasPrefix(name, "pgsidecar_clients") {
				t.Errorf("clients %T produced %s", odd, name)
			}
		}
		if fams["pgsidecar_ready"] == nil {
			t.Errorf("clients %T broke the scrape", odd)
		}
	}
}

func TestMetricsBuildInfo(t *testing.T) {
	var st state
	_, fams := scrape(t, st.config())
	fam := fams["pgsidecar_build_info"]
	if fam == nil || len(fam.GetMetric()) != 1 {
		t.Fatal("no pgsidecar_build_info")
	}
	m := fam.GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	bi := buildinfo.Get()
	want := map[string]string{"version": bi.Version, "revision": bi.Revision, "goversion": runtime.Version()}
	if !maps.Equal(labels, want) || m.GetGauge().GetValue() != 1 {
		t.Errorf("build_info labels %v value %v, want %v and 1", labels, m.GetGauge().GetValue(), want)
	}
}

// TestMetricsPromlint runs client_golang's linter over a scrape with every
// series populated (pools in each state, histograms, client counters).
// The main package runs it again over the real process's /metrics.
func TestMetricsPromlint(t *testing.T) {
	var st state
	st.setPools(samplePool("a", pool.StateHealthy), samplePool("b", pool.StateUnhealthy))
	st.clients = fakeClients{ClientsTotal: 1, ClientsAccepted: 2}
	text, _ := scrape(t, st.config())
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricsTwoServersDoNotCollide(t *testing.T) {
	// Each Server has its own registry; a second New must not panic on a
	// duplicate registration as it would with the global registry.
	var a, b state
	a.setPools(samplePool("a", pool.StateHealthy))
	b.setPools(samplePool("b", pool.StateHealthy))
	textA, _ := scrape(t, a.config())
	textB, _ := scrape(t, b.config())
	if !strings.Contains(textA, `database="a"`) || strings.Contains(textA, `database="b"`) {
		t.Error("server a exports the wrong pools")
	}
	if !strings.Contains(textB, `database="b"`) || strings.Contains(textB, `database="a"`) {
		t.Error("server b exports the wrong pools")
	}
}

func grepLines(text, substr string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestMetricsClientCounterTyped(t *testing.T) {
	var st state
	st.clients = map[string]any{"cancels_unknown": 12, "cancels": 3}
	text, fams := scrape(t, st.config())
	fam := fams["pgsidecar_cancel_requests_unknown_total"]
	if fam == nil || fam.GetType().String() != "COUNTER" || fam.GetMetric()[0].GetCounter().GetValue() != 12 {
		t.Fatalf("pgsidecar_cancel_requests_unknown_total missing or not a counter of 12:\n%s",
			grepLines(text, "cancel"))
	}
	if fams["pgsidecar_clients_cancels_unknown"] != nil {
		t.Error("the unmatched cancel counter is exported twice")
	}
	if fams["pgsidecar_cancel_requests_total"] == nil {
		t.Error("the other client fields must stay exported")
	}
}
