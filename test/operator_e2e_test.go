package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/health"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// lintMetrics runs promlint over a /metrics text: each problem it names
// fails the test.
func lintMetrics(t *testing.T, text string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, pr := range problems {
		t.Errorf("promlint: %s: %s", pr.Metric, pr.Text)
	}
}

// scrapeMetrics fetches the proxy's /metrics: the raw text and the parsed
// families (a malformed exposition fails the test).
func scrapeMetrics(t *testing.T, p *Proxy) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.HealthAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, b)
	}
	return string(b), fams
}

// familyValue is the value of the family's only series (gauge, counter, or
// a histogram's count).
func familyValue(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	fam := fams[name]
	if fam == nil || len(fam.GetMetric()) != 1 {
		t.Fatalf("/metrics: want one series of %s, got %v", name, fam)
	}
	m := fam.GetMetric()[0]
	switch fam.GetType() {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetGauge().GetValue()
}

// TestMetricsFollowPrometheusConventions scrapes a real proxy that has
// served transactions, runs promlint over the whole exposition, and checks
// the series an operator alerts on: connected clients (gauges, also per
// pool), cumulative counts as _total counters, acquire wait and transaction
// duration as histograms, and build_info.
func TestMetricsFollowPrometheusConventions(t *testing.T) {
	p := StartProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const clients, txPerClient = 3, 5
	for range clients {
		c := connect(t, p.AppURL())
		for range txPerClient {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.002)"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}

	text, fams := scrapeMetrics(t, p)
	lintMetrics(t, text)

	for _, gone := range []string{"pgsidecar_clients_total", "pgsidecar_pool_wait_avg_seconds", "pgsidecar_pool_wait_p99_seconds"} {
		if fams[gone] != nil {
			t.Errorf("%s is still exported", gone)
		}
	}
	if got := familyValue(t, fams, "pgsidecar_clients"); got != clients {
		t.Errorf("pgsidecar_clients = %v, want %d connected", got, clients)
	}
	if got := familyValue(t, fams, "pgsidecar_pool_clients"); got != clients {
		t.Errorf("pgsidecar_pool_clients = %v, want %d", got, clients)
	}
	if got := familyValue(t, fams, "pgsidecar_clients_accepted_total"); got < clients {
		t.Errorf("pgsidecar_clients_accepted_total = %v, want >= %d", got, clients)
	}
	for name, atLeast := range map[string]float64{
		// pgx's own startup queries add holds; the explicit
		// transactions are a floor.
		"pgsidecar_pool_transaction_duration_seconds": clients * txPerClient,
		"pgsidecar_pool_acquire_wait_seconds":         clients * txPerClient,
	} {
		if fams[name].GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("%s is a %v, want a histogram", name, fams[name].GetType())
			continue
		}
		if got := familyValue(t, fams, name); got < atLeast {
			t.Errorf("%s_count = %v, want >= %v", name, got, atLeast)
		}
	}
	// Each transaction slept 2ms: the sum of durations says so.
	if h := fams["pgsidecar_pool_transaction_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleSum() < clients*txPerClient*0.002 {
		t.Errorf("transaction duration sum %vs, want >= %vs", h.GetSampleSum(), clients*txPerClient*0.002)
	}

	// build_info names the build, never the toolchain's "(devel)".
	bi := fams["pgsidecar_build_info"]
	if bi == nil {
		t.Fatal("no pgsidecar_build_info")
	}
	labels := map[string]string{}
	for _, l := range bi.GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if v := labels["version"]; v == "" || v == "(devel)" || v == "unknown" || labels["revision"] == "" || !strings.HasPrefix(labels["goversion"], "go") {
		t.Errorf("pgsidecar_build_info labels %v", labels)
	}
	if _, h := p.Health(t); h["version"] != labels["version"] {
		t.Errorf("/health version %v, build_info version %q", h["version"], labels["version"])
	}

	// Every client counter the proxy reports is exported, with its type.
	rt := reflect.TypeFor[proxy.Stats]()
	for i := range rt.NumField() {
		field := strings.Split(rt.Field(i).Tag.Get("json"), ",")[0]
		name := health.ClientSeriesName(field)
		if name == "" {
			t.Errorf("proxy.Stats field %s (%q) has no metric: add it to health's clientSeries", rt.Field(i).Name, field)
			continue
		}
		fam := fams[name]
		if fam == nil {
			t.Errorf("proxy.Stats field %q: %s not in /metrics", field, name)
			continue
		}
		isCounter := fam.GetType() == dto.MetricType_COUNTER
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %v", name, fam.GetType())
		}
	}
}

