package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
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
// than pool.leak_timeout outside a transaction (after its login, after a
// query, and after a committed transaction) must not be reported; one idle
// that long inside a transaction is reported once. Transaction mode
// reports the same idle-in-transaction client, as before.
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
			// Idle after its login (in session mode it holds its backend
			// from there: the proxy reported it once it had idled
			// leak_timeout, when logging in the others took that long on
			// a loaded machine), idle after one query (the first
			// ReadyForQuery of the session says 'I'), and idle after a
			// committed transaction.
			afterLogin, afterQuery, afterCommit, inTx := dial(), dial(), dial(), dial()
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
			for name, c := range map[string]*pgconn.PgConn{"after its login": afterLogin, "after a query": afterQuery, "after COMMIT": afterCommit} {
				if n := leakLines(p, c.Conn().LocalAddr().String()); n != 0 {
					t.Errorf("%s mode: client idle %s was reported as a leak %d times", mode, name, n)
				}
			}
			if n := leakLines(p, inTxAddr); n != 1 {
				t.Errorf("%s mode: idle-in-transaction client reported %d times, want once", mode, n)
			}
			// The idle sessions still work.
			exec(afterLogin, "SELECT 2")
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
		sendRawCancel(t, p.Addr, uint32(sent+1), []byte{1, 2, 3, 4})
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

// loginFrom logs in to url from the local address from (any 127.0.0.0/8
// address is loopback on Linux, so one test can be several clients).
func loginFrom(ctx context.Context, t *testing.T, url, from string) (*pgconn.PgConn, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatalf("parse %s: %v", redact(url), err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	cfg.DialFunc = d.DialContext
	return pgconn.ConnectConfig(ctx, cfg)
}

// TestFailedLoginDelay: with auth.failed_login_delay enabled for loopback,
// wrong passwords from one address are answered ever more slowly (doubling
// to the cap), so the guess rate of a bounded loop drops far below what the
// same loop reaches without the brake; every guess still gets the same
// 28P01. A good login from another address is not delayed, a good login
// from the braked address waits its turn and then clears the brake. With the
// defaults, loopback clients are not braked at all.
func TestFailedLoginDelay(t *testing.T) {
	const (
		delay    = 50 * time.Millisecond
		delayMax = time.Second
	)
	// plain: an unbraked guess costs no PBKDF2, so the drop is the brake's.
	braked := StartProxy(t, WithEnv("PGSIDECAR_AUTH__METHOD", "plain"),
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY", delay.String()),
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY_MAX", delayMax.String()),
		WithEnv("PGSIDECAR_AUTH__FAILED_LOGIN_DELAY_LOOPBACK", "true"))
	defaults := StartProxy(t, WithEnv("PGSIDECAR_AUTH__METHOD", "plain"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// guesses runs wrong-password logins from one address for at most d
	// (and at most 2000) and returns how many were answered.
	guesses := func(p *Proxy, from string, d time.Duration) (int, float64) {
		start := time.Now()
		n := 0
		for ; n < 2000 && time.Since(start) < d; n++ {
			_, err := loginFrom(ctx, t, p.URL("app", "wrong", "app"), from)
			if sqlState(err) != "28P01" {
				t.Fatalf("guess %d from %s: want 28P01, got %v", n+1, from, err)
			}
		}
		return n, float64(n) / time.Since(start).Seconds()
	}
	n0, rate0 := guesses(defaults, "127.0.0.1", 500*time.Millisecond)
	n1, rate1 := guesses(braked, "127.0.0.1", 2*time.Second)
	t.Logf("wrong-password guesses/s from one address: %.0f without the brake (%d), %.1f with it (%d)", rate0, n0, rate1, n1)
	// The waits are 0, 50, 100, 200, 400, 800, 1000 ms...: at most 7 answers
	// fit in 2 s, one more for timing slack.
	if n1 > 8 {
		t.Errorf("%d guesses answered in 2s with the brake, want at most 8", n1)
	}
	if rate1 > rate0/10 {
		t.Errorf("brake cut the guess rate only from %.0f/s to %.1f/s", rate0, rate1)
	}

	// Another address logs in at once while 127.0.0.1 is at the cap.
	start := time.Now()
	c, err := loginFrom(ctx, t, braked.AppURL(), "127.0.0.2")
	if err != nil {
		t.Fatalf("good login from another address: %v", err)
	}
	other := time.Since(start)
	c.Close(ctx)
	if other > 300*time.Millisecond {
		t.Errorf("good login from another address took %v: it was braked", other)
	}

	// The braked address waits its turn even with the right password, and
	// then the brake is cleared: its next wrong guess is answered at once.
	start = time.Now()
	c, err = loginFrom(ctx, t, braked.AppURL(), "127.0.0.1")
	if err != nil {
		t.Fatalf("good login from the braked address: %v", err)
	}
	own := time.Since(start)
	c.Close(ctx)
	if own < delayMax/2 {
		t.Errorf("good login from the braked address took %v, want about the cap %v", own, delayMax)
	}
	start = time.Now()
	if _, err := loginFrom(ctx, t, braked.URL("app", "wrong", "app"), "127.0.0.1"); sqlState(err) != "28P01" {
		t.Fatalf("guess after a success: %v", err)
	}
	if after := time.Since(start); after > 300*time.Millisecond {
		t.Errorf("first wrong guess after a successful login took %v: the brake was not cleared", after)
	}
	t.Logf("good login: %v from another address, %v from the braked one", other, own)

	clients, _ := braked.Stats(t)["clients"].(map[string]any)
	if n, _ := num(clients, "logins_delayed"); n < float64(n1-1) {
		t.Errorf("/stats logins_delayed = %v after %d braked guesses", n, n1)
	}
	clients, _ = defaults.Stats(t)["clients"].(map[string]any)
	if n, _ := num(clients, "logins_delayed"); n != 0 {
		t.Errorf("the default config braked %v loopback logins", n)
	}
}
