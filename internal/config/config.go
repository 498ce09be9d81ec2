// Config and its types: the sections' structs (tls.*'s is in tls.go), the
// values that decode from text (Percent, LogLevel, LogFormat), and the
// environment's prefix.

package config

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// envPrefix marks the environment variables that override config keys:
// PGSIDECAR_POOL__MAX_SIZE=5 sets pool.max_size.
const envPrefix = "PGSIDECAR_"

// EnvConfigPath names the config file when -config is not given. It is
// read by Path, never treated as a config key (envKey skips it).
const EnvConfigPath = envPrefix + "CONFIG"

// Config is pgsidecar's whole configuration. Every leaf field is an entry
// of Options (its default, reload behaviour and documentation) and has a
// documented line in config.yaml.
type Config struct {
	// Listen is the address clients connect to.
	Listen string `koanf:"listen"`
	// Health configures the HTTP listener for /health, /stats and /metrics.
	Health HealthConfig `koanf:"health"`
	// Upstream is the real database (DATABASE_URL). Its dbname is the name
	// clients use, its user and password are what clients log in with
	// unless auth.users lists others.
	Upstream string `koanf:"upstream"`
	// Databases adds more upstreams, keyed by the name clients use.
	Databases map[string]DatabaseConfig `koanf:"databases"`
	// Pool holds the pooling settings shared by every database.
	Pool PoolConfig `koanf:"pool"`
	// MaxDBConnections caps the backends of each database across its
	// roles' pools (databases.<name>.max_db_connections overrides it);
	// MaxTotalConnections caps them across the proxy. 0 = no cap.
	MaxDBConnections    int `koanf:"max_db_connections"`
	MaxTotalConnections int `koanf:"max_total_connections"`
	// MaxMessageSize is the largest protocol message accepted, in bytes.
	MaxMessageSize int `koanf:"max_message_size"`
	// MaxClientBuffer bounds what the proxy holds of one client message.
	MaxClientBuffer int `koanf:"max_client_buffer"`
	// ShutdownTimeout is how long SIGTERM waits for open transactions.
	ShutdownTimeout time.Duration `koanf:"shutdown_timeout"`
	// Auth says how clients authenticate to the proxy.
	Auth AuthConfig `koanf:"auth"`
	// TLS configures TLS between clients and the proxy.
	TLS TLSConfig `koanf:"tls"`
	// Log configures the process log.
	Log LogConfig `koanf:"log"`
	// Admin configures the admin console and the HTTP admin endpoints.
	Admin AdminConfig `koanf:"admin"`

	// FileEmpty says that the configuration file was read and holds no
	// setting (empty, or comments only); Load sets it. A reload refuses
	// such a file when the running configuration came from settings in
	// it: a file caught between a truncate and its write would otherwise
	// reset every option it set to its default.
	FileEmpty bool `koanf:"-"`
}

// AdminConfig holds the admin.* options.
type AdminConfig struct {
	// Database is the virtual database of the admin console.
	Database string `koanf:"database"`
	// Users may use every console command; empty means the first served
	// database's URL user (upstream's when there is one, see AdminLogins).
	// StatsUsers may use only SHOW. Both are logins of a served database
	// (its URL's user or auth.users), with those passwords.
	Users      []string `koanf:"users"`
	StatsUsers []string `koanf:"stats_users"`
	// HTTPToken enables the HTTP admin writes (POST /admin/...), sent as
	// "Authorization: Bearer <token>"; "" refuses them all.
	HTTPToken string `koanf:"http_token"`
}

// HealthConfig configures the health and statistics HTTP listener.
type HealthConfig struct {
	Listen string `koanf:"listen"`
}

// DatabaseConfig is one entry of the databases map.
type DatabaseConfig struct {
	// URL is the upstream connection string (URL or key=value form).
	URL string `koanf:"url"`
	// Users names the auth.users logins that may connect to this database
	// (besides the URL's own user). Unlisted logins reach only upstream.
	Users []string `koanf:"users"`
	// MaxDBConnections overrides the top-level max_db_connections for this
	// database; nil = not set here (0 is a value: no cap).
	MaxDBConnections *int `koanf:"max_db_connections"`
	// Overrides holds the pool.* keys this database sets, as written.
	Overrides map[string]any `koanf:"pool"`
	// Pool is the effective pool configuration: pool.* with Overrides
	// applied. Load fills it in.
	Pool PoolConfig `koanf:"-"`
}

// PoolConfig holds the pool.* options.
type PoolConfig struct {
	Mode                proxy.Mode    `koanf:"mode"`
	MinSize             int           `koanf:"min_size"`
	MaxSize             int           `koanf:"max_size"`
	MaxClientConn       int           `koanf:"max_client_conn"`
	MaxStartupConn      int           `koanf:"max_startup_conn"`
	AcquireTimeout      time.Duration `koanf:"acquire_timeout"`
	MaxWaiters          int           `koanf:"max_waiters"`
	ValidationQuery     string        `koanf:"validation_query"`
	ValidateAfterIdle   time.Duration `koanf:"validate_after_idle"`
	PeekAfterIdle       time.Duration `koanf:"peek_after_idle"`
	MaxLifetime         time.Duration `koanf:"max_lifetime"`
	LifetimeJitter      Percent       `koanf:"lifetime_jitter"`
	MaxIdle             time.Duration `koanf:"max_idle"`
	MaxQueries          int64         `koanf:"max_queries"`
	MaxBackendErrors    int64         `koanf:"max_backend_errors"`
	LeakTimeout         time.Duration `koanf:"leak_timeout"`
	ConnectTimeout      time.Duration `koanf:"connect_timeout"`
	IdleCheckInterval   time.Duration `koanf:"idle_check_interval"`
	ReconnectBackoff    time.Duration `koanf:"reconnect_backoff"`
	ReconnectBackoffMax time.Duration `koanf:"reconnect_backoff_max"`
	HoldOnRestart       time.Duration `koanf:"hold_on_restart"`
	ResetQuery          string        `koanf:"reset_query"`

	// SessionState is what transaction mode does with session state.
	SessionState proxy.SessionStatePolicy `koanf:"session_state"`

	MaxPreparedStatements int `koanf:"max_prepared_statements"`
	// Client timeouts, as PgBouncer names them; 0 = off (login: no limit).
	QueryTimeout           time.Duration `koanf:"query_timeout"`
	IdleTransactionTimeout time.Duration `koanf:"idle_transaction_timeout"`
	ClientIdleTimeout      time.Duration `koanf:"client_idle_timeout"`
	ClientLoginTimeout     time.Duration `koanf:"client_login_timeout"`
}

