// Roles: one database's pools per role for auth.passthrough, each opened at
// the role's first login and connecting with the SCRAM keys of its latest
// (ScramKeys).

package pool

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// ScramKeys are what a SCRAM-SHA-256 client proved it knows: the ClientKey
// recovered from its proof, and the ServerKey of the verifier it was
// checked against (to check the server's signature in turn). With them the
// proxy logs in to the server as that role without its password, because
// the server's verifier has the same salt, iterations and keys.
type ScramKeys struct {
	ClientKey, ServerKey []byte
}

// Roles is the one place pools per (database, role) are made: a pool per
// role of one database, each from the same base Config with User (and
// Name) set to the role, opened at the role's first login (auth.passthrough).
// A role's pool connects with the keys of its latest login.
type Roles struct {
	// connect builds a role's ConnectFunc; keys returns the role's latest
	// keys at each connect.
	connect func(role string, keys func() ScramKeys) ConnectFunc

	// mu is held across the pools' Pause and Resume (lock order: Roles,
	// then Pool), so that a pool Open creates meanwhile cannot miss a
	// PAUSE or a RESUME.
	mu    sync.Mutex
	base  Config
	roles map[string]*rolePool
	// paused: the database is paused (console PAUSE); pools Open creates
	// start paused, as the roles' pools that exist were paused.
	paused bool
	closed bool
}

type rolePool struct {
	pool *Pool
	keys atomic.Pointer[ScramKeys]
}

// NewRoles serves one database's roles with pools made from base (its
// Connect is ignored: connect makes each role's).
func NewRoles(base Config, connect func(role string, keys func() ScramKeys) ConnectFunc) *Roles {
	return &Roles{connect: connect, base: base, roles: map[string]*rolePool{}}
}

// errRolesClosed is Open's answer once Close has begun.
var errRolesClosed = errors.New("pgsidecar is shutting down")

// Open returns role's pool, creating it on the role's first login, and
// makes keys the ones its next connects use. created says the pool is new.
func (r *Roles) Open(role string, keys ScramKeys) (p *Pool, created bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, false, errRolesClosed
	}
	if rp := r.roles[role]; rp != nil {
		rp.keys.Store(&keys)
		return rp.pool, false, nil
	}
	rp := &rolePool{}
	rp.keys.Store(&keys)
	cfg := r.roleConfig(role)
	cfg.Connect = r.connect(role, func() ScramKeys { return *rp.keys.Load() })
	if rp.pool, err = New(cfg); err != nil {
		return nil, false, fmt.Errorf("pool for role %q: %w", role, err)
	}
	if r.paused {
		// Before anyone has it: its first client waits for RESUME like
		// the other roles' clients. The wait for holders ends at once:
		// none can hold a backend of a pool nobody has yet.
		rp.pool.Pause()
	}
	r.roles[role] = rp
	return rp.pool, true, nil
}

// roleConfig is base for role. Called with r.mu held.
func (r *Roles) roleConfig(role string) Config {
	cfg := r.base
	cfg.User = role
	cfg.Name = cfg.Database + "/" + role
	// The database's own pool (base) is named database/user as well: the
	// pool of the role that is that user needs a name of its own, or
	// /stats would list two pools one cannot tell apart and /metrics two
	// series with one label set (every scrape drops one and logs it).
	if cfg.Name == r.base.Name {
		cfg.Name += " (passthrough)"
	}
	return cfg
}

// Pools returns the open pools, by role name.
func (r *Roles) Pools() []*Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Pool, 0, len(r.roles))
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range r.roles {
			if !yield(n) {
				return
			}
		}
	}) {
		out = append(out, r.roles[name].pool)
	}
	return out
}

// Pause pauses every role's pool and makes the pools opened until Resume
// start paused. The channels are the pools' Pause channels: each closes
// once its pool holds no backend any more.
func (r *Roles) Pause() []<-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = true
	out := make([]<-chan struct{}, 0, len(r.roles))
	for _, rp := range r.roles {
		out = append(out, rp.pool.Pause())
	}
	return out
}

// Resume resumes every role's pool (and resets its circuit breaker, see
// Pool.Resume); pools opened later start running.
func (r *Roles) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = false
	for _, rp := range r.roles {
		rp.pool.Resume()
	}
}

// Reconnect recycles every backend of every role's pool (Pool.Reconnect).
// Pools opened later have only new backends anyway.
func (r *Roles) Reconnect() {
	for _, p := range r.Pools() {
		p.Reconnect()
	}
}

// Reconfigure applies new base settings to every open pool and to the
// pools opened later (Connect is kept per role).
func (r *Roles) Reconfigure(base Config) {
	r.mu.Lock()
	r.base = base
	cfg := base
	cfg.Connect = nil // Reconfigure keeps each role's own
	pools := make([]*Pool, 0, len(r.roles))
	for _, rp := range r.roles {
		pools = append(pools, rp.pool)
	}
	r.mu.Unlock()
	for _, p := range pools {
		p.Reconfigure(cfg) // keeps Name, Database and User
	}
}

// Close closes every pool and refuses new ones; it returns when they have
// stopped.
func (r *Roles) Close() {
	r.mu.Lock()
	r.closed = true
	roles := r.roles
	r.roles = map[string]*rolePool{}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, rp := range roles {
		wg.Add(1)
		go func() { defer wg.Done(); rp.pool.Close() }() // ends when the pool has stopped
	}
	wg.Wait()
}
