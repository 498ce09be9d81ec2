package health

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// fakeClients mirrors the shape of proxy.Stats without importing proxy.
type fakeClients struct {
	ClientsTotal    int64  `json:"clients_total"`
	ClientsActive   int64  `json:"clients_active"`
	ClientsWaiting  int64  `json:"clients_waiting"`
	ClientsAccepted uint64 `json:"clients_accepted"`
	ClientsRejected uint64 `json:"clients_rejected"`
	AuthFailures    uint64 `json:"auth_failures"`
	Cancels         uint64 `json:"cancels"`
	Note            string `json:"note"`
	Unknown         uint64 `json:"unknown_field"`
}

// state is a mutable snapshot source, standing in for the pools and the
// proxy; tests change it while the server runs.
type state struct {
	mu       sync.Mutex
	pools    []pool.Stats
	clients  any
	draining atomic.Bool
}

func (s *state) setPools(p ...pool.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pools = p
}

func (s *state) config() Config {
	return Config{
		Pools: func() []pool.Stats {
			s.mu.Lock()
			defer s.mu.Unlock()
			return append([]pool.Stats(nil), s.pools...)
		},
		Clients: func() any {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.clients
		},
		Draining: s.draining.Load,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// samplePool returns a realistic snapshot with every counter distinct, so
// a test can tell which field ended up where.
func samplePool(name string, st pool.State) pool.Stats {
	return pool.Stats{
		Name:             name + "/app",
		Database:         name,
		User:             "app",
		State:            st,
		StateReason:      "reason for " + name,
		StateSince:       time.Unix(1700000000, 0),
		MinSize:          2,
		MaxSize:          10,
		Total:            7,
		Idle:             3,
		Active:           4,
		Waiting:          5,
		PeakActive:       9,
		PeakWaiting:      11,
		Acquisitions:     1000,
		AcquireTimeouts:  12,
		AcquireRejected:  13,
		WaitAvgMs:        1.5,
		WaitP99Ms:        8.25,
		Connects:         14,
		ConnectErrors:    15,
		LastConnectError: "connection refused",
		Validations:      16,
		Leaks:            17,
		Queries:          18,
		Retired: pool.Retired{
			Lifetime: 21, Idle: 22, Queries: 23, Error: 24, Validation: 25, Shutdown: 26,
		},
		Clients: 27,
		// 3 waits <= 100µs, 2 in (1ms, 2.5ms], 1 above every bound.
		AcquireWait: pool.Histogram{Counts: histCounts(map[int]uint64{0: 3, 4: 2, len(pool.DurationBuckets): 1}),
			Sum: 100 * time.Second},
		TransactionDuration: pool.Histogram{Counts: histCounts(map[int]uint64{9: 4}), Sum: 400 * time.Millisecond},
	}
}

func histCounts(at map[int]uint64) (c [len(pool.DurationBuckets) + 1]uint64) {
	for i, n := range at {
		c[i] = n
	}
	return c
}

// running is a Server serving on a real loopback listener.
type running struct {
	srv    *Server
	url    string
	client *http.Client
	done   chan error
}

// startServer serves cfg on 127.0.0.1:0 and shuts it down at cleanup,
// checking that Serve returned ErrServerClosed.
func startServer(t testing.TB, cfg Config) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	r := &running{
		srv:  New(cfg),
		url:  "http://" + ln.Addr().String(),
		done: make(chan error, 1),
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64},
		},
	}
	go func() { r.done <- r.srv.Serve(ln) }()
	t.Cleanup(func() {
		r.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		select {
		case err := <-r.done:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return r
}

// get performs method on path and returns the status and body.
func (r *running) do(t testing.TB, method, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.url+path, nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}
