package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 7, point 3. The repro: pg_terminate_backend of idle pooled
// backends used less than a second before (so validate_after_idle skips
// the validation query); 6 of the next 9 clients got FATAL 57P01 while
// the database was healthy, because the proxy gave up after 3 dead ones
// and handed over the 4th. Now every client must be served, whether they
// come one after another or all at once, in both modes, and the proxy
// must drop backends the server closed even when no client comes.
func TestTerminatedIdleBackendsNeverHandedOut(t *testing.T) {
	const n = 9
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := StartProxy(t,
				WithEnv("PGSIDECAR_POOL__MODE", mode),
				WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(n)),
				WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			admin := adminConn(t)
			url := p.AppURL()

			// One after another.
			pids := fillPool(ctx, t, p, n)
			terminate(ctx, t, admin.PgConn(), pids)
			for i := range n {
				if err := liveQuery(ctx, url, pids); err != nil {
					t.Errorf("sequential client %d of %d after pg_terminate_backend: %v (SQLSTATE %s)", i+1, n, err, sqlState(err))
				}
			}

			// All at once.
			pids = fillPool(ctx, t, p, n)
			terminate(ctx, t, admin.PgConn(), pids)
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() { // ends when its one query is done (ctx bounds it)
					defer wg.Done()
					errs <- liveQuery(ctx, url, pids)
				}()
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if err != nil {
					failed++
					t.Errorf("concurrent client after pg_terminate_backend: %v (SQLSTATE %s)", err, sqlState(err))
				}
			}
			t.Logf("%s mode: %d of %d concurrent clients served", mode, n-failed, n)

			// No client at all: the maintainer's peek finds them.
			pids = fillPool(ctx, t, p, n)
			before := poolRetired(t, p, "validation")
			terminate(ctx, t, admin.PgConn(), pids)
			start := time.Now()
			waitFor(t, 5*time.Second, "the proxy to drop the terminated backends without a client", func() bool {
				return poolRetired(t, p, "validation")-before >= n
			})
			t.Logf("%s mode: %d terminated idle backends dropped %v after pg_terminate_backend, with no client",
				mode, n, time.Since(start).Round(time.Millisecond))
			if err := liveQuery(ctx, url, pids); err != nil {
				t.Fatalf("client after the drop: %v", err)
			}
		})
	}
}

// fillPool makes the proxy open n backends at once (n clients each hold a
// transaction open until all of them hold one) and leaves them idle in
// the pool, used a moment ago. It returns their pids.
func fillPool(ctx context.Context, t *testing.T, p *Proxy, n int) []string {
	t.Helper()
	url := p.AppURL()
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		c, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatalf("filling the pool: connect: %v", err)
		}
		t.Cleanup(func() { c.Close(context.Background()) }) // for the paths that fail early
		conns[i] = c
	}
	var (
		mu      sync.Mutex
		pids    []string
		wg      sync.WaitGroup
		holding sync.WaitGroup // every client is inside its transaction
	)
	holding.Add(n)
	errs := make(chan error, 2*n)
	for _, c := range conns {
		wg.Add(1)
		go func() { // ends when its transaction is done (ctx bounds it)
			defer wg.Done()
			res, err := c.Exec(ctx, "BEGIN; SELECT pg_backend_pid()").ReadAll()
			holding.Done()
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			pids = append(pids, string(res[1].Rows[0][0]))
			mu.Unlock()
			holding.Wait()
			if _, err := c.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	// The clients leave (in session mode that gives their backends back).
	for _, c := range conns {
		c.Close(ctx)
	}
	close(errs)
	for err := range errs {
		t.Fatalf("filling the pool: %v", err)
	}
	slices.Sort(pids)
	if pids = slices.Compact(pids); len(pids) != n {
		t.Fatalf("%d distinct backends for %d concurrent transactions, want %d", len(pids), n, n)
	}
	// In session mode the proxy resets a backend after its client left
	// before it is idle again.
	waitFor(t, 5*time.Second, fmt.Sprintf("%d idle backends", n), func() bool {
		return poolStat(t, p, "idle") == n
	})
	return pids
}

// terminate runs pg_terminate_backend on every pid and waits (up to 5s
// each) until they have exited: their FATAL ErrorResponse has then been
// sent, and usually their FIN. Without the wait a client can come before
// a backend has even begun to die (under load that takes milliseconds),
// and no proxy can see that on the socket: see the issue 7 report.
func terminate(ctx context.Context, t *testing.T, admin *pgconn.PgConn, pids []string) {
	t.Helper()
	sql := fmt.Sprintf("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM unnest('{%s}'::int[]) AS pid",
		strings.Join(pids, ","))
	res, err := admin.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("pg_terminate_backend: %v", err)
	}
	if got := string(res[0].Rows[0][0]); got != strconv.Itoa(len(pids)) {
		t.Fatalf("pg_terminate_backend ended %s of %d backends", got, len(pids))
	}
}

