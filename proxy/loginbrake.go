// The failed-login brake: each failed login from a source address makes
// that address's next attempt wait longer (loginBrake), and the login's
// use of it (brakeLogin, brakeFailed).

package proxy

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgwire"
)

// Bounds of the failed-login table.
const (
	// brakeMaxEntries caps the source addresses remembered. Past it,
	// entries past their time are dropped first, then arbitrary ones: an
	// attacker with more addresses than this can dilute the table, but
	// never grow it.
	brakeMaxEntries = 10000
	// brakeForgetFactor: an address with no attempt for this many times
	// the maximum delay is forgotten. Guessing that slowly to dodge the
	// brake is slower than the brake itself.
	brakeForgetFactor = 4
)

// loginBrake slows down password guessing. Each failed login from a source
// address doubles the time that address's next attempt waits before its
// password is checked, from the initial delay up to the maximum; a
// successful login from the address clears it. Attempts from one address
// are spaced by its current delay even when they arrive in parallel, so
// opening more connections does not guess faster. Other addresses are not
// slowed. IPv6 addresses count per /64, the block one host usually holds.
type loginBrake struct {
	mu      sync.Mutex
	entries map[netip.Addr]*brakeEntry
}

type brakeEntry struct {
	failures int       // since the last success
	next     time.Time // the next attempt is not answered before this
	last     time.Time // last attempt or failure, for forgetting
}

func newLoginBrake() *loginBrake {
	return &loginBrake{entries: make(map[netip.Addr]*brakeEntry)}
}

// brakeKey is the table key of a client address; false for addresses the
// brake does not apply to (not TCP, or loopback unless loopback is set).
func brakeKey(addr net.Addr, loopback bool) (netip.Addr, bool) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	if !ok {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	if ip.IsLoopback() && !loopback {
		return netip.Addr{}, false
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// brakeDelay is the delay after failures consecutive failures: initial,
// doubled per further failure, at most maxDelay.
func brakeDelay(initial, maxDelay time.Duration, failures int) time.Duration {
	if failures <= 0 || initial <= 0 {
		return 0
	}
	d := initial
	for i := 1; i < failures && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// admit returns how long an attempt from key starting at now waits before
// its password is checked, and reserves that slot so that a parallel
// attempt waits one delay longer. When the wait would exceed limit, nothing
// is reserved and ok is false: the caller refuses the attempt instead.
func (b *loginBrake) admit(key netip.Addr, now time.Time, initial, maxDelay, limit time.Duration) (wait time.Duration, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	if e == nil {
		return 0, true
	}
	if b.forgettable(e, now, maxDelay) {
		delete(b.entries, key)
		return 0, true
	}
	slot := e.next
	if slot.Before(now) {
		slot = now
	}
	wait = slot.Sub(now)
	if wait > limit {
		return wait, false
	}
	e.next = slot.Add(brakeDelay(initial, maxDelay, e.failures))
	e.last = now
	return wait, true
}

// failed records a failed login from key at now and returns the delay the
// address's next attempt will wait.
func (b *loginBrake) failed(key netip.Addr, now time.Time, initial, maxDelay time.Duration) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	if e == nil {
		if len(b.entries) >= brakeMaxEntries {
			b.evictLocked(now, maxDelay)
		}
		e = &brakeEntry{}
		b.entries[key] = e
	}
	e.failures++
	e.last = now
	d := brakeDelay(initial, maxDelay, e.failures)
	if next := now.Add(d); next.After(e.next) {
		e.next = next
	}
	return d
}

// succeeded clears key: the address knows a password.
func (b *loginBrake) succeeded(key netip.Addr) {
	b.mu.Lock()
	delete(b.entries, key)
	b.mu.Unlock()
}

func (b *loginBrake) forgettable(e *brakeEntry, now time.Time, maxDelay time.Duration) bool {
	return !now.Before(e.next) && now.Sub(e.last) > brakeForgetFactor*maxDelay
}

// evictLocked makes room: entries past their time first, then arbitrary
// ones (map order), down to 7/8 of the cap so that the next insert does
// not sweep again at once.
func (b *loginBrake) evictLocked(now time.Time, maxDelay time.Duration) {
	for k, e := range b.entries {
		if b.forgettable(e, now, maxDelay) {
			delete(b.entries, k)
		}
	}
	for k := range b.entries {
		if len(b.entries) < brakeMaxEntries-brakeMaxEntries/8 {
			break
		}
		delete(b.entries, k)
	}
}

// len is the number of addresses remembered.
func (b *loginBrake) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}

// brakeExchangeTime is left of the login deadline for the authentication
// exchange after a brake wait: a wait that would leave less is refused.
const brakeExchangeTime = time.Second

// brakeLogin makes a login attempt from conn wait its turn under the
// failed-login delay. braked says whether the brake applies to conn (then
// report the outcome under key). The error is for the client: the wait
// would outlast the login deadline, or the proxy is shutting down.
func (s *Server) brakeLogin(conn net.Conn, lg *slog.Logger, live *Config, deadline time.Time) (key netip.Addr, braked bool, err error) {
	if live.FailedLoginDelay <= 0 {
		return key, false, nil
	}
	key, braked = brakeKey(conn.RemoteAddr(), live.FailedLoginDelayLoopback)
	if !braked {
		return key, false, nil
	}
	now := time.Now()
	limit := time.Duration(math.MaxInt64) // no login deadline (client_login_timeout 0)
	if !deadline.IsZero() {
		limit = deadline.Sub(now) - brakeExchangeTime
	}
	wait, ok := s.brake.admit(key, now, live.FailedLoginDelay, live.FailedLoginDelayMax, limit)
	if !ok {
		s.stats.loginsThrottled.Add(1)
		return key, true, newFatal(pgwire.CodeInvalidAuthorization,
			fmt.Sprintf("too many failed logins from %s: the next attempt is accepted in %s", key, wait.Round(time.Millisecond)),
			"pgsidecar delays logins from an address after failed ones ("+live.option("FailedLoginDelay")+"); "+
				"check the password the application connects with, then retry")
	}
	if wait <= 0 {
		return key, true, nil
	}
	s.stats.loginsDelayed.Add(1)
	lg.Debug("login delayed after failed logins from this address", "delay", wait.Round(time.Millisecond))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return key, true, nil
	case <-s.quit:
		return key, true, newFatal(pgwire.CodeAdminShutdown, "pgsidecar is shutting down", "connect again in a moment")
	}
}

// brakeFailed records a failed login under key; an address reaching the
// maximum delay is logged (at most once per interval over all addresses).
func (s *Server) brakeFailed(key netip.Addr, lg *slog.Logger, live *Config) {
	d := s.brake.failed(key, time.Now(), live.FailedLoginDelay, live.FailedLoginDelayMax)
	if d < live.FailedLoginDelayMax {
		return
	}
	if ok, held := s.brakeLog.Allow(time.Now()); ok {
		lg.Warn("repeated failed logins from one address: its logins are delayed by "+live.option("FailedLoginDelayMax"),
			"address", key.String(), "delay", d, "unlogged", held, "log_interval", s.brakeLog.Interval)
	}
}
