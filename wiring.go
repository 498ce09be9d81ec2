package main

import (
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// poolConfig translates a database's settings into a pool.Config. The pool
// reads a zero field as "use the default", so an explicit 0 from the
// configuration (which means off / unlimited / every time) becomes pool.Off.
func (a *app) poolConfig(t config.Target) pool.Config {
	pc := t.Pool
	query := pc.ValidationQuery
	if query == "" {
		query = pool.NoValidation
	}
	jitter := float64(pc.LifetimeJitter)
	if jitter == 0 {
		jitter = pool.Off
	}
	return pool.Config{
		Name:              t.PoolName(),
		Database:          t.Name,
		User:              t.Conn.User,
		Connect:           pool.Connector(t.Conn),
		MinSize:           offIfZero(pc.MinSize),
		MaxSize:           pc.MaxSize,
		MaxWaiters:        pc.MaxWaiters, // 0 already means unbounded
		AcquireTimeout:    pc.AcquireTimeout,
		ValidationQuery:   query,
		ValidateAfterIdle: offIfZero(pc.ValidateAfterIdle),
		MaxLifetime:       offIfZero(pc.MaxLifetime),
		LifetimeJitter:    jitter,
		MaxIdle:           offIfZero(pc.MaxIdle),
		MaxQueries:        offIfZero(pc.MaxQueries),
		LeakTimeout:       offIfZero(pc.LeakTimeout),
		ConnectTimeout:    pc.ConnectTimeout,
		BackoffInitial:    pc.ReconnectBackoff,
		BackoffMax:        pc.ReconnectBackoffMax,
		Logger:            a.log,
	}
}

// offIfZero maps a configured 0 to pool.Off.
func offIfZero[T int | int64 | time.Duration](v T) T {
	if v == 0 {
		return pool.Off
	}
	return v
}

// proxyConfig builds the proxy's configuration from cfg, serving targets
// with the app's pools.
func (a *app) proxyConfig(cfg *config.Config, targets []config.Target) proxy.Config {
	dbs := make(map[string]*proxy.Database, len(targets))
	for _, t := range targets {
		dbs[t.Name] = &proxy.Database{Name: t.Name, Pool: a.pools[t.Name], Users: t.Users}
	}
	return proxy.Config{
		Mode:                  proxy.Mode(cfg.Pool.Mode),
		MaxClientConn:         cfg.Pool.MaxClientConn,
		AuthMethod:            cfg.Auth.Method,
		Databases:             dbs,
		ResetQuery:            cfg.Pool.ResetQuery,
		MaxPreparedStatements: cfg.Pool.MaxPreparedStatements,
		MaxMessageSize:        cfg.MaxMessageSize,
		Logger:                a.log,

		FailedLoginDelay:         cfg.Auth.FailedLoginDelay,
		FailedLoginDelayMax:      cfg.Auth.FailedLoginDelayMax,
		FailedLoginDelayLoopback: cfg.Auth.FailedLoginDelayLoopback,
	}
}
