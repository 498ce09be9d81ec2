package health

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/buildinfo"
	"github.com/pgsidecar/pgsidecar/pool"
)

func TestHealthStatusPerState(t *testing.T) {
	cases := []struct {
		name     string
		states   []pool.State
		draining bool
		code     int
		status   string
	}{
		{"no pools", nil, false, 200, StatusOK},
		{"healthy", []pool.State{pool.StateHealthy}, false, 200, StatusOK},
		{"degraded", []pool.State{pool.StateDegraded}, false, 200, StatusDegraded},
		{"recovering", []pool.State{pool.StateRecovering}, false, 200, StatusDegraded},
		{"initializing is not ready", []pool.State{pool.StateInitializing}, false, 503, StatusUnhealthy},
		{"unhealthy", []pool.State{pool.StateUnhealthy}, false, 503, StatusUnhealthy},
		{"shutting down", []pool.State{pool.StateShuttingDown}, false, 503, StatusUnhealthy},
		{"terminated", []pool.State{pool.StateTerminated}, false, 503, StatusUnhealthy},
		{"unknown state fails safe", []pool.State{pool.State(42)}, false, 503, StatusUnhealthy},
		{"one bad pool among good", []pool.State{pool.StateHealthy, pool.StateUnhealthy, pool.StateDegraded}, false, 503, StatusUnhealthy},
		{"mixed good pools", []pool.State{pool.StateHealthy, pool.StateRecovering}, false, 200, StatusDegraded},
		{"draining wins over healthy", []pool.State{pool.StateHealthy}, true, 503, StatusDraining},
		{"draining wins over unhealthy", []pool.State{pool.StateUnhealthy}, true, 503, StatusDraining},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st state
			var pools []pool.Stats
			for i, s := range tc.states {
				pools = append(pools, samplePool(string(rune('a'+i)), s))
			}
			st.setPools(pools...)
			st.draining.Store(tc.draining)
			h := New(st.config()).handler

			for _, method := range []string{http.MethodGet, http.MethodHead} {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(method, "/health", nil))
				if rec.Code != tc.code {
					t.Fatalf("%s /health = %d, want %d; body %s", method, rec.Code, tc.code, rec.Body)
				}
				if method == http.MethodHead {
					if rec.Body.Len() != 0 {
						t.Errorf("HEAD /health wrote a body: %q", rec.Body)
					}
					continue
				}
				var got struct {
					Status string
					Pools  []map[string]any
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
					t.Fatalf("decode: %v; body %s", err, rec.Body)
				}
				if got.Status != tc.status {
					t.Errorf("status = %q, want %q", got.Status, tc.status)
				}
				if len(got.Pools) != len(tc.states) {
					t.Errorf("pools = %d entries, want %d", len(got.Pools), len(tc.states))
				}
			}
		})
	}
}

func TestHealthJSONShape(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.StateDegraded))
	rec := httptest.NewRecorder()
	New(st.config()).handler.ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))

	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("decode: %v", err)
	}
	assertKeys(t, "health", doc, "status", "version", "pools")
	if v := doc["version"]; v != buildinfo.Version() || v == "(devel)" || v == "" {
		t.Errorf("version = %v, want the build's %q", v, buildinfo.Version())
	}
	pools := doc["pools"].([]any)
	if len(pools) != 1 {
		t.Fatalf("pools = %v", pools)
	}
	p := pools[0].(map[string]any)
	assertKeys(t, "health pool", p,
		"name", "database", "user", "state", "state_reason", "total", "idle", "active", "waiting", "max_size")
	want := map[string]any{
		"name": "app/app", "database": "app", "user": "app",
		"state":        pool.StateDegraded.String(),
		"state_reason": "reason for app",
		"total":        7.0, "idle": 3.0, "active": 4.0, "waiting": 5.0, "max_size": 10.0,
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("pool summary = %v\nwant %v", p, want)
	}
}

