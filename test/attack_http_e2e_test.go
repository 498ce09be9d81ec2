package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestAttackHTTPMetricsPassthroughUpstreamUser: under auth.passthrough a
// client logging in as the upstream URL's own user gets a pool per role
// like any other role. That pool must not share the configured pool's
// labels (pool, database, user): two series with one label set make every
// scrape drop one of them (here the pool doing the work) and log a warning
// per scrape, which anyone who can reach /metrics can repeat.
func TestAttackHTTPMetricsPassthroughUpstreamUser(t *testing.T) {
	setupPassthroughRoles(t, "alice:alice-pw")
	p := startPassthroughProxy(t, "30s", WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range [][2]string{{"app", "app"}, {"alice", "alice-pw"}} {
		c := connect(t, p.URL(u[0], u[1], "app"))
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: %v", u[0], err)
		}
	}
	text, fams := scrapeMetrics(t, p)
	lintMetrics(t, text)
	if p.Logs.Contains("was collected before with the same name and label values") {
		t.Errorf("/metrics logged duplicate series")
	}
	// The three pools (configured, app's role, alice's role) each have
	// their series, distinct by name as in /stats, and the queries the
	// two clients ran are all counted.
	var queries float64
	seen := map[string]int{}
	for _, m := range fams["pgsidecar_pool_queries_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "pool" {
				seen[l.GetValue()]++
			}
		}
		queries += m.GetCounter().GetValue()
	}
	if len(seen) != 3 {
		t.Errorf("pgsidecar_pool_queries_total series by pool: %v, want 3 pools", seen)
	}
	if queries < 2 {
		t.Errorf("pgsidecar_pool_queries_total sums to %v, want >= 2 (each client ran SELECT 1)", queries)
	}
	names := map[string]int{}
	for _, sp := range statsPools(p.Stats(t)) {
		names[str(sp, "name")]++
	}
	for n, k := range names {
		if k != 1 {
			t.Errorf("/stats lists %d pools named %q: %v", k, n, names)
		}
	}
}

