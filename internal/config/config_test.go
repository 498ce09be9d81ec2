package config

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"

	"github.com/pgsidecar/pgsidecar/internal/testpg"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// repoConfigYAML is the documented config.yaml at the repository root.
const repoConfigYAML = "../../config.yaml"

const testURL = "postgres://app:s3cr3t-pw@127.0.0.1:5432/appdb?sslmode=disable"

func mustLoad(t *testing.T, path string, environ ...string) *Config {
	t.Helper()
	cfg, err := Load(path, environ)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	return cfg
}

// wantErr loads and checks that the error has every wanted fragment.
func wantErr(t *testing.T, path string, environ []string, fragments ...string) error {
	t.Helper()
	_, err := Load(path, environ)
	if err == nil {
		t.Fatalf("loadConfig succeeded; want an error containing %q", fragments)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("error %q does not contain %q", err, f)
		}
	}
	return err
}

func TestDefaults(t *testing.T) {
	testpg.IsolatePG(t)
	cfg, err := read("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*cfg, Defaults()) {
		t.Fatalf("readConfig with no sources:\n got %+v\nwant %+v", *cfg, Defaults())
	}
	// Typed fields decode from the table's spelling.
	d := Defaults()
	if d.Pool.LifetimeJitter != 0.10 || d.Pool.AcquireTimeout != 30*time.Second || d.Pool.Mode != proxy.ModeTransaction {
		t.Errorf("defaults decoded wrong: %+v", d.Pool)
	}

	// The defaults alone are not enough: there is no database.
	wantErr(t, "", nil, "config: upstream:", "DATABASE_URL")

	// With DATABASE_URL they are.
	cfg = mustLoad(t, "", "DATABASE_URL="+testURL)
	want := Defaults()
	want.Upstream = testURL
	if !reflect.DeepEqual(*cfg, want) {
		t.Fatalf("defaults + DATABASE_URL:\n got %+v\nwant %+v", *cfg, want)
	}
}

func TestYAMLOverrides(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, `
listen: 127.0.0.1:7000
health:
  listen: "[::1]:7001"
upstream: `+testURL+`
pool:
  mode: session
  min_size: 0
  max_size: 3
  acquire_timeout: 2500ms
  max_waiters: 7
  validation_query: ""
  validate_after_idle: 0
  peek_after_idle: 250ms
  max_lifetime: 10m
  lifetime_jitter: 25%
  max_queries: 0
  reconnect_backoff: 250ms
  reconnect_backoff_max: 2s
  reset_query: "RESET ALL"
  max_prepared_statements: 50
max_message_size: 65536
shutdown_timeout: 0
auth:
  method: md5
  users:
    - name: alice
      password: wonderland
  failed_login_delay: 50ms
  failed_login_delay_max: 1s
  failed_login_delay_loopback: true
log:
  level: warn
  format: json
`)
	cfg := mustLoad(t, path)
	want := Defaults()
	want.Listen = "127.0.0.1:7000"
	want.Health.Listen = "[::1]:7001"
	want.Upstream = testURL
	want.Pool.Mode = "session"
	want.Pool.MinSize = 0
	want.Pool.MaxSize = 3
	want.Pool.AcquireTimeout = 2500 * time.Millisecond
	want.Pool.MaxWaiters = 7
	want.Pool.ValidationQuery = ""
	want.Pool.ValidateAfterIdle = 0
	want.Pool.PeekAfterIdle = 250 * time.Millisecond
	want.Pool.MaxLifetime = 10 * time.Minute
	want.Pool.LifetimeJitter = 0.25
	want.Pool.MaxQueries = 0
	want.Pool.ReconnectBackoff = 250 * time.Millisecond
	want.Pool.ReconnectBackoffMax = 2 * time.Second
	want.Pool.ResetQuery = "RESET ALL"
	want.Pool.MaxPreparedStatements = 50
	want.MaxMessageSize = 65536
	want.ShutdownTimeout = 0
	want.Auth = AuthConfig{Method: "md5", Users: []UserConfig{{Name: "alice", Password: "wonderland"}},
		FailedLoginDelay: 50 * time.Millisecond, FailedLoginDelayMax: time.Second, FailedLoginDelayLoopback: true,
		Query: want.Auth.Query, CacheTTL: want.Auth.CacheTTL} // not in the file: defaults
	want.Log = LogConfig{Level: "warn", Format: "json"}
	if !reflect.DeepEqual(*cfg, want) {
		t.Fatalf("yaml overrides:\n got %+v\nwant %+v", *cfg, want)
	}

	// A section whose every line is commented out keeps the defaults.
	cfg = mustLoad(t, testpg.WriteYAML(t, "upstream: "+testURL+"\npool:\n#  max_size: 3\nlog:\n"))
	if cfg.Pool != Defaults().Pool || cfg.Log != Defaults().Log {
		t.Fatalf("empty sections lost the defaults: pool %+v log %+v", cfg.Pool, cfg.Log)
	}
}

