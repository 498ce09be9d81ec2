package health

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/pool"
)

// namespace prefixes every pgsidecar series.
const namespace = "pgsidecar"

// newMetricsHandler serves /metrics from a registry of its own, not the
// global default one: two Servers in one process (tests, or an embedding
// program) must not collide, and nothing registers behind our back.
func newMetricsHandler(cfg Config, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newPoolCollector(cfg.Pools, cfg.Draining),
		&clientCollector{clients: cfg.Clients, log: log},
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// One bad series must not hide all the others from the scraper.
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// poolLabels identify a pool in every per-pool series.
var poolLabels = []string{"pool", "database", "user"}

// poolMetric is one per-pool series read straight from a pool.Stats field.
type poolMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(st *pool.Stats) float64
}

// poolCollector turns the pools' snapshots into series at scrape time, so
// the data path never pays for metrics and a scrape never sees a value
// older than the snapshot.
type poolCollector struct {
	pools    func() []pool.Stats
	draining func() bool

	plain      []poolMetric
	state      *prometheus.Desc
	stateSince *prometheus.Desc
	retired    *prometheus.Desc
	drainingD  *prometheus.Desc
	ready      *prometheus.Desc
}

func newPoolCollector(pools func() []pool.Stats, draining func() bool) *poolCollector {
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "pool", name), help,
			append(append([]string{}, poolLabels...), extra...), nil)
	}
	gauge := func(name, help string, v func(st *pool.Stats) float64) poolMetric {
		return poolMetric{desc: desc(name, help), kind: prometheus.GaugeValue, value: v}
	}
	counter := func(name, help string, v func(st *pool.Stats) float64) poolMetric {
		return poolMetric{desc: desc(name, help), kind: prometheus.CounterValue, value: v}
	}
	return &poolCollector{
		pools:    pools,
		draining: draining,
		plain: []poolMetric{
			gauge("backends", "Open backend connections (idle + active + being validated).",
				func(st *pool.Stats) float64 { return float64(st.Total) }),
			gauge("backends_idle", "Backend connections ready in the idle list.",
				func(st *pool.Stats) float64 { return float64(st.Idle) }),
			gauge("backends_active", "Backend connections held by clients.",
				func(st *pool.Stats) float64 { return float64(st.Active) }),
			gauge("waiting_clients", "Clients waiting for a backend connection.",
				func(st *pool.Stats) float64 { return float64(st.Waiting) }),
			gauge("min_size", "Configured pool.min_size.",
				func(st *pool.Stats) float64 { return float64(st.MinSize) }),
			gauge("max_size", "Configured pool.max_size.",
				func(st *pool.Stats) float64 { return float64(st.MaxSize) }),
			gauge("peak_active", "Most backends held by clients at once since start.",
				func(st *pool.Stats) float64 { return float64(st.PeakActive) }),
			gauge("peak_waiting", "Most clients waiting at once since start.",
				func(st *pool.Stats) float64 { return float64(st.PeakWaiting) }),
			gauge("wait_avg_seconds", "Average time an acquire waited for a backend.",
				func(st *pool.Stats) float64 { return st.WaitAvgMs / 1000 }),
			gauge("wait_p99_seconds", "99th percentile of acquire wait over the pool's recent window.",
				func(st *pool.Stats) float64 { return st.WaitP99Ms / 1000 }),
			counter("acquisitions_total", "Backends handed to clients.",
				func(st *pool.Stats) float64 { return float64(st.Acquisitions) }),
			counter("acquire_timeouts_total", "Acquires that gave up after pool.acquire_timeout.",
				func(st *pool.Stats) float64 { return float64(st.AcquireTimeouts) }),
			counter("acquire_rejected_total", "Acquires refused at once (waiter queue full or upstream down).",
				func(st *pool.Stats) float64 { return float64(st.AcquireRejected) }),
			counter("connects_total", "Backend connections opened.",
				func(st *pool.Stats) float64 { return float64(st.Connects) }),
			counter("connect_errors_total", "Backend connection attempts that failed.",
				func(st *pool.Stats) float64 { return float64(st.ConnectErrors) }),
			counter("validations_total", "Validation queries run on backends idle past pool.validate_after_idle.",
				func(st *pool.Stats) float64 { return float64(st.Validations) }),
			counter("leaks_total", "Backends reported as held longer than pool.leak_timeout.",
				func(st *pool.Stats) float64 { return float64(st.Leaks) }),
			counter("queries_total", "Queries relayed on this pool's backends.",
				func(st *pool.Stats) float64 { return float64(st.Queries) }),
		},
		state: desc("state",
			"Pool state, one-hot: 1 for the current state, 0 for the others "+
				"(INITIALIZING, HEALTHY, DEGRADED, UNHEALTHY, RECOVERING, SHUTTING_DOWN, TERMINATED).",
			"state"),
		stateSince: desc("state_since_timestamp_seconds",
			"Unix time at which the pool entered its current state."),
		retired: desc("retired_total",
			"Backend connections closed, by reason (lifetime, idle, queries, error, validation, shutdown).",
			"reason"),
		drainingD: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "draining"),
			"1 while a graceful shutdown is draining clients, else 0.", nil, nil),
		ready: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "ready"),
			"1 while /health answers 200, else 0.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.plain {
		ch <- m.desc
	}
	ch <- c.state
	ch <- c.stateSince
	ch <- c.retired
	ch <- c.drainingD
	ch <- c.ready
}

