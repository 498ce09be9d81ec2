// SHOW CONFIG: every option with its running value, secrets redacted (Show).

package config

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Show lists every option with its running value, in the option table's
// order, for the admin console's SHOW CONFIG. Secrets never appear:
// connection strings are redacted, logins show only their names and the
// HTTP token only whether it is set.
func (c *Config) Show() [][2]string {
	out := make([][2]string, 0, len(Options))
	v := reflect.ValueOf(*c)
	for _, o := range Options {
		var val string
		switch o.Key {
		case "upstream":
			val = RedactURL(c.Upstream)
		case "databases":
			parts := make([]string, 0, len(c.Databases))
			for _, name := range slices.Sorted(maps.Keys(c.Databases)) {
				parts = append(parts, name+"="+RedactURL(c.Databases[name].URL))
			}
			val = strings.Join(parts, " ")
		case "auth.users":
			names := make([]string, 0, len(c.Auth.Users))
			for _, u := range c.Auth.Users {
				names = append(names, u.Name)
			}
			val = strings.Join(names, ",")
		case "admin.http_token":
			if c.Admin.HTTPToken != "" {
				val = Redacted
			}
		default:
			val = showValue(field(v, o.Key))
		}
		out = append(out, [2]string{o.Key, val})
	}
	return out
}

// showValue renders one option's value as config.yaml would spell it.
func showValue(f reflect.Value) string {
	switch x := f.Interface().(type) {
	case time.Duration:
		return x.String()
	case []string:
		return strings.Join(x, ",")
	case fmt.Stringer:
		return x.String()
	}
	return fmt.Sprint(f.Interface())
}
