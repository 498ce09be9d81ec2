// Group: caps on backends across pools (max_total_connections,
// max_db_connections), their slots granted to waiters in arrival order, and
// idle backends evicted for them.

package pool

import (
	"sync"
	"sync/atomic"
	"time"
)

// Group bounds the backends of many pools together: at most MaxTotal
// across every pool of the group (max_total_connections) and at most a
// database's own cap across the pools of that database, one per role
// (databases.<name>.max_db_connections). 0 means no cap, as in PgBouncer.
//
// A pool counts a backend against its group from the moment it starts the
// connect until the close is done (opening + open + closing), exactly as
// it counts it against MaxSize, so the caps hold for server connections,
// not only for established ones.
//
// Fairness. A pool whose waiters need new backends but find the group
// full queues one demand per such waiter in the group's queue, ordered by
// the waiter's arrival. A slot that frees (any backend of the group
// closing, a connect failing, a cap raised) goes to the oldest demand it
// can serve, whichever pool (role) queued it: the slot is reserved for
// that pool (a grant) and the pool is woken to connect. A backend that a
// client releases goes to its own pool's oldest waiter, unless another
// pool's demand in its scope is older: then it is closed and its slot
// goes to that demand (owedElsewhere). So waiters of a full database are
// served in arrival order across its roles, and a newcomer never takes a
// slot an older waiter is owed; the price, only while roles compete for
// a full cap, is a close and a connect per such hand-over.
//
// Idle eviction, as PgBouncer does: while demands wait, a pool in their
// scope (the same database when the database's cap blocks them, any pool
// when only the total does) closes idle backends to make room, even below
// its min_size, so a role never starves behind another role's idle
// backends. Evictions in flight are counted, so one demand closes one
// backend.
//
// A cap lowered below the backends counted against it (SIGHUP) leaves a
// surplus: the pools in its scope close their idle backends beyond it at
// once (their maintainers are woken), the coldest first and whatever
// min_size says, and a backend released while the surplus lasts is closed
// instead of going back idle (trim). Closes in flight are counted, so one
// backend too many closes one.
//
// Locking: a pool calls into its group with its own mutex held (pool,
// then group); the group never takes a pool's mutex, it only wakes pools
// (poke, a non-blocking send). The group has no goroutine of its own.
type Group struct {
	pressure atomic.Int64 // len(queue), readable without mu (Release's hot path)
	surplus  atomic.Bool  // more backends counted than a cap allows (a cap was lowered); readable without mu

	mu       sync.Mutex
	maxTotal int // 0 = no cap
	used     int // slots held across the group, grants included
	dbs      map[string]*groupDB
	queue    []demand // oldest first; one entry per waiter that waits for a slot
	queued   map[*Pool]int
	granted  map[*Pool]int // slots reserved for a pool, not yet used by a connect
	// evictingTotal counts idle backends being closed for demands that
	// only the total cap blocks.
	evictingTotal int
	// trimming counts backends being closed for a surplus (trim).
	trimming int
}

// demand is one waiter of p that waits for a slot; at is its arrival.
type demand struct {
	p  *Pool
	at time.Time
}

// groupDB is one database's share of a group.
type groupDB struct {
	max      int // 0 = no cap
	used     int
	evicting int // idle backends being closed for this database's demands
	trimming int // backends of this database being closed for a surplus
	pools    map[*Pool]struct{}
}

// NewGroup returns a group with the given total cap (0 = none).
func NewGroup(maxTotal int) *Group {
	return &Group{
		maxTotal: max(maxTotal, 0),
		dbs:      map[string]*groupDB{},
		queued:   map[*Pool]int{},
		granted:  map[*Pool]int{},
	}
}

// GroupStats is a snapshot of a group's caps and use.
type GroupStats struct {
	MaxTotal  int                       `json:"max_total_connections"` // 0 = no cap
	Total     int                       `json:"total"`                 // backends counted (opening, open, closing) and slots reserved
	Waiting   int                       `json:"waiting"`               // waiters blocked by a cap
	Databases map[string]GroupDatabases `json:"databases"`
}

