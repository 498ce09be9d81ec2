package main

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
)

// envPrefix marks the environment variables that override config keys:
// PGSIDECAR_POOL__MAX_SIZE=5 sets pool.max_size.
const envPrefix = "PGSIDECAR_"

// envConfigPath names the config file when -config is not given. It is
// read by run, never treated as a config key.
const envConfigPath = envPrefix + "CONFIG"

// defaultConfigPath is read when it exists and no path is given.
const defaultConfigPath = "config.yaml"

// configPath decides which file to read: the -config flag when given
// (must exist; "" means none), else PGSIDECAR_CONFIG (must exist), else
// ./config.yaml when it exists, else none.
func configPath(flagValue string, explicit bool, environ []string) (string, error) {
	source := "-config"
	if !explicit {
		if v := lookupEnv(environ, envConfigPath); v != "" {
			flagValue, explicit, source = v, true, envConfigPath
		}
	}
	if explicit {
		if flagValue == "" {
			return "", nil
		}
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("config: %s %s: %w", source, flagValue, err)
		}
		return flagValue, nil
	}
	if _, err := os.Stat(defaultConfigPath); err == nil {
		return defaultConfigPath, nil
	}
	return "", nil
}

// Config is pgsidecar's whole configuration. Every field has a default in
// Defaults and a documented line in config.yaml.
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
	// MaxMessageSize is the largest protocol message accepted, in bytes.
	MaxMessageSize int `koanf:"max_message_size"`
	// ShutdownTimeout is how long SIGTERM waits for open transactions.
	ShutdownTimeout time.Duration `koanf:"shutdown_timeout"`
	// Auth says how clients authenticate to the proxy.
	Auth AuthConfig `koanf:"auth"`
	// Log configures the process log.
	Log LogConfig `koanf:"log"`
}

// HealthConfig configures the health and statistics HTTP listener.
type HealthConfig struct {
	Listen string `koanf:"listen"`
}

// DatabaseConfig is one entry of the databases map.
type DatabaseConfig struct {
	// URL is the upstream connection string (URL or key=value form).
	URL string `koanf:"url"`
	// Overrides holds the pool.* keys this database sets, as written.
	Overrides map[string]any `koanf:"pool"`
	// Pool is the effective pool configuration: pool.* with Overrides
	// applied. loadConfig fills it in.
	Pool PoolConfig `koanf:"-"`
}

// PoolConfig holds the pool.* options.
type PoolConfig struct {
	Mode                  string        `koanf:"mode"`
	MinSize               int           `koanf:"min_size"`
	MaxSize               int           `koanf:"max_size"`
	MaxClientConn         int           `koanf:"max_client_conn"`
	AcquireTimeout        time.Duration `koanf:"acquire_timeout"`
	MaxWaiters            int           `koanf:"max_waiters"`
	ValidationQuery       string        `koanf:"validation_query"`
	ValidateAfterIdle     time.Duration `koanf:"validate_after_idle"`
	MaxLifetime           time.Duration `koanf:"max_lifetime"`
	LifetimeJitter        Percent       `koanf:"lifetime_jitter"`
	MaxIdle               time.Duration `koanf:"max_idle"`
	MaxQueries            int64         `koanf:"max_queries"`
	LeakTimeout           time.Duration `koanf:"leak_timeout"`
	ConnectTimeout        time.Duration `koanf:"connect_timeout"`
	ReconnectBackoff      time.Duration `koanf:"reconnect_backoff"`
	ReconnectBackoffMax   time.Duration `koanf:"reconnect_backoff_max"`
	ResetQuery            string        `koanf:"reset_query"`
	MaxPreparedStatements int           `koanf:"max_prepared_statements"`
}

// proxyWidePoolKeys are pool.* options that belong to the proxy as a whole,
// so a databases entry may not override them.
var proxyWidePoolKeys = map[string]bool{
	"mode":                    true,
	"max_client_conn":         true,
	"reset_query":             true,
	"max_prepared_statements": true,
}

// AuthConfig holds the auth.* options.
type AuthConfig struct {
	Method string       `koanf:"method"`
	Users  []UserConfig `koanf:"users"`
}

// UserConfig is one client login accepted by the proxy.
type UserConfig struct {
	Name     string `koanf:"name"`
	Password string `koanf:"password"`
}

// LogValue keeps the password out of every log line.
func (u UserConfig) LogValue() slog.Value {
	return slog.StringValue(u.Name)
}

// String keeps the password out of fmt output.
func (u UserConfig) String() string { return u.Name }

