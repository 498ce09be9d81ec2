// Reconnect backoff and backend lifetimes: the doubling, capped delay after
// failed connects and each backend's MaxLifetime, both with random jitter.

package pool

import (
	"math/rand/v2"
	"time"
)

// backoffJitter is the fraction of a reconnect delay taken off at random,
// so that many sidecars that lost the same database do not all reconnect
// in the same instant.
const backoffJitter = 0.2

// backoffDelay is the delay before the next connect attempt after
// `failures` consecutive failed ones (failures >= 1): initial doubled per
// failure and capped at maxDelay, without jitter. With the defaults the
// schedule is 1s, 2s, 4s, 8s, 16s, 16s, ...
func backoffDelay(initial, maxDelay time.Duration, failures int) time.Duration {
	if failures < 1 || initial <= 0 {
		return 0
	}
	d := initial
	for i := 1; i < failures; i++ {
		if d >= maxDelay/2 {
			// Doubling again would reach or pass the cap (and,
			// for absurd caps, could overflow).
			return maxDelay
		}
		d *= 2
	}
	return min(d, maxDelay)
}

// jittered takes up to frac of d off, scaled by r in [0, 1).
func jittered(d time.Duration, frac, r float64) time.Duration {
	return d - time.Duration(float64(d)*frac*r)
}

// nextRetry is the jittered delay the pool waits after `failures`
// consecutive failed connects.
func (c Config) nextRetry(failures int) time.Duration {
	return jittered(backoffDelay(c.BackoffInitial, c.BackoffMax, failures), backoffJitter, rand.Float64())
}

// lifetimeOf is one backend's lifetime: MaxLifetime minus up to
// LifetimeJitter of it, chosen by the backend's own r in [0, 1) so the
// backends opened in one burst do not all retire in one burst. 0 means
// unlimited.
func lifetimeOf(maxLifetime time.Duration, jitter, r float64) time.Duration {
	if maxLifetime <= 0 {
		return 0
	}
	return jittered(maxLifetime, jitter, r)
}
