package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Issue 11, "Holding clients across a database restart", the test it
// names: pgbench through the proxy across a fast restart of the database
// (pg_ctl restart -m fast: SIGINT to the postmaster, which ends every
// session, then a start) finishes with 0 failed transactions, apart from
// those that were inside a transaction at the restart.
//
// pgbench 15 aborts a client at its first connection-level error, so the
// transactions that were on a backend at the shutdown cost exactly their
// clients: at most one per backend, so at most max_size. With
// pool.hold_on_restart every other client (between transactions, or
// queued for a backend, since the pool is smaller than the client count)
// must see no error at all and must go on completing transactions after
// the restart, which pgbench's per-transaction log shows per client.
// Simple protocol, and -M prepared: after the restart every backend is
// new, and the proxy prepares the clients' statements on them again.
func TestHoldPgbenchAcrossFastRestart(t *testing.T) {
	ensurePgbenchTables(t)
	for _, protocol := range []string{"simple", "prepared"} {
		t.Run(protocol, func(t *testing.T) { holdPgbenchAcrossFastRestart(t, protocol) })
	}
}

func holdPgbenchAcrossFastRestart(t *testing.T, protocol string) {
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	const (
		clients = 12
		maxSize = 4
		seconds = 5 // pgbench -T: bounded; the restart comes at about 2 s
	)
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(maxSize)),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"),
		WithEnv("PGSIDECAR_POOL__HOLD_ON_RESTART", "10s"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "30s"),
		WithEnv("PGSIDECAR_LOG__LEVEL", "info"))

	bench := startPgbench(t, p.AppURL(), "-n", "-M", protocol, "-c", strconv.Itoa(clients), "-j", "2",
		"-T", strconv.Itoa(seconds), "-P", "1")
	time.Sleep(2 * time.Second)

	// The transactions in flight at the restart are at most the backends
	// busy then; /stats says how many, just before the shutdown.
	activeBefore := -1.0
	if st, err := p.FetchStats(); err == nil {
		activeBefore = 0
		for _, pl := range statsPools(st) {
			activeBefore = maxOf(activeBefore, pl, "active")
		}
	}
	restartAt := time.Now()
	if err := pg.Stop(); err != nil { // pg_ctl restart -m fast: the fast shutdown ...
		t.Fatalf("fast shutdown: %v", err)
	}
	if err := pg.Start(); err != nil { // ... then a start on the same data directory
		t.Fatalf("start after the fast shutdown: %v", err)
	}
	restartDone := time.Now()
	t.Logf("database restarted (fast) in %v; %v backends active just before", restartDone.Sub(restartAt).Round(time.Millisecond), activeBefore)

	out, logs, err := bench.wait()
	res := parsePgbenchRun(t, out, logs, restartDone)
	t.Logf("pgbench -M %s -c %d -T %d through max_size %d across the restart: %d transactions processed, %d failed, %d clients aborted %v; tps line: %s",
		protocol, clients, seconds, maxSize, res.processed, res.failed, len(res.aborted), res.aborted, tps(out))
	res.checkCostOnly(t, out, err, clients, maxSize, restartDone, "the restart")
	// The hold was what carried them, and its log line (JSON) gives its
	// durations as strings, as every duration in the JSON log is.
	held := false
	for _, l := range p.Logs.JSONLines() {
		if strings.Contains(fmt.Sprint(l["msg"]), "holding new transactions") {
			held = true
			if l["hold_on_restart"] != "10s" || l["retry_every"] != "250ms" {
				t.Errorf("hold log line: hold_on_restart %#v, retry_every %#v; want \"10s\", \"250ms\"", l["hold_on_restart"], l["retry_every"])
			}
		}
	}
	if !held {
		t.Errorf("the proxy did not log a hold")
	}
	t.Logf("%d transactions completed after the restart", res.afterRestart)
}

// checkCostOnly checks a pgbench run (its output out, its exit err) of
// clients clients through a pool of maxSize across a disruption of the
// database (what, done at cut) for what a fault may cost: only the
// transactions it hit. pgbench 15 aborts a client at its first
// connection-level error, so at most maxSize clients (one per backend
// busy then) may abort, each having lost its backend (the server's FATAL,
// or the connection ending), never refused by the proxy (08006 "cannot
// connect ...": what the hold is for); no transaction fails; every other
// client completes transactions after the cut, and some were completed.
func (res pgbenchResult) checkCostOnly(t *testing.T, out string, err error, clients, maxSize int, cut time.Time, what string) {
	t.Helper()
	if err != nil && len(res.aborted) == 0 {
		t.Fatalf("pgbench failed with no aborted client: %v\n%s", err, out)
	}
	if res.failed != 0 {
		t.Errorf("pgbench reported %d failed transactions; want 0\n%s", res.failed, out)
	}
	if len(res.aborted) > maxSize {
		t.Errorf("%d clients aborted (%v); at most %d transactions (one per backend) were on a backend at %s\n%s",
			len(res.aborted), res.aborted, maxSize, what, out)
	}
	if strings.Contains(out, "cannot connect to the database") {
		t.Errorf("the proxy refused a transaction during %s:\n%s", what, out)
	}
	for c := range clients {
		if res.aborted[c] {
			continue
		}
		last, ok := res.lastDone[c]
		switch {
		case !ok:
			t.Errorf("client %d completed no transaction at all", c)
		case !last.After(cut):
			t.Errorf("client %d was not aborted but completed no transaction after %s (its last at %s, %s done at %s)",
				c, what, last.Format(time.StampMilli), what, cut.Format(time.StampMilli))
		}
	}
	if res.processed == 0 || res.afterRestart == 0 {
		t.Errorf("%d transactions processed, %d of them after %s: the run proved nothing", res.processed, res.afterRestart, what)
	}
}

