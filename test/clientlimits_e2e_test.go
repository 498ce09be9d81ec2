package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// procStatus returns one size field (VmRSS, VmData) of the proxy process's
// /proc/<pid>/status, in bytes.
func procStatus(p *Proxy, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == field+":" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in the proxy's status (has it exited?)", field)
}

// memPeak is the largest VmRSS (resident) and VmData (heap and other
// private mappings: what an allocation reserves even before it is touched)
// seen while sampling.
type memPeak struct{ rss, data int64 }

func (m memPeak) String() string {
	return fmt.Sprintf("VmRSS %d MB, VmData %d MB", m.rss>>20, m.data>>20)
}

// memLimit is n, a bound on how much the proxy's memory may grow in a
// test, for the proxy under test: n for a normal build, raceMemFactor
// times n for one built with -race (raceProxy), whose race
// detector keeps shadow memory several times the program's own (Go's
// documentation says 5-10x). A race-built run looks for races, not for a
// memory bound that holds it to a normal build's numbers.
func memLimit(n int64) int64 {
	if raceProxy() {
		return n * raceMemFactor
	}
	return n
}

const raceMemFactor = 8

// readMem reads the proxy's memory now.
func readMem(p *Proxy) (memPeak, error) {
	r, err := procStatus(p, "VmRSS")
	if err != nil {
		return memPeak{}, err
	}
	d, err := procStatus(p, "VmData")
	return memPeak{r, d}, err
}

// memSampler records the proxy's peak memory every 20 ms until stop is
// called (or the test ends) and returns it.
func memSampler(t testing.TB, p *Proxy) (stop func() memPeak) {
	var peak memPeak
	var mu sync.Mutex
	done := make(chan struct{})
	finished := make(chan struct{})
	sample := func() {
		m, err := readMem(p)
		if err != nil {
			return // the proxy is gone: the test reports that itself
		}
		mu.Lock()
		peak.rss, peak.data = max(peak.rss, m.rss), max(peak.data, m.data)
		mu.Unlock()
	}
	sample()
	// Owned by the test: ends when stop is called, at the latest in cleanup.
	go func() {
		defer close(finished)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				sample()
			}
		}
	}()
	var once sync.Once
	stop = func() memPeak {
		once.Do(func() {
			close(done)
			<-finished
			sample()
		})
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
	t.Cleanup(func() { stop() })
	return stop
}

// memNow is the proxy's current memory.
func memNow(t testing.TB, p *Proxy) memPeak {
	t.Helper()
	m, err := readMem(p)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestHugeHeaderBoundedMemory: four logged-in clients each send a Parse
// header claiming 1 GiB - 1 and no body (transaction mode). The proxy must
// not reserve the claimed length: its RSS grows by less than 64 MB, each
// client gets 54000 naming max_client_buffer at once, and other clients are
// served meanwhile and afterwards.
func TestHugeHeaderBoundedMemory(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "4"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := connect(t, p.AppURL())
	var one int
	if err := other.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	before := memNow(t, p)
	stop := memSampler(t, p)
	var clients []*rawClient
	for i := 0; i < 4; i++ {
		r := dialRaw(t, p.AppURL())
		hdr := []byte{'P', 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], 1<<30-1)
		r.write(t, hdr)
		clients = append(clients, r)
	}
	for i, r := range clients {
		er, ok := r.receive(t).(*pgproto3.ErrorResponse)
		if !ok || er.Code != "54000" || !strings.Contains(er.Hint, "max_client_buffer") {
			t.Fatalf("client %d got %#v, want 54000 with a hint naming max_client_buffer", i, er)
		}
		t.Logf("client %d: %s %s (hint: %s)", i, er.Code, er.Message, er.Hint)
	}
	// Another client is served while the four wait mid-message.
	for i := 0; i < 20; i++ {
		if err := other.QueryRow(ctx, "SELECT $1::int", i).Scan(&one); err != nil || one != i {
			t.Fatalf("other client: %v", err)
		}
	}
	// A client that sends a real (but refused) body and then a Sync goes on.
	r := clients[0]
	r.write(t, make([]byte, 1<<20))
	for _, r := range clients[1:] {
		_ = r.conn.Close()
	}
	peak := stop()
	t.Logf("proxy before: %v; peak with four 1 GiB headers: %v", before, peak)
	if peak.rss-before.rss > memLimit(64<<20) || peak.data-before.data > memLimit(64<<20) {
		t.Fatalf("proxy memory grew by %d MB resident, %d MB reserved for four header-only messages, want < 64 MB",
			(peak.rss-before.rss)>>20, (peak.data-before.data)>>20)
	}
	_ = r.conn.Close()
	c2 := connect(t, p.AppURL())
	if err := c2.QueryRow(ctx, "SELECT 2").Scan(&one); err != nil || one != 2 {
		t.Fatalf("after the attack: %v", err)
	}
}

