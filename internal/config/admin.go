// The admin console's logins: admin.users and admin.stats_users resolved to
// their passwords (AdminLogins), and admin.database checked against the
// served databases.

package config

import (
	"fmt"
	"strings"
)

// AdminLogins resolves admin.users and admin.stats_users to the passwords
// those logins have for the served databases (their URL's password or
// auth.users). An empty admin.users means the first target's URL user:
// upstream's when there is one. A login in both lists gets every command.
func (c *Config) AdminLogins(targets []Target) (full, stats map[string]string, err error) {
	var errs []string
	if strings.TrimSpace(c.Admin.Database) == "" {
		errs = append(errs, "config: admin.database: must not be empty")
	}
	for _, t := range targets {
		if t.Name == c.Admin.Database {
			errs = append(errs, fmt.Sprintf("config: admin.database: %q is also the name of a served database (%s); choose another name for the console", t.Name, t.Key))
		}
	}
	password := func(user string) (string, bool) {
		for _, t := range targets {
			if p, ok := t.Users[user]; ok {
				return p, true
			}
		}
		return "", false
	}
	resolve := func(key string, names []string) map[string]string {
		out := make(map[string]string, len(names))
		for i, n := range names {
			p, ok := password(n)
			if !ok {
				errs = append(errs, fmt.Sprintf("config: %s[%d]: %q is not a login of any served database (a database URL's user, or a login of auth.users or auth.users_file that reaches one)", key, i, n))
				continue
			}
			out[n] = p
		}
		return out
	}
	users := c.Admin.Users
	if len(users) == 0 && len(targets) > 0 {
		users = []string{targets[0].Conn.User}
	}
	full = resolve("admin.users", users)
	stats = resolve("admin.stats_users", c.Admin.StatsUsers)
	for n := range full {
		delete(stats, n)
	}
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return full, stats, nil
}
