// The Server's operations for operators: snapshots (Clients, Pools,
// Servers, HasDatabase) and commands (Pause, Resume, Reconnect, Kill),
// which the admin console, the HTTP admin endpoints and /clients call.

package proxy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// ClientInfo describes one connected client, for SHOW CLIENTS and
// /clients.
type ClientInfo struct {
	PID             uint32    `json:"pid"` // the proxy-minted BackendKeyData pid
	Database        string    `json:"database"`
	User            string    `json:"user"`
	Addr            string    `json:"addr"`
	ApplicationName string    `json:"application_name"`
	State           string    `json:"state"` // "active" (holds a backend) or "idle"
	Connected       time.Time `json:"connected"`
}

// Clients lists the logged-in clients (console sessions excepted), oldest
// first.
func (s *Server) Clients() []ClientInfo {
	s.mu.Lock()
	out := make([]ClientInfo, 0, len(s.clients))
	for c := range s.clients {
		c.mu.Lock()
		state := "idle"
		if c.be != nil {
			state = "active"
		}
		app := currentAppName(c.params.want)
		c.mu.Unlock()
		// The pid under the cancel keys' lock: a client is listed from
		// before its login mints its key (or takes its backend's).
		out = append(out, ClientInfo{PID: s.cancels.pidOf(c), Database: c.db.Name, User: c.identity.user, Addr: c.identity.addr,
			ApplicationName: app, State: state, Connected: c.identity.since})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ClientInfo) int { return a.Connected.Compare(b.Connected) })
	return out
}

// databases is every database served now: the configured ones and those
// a "*" entry has opened.
func (s *Server) databases() map[string]*Database {
	live := s.live.Load()
	out := maps.Clone(live.Databases)
	if w := live.Wildcard; w != nil && w.Opened != nil {
		for _, d := range w.Opened() {
			if _, ok := out[d.Name]; !ok {
				out[d.Name] = d
			}
		}
	}
	return out
}

// HasDatabase reports whether name is a database served now.
func (s *Server) HasDatabase(name string) bool {
	_, ok := s.databases()[name]
	return ok
}

// Pools snapshots every database's pool, in database-name order.
func (s *Server) Pools() []pool.Stats {
	dbs := s.databases()
	out := make([]pool.Stats, 0, len(dbs))
	for _, name := range slices.Sorted(maps.Keys(dbs)) {
		for _, p := range dbs[name].pools() {
			out = append(out, p.Stats())
		}
	}
	return out
}

// pools is the database's own pool and, under auth.passthrough, its roles'
// pools, which the console and the JSON reads list beside it.
func (db *Database) pools() []*pool.Pool {
	ps := []*pool.Pool{db.Pool}
	if db.Passthrough != nil {
		ps = append(ps, db.Passthrough.Roles.Pools()...)
	}
	return ps
}

// Servers lists every backend of every pool.
func (s *Server) Servers() []pool.BackendInfo {
	dbs := s.databases()
	var out []pool.BackendInfo
	for _, name := range slices.Sorted(maps.Keys(dbs)) {
		for _, p := range dbs[name].pools() {
			out = append(out, p.Backends()...)
		}
	}
	if out == nil {
		out = []pool.BackendInfo{}
	}
	return out
}

// databasesNamed returns the database named db, or every one for "".
func (s *Server) databasesNamed(db string) ([]*Database, error) {
	dbs := s.databases()
	if db == "" {
		out := make([]*Database, 0, len(dbs))
		for _, name := range slices.Sorted(maps.Keys(dbs)) {
			out = append(out, dbs[name])
		}
		return out, nil
	}
	if d, ok := dbs[db]; ok {
		return []*Database{d}, nil
	}
	names := slices.Sorted(maps.Keys(dbs))
	return nil, newError(pgwire.CodeInvalidCatalogName, fmt.Sprintf("database %q is not served by pgsidecar", db),
		"pgsidecar serves: "+strings.Join(names, ", ")+"; leave the name out for all of them")
}

// Pause pauses the pools of db ("" = all, and the "*" databases opened
// until RESUME) and waits, until ctx ends, for
// the transactions in flight to end. A database's pools are all of them:
// under auth.passthrough its roles' pools too, and those its roles open
// until RESUME start paused, as PgBouncer's PAUSE db holds every pool of
// db. (The auth user's lookup pool keeps running: logins still complete,
// their transactions wait.) It returns how many backends are still held
// when it stops waiting.
func (s *Server) Pause(ctx context.Context, db string) (held int, err error) {
	if w := s.live.Load().Wildcard; db == "" && w != nil && w.SetPaused != nil {
		// Before listing: a "*" database opened meanwhile starts paused.
		w.SetPaused(true)
	}
	dbs, err := s.databasesNamed(db)
	if err != nil {
		return 0, err
	}
	var waits []<-chan struct{}
	for _, d := range dbs {
		waits = append(waits, d.Pool.Pause())
		if d.Passthrough != nil {
			waits = append(waits, d.Passthrough.Roles.Pause()...)
		}
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
		}
	}
	for _, d := range dbs {
		for _, p := range d.pools() {
			held += p.Stats().Active
		}
	}
	return held, nil
}

// Resume resumes the pools of db ("" = all), its roles' pools included,
// and resets their circuit breakers.
func (s *Server) Resume(db string) error {
	if w := s.live.Load().Wildcard; db == "" && w != nil && w.SetPaused != nil {
		w.SetPaused(false)
	}
	dbs, err := s.databasesNamed(db)
	for _, d := range dbs {
		d.Pool.Resume()
		if d.Passthrough != nil {
			d.Passthrough.Roles.Resume()
		}
	}
	return err
}

// Reconnect recycles every backend of the pools of db ("" = all): idle
// ones now, held ones at their release.
func (s *Server) Reconnect(db string) error {
	dbs, err := s.databasesNamed(db)
	for _, d := range dbs {
		d.reconnect()
	}
	return err
}

// reconnect recycles the backends of every pool of d: its own, and under
// auth.passthrough its roles' and the auth user's lookup pool.
func (d *Database) reconnect() {
	d.Pool.Reconnect()
	if pt := d.Passthrough; pt != nil {
		pt.Roles.Reconnect()
		pt.Verifiers.Pool.Reconnect()
	}
}

// Kill disconnects every client of db ("" = all) with FATAL 57P01 (an
// open transaction is rolled back) and recycles the pools' backends. It
// returns how many clients were told to go.
func (s *Server) Kill(db string) (int, error) {
	dbs, err := s.databasesNamed(db)
	if err != nil {
		return 0, err
	}
	// By name: a passthrough client's Database is its role's, not the
	// one the console names.
	names := make(map[string]bool, len(dbs))
	for _, d := range dbs {
		names[d.Name] = true
	}
	n := 0
	s.mu.Lock()
	for c := range s.clients {
		if names[c.db.Name] {
			c.closeWith(newFatal(pgwire.CodeAdminShutdown,
				"terminating connection due to administrator command: KILL from the pgsidecar admin console",
				"reconnect; an open transaction was rolled back"))
			n++
		}
	}
	s.mu.Unlock()
	for _, d := range dbs {
		d.reconnect()
	}
	return n, nil
}