// LogConfig holds the log.* options.
type LogConfig struct {
	Level  string `koanf:"level"`
	Format string `koanf:"format"`
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

// Defaults returns the configuration used for every option nobody sets.
// config.yaml documents exactly these values (a test keeps them in step).
func Defaults() Config {
	return Config{
		Listen:    "127.0.0.1:6432",
		Health:    HealthConfig{Listen: "127.0.0.1:9930"},
		Databases: map[string]DatabaseConfig{},
		Pool: PoolConfig{
			Mode:                  "transaction",
			MinSize:               2,
			MaxSize:               10,
			MaxClientConn:         10000,
			AcquireTimeout:        30 * time.Second,
			MaxWaiters:            0,
			ValidationQuery:       "SELECT 1",
			ValidateAfterIdle:     time.Second,
			MaxLifetime:           time.Hour,
			LifetimeJitter:        0.10,
			MaxIdle:               60 * time.Second,
			MaxQueries:            50000,
			LeakTimeout:           30 * time.Second,
			ConnectTimeout:        5 * time.Second,
			ReconnectBackoff:      time.Second,
			ReconnectBackoffMax:   16 * time.Second,
			ResetQuery:            "DISCARD ALL",
			MaxPreparedStatements: 200,
		},
		MaxMessageSize:  1<<30 - 1,
		ShutdownTimeout: 30 * time.Second,
		Auth:            AuthConfig{Method: "scram-sha-256", Users: []UserConfig{}},
		Log:             LogConfig{Level: "info", Format: "auto"},
	}
}

// loadConfig reads the configuration from its sources in order of
// precedence (defaults, the YAML file at path unless path is "", PGSIDECAR_*
// variables in environ, DATABASE_URL), checks every option and returns it
// with each database's effective pool settings resolved. The error names
// the offending option.
func loadConfig(path string, environ []string) (*Config, error) {
	cfg, err := readConfig(path, environ)
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// readConfig merges and decodes the sources without validating the values.
func readConfig(path string, environ []string) (*Config, error) {
	k := koanf.New(".")
	if err := k.Load(structs.Provider(Defaults(), "koanf"), nil); err != nil {
		return nil, fmt.Errorf("config: loading defaults: %w", err)
	}

	var fileKeys *koanf.Koanf
	if path != "" {
		fileKeys = koanf.New(".")
		if err := fileKeys.Load(file.Provider(path), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("config: reading %s: %w", path, err)
		}
		if err := k.Merge(fileKeys); err != nil {
			return nil, fmt.Errorf("config: merging %s: %w", path, err)
		}
	}

	envKeys := koanf.New(".")
	envProvider := env.Provider(".", env.Opt{
		Prefix:        envPrefix,
		TransformFunc: envKey,
		EnvironFunc:   func() []string { return environ },
	})
	if err := envKeys.Load(envProvider, nil); err != nil {
		return nil, fmt.Errorf("config: reading %s* environment: %w", envPrefix, err)
	}
	if err := k.Merge(envKeys); err != nil {
		return nil, fmt.Errorf("config: merging %s* environment: %w", envPrefix, err)
	}

	if url := lookupEnv(environ, "DATABASE_URL"); url != "" {
		if err := k.Set("upstream", url); err != nil {
			return nil, fmt.Errorf("config: applying DATABASE_URL: %w", err)
		}
	}

	// Decode onto the defaults, not onto a zero Config, so a section the
	// file leaves empty ("pool:" with every line commented) keeps them.
	cfg := Defaults()
	var meta mapstructure.Metadata
	dc := decoderConfig(&meta)
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{DecoderConfig: dc}); err != nil {
		return nil, decodeError(err)
	}
	if err := unknownKeys(meta.Unused, path, fileKeys, envKeys); err != nil {
		return nil, err
	}
	cfg.normalize()
	if err := cfg.resolveDatabases(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// envKey turns PGSIDECAR_POOL__MAX_SIZE into pool.max_size. Empty values
// count as unset, as docker-compose's `VAR=` usually means.
func envKey(key, value string) (string, any) {
	if key == envConfigPath || value == "" {
		return "", nil
	}
	name := strings.ToLower(strings.TrimPrefix(key, envPrefix))
	return strings.ReplaceAll(name, "__", "."), value
}

// envName is envKey in reverse, for error messages.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "__"))
}

// lookupEnv finds name in an os.Environ-style list.
func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// decoderConfig is koanf's default decoding plus strict durations and the
// unused-key report.
func decoderConfig(meta *mapstructure.Metadata) *mapstructure.DecoderConfig {
	return &mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			durationHook,
			mapstructure.TextUnmarshallerHookFunc(),
		),
		WeaklyTypedInput: true,
		Metadata:         meta,
		TagName:          "koanf",
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// durationHook parses "30s"-style durations and refuses bare numbers other
// than 0: "acquire_timeout: 30" would otherwise mean 30 nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	switch v := reflect.ValueOf(data); v.Kind() {
	case reflect.String:
		s := strings.TrimSpace(v.String())
		if s == "0" {
			return time.Duration(0), nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q: write it with a unit, e.g. \"30s\", \"500ms\" or \"1h\"", s)
		}
		return d, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if v.IsZero() {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("duration %v has no unit: write it as e.g. \"%vs\"", data, data)
	}
	return data, nil
}