// GroupDatabases is one database's line of GroupStats.
type GroupDatabases struct {
	MaxDBConnections int `json:"max_db_connections"` // 0 = no cap
	Total            int `json:"total"`
}

// Stats returns the group's caps and current use.
func (g *Group) Stats() GroupStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := GroupStats{MaxTotal: g.maxTotal, Total: g.used, Waiting: len(g.queue), Databases: map[string]GroupDatabases{}}
	for name, d := range g.dbs {
		s.Databases[name] = GroupDatabases{MaxDBConnections: d.max, Total: d.used}
	}
	return s
}

// SetMaxTotal sets the cap across the group (0 = none). Lowered below
// the backends counted, it wakes every pool to close its idle backends
// beyond it at once; held ones close at their release (trim).
func (g *Group) SetMaxTotal(n int) {
	g.mu.Lock()
	g.maxTotal = max(n, 0)
	g.dispatchLocked()
	if g.noteSurplusLocked() && g.maxTotal > 0 && g.used-g.trimming > g.maxTotal {
		for _, d := range g.dbs {
			for p := range d.pools {
				p.poke()
			}
		}
	}
	g.mu.Unlock()
}

// SetDatabaseMax sets database's cap across its pools (0 = none), as
// SetMaxTotal does for the group.
func (g *Group) SetDatabaseMax(database string, n int) {
	g.mu.Lock()
	d := g.dbLocked(database)
	d.max = max(n, 0)
	g.dispatchLocked()
	if g.noteSurplusLocked() && d.max > 0 && d.used-d.trimming > d.max {
		for p := range d.pools {
			p.poke()
		}
	}
	g.mu.Unlock()
}

// noteSurplusLocked records whether any cap has more backends counted
// against it than it allows, and returns it.
func (g *Group) noteSurplusLocked() bool {
	over := g.maxTotal > 0 && g.used > g.maxTotal
	for _, d := range g.dbs {
		over = over || d.max > 0 && d.used > d.max
	}
	g.surplus.Store(over)
	return over
}

// trimNeedLocked is how many more of mine's backends must close for the
// caps that count them to hold, closes in flight for a surplus aside.
func (g *Group) trimNeedLocked(mine *groupDB) int {
	need := 0
	if g.maxTotal > 0 {
		need = g.used - g.trimming - g.maxTotal
	}
	if mine.max > 0 {
		need = max(need, mine.used-mine.trimming-mine.max)
	}
	return max(need, 0)
}

