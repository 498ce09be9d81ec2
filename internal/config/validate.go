// Validate: every option's value checked, all problems reported at once,
// each line naming its option.

package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// minClientBuffer keeps max_client_buffer high enough that ordinary
// prepared statements (a Parse is read whole in transaction mode) pass.
const minClientBuffer = 64 << 10

// minMessageSize keeps max_message_size above what a normal StartupMessage
// or a short query needs.
const minMessageSize = 1024

// problems collects every invalid option so one start reports them all.
type problems []string

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, fmt.Sprintf("config: %s: %s", key, fmt.Sprintf(format, args...)))
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New(strings.Join(p, "\n"))
}

// Validate checks every option and reports all problems at once, each line
// naming the option. Secrets never appear in the messages.
func (c *Config) Validate() error {
	var p problems
	c.checkListens(&p)
	c.checkLimits(&p)
	seen := c.checkUsers(&p)
	c.checkReach(&p, seen)
	c.checkLoginDelay(&p)
	c.checkPassthrough(&p)
	c.checkTLS(&p)

	if len(p) > 0 {
		// Databases are checked only once the simple options are right:
		// their users depend on auth.* being valid.
		return p.err()
	}
	targets, err := c.Targets()
	if err != nil {
		return err
	}
	if _, _, err := c.AdminLogins(targets); err != nil {
		return err
	}
	return nil
}

// checkListens validates the two listen addresses.
func (c *Config) checkListens(p *problems) {
	checkListen(p, "listen", c.Listen)
	checkListen(p, "health.listen", c.Health.Listen)
	if c.Listen == c.Health.Listen && !strings.HasSuffix(c.Listen, ":0") {
		p.add("health.listen", "must differ from listen (%s)", c.Listen)
	}
}

// checkLimits validates the pools (and each database's overrides), the
// client and message limits and the connection caps.
func (c *Config) checkLimits(p *problems) {
	checkPool(p, "pool", c.Pool)
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		checkPool(p, "databases."+name+".pool", c.Databases[name].Pool)
	}
	if c.Pool.MaxClientConn < 1 {
		p.add("pool.max_client_conn", "must be >= 1, got %d", c.Pool.MaxClientConn)
	}
	if c.Pool.MaxStartupConn < 1 {
		p.add("pool.max_startup_conn", "must be >= 1, got %d", c.Pool.MaxStartupConn)
	}
	if c.Pool.MaxPreparedStatements < 1 {
		p.add("pool.max_prepared_statements", "must be >= 1, got %d", c.Pool.MaxPreparedStatements)
	}

	if c.MaxMessageSize < minMessageSize || c.MaxMessageSize > proxy.MaxMessageSizeLimit {
		p.add("max_message_size", "must be between %d and %d bytes, got %d", minMessageSize, proxy.MaxMessageSizeLimit, c.MaxMessageSize)
	}
	if c.MaxClientBuffer < minClientBuffer || c.MaxClientBuffer > proxy.MaxMessageSizeLimit {
		p.add("max_client_buffer", "must be between %d and %d bytes, got %d", minClientBuffer, proxy.MaxMessageSizeLimit, c.MaxClientBuffer)
	}
	checkDuration(p, "shutdown_timeout", c.ShutdownTimeout)
	if c.MaxDBConnections < 0 {
		p.add("max_db_connections", "must be >= 0 (0 = no cap), got %d", c.MaxDBConnections)
	}
	if c.MaxTotalConnections < 0 {
		p.add("max_total_connections", "must be >= 0 (0 = no cap), got %d", c.MaxTotalConnections)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		if n := c.Databases[name].MaxDBConnections; n != nil && *n < 0 {
			p.add("databases."+name+".max_db_connections", "must be >= 0 (0 = no cap), got %d", *n)
		}
	}
}

