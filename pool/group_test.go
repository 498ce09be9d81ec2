package pool

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// groupCounter counts the servers open across several fakeDBs (the
// whole group), with the peak.
type groupCounter struct {
	open, peak atomic.Int64
}

type countedServer struct {
	Server
	c *groupCounter
}

func (s countedServer) Close(ctx context.Context) error {
	s.c.open.Add(-1)
	return s.Server.Close(ctx)
}

// connect wraps db.connect so the counter sees every server.
func (gc *groupCounter) connect(db *fakeDB) ConnectFunc {
	return func(ctx context.Context) (Server, error) {
		srv, err := db.connect(ctx)
		if err != nil {
			return nil, err
		}
		n := gc.open.Add(1)
		for {
			p := gc.peak.Load()
			if n <= p || gc.peak.CompareAndSwap(p, n) {
				break
			}
		}
		return countedServer{srv, gc}, nil
	}
}

// groupPool is a pool of database for user in g, not waited for: with
// the group full its first connect waits for room.
func groupPool(t *testing.T, g *Group, db *fakeDB, database, user string, connect ConnectFunc) *Pool {
	t.Helper()
	cfg := testConfig(db, newLogRecorder())
	cfg.Name, cfg.Database, cfg.User = database+"/"+user, database, user
	cfg.MaxSize = 5
	cfg.Group = g
	if connect != nil {
		cfg.Connect = connect
	}
	p, err := newPool(cfg, options{degradeWindow: 100 * time.Millisecond, closeTimeout: time.Second})
	if err != nil {
		t.Fatalf("newPool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// TestGroupFIFOAcrossPools: a database capped at one backend, two roles
// (pools) whose waiters arrive interleaved; each is served in arrival
// order, whichever pool it waits in, and the database never has more
// than one server connection.
func TestGroupFIFOAcrossPools(t *testing.T) {
	g := NewGroup(0)
	g.SetDatabaseMax("db", 1)
	db := newFakeDB()
	a := groupPool(t, g, db, "db", "alice", nil)
	b := groupPool(t, g, db, "db", "bob", nil)

	holder := mustAcquire(t, a)
	const n = 8
	order := make(chan int, n)
	var wg sync.WaitGroup
	queued := map[*Pool]int{}
	for i := range n {
		p := a
		if i%2 == 0 {
			p = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(context.Background())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			c.Release()
		}()
		queued[p]++
		waitFor(t, "waiter queued", waiting(p, queued[p]))
	}
	if s := g.Stats(); s.Waiting != n || s.Databases["db"].Total != 1 {
		t.Fatalf("group before release: %+v, want %d waiting and 1 slot used", s, n)
	}
	holder.Release()
	wg.Wait()
	close(order)
	checkServedInOrder(t, order, n, "not FIFO across the two pools")
	if _, peak, _, _ := db.stats(); peak != 1 {
		t.Fatalf("peak server connections %d, want 1 (max_db_connections)", peak)
	}
	if s := g.Stats(); s.Waiting != 0 || s.Databases["db"].Total > 1 {
		t.Fatalf("group after the queue drained: %+v", s)
	}
}

// TestGroupCapsHoldUnderConcurrency: four pools in two databases, a
// database cap of 2 on db1 and a total cap of 3, 40 goroutines acquiring
// at random: every acquire succeeds and neither cap is ever exceeded in
// server connections (counted by the fake servers, closes included).
func TestGroupCapsHoldUnderConcurrency(t *testing.T) {
	g := NewGroup(3)
	g.SetDatabaseMax("db1", 2)
	db1, db2 := newFakeDB(), newFakeDB()
	var total groupCounter
	pools := []*Pool{
		groupPool(t, g, db1, "db1", "a", total.connect(db1)),
		groupPool(t, g, db1, "db1", "b", total.connect(db1)),
		groupPool(t, g, db2, "db2", "c", total.connect(db2)),
		groupPool(t, g, db2, "db2", "d", total.connect(db2)),
	}
	const workers, rounds = 40, 25
	var wg sync.WaitGroup
	var served atomic.Int64
	deadline := time.Now().Add(20 * time.Second)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				if time.Now().After(deadline) {
					t.Error("rounds did not finish in time")
					return
				}
				p := pools[r.IntN(len(pools))]
				c, err := p.Acquire(context.Background())
				if err != nil {
					t.Errorf("acquire on %s: %v", p.Name(), err)
					return
				}
				served.Add(1)
				if r.IntN(10) == 0 {
					c.Destroy("test: unknown state")
				} else {
					c.Release()
				}
			}
		}()
	}
	wg.Wait()
	if got := served.Load(); got != workers*rounds {
		t.Fatalf("%d acquisitions, want %d", got, workers*rounds)
	}
	if _, peak, _, _ := db1.stats(); peak > 2 {
		t.Fatalf("db1 peaked at %d server connections, over max_db_connections 2", peak)
	}
	if peak := total.peak.Load(); peak > 3 || peak < 2 {
		t.Fatalf("group peaked at %d server connections, want 2 or 3 (max_total_connections 3)", peak)
	}
	for _, p := range pools {
		p.Close()
	}
	if s := g.Stats(); s.Total != 0 || s.Waiting != 0 {
		t.Fatalf("group after every pool closed: %+v, want nothing counted", s)
	}
	if open := total.open.Load(); open != 0 {
		t.Fatalf("%d servers still open after Close", open)
	}
}