// trim says how many of p's idle backends (at most idle) to close now for
// a surplus, counting them as closes in flight; the caller closes them
// and marks each evictSurplus. With p.mu held.
func (g *Group) trim(p *Pool, idle int) int {
	if g == nil || idle == 0 || !g.surplus.Load() {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mine := g.dbLocked(p.cfg.Database)
	n := min(g.trimNeedLocked(mine), idle)
	g.trimming += n
	mine.trimming += n
	return n
}

func (g *Group) dbLocked(name string) *groupDB {
	d := g.dbs[name]
	if d == nil {
		d = &groupDB{pools: map[*Pool]struct{}{}}
		g.dbs[name] = d
	}
	return d
}

// noCap stands for "as many as wanted" where no cap applies; far above
// any pool's MaxSize, and small enough to add grants to.
const noCap = 1 << 30

// freeLocked is how many more slots database d may take now under both caps.
func (g *Group) freeLocked(d *groupDB) int {
	free := noCap
	if g.maxTotal > 0 {
		free = g.maxTotal - g.used
	}
	if d.max > 0 {
		free = min(free, d.max-d.used)
	}
	return max(free, 0)
}

// capReached names the Config-style field of the cap that keeps p's
// database from opening more now ("MaxDBConnections" or
// "MaxTotalConnections") and its value; "" when neither is reached.
func (g *Group) capReached(p *Pool) (field string, limit int) {
	if g == nil {
		return "", 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch d := g.dbLocked(p.cfg.Database); {
	case d.max > 0 && d.used >= d.max:
		return "MaxDBConnections", d.max
	case g.maxTotal > 0 && g.used >= g.maxTotal:
		return "MaxTotalConnections", g.maxTotal
	}
	return "", 0
}

// capped reports whether any cap is set: only then does a slot's release
// need to wait for the server (closeServer).
func (g *Group) capped() bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.maxTotal > 0 {
		return true
	}
	for _, d := range g.dbs {
		if d.max > 0 {
			return true
		}
	}
	return false
}

// join adds p to the group (New).
func (g *Group) join(p *Pool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.dbLocked(p.cfg.Database).pools[p] = struct{}{}
	g.mu.Unlock()
}

// leave takes p out of the group (Close, with p.mu held): its demands
// and grants go to the others. Slots of its backends still closing are
// given back by release as usual.
func (g *Group) leave(p *Pool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.wantLocked(p, nil)
	delete(g.dbLocked(p.cfg.Database).pools, p)
	g.mu.Unlock()
}

// avail is how many connects p may start now: its grants plus the free
// slots (free slots exist only while no queued demand can use them, see
// dispatchLocked, so taking them skips nobody). With p.mu held.
func (g *Group) avail(p *Pool) int {
	if g == nil {
		return noCap
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.granted[p] + g.freeLocked(g.dbLocked(p.cfg.Database))
}

// take counts one connect of p against the caps: a grant if it has one,
// else a free slot. The caller checked avail. With p.mu held.
func (g *Group) take(p *Pool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.granted[p] > 0 {
		g.granted[p]--
		if g.granted[p] == 0 {
			delete(g.granted, p)
		}
		return
	}
	g.used++
	g.dbLocked(p.cfg.Database).used++
}

// evictScope says for whose demand an idle backend was closed, so its
// slot's release ends the eviction in flight.
type evictScope uint8

const (
	evictNone     evictScope = iota
	evictDatabase            // for a demand of the same database (its cap)
	evictTotal               // for a demand anywhere (the total cap)
	evictSurplus             // for a cap lowered below the backends counted (trim)
)

// release gives back the slot of one of p's backends (a connect that
// failed, a close that is done) and hands it to the oldest demand it can
// serve.
func (g *Group) release(p *Pool, scope evictScope) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.dbLocked(p.cfg.Database)
	g.used--
	d.used--
	switch scope {
	case evictDatabase:
		d.evicting = max(d.evicting-1, 0)
	case evictTotal:
		g.evictingTotal = max(g.evictingTotal-1, 0)
	case evictSurplus:
		g.trimming = max(g.trimming-1, 0)
		d.trimming = max(d.trimming-1, 0)
	}
	g.dispatchLocked()
	if g.surplus.Load() {
		g.noteSurplusLocked()
	}
}

// want sets the slots p waits for: one per waiter whose connect only the
// group's caps hold back, at being those waiters' arrivals, oldest first.
// p's demands are replaced by these (so they keep their place by arrival,
// whatever happened meanwhile); grants beyond len(at) go back. With p.mu
// held.
func (g *Group) want(p *Pool, at []time.Time) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.wantLocked(p, at)
	g.mu.Unlock()
}

func (g *Group) wantLocked(p *Pool, at []time.Time) {
	n := len(at)
	if extra := g.granted[p] - n; extra > 0 {
		d := g.dbLocked(p.cfg.Database)
		g.granted[p] -= extra
		if g.granted[p] == 0 {
			delete(g.granted, p)
		}
		g.used -= extra
		d.used -= extra
		defer g.dispatchLocked()
	}
	at = at[g.granted[p]:] // the oldest are served by the grants
	have := g.queued[p]
	if have == 0 && len(at) == 0 {
		return
	}
	grew := len(at) > have
	if have > 0 {
		kept := g.queue[:0]
		for _, d := range g.queue {
			if d.p != p {
				kept = append(kept, d)
			}
		}
		clear(g.queue[len(kept):])
		g.queue = kept
	}
	for _, t := range at {
		// Insert by arrival; new waiters arrive last, so this scans little.
		i := len(g.queue)
		for i > 0 && g.queue[i-1].at.After(t) {
			i--
		}
		g.queue = append(g.queue, demand{})
		copy(g.queue[i+1:], g.queue[i:])
		g.queue[i] = demand{p: p, at: t}
	}
	if len(at) == 0 {
		delete(g.queued, p)
	} else {
		g.queued[p] = len(at)
	}
	g.pressure.Store(int64(len(g.queue)))
	if grew {
		// A slot freed between p's look at avail and now would otherwise
		// wait for the next release.
		g.dispatchLocked()
		g.askEvictionsLocked(p)
	}
}