// checkUsers validates each login of auth.users and auth.users_file (a
// name, once; a password auth.method can check) and returns the names.
func (c *Config) checkUsers(p *problems) (seen map[string]bool) {
	seen = map[string]bool{}
	for i, u := range c.Auth.AllUsers() {
		key := fmt.Sprintf("auth.users[%d]", i)
		if i >= len(c.Auth.Users) {
			key = fmt.Sprintf("auth.users_file (login %d of %s)", i-len(c.Auth.Users)+1, c.Auth.UsersFile)
		}
		switch {
		case u.Name == "":
			p.add(key+".name", "must not be empty")
		case seen[u.Name]:
			p.add(key+".name", "user %q is listed twice (auth.users and auth.users_file together)", u.Name)
		}
		seen[u.Name] = true
		pwKey := key + ".password"
		if u.PasswordFile != "" {
			// Load read the file into Password; say where it came from.
			pwKey = key + ".password_file (" + u.PasswordFile + ")"
		}
		c.checkPassword(p, pwKey, u.Password)
	}
	return seen
}

// checkPassword validates one login's password (or verifier) against
// auth.method: key names it in the messages, which never quote it.
func (c *Config) checkPassword(p *problems, key, password string) {
	if password == "" && c.Auth.Method != proxy.AuthTrust {
		p.add(key, "must not be empty with auth.method %s (only trust accepts users without a password)", c.Auth.Method)
	}
	if proxy.IsMD5Hash(password) && c.Auth.Method != proxy.AuthMD5 && c.Auth.Method != proxy.AuthPlain {
		p.add(key, "is an md5 hash, which only auth.method md5 or plain can check (got %s); "+
			"for scram-sha-256 give a SCRAM verifier (pgsidecar hash-password) or the password", c.Auth.Method)
	}
	if proxy.IsSCRAMVerifier(password) {
		if c.Auth.Method != proxy.AuthSCRAM {
			p.add(key, "is a SCRAM verifier, which only auth.method scram-sha-256 can check (got %s)", c.Auth.Method)
		} else if _, err := proxy.ParseSCRAMVerifier(password); err != nil {
			p.add(key, "%v", err)
		}
	}
}

// checkReach validates which logins reach which database: every name in
// databases.<name>.users must be a login (seen), and without upstream
// every login must reach some database.
func (c *Config) checkReach(p *problems, seen map[string]bool) {
	listed := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		// A URL user's own entry reaches its database (Targets reports a
		// URL that does not parse).
		if url := c.Databases[name].URL; strings.TrimSpace(url) != "" {
			if conn, err := pgconn.ParseConfig(url); err == nil && conn.User != "" {
				listed[conn.User] = true
			}
		}
		for i, u := range c.Databases[name].Users {
			listed[u] = true
			if !seen[u] {
				p.add(fmt.Sprintf("databases.%s.users[%d]", name, i),
					"%q is not a login of auth.users or auth.users_file: define it there, then list it here", u)
			}
		}
	}
	if strings.TrimSpace(c.Upstream) != "" {
		return
	}
	for _, u := range c.Auth.AllUsers() {
		if u.Name != "" && !listed[u.Name] {
			p.add("auth.users", "login %q can reach no database: without upstream, a login reaches only the databases whose URL "+
				"user it is or whose databases.<name>.users lists it", u.Name)
		}
	}
}

// checkLoginDelay validates the failed-login brake's two delays.
func (c *Config) checkLoginDelay(p *problems) {
	checkDuration(p, "auth.failed_login_delay", c.Auth.FailedLoginDelay)
	checkDuration(p, "auth.failed_login_delay_max", c.Auth.FailedLoginDelayMax)
	if c.Auth.FailedLoginDelay > 0 && c.Auth.FailedLoginDelayMax < c.Auth.FailedLoginDelay {
		p.add("auth.failed_login_delay_max", "must be >= auth.failed_login_delay (%s), got %s",
			c.Auth.FailedLoginDelay, c.Auth.FailedLoginDelayMax)
	}
}