// AuthConfig holds the auth.* options.
type AuthConfig struct {
	Method proxy.AuthMethod `koanf:"method"`
	// Users are the logins of upstream (and of the databases that list
	// them). From the environment: "name:password,name2:password2".
	Users []UserConfig `koanf:"users"`
	// UsersFile names a file of more logins, one "name:password" a line;
	// Load reads it into FileUsers (again on every reload).
	UsersFile string       `koanf:"users_file"`
	FileUsers []UserConfig `koanf:"-"`
	// FailedLoginDelay is the wait imposed on a source address's next login
	// after a failed one, doubling per further failure up to
	// FailedLoginDelayMax; 0 = off. Loopback clients are exempt unless
	// FailedLoginDelayLoopback.
	FailedLoginDelay         time.Duration `koanf:"failed_login_delay"`
	FailedLoginDelayMax      time.Duration `koanf:"failed_login_delay_max"`
	FailedLoginDelayLoopback bool          `koanf:"failed_login_delay_loopback"`
	// Passthrough makes clients log in as their own roles; Query (run as
	// User, "" = each database's own URL user) looks up their verifiers, cached
	// for CacheTTL (0 = not cached).
	Passthrough bool          `koanf:"passthrough"`
	Query       string        `koanf:"query"`
	User        string        `koanf:"user"`
	CacheTTL    time.Duration `koanf:"cache_ttl"`
}

// UserConfig is one client login accepted by the proxy.
type UserConfig struct {
	Name string `koanf:"name"`
	// Password is the cleartext password or a SCRAM verifier. With
	// PasswordFile set, Load fills it from that file (again on every
	// reload); the option itself then must be empty.
	Password     string `koanf:"password"`
	PasswordFile string `koanf:"password_file"`
}

// LogValue keeps the password out of every log line.
func (u UserConfig) LogValue() slog.Value {
	return slog.StringValue(u.Name)
}

// String keeps the password out of fmt output.
func (u UserConfig) String() string { return u.Name }

// AllUsers is auth.users followed by the logins of auth.users_file.
func (a AuthConfig) AllUsers() []UserConfig {
	return append(slices.Clip(a.Users), a.FileUsers...)
}

// LogConfig holds the log.* options.
type LogConfig struct {
	Level  LogLevel  `koanf:"level"`
	Format LogFormat `koanf:"format"`
}

// Percent is a fraction written either as "10%" or as 0.1.
type Percent float64

// UnmarshalText accepts "10%", "10 %" and "0.1".
func (p *Percent) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if num, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil {
			return fmt.Errorf("invalid percentage %q: write it as \"10%%\" or 0.1", s)
		}
		*p = Percent(v / 100)
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("invalid percentage %q: write it as \"10%%\" or 0.1", s)
	}
	*p = Percent(v)
	return nil
}

// String renders the fraction as a percentage, e.g. "10%".
func (p Percent) String() string {
	return strconv.FormatFloat(float64(p)*100, 'f', -1, 64) + "%"
}

// LogLevel is log.level: debug, info, warn or error.
type LogLevel string

// logLevels maps each log.level to its slog level.
var logLevels = []struct {
	name  LogLevel
	level slog.Level
}{{"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warn", slog.LevelWarn}, {"error", slog.LevelError}}

// UnmarshalText accepts a level in any case.
func (l *LogLevel) UnmarshalText(text []byte) error {
	names := make([]string, len(logLevels))
	for i, e := range logLevels {
		names[i] = string(e.name)
	}
	v, err := parseEnum(string(text), names)
	*l = LogLevel(v)
	return err
}

// Slog is the level as slog knows it.
func (l LogLevel) Slog() slog.Level {
	for _, e := range logLevels {
		if e.name == l {
			return e.level
		}
	}
	return slog.LevelInfo
}

// LogFormat is log.format: auto, text or json.
type LogFormat string

// Log formats.
const (
	LogAuto LogFormat = "auto"
	LogText LogFormat = "text"
	LogJSON LogFormat = "json"
)

// UnmarshalText accepts a format in any case.
func (f *LogFormat) UnmarshalText(text []byte) error {
	v, err := parseEnum(string(text), []string{string(LogAuto), string(LogText), string(LogJSON)})
	*f = LogFormat(v)
	return err
}

// parseEnum reads one of allowed, ignoring case and surrounding space.
func parseEnum(s string, allowed []string) (string, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if slices.Contains(allowed, v) {
		return v, nil
	}
	return "", fmt.Errorf("must be one of %s, got %q", strings.Join(allowed, ", "), v)
}
