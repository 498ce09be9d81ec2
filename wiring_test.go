package main

import (
	"log/slog"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/testpg"
)

// TestWiringZeroMeansZero: the pool gets the configured values verbatim. A
// 0 stays 0 (off / unlimited / every time) and validation_query "-" is a
// query like any other, not a hidden switch that turns validation off.
func TestWiringZeroMeansZero(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, `
upstream: `+testURL+`
pool:
  min_size: 0
  validation_query: "-"
  validate_after_idle: 0
  peek_after_idle: 0
  max_lifetime: 0
  lifetime_jitter: 0
  max_idle: 0
  max_queries: 0
  leak_timeout: 0
  idle_check_interval: 0
`)
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	targets, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	a := &app{log: slog.New(slog.DiscardHandler)}
	pc := a.poolConfig(targets[0])
	if pc.ValidationQuery != "-" {
		t.Errorf("validation_query %q reached the pool as %q", "-", pc.ValidationQuery)
	}
	if pc.MinSize != 0 || pc.ValidateAfterIdle != 0 || pc.PeekAfterIdle != 0 || pc.MaxLifetime != 0 || pc.LifetimeJitter != 0 ||
		pc.MaxIdle != 0 || pc.MaxQueries != 0 || pc.LeakTimeout != 0 || pc.IdleCheckInterval != 0 {
		t.Errorf("a configured 0 did not reach the pool as 0: %+v", pc)
	}
	if pc.AcquireTimeout != cfg.Pool.AcquireTimeout || pc.BackoffMax != cfg.Pool.ReconnectBackoffMax || pc.MaxSize != cfg.Pool.MaxSize {
		t.Errorf("pool.Config %+v does not carry the configured values %+v", pc, cfg.Pool)
	}
	px := a.proxyConfig(cfg, targets)
	if px.Mode != cfg.Pool.Mode || px.AuthMethod != cfg.Auth.Method || px.ResetQuery != cfg.Pool.ResetQuery ||
		px.MaxMessageSize != cfg.MaxMessageSize || px.ClientLoginTimeout != cfg.Pool.ClientLoginTimeout ||
		px.QueryTimeout != cfg.Pool.QueryTimeout || px.IdleTransactionTimeout != cfg.Pool.IdleTransactionTimeout ||
		px.ClientIdleTimeout != cfg.Pool.ClientIdleTimeout {
		t.Errorf("proxy.Config %+v does not carry the configuration", px)
	}
}

// TestOptionNames: every option name the pool's and the proxy's hints can
// show is a real option.
func TestOptionNames(t *testing.T) {
	keys := map[string]bool{}
	for _, o := range config.Options {
		keys[o.Key] = true
	}
	for field, key := range optionNames {
		if !keys[key] {
			t.Errorf("optionNames[%s] = %s, which is no option", field, key)
		}
	}
}

// TestWiringIdleCheckInterval: pool.idle_check_interval reaches the pool
// (a reload goes through the same poolConfig, so it is live).
func TestWiringIdleCheckInterval(t *testing.T) {
	testpg.IsolatePG(t)
	path := testpg.WriteYAML(t, "upstream: "+testURL+"\npool:\n  idle_check_interval: 3s\n")
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	targets, err := cfg.Targets()
	if err != nil {
		t.Fatal(err)
	}
	a := &app{log: slog.New(slog.DiscardHandler)}
	if got := a.poolConfig(targets[0]).IdleCheckInterval; got.String() != "3s" {
		t.Errorf("pool.idle_check_interval 3s reached the pool as %s", got)
	}
}