// checkPool validates one pool section: the options a database may
// override, and the four client timeouts (query_timeout ...
// client_login_timeout), which apply to the whole proxy.
func checkPool(p *problems, prefix string, pc PoolConfig) {
	if pc.MinSize < 0 {
		p.add(prefix+".min_size", "must be >= 0, got %d", pc.MinSize)
	}
	if pc.MaxSize < 1 {
		p.add(prefix+".max_size", "must be >= 1, got %d", pc.MaxSize)
	} else if pc.MaxSize < pc.MinSize {
		p.add(prefix+".max_size", "must be >= %s.min_size (%d), got %d", prefix, pc.MinSize, pc.MaxSize)
	}
	if pc.MaxWaiters < 0 {
		p.add(prefix+".max_waiters", "must be >= 0 (0 = unbounded), got %d", pc.MaxWaiters)
	}
	if pc.MaxQueries < 0 {
		p.add(prefix+".max_queries", "must be >= 0 (0 = unlimited), got %d", pc.MaxQueries)
	}
	// The pool refuses a negative count too, but only once the options
	// are applied: on a reload the rest would already be live.
	if pc.MaxBackendErrors < 0 {
		p.add(prefix+".max_backend_errors", "must be >= 0 (0 = off), got %d", pc.MaxBackendErrors)
	}
	// 100% would let a backend's lifetime be cut to nothing.
	if pc.LifetimeJitter < 0 || pc.LifetimeJitter >= 1 {
		p.add(prefix+".lifetime_jitter", "must be from 0%% to below 100%% (write \"10%%\" or 0.1), got %s", pc.LifetimeJitter)
	}
	for _, d := range []struct {
		key      string
		v        time.Duration
		positive bool
	}{
		{"acquire_timeout", pc.AcquireTimeout, true},
		{"validate_after_idle", pc.ValidateAfterIdle, false},
		{"peek_after_idle", pc.PeekAfterIdle, false},
		{"max_lifetime", pc.MaxLifetime, false},
		{"max_idle", pc.MaxIdle, false},
		{"leak_timeout", pc.LeakTimeout, false},
		{"connect_timeout", pc.ConnectTimeout, true},
		{"idle_check_interval", pc.IdleCheckInterval, false},
		{"reconnect_backoff", pc.ReconnectBackoff, true},
		{"reconnect_backoff_max", pc.ReconnectBackoffMax, true},
		{"hold_on_restart", pc.HoldOnRestart, false},
		{"query_timeout", pc.QueryTimeout, false},
		{"idle_transaction_timeout", pc.IdleTransactionTimeout, false},
		{"client_idle_timeout", pc.ClientIdleTimeout, false},
		{"client_login_timeout", pc.ClientLoginTimeout, false},
	} {
		if d.positive && d.v <= 0 {
			p.add(prefix+"."+d.key, "must be > 0, got %s", d.v)
			continue
		}
		checkDuration(p, prefix+"."+d.key, d.v)
	}
	if pc.ReconnectBackoff > 0 && pc.ReconnectBackoffMax > 0 && pc.ReconnectBackoffMax < pc.ReconnectBackoff {
		p.add(prefix+".reconnect_backoff_max", "must be >= %s.reconnect_backoff (%s), got %s", prefix, pc.ReconnectBackoff, pc.ReconnectBackoffMax)
	}
}

func checkDuration(p *problems, key string, d time.Duration) {
	if d < 0 {
		p.add(key, "must be >= 0, got %s", d)
	}
}

// checkListen accepts host:port with a numeric port; an empty host means
// every interface, port 0 an ephemeral port.
func checkListen(p *problems, key, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add(key, "must be host:port (e.g. 127.0.0.1:6432), got %q: %v", addr, stripAddrErr(err))
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		p.add(key, "port must be a number from 0 to 65535, got %q", port)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		p.add(key, "host must be an IP address or a host name, got %q", host)
	}
}

// stripAddrErr keeps net's reason without repeating the address.
func stripAddrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// checkPassthrough validates the auth.* options of auth.passthrough.
func (c *Config) checkPassthrough(p *problems) {
	checkDuration(p, "auth.cache_ttl", c.Auth.CacheTTL)
	if !c.Auth.Passthrough {
		return
	}
	if c.Auth.Method != proxy.AuthSCRAM {
		p.add("auth.method", "must be scram-sha-256 with auth.passthrough (the server login reuses the client's SCRAM proof), got %s", c.Auth.Method)
	}
	if strings.TrimSpace(c.Auth.Query) == "" {
		p.add("auth.query", "must be set with auth.passthrough")
	}
}