func TestEnvOverrides(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, "upstream: "+testURL+"\npool:\n  max_size: 3\n  min_size: 1\nlog:\n  level: warn\n")
	cfg := mustLoad(t, path,
		"PGSIDECAR_POOL__MAX_SIZE=5", // beats the file
		"PGSIDECAR_POOL__ACQUIRE_TIMEOUT=750ms",
		"PGSIDECAR_POOL__LIFETIME_JITTER=0.2",
		"PGSIDECAR_LOG__LEVEL=DEBUG", // enums are case-insensitive
		"PGSIDECAR_LISTEN=127.0.0.1:7432",
		"PGSIDECAR_SHUTDOWN_TIMEOUT=", // empty means unset
		"PGSIDECAR_HEALTH__LISTEN=127.0.0.1:7930",
		"PGSIDECAR_DATABASES__REPORTS__URL=postgres://rep:pw2@127.0.0.1:5433/reporting",
		"PGSIDECAR_DATABASES__REPORTS__POOL__MAX_SIZE=4",
		"OTHER_POOL__MAX_SIZE=99",            // no prefix: ignored
		"PGSIDECAR_CONFIG=/nonexistent.yaml", // read by run, not a key
	)
	if cfg.Pool.MaxSize != 5 || cfg.Pool.MinSize != 1 {
		t.Errorf("pool sizes = %d..%d, want 1..5", cfg.Pool.MinSize, cfg.Pool.MaxSize)
	}
	if cfg.Pool.AcquireTimeout != 750*time.Millisecond {
		t.Errorf("acquire_timeout = %v", cfg.Pool.AcquireTimeout)
	}
	if cfg.Pool.LifetimeJitter != 0.2 {
		t.Errorf("lifetime_jitter = %v", cfg.Pool.LifetimeJitter)
	}
	if cfg.Log.Level != "debug" {
		t.Errorf("log.level = %q", cfg.Log.Level)
	}
	if cfg.Listen != "127.0.0.1:7432" || cfg.Health.Listen != "127.0.0.1:7930" {
		t.Errorf("listen = %q, health.listen = %q", cfg.Listen, cfg.Health.Listen)
	}
	if cfg.ShutdownTimeout != 30*time.Second {
		t.Errorf("shutdown_timeout = %v, want the default", cfg.ShutdownTimeout)
	}
	db, ok := cfg.Databases["reports"]
	if !ok {
		t.Fatalf("databases.reports missing: %+v", cfg.Databases)
	}
	if db.URL != "postgres://rep:pw2@127.0.0.1:5433/reporting" || db.Pool.MaxSize != 4 || db.Pool.MinSize != 1 {
		t.Errorf("databases.reports = url %q pool %d..%d", db.URL, db.Pool.MinSize, db.Pool.MaxSize)
	}
}

