// Package lograte limits the log lines of a repeating event that anyone
// can cause (unmatched cancel requests, malformed startup packets,
// connections refused at a limit, refused admin writes): one line per
// interval, the next one carrying the count of the events held back, so a
// flood costs one line per interval instead of one per event while an
// operator still sees that it happens. An exact total belongs in a metric.
//
// Callers log that count under the key "unlogged" and the Limiter's
// Interval under "log_interval", on every line, so that one grep finds
// them all.
package lograte

import (
	"sync"
	"time"
)

// Limiter lets one log line of a repeating event through per Interval and
// counts the events it holds back. Set Interval before the first Allow;
// the zero value lets every line through. A Limiter must not be copied
// after first use. Its mutex is a leaf: nothing is locked under it.
type Limiter struct {
	Interval time.Duration

	mu       sync.Mutex
	next     time.Time // no line before this
	unlogged uint64    // events held back since the last line
}

// Allow reports whether to log the event happening at now and, when it
// does, how many events were held back since the previous line.
func (l *Limiter) Allow(now time.Time) (ok bool, unlogged uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.unlogged++
		return false, 0
	}
	l.next = now.Add(l.Interval)
	unlogged, l.unlogged = l.unlogged, 0
	return true, unlogged
}

// Interval is the Interval of every Limiter pgsidecar sets up: a flood
// costs at most six lines a minute per Limiter, and while it goes on an
// operator sees a line with its count every 10 s.
const Interval = 10 * time.Second