// decodeError rewrites mapstructure's errors as "config: key: problem",
// one line per bad key.
func decodeError(err error) error {
	var lines []string
	var walk func(error)
	walk = func(e error) {
		var de *mapstructure.DecodeError
		if errors.As(e, &de) && de == e {
			inner := de.Unwrap()
			if joined, ok := inner.(interface{ Unwrap() []error }); ok {
				for _, c := range joined.Unwrap() {
					walk(c)
				}
				return
			}
			if _, ok := inner.(*mapstructure.DecodeError); ok {
				walk(inner)
				return
			}
			lines = append(lines, fmt.Sprintf("config: %s: %v", keyName(de.Name()), innerMessage(inner)))
			return
		}
		if joined, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range joined.Unwrap() {
				walk(c)
			}
			return
		}
		if wrapped := errors.Unwrap(e); wrapped != nil {
			walk(wrapped)
			return
		}
		lines = append(lines, "config: "+e.Error())
	}
	walk(err)
	slices.Sort(lines)
	if len(lines) == 0 {
		return fmt.Errorf("config: %w", err)
	}
	return errors.New(strings.Join(lines, "\n"))
}

// mapIndex matches mapstructure's spelling of a map entry, databases[r].
var mapIndex = regexp.MustCompile(`\[([^\]]*[^0-9\]][^\]]*)\]`)

// keyName spells a decoder path the way config keys are written:
// databases[r].url becomes databases.r.url; list indexes stay as [0].
func keyName(path string) string {
	return mapIndex.ReplaceAllString(path, ".$1")
}

// innerMessage drops mapstructure's type names where a hook already said
// what is wrong in the user's words.
func innerMessage(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("cannot use %q: want %s", fmt.Sprint(pe.Value), kindWord(pe.Expected.Type()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Sprintf("cannot use %v: want %s", ue.Value, kindWord(ue.Expected.Type()))
	}
	return err.Error()
}

// kindWord names a Go type the way a config file author thinks of it.
func kindWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a section of keys"
	}
	return t.String()
}

// unknownKeys rejects keys that match no option, saying where each came
// from: a typo must not be silently ignored.
func unknownKeys(unused []string, path string, fileKeys, envKeys *koanf.Koanf) error {
	if len(unused) == 0 {
		return nil
	}
	lines := make([]string, 0, len(unused))
	for _, key := range unused {
		key = keyName(key)
		where := ""
		switch {
		case envKeys.Exists(key):
			where = " (set by " + envName(key) + ")"
		case fileKeys != nil && fileKeys.Exists(key):
			where = " (in " + path + ")"
		}
		lines = append(lines, fmt.Sprintf("config: %s: unknown option%s", key, where))
	}
	slices.Sort(lines)
	return errors.New(strings.Join(lines, "\n"))
}

// resolveDatabases computes each database's effective pool settings: the
// global pool.* values with that database's overrides decoded on top.
func (c *Config) resolveDatabases() error {
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		db := c.Databases[name]
		db.Pool = c.Pool
		for key := range db.Overrides {
			if proxyWidePoolKeys[key] {
				errs = append(errs, fmt.Sprintf("config: databases.%s.pool.%s: applies to the whole proxy; set pool.%s instead", name, key, key))
			}
		}
		if len(db.Overrides) > 0 {
			var meta mapstructure.Metadata
			dc := decoderConfig(&meta)
			dc.Result = &db.Pool
			dec, err := mapstructure.NewDecoder(dc)
			if err != nil {
				return fmt.Errorf("config: databases.%s.pool: %w", name, err)
			}
			if err := dec.Decode(db.Overrides); err != nil {
				errs = append(errs, prefixLines(decodeError(err).Error(), "config: ", "config: databases."+name+".pool."))
			}
			for _, key := range meta.Unused {
				errs = append(errs, fmt.Sprintf("config: databases.%s.pool.%s: unknown option", name, key))
			}
		}
		c.Databases[name] = db
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// prefixLines replaces prefix old with new at the start of every line.
func prefixLines(s, old, new string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, old); ok {
			lines[i] = new + rest
		}
	}
	return strings.Join(lines, "\n")
}