// pgbenchRun is a pgbench process started by startPgbench.
type pgbenchRun struct {
	cmd    *exec.Cmd
	out    syncBuffer
	logDir string
	done   chan struct{} // closed when pgbench has exited
	err    error         // its exit, valid after done is closed
}

// startPgbench starts pgbench against url with args and a per-transaction
// log (-l) in a temp dir; wait returns its output and the log's paths.
// Bounded by pgbenchTimeout (then killed); the test's cleanup kills a
// pgbench still running and waits for it.
func startPgbench(t *testing.T, url string, args ...string) *pgbenchRun {
	t.Helper()
	bin, err := findPGClient("pgbench")
	if err != nil {
		t.Fatal(err)
	}
	r := &pgbenchRun{logDir: t.TempDir(), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), pgbenchTimeout)
	full := append(append([]string{}, args...), "-l", "--log-prefix="+filepath.Join(r.logDir, "tx"), url)
	r.cmd = exec.CommandContext(ctx, bin, full...)
	r.cmd.Env = cleanEnv()
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start pgbench: %v", err)
	}
	// Owned by r: ends when pgbench exits (at -T, or killed by ctx at
	// the timeout or the cleanup), which the cleanup waits for.
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// exited reports whether pgbench has exited.
func (r *pgbenchRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// wait waits for pgbench to exit and returns its output, its
// per-transaction log files and its exit error.
func (r *pgbenchRun) wait() (string, []string, error) {
	<-r.done
	logs, _ := filepath.Glob(filepath.Join(r.logDir, "tx.*"))
	return r.out.String(), logs, r.err
}

// pgbenchResult is what a pgbench run reported.
type pgbenchResult struct {
	processed, failed int
	aborted           map[int]bool      // clients pgbench aborted
	lastDone          map[int]time.Time // per client, its last completed transaction
	afterRestart      int               // transactions completed after the cut time
}

var (
	processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRE    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	abortedRE   = regexp.MustCompile(`client (\d+) (?:script \d+ )?aborted`)
)

// parsePgbenchRun reads pgbench's summary, its aborted clients, and its
// per-transaction logs (-l: "client_id tx_no time script_no epoch us",
// time "failed" or "skipped" for those), counting the transactions
// completed after cut.
func parsePgbenchRun(t *testing.T, out string, logs []string, cut time.Time) pgbenchResult {
	t.Helper()
	res := pgbenchResult{aborted: map[int]bool{}, lastDone: map[int]time.Time{}}
	m := processedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no \"number of transactions actually processed\" in pgbench's output:\n%s", out)
	}
	res.processed, _ = strconv.Atoi(m[1])
	m = failedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no \"number of failed transactions\" in pgbench's output:\n%s", out)
	}
	res.failed, _ = strconv.Atoi(m[1])
	for _, m := range abortedRE.FindAllStringSubmatch(out, -1) {
		c, _ := strconv.Atoi(m[1])
		res.aborted[c] = true
	}
	if len(logs) == 0 {
		t.Fatalf("pgbench wrote no per-transaction log")
	}
	done := 0
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			t.Fatalf("open pgbench log: %v", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 || fs[2] == "failed" || fs[2] == "skipped" {
				continue
			}
			c, err1 := strconv.Atoi(fs[0])
			sec, err2 := strconv.ParseInt(fs[4], 10, 64)
			us, err3 := strconv.ParseInt(fs[5], 10, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				t.Fatalf("pgbench log line %q: not client_id tx_no time script_no epoch us", sc.Text())
			}
			at := time.Unix(sec, us*1000)
			done++
			if at.After(cut) {
				res.afterRestart++
			}
			if at.After(res.lastDone[c]) {
				res.lastDone[c] = at
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatalf("read pgbench log: %v", err)
		}
	}
	if done != res.processed {
		t.Errorf("pgbench logged %d completed transactions but reported %d processed", done, res.processed)
	}
	return res
}