// TestLargeParseRefused: a named Parse larger than max_client_buffer gets
// 54000 in transaction mode, and the connection goes on after its Sync.
func TestLargeParseRefused(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_MAX_CLIENT_BUFFER", "65536"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := connect(t, p.AppURL()) // pgx default: named statements
	big := strings.Repeat("x", 100<<10)
	var n int
	err := conn.QueryRow(ctx, "SELECT length('"+big+"') + $1::int", 1).Scan(&n)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "54000" || !strings.Contains(pgErr.Hint, "max_client_buffer") {
		t.Fatalf("100 KB Parse: %v, want 54000 naming max_client_buffer", err)
	}
	if err := conn.QueryRow(ctx, "SELECT $1::int", 7).Scan(&n); err != nil || n != 7 {
		t.Fatalf("after the refused Parse: %v", err)
	}
	// The same text as a simple Query is streamed.
	if err := conn.QueryRow(ctx, "SELECT length('"+big+"')", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("100 KB simple Query: %v (%d)", err, n)
	}
}

// TestPipelineBackpressure: one client pipelines 100,000 statements through
// the proxy (pgx batch: one Sync at the end). It completes with every
// result right, and the proxy's memory stays bounded because the client is
// not read while 2048 requests await a reply.
func TestPipelineBackpressure(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) { testPipelineBackpressure(t, mode) })
	}
}

func testPipelineBackpressure(t *testing.T, mode string) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_SIZE", "2"), WithEnv("PGSIDECAR_POOL__MODE", mode))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	conn := connect(t, p.AppURL())
	var one int
	if err := conn.QueryRow(ctx, "SELECT $1::int", 1).Scan(&one); err != nil {
		t.Fatal(err)
	}
	const n = 100000
	before := memNow(t, p)
	stop := memSampler(t, p)
	start := time.Now()
	batch := &pgx.Batch{}
	for i := 0; i < n; i++ {
		batch.Queue("SELECT $1::int", i)
	}
	br := conn.SendBatch(ctx, batch)
	for i := 0; i < n; i++ {
		var v int
		if err := br.QueryRow().Scan(&v); err != nil || v != i {
			br.Close()
			t.Fatalf("statement %d: %v (%d)", i, err, v)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	peak := stop()
	t.Logf("%d pipelined statements in %v; proxy before: %v; peak: %v",
		n, time.Since(start).Round(time.Millisecond), before, peak)
	// Without backpressure the request queue alone grows to ~40 MB here.
	if peak.rss-before.rss > memLimit(16<<20) {
		t.Fatalf("proxy RSS grew by %d MB for one pipelining client, want < 16 MB", (peak.rss-before.rss)>>20)
	}
	if err := conn.QueryRow(ctx, "SELECT $1::int", 2).Scan(&one); err != nil || one != 2 {
		t.Fatalf("after the pipeline: %v", err)
	}
}

// TestMaxClientConnBurst: 200 clients connect at once to a proxy allowing
// 20. At most 20 are admitted (the slot is reserved before authentication),
// every other one gets 53300 with a hint.
func TestMaxClientConnBurst(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) { testMaxClientConnBurst(t, mode) })
	}
}

func testMaxClientConnBurst(t *testing.T, mode string) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_CLIENT_CONN", "20"), WithEnv("PGSIDECAR_POOL__MODE", mode),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "20"), WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 200
	var (
		mu       sync.Mutex
		admitted []*pgconn.PgConn
		refused  int
		other    []error
		wg       sync.WaitGroup
	)
	startGate := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGate
			c, err := pgconn.Connect(ctx, p.AppURL())
			mu.Lock()
			defer mu.Unlock()
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				admitted = append(admitted, c)
			case errors.As(err, &pgErr) && pgErr.Code == "53300" && strings.Contains(pgErr.Hint, "max_client_conn"):
				refused++
			default:
				other = append(other, err)
			}
		}()
	}
	close(startGate)
	wg.Wait()
	defer func() {
		for _, c := range admitted {
			_ = c.Close(context.Background())
		}
	}()
	t.Logf("%d simultaneous connects at max_client_conn 20: %d admitted, %d refused with 53300, %d other errors",
		n, len(admitted), refused, len(other))
	if len(other) > 0 {
		t.Fatalf("unexpected errors, first: %v", other[0])
	}
	if len(admitted) != 20 || refused != n-20 {
		t.Fatalf("admitted %d, refused %d; want 20 and %d", len(admitted), refused, n-20)
	}
	for _, c := range admitted {
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			t.Fatalf("admitted client: %v", err)
		}
	}
}