func TestHealthEmptyPoolsIsArray(t *testing.T) {
	for _, path := range []string{"/health", "/stats"} {
		rec := httptest.NewRecorder()
		New(Config{}).handler.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Fatalf("%s with zero Config = %d", path, rec.Code)
		}
		if !strings.Contains(rec.Body.String(), `"pools":[]`) {
			t.Errorf("%s: want an empty pools array, got %s", path, rec.Body)
		}
	}
}

func TestStatsJSONShapeAndTotals(t *testing.T) {
	var st state
	a := samplePool("a", pool.StateHealthy)
	b := samplePool("b", pool.StateUnhealthy)
	b.Acquisitions = 3000
	b.WaitAvgMs = 3.5
	b.WaitP99Ms = 20
	b.Retired.Error = 100
	st.setPools(a, b)
	st.clients = fakeClients{ClientsTotal: 40, ClientsActive: 6, ClientsAccepted: 900}

	rec := httptest.NewRecorder()
	New(st.config()).handler.ServeHTTP(rec, httptest.NewRequest("GET", "/stats", nil))
	// /stats is informational: it answers 200 even when /health would not.
	if rec.Code != 200 {
		t.Fatalf("/stats = %d", rec.Code)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("decode: %v", err)
	}
	assertKeys(t, "stats", doc, "clients", "pools", "totals")

	var clients fakeClients
	if err := json.Unmarshal(doc["clients"], &clients); err != nil || clients.ClientsTotal != 40 || clients.ClientsAccepted != 900 {
		t.Errorf("clients = %s (%v)", doc["clients"], err)
	}

	// Every pool.Stats field is there, State as its text name.
	var rawPools []map[string]any
	if err := json.Unmarshal(doc["pools"], &rawPools); err != nil {
		t.Fatalf("decode pools: %v", err)
	}
	if len(rawPools) != 2 {
		t.Fatalf("pools = %d, want 2", len(rawPools))
	}
	wantFields := jsonFieldNames(reflect.TypeFor[pool.Stats]())
	assertKeys(t, "stats pool", rawPools[0], wantFields...)
	if rawPools[1]["state"] != pool.StateUnhealthy.String() || rawPools[1]["last_connect_error"] != "connection refused" {
		t.Errorf("pool b = %v", rawPools[1])
	}

	var totals Totals
	if err := json.Unmarshal(doc["totals"], &totals); err != nil {
		t.Fatalf("decode totals: %v", err)
	}
	want := Totals{
		Pools: 2, MaxSize: 20, Total: 14, Idle: 6, Active: 8, Waiting: 10,
		Acquisitions: 4000, AcquireTimeouts: 24, AcquireRejected: 26,
		Connects: 28, ConnectErrors: 30, Validations: 32, Leaks: 34, Queries: 36,
		Retired: pool.Retired{Lifetime: 42, Idle: 44, Queries: 46, Error: 124, Validation: 50, Shutdown: 52},
		// (1.5*1000 + 3.5*3000) / 4000
		WaitAvgMs: 3.0,
		WaitP99Ms: 20,
	}
	if totals != want {
		t.Errorf("totals = %+v\nwant     %+v", totals, want)
	}
}

func TestStatsNoAcquisitionsNoNaN(t *testing.T) {
	p := samplePool("a", pool.StateHealthy)
	p.Acquisitions, p.WaitAvgMs = 0, 0
	if got := sumStats([]pool.Stats{p}); got.WaitAvgMs != 0 {
		t.Errorf("WaitAvgMs with no acquisitions = %v, want 0", got.WaitAvgMs)
	}
}

func TestRouting(t *testing.T) {
	h := New(Config{}).handler
	cases := []struct {
		method, path string
		code         int
	}{
		{"GET", "/health", 200},
		{"HEAD", "/health", 200},
		{"GET", "/stats", 200},
		{"HEAD", "/stats", 200},
		{"GET", "/metrics", 200},
		{"GET", "/livez", 200},
		{"HEAD", "/livez", 200},
		{"GET", "/readyz", 200},
		{"HEAD", "/readyz", 200},
		{"POST", "/readyz", 405},
		{"GET", "/", 404},
		{"GET", "/nope", 404},
		{"GET", "/health/extra", 404},
		{"POST", "/health", 405},
		{"PUT", "/stats", 405},
		{"DELETE", "/metrics", 405},
	}
	for _, tc := range cases {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.code {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, rec.Code, tc.code)
		}
		if tc.code == 405 {
			if allow := rec.Header().Get("Allow"); !strings.Contains(allow, "GET") {
				t.Errorf("%s %s: Allow = %q, want GET listed", tc.method, tc.path, allow)
			}
		}
	}
}

