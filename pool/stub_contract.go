package pool

// CONTRACT STUB: the pool helper replaces this file with the real
// implementation (pool.go, conn.go, stats.go, state.go, ...) keeping every
// exported name and signature below. Delete this file when done.

import (
	"context"
	"log/slog"
	"time"
)

// Config configures one Pool. Zero values are replaced by the defaults noted.
type Config struct {
	Name              string        // "database/user", used in logs, errors and stats
	Database, User    string        // the pool key, reported in Stats
	Connect           ConnectFunc   // required
	MinSize           int           // default 2; kept warm
	MaxSize           int           // default 10
	MaxWaiters        int           // 0 = unbounded
	AcquireTimeout    time.Duration // default 30s
	ValidationQuery   string        // default "SELECT 1"; "" disables validation
	ValidateAfterIdle time.Duration // default 1s; 0 = validate on every acquire
	MaxLifetime       time.Duration // default 1h; 0 = unlimited
	LifetimeJitter    float64       // default 0.10 (fraction of MaxLifetime)
	MaxIdle           time.Duration // default 60s; 0 = unlimited (never below MinSize)
	MaxQueries        int64         // default 50000; 0 = unlimited
	LeakTimeout       time.Duration // default 30s; 0 = off
	ConnectTimeout    time.Duration // default 5s
	BackoffInitial    time.Duration // default 1s
	BackoffMax        time.Duration // default 16s
	Logger            *slog.Logger  // default slog.Default()
}

// State is the pool's health state.
type State int32

const (
	StateInitializing State = iota
	StateHealthy
	StateDegraded
	StateUnhealthy
	StateRecovering
	StateShuttingDown
	StateTerminated
)

func (s State) String() string { return "" }

// MarshalText renders the state as its upper-case name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Stats is a point-in-time snapshot; reading it never blocks the data path.
type Stats struct {
	Name             string    `json:"name"`
	Database         string    `json:"database"`
	User             string    `json:"user"`
	State            State     `json:"state"` // marshals as text, e.g. "HEALTHY"
	StateReason      string    `json:"state_reason"`
	StateSince       time.Time `json:"state_since"`
	MinSize          int       `json:"min_size"`
	MaxSize          int       `json:"max_size"`
	Total            int       `json:"total"`  // open backends (idle + active + being validated)
	Idle             int       `json:"idle"`   // ready in the idle list
	Active           int       `json:"active"` // held by clients
	Waiting          int       `json:"waiting"`
	PeakActive       int       `json:"peak_active"`
	PeakWaiting      int       `json:"peak_waiting"`
	Acquisitions     uint64    `json:"acquisitions"`
	AcquireTimeouts  uint64    `json:"acquire_timeouts"`
	AcquireRejected  uint64    `json:"acquire_rejected"` // queue full or circuit open
	WaitAvgMs        float64   `json:"wait_avg_ms"`
	WaitP99Ms        float64   `json:"wait_p99_ms"` // over a recent window
	Connects         uint64    `json:"connects"`
	ConnectErrors    uint64    `json:"connect_errors"`
	LastConnectError string    `json:"last_connect_error,omitempty"`
	Validations      uint64    `json:"validations"`
	Leaks            uint64    `json:"leaks"`
	Queries          uint64    `json:"queries"` // as counted by AddQueries
	Retired          Retired   `json:"retired"`
}

// Retired counts closed backends by reason.
type Retired struct {
	Lifetime   uint64 `json:"lifetime"`
	Idle       uint64 `json:"idle"`
	Queries    uint64 `json:"queries"`
	Error      uint64 `json:"error"`      // Destroy: broken or unknown state
	Validation uint64 `json:"validation"` // failed the validation query
	Shutdown   uint64 `json:"shutdown"`
}

// Owner describes the client holding a Conn, for leak reports.
type Owner interface {
	// LeakInfo returns the client's address, application_name and its last
	// statement (already truncated). Called from the pool's goroutine.
	LeakInfo() (addr, appName, lastStatement string)
}

// Pool is a pool of backend connections for one (database, user).
type Pool struct{}

// Conn is a Server checked out of a Pool.
type Conn struct{}

// AcquireError says why Acquire failed, with a SQLSTATE for the client.
type AcquireError struct {
	Code    string // SQLSTATE: 53300 (timeout, queue full), 08006 (upstream down), 57P01 (closed)
	Message string
	Hint    string
	Err     error // the upstream's own error, when there is one
}

func (e *AcquireError) Error() string { return e.Message }
func (e *AcquireError) Unwrap() error { return e.Err }

func New(cfg Config) (*Pool, error)                        { return nil, nil }
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) { return nil, nil }
func (p *Pool) Stats() Stats                               { return Stats{} }
func (p *Pool) State() State                               { return 0 }
func (p *Pool) Name() string                               { return "" }
func (p *Pool) Reconfigure(cfg Config)                     {}
func (p *Pool) Close()                                     {}

func (c *Conn) Server() Server        { return nil }
func (c *Conn) Attachment() any       { return nil }
func (c *Conn) SetAttachment(v any)   {}
func (c *Conn) SetOwner(o Owner)      {}
func (c *Conn) AddQueries(n int64)    {}
func (c *Conn) SetBusy(busy bool)     {}
func (c *Conn) Release()              {}
func (c *Conn) Destroy(reason string) {}