func TestDatabaseURLSetsUpstream(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, "upstream: postgres://file:f@127.0.0.1/filedb\n")
	cfg := mustLoad(t, path,
		"PGSIDECAR_UPSTREAM=postgres://env:e@127.0.0.1/envdb",
		"DATABASE_URL="+testURL)
	if cfg.Upstream != testURL {
		t.Fatalf("upstream = %q, want DATABASE_URL to win", RedactURL(cfg.Upstream))
	}
	cfg = mustLoad(t, path, "PGSIDECAR_UPSTREAM=postgres://env:e@127.0.0.1/envdb")
	if cfg.Upstream != "postgres://env:e@127.0.0.1/envdb" {
		t.Fatalf("upstream = %q, want PGSIDECAR_UPSTREAM to beat the file", RedactURL(cfg.Upstream))
	}
	ts, err := mustLoad(t, "", "DATABASE_URL="+testURL).Targets()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Name != "appdb" || ts[0].Key != "upstream" || ts[0].Conn.User != "app" ||
		ts[0].PoolName() != "appdb/app" || ts[0].Users["app"] != "s3cr3t-pw" {
		t.Fatalf("targets = %+v", ts)
	}
	if ts[0].Conn.ConnectTimeout != 5*time.Second {
		t.Errorf("pgconn ConnectTimeout = %v, want pool.connect_timeout", ts[0].Conn.ConnectTimeout)
	}
	// No dbname: like PostgreSQL, the database defaults to the user name.
	ts, err = mustLoad(t, "", "DATABASE_URL=postgres://bob:pw@127.0.0.1:5432").Targets()
	if err != nil || ts[0].Name != "bob" {
		t.Fatalf("targets = %+v, %v; want database bob", ts, err)
	}
}

