package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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

// TestSessionLoginsNeverWaitForARelease: in session mode a client takes its
// backend at login when one is free, and otherwise logs in without one and
// gets it at its first query. Applications open their pools eagerly and
// pgbench connects all its clients before the first transaction, so a
// login must never wait for another client to release a backend: those
// clients may be waiting for this login. Many logins at once on a pool of
// 3 (each round's clients stay connected until every login of the round is
// done) must all log in at once, then all run a query. Before, a login
// asked the pool whether a backend was free and then acquired one: two
// logins could both see the last one free, and the second waited for a
// release until the pool's acquire timeout (TestPgbench/session failed so:
// "could not create connection for client 3" after 2 minutes, once in
// dozens of runs; the rounds below did not catch that narrow race in 3 runs
// of the old code, pool's TestAcquireIfFreeNeverWaitsForARelease checks the
// decision itself). The same held for a paused pool with backends idle,
// deterministically: the login waited for RESUME. Now it logs in, and its
// first query waits for RESUME, as with PgBouncer.
func TestSessionLoginsNeverWaitForARelease(t *testing.T) {
	const size, clients, rounds = 3, 12, 15
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MODE", "session"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", fmt.Sprint(size)),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "120s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	bound := 0
	for round := 1; round <= rounds; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		conns := make([]*pgconn.PgConn, clients)
		errs := make([]error, clients)
		took := make([]time.Duration, clients)
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
				defer lcancel()
				start := time.Now()
				conns[i], errs[i] = pgconn.Connect(lctx, p.AppURL())
				took[i] = time.Since(start)
			}()
		}
		wg.Wait()
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				t.Errorf("round %d: login %d failed after %v with the round's other clients connected: %v (SQLSTATE %s)",
					round, i, took[i].Round(time.Millisecond), err, sqlState(err))
			}
		}
		// Every client runs a query; those without a backend get one as the
		// others leave.
		pids := make([]string, clients)
		for i, c := range conns {
			if c == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer txClosePgconn(c)
				if c.PID() <= 1<<22 {
					// Linux pids are at most 2^22, and the proxy mints
					// keys above that: this is the backend's pid
					// (bindSession).
					pids[i] = fmt.Sprint(c.PID())
				}
				got, err := txOne(ctx, c, "SELECT pg_backend_pid()")
				if err != nil {
					t.Errorf("round %d: client %d's query: %v", round, i, err)
					return
				}
				if pids[i] != "" && pids[i] != got {
					t.Errorf("round %d: client %d bound at login to pid %s, its query ran on %s", round, i, pids[i], got)
				}
			}()
		}
		wg.Wait()
		cancel()
		for _, pid := range pids {
			if pid != "" {
				bound++
			}
		}
		if failed > 0 || t.Failed() {
			t.FailNow()
		}
		waitClientsGone(t, p, 5*time.Second)
	}
	t.Logf("%d rounds of %d logins on a pool of %d: %d clients bound at login", rounds, clients, size, bound)
	if bound < rounds {
		t.Fatalf("only %d of %d clients took a backend at login: the binding at login was not exercised", bound, rounds*clients)
	}

	// Paused, with the backends idle: the login goes through at once, its
	// query waits for RESUME.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	con := connect(t, consoleURL(p, "app", "app"))
	if err := consoleExec(ctx, con, "PAUSE app"); err != nil {
		t.Fatalf("PAUSE: %v", err)
	}
	lctx, lcancel := context.WithTimeout(ctx, 3*time.Second)
	c, err := pgconn.Connect(lctx, p.AppURL())
	lcancel()
	if err != nil {
		_ = consoleExec(ctx, con, "RESUME app")
		t.Fatalf("login to a paused pool with backends idle: %v (SQLSTATE %s); it must not wait for RESUME", err, sqlState(err))
	}
	defer txClosePgconn(c)
	answered := make(chan error, 1)
	go func() { // ends when the query is answered (after RESUME) or ctx ends
		_, err := txOne(ctx, c, "SELECT 1")
		answered <- err
	}()
	select {
	case err := <-answered:
		t.Fatalf("a query answered while the pool was paused: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := consoleExec(ctx, con, "RESUME app"); err != nil {
		t.Fatalf("RESUME: %v", err)
	}
	if err := <-answered; err != nil {
		t.Fatalf("the query after RESUME: %v", err)
	}
}

// TestSessionLoginWithNewParameterNeverWaits: a session-mode login whose
// startup parameter the proxy has not seen the server accept yet is
// checked on a backend (checkStartupParams) only when one is free; with
// every backend held by an idle session, the login goes through at once
// and the parameter is set when the client gets its backend; a value the
// server rejects answers the client's first query with the server's error,
// and the session goes on with the server's default. Before, the
// check waited for a release: a login with a new application_name waited
// for another session to end.
func TestSessionLoginWithNewParameterNeverWaits(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MODE", "session"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "60s"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := pgconn.Connect(ctx, p.AppURL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := txOne(ctx, holder, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, param, value, want string }{
		{"accepted", "application_name", "never-seen-" + fmt.Sprint(time.Now().UnixNano()), ""},
		{"rejected", "statement_timeout", "not-a-duration", "22023"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := pgconn.ParseConfig(p.AppURL())
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams[tc.param] = tc.value
			lctx, lcancel := context.WithTimeout(ctx, 3*time.Second)
			c, err := pgconn.ConnectConfig(lctx, cfg)
			lcancel()
			if err != nil {
				if tc.want != "" && sqlState(err) == tc.want {
					return // refused at login: as directly
				}
				t.Fatalf("login with %s=%q while the one backend is held: %v (SQLSTATE %s)", tc.param, tc.value, err, sqlState(err))
			}
			defer txClosePgconn(c)
			answered := make(chan struct {
				got string
				err error
			}, 1)
			go func() { // ends when the query is answered (after holder leaves) or ctx ends
				got, err := txOne(ctx, c, "SELECT current_setting('"+tc.param+"')")
				answered <- struct {
					got string
					err error
				}{got, err}
			}()
			time.Sleep(200 * time.Millisecond)
			txClosePgconn(holder)
			r := <-answered
			switch {
			case tc.want == "" && (r.err != nil || r.got != tc.value):
				t.Fatalf("%s after the backend came free: %q, %v; want %q", tc.param, r.got, r.err, tc.value)
			case tc.want != "" && sqlState(r.err) != tc.want:
				t.Fatalf("first query with %s=%q: %q, %v; want SQLSTATE %s", tc.param, tc.value, r.got, r.err, tc.want)
			}
			t.Logf("first query: %q, %v", r.got, r.err)
			// The session goes on: with the value, or after the refusal
			// with the server's default (directly the login was refused).
			again, err := txOne(ctx, c, "SELECT current_setting('"+tc.param+"')")
			if err != nil || tc.want == "" && again != tc.value {
				t.Fatalf("second query: %q, %v", again, err)
			}
			t.Logf("second query: %q", again)
			txClosePgconn(c) // its backend goes to the next holder
			holder, err = pgconn.Connect(ctx, p.AppURL())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := txOne(ctx, holder, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		})
	}
	txClosePgconn(holder)
}
