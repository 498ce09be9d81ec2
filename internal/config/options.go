// The option table (Options): each option's key, default, reload behaviour
// and documentation line; and what derives from it: Defaults, and the field
// an option's key names (field).

package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/v2"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// OnReload says what a SIGHUP does with a changed option.
type OnReload int

const (
	// Live options are applied to the running process.
	Live OnReload = iota
	// Restart options are only logged as needing a restart: sockets are
	// open, the proxy and pools were built for them.
	Restart
	// PerEntry is the databases map: adding, removing or re-pointing an
	// entry needs a restart, its pool overrides change live.
	PerEntry
)

// Option is one configuration key. Options is the one place each option's
// default, reload behaviour and documentation line are written: Defaults
// and Plan derive from it, and tests hold config.yaml and the README's
// option table to it.
type Option struct {
	// Key is the dotted name, as in config.yaml: "pool.max_size".
	Key string
	// Default is the value nobody sets, spelled as in config.yaml (and
	// decoded as a value from the file is).
	Default string
	// Reload is what a reload does with a change.
	Reload OnReload
	// PerDatabase marks the pool.* options a databases entry may override;
	// the other pool.* options apply to the whole proxy.
	PerDatabase bool
	// Doc is the option's line in the README's option table.
	Doc string
}

// Options lists every option, in config.yaml's order.
var Options = []Option{
	{Key: "listen", Default: "127.0.0.1:6432", Reload: Restart,
		Doc: "Address clients connect to."},
	{Key: "health.listen", Default: "127.0.0.1:9930", Reload: Restart,
		Doc: "Address of the HTTP listener (`/livez`, `/readyz`, `/health`, `/stats`, `/metrics`)."},
	{Key: "upstream", Default: `""`, Reload: Restart,
		Doc: "The real database, `postgres://user:password@host:port/db?sslmode=...`; `DATABASE_URL` overrides it. Clients connect to its database name and log in with its user and password unless `auth.users` lists others. The password may be left out of the URL: backends then log in with its user's `auth.users` entry (`password` or `password_file`), as PgBouncer takes a server password from its `auth_file` (see \"Secrets\")."},
	{Key: "databases", Default: "{}", Reload: PerEntry,
		Doc: "More databases, like PgBouncer's `[databases]`: name clients use -> `url`, optional `users` and optional `pool` overrides. `databases.<name>.users` lists the logins of `auth.users` / `auth.users_file` that may connect to that database besides its URL's own user (from the environment: `PGSIDECAR_DATABASES__<NAME>__USERS=alice,bob`); an unlisted login reaches only `upstream`, so a login meant for the application cannot reach another database with that database's role. `databases.<name>.max_db_connections` overrides `max_db_connections` for that database (0 = no cap). An entry named `*` serves every other database name on its server under the client's own name (its URL's dbname is ignored), as PgBouncer's `* =`: a database created at run time, or `template1`, needs no change here; a pool per name opens at the first login (after authentication) and closes when the server says the database does not exist; the pools of `template0` and `template1` keep no idle backend, so CREATE DATABASE (which needs its template free of other sessions) works through and beside pgsidecar."},
	{Key: "pool.mode", Default: "transaction", Reload: Restart,
		Doc: "`transaction`: a backend per transaction; `session`: a backend per client connection."},
	{Key: "pool.min_size", Default: "2", PerDatabase: true,
		Doc: "Backends kept open and warm per database."},
	{Key: "pool.max_size", Default: "10", PerDatabase: true,
		Doc: "Most backends per database. Lowered by SIGHUP, the idle backends above it are closed at once and those in use at their release."},
	{Key: "pool.max_client_conn", Default: "10000",
		Doc: "Most client connections at once, counted from the startup packet (before authentication); the next gets 53300. Admin console logins (`admin.database`) count too, but when it is full 3 more console sessions are let in beyond it (a fixed reserve, as PostgreSQL's `superuser_reserved_connections`), so an operator can see why; past the reserve a console login gets 53300 as well (see \"Limits\")."},
	{Key: "pool.max_startup_conn", Default: "1000",
		Doc: "Most connections still logging in (startup, authentication) at once; the next is refused with 53300 at accept, before anything is read. Bounds a connect flood."},
	{Key: "pool.acquire_timeout", Default: "30s", PerDatabase: true,
		Doc: "How long a client waits for a backend before 53300."},
	{Key: "pool.max_waiters", Default: "0", PerDatabase: true,
		Doc: "Most clients waiting per database for a backend to be released; more are refused at once. Clients a connect in flight (or one there is room for under `max_size`) will serve do not count, so a pool with room refuses nobody. 0 = unbounded."},
	{Key: "pool.validation_query", Default: "SELECT 1", PerDatabase: true,
		Doc: "Run on a backend idle longer than `validate_after_idle` before reuse, and by the idle check; `\"\"` disables both."},
	{Key: "pool.validate_after_idle", Default: "1s", PerDatabase: true,
		Doc: "Idle time after which a backend is validated; 0 = on every acquire."},
	{Key: "pool.peek_after_idle", Default: "1s", PerDatabase: true,
		Doc: "Idle time after which a backend's socket is peeked (one non-blocking `recvfrom`) before reuse, to catch a backend the server closed; a backend released more recently is handed out without the peek, saving a system call per transaction (the maintainer still peeks idle sockets every second). A backend that died unseen is caught by its first reply and the request is sent again on another backend, while nothing has reached the client (see \"Dead backends\"). 0 = peek on every acquire."},
	{Key: "pool.max_lifetime", Default: "1h", PerDatabase: true,
		Doc: "Backends are recycled (between transactions) after this long; 0 = unlimited."},
	{Key: "pool.lifetime_jitter", Default: "10%", PerDatabase: true,
		Doc: "Random fraction taken off each lifetime so backends do not all recycle together."},
	{Key: "pool.max_idle", Default: "60s", PerDatabase: true,
		Doc: "A backend idle this long is closed, down to `min_size`; 0 = never."},
	{Key: "pool.max_queries", Default: "50000", PerDatabase: true,
		Doc: "A backend is recycled after this many queries; 0 = unlimited."},
	{Key: "pool.max_backend_errors", Default: "0", PerDatabase: true,
		Doc: "A backend is retired (at its next release) after this many connection-level or protocol errors: a server ErrorResponse of class 08 (connection exception), 58 (system error) or XX (internal error), or a broken relay; ordinary SQL errors are counted (SHOW SERVERS) but never retire. 0 = off."},
	{Key: "pool.leak_timeout", Default: "30s", PerDatabase: true,
		Doc: "A transaction holding a backend longer is logged once with the client and its last statement; in session mode only time inside a transaction counts, not a session idle between transactions; 0 = off."},
	{Key: "pool.connect_timeout", Default: "5s", PerDatabase: true,
		Doc: "Time to open and authenticate one backend connection."},
	{Key: "pool.idle_check_interval", Default: "5s", PerDatabase: true,
		Doc: "With no sign of life from the database for this long, run `validation_query` on an idle backend, so a database that stops answering turns `/readyz` 503 within this + `connect_timeout` without traffic; no answer closes the idle backends; 0 = off."},
	{Key: "pool.reconnect_backoff", Default: "1s", PerDatabase: true,
		Doc: "First wait after a failed connect, doubling with jitter."},
	{Key: "pool.reconnect_backoff_max", Default: "16s", PerDatabase: true,
		Doc: "Cap of that wait."},
	{Key: "pool.hold_on_restart", Default: "10s", PerDatabase: true,
		Doc: "When a pool that was serving loses the database (a restart or failover: every backend ends, connects are refused), new transactions wait up to this long for it to come back (FIFO, within `acquire_timeout`) instead of failing at once with 08006, and reconnects are tried every 250ms meanwhile; 0 = off (fail fast)."},
	{Key: "pool.reset_query", Default: "DISCARD ALL", Reload: Restart,
		Doc: "Session mode: run when a client leaves; `\"\"` skips it."},
	{Key: "pool.session_state", Default: "pin", Reload: Restart,
		Doc: "Transaction mode: a client that creates session state (session advisory lock, temp table, WITH HOLD cursor, SQL PREPARE, SET ROLE) keeps its backend until the state is gone (`pin`), or such statements fail with 0A000 (`reject`); see \"Session state\" below."},
	{Key: "pool.max_prepared_statements", Default: "200", Reload: Restart,
		Doc: "Transaction mode: prepared statements kept per backend (LRU); clients share a copy per distinct statement (text, parameter types, result description), so size it for the distinct statements all clients use, with headroom."},
	{Key: "pool.query_timeout", Default: "0s",
		Doc: "A query (or COPY) running longer is cancelled on the server and the client gets 57014 naming this option; its session goes on. A server that does not act on the cancel within 5s has its connection closed, and the client gets FATAL 08006 if the server is stopped or cut off, or 57014 naming its own stall if it is the client the server waits for (silent in COPY, not reading its results). 0 = off."},
	{Key: "pool.idle_transaction_timeout", Default: "0s",
		Doc: "A client idle inside a transaction longer gets FATAL 25P03; its transaction is rolled back and its backend goes back to the pool. 0 = off."},
	{Key: "pool.client_idle_timeout", Default: "0s",
		Doc: "A client idle outside a transaction longer is closed with FATAL 57P05 (idle_session_timeout). 0 = off."},
	{Key: "pool.client_login_timeout", Default: "15s",
		Doc: "Time from connect to the end of login (startup, authentication, a wait for a backend to learn the server's parameters); then FATAL 53300 (no backend was free) or 08006, never a silent close. 0 = no limit."},
	{Key: "max_db_connections", Default: "0",
		Doc: "Most backends of one database across the pools of all its roles (PgBouncer's `max_db_connections`), counted from the start of a connect to the end of its close; a database entry overrides it with `databases.<name>.max_db_connections`, and for the `*` entry it applies to each database name on its own. When the cap is reached, waiters queue in arrival order across the roles, an idle backend of another role is closed to make room (below `min_size` if need be), and a released backend goes to an older waiter of another role by a close and a connect. Lowered by SIGHUP below the backends open, the idle ones above it are closed at once (below `min_size` if need be) and those in use at their release. 0 = no cap."},
	{Key: "max_total_connections", Default: "0",
		Doc: "Most backends across the whole proxy, all databases and roles together (PgBouncer's `max_total_connections`), with the same queueing and idle eviction as `max_db_connections`, and the same closing of the backends above it when lowered by SIGHUP. 0 = no cap."},
	{Key: "max_message_size", Default: strconv.Itoa(proxy.MaxMessageSizeLimit), Reload: Restart,
		Doc: "Largest protocol message accepted, in bytes; larger closes the connection."},
	{Key: "max_client_buffer", Default: "4194304", Reload: Restart,
		Doc: "Most bytes of one client message held in memory; larger Query, Bind and COPY data are streamed, a larger Parse in transaction mode gets 54000."},
	{Key: "shutdown_timeout", Default: "30s",
		Doc: "On SIGTERM, how long open transactions get to finish; then their clients get 57P01 and the transactions are rolled back (see Signals)."},
	{Key: "auth.method", Default: "scram-sha-256",
		Doc: "How clients authenticate to the proxy: `scram-sha-256`, `md5`, `plain` or `trust`."},
	{Key: "auth.users", Default: "[]",
		Doc: "Extra logins `{name, password}` or `{name, password_file}` besides the upstream URL's user; an entry named as a URL's user is that user's password, for clients and, when the URL has none, for backends. They reach `upstream`, and another database only when its `databases.<name>.users` lists them. A password may be a SCRAM verifier (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`, from `pg_authid.rolpassword` or `pgsidecar hash-password`; only `auth.method` `scram-sha-256` checks it) or an md5 hash (`md5` + 32 hex digits, as `pg_authid` or a PgBouncer `userlist.txt` holds it; only `md5` and `plain` check it): the proxy then never holds the cleartext. `password_file` names a file holding the password or verifier, e.g. a mounted Kubernetes secret: its whole content less one trailing newline, read again on every SIGHUP; a file that is missing, empty, of more than one line, or that grants others any access or its group more than read (0600, or 0440 with a shared group) stops the start, or the reload, naming it (see \"Secrets\"). From the environment: `PGSIDECAR_AUTH__USERS=alice:secret,bob:secret2` (each entry split at its first `:`; a password with a comma, or ending in spaces, goes in `auth.users_file`)."},
	{Key: "auth.users_file", Default: `""`,
		Doc: "A file of more logins, one `name:password` a line (split at the first `:`, the password verbatim to the end of the line; blank lines and `#` comments skipped), e.g. a mounted secret: `PGSIDECAR_AUTH__USERS_FILE=/run/secrets/pgsidecar-users`. Added to `auth.users` (a name in both is an error) and read again on every SIGHUP. A file with no login (empty, or comments only) is started with and a warning logged (as PgBouncer starts with an empty `auth_file`), but a SIGHUP that finds it so while the running configuration has logins from it is refused, naming the file, and the running logins stay: a file caught between the truncate and the write of a rewrite would otherwise refuse them all (to drop them all, unset the option or restart). Here as in `auth.users`, a password may be a SCRAM verifier or an md5 hash. The file must grant others nothing and its group at most read, as a `password_file`."},
	{Key: "auth.failed_login_delay", Default: "200ms",
		Doc: "Brute-force brake: after a failed login, the next login from the same source address waits this long before its password is checked, doubling per further failure up to `auth.failed_login_delay_max`; a success clears it. Parallel attempts from one address queue; an attempt whose wait would outlast the login timeout is refused with 28000. Other addresses are not slowed (IPv6 per /64); at most 10000 addresses are remembered. A client sharing an attacker's address (NAT) waits too. 0 = off."},
	{Key: "auth.failed_login_delay_max", Default: "5s",
		Doc: "Cap of that delay: at the cap an address gets about one guess per this interval."},
	{Key: "auth.failed_login_delay_loopback", Default: "false",
		Doc: "Apply the brake to loopback clients too; off by default because on a sidecar the application itself connects over loopback."},
	{Key: "auth.passthrough", Default: "false", Reload: Restart,
		Doc: "Clients log in as their own PostgreSQL roles, as PgBouncer's `auth_user` + `auth_query`: the proxy looks up the role's SCRAM verifier with `auth.query`, checks the client against it (`auth.method` must be `scram-sha-256`), and logs in to the server as that role with the ClientKey recovered from the client's proof, in a pool per (database, role) of `pool.max_size` opened at the role's first login. `auth.users` and the URL's password then only serve the auth user and the admin console. With a `*` databases entry, `auth.query` runs in the database the entry's URL names (one auth pool for the entry, as PgBouncer's `auth_dbname`; roles are the cluster's), and each database name gets its own pools per role."},
	{Key: "auth.query", Default: `"SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin"`, Reload: Live,
		Doc: "With `auth.passthrough`: the query (one parameter, the role; two columns, name and verifier) run as `auth.user` in the client's database. Reading `pg_authid` needs a superuser; otherwise a `SECURITY DEFINER` function owned by one, e.g. `SELECT * FROM pgsidecar_get_auth($1)` (see \"Logins as their own roles\"). A change on SIGHUP empties the verifier cache."},
	{Key: "auth.user", Default: `""`, Reload: Restart,
		Doc: "With `auth.passthrough`: the role that runs `auth.query`, in a dedicated pool of at most 2 backends per database; its password comes from its `auth.users` entry (a `password_file` keeps it out of the configuration; a new one is used by the next backends after SIGHUP) or, for the URL's own user, the URL. `\"\"` = each database's own URL user."},
	{Key: "auth.cache_ttl", Default: "30s", Reload: Live,
		Doc: "With `auth.passthrough`: how long a looked-up verifier (or the absence of one) is reused before `auth.query` runs again for that role. Longer costs fewer queries; shorter makes a changed password (`ALTER ROLE ... PASSWORD`), a dropped role or a removed LOGIN take effect sooner: until then the old password still logs in and the new one is refused. 0 = query on every login. A change on SIGHUP applies to the verifiers cached already."},
	{Key: "tls.mode", Default: "disable",
		Doc: "Client TLS, as PgBouncer's `client_tls_sslmode`: `disable` (an SSLRequest is answered 'N'), `allow` / `prefer` (TLS when the client asks, plain text otherwise), `require` (a client logging in without TLS gets 28000; cancel requests may stay plain text, as libpq sends them), `verify-ca` (also a client certificate signed by `tls.ca_file`), `verify-full` (also the certificate's CN must be the user name, as PostgreSQL's `clientcert=verify-full`). Direct TLS (`sslnegotiation=direct`, ALPN `postgresql`) is accepted whenever TLS is on. Backends keep the upstream URL's own `sslmode`."},
	{Key: "tls.cert_file", Default: `""`,
		Doc: "The proxy's certificate (PEM, the chain after the leaf); needed unless `tls.mode` is `disable`. Read again on every SIGHUP: new clients get the new certificate, connected ones keep their session."},
	{Key: "tls.key_file", Default: `""`,
		Doc: "The certificate's private key (PEM); reloaded with it."},
	{Key: "tls.ca_file", Default: `""`,
		Doc: "CA certificates (PEM) that client certificates must chain to; needed for `verify-ca` and `verify-full`, unused otherwise; reloaded on SIGHUP."},
	{Key: "tls.min_version", Default: `"1.2"`,
		Doc: "Oldest TLS version accepted: `1.2` (what PostgreSQL's `ssl_min_protocol_version` defaults to, every maintained libpq speaks it) or `1.3` (smaller attack surface, refuses older clients)."},
	{Key: "tls.ciphers", Default: "default",
		Doc: "TLS 1.2 cipher suites: `default` is Go's default, secure set (ECDHE key exchange only, AEAD suites first), or a comma-separated list of Go's names, e.g. `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`, to narrow it; insecure suites are refused. TLS 1.3's suites are fixed by Go."},
	{Key: "log.level", Default: "info",
		Doc: "`debug`, `info`, `warn` or `error`."},
	{Key: "log.format", Default: "auto", Reload: Restart,
		Doc: "`auto` (colour text on a terminal, JSON otherwise), `text` or `json`."},
	{Key: "admin.database", Default: "pgsidecar", Reload: Restart,
		Doc: "Virtual database of the admin console (`psql ... pgsidecar`, then `SHOW POOLS`); must not be the name of a served database."},
	{Key: "admin.users", Default: "[]",
		Doc: "Logins (a served database's URL user, or a login of `auth.users` or `auth.users_file` that reaches a database, with those passwords) that may use every console command; empty = the upstream URL's user, or without `upstream` the first database's URL user. From the environment: `PGSIDECAR_ADMIN__USERS=alice,bob`."},
	{Key: "admin.stats_users", Default: "[]",
		Doc: "Logins that may use only the console's `SHOW` commands (others get 42501)."},
	{Key: "admin.http_token", Default: `""`,
		Doc: "Bearer token for the HTTP admin writes (`POST /admin/reload`, `/admin/pause`, `/admin/resume`, `/admin/reconnect`); `\"\"` refuses them all with 401. The reads (`/pools`, `/clients`, `/servers`) need no token, like `/stats`."},
}