// TestServeRealListener drives the server over TCP, changing the snapshot
// between requests: /health must follow the pools without caching.
func TestServeRealListener(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.StateHealthy))
	r := startServer(t, st.config())

	if resp, body := r.do(t, "GET", "/health"); resp.StatusCode != 200 {
		t.Fatalf("healthy: %d %s", resp.StatusCode, body)
	}
	st.setPools(samplePool("app", pool.StateUnhealthy))
	if resp, body := r.do(t, "GET", "/health"); resp.StatusCode != 503 || !strings.Contains(string(body), `"unhealthy"`) {
		t.Fatalf("unhealthy: %d %s", resp.StatusCode, body)
	}
	st.setPools(samplePool("app", pool.StateRecovering))
	if resp, body := r.do(t, "HEAD", "/health"); resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("recovering HEAD: %d %q", resp.StatusCode, body)
	}
	st.draining.Store(true)
	if resp, body := r.do(t, "GET", "/health"); resp.StatusCode != 503 || !strings.Contains(string(body), `"draining"`) {
		t.Fatalf("draining: %d %s", resp.StatusCode, body)
	}
}

// TestConcurrentRequests checks correctness (not speed: that is
// BenchmarkHealth) under 8 concurrent clients while the snapshot changes
// underneath, with the race detector watching.
func TestConcurrentRequests(t *testing.T) {
	var st state
	st.setPools(samplePool("app", pool.StateHealthy))
	st.clients = fakeClients{ClientsTotal: 1}
	r := startServer(t, st.config())

	const workers, perWorker = 8, 250
	stop := make(chan struct{})
	flipperDone := make(chan struct{})
	go func() { // flips the pool state while requests run
		defer close(flipperDone)
		states := []pool.State{pool.StateHealthy, pool.StateUnhealthy}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				st.setPools(samplePool("app", states[i%2]))
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	// Mostly /health, as in production; /metrics is the costly one (the Go
	// runtime collector), so it gets one request in 50.
	paths := []string{"/health", "/stats", "/health", "/health", "/stats"}
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				path := paths[(w+i)%len(paths)]
				if (w+i)%50 == 0 {
					path = "/metrics"
				}
				resp, err := r.client.Get(r.url + path)
				if err != nil {
					errs <- err
					return
				}
				var body map[string]any
				var decodeErr error
				if path != "/metrics" {
					decodeErr = json.NewDecoder(resp.Body).Decode(&body)
				}
				resp.Body.Close()
				switch {
				case decodeErr != nil:
					errs <- decodeErr
					return
				case path == "/health" && !(resp.StatusCode == 200 && body["status"] == StatusOK ||
					resp.StatusCode == 503 && body["status"] == StatusUnhealthy):
					errs <- errors.New("inconsistent /health answer: " + resp.Status)
					return
				case path != "/health" && resp.StatusCode != 200:
					errs <- errors.New(path + ": " + resp.Status)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-flipperDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestShutdownStopsServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + ln.Addr().String() + "/health")
	if err != nil {
		t.Fatalf("get before shutdown: %v", err)
	}
	resp.Body.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve = %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after Shutdown")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepts after Shutdown")
	}
}

func TestCloseStopsServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	// Hold a connection open mid-request-header: Close must not wait for it.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /health HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve = %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after Close")
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	s := New(Config{})
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := s.Serve(ln); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

// assertKeys checks that m has exactly the keys want.
func assertKeys[V any](t *testing.T, what string, m map[string]V, want ...string) {
	t.Helper()
	got := make([]string, 0, len(m))
	for k := range m {
		got = append(got, k)
	}
	sort.Strings(got)
	want = append([]string(nil), want...)
	sort.Strings(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s keys = %v\nwant %v", what, got, want)
	}
}