// liveQuery is one new client running one query through url; it fails if
// the query ran on one of the dead backends.
func liveQuery(ctx context.Context, url string, dead []string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SELECT pg_backend_pid()").ReadAll()
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	if pid := string(res[0].Rows[0][0]); slices.Contains(dead, pid) {
		return fmt.Errorf("served by backend %s, which was terminated", pid)
	}
	return nil
}

// poolRetired reads the first pool's retired count for reason from /stats.
func poolRetired(t *testing.T, p *Proxy, reason string) float64 {
	t.Helper()
	pools := statsPools(p.Stats(t))
	if len(pools) == 0 {
		t.Fatal("/stats has no pools")
	}
	r, _ := pools[0]["retired"].(map[string]any)
	v, _ := num(r, reason)
	return v
}

// Issue 7, point 8: max_waiters must not refuse clients while the pool
// can still open backends. With max_waiters 1 and room for 5 backends, 5
// clients arriving at once are all served (the old check refused every
// client beyond the first one waiting for its connect); and the limit
// still holds for clients that must wait for a release.
func TestMaxWaitersWithRoomToConnect(t *testing.T) {
	const size = 5
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(size)),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
		WithEnv("PGSIDECAR_POOL__MAX_WAITERS", "1"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := p.AppURL()

	// size clients connect first, then start their transactions together.
	conns := make([]*pgconn.PgConn, size)
	for i := range conns {
		c, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*size)
	start, finish := make(chan struct{}), make(chan struct{})
	for _, c := range conns {
		wg.Add(1)
		go func() { // ends when its transaction does (ctx bounds it)
			defer wg.Done()
			<-start
			if _, err := c.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				errs <- err
				return
			}
			select { // hold the backend until the checks below are done
			case <-finish:
			case <-ctx.Done():
			}
			_, err := c.Exec(ctx, "COMMIT").ReadAll()
			errs <- err
		}()
	}
	close(start)
	waitFor(t, 5*time.Second, fmt.Sprintf("%d active backends", size), func() bool {
		return poolStat(t, p, "active") == size
	})
	// The pool is full: one client may wait for a release, the next may not.
	waiter := make(chan error, 1)
	go func() { // ends when its query does (ctx bounds it)
		waiter <- oneQuery(ctx, url)
	}()
	waitFor(t, 5*time.Second, "one client waiting", func() bool {
		return poolStat(t, p, "waiting") == 1
	})
	err := oneQuery(ctx, url)
	if code := sqlState(err); code != "53300" || !strings.Contains(err.Error(), "max_waiters 1") {
		t.Errorf("second client waiting for a release: %v (SQLSTATE %s), want 53300 naming max_waiters", err, code)
	}

	close(finish)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("client arriving while the pool had room: %v (SQLSTATE %s)", err, sqlState(err))
		}
	}
	if err := <-waiter; err != nil {
		t.Errorf("the one client allowed to wait: %v", err)
	}
}

