// A log line at most once per interval for events anyone can repeat.

package health

import (
	"sync"
	"time"
)

// logInterval is how often a line about a repeatable refusal is written.
const logInterval = 10 * time.Second

// logLimiter lets a line through at most once per logInterval and counts
// the events held back meanwhile: anyone who reaches the listener can
// repeat a refused request or connection, but an operator must see that
// someone does. The zero value is ready.
type logLimiter struct {
	mu       sync.Mutex
	next     time.Time // no line before this
	unlogged uint64    // events held back since the last line
}

// allow reports whether to log the event happening at now and, when it
// does, how many events were held back since the previous line.
func (l *logLimiter) allow(now time.Time) (ok bool, unlogged uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.unlogged++
		return false, 0
	}
	l.next = now.Add(logInterval)
	unlogged, l.unlogged = l.unlogged, 0
	return true, unlogged
}
