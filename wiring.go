package main

import (
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// optionNames maps the fields of pool.Config and proxy.Config that their
// hints mention to the options that set them, so a hint names what the
// operator can change (TestOptionNames checks each is an option).
var optionNames = map[string]string{
	"MaxSize":                "pool.max_size",
	"MaxWaiters":             "pool.max_waiters",
	"Mode":                   "pool.mode",
	"SessionState":           "pool.session_state",
	"MaxClientConn":          "pool.max_client_conn",
	"AuthMethod":             "auth.method",
	"Users":                  "auth.users",
	"FailedLoginDelay":       "auth.failed_login_delay",
	"FailedLoginDelayMax":    "auth.failed_login_delay_max",
	"ShutdownTimeout":        "shutdown_timeout",
	"ClientLoginTimeout":     "pool.client_login_timeout",
	"QueryTimeout":           "pool.query_timeout",
	"IdleTransactionTimeout": "pool.idle_transaction_timeout",
	"ClientIdleTimeout":      "pool.client_idle_timeout",
}

// optionName is pool.Config.OptionName and proxy.Config.OptionName.
func optionName(field string) string { return optionNames[field] }

// poolConfig translates a database's settings into a pool.Config, value for
// value: the pool takes every field as given, so 0 from the configuration
// keeps its meaning (off / unlimited / every time).
func (a *app) poolConfig(t config.Target) pool.Config {
	pc := t.Pool
	return pool.Config{
		Name:              t.PoolName(),
		Database:          t.Name,
		User:              t.Conn.User,
		Connect:           pool.Connector(t.Conn),
		MinSize:           pc.MinSize,
		MaxSize:           pc.MaxSize,
		MaxWaiters:        pc.MaxWaiters,
		AcquireTimeout:    pc.AcquireTimeout,
		ValidationQuery:   pc.ValidationQuery,
		ValidateAfterIdle: pc.ValidateAfterIdle,
		MaxLifetime:       pc.MaxLifetime,
		LifetimeJitter:    float64(pc.LifetimeJitter),
		MaxIdle:           pc.MaxIdle,
		MaxQueries:        pc.MaxQueries,
		LeakTimeout:       pc.LeakTimeout,
		ConnectTimeout:    pc.ConnectTimeout,
		IdleCheckInterval: pc.IdleCheckInterval,
		BackoffInitial:    pc.ReconnectBackoff,
		BackoffMax:        pc.ReconnectBackoffMax,
		Logger:            a.log,
		OptionName:        optionName,
	}
}

// proxyConfig builds the proxy's configuration from cfg, serving targets
// with the app's pools.
func (a *app) proxyConfig(cfg *config.Config, targets []config.Target) proxy.Config {
	dbs := make(map[string]*proxy.Database, len(targets))
	for _, t := range targets {
		dbs[t.Name] = &proxy.Database{Name: t.Name, Pool: a.pools[t.Name], Users: t.Users, Listen: t.Conn}
	}
	return proxy.Config{
		Mode:                   cfg.Pool.Mode,
		MaxClientConn:          cfg.Pool.MaxClientConn,
		MaxStartupConn:         cfg.Pool.MaxStartupConn,
		AuthMethod:             cfg.Auth.Method,
		Databases:              dbs,
		ResetQuery:             cfg.Pool.ResetQuery,
		SessionState:           cfg.Pool.SessionState,
		MaxPreparedStatements:  cfg.Pool.MaxPreparedStatements,
		MaxMessageSize:         cfg.MaxMessageSize,
		MaxClientBuffer:        cfg.MaxClientBuffer,
		ClientLoginTimeout:     cfg.Pool.ClientLoginTimeout,
		QueryTimeout:           cfg.Pool.QueryTimeout,
		IdleTransactionTimeout: cfg.Pool.IdleTransactionTimeout,
		ClientIdleTimeout:      cfg.Pool.ClientIdleTimeout,
		Logger:                 a.log,
		OptionName:             optionName,

		FailedLoginDelay:         cfg.Auth.FailedLoginDelay,
		FailedLoginDelayMax:      cfg.Auth.FailedLoginDelayMax,
		FailedLoginDelayLoopback: cfg.Auth.FailedLoginDelayLoopback,

		TLS: cfg.TLS.Client,
	}
}