// Issue 7, point 3, without the wait: pg_terminate_backend only signals
// the backends, and clients that come a moment later can be handed one
// that has not yet acted on its SIGTERM (its socket is still quiet, so no
// peek can tell). Its first reply is FATAL 57P01; the proxy then sends
// the request to another backend (proxy/replay.go), so every client is
// served, one after another and all at once, in both modes.
func TestTerminatedIdleBackendsNoWaitReplayed(t *testing.T) {
	const n = 9
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := StartProxy(t,
				WithEnv("PGSIDECAR_POOL__MODE", mode),
				WithEnv("PGSIDECAR_POOL__MAX_SIZE", strconv.Itoa(n)),
				WithEnv("PGSIDECAR_POOL__MIN_SIZE", "2"),
				WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			admin := adminConn(t)
			url := p.AppURL()
			// The clients connect first, so that each query follows the
			// signal by a fraction of a millisecond.
			open := func() []*pgconn.PgConn {
				cs := make([]*pgconn.PgConn, n)
				for i := range cs {
					c, err := pgconn.Connect(ctx, url)
					if err != nil {
						t.Fatalf("connect: %v", err)
					}
					t.Cleanup(func() { c.Close(context.Background()) })
					cs[i] = c
				}
				return cs
			}
			query := func(c *pgconn.PgConn, dead []string) error {
				res, err := c.Exec(ctx, "SELECT pg_backend_pid()").ReadAll()
				if err != nil {
					return err
				}
				if pid := string(res[0].Rows[0][0]); slices.Contains(dead, pid) {
					return fmt.Errorf("served by backend %s, which was terminated", pid)
				}
				return nil
			}
			replayedBefore := poolRetired(t, p, "error")

			// Transaction mode: the clients are connected already.
			// Session mode binds a free backend at login, so there the
			// clients connect after the signal (the login gets the dying
			// backend, and the query must not).
			prepare := func() ([]string, []*pgconn.PgConn) {
				pids := fillPool(ctx, t, p, n)
				var cs []*pgconn.PgConn
				if mode == "transaction" {
					cs = open()
				}
				terminateNoWait(ctx, t, admin.PgConn(), pids)
				if mode == "session" {
					cs = open()
				}
				return pids, cs
			}
			pids, cs := prepare()
			for i, c := range cs {
				if err := query(c, pids); err != nil {
					t.Errorf("sequential client %d of %d right after pg_terminate_backend: %v (SQLSTATE %s)", i+1, n, err, sqlState(err))
				}
			}
			for _, c := range cs {
				c.Close(ctx)
			}

			pids, cs = prepare()
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for _, c := range cs {
				wg.Add(1)
				go func() { // ends when its one query is done (ctx bounds it)
					defer wg.Done()
					errs <- query(c, pids)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("concurrent client right after pg_terminate_backend: %v (SQLSTATE %s)", err, sqlState(err))
				}
			}
			t.Logf("%s mode: %v backends closed as dead under a client (replays)", mode, poolRetired(t, p, "error")-replayedBefore)
		})
	}
}

// terminateNoWait signals every pid with pg_terminate_backend and returns
// at once, as an operator's script does: the backends die a moment later.
func terminateNoWait(ctx context.Context, t *testing.T, admin *pgconn.PgConn, pids []string) {
	t.Helper()
	sql := fmt.Sprintf("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest('{%s}'::int[]) AS pid",
		strings.Join(pids, ","))
	res, err := admin.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("pg_terminate_backend: %v", err)
	}
	if got := string(res[0].Rows[0][0]); got != strconv.Itoa(len(pids)) {
		t.Fatalf("pg_terminate_backend signalled %s of %d backends", got, len(pids))
	}
}