// owedElsewhere is asked when a client releases one of p's backends while
// p's oldest waiter arrived at head: if another pool's demand that this
// backend's slot can serve is older, the backend is to be closed for it
// (its scope is returned, and counted as an eviction in flight); else
// evictNone and p keeps it. With p.mu held.
func (g *Group) owedElsewhere(p *Pool, head time.Time) evictScope {
	if g == nil || g.pressure.Load() == 0 {
		return evictNone
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mine := g.dbLocked(p.cfg.Database)
	forDB, forTotal := g.blockedLocked(p, mine, head)
	switch {
	case forDB > mine.evicting:
		mine.evicting++
		return evictDatabase
	case forTotal > g.evictingTotal:
		g.evictingTotal++
		return evictTotal
	}
	return evictNone
}

// blockedLocked counts the demands of pools other than p that arrived
// before `before` (zero: all) and that a slot of p's database mine would
// serve: forDB those of mine blocked by its cap, forTotal those anywhere
// blocked only by the total cap.
func (g *Group) blockedLocked(p *Pool, mine *groupDB, before time.Time) (forDB, forTotal int) {
	for _, dm := range g.queue {
		if !before.IsZero() && !dm.at.Before(before) {
			break
		}
		if dm.p == p {
			continue
		}
		switch d := g.dbLocked(dm.p.cfg.Database); {
		case d.max > 0 && d.used >= d.max:
			if d == mine {
				forDB++
			}
		case g.maxTotal > 0 && g.used >= g.maxTotal:
			forTotal++
		}
	}
	return forDB, forTotal
}

// dispatchLocked hands free slots to the oldest demands they can serve,
// and wakes the pools that got one. Afterwards no queued demand can be
// served by a free slot, which is what lets avail offer free slots to
// anyone.
func (g *Group) dispatchLocked() {
	kept := g.queue[:0]
	for _, dm := range g.queue {
		p := dm.p
		d := g.dbLocked(p.cfg.Database)
		if g.freeLocked(d) == 0 {
			kept = append(kept, dm)
			continue
		}
		g.used++
		d.used++
		g.granted[p]++
		if g.queued[p]--; g.queued[p] == 0 {
			delete(g.queued, p)
		}
		p.poke()
	}
	clear(g.queue[len(kept):])
	g.queue = kept
	g.pressure.Store(int64(len(g.queue)))
}

// askEvictionsLocked wakes the pools that may hold idle backends for
// p's database's demands: those of the same database, or every pool when
// the total cap is what blocks.
func (g *Group) askEvictionsLocked(p *Pool) {
	d := g.dbLocked(p.cfg.Database)
	if d.max > 0 && d.used >= d.max {
		for q := range d.pools {
			if q != p {
				q.poke()
			}
		}
		return
	}
	for _, d := range g.dbs {
		for q := range d.pools {
			if q != p {
				q.poke()
			}
		}
	}
}

// evictions says how many of its idle backends p should close now for
// other pools' demands, and for which scope each: one per demand blocked
// by a cap that p's backends count against, minus the evictions already
// in flight for it. With p.mu held; the caller closes them and marks each
// with its scope.
func (g *Group) evictions(p *Pool, idle int) []evictScope {
	if g == nil || idle == 0 || g.pressure.Load() == 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mine := g.dbLocked(p.cfg.Database)
	forDB, forTotal := g.blockedLocked(p, mine, time.Time{})
	forDB = max(forDB-mine.evicting, 0)
	forTotal = max(forTotal-g.evictingTotal, 0)
	var out []evictScope
	for ; forDB > 0 && len(out) < idle; forDB-- {
		out = append(out, evictDatabase)
		mine.evicting++
	}
	for ; forTotal > 0 && len(out) < idle; forTotal-- {
		out = append(out, evictTotal)
		g.evictingTotal++
	}
	return out
}
