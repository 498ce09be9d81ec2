package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// leakLines counts the proxy's leak warnings that name client addr.
func leakLines(p *Proxy, addr string) int {
	n := 0
	for _, l := range p.Logs.JSONLines() {
		if strings.Contains(str(l, "msg"), "leak_timeout") && str(l, "client_addr") == addr {
			n++
		}
	}
	return n
}

// TestLeakTimerTimesTransactions: in session mode a client keeps its
// backend between transactions, which is not a leak. A client idle longer
// than pool.leak_timeout outside a transaction (after a query, and after a
// committed transaction) must not be reported; one idle that long inside a
// transaction is reported once. Transaction mode reports the same
// idle-in-transaction client, as before.
func TestLeakTimerTimesTransactions(t *testing.T) {
	const leak = 300 * time.Millisecond
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			p := StartProxy(t,
				WithEnv("PGSIDECAR_POOL__MODE", mode),
				WithEnv("PGSIDECAR_POOL__LEAK_TIMEOUT", leak.String()))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dial := func() *pgconn.PgConn {
				c, err := pgconn.Connect(ctx, p.AppURL())
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				t.Cleanup(func() { _ = c.Close(context.Background()) })
				return c
			}
			exec := func(c *pgconn.PgConn, sql string) {
				if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			// Idle after one query (the first ReadyForQuery of the session
			// says 'I'), and idle after a committed transaction.
			afterQuery, afterCommit, inTx := dial(), dial(), dial()
			exec(afterQuery, "SELECT 1")
			exec(afterCommit, "BEGIN; SELECT 1; COMMIT")
			exec(inTx, "BEGIN")
			exec(inTx, "SELECT 1")

			// The idle-in-transaction client is reported within a few
			// maintainer ticks of the threshold...
			inTxAddr := inTx.Conn().LocalAddr().String()
			waitFor(t, 5*time.Second, "a leak warning for the client idle in a transaction", func() bool {
				return leakLines(p, inTxAddr) > 0
			})
			// ... and the others, idle as long and longer by now, never.
			time.Sleep(3 * leak)
			for name, c := range map[string]*pgconn.PgConn{"after a query": afterQuery, "after COMMIT": afterCommit} {
				if n := leakLines(p, c.Conn().LocalAddr().String()); n != 0 {
					t.Errorf("%s mode: client idle %s was reported as a leak %d times", mode, name, n)
				}
			}
			if n := leakLines(p, inTxAddr); n != 1 {
				t.Errorf("%s mode: idle-in-transaction client reported %d times, want once", mode, n)
			}
			// Both idle sessions still work.
			exec(afterQuery, "SELECT 2")
			exec(afterCommit, "SELECT 2")
			exec(inTx, "COMMIT")
		})
	}
}

// fetchMetrics returns GET /metrics as text.
func (p *Proxy) fetchMetrics(t *testing.T) string {
	t.Helper()
	resp, err := httpClient.Get("http://" + p.HealthAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return string(b)
}

// metricValue finds the sample line "name value" in a /metrics text.
func metricValue(text, name string) (string, bool) {
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return v, true
		}
	}
	return "", false
}

// TestUnmatchedCancelFloodIsRateLimited: a flood of cancel requests with
// keys that match no client (up to 1000, at most 3 s) writes one log line,
// not one per request, and every request is counted in /stats and in the
// Prometheus counter pgsidecar_cancel_requests_unknown_total.
func TestUnmatchedCancelFloodIsRateLimited(t *testing.T) {
	p := StartProxy(t)
	const max = 1000
	sent := 0
	deadline := time.Now().Add(3 * time.Second)
	for ; sent < max && time.Now().Before(deadline); sent++ {
		txSendRawCancel(t, p.Addr, uint32(sent+1), []byte{1, 2, 3, 4})
	}
	if sent < 100 {
		t.Fatalf("only %d cancel requests sent in 3s; the flood proves nothing", sent)
	}
	waitFor(t, 5*time.Second, "every unmatched cancel counted in /stats", func() bool {
		clients, _ := p.Stats(t)["clients"].(map[string]any)
		n, _ := num(clients, "cancels_unknown")
		return int(n) == sent
	})
	lines := 0
	for _, l := range p.Logs.JSONLines() {
		if strings.Contains(str(l, "msg"), "cancel request with an unknown key") {
			lines++
		}
	}
	t.Logf("%d unmatched cancel requests, %d log lines", sent, lines)
	if lines != 1 {
		t.Errorf("%d unmatched cancel requests within one log interval wrote %d log lines, want 1", sent, lines)
	}
	text := p.fetchMetrics(t)
	if v, ok := metricValue(text, "pgsidecar_cancel_requests_unknown_total"); !ok || v != fmt.Sprint(sent) {
		t.Errorf("pgsidecar_cancel_requests_unknown_total = %q (found %v), want %d", v, ok, sent)
	}
	if !strings.Contains(text, "# TYPE pgsidecar_cancel_requests_unknown_total counter") {
		t.Error("pgsidecar_cancel_requests_unknown_total is not typed as a counter")
	}
}
