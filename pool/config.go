package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Off asks for the zero meaning of a numeric Config field (no warm
// connections, validate on every acquire, unlimited lifetime, no jitter,
// no idle limit, no query limit, no leak detection). It exists because a
// zero value means "use the default", so a configuration layer that reads
// an explicit 0 from a file passes Off instead.
const Off = -1

// NoValidation, as Config.ValidationQuery, disables validation ("" means
// the default "SELECT 1", for the same reason as Off).
const NoValidation = "-"

// Default values applied by New and Reconfigure to zero fields.
const (
	DefaultMinSize           = 2
	DefaultMaxSize           = 10
	DefaultAcquireTimeout    = 30 * time.Second
	DefaultValidationQuery   = "SELECT 1"
	DefaultValidateAfterIdle = time.Second
	DefaultMaxLifetime       = time.Hour
	DefaultLifetimeJitter    = 0.10
	DefaultMaxIdle           = 60 * time.Second
	DefaultMaxQueries        = 50000
	DefaultLeakTimeout       = 30 * time.Second
	DefaultConnectTimeout    = 5 * time.Second
	DefaultBackoffInitial    = time.Second
	DefaultBackoffMax        = 16 * time.Second
)

// Config configures one Pool. A zero field gets the default noted; pass
// Off (or NoValidation) where the zero meaning itself is wanted. After
// defaults are applied, a negative value is the same as 0.
type Config struct {
	Name              string        // "database/user", used in logs, errors and stats
	Database, User    string        // the pool key, reported in Stats
	Connect           ConnectFunc   // required
	MinSize           int           // default 2; kept warm; Off = none kept warm
	MaxSize           int           // default 10; hard cap on open + opening backends
	MaxWaiters        int           // 0 = unbounded
	AcquireTimeout    time.Duration // default 30s
	ValidationQuery   string        // default "SELECT 1"; NoValidation disables validation
	ValidateAfterIdle time.Duration // default 1s; Off = validate on every acquire
	MaxLifetime       time.Duration // default 1h; Off = unlimited
	LifetimeJitter    float64       // default 0.10 (fraction of MaxLifetime taken off at random); Off = none
	MaxIdle           time.Duration // default 60s; Off = unlimited (never below MinSize anyway)
	MaxQueries        int64         // default 50000; Off = unlimited
	LeakTimeout       time.Duration // default 30s; Off = no leak detection
	ConnectTimeout    time.Duration // default 5s
	BackoffInitial    time.Duration // default 1s; first delay after a failed connect
	BackoffMax        time.Duration // default 16s; the doubling stops here
	Logger            *slog.Logger  // default slog.Default()
}

// DefaultConfig returns a Config with every default filled in except
// Name, Database, User and Connect.
func DefaultConfig() Config {
	return Config{}.withDefaults()
}

// withDefaults replaces zero fields by their defaults and Off (negative)
// values by zero, so the rest of the package reads plain values.
func (c Config) withDefaults() Config {
	c.MinSize = pick(c.MinSize, DefaultMinSize)
	c.MaxSize = pick(c.MaxSize, DefaultMaxSize)
	c.MaxWaiters = max(c.MaxWaiters, 0)
	c.AcquireTimeout = pick(c.AcquireTimeout, DefaultAcquireTimeout)
	switch c.ValidationQuery {
	case "":
		c.ValidationQuery = DefaultValidationQuery
	case NoValidation:
		c.ValidationQuery = ""
	}
	c.ValidateAfterIdle = pick(c.ValidateAfterIdle, DefaultValidateAfterIdle)
	c.MaxLifetime = pick(c.MaxLifetime, DefaultMaxLifetime)
	c.LifetimeJitter = pick(c.LifetimeJitter, DefaultLifetimeJitter)
	c.MaxIdle = pick(c.MaxIdle, DefaultMaxIdle)
	c.MaxQueries = pick(c.MaxQueries, DefaultMaxQueries)
	c.LeakTimeout = pick(c.LeakTimeout, DefaultLeakTimeout)
	c.ConnectTimeout = pick(c.ConnectTimeout, DefaultConnectTimeout)
	c.BackoffInitial = pick(c.BackoffInitial, DefaultBackoffInitial)
	c.BackoffMax = pick(c.BackoffMax, DefaultBackoffMax)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Name == "" && (c.Database != "" || c.User != "") {
		c.Name = c.Database + "/" + c.User
	}
	return c
}

// pick returns def for a zero v, 0 for a negative v (Off), else v.
func pick[T int | int64 | float64 | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// validate reports the first invalid field of a defaulted Config, naming
// it the way it is spelled here so the caller can map it to its option.
func (c Config) validate() error {
	var errs []error
	if c.Connect == nil {
		errs = append(errs, errors.New("a Connect function is required"))
	}
	if c.MinSize > c.MaxSize {
		errs = append(errs, fmt.Errorf("MinSize %d is larger than MaxSize %d", c.MinSize, c.MaxSize))
	}
	if c.LifetimeJitter >= 1 {
		errs = append(errs, fmt.Errorf("LifetimeJitter %v must be below 1 (a fraction of MaxLifetime)", c.LifetimeJitter))
	}
	if c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("BackoffMax %s is shorter than BackoffInitial %s", c.BackoffMax, c.BackoffInitial))
	}
	return errors.Join(errs...)
}