// TestGroupEvictsIdleForAnotherPool: alice's pool keeps two backends
// warm (min_size 2) and fills the database's cap; bob's first client is
// served by closing one of alice's idle backends, not after
// acquire_timeout, and alice does not warm back over the cap.
func TestGroupEvictsIdleForAnotherPool(t *testing.T) {
	for _, tc := range []struct {
		name              string
		total, dbCap      int
		aliceDB, bobDB    string
		wantScopeDatabase bool
	}{
		{"max_db_connections", 0, 2, "db", "db", true},
		{"max_total_connections", 2, 0, "db1", "db2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGroup(tc.total)
			if tc.dbCap > 0 {
				g.SetDatabaseMax(tc.aliceDB, tc.dbCap)
			}
			db := newFakeDB()
			cfg := testConfig(db, newLogRecorder())
			cfg.Name, cfg.Database, cfg.User = tc.aliceDB+"/alice", tc.aliceDB, "alice"
			cfg.MinSize, cfg.MaxSize, cfg.Group = 2, 5, g
			alice := startPool(t, cfg)
			waitFor(t, "alice warm", func() bool { return alice.Stats().Idle == 2 })

			bob := groupPool(t, g, db, tc.bobDB, "bob", nil)
			start := time.Now()
			c := mustAcquire(t, bob)
			if took := time.Since(start); took > time.Second {
				t.Fatalf("bob waited %s for a backend: alice's idle backend was not evicted", took)
			}
			if s := alice.Stats(); s.Retired.Idle != 1 || s.Total != 1 {
				t.Fatalf("alice after the eviction: %d open, %d retired idle; want 1 and 1", s.Total, s.Retired.Idle)
			}
			// Alice's maintainer must not take the slot back while bob holds it.
			time.Sleep(50 * time.Millisecond)
			if _, peak, _, _ := db.stats(); peak > 2 {
				t.Fatalf("peak %d server connections, over the cap of 2", peak)
			}
			if s := alice.Stats(); s.Total != 1 {
				t.Fatalf("alice warmed back to %d over the cap", s.Total)
			}
			c.Release()
		})
	}
}

// TestGroupCloseWhileWaiting: a pool closed while its waiter is queued
// on the full group fails that waiter with 57P01, withdraws its demand,
// and leaves no goroutine behind (TestMain's goleak); the group's count
// goes back to zero once every pool is closed.
func TestGroupCloseWhileWaiting(t *testing.T) {
	g := NewGroup(1)
	a := groupPool(t, g, newFakeDB(), "db1", "a", nil)
	b := groupPool(t, g, newFakeDB(), "db2", "b", nil)
	holder := mustAcquire(t, a)
	w := acquireAsync(context.Background(), b)
	waitFor(t, "b queued", func() bool { return g.Stats().Waiting == 1 })

	b.Close()
	select {
	case r := <-w:
		if r.err == nil {
			r.c.Release()
			t.Fatal("the waiter got a backend from a closed pool")
		}
		asAcquireError(t, r.err, pgwire.CodeAdminShutdown)
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter still waits after Close")
	}
	if s := g.Stats(); s.Waiting != 0 {
		t.Fatalf("group still holds %d demands of a closed pool", s.Waiting)
	}
	holder.Release()
	a.Close()
	if s := g.Stats(); s.Total != 0 {
		t.Fatalf("group counts %d slots after every pool closed", s.Total)
	}
}

