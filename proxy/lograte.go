// logLimiter: one log line per interval for a repeating event, with a
// count of those held back.

package proxy

import (
	"sync"
	"time"
)

// logLimiter lets one log line of a repeating event through per interval
// and counts the events it holds back, so a flood (unmatched cancel
// requests, say) costs one line per interval instead of one per event. The
// next line carries the count; an exact total belongs in a metric.
type logLimiter struct {
	interval time.Duration

	mu         sync.Mutex
	next       time.Time // no line before this
	suppressed uint64    // events held back since the last line
}

// allow reports whether to log the event happening at now and, when it
// does, how many events were held back since the previous line.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	l.next = now.Add(l.interval)
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