// jsonFieldNames lists the JSON names of a struct's fields.
func jsonFieldNames(typ reflect.Type) []string {
	var names []string
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			name = f.Name
		}
		if name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// Issue 7, point 4: /livez says the process is up, whatever the pools do
// and during a drain too; /readyz is 503 while any pool cannot give a
// backend or while draining, with the reason in the body.
func TestLivezAndReadyz(t *testing.T) {
	cases := []struct {
		name           string
		states         []pool.State
		drain          bool
		ready          int
		status, reason string
	}{
		{"no pools", nil, false, 200, "ready", ""},
		{"healthy", []pool.State{pool.StateHealthy}, false, 200, "ready", ""},
		{"degraded still serves", []pool.State{pool.StateDegraded}, false, 200, "ready", ""},
		{"recovering serves", []pool.State{pool.StateRecovering}, false, 200, "ready", ""},
		{"database down", []pool.State{pool.StateHealthy, pool.StateUnhealthy}, false, 503, StatusUnhealthy, "pool b/app is UNHEALTHY: reason for b"},
		{"not connected yet", []pool.State{pool.StateInitializing}, false, 503, StatusUnhealthy, "pool a/app is INITIALIZING: reason for a"},
		{"pool closing", []pool.State{pool.StateShuttingDown}, false, 503, StatusUnhealthy, "SHUTTING_DOWN"},
		{"draining", []pool.State{pool.StateHealthy}, true, 503, StatusDraining, "graceful shutdown"},
		{"draining and down", []pool.State{pool.StateUnhealthy}, true, 503, StatusDraining, "graceful shutdown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st state
			var pools []pool.Stats
			for i, s := range tc.states {
				pools = append(pools, samplePool(string(rune('a'+i)), s))
			}
			st.setPools(pools...)
			st.draining.Store(tc.drain)
			h := New(st.config()).handler

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/livez", nil))
			if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"status":"alive"`) {
				t.Fatalf("/livez = %d %s, want 200 alive", rec.Code, rec.Body)
			}

			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			var got readyzResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("decode /readyz: %v; body %s", err, rec.Body)
			}
			if rec.Code != tc.ready || got.Status != tc.status || got.Ready != (tc.ready == 200) || !strings.Contains(got.Reason, tc.reason) {
				t.Fatalf("/readyz = %d %+v, want %d status %q reason containing %q", rec.Code, got, tc.ready, tc.status, tc.reason)
			}

			// /health agrees on draining.
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/health", nil))
			if tc.drain != strings.Contains(rec.Body.String(), StatusDraining) {
				t.Fatalf("/health while draining=%v: %s", tc.drain, rec.Body)
			}
		})
	}
}

// TestShutdownClosesStalledConns: Shutdown closes at once a connection
// stalled mid request header and one that sent nothing (net/http would
// wait for them up to its 5 s header timeout), while a request whose
// handler runs still gets its whole answer.
func TestShutdownClosesStalledConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s := New(Config{Pools: func() []pool.Stats {
		once.Do(func() { close(entered); <-release })
		return nil
	}})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()

	got := make(chan int, 1)
	go func() {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
		resp, err := client.Get("http://" + ln.Addr().String() + "/stats")
		if err != nil {
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	<-entered
	var stalled []net.Conn
	for _, send := range []string{"GET /health HTTP/1.1\r\nHost: x", ""} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(send)); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	time.Sleep(100 * time.Millisecond) // the server has read what was sent

	shut := make(chan error, 1)
	start := time.Now()
	go func() { shut <- s.Shutdown(context.Background()) }()
	for i, c := range stalled {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("stalled connection %d: read %v, want it closed by Shutdown", i, err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the stalled connections were closed %s after Shutdown began", took)
	}
	close(release)
	if code := <-got; code != http.StatusOK {
		t.Errorf("the request in flight at Shutdown: status %d, want 200", code)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
}
