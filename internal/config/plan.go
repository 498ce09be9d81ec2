// What a reload changes (Plan): the options that differ, which of them apply
// live and which need a restart, and the configuration the process runs
// after it.

package config

import (
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
)

// liveSubset is next with every Restart option taken from running: the
// configuration the process actually runs after a reload.
func liveSubset(running, next *Config) *Config {
	out := *next
	from, to := reflect.ValueOf(running).Elem(), reflect.ValueOf(&out).Elem()
	for _, o := range Options {
		if o.Reload == Restart {
			field(to, o.Key).Set(field(from, o.Key))
		}
	}

	// The set of databases and their URLs stay; their pool settings follow
	// next, except the proxy-wide ones. A database next removes keeps
	// running with its old settings.
	out.Databases = make(map[string]DatabaseConfig, len(running.Databases))
	for name, old := range running.Databases {
		db, ok := next.Databases[name]
		if !ok {
			out.Databases[name] = old
			continue
		}
		db.URL = old.URL
		pool := reflect.ValueOf(&db.Pool).Elem()
		for _, o := range Options {
			if key, isPool := strings.CutPrefix(o.Key, "pool."); isPool && o.Reload == Restart {
				field(pool, key).Set(field(from, o.Key))
			}
		}
		out.Databases[name] = db
	}
	return &out
}

// configDiff lists the options that differ between running and next, split
// into those applied live and those that need a restart. Only key names are
// returned, never values: some are passwords.
func configDiff(running, next *Config) (live, restart []string) {
	before, after := flatten(running), flatten(next)
	changed := map[string]bool{}
	for k, v := range before {
		if w, ok := after[k]; !ok || !reflect.DeepEqual(v, w) {
			changed[k] = true
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			changed[k] = true
		}
	}

	restartSet := map[string]bool{}
	liveSet := map[string]bool{}
	for k := range changed {
		if name, rest, ok := databaseKey(k); ok {
			_, inRunning := running.Databases[name]
			_, inNext := next.Databases[name]
			switch {
			case inRunning && !inNext:
				restartSet["databases."+name+" (removed)"] = true
			case !inRunning && inNext:
				restartSet["databases."+name+" (added)"] = true
			case rest == "url":
				restartSet[k] = true
			default:
				liveSet[k] = true
			}
			continue
		}
		if o, ok := option(k); ok && o.Reload == Restart {
			restartSet[k] = true
		} else {
			liveSet[k] = true
		}
	}
	// The file's logins are no key of their own; a change of them is one.
	if !reflect.DeepEqual(running.Auth.FileUsers, next.Auth.FileUsers) {
		liveSet["auth.users_file (contents)"] = true
	}
	// So are the certificate files' (a rotated certificate, same paths).
	if running.TLS.Client.Fingerprint() != next.TLS.Client.Fingerprint() {
		liveSet["tls.cert_file (contents)"] = true
	}
	return slices.Sorted(maps.Keys(liveSet)), slices.Sorted(maps.Keys(restartSet))
}

// databaseKey splits "databases.NAME.rest" into NAME and rest.
func databaseKey(k string) (name, rest string, ok bool) {
	after, found := strings.CutPrefix(k, "databases.")
	if !found {
		return "", "", false
	}
	name, rest, _ = strings.Cut(after, ".")
	return name, rest, true
}

// flatten renders c as dotted key -> value, the way the config is written.
func flatten(c *Config) map[string]any {
	k := koanf.New(".")
	// The structs provider cannot fail on a Config; a failure leaves the
	// map empty, which reports every option as changed rather than none.
	_ = k.Load(structs.Provider(c, "koanf"), nil)
	return k.All()
}

// Reload is what a SIGHUP does with a newly loaded configuration.
type Reload struct {
	// Applied is next with every restart-only option kept at its running
	// value: the configuration the process runs after the reload. The
	// caller validates it and resolves its Targets before applying it.
	Applied *Config
	// Live and Restart name the options that differ between running and
	// next: those applied now and those that need a restart. Only key
	// names, never values (some are passwords).
	Live, Restart []string
}

// Plan compares the running configuration with next, as loaded on a
// reload, and says what can change live.
func Plan(running, next *Config) Reload {
	live, restart := configDiff(running, next)
	return Reload{Applied: liveSubset(running, next), Live: live, Restart: restart}
}