func TestValidationRejects(t *testing.T) {
	testpg.IsolatePG(t)
	base := "DATABASE_URL=" + testURL
	cases := []struct {
		name string
		env  []string
		want []string
	}{
		{"max below min", []string{"PGSIDECAR_POOL__MAX_SIZE=1"},
			[]string{"config: pool.max_size: must be >= pool.min_size (2), got 1"}},
		{"max zero", []string{"PGSIDECAR_POOL__MAX_SIZE=0", "PGSIDECAR_POOL__MIN_SIZE=0"},
			[]string{"config: pool.max_size: must be >= 1, got 0"}},
		{"min negative", []string{"PGSIDECAR_POOL__MIN_SIZE=-1"}, []string{"config: pool.min_size: must be >= 0"}},
		{"max_client_conn", []string{"PGSIDECAR_POOL__MAX_CLIENT_CONN=0"}, []string{"config: pool.max_client_conn: must be >= 1"}},
		{"max_waiters", []string{"PGSIDECAR_POOL__MAX_WAITERS=-2"}, []string{"config: pool.max_waiters: must be >= 0"}},
		{"max_queries", []string{"PGSIDECAR_POOL__MAX_QUERIES=-2"}, []string{"config: pool.max_queries: must be >= 0"}},
		{"max_backend_errors", []string{"PGSIDECAR_POOL__MAX_BACKEND_ERRORS=-1"}, []string{"config: pool.max_backend_errors: must be >= 0"}},
		{"max_prepared_statements", []string{"PGSIDECAR_POOL__MAX_PREPARED_STATEMENTS=0"},
			[]string{"config: pool.max_prepared_statements: must be >= 1"}},
		{"negative duration", []string{"PGSIDECAR_POOL__MAX_IDLE=-1s"}, []string{"config: pool.max_idle: must be >= 0, got -1s"}},
		{"negative lifetime", []string{"PGSIDECAR_POOL__MAX_LIFETIME=-5m"}, []string{"config: pool.max_lifetime: must be >= 0"}},
		{"negative validate_after_idle", []string{"PGSIDECAR_POOL__VALIDATE_AFTER_IDLE=-1ms"}, []string{"config: pool.validate_after_idle:"}},
		{"negative peek_after_idle", []string{"PGSIDECAR_POOL__PEEK_AFTER_IDLE=-1ms"}, []string{"config: pool.peek_after_idle:"}},
		{"negative leak_timeout", []string{"PGSIDECAR_POOL__LEAK_TIMEOUT=-1s"}, []string{"config: pool.leak_timeout:"}},
		{"negative shutdown_timeout", []string{"PGSIDECAR_SHUTDOWN_TIMEOUT=-1s"}, []string{"config: shutdown_timeout: must be >= 0"}},
		{"negative failed_login_delay", []string{"PGSIDECAR_AUTH__FAILED_LOGIN_DELAY=-1s"}, []string{"config: auth.failed_login_delay: must be >= 0"}},
		{"failed_login_delay_max below delay", []string{"PGSIDECAR_AUTH__FAILED_LOGIN_DELAY=2s", "PGSIDECAR_AUTH__FAILED_LOGIN_DELAY_MAX=1s"},
			[]string{"config: auth.failed_login_delay_max: must be >= auth.failed_login_delay (2s), got 1s"}},
		{"zero acquire_timeout", []string{"PGSIDECAR_POOL__ACQUIRE_TIMEOUT=0"}, []string{"config: pool.acquire_timeout: must be > 0"}},
		{"zero connect_timeout", []string{"PGSIDECAR_POOL__CONNECT_TIMEOUT=0s"}, []string{"config: pool.connect_timeout: must be > 0"}},
		{"zero backoff", []string{"PGSIDECAR_POOL__RECONNECT_BACKOFF=0"}, []string{"config: pool.reconnect_backoff: must be > 0"}},
		{"backoff max below initial", []string{"PGSIDECAR_POOL__RECONNECT_BACKOFF=5s", "PGSIDECAR_POOL__RECONNECT_BACKOFF_MAX=2s"},
			[]string{"config: pool.reconnect_backoff_max: must be >= pool.reconnect_backoff (5s), got 2s"}},
		{"duration without unit", []string{"PGSIDECAR_POOL__ACQUIRE_TIMEOUT=30"},
			[]string{"config: pool.acquire_timeout:", "unit"}},
		{"duration garbage", []string{"PGSIDECAR_SHUTDOWN_TIMEOUT=soon"}, []string{"config: shutdown_timeout:", `"soon"`}},
		{"not a number", []string{"PGSIDECAR_POOL__MAX_SIZE=ten"}, []string{"config: pool.max_size:", `"ten"`, "whole number"}},
		{"jitter over 100%", []string{"PGSIDECAR_POOL__LIFETIME_JITTER=150%"},
			[]string{"config: pool.lifetime_jitter: must be from 0% to below 100%", "got 150%"}},
		{"jitter 100%", []string{"PGSIDECAR_POOL__LIFETIME_JITTER=100%"}, []string{"config: pool.lifetime_jitter:"}},
		{"jitter negative", []string{"PGSIDECAR_POOL__LIFETIME_JITTER=-0.1"}, []string{"config: pool.lifetime_jitter:", "got -10%"}},
		{"jitter garbage", []string{"PGSIDECAR_POOL__LIFETIME_JITTER=lots"}, []string{"config: pool.lifetime_jitter:", "invalid percentage"}},
		{"mode", []string{"PGSIDECAR_POOL__MODE=statement"},
			[]string{`config: pool.mode: must be one of transaction, session, got "statement"`}},
		{"auth method", []string{"PGSIDECAR_AUTH__METHOD=password"}, []string{"config: auth.method: must be one of scram-sha-256, md5, plain, trust"}},
		{"log level", []string{"PGSIDECAR_LOG__LEVEL=verbose"}, []string{"config: log.level: must be one of debug, info, warn, error"}},
		{"log format", []string{"PGSIDECAR_LOG__FORMAT=xml"}, []string{"config: log.format: must be one of auto, text, json"}},
		{"message size low", []string{"PGSIDECAR_MAX_MESSAGE_SIZE=100"}, []string{"config: max_message_size: must be between 1024 and 1073741823 bytes, got 100"}},
		{"client buffer low", []string{"PGSIDECAR_MAX_CLIENT_BUFFER=1000"}, []string{"config: max_client_buffer: must be between 65536 and 1073741823 bytes, got 1000"}},
		{"max_startup_conn", []string{"PGSIDECAR_POOL__MAX_STARTUP_CONN=0"}, []string{"config: pool.max_startup_conn: must be >= 1"}},
		{"message size high", []string{"PGSIDECAR_MAX_MESSAGE_SIZE=2000000000"}, []string{"config: max_message_size:"}},
		{"listen no port", []string{"PGSIDECAR_LISTEN=127.0.0.1"}, []string{"config: listen: must be host:port"}},
		{"listen bad port", []string{"PGSIDECAR_LISTEN=127.0.0.1:99999"}, []string{"config: listen: port must be a number from 0 to 65535"}},
		{"listen named port", []string{"PGSIDECAR_LISTEN=127.0.0.1:postgres"}, []string{"config: listen: port must be a number"}},
		{"listen bad host", []string{"PGSIDECAR_LISTEN=bad host!:6432"}, []string{"config: listen: host must be an IP address or a host name"}},
		{"health listen", []string{"PGSIDECAR_HEALTH__LISTEN=nowhere"}, []string{"config: health.listen: must be host:port"}},
		{"same addresses", []string{"PGSIDECAR_HEALTH__LISTEN=127.0.0.1:6432"}, []string{"config: health.listen: must differ from listen"}},
		{"unknown key", []string{"PGSIDECAR_POOL__MAX_SISE=3"},
			[]string{"config: pool.max_sise: unknown option (set by PGSIDECAR_POOL__MAX_SISE)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantErr(t, "", append([]string{base}, c.env...), c.want...)
		})
	}

	t.Run("several problems reported at once", func(t *testing.T) {
		err := wantErr(t, "", []string{base, "PGSIDECAR_POOL__MODE=x", "PGSIDECAR_LOG__LEVEL=y"}, "pool.mode", "log.level")
		if n := strings.Count(err.Error(), "\n") + 1; n != 2 {
			t.Errorf("got %d lines, want 2: %v", n, err)
		}
	})

	t.Run("unknown key in the file names the file", func(t *testing.T) {
		path := testpg.WriteYAML(t, "pool:\n  max_sise: 3\n")
		wantErr(t, path, []string{base}, "config: pool.max_sise: unknown option (in "+path+")")
	})
	t.Run("yaml type error", func(t *testing.T) {
		wantErr(t, testpg.WriteYAML(t, "pool:\n  max_size: [1, 2]\n"), []string{base}, "config: pool.max_size:")
	})
	t.Run("broken yaml", func(t *testing.T) {
		path := testpg.WriteYAML(t, "pool: [\n")
		wantErr(t, path, []string{base}, "config: reading "+path)
	})
	t.Run("missing file", func(t *testing.T) {
		wantErr(t, filepath.Join(t.TempDir(), "none.yaml"), []string{base}, "config: reading")
	})

	t.Run("no upstream and no databases", func(t *testing.T) {
		wantErr(t, "", nil, "config: upstream:", "DATABASE_URL", "databases")
	})
	t.Run("bad upstream url", func(t *testing.T) {
		err := wantErr(t, "", []string{"DATABASE_URL=postgres://app:hunter2-secret@127.0.0.1:notaport/db"}, "config: upstream:")
		if strings.Contains(err.Error(), "hunter2-secret") {
			t.Fatalf("error leaks the password: %v", err)
		}
	})
	t.Run("empty password with scram", func(t *testing.T) {
		path := testpg.WriteYAML(t, "auth:\n  users:\n    - name: bob\n")
		wantErr(t, path, []string{base}, "config: auth.users[0].password: must not be empty with auth.method scram-sha-256")
	})
	t.Run("empty password with trust is fine", func(t *testing.T) {
		path := testpg.WriteYAML(t, "auth:\n  method: trust\n  users:\n    - name: bob\n")
		cfg := mustLoad(t, path, base)
		ts, err := cfg.Targets()
		if err != nil {
			t.Fatal(err)
		}
		if pw, ok := ts[0].Users["bob"]; !ok || pw != "" {
			t.Fatalf("users = %v", ts[0].Users)
		}
	})
	t.Run("user without name", func(t *testing.T) {
		wantErr(t, testpg.WriteYAML(t, "auth:\n  users:\n    - password: x\n"), []string{base}, "config: auth.users[0].name: must not be empty")
	})
	t.Run("user listed twice", func(t *testing.T) {
		wantErr(t, testpg.WriteYAML(t, "auth:\n  users:\n    - {name: a, password: x}\n    - {name: a, password: y}\n"),
			[]string{base}, `config: auth.users[1].name: user "a" is listed twice`)
	})
	t.Run("upstream without password and no users", func(t *testing.T) {
		wantErr(t, "", []string{"DATABASE_URL=postgres://app@127.0.0.1:5432/appdb"},
			"config: auth.users: nobody can log in to database \"appdb\"", "upstream has no password")
	})
}