// holdHealthConns opens n connections to the health listener, sends on
// each a keep-alive GET /livez and reads the answers, leaving the
// connections open (idle, as a scraper's or a prober's keep-alive
// connection is). codes counts the answers by status, 0 for none within
// 5 s (the connection left in the listen backlog).
func holdHealthConns(t *testing.T, p *Proxy, n int) (conns []net.Conn, codes map[int]int) {
	t.Helper()
	readers := make([]*bufio.Reader, 0, n)
	for range n {
		c, err := net.DialTimeout("tcp", p.HealthAddr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial health: %v", err)
		}
		conns = append(conns, c)
		readers = append(readers, bufio.NewReader(c))
		_, _ = fmt.Fprintf(c, "GET /livez HTTP/1.1\r\nHost: probe\r\n\r\n")
	}
	codes = map[int]int{}
	deadline := time.Now().Add(5 * time.Second)
	for i, c := range conns {
		_ = c.SetReadDeadline(deadline)
		resp, err := http.ReadResponse(readers[i], nil)
		if err != nil {
			codes[0]++
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		codes[resp.StatusCode]++
	}
	return conns, codes
}

// TestAttackHTTPConnectionFloodSparesClients: the health listener (on
// 0.0.0.0 in Kubernetes, where the client listener is loopback only) holds
// a bounded number of connections. The proxy's descriptor budget
// (fdsNeeded) counts health requests in a fixed overhead; connections past
// it get a 503 at once instead of eating the descriptors promised to
// clients and backends, so a client still logs in while the health port is
// flooded with keep-alive connections, and /livez answers again once the
// flood is gone.
func TestAttackHTTPConnectionFloodSparesClients(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c0 := connect(t, p.AppURL()) // warms the pool: its backend stays idle
	if _, err := c0.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// 40 descriptors to spare: more than the health listener may hold,
	// fewer than the flood below.
	restore := limitFDs(t, p, 40)
	defer func() { _ = restore() }()

	const flood = 80
	held, codes := holdHealthConns(t, p, flood)
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	t.Logf("health answers to %d held connections: %v", flood, codes)
	if codes[0] != 0 {
		t.Errorf("%d health connections got no answer (left in the backlog)", codes[0])
	}
	if codes[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no health connection was refused: %v", codes)
	}

	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	pc, err := pgconn.Connect(cctx, p.AppURL())
	if err != nil {
		t.Fatalf("a client during the health flood: %v", err)
	}
	if _, err := pc.Exec(cctx, "SELECT 1").ReadAll(); err != nil {
		t.Errorf("a query during the health flood: %v", err)
	}
	_ = pc.Close(cctx)

	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	waitFor(t, 5*time.Second, "/livez 200 after the flood", func() bool {
		code, _, err := p.getJSON("/livez")
		return err == nil && code == http.StatusOK
	})
	if n := p.Logs.Count("health listener: too many connections"); n != 1 {
		t.Errorf("%d log lines for the refused health connections, want 1 (rate limited)", n)
	}
}

// rawHTTP sends req (raw bytes) on a fresh connection to the health
// listener, half-closes, and returns everything the server answered
// within 5 s.
func rawHTTP(t *testing.T, p *Proxy, req string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.HealthAddr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial health: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestAttackHTTPAdminAuth: an admin write is done only for exactly one
// Authorization header carrying the token, its scheme matched without
// regard to case (RFC 9110 11.1: "bearer" is "Bearer"); every other
// request is 401 with WWW-Authenticate, leaves the pools as they were,
// and the refusals (anyone who reaches the listener can repeat them) are
// logged once, not per request.
func TestAttackHTTPAdminAuth(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_ADMIN__HTTP_TOKEN", "s3cret"), WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	paused := func() bool {
		var pools []map[string]any
		getJSONInto(t, p, "/pools", &pools)
		return len(pools) == 1 && pools[0]["paused"] == true
	}
	post := func(auth ...string) string {
		req := "POST /admin/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n"
		for _, a := range auth {
			req += "Authorization: " + a + "\r\n"
		}
		return rawHTTP(t, p, req+"\r\n")
	}
	for _, auth := range [][]string{
		nil,
		{""},
		{"Bearer"},
		{"Bearer "},
		{"Bearer s3cre"},
		{"Bearer s3cret2"},
		{"Bearer S3CRET"},
		{"Basic czNjcmV0"},
		{"s3cret"},
		{"Bearer s3cret", "Bearer wrong"},
		{"Bearer wrong", "Bearer s3cret"},
	} {
		out := post(auth...)
		if !strings.HasPrefix(out, "HTTP/1.1 401 ") || !strings.Contains(out, `Www-Authenticate: Bearer realm="pgsidecar"`) {
			t.Errorf("Authorization %q: %q, want 401 with WWW-Authenticate", auth, out)
		}
		if paused() {
			t.Fatalf("Authorization %q paused the pool", auth)
		}
	}
	if n := p.Logs.Count("admin write refused over HTTP"); n != 1 {
		t.Errorf("%d log lines for the refused admin writes, want 1 (rate limited)", n)
	}
	for _, auth := range []string{"Bearer s3cret", "bearer s3cret", "BEARER s3cret"} {
		if out := post(auth); !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Errorf("Authorization %q: %q, want 200", auth, out)
		}
		if !paused() {
			t.Errorf("Authorization %q did not pause the pool", auth)
		}
		if code, body := adminPost(t, p, "/admin/resume", "s3cret"); code != http.StatusOK {
			t.Fatalf("resume: %d %s", code, body)
		}
	}
}

