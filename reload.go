package main

// reload re-reads the configuration from the same sources (SIGHUP). An
// invalid configuration is logged and the running one kept. Otherwise
// the log level, every pool's sizes and timeouts, and the proxy's client
// limit and logins change live; the rest is reported as needing a restart.
func (a *app) reload() {
	a.log.Info("reloading configuration", "config", displayPath(a.path))
	next, err := loadConfig(a.path, a.environ)
	if err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return
	}
	applied := liveSubset(a.cfg, next)
	if err := applied.validate(); err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return
	}
	targets, err := applied.targets()
	if err != nil {
		a.log.Error("reload failed; keeping the running configuration", "err", err.Error())
		return
	}
	live, restart := configDiff(a.cfg, next)

	a.level.Set(parseLevel(applied.Log.Level))
	running := make(map[string]target, len(a.targets))
	for _, t := range a.targets {
		running[t.Name] = t
	}
	for _, t := range targets {
		// liveSubset kept the running set of databases, so every target
		// has its pool. An unchanged pool is left alone (and quiet).
		if t.Pool != running[t.Name].Pool {
			a.pools[t.Name].Reconfigure(a.poolConfig(t))
		}
	}
	if err := a.proxy.Reload(a.proxyConfig(applied, targets)); err != nil {
		// Pools are already reconfigured; the proxy keeps its old client
		// settings. Say so rather than pretend the reload was whole.
		a.log.Error("proxy rejected the reloaded settings; it keeps its previous client limit and logins", "err", err.Error())
	}
	a.cfg, a.targets = applied, targets

	for _, key := range restart {
		a.log.Warn("configuration change needs a restart; keeping the running value", "option", key)
	}
	a.log.Info("configuration reloaded", "changed", live, "needs_restart", restart)
}