func TestPercent(t *testing.T) {
	for in, want := range map[string]Percent{"10%": 0.10, "10 %": 0.10, "0.1": 0.1, "0": 0, "0%": 0, "2.5%": 0.025, " 50% ": 0.5} {
		var p Percent
		if err := p.UnmarshalText([]byte(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if p != want {
			t.Errorf("%q = %v, want %v", in, float64(p), float64(want))
		}
	}
	for _, in := range []string{"", "%", "ten%", "1/10"} {
		var p Percent
		if err := p.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q parsed as %v; want an error", in, float64(p))
		}
	}
	if s := Percent(0.1).String(); s != "10%" {
		t.Errorf("String = %q", s)
	}

	// Through YAML: a string with %, a float, and an integer 0.
	testpg.IsolatePG(t)
	for body, want := range map[string]Percent{"10%": 0.10, "0.25": 0.25, "0": 0, `"5%"`: 0.05} {
		cfg := mustLoad(t, testpg.WriteYAML(t, "pool:\n  lifetime_jitter: "+body+"\n"), "DATABASE_URL="+testURL)
		if cfg.Pool.LifetimeJitter != want {
			t.Errorf("yaml %s = %v, want %v", body, float64(cfg.Pool.LifetimeJitter), float64(want))
		}
	}
}

func TestDatabasesWithPoolOverrides(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, `
upstream: `+testURL+`
pool:
  max_size: 8
  acquire_timeout: 10s
auth:
  users:
    - name: alice
      password: a-pw
    - name: app
      password: client-side-pw
databases:
  reports:
    url: postgres://reporter:rep-pw@127.0.0.1:5433/reporting?sslmode=disable
    users: [alice]
    pool:
      max_size: 4
      min_size: 0
      acquire_timeout: 1s
      lifetime_jitter: 50%
  archive:
    url: host=127.0.0.1 port=5434 dbname=old user=arch password='arch pw' sslmode=disable
`)
	cfg := mustLoad(t, path)
	rep := cfg.Databases["reports"].Pool
	if rep.MaxSize != 4 || rep.MinSize != 0 || rep.AcquireTimeout != time.Second || rep.LifetimeJitter != 0.5 {
		t.Errorf("reports pool = %+v", rep)
	}
	// Keys it does not override follow pool.*.
	if rep.MaxIdle != 60*time.Second || rep.Mode != "transaction" {
		t.Errorf("reports pool did not inherit pool.*: %+v", rep)
	}
	arch := cfg.Databases["archive"].Pool
	if arch.MaxSize != 8 || arch.AcquireTimeout != 10*time.Second {
		t.Errorf("archive pool = %+v, want pool.* values", arch)
	}

	ts, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range ts {
		names = append(names, tg.Name)
	}
	if strings.Join(names, ",") != "appdb,archive,reports" {
		t.Fatalf("target order = %v, want upstream first then by name", names)
	}
	up, archT, repT := ts[0], ts[1], ts[2]
	if up.Pool.MaxSize != 8 || repT.Pool.MaxSize != 4 || repT.Conn.ConnectTimeout != 5*time.Second {
		t.Errorf("target pools: upstream %d, reports %d", up.Pool.MaxSize, repT.Pool.MaxSize)
	}
	if repT.Conn.Database != "reporting" || repT.PoolName() != "reports/reporter" || repT.Key != "databases.reports.url" {
		t.Errorf("reports target = db %q pool %q key %q", repT.Conn.Database, repT.PoolName(), repT.Key)
	}
	if archT.Conn.User != "arch" || archT.Conn.Password != "arch pw" || archT.Conn.Port != 5434 {
		t.Errorf("archive (key=value form) parsed as %s@%d", archT.Conn.User, archT.Conn.Port)
	}
	// auth.users entries log in to upstream, replacing the URL's password
	// for the same user name, and to the databases that list them only.
	wantUsers := map[string]string{"app": "client-side-pw", "alice": "a-pw"}
	if !reflect.DeepEqual(up.Users, wantUsers) {
		t.Errorf("upstream users = %v, want %v", up.Users, wantUsers)
	}
	wantUsers = map[string]string{"reporter": "rep-pw", "alice": "a-pw"}
	if !reflect.DeepEqual(repT.Users, wantUsers) {
		t.Errorf("reports users = %v, want %v", repT.Users, wantUsers)
	}
	wantUsers = map[string]string{"arch": "arch pw"}
	if !reflect.DeepEqual(archT.Users, wantUsers) {
		t.Errorf("archive users = %v, want %v (it lists no login)", archT.Users, wantUsers)
	}

	t.Run("proxy-wide key rejected", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: "+testURL+"\n    pool:\n      mode: session\n")
		wantErr(t, p, nil, "config: databases.r.pool.mode: applies to the whole proxy; set pool.mode instead")
	})
	t.Run("unknown override", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: "+testURL+"\n    pool:\n      max_sise: 2\n")
		wantErr(t, p, nil, "config: databases.r.pool.max_sise: unknown option")
	})
	t.Run("bad override value", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: "+testURL+"\n    pool:\n      max_idle: forever\n")
		wantErr(t, p, nil, "config: databases.r.pool.max_idle:", "forever")
	})
	t.Run("invalid override", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: "+testURL+"\n    pool:\n      max_size: 1\n")
		wantErr(t, p, nil, "config: databases.r.pool.max_size: must be >= databases.r.pool.min_size (2), got 1")
	})
	t.Run("unknown key in an entry", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: "+testURL+"\n    uri: x\n")
		wantErr(t, p, nil, "config: databases.r.uri: unknown option (in "+p+")")
	})
	t.Run("url of the wrong type", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: [1]\n")
		wantErr(t, p, nil, "config: databases.r.url: cannot use [1]: want a string")
	})
	t.Run("missing url", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    pool:\n      max_size: 3\n")
		wantErr(t, p, nil, "config: databases.r.url: must be set")
	})
	t.Run("name clash with upstream", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  appdb:\n    url: postgres://x:y@127.0.0.1/other\n")
		wantErr(t, p, []string{"DATABASE_URL=" + testURL}, `config: databases.appdb.url: database name "appdb" is already served by upstream`)
	})
	t.Run("databases alone are enough", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  only:\n    url: "+testURL+"\n")
		ts, err := mustLoad(t, p).Targets()
		if err != nil || len(ts) != 1 || ts[0].Name != "only" || ts[0].Conn.Database != "appdb" {
			t.Fatalf("targets = %+v, %v", ts, err)
		}
	})
	t.Run("bad url names the database and hides the password", func(t *testing.T) {
		p := testpg.WriteYAML(t, "databases:\n  r:\n    url: postgres://u:topsecret@127.0.0.1:70000/x\n")
		err := wantErr(t, p, nil, "config: databases.r.url:")
		if strings.Contains(err.Error(), "topsecret") {
			t.Fatalf("error leaks the password: %v", err)
		}
	})
}

