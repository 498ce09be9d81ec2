// Config, one pool's settings: the fields, how hints name them (option), and
// their validation.

package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures one Pool. Every field is taken as given: zero means
// zero (none kept warm, validate on every acquire, unlimited, off), never
// "the default"; the configuration layer owns the defaults, as pgx's
// ParseConfig does for pgxpool.Config.
type Config struct {
	Name              string        // "database/user", used in logs, errors and stats; default Database/User
	Database, User    string        // the pool key, reported in Stats
	Connect           ConnectFunc   // required
	MinSize           int           // kept warm; 0 = none kept warm
	MaxSize           int           // at least 1 and MinSize; hard cap on open + opening + closing backends
	MaxWaiters        int           // 0 = unbounded
	AcquireTimeout    time.Duration // above 0
	ValidationQuery   string        // run on a backend idle past ValidateAfterIdle; "" = no validation
	ValidateAfterIdle time.Duration // 0 = validate on every acquire
	PeekAfterIdle     time.Duration // 0 = peek at the socket on every acquire; see hand
	MaxLifetime       time.Duration // 0 = unlimited
	LifetimeJitter    float64       // fraction of MaxLifetime taken off at random, [0, 1)
	MaxIdle           time.Duration // 0 = unlimited (never below MinSize anyway)
	MaxQueries        int64         // 0 = unlimited
	MaxBackendErrors  int64         // connection-level/protocol errors (Conn.AddErrors, Destroy) before a backend is retired at release; 0 = off
	LeakTimeout       time.Duration // 0 = no leak detection
	ConnectTimeout    time.Duration // above 0
	IdleCheckInterval time.Duration // 0 = no idle check (see idlecheck.go)
	BackoffInitial    time.Duration // above 0; first delay after a failed connect
	BackoffMax        time.Duration // at least BackoffInitial; the doubling stops here
	HoldOnRestart     time.Duration // 0 = off; how long Acquire waits for a database that went away (see hold.go)
	Logger            *slog.Logger  // nil = slog.Default()
	// Group, when set, bounds this pool's backends together with the
	// other pools of the group: those of its Database, and all of them
	// (see Group). Fixed at New; nil = only MaxSize bounds the pool.
	Group *Group
	// OptionName spells a field the way the operator sets it, for hints:
	// "MaxSize" may become "pool.max_size". nil, or "" for a field, leaves
	// the field's own name.
	OptionName func(field string) string
	// NoIdle closes a backend when it is free and no waiter takes it,
	// instead of keeping it idle: for a database that must have no
	// sessions while nobody uses it (a template: CREATE DATABASE fails
	// with 55006 while another session is connected to its template).
	// MinSize must be 0.
	NoIdle bool
}

// option names field in hints: the option that sets it, as OptionName
// spells it, else the field's own name.
func (c *Config) option(field string) string {
	if c.OptionName != nil {
		if name := c.OptionName(field); name != "" {
			return name
		}
	}
	return field
}

// withName fills in the two fields that have a natural value: Logger and
// Name.
func (c Config) withName() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Name == "" && (c.Database != "" || c.User != "") {
		c.Name = c.Database + "/" + c.User
	}
	return c
}

// validate reports every invalid field, naming each the way it is spelled
// here so the caller can map it to its option.
func (c Config) validate() error {
	var errs []error
	if c.Connect == nil {
		errs = append(errs, errors.New("a Connect function is required"))
	}
	if c.MinSize < 0 {
		errs = append(errs, fmt.Errorf("MinSize %d is negative", c.MinSize))
	}
	if c.MaxSize < 1 {
		errs = append(errs, fmt.Errorf("MaxSize %d must be at least 1", c.MaxSize))
	}
	if c.MinSize > c.MaxSize {
		errs = append(errs, fmt.Errorf("MinSize %d is larger than MaxSize %d", c.MinSize, c.MaxSize))
	}
	if c.NoIdle && c.MinSize > 0 {
		errs = append(errs, fmt.Errorf("MinSize %d keeps backends idle, which NoIdle forbids", c.MinSize))
	}
	if c.MaxBackendErrors < 0 {
		errs = append(errs, fmt.Errorf("MaxBackendErrors %d may not be negative", c.MaxBackendErrors))
	}
	if c.MaxWaiters < 0 || c.MaxQueries < 0 {
		errs = append(errs, fmt.Errorf("MaxWaiters %d and MaxQueries %d may not be negative", c.MaxWaiters, c.MaxQueries))
	}
	if c.LifetimeJitter < 0 || c.LifetimeJitter >= 1 {
		errs = append(errs, fmt.Errorf("LifetimeJitter %v must be from 0 to below 1 (a fraction of MaxLifetime)", c.LifetimeJitter))
	}
	for _, d := range []struct {
		name     string
		v        time.Duration
		positive bool
	}{
		{"AcquireTimeout", c.AcquireTimeout, true},
		{"ConnectTimeout", c.ConnectTimeout, true},
		{"BackoffInitial", c.BackoffInitial, true},
		{"BackoffMax", c.BackoffMax, true},
		{"ValidateAfterIdle", c.ValidateAfterIdle, false},
		{"PeekAfterIdle", c.PeekAfterIdle, false},
		{"MaxLifetime", c.MaxLifetime, false},
		{"MaxIdle", c.MaxIdle, false},
		{"LeakTimeout", c.LeakTimeout, false},
		{"IdleCheckInterval", c.IdleCheckInterval, false},
		{"HoldOnRestart", c.HoldOnRestart, false},
	} {
		switch {
		case d.positive && d.v <= 0:
			errs = append(errs, fmt.Errorf("%s %s must be above 0", d.name, d.v))
		case d.v < 0:
			errs = append(errs, fmt.Errorf("%s %s may not be negative", d.name, d.v))
		}
	}
	if c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("BackoffMax %s is shorter than BackoffInitial %s", c.BackoffMax, c.BackoffInitial))
	}
	return errors.Join(errs...)
}
