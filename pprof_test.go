package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// run refuses a -pprof address other hosts could reach, before starting.
func TestPprofFlagLoopbackOnly(t *testing.T) {
	err := run(context.Background(), []string{"-config", "", "-pprof", "0.0.0.0:0"}, []string{"DATABASE_URL=" + testURL}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "only a loopback address") {
		t.Errorf("run -pprof 0.0.0.0:0: %v", err)
	}
}

// -pprof serves Go's profiles while the proxy runs, and only there: the
// health listener does not, and the listener is gone after the proxy
// stops.
func TestPprofFlag(t *testing.T) {
	testpg.IsolatePG(t)
	addr, health := testpg.FreeAddr(t), testpg.FreeAddr(t)
	environ := []string{"DATABASE_URL=" + deadUpstream(t, "pw"), "PGSIDECAR_LISTEN=" + testpg.FreeAddr(t),
		"PGSIDECAR_HEALTH__LISTEN=" + health}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-config", "", "-pprof", addr}, environ, io.Discard) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	}()

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(url string) (int, string) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ := get("http://" + health + "/livez")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := get("http://" + addr + "/debug/pprof/cmdline"); code != 200 || body == "" {
		t.Errorf("/debug/pprof/cmdline: %d %q", code, body)
	}
	if code, body := get("http://" + addr + "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine: %d %.100q", code, body)
	}
	if code, _ := get("http://" + health + "/debug/pprof/"); code != 404 {
		t.Errorf("the health listener answers /debug/pprof/ with %d, want 404", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	done <- nil // for the deferred wait
	if code, _ := get("http://" + addr + "/debug/pprof/"); code != 0 {
		t.Errorf("the pprof listener still answers (%d) after the proxy stopped", code)
	}
}