func TestRedaction(t *testing.T) {
	cases := map[string]string{
		"postgres://app:s3cr3t@db:5432/app?sslmode=require":     "postgres://app:xxxxx@db:5432/app?sslmode=require",
		"postgresql://app@db/app":                               "postgresql://app@db/app",
		"postgres://app@db/app?password=s3cr3t&sslmode=disable": "postgres://app@db/app?password=xxxxx&sslmode=disable",
		"host=db user=app password=s3cr3t dbname=app":           "host=db user=app password=xxxxx dbname=app",
		"host=db password='s3 cr\\'3t' dbname=app":              "host=db password='xxxxx' dbname=app",
		"postgres://app:s3cr3t@db:notaport/app":                 "postgres://app:xxxxx@db:notaport/app",
		"postgres://app:p%40ss@db/app":                          "postgres://app:xxxxx@db/app",
	}
	for in, want := range cases {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}

	if got := RedactURL("postgres://app:p@ss w0rd@db:bad/app"); got != "postgres://app:xxxxx@db:bad/app" {
		t.Errorf("password with an unescaped @: %q", got)
	}
	raw := "postgres://app:p@ss w0rd@db:bad/app"
	msg := scrubSecrets(`cannot parse "postgres://app:p@ss w0rd@db:bad/app" and p%40ss%20w0rd`, raw)
	if strings.Contains(msg, "ss w0rd") || strings.Contains(msg, "ss%20w0rd") || !strings.Contains(msg, "cannot parse") {
		t.Errorf("scrubSecrets left the password: %s", msg)
	}

	// Targets print Redacted, users never print their password.
	tg := Target{URL: testURL}
	if strings.Contains(tg.Redacted(), "s3cr3t-pw") {
		t.Errorf("Redacted = %q", tg.Redacted())
	}
	if s := fmt.Sprint(UserConfig{Name: "alice", Password: "wonderland"}); s != "alice" {
		t.Errorf("UserConfig prints as %q", s)
	}
}

