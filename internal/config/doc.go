// Package config is pgsidecar's configuration contract: the options, their
// defaults, where they come from (Load: defaults, the YAML file,
// PGSIDECAR_* variables, DATABASE_URL), how they are checked (Validate),
// the databases they describe (Targets) and what a reload may change
// (Plan). It knows nothing of the pool, and of the proxy only the types,
// limits and password checks its options use (proxy.Mode, AuthMethod,
// MaxMessageSizeLimit, IsPasswordHash, NewClientTLS, ...); the composition
// root translates a Target into their configurations.
package config