// runBinary runs the proxy binary with args and env (on top of a clean
// environment), bounded in time, and returns its combined output and exit
// code.
func runBinary(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	if proxyBuildErr != nil {
		t.Fatalf("the proxy binary did not build: %v", proxyBuildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, proxyBin, args...)
	cmd.Dir = t.TempDir() // no config.yaml of the repository
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("run %v: %v\n%s", args, err, out)
	return "", -1
}

// TestVersionFromTheBuild: the binary the harness built with `make build`
// reports the version git describe gives for this tree, in `version`, the
// ready log line and /health; never the toolchain's "(devel)".
func TestVersionFromTheBuild(t *testing.T) {
	out, code := runBinary(t, nil, "version")
	if code != 0 {
		t.Fatalf("pgsidecar version exited %d: %s", code, out)
	}
	fields := strings.Fields(out)
	if len(fields) < 2 || fields[0] != "pgsidecar" {
		t.Fatalf("pgsidecar version printed %q", out)
	}
	version := fields[1]
	if version == "(devel)" || version == "unknown" {
		t.Fatalf("pgsidecar version printed %q: not stamped by the build", out)
	}
	if os.Getenv("PGSIDECAR_E2E_BIN") == "" {
		// Built here by `make build` from this tree: git describe
		// names the same commit. The -dirty suffix may differ if the
		// tree changed since the build, so compare without it.
		gitOut, err := exec.Command("git", "-C", "..", "describe", "--tags", "--always", "--dirty").Output()
		if err != nil {
			t.Fatalf("git describe: %v", err)
		}
		want := strings.TrimSuffix(strings.TrimSpace(string(gitOut)), "-dirty")
		if strings.TrimSuffix(version, "-dirty") != want {
			t.Errorf("pgsidecar version = %q, git describe = %q", version, want)
		}
	}

	p := StartProxy(t)
	if _, h := p.Health(t); h["version"] != version {
		t.Errorf("/health version = %v, want %q", h["version"], version)
	}
	waitFor(t, 5*time.Second, "ready line", func() bool { return p.Logs.Contains(`"msg":"pgsidecar ready"`) })
	for _, l := range p.Logs.JSONLines() {
		if l["msg"] == "pgsidecar ready" && l["version"] != version {
			t.Errorf("ready line version = %v, want %q", l["version"], version)
		}
	}
}

// TestHealthcheckCommand: `pgsidecar healthcheck` exits 0 against a ready
// proxy (found from the same environment the proxy reads, or by -url), and
// 1 against a proxy whose database is down (503) and a dead URL.
func TestHealthcheckCommand(t *testing.T) {
	p := StartProxy(t)
	waitFor(t, 10*time.Second, "/health 200", func() bool {
		code, _, err := p.FetchHealth()
		return err == nil && code == http.StatusOK
	})

	out, code := runBinary(t, nil, "healthcheck", "--url", "http://"+p.HealthAddr+"/health")
	if code != 0 || !strings.Contains(out, "200") {
		t.Errorf("healthcheck --url on a ready proxy: exit %d: %s", code, out)
	}
	// No -url: health.listen comes from the environment, as in the image
	// (an unspecified host is reached on loopback).
	_, port, _ := net.SplitHostPort(p.HealthAddr)
	env := []string{"DATABASE_URL=" + pg.URL("app", "app", "app"), "PGSIDECAR_HEALTH__LISTEN=0.0.0.0:" + port}
	if out, code := runBinary(t, env, "healthcheck"); code != 0 {
		t.Errorf("healthcheck from the environment: exit %d: %s", code, out)
	}

	// A dead URL fails at once.
	deadPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, code = runBinary(t, nil, "healthcheck", "--url", "http://127.0.0.1:"+strconv.Itoa(deadPort)+"/health", "--timeout", "2s")
	if code != 1 || !strings.Contains(out, "connection refused") {
		t.Errorf("healthcheck on a dead URL: exit %d: %s", code, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("healthcheck on a dead URL took %v", d)
	}

	// A proxy whose database is down answers 503: unhealthy.
	down := StartProxy(t, WithEnv("DATABASE_URL", "postgres://app:app@127.0.0.1:"+strconv.Itoa(deadPort)+"/app?sslmode=disable"))
	waitFor(t, 10*time.Second, "/health 503", func() bool {
		code, _, err := down.FetchHealth()
		return err == nil && code == http.StatusServiceUnavailable
	})
	out, code = runBinary(t, nil, "healthcheck", "--url", "http://"+down.HealthAddr+"/health")
	if code != 1 || !strings.Contains(out, "503") {
		t.Errorf("healthcheck on an unhealthy proxy: exit %d: %s", code, out)
	}
}

// TestSelfLoopRefused: the sidecar trap. pgsidecar given its own listen
// address as DATABASE_URL (both containers sharing one rewritten variable)
// refuses to start, at once, and says why, instead of relaying every
// client to itself.
func TestSelfLoopRefused(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	healthPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ listen, upstreamHost string }{
		{"127.0.0.1", "127.0.0.1"},
		{"0.0.0.0", "localhost"},
	} {
		env := []string{
			"DATABASE_URL=postgres://app:app@" + net.JoinHostPort(c.upstreamHost, strconv.Itoa(port)) + "/app?sslmode=disable",
			"PGSIDECAR_LISTEN=" + net.JoinHostPort(c.listen, strconv.Itoa(port)),
			"PGSIDECAR_HEALTH__LISTEN=127.0.0.1:" + strconv.Itoa(healthPort),
		}
		start := time.Now()
		out, code := runBinary(t, env)
		if code != 1 || !strings.Contains(out, "points at pgsidecar's own listen address") || !strings.Contains(out, "DATABASE_URL") {
			t.Errorf("listen %s, upstream %s: exit %d: %s", c.listen, c.upstreamHost, code, out)
		}
		if strings.Contains(out, "app:app@") {
			t.Errorf("the error shows the password: %s", out)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v to refuse", d)
		}
	}
}

// TestImageStampsVersionAndChecksHealth: the Dockerfile (which this
// machine cannot build: no Docker daemon in CI) stamps the same buildinfo
// variables as the Makefile, from build arguments `make image` passes, and
// its HEALTHCHECK is the binary's own healthcheck in exec form (the
// distroless image has no shell).
func TestImageStampsVersionAndChecksHealth(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	makefile, dockerfile := read("Makefile"), read("Dockerfile")
	const pkg = "github.com/pgsidecar/pgsidecar/internal/buildinfo"
	for _, v := range []string{"version", "revision"} {
		if !strings.Contains(makefile, "-X $(BUILDINFO)."+v+"=") || !strings.Contains(makefile, "BUILDINFO := "+pkg) {
			t.Errorf("Makefile does not stamp %s.%s", pkg, v)
		}
		arg := strings.ToUpper(v)
		if !strings.Contains(dockerfile, "-X "+pkg+"."+v+"=${"+arg+"}") || !strings.Contains(dockerfile, "ARG "+arg+"=") {
			t.Errorf("Dockerfile does not stamp %s.%s from ARG %s", pkg, v, arg)
		}
		if !strings.Contains(makefile, "--build-arg "+arg+"=$("+arg+")") {
			t.Errorf("make image does not pass %s", arg)
		}
	}
	if !regexp.MustCompile(`(?m)^HEALTHCHECK .*\\\n\s+CMD \["/usr/local/bin/pgsidecar", "healthcheck"\]`).MatchString(dockerfile) {
		t.Error("Dockerfile lacks HEALTHCHECK CMD [\"/usr/local/bin/pgsidecar\", \"healthcheck\"]")
	}
}
