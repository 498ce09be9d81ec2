// Targets, the databases the proxy serves: resolved from upstream and
// databases, each with its connection settings, pool settings and logins.

package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// Target is one database clients may name, resolved from upstream or from
// a databases entry.
type Target struct {
	// Name is what clients put in their StartupMessage's database.
	Name string
	// Key is the option the URL came from, for messages.
	Key string
	// URL is the connection string as configured. It holds the password:
	// print Redacted() instead.
	URL string
	// Conn is URL parsed, with ConnectTimeout taken from Pool.
	Conn *pgconn.Config
	// Pool is the database's effective pool settings.
	Pool PoolConfig
	// Users maps client login names to passwords.
	Users map[string]string
	// MaxDBConnections caps the database's backends across its roles'
	// pools (for "*", each database name's); 0 = no cap.
	MaxDBConnections int
}

// Redacted is URL without its password.
func (t Target) Redacted() string { return RedactURL(t.URL) }

// PoolName is the pool's name in logs and statistics: "database/user".
func (t Target) PoolName() string { return t.Name + "/" + t.Conn.User }

// Wildcard is the databases entry that serves any database name on its
// server, as PgBouncer's "* =": a client's own database name is used
// upstream, and the URL's database name is ignored.
const Wildcard = "*"

// Targets resolves upstream and databases into the databases the proxy
// serves, in a stable order (upstream first, then by name).
func (c *Config) Targets() ([]Target, error) {
	if strings.TrimSpace(c.Upstream) == "" && len(c.Databases) == 0 {
		return nil, errors.New("config: upstream: no database to proxy: set DATABASE_URL " +
			"(or upstream in the config file, or " + envName("upstream") + ") to postgres://user:password@host:port/dbname, " +
			"or add entries under databases")
	}
	var out []Target
	var errs []string
	byName := map[string]string{}

	addTarget := func(key, name, raw string, pc PoolConfig, maxDB int, allLogins bool, logins []string) {
		conn, err := pgconn.ParseConfig(raw)
		if err != nil {
			errs = append(errs, fmt.Sprintf("config: %s: %s", key, scrubSecrets(err.Error(), raw)))
			return
		}
		conn.ConnectTimeout = pc.ConnectTimeout
		if conn.Password == "" {
			// As PgBouncer's auth_file: a URL without a password (nor one
			// from libpq's passfile) logs in with its user's auth.users
			// password, which may come from a password_file and follows
			// reloads; a hash (verifier, md5) cannot log in to a server.
			for _, u := range c.Auth.AllUsers() {
				if u.Name == conn.User && !proxy.IsPasswordHash(u.Password) {
					conn.Password = u.Password
				}
			}
		}
		if name == "" {
			// PostgreSQL itself defaults the database to the user name.
			name = conn.Database
			if name == "" {
				name = conn.User
			}
		}
		if prev, dup := byName[name]; dup {
			errs = append(errs, fmt.Sprintf("config: %s: database name %q is already served by %s", key, name, prev))
			return
		}
		byName[name] = key
		out = append(out, Target{Name: name, Key: key, URL: raw, Conn: conn, Pool: pc, Users: c.users(conn, allLogins, logins), MaxDBConnections: maxDB})
	}

	if strings.TrimSpace(c.Upstream) != "" {
		addTarget("upstream", "", c.Upstream, c.Pool, c.MaxDBConnections, true, nil)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
		db := c.Databases[name]
		key := "databases." + name + ".url"
		switch {
		case name == "":
			errs = append(errs, "config: databases: an entry has an empty name")
			continue
		case strings.TrimSpace(db.URL) == "":
			errs = append(errs, fmt.Sprintf("config: %s: must be set (postgres://user:password@host:port/dbname)", key))
			continue
		}
		maxDB := c.MaxDBConnections
		if db.MaxDBConnections != nil {
			maxDB = *db.MaxDBConnections
		}
		addTarget(key, name, db.URL, db.Pool, maxDB, false, db.Users)
	}

	for _, t := range out {
		if c.Auth.Passthrough {
			// Clients log in with their roles' own passwords.
			continue
		}
		if len(t.Users) == 0 && t.Key == "upstream" {
			errs = append(errs, fmt.Sprintf("config: auth.users: nobody can log in to database %q: %s has no password "+
				"and auth.users is empty (auth.method %s needs a password per user)", t.Name, t.Key, c.Auth.Method))
		} else if len(t.Users) == 0 {
			name := strings.TrimPrefix(strings.TrimSuffix(t.Key, ".url"), "databases.")
			errs = append(errs, fmt.Sprintf("config: databases.%s.users: nobody can log in to database %q: %s has no password "+
				"and databases.%s.users lists no login of auth.users (auth.method %s needs a password per user)",
				name, t.Name, t.Key, name, c.Auth.Method))
		}
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return out, nil
}

// users returns the logins a database accepts: its URL's own user (when it
// has a password, or with trust) plus the logins of auth.users and
// auth.users_file that apply to it, which win over the URL's password for
// the same name. For upstream (allLogins) every login applies; for a
// databases entry the URL user's own entry and those its users option
// lists, so that a login meant for one database cannot reach another with
// that database's role.
func (c *Config) users(conn *pgconn.Config, allLogins bool, logins []string) map[string]string {
	users := map[string]string{}
	if conn.User != "" && (conn.Password != "" || c.Auth.Method == proxy.AuthTrust) {
		users[conn.User] = conn.Password
	}
	for _, u := range c.Auth.AllUsers() {
		// The URL user's own entry is its password here too.
		if allLogins || slices.Contains(logins, u.Name) || u.Name == conn.User {
			users[u.Name] = u.Password
		}
	}
	return users
}
