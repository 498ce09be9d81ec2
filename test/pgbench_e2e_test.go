package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPgbench runs pgbench's TPC-B-like script with 50 clients on a pool of
// 5, in transaction and session mode, with the simple and the extended
// query protocol. Every transaction must succeed, and /stats, polled every
// 100ms during the run, must never show more than 5 backends open or busy.
func TestPgbench(t *testing.T) {
	ensurePgbenchTables(t)
	for _, tc := range []struct {
		mode, protocol string
		transactions   int
	}{
		{"transaction", "simple", 50},
		{"transaction", "extended", 50},
		// Session mode: 50 clients share 5 backends one client at a time,
		// so they queue; fewer transactions each keep the run short.
		{"session", "simple", 10},
		{"session", "extended", 10},
	} {
		t.Run(tc.mode+"/"+tc.protocol, func(t *testing.T) {
			p := StartProxy(t,
				WithEnv("PGSIDECAR_POOL__MODE", tc.mode),
				WithEnv("PGSIDECAR_POOL__MAX_SIZE", "5"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "120s"),
				WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
			poll := startStatsPoller(p, 100*time.Millisecond)
			out, err := runPgbench(t, p.AppURL(), "-n", "-M", tc.protocol,
				"-c", "50", "-j", "2", "-t", fmt.Sprint(tc.transactions))
			seen := poll.stop()
			if err != nil {
				t.Fatalf("pgbench: %v\n%s", err, out)
			}
			checkPgbenchOutput(t, out, 50*tc.transactions)
			t.Logf("pgbench %s/%s: %s; stats polled %d times (%d errors), max total %v, max active %v, max waiting %v",
				tc.mode, tc.protocol, tps(out), seen.samples, seen.errors, seen.maxTotal, seen.maxActive, seen.maxWaiting)
			if seen.errors > 0 {
				t.Errorf("/stats failed %d of %d polls; last error: %v", seen.errors, seen.samples+seen.errors, seen.lastErr)
			}
			if seen.samples < 3 {
				t.Fatalf("/stats answered only %d polls during the run: nothing was checked", seen.samples)
			}
			if seen.maxTotal > 5 || seen.maxActive > 5 {
				t.Fatalf("/stats showed total %v, active %v during the run; max_size is 5", seen.maxTotal, seen.maxActive)
			}
			if seen.maxActive < 1 {
				t.Fatalf("/stats never showed an active backend while 50 clients ran: the poll checked nothing")
			}
			assertPoolsWithin(t, p.Stats(t), 5)
			waitClientsGone(t, p, 5*time.Second)
		})
	}
}

// checkPgbenchOutput fails unless pgbench processed every transaction and
// reported zero failures.
func checkPgbenchOutput(t *testing.T, out string, want int) {
	t.Helper()
	if !strings.Contains(out, "number of failed transactions: 0 ") {
		t.Fatalf("pgbench reported failed transactions (or no count):\n%s", out)
	}
	processed := fmt.Sprintf("number of transactions actually processed: %d/%d", want, want)
	if !strings.Contains(out, processed) {
		t.Fatalf("pgbench did not report %q:\n%s", processed, out)
	}
}

var tpsRE = regexp.MustCompile(`tps = [0-9.]+ \(without initial connection time\)`)

func tps(out string) string { return tpsRE.FindString(out) }

// statsPoller polls /stats on its own goroutine until stop.
type statsPoller struct {
	quit chan struct{}
	done chan struct{}
	seen pollResult
}

// pollResult is what a statsPoller saw: the largest total, active and
// waiting over all pools and samples.
type pollResult struct {
	samples, errors                 int
	maxTotal, maxActive, maxWaiting float64
	lastErr                         error
}

// startStatsPoller starts polling p's /stats every interval. The caller
// owns the goroutine and must call stop.
func startStatsPoller(p *Proxy, interval time.Duration) *statsPoller {
	sp := &statsPoller{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sp.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			stats, err := p.FetchStats()
			if err != nil {
				sp.seen.errors++
				sp.seen.lastErr = err
			} else {
				sp.seen.samples++
				for _, pl := range statsPools(stats) {
					sp.seen.maxTotal = maxOf(sp.seen.maxTotal, pl, "total")
					sp.seen.maxActive = maxOf(sp.seen.maxActive, pl, "active")
					sp.seen.maxWaiting = maxOf(sp.seen.maxWaiting, pl, "waiting")
				}
			}
			select {
			case <-sp.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return sp
}

// stop ends the poller and returns what it saw. Only the poller goroutine
// writes seen; closing done publishes it to the caller.
func (sp *statsPoller) stop() pollResult {
	close(sp.quit)
	<-sp.done
	return sp.seen
}

func maxOf(cur float64, m map[string]any, key string) float64 {
	if v, ok := num(m, key); ok && v > cur {
		return v
	}
	return cur
}

// clientCount reads the number of connected clients from a /stats body
// ("clients": {"clients_total": n}).
func clientCount(t testing.TB, stats map[string]any) float64 {
	t.Helper()
	clients, ok := stats["clients"].(map[string]any)
	if !ok {
		t.Fatalf("/stats has no \"clients\" object: %v", stats)
	}
	n, ok := num(clients, "clients_total")
	if !ok {
		t.Fatalf("/stats clients has no clients_total: %v", clients)
	}
	return n
}

// waitClientsGone waits until /stats shows no connected clients and no
// active or waiting backends: what the proxy holds for clients is freed when
// they leave (the process-level stand-in for a goroutine leak check).
func waitClientsGone(t testing.TB, p *Proxy, timeout time.Duration) {
	t.Helper()
	var last map[string]any
	deadline := time.Now().Add(timeout)
	for {
		last = p.Stats(t)
		busy := clientCount(t, last)
		for _, pl := range statsPools(last) {
			a, _ := num(pl, "active")
			w, _ := num(pl, "waiting")
			busy += a + w
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("clients or busy backends remain %v after every client left: %v", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