// TestGroupRaisedCapServesWaiters: raising a cap (a reload) serves the
// waiters it blocked at once.
func TestGroupRaisedCapServesWaiters(t *testing.T) {
	g := NewGroup(0)
	g.SetDatabaseMax("db", 1)
	db := newFakeDB()
	a := groupPool(t, g, db, "db", "a", nil)
	b := groupPool(t, g, db, "db", "b", nil)
	holder := mustAcquire(t, a)
	w := acquireAsync(context.Background(), b)
	waitFor(t, "b queued", waiting(b, 1))
	g.SetDatabaseMax("db", 0) // 0 = no cap
	select {
	case r := <-w:
		if r.err != nil {
			t.Fatalf("after the cap was lifted: %v", r.err)
		}
		r.c.Release()
	case <-time.After(2 * time.Second):
		t.Fatal("lifting the cap did not serve the waiter")
	}
	holder.Release()
}

// TestGroupTimeoutNamesTheCap: a waiter that times out while its pool
// is below max_size but the database's cap is reached gets 53300 naming
// that cap, so the operator raises the right option.
func TestGroupTimeoutNamesTheCap(t *testing.T) {
	g := NewGroup(0)
	g.SetDatabaseMax("db", 1)
	db := newFakeDB()
	a := groupPool(t, g, db, "db", "a", nil)
	cfg := testConfig(db, newLogRecorder())
	cfg.Name, cfg.User, cfg.MaxSize, cfg.Group = "db/b", "b", 5, g
	cfg.AcquireTimeout = 50 * time.Millisecond
	cfg.OptionName = func(f string) string {
		return map[string]string{"MaxDBConnections": "max_db_connections"}[f]
	}
	b, err := newPool(cfg, options{degradeWindow: 100 * time.Millisecond, closeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	holder := mustAcquire(t, a)
	defer holder.Release()
	_, err = b.Acquire(context.Background())
	ae := asAcquireError(t, err, pgwire.CodeTooManyConnections)
	if !strings.Contains(ae.Message, "max_db_connections 1") || !strings.Contains(ae.Hint, "raise max_db_connections") {
		t.Fatalf("timeout error %q, hint %q: want the cap named", ae.Message, ae.Hint)
	}
}

// TestGroupLoweredCapTrimsSurplus: max_db_connections lowered to 1 below
// the backends two roles hold (3 idle, 2 held) closes the idle ones at
// once and one held one at its release, and the database's count ends at
// the new cap; another database's pool is left alone.
func TestGroupLoweredCapTrimsSurplus(t *testing.T) {
	g := NewGroup(0)
	db := newFakeDB()
	a := groupPool(t, g, db, "db", "a", nil)
	b := groupPool(t, g, db, "db", "b", nil)
	other := groupPool(t, g, db, "db2", "c", nil)
	var held []Conn
	for _, p := range []*Pool{a, b, a, a, b, other, other} {
		held = append(held, mustAcquire(t, p))
	}
	for _, c := range held[2:] {
		c.Release()
	}
	g.SetDatabaseMax("db", 1)
	waitFor(t, "the idle surplus closed", func() bool { return g.Stats().Databases["db"].Total == 2 })
	held[0].Release()
	waitFor(t, "a held backend closed at its release", func() bool { return g.Stats().Databases["db"].Total == 1 })
	held[1].Release()
	time.Sleep(50 * time.Millisecond)
	if n := a.Stats().Total + b.Stats().Total; n != 1 {
		t.Errorf("db's pools hold %d backends, want 1 (the cap)", n)
	}
	if n := other.Stats().Total; n != 2 {
		t.Errorf("db2's pool holds %d backends, want its 2 untouched", n)
	}
}
