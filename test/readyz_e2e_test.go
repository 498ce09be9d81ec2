package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 7, point 4: with no client traffic, /health stayed 200 "ok" for
// 71 s after the database stopped. Now /readyz turns 503 within 10 s of
// the stop (the idle sockets' peek sees the shutdown), /livez stays 200
// the whole time (a restart of the sidecar would not bring the database
// back), and /readyz is 200 again once the database is back. It stops the
// shared cluster, so it must not run in parallel with other tests.
func TestReadyzFollowsStoppedDatabaseWithoutTraffic(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF", "200ms"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF_MAX", "1s"))
	t.Cleanup(func() {
		if !pg.Running() {
			if err := pg.Start(); err != nil {
				t.Errorf("restart the shared cluster: %v", err)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := oneQuery(ctx, p.AppURL()); err != nil {
		t.Fatalf("before the stop: %v", err)
	}
	waitProbe(t, p, "/readyz", 200, 15*time.Second)

	stopAt := time.Now()
	if err := pg.Stop(); err != nil {
		t.Fatalf("stop cluster: %v", err)
	}
	waitProbe(t, p, "/readyz", 503, 10*time.Second-time.Since(stopAt))
	t.Logf("/readyz 503 %v after the database was told to stop (a fast shutdown), with no client traffic",
		time.Since(stopAt).Round(time.Millisecond))
	if code, body := getProbe(t, p, "/readyz"); code != 503 || !strings.Contains(body, `"status":"unhealthy"`) || !strings.Contains(body, "UNHEALTHY") {
		t.Fatalf("/readyz while the database is down: %d %s", code, body)
	}

	if err := pg.Start(); err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	took := waitProbe(t, p, "/readyz", 200, 15*time.Second)
	t.Logf("/readyz 200 again %v after the database started", took.Round(time.Millisecond))
	if err := oneQuery(ctx, p.AppURL()); err != nil {
		t.Fatalf("client after the restart: %v", err)
	}
}

// The harder case for point 4: a database that stops answering without
// closing anything (a partition, a frozen host: here every PostgreSQL
// process is stopped with SIGSTOP) sends no FIN for the peek to see. The
// idle check must find it: /readyz 503 within idle_check_interval +
// connect_timeout (+ a maintainer tick), /livez 200 throughout, and 200
// again once the database answers.
func TestReadyzFindsFrozenDatabaseWithoutTraffic(t *testing.T) {
	const interval, connectTimeout = 2 * time.Second, 2 * time.Second
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__IDLE_CHECK_INTERVAL", interval.String()),
		WithEnv("PGSIDECAR_POOL__CONNECT_TIMEOUT", connectTimeout.String()),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF", "200ms"),
		WithEnv("PGSIDECAR_POOL__RECONNECT_BACKOFF_MAX", "1s"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := oneQuery(ctx, p.AppURL()); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}
	waitProbe(t, p, "/readyz", 200, 15*time.Second)

	thaw := freezeCluster(t)
	took := waitProbe(t, p, "/readyz", 503, interval+connectTimeout+3*time.Second)
	t.Logf("/readyz 503 %v after the database froze, with no client traffic", took.Round(time.Millisecond))
	if took < interval-time.Second {
		// Nothing closed a socket: only the idle check can have seen it.
		t.Errorf("503 after %v, before an idle check was due (%v): something else noticed", took, interval)
	}
	// The pool turns UNHEALTHY (what /readyz reads) just before the
	// maintainer logs the failed check, so the line may trail the 503.
	if !p.Logs.ContainsWithin("idle check failed", 2*time.Second) {
		t.Error("the proxy did not log the failed idle check")
	}
	thaw()
	took = waitProbe(t, p, "/readyz", 200, 15*time.Second)
	t.Logf("/readyz 200 again %v after the database thawed", took.Round(time.Millisecond))
	if err := oneQuery(ctx, p.AppURL()); err != nil {
		t.Fatalf("client after the thaw: %v", err)
	}
}

// waitProbe polls path every 100 ms until it answers code, checking on
// every round that /livez answers 200; it returns how long that took and
// fails the test after timeout.
func waitProbe(t *testing.T, p *Proxy, path string, code int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if lc, body := getProbe(t, p, "/livez"); lc != 200 {
			t.Fatalf("/livez = %d %s, want 200 whatever the database does", lc, body)
		}
		got, body := getProbe(t, p, path)
		if got == code {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s still %d %s %v after the change, want %d", path, got, body, timeout, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// getProbe GETs path on the health listener.
func getProbe(t *testing.T, p *Proxy, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: httpTimeout}
	resp, err := client.Get("http://" + p.HealthAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

// freezeCluster stops the postmaster and every process under it with
// SIGSTOP: sockets stay open and nothing answers, as behind a partition.
// The returned thaw (also run at cleanup) resumes them.
func freezeCluster(t *testing.T) (thaw func()) {
	t.Helper()
	if !pg.Running() {
		t.Fatal("the cluster is not running")
	}
	// The first line of postmaster.pid is the postmaster's pid.
	raw, err := os.ReadFile(filepath.Join(pg.Dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	pids := append([]int{root}, descendants(t, root)...)
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && err != syscall.ESRCH {
			t.Fatalf("SIGSTOP %d: %v", pid, err)
		}
	}
	done := false
	thaw = func() {
		if done {
			return
		}
		done = true
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT) // ESRCH: gone meanwhile, fine
		}
	}
	t.Cleanup(thaw)
	return thaw
}

// descendants lists the pids whose parent chain reaches root, from /proc.
func descendants(t *testing.T, root int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("read /proc: %v", err)
	}
	parent := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		fields := strings.Fields(s[i+1:])
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil {
			parent[pid] = ppid
		}
	}
	var out []int
	for pid := range parent {
		for q := parent[pid]; q > 1; q = parent[q] {
			if q == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}
