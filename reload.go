// SIGHUP: the configuration re-read and what can change applied live
// (reload).

package main

import (
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// reload re-reads the configuration from the same sources (SIGHUP). An
// invalid configuration is logged and the running one kept, as is a file
// left with no settings when the running configuration has some from it,
// and an auth.users_file left with no login when the running one has
// logins from it. Otherwise the log level, every pool's sizes and
// timeouts, and the proxy's client limit and logins change live; the rest
// is reported as needing a restart.
func (a *app) reload() error {
	a.log.Info("reloading configuration", "config", displayPath(a.path))
	next, err := config.Load(a.path, a.environ)
	if err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return err
	}
	if next.FileEmpty && !a.cfg.FileEmpty {
		err := fmt.Errorf("config: %s holds no settings (empty, or comments only), but the running configuration "+
			"has settings from it: a file caught mid-rewrite would reset every one of them to its default; "+
			"write the file whole (to run on defaults and the environment alone, restart with it empty)", displayPath(a.path))
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return err
	}
	if next.Auth.UsersFile != "" && len(next.Auth.FileUsers) == 0 && len(a.cfg.Auth.FileUsers) > 0 {
		err := fmt.Errorf("config: auth.users_file %s holds no login (empty, or comments only), but the running "+
			"configuration has %d logins from it: a file caught mid-rewrite would refuse every one of them; "+
			"write the file whole (to drop all of its logins, unset auth.users_file, or restart with the file empty)",
			next.Auth.UsersFile, len(a.cfg.Auth.FileUsers))
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return err
	}
	plan := config.Plan(a.cfg, next)
	applied := plan.Applied
	if err := applied.Validate(); err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return err
	}
	targets, err := applied.Targets()
	if err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return err
	}

	a.level.Set(applied.Log.Level.Slog())
	a.group.SetMaxTotal(applied.MaxTotalConnections)
	running := make(map[string]config.Target, len(a.targets))
	for _, t := range a.targets {
		running[t.Name] = t
	}
	for _, t := range targets {
		if t.Name == config.Wildcard {
			a.wild.reconfigure(a.cfg, applied, t)
			continue
		}
		a.group.SetDatabaseMax(t.Name, t.MaxDBConnections)
		// Plan kept the running set of databases, so every target has its
		// pool. An unchanged pool is left alone (and quiet). A changed
		// password (a rotated password_file or auth.users entry; the URL
		// itself needs a restart) is the next backends' login: existing
		// ones keep their sessions, as on PostgreSQL after ALTER ROLE.
		old := running[t.Name]
		settings := t.Pool != old.Pool
		if settings || t.Conn.Password != old.Conn.Password {
			a.pools[t.Name].Reconfigure(a.poolConfig(t))
		}
		if pt := a.passthrough[t.Name]; pt != nil {
			if settings {
				pt.Roles.Reconfigure(a.poolConfig(t)) // each role keeps its own login
			}
			if settings || authConn(applied, t).Password != authConn(a.cfg, old).Password {
				pt.Verifiers.Pool.Reconfigure(a.authPoolConfig(applied, t))
			}
		}
	}
	for _, pt := range a.passthrough {
		pt.Verifiers.Configure(applied.Auth.Query, applied.Auth.CacheTTL)
	}
	if err := a.proxy.Reload(a.proxyConfig(applied, targets)); err != nil {
		// Pools are already reconfigured; the proxy keeps its old client
		// settings. Say so rather than pretend the reload was whole.
		a.log.Error("proxy rejected the reloaded settings; it keeps its previous client limit and logins", "err", err.Error())
	}
	a.cfg, a.targets = applied, targets

	for _, key := range plan.Restart {
		a.log.Warn("configuration change needs a restart; keeping the running value", "option", key)
	}
	a.publish(applied)
	a.log.Info("configuration reloaded", "changed", plan.Live, "needs_restart", plan.Restart,
		"tls_mode", applied.TLS.Client.Mode(), "tls_cert_sha256", applied.TLS.Client.Fingerprint())
	return nil
}