// TestMaxStartupConn: connections that have not logged in count under
// pool.max_startup_conn; one more is refused at accept with 53300 and a
// hint, and once they go, clients log in again.
func TestMaxStartupConn(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_POOL__MAX_STARTUP_CONN", "5"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	counts := func() (loggingIn, accepted float64) {
		clients, _ := p.Stats(t)["clients"].(map[string]any)
		loggingIn, _ = num(clients, "clients_logging_in")
		accepted, _ = num(clients, "clients_accepted")
		return loggingIn, accepted
	}
	loggingIn := func() float64 { n, _ := counts(); return n }
	// StartProxy's own readiness check (a dial and a close) must be gone
	// first: accepted, which may come after StartProxy returned (it was in
	// the listen backlog, and would be the sixth), and seen to leave.
	deadline := time.Now().Add(5 * time.Second)
	for n, accepted := counts(); n != 0 || accepted < 1; n, accepted = counts() {
		if time.Now().After(deadline) {
			t.Fatalf("connections logging in before the test: %v (accepted %v)", n, accepted)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var silent []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	// The five are accepted (and counted) before the sixth arrives.
	deadline = time.Now().Add(5 * time.Second)
	for loggingIn() != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy counts %v connections logging in, want 5", loggingIn())
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	_, err := pgconn.Connect(ctx, p.AppURL())
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Hint, "max_startup_conn") {
		t.Fatalf("sixth connection while five log in: %v, want 53300 naming max_startup_conn", err)
	}
	t.Logf("refused in %v: %s (hint: %s)", time.Since(start).Round(time.Millisecond), pgErr.Message, pgErr.Hint)
	for _, c := range silent {
		_ = c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		c, err := pgconn.Connect(ctx, p.AppURL())
		if err == nil {
			_ = c.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the silent connections left: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAcceptOutOfFDs: with its open-file limit nearly used up, the proxy
// refuses a client at once with 53300 (instead of leaving it in the
// backlog), logs it once rather than per attempt, and serves clients again
// as soon as descriptors are free.
func TestAcceptOutOfFDs(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c0 := connect(t, p.AppURL()) // warms the pool: backends opened now
	var one int
	if err := c0.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	restore := limitFDs(t, p, 5)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	refusedAt := -1
	for i := 0; i < 20 && refusedAt < 0; i++ {
		c, err := net.DialTimeout("tcp", p.Addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		// Accepted connections wait for a startup packet; a refused one
		// gets an ErrorResponse at once.
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 512)
		n, err := io.ReadAtLeast(c, buf, 1)
		if err == nil {
			if buf[0] != 'E' || !strings.Contains(string(buf[:n]), "53300") || !strings.Contains(string(buf[:n]), "file descriptors") {
				t.Fatalf("connection %d got %q", i, buf[:n])
			}
			refusedAt = i
		}
	}
	if refusedAt < 0 {
		t.Fatal("no connection was refused at the descriptor limit")
	}
	// A few more refusals: logged once, not per connection.
	start := time.Now()
	for i := 0; i < 10; i++ {
		_, err := pgconn.Connect(ctx, p.AppURL())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
			t.Fatalf("connect at the limit: %v, want 53300", err)
		}
	}
	t.Logf("refused at connection %d; 10 more refused in %v", refusedAt, time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refusing 10 clients took %v", d)
	}
	if lines := p.Logs.Count("out of file descriptors: refusing new clients"); lines != 1 {
		t.Fatalf("%d log lines for the refusals, want 1 (rate limited)", lines)
	}
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := pgconn.Connect(ctx, p.AppURL())
		if err == nil {
			_ = c.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after descriptors were freed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := restore(); err != nil {
		t.Fatalf("prlimit restore: %v", err)
	}
}