// TestAttackHTTPAdminWritesRaceReload: concurrent HTTP pauses, resumes,
// reconnects and reloads of every database and of one, with SIGHUPs in
// between, while clients run transactions: every write is answered (200,
// or 500 only for a reload the app was too busy for), the clients'
// transactions all complete, and after a last RESUME no pool is left
// paused by a PAUSE that lost its race with a RESUME. A guard (nothing was
// found wrong): the other admin tests send their writes one at a time.
func TestAttackHTTPAdminWritesRaceReload(t *testing.T) {
	p := StartProxy(t, WithEnv("PGSIDECAR_ADMIN__HTTP_TOKEN", "s3cret"), WithEnv("PGSIDECAR_LOG__LEVEL", "info"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var clients, writers sync.WaitGroup
	for i := range 3 {
		clients.Add(1)
		go func() { // ends at stop, or after 2000 transactions (each bounded by ctx)
			defer clients.Done()
			c, err := pgconn.Connect(ctx, p.AppURL())
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			defer c.Close(context.Background())
			for n := 0; n < 2000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Exec(ctx, "BEGIN; SELECT 1; COMMIT").ReadAll(); err != nil {
					t.Errorf("client %d transaction %d: %v", i, n, err)
					return
				}
			}
		}()
	}
	paths := []string{"/admin/pause", "/admin/resume", "/admin/reconnect", "/admin/reload",
		"/admin/pause?db=app", "/admin/resume?db=app", "/admin/reconnect?db=app"}
	for w := range 4 {
		writers.Add(1)
		go func() { // ends after its 25 writes, each bounded by httpClient's timeout
			defer writers.Done()
			for n := range 25 {
				path := paths[(w*7+n*3)%len(paths)]
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.HealthAddr+path, nil)
				req.Header.Set("Authorization", "Bearer s3cret")
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Errorf("POST %s: %v", path, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK && (resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(b), "busy")) {
					t.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
				}
				if n%5 == 0 {
					p.Signal(syscall.SIGHUP)
				}
			}
		}()
	}
	writers.Wait()
	if code, body := adminPost(t, p, "/admin/resume", "s3cret"); code != http.StatusOK {
		t.Fatalf("final resume: %d %s", code, body)
	}
	close(stop)
	clients.Wait()
	var pools []map[string]any
	getJSONInto(t, p, "/pools", &pools)
	for _, pl := range pools {
		if pl["paused"] != false {
			t.Errorf("pool still paused after the last RESUME: %v", pl)
		}
	}
	c := connect(t, p.AppURL())
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("a transaction after the race: %v", err)
	}
	if p.Exited() {
		t.Fatal("the proxy exited")
	}
}

// TestAttackHTTPDrainWithHeldHealthConns: during a SIGTERM drain with
// health connections held open (keep-alive ones idle, slow ones that never
// finish their header), /readyz is 503, /livez 200, and once the last
// client has left the process exits 0: the held health connections do not
// keep it alive. A guard: the drain tests poll the probes with fresh
// connections only. (That the slow connections do not delay the exit is
// TestHealthStalledConnsDoNotDelayExit's.)
func TestAttackHTTPDrainWithHeldHealthConns(t *testing.T) {
	p := StartProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connect(t, p.AppURL())
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	held, codes := holdHealthConns(t, p, 5)
	defer func() {
		for _, hc := range held {
			_ = hc.Close()
		}
	}()
	if codes[http.StatusOK] != 5 {
		t.Fatalf("keep-alive /livez: %v", codes)
	}
	for range 5 {
		sc, err := net.DialTimeout("tcp", p.HealthAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, sc)
		_, _ = io.WriteString(sc, "GET /livez HTTP/1.1\r\nHost: sl")
	}
	p.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "/readyz 503 draining", func() bool {
		code, body, err := p.getJSON("/readyz")
		return err == nil && code == http.StatusServiceUnavailable && body["status"] == "draining"
	})
	if code, _, err := p.getJSON("/livez"); err != nil || code != http.StatusOK {
		t.Errorf("/livez during the drain: %d %v", code, err)
	}
	if _, err := c.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("COMMIT during the drain: %v", err)
	}
	code, err := p.Wait(15 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("after the last client left: exit %d, %v", code, err)
	}
}