// option finds key in Options.
func option(key string) (Option, bool) {
	for _, o := range Options {
		if o.Key == key {
			return o, true
		}
	}
	return Option{}, false
}

// Defaults returns the configuration used for every option nobody sets:
// each Option's Default, decoded as the file would be. It panics on a
// Default that does not decode, which the package's tests rule out.
func Defaults() Config {
	k := koanf.New(".")
	for _, o := range Options {
		// A one-line YAML document, so "10" is a number, "{}" a map and
		// `""` the empty string, exactly as written in config.yaml.
		doc, err := yaml.Parser().Unmarshal([]byte("v: " + o.Default))
		if err != nil {
			panic(fmt.Sprintf("config: option %s: default %q: %v", o.Key, o.Default, err))
		}
		if err := k.Set(o.Key, doc["v"]); err != nil {
			panic(fmt.Sprintf("config: option %s: %v", o.Key, err))
		}
	}
	// Zero values, not nil, for the collections: a Config compares equal
	// to one decoded from a file that writes "{}" and "[]".
	cfg := Config{Databases: map[string]DatabaseConfig{}, Auth: AuthConfig{Users: []UserConfig{}}}
	dc := decoderConfig(nil)
	dc.ErrorUnused = true
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{DecoderConfig: dc}); err != nil {
		panic(fmt.Sprintf("config: option table: %v", decodeError(err)))
	}
	return cfg
}

// field returns the field of v (a Config or a PoolConfig) that key names,
// following the koanf tags. It panics on a key that names no field.
func field(v reflect.Value, key string) reflect.Value {
	for name := range strings.SplitSeq(key, ".") {
		t := v.Type()
		found := false
		for i := range t.NumField() {
			if t.Field(i).Tag.Get("koanf") == name {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			panic(fmt.Sprintf("config: %s names no field of %s", key, t))
		}
	}
	return v
}