// pool.max_waiters holds for requests the event loop queues, too: they
// wait in the loop's own queue for up to 100 ms before a goroutine takes
// them to the pool's queue, and counted only there, a request past the
// limit waited in the loop's queue first and was refused 100 ms late (or
// served, had a backend come free meanwhile). It is refused at once: the
// loop never hands it to a goroutine. Before the fix, both the allowed
// waiter and the refused one were handed over (2 hand-offs); now only the
// allowed one may be, when it has waited 100 ms.
func TestMaxWaitersRefusesAtTheLoop(t *testing.T) {
	p := StartProxy(t,
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "0"),
		WithEnv("PGSIDECAR_POOL__MAX_WAITERS", "1"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var holder, allowed, refused *pgconn.PgConn
	for _, c := range []**pgconn.PgConn{&holder, &allowed, &refused} {
		conn, err := pgconn.Connect(ctx, p.AppURL())
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil { // then it parks
			t.Fatalf("first query: %v", err)
		}
		*c = conn
	}
	if _, err := holder.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
		t.Fatalf("holder: %v", err)
	}
	_, before := lgLoopCounts(t, p)
	waited := make(chan error, 1)
	go func() { // ends when its query does (ctx bounds it)
		_, err := allowed.Exec(ctx, "SELECT 2").ReadAll()
		waited <- err
	}()
	waitFor(t, 5*time.Second, "one request waiting", func() bool {
		clients, _ := p.Stats(t)["clients"].(map[string]any)
		w, _ := num(clients, "clients_waiting")
		return w == 1
	})
	_, err := refused.Exec(ctx, "SELECT 3").ReadAll()
	if code := sqlState(err); code != "53300" || !strings.Contains(err.Error(), "max_waiters 1") {
		t.Errorf("a second request waiting: %v (SQLSTATE %s), want 53300 naming max_waiters", err, code)
	}
	if _, after := lgLoopCounts(t, p); after-before > 1 {
		t.Errorf("%d requests handed from the loop to a goroutine while one waited and one was refused; want at most the waiting one: the refused one waited in the loop's queue first", after-before)
	}
	if _, err := holder.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		t.Fatalf("holder's COMMIT: %v", err)
	}
	if err := <-waited; err != nil {
		t.Errorf("the request allowed to wait: %v", err)
	}
	if res, err := refused.Exec(ctx, "SELECT 4").ReadAll(); err != nil || string(res[0].Rows[0][0]) != "4" {
		t.Errorf("the refused client's next statement: %v %v, want 4: its session goes on", res, err)
	}
}

// TestMaxWaitersCountsTheLoopQueueForGoroutines: pool.max_waiters bounds
// the requests waiting for a pool in the event loop's queue and in the
// pool's own together, whoever the new waiter is. A plain-TCP client's
// request waits in the loop's queue (its first 100 ms); a TLS client,
// served by its own goroutine, then asks the pool itself (Acquire): with
// max_waiters 1 it must be refused at once with 53300, as a second loop
// request is (TestMaxWaitersRefusesAtTheLoop), and the loop's request,
// which came first, served once the backend is released. Counted only in
// the pool's queue, the TLS request waited instead, and the loop's
// request, handed to a goroutine after its 100 ms, found it there and was
// refused.
func TestMaxWaitersCountsTheLoopQueueForGoroutines(t *testing.T) {
	s := newTLSSetup(t)
	p := startTLSProxy(t, s, "allow",
		WithEnv("PGSIDECAR_POOL__MODE", "transaction"),
		WithEnv("PGSIDECAR_POOL__MAX_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MIN_SIZE", "1"),
		WithEnv("PGSIDECAR_POOL__MAX_WAITERS", "1"),
		WithEnv("PGSIDECAR_POOL__ACQUIRE_TIMEOUT", "10s"))
	holder := dialRaw(t, txProxyURL(p))
	inLoop := dialRaw(t, txProxyURL(p))
	overTLS := dialRaw(t, tlsURL(p, map[string]string{"sslmode": "require"}))
	for _, r := range []*rawClient{holder, inLoop, overTLS} {
		r.query(t, "SELECT 1") // the plain ones park after it: the loop reads their next request
	}
	holder.query(t, "BEGIN")
	inLoop.send(t, apQuery("SELECT 'waits in the loop'"))
	waitFor(t, 5*time.Second, "one request waiting", func() bool {
		return clientsStat(t, p, "clients_waiting") == 1
	})
	overTLS.send(t, apQuery("SELECT 'over TLS'"))
	got := apRead(overTLS, 1, 0, 0) // within 10 s
	if len(got) > 2 {
		got = got[len(got)-2:]
	}
	refused := len(got) == 2 && strings.Contains(got[0], "53300") && strings.Contains(got[0], "max_waiters 1")
	if !refused {
		t.Errorf("the TLS client's request while one waited in the loop's queue: %q, want 53300 naming max_waiters 1 at once", got)
	}
	holder.query(t, "COMMIT")
	if got, err := lgReplies(inLoop, 1, 10*time.Second); err != nil || !strings.Contains(strings.Join(got, " "), "waits in the loop") {
		t.Errorf("the request allowed to wait: %q %v", got, err)
	}
	if !refused {
		_, _ = lgReplies(overTLS, 1, 10*time.Second) // served late: read its reply before the next
	}
	if rows, _ := overTLS.query(t, "SELECT 'after'"); len(rows) != 1 || rows[0][0] != "after" {
		t.Errorf("the TLS client's next statement: %q: its session goes on", rows)
	}
}
