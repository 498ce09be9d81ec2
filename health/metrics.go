// /metrics: the Prometheus series, per pool (gauges, counters, state,
// histograms), for the proxy's client counters and for the build, read from
// snapshots at scrape time.

package health

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
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
		buildInfoGauge(buildinfo.Get()),
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
	hists      []poolHistogram
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
			gauge("clients", "Clients connected to this pool's database and user (idle, waiting or holding a backend).",
				func(st *pool.Stats) float64 { return float64(st.Clients) }),
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
			"Backend connections closed, by reason (lifetime, idle, queries, error, validation, shutdown, reconnect).",
			"reason"),
		hists: []poolHistogram{
			{desc("acquire_wait_seconds", "Time each acquisition waited for a backend (0 when one was idle)."),
				func(st *pool.Stats) *pool.Histogram { return &st.AcquireWait }},
			{desc("transaction_duration_seconds",
				"Time a backend was held for one transaction: from assignment to release in transaction mode, "+
					"BEGIN to COMMIT or ROLLBACK in session mode."),
				func(st *pool.Stats) *pool.Histogram { return &st.TransactionDuration }},
		},
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
	for _, h := range c.hists {
		ch <- h.desc
	}
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
		for _, h := range c.hists {
			ch <- constHistogram(h.desc, h.value(st), labels)
		}
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
			{"reconnect", st.Retired.Reconnect},
		} {
			ch <- prometheus.MustNewConstMetric(c.retired, prometheus.CounterValue, float64(r.n),
				append(labels, r.reason)...)
		}
	}
}

// poolHistogram is one per-pool histogram read from a pool.Stats field.
type poolHistogram struct {
	desc  *prometheus.Desc
	value func(st *pool.Stats) *pool.Histogram
}

// bucketBounds are pool.DurationBuckets in seconds, Prometheus's unit.
var bucketBounds = func() []float64 {
	b := make([]float64, len(pool.DurationBuckets))
	for i, d := range pool.DurationBuckets {
		b[i] = d.Seconds()
	}
	return b
}()

// constHistogram turns a pool histogram (per-bucket counts) into a
// Prometheus one (cumulative counts; +Inf is the count).
func constHistogram(desc *prometheus.Desc, h *pool.Histogram, labels []string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bucketBounds))
	var cum uint64
	for i, le := range bucketBounds {
		cum += h.Counts[i]
		buckets[le] = cum
	}
	return prometheus.MustNewConstHistogram(desc, h.Count(), h.Sum.Seconds(), buckets, labels...)
}

// buildInfoGauge is pgsidecar_build_info: always 1, the build in its labels,
// so that a query can join on it or count versions across a fleet.
func buildInfoGauge(bi buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "build_info",
		Help:      "Always 1; the labels say which build of pgsidecar runs.",
		ConstLabels: prometheus.Labels{
			"version":   bi.Version,
			"revision":  bi.Revision,
			"goversion": bi.GoVersion,
		},
	})
	g.Set(1)
	return g
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

// clientSeries says how each of the proxy's client fields (by its JSON
// name in Clients()) is exported: the one place that types them. health
// never imports proxy, so the proxy's Stats arrive as JSON; a field missing
// here is not exported (an end-to-end test, test/operator_e2e_test.go,
// fails for any proxy.Stats field without an entry, so one cannot be
// forgotten).
var clientSeries = map[string]struct {
	name    string
	counter bool
	help    string
}{
	"clients_total":      {name: "clients", help: "Clients connected now (idle, waiting or holding a backend)."},
	"clients_active":     {name: "clients_active", help: "Clients holding a backend now."},
	"clients_tls":        {name: "clients_tls", help: "Clients past their startup packet on TLS now (tls.mode)."},
	"clients_logging_in": {name: "clients_logging_in", help: "Connections accepted and not yet logged in (startup, authentication); pool.max_startup_conn bounds them."},
	"clients_waiting":    {name: "clients_waiting", help: "Clients waiting for a backend now."},
	"clients_pinned":     {name: "clients_pinned", help: "Clients holding a backend between transactions because they have session state on it (transaction mode, pool.session_state pin)."},
	"clients_parked":     {name: "clients_parked", help: "Idle clients parked without a goroutine of their own (plain TCP, transaction mode): the parker wakes them when they send."},
	"loop_requests":      {name: "loop_requests_total", counter: true, help: "Requests the event loop relayed without a goroutine (transaction mode, plain TCP)."},
	"loop_handoffs":      {name: "loop_handoffs_total", counter: true, help: "Requests the event loop handed to the client's goroutine (no idle backend, COPY, a slow reply, a client not reading, a wake-up)."},
	"clients_accepted":   {name: "clients_accepted_total", counter: true, help: "Client connections accepted since start (including those rejected later)."},
	"clients_rejected":   {name: "clients_rejected_total", counter: true, help: "Clients refused at startup: max_client_conn, authentication, an unknown database or a bad startup packet."},
	"auth_failures":      {name: "auth_failures_total", counter: true, help: "Client logins refused for a wrong password or unknown user."},
	"cancels":            {name: "cancel_requests_total", counter: true, help: "Cancel requests served: forwarded to the client's server, or ending the client's wait for one."},
	"cancels_unknown":    {name: "cancel_requests_unknown_total", counter: true, help: "Cancel requests whose key matched no connected client; dropped, and logged at most once per interval."},
	"logins_delayed":     {name: "logins_delayed_total", counter: true, help: "Login attempts that waited under auth.failed_login_delay after failed logins from their address."},
	"logins_throttled":   {name: "logins_throttled_total", counter: true, help: "Login attempts refused because their failed-login delay would outlast the login timeout."},
}

// ClientSeriesName returns the metric that exports the proxy's client field
// (by JSON name), or "" when the field is not exported.
func ClientSeriesName(field string) string {
	if s, ok := clientSeries[field]; ok {
		return prometheus.BuildFQName(namespace, "", s.name)
	}
	return ""
}

// clientCollector exports the proxy's client counters, typed by
// clientSeries. It is an unchecked collector (Describe sends nothing)
// because which fields Clients() holds is only known at scrape time.
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
	for _, field := range names {
		s, ok := clientSeries[field]
		if !ok {
			continue
		}
		kind := prometheus.GaugeValue
		if s.counter {
			kind = prometheus.CounterValue
		}
		desc := prometheus.NewDesc(prometheus.BuildFQName(namespace, "", s.name), s.help, nil, nil)
		ch <- prometheus.MustNewConstMetric(desc, kind, fields[field])
	}
}

// numericFields returns the top-level numeric fields of v's JSON object
// form, by JSON name. A value that is not a JSON object yields none.
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
	m, _ := obj.(map[string]any)
	for k, x := range m {
		if n, ok := x.(json.Number); ok {
			if f, err := n.Float64(); err == nil {
				out[k] = f
			}
		}
	}
	return out, nil
}
