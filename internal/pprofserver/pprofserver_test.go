package pprofserver

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Only a loopback address is accepted: the endpoint has no authentication.
func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "localhost:0", "192.0.2.1:6060", "no-port"} {
		if p, err := Start(addr); err == nil {
			p.Close()
			t.Errorf("%s was accepted", addr)
		} else if addr != "no-port" && !strings.Contains(err.Error(), "only a loopback address") {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

// The profiles are served, nothing else is, and Close ends the listener
// and its goroutine (goleak checks the latter).
func TestServesProfiles(t *testing.T) {
	p, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + p.Addr() + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("goroutine: %d %.100q", code, body)
	}
	if code, body := get("/debug/pprof/profile?seconds=1"); code != 200 || len(body) == 0 {
		t.Errorf("CPU profile: %d, %d bytes", code, len(body))
	}
	if code, _ := get("/stats"); code != 404 {
		t.Errorf("/stats: %d, want 404", code)
	}
	p.Close()
	client.CloseIdleConnections()
	if code, _ := get("/debug/pprof/"); code != 0 {
		t.Errorf("still answering (%d) after Close", code)
	}
}