// Collect implements prometheus.Collector. It takes one snapshot per scrape
// so every series of a pool describes the same instant.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.pools()
	draining := c.draining()
	_, code := evaluate(stats, draining)
	ch <- prometheus.MustNewConstMetric(c.drainingD, prometheus.GaugeValue, boolFloat(draining))
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, boolFloat(code == http.StatusOK))

	for i := range stats {
		st := &stats[i]
		labels := []string{st.Name, st.Database, st.User}
		for _, m := range c.plain {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st), labels...)
		}
		c.collectState(ch, st, labels)
		if !st.StateSince.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.stateSince, prometheus.GaugeValue,
				float64(st.StateSince.UnixNano())/1e9, labels...)
		}
		for _, r := range []struct {
			reason string
			n      uint64
		}{
			{"lifetime", st.Retired.Lifetime},
			{"idle", st.Retired.Idle},
			{"queries", st.Retired.Queries},
			{"error", st.Retired.Error},
			{"validation", st.Retired.Validation},
			{"shutdown", st.Retired.Shutdown},
		} {
			ch <- prometheus.MustNewConstMetric(c.retired, prometheus.CounterValue, float64(r.n),
				append(labels, r.reason)...)
		}
	}
}

// collectState emits the one-hot state series. Every known state is always
// present (0 or 1) so that queries like `pgsidecar_pool_state{state="UNHEALTHY"} == 1`
// see a series even while the answer is no.
func (c *poolCollector) collectState(ch chan<- prometheus.Metric, st *pool.Stats, labels []string) {
	known := false
	for s := pool.StateInitializing; s <= pool.StateTerminated; s++ {
		v := 0.0
		if s == st.State {
			v, known = 1, true
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, append(labels, stateName(s))...)
	}
	if !known {
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, 1, append(labels, stateName(st.State))...)
	}
}

// stateName is the state's label value. A state the pool package does not
// name still gets a distinct label, because two series with one label set
// would make the whole scrape fail.
func stateName(s pool.State) string {
	if name := s.String(); name != "" {
		return name
	}
	return "STATE_" + strconv.Itoa(int(s))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// clientCollector exports the proxy's client counters without knowing their
// type: Clients() is marshalled to JSON and every number (or boolean) in the
// resulting object becomes a gauge pgsidecar_clients_<field>, nested objects
// joined with '_'. health therefore never imports proxy, and a counter the
// proxy adds later shows up without a change here.
//
// It is an unchecked collector (Describe sends nothing) because its series
// are only known at scrape time.
type clientCollector struct {
	clients func() any
	log     *slog.Logger
}

// Describe implements prometheus.Collector; see the type comment.
func (c *clientCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *clientCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.clients()
	if v == nil {
		return
	}
	fields, err := numericFields(v)
	if err != nil {
		c.log.Warn("client counters cannot be exported as metrics", "err", err)
		return
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		metric, kind, help := name, prometheus.GaugeValue, "Proxy client counter, as reported by the proxy's Stats."
		if cm, ok := clientCounters[name]; ok {
			metric, kind, help = cm.name, prometheus.CounterValue, cm.help
		}
		desc := prometheus.NewDesc(metric, help, nil, nil)
		ch <- prometheus.MustNewConstMetric(desc, kind, fields[name])
	}
}

// clientCounters names the proxy's client fields (by the gauge name they
// would get) that are exported as Prometheus counters instead, under a
// name of their own with the _total suffix. Older fields stay gauges so
// that existing dashboards keep working.
var clientCounters = map[string]struct{ name, help string }{
	namespace + "_clients_cancels_unknown": {
		name: namespace + "_cancel_requests_unknown_total",
		help: "Cancel requests whose key matched no connected client; dropped, and logged at most once per interval.",
	},
	namespace + "_clients_logins_delayed": {
		name: namespace + "_logins_delayed_total",
		help: "Login attempts that waited under auth.failed_login_delay after failed logins from their address.",
	},
	namespace + "_clients_logins_throttled": {
		name: namespace + "_logins_throttled_total",
		help: "Login attempts refused because their failed-login delay would outlast the login timeout.",
	},
}

// numericFields flattens v's JSON object form into metric name -> value.
// A value that is not a JSON object yields no fields.
func numericFields(v any) (map[string]float64, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	out := make(map[string]float64)
	if m, ok := obj.(map[string]any); ok {
		flatten(out, "", m)
	}
	return out, nil
}

// flatten walks m in sorted key order so that, when two fields sanitize to
// the same metric name, the same one wins on every scrape.
func flatten(out map[string]float64, prefix string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		path := k
		if prefix != "" {
			path = prefix + "_" + k
		}
		var f float64
		switch x := m[k].(type) {
		case json.Number:
			v, err := x.Float64()
			if err != nil {
				continue
			}
			f = v
		case bool:
			f = boolFloat(x)
		case map[string]any:
			flatten(out, path, x)
			continue
		default: // strings, arrays, null: not a number to plot
			continue
		}
		name := clientMetricName(path)
		if _, dup := out[name]; !dup {
			out[name] = f
		}
	}
}

// clientMetricName maps a JSON field path to a valid metric name. The
// proxy's fields are already named clients_total, clients_active, ...; the
// prefix is not doubled.
func clientMetricName(path string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(path) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return namespace + "_clients_" + strings.TrimPrefix(b.String(), "clients_")
}