// TestRepoConfigYAMLMatchesDefaults keeps config.yaml, the documentation of
// every option, and Defaults in step.
func TestRepoConfigYAMLMatchesDefaults(t *testing.T) {
	testpg.IsolatePG(t)
	cfg, err := read(repoConfigYAML, nil)
	if err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	if !reflect.DeepEqual(*cfg, Defaults()) {
		t.Fatalf("config.yaml differs from Defaults():\n file %+v\n code %+v", *cfg, Defaults())
	}
	// It is a valid start configuration once there is a database.
	if _, err := Load(repoConfigYAML, []string{"DATABASE_URL=" + testURL}); err != nil {
		t.Fatalf("config.yaml + DATABASE_URL: %v", err)
	}

	// Every option appears in the file, written out, not just defaulted.
	written := koanf.New(".")
	if err := written.Load(file.Provider(repoConfigYAML), yaml.Parser()); err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	for key := range flatten(&d) {
		if !written.Exists(key) {
			t.Errorf("option %s is not documented in config.yaml", key)
		}
	}
	for _, key := range written.Keys() {
		if _, ok := flatten(&d)[key]; !ok {
			t.Errorf("config.yaml has %s, which is no option", key)
		}
	}
}

func TestConfigPath(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "my.yaml")
	if err := os.WriteFile(existing, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none.yaml")

	if p, err := Path(existing, true, nil); err != nil || p != existing {
		t.Errorf("explicit existing: %q, %v", p, err)
	}
	if _, err := Path(missing, true, nil); err == nil || !strings.Contains(err.Error(), "-config "+missing) {
		t.Errorf("explicit missing: %v", err)
	}
	if p, err := Path("", true, nil); err != nil || p != "" {
		t.Errorf(`-config "": %q, %v`, p, err)
	}
	if p, err := Path("", false, []string{EnvConfigPath + "=" + existing}); err != nil || p != existing {
		t.Errorf("PGSIDECAR_CONFIG: %q, %v", p, err)
	}
	if _, err := Path("", false, []string{EnvConfigPath + "=" + missing}); err == nil || !strings.Contains(err.Error(), EnvConfigPath) {
		t.Errorf("PGSIDECAR_CONFIG missing: %v", err)
	}

	// Without a flag: ./config.yaml when it exists, else nothing.
	t.Chdir(dir)
	if p, err := Path("", false, nil); err != nil || p != "" {
		t.Errorf("no config.yaml: %q, %v", p, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := Path("", false, nil); err != nil || p != "config.yaml" {
		t.Errorf("with config.yaml: %q, %v", p, err)
	}
}

func TestLogLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, " warn": slog.LevelWarn, "error": slog.LevelError} {
		var l LogLevel
		if err := l.UnmarshalText([]byte(in)); err != nil || l.Slog() != want {
			t.Errorf("log.level %q = %v (%v), want %v", in, l.Slog(), err, want)
		}
	}
}
