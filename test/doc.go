// Package e2e holds pgsidecar's end-to-end tests. They build the real proxy
// binary, start a throwaway PostgreSQL cluster from the machine's binaries
// (PostgreSQL 15 under /usr/lib/postgresql/15/bin, or whatever pg_config and
// PATH point at), and drive the proxy with psql, pgbench and pgx exactly as
// an application would.
//
// The harness lives in harness_test.go (TestMain, Proxy, psql and pgbench
// runners); the cluster is internal/testpg's, shared with the other packages' tests. This file exists so the directory
// is a package even when the tests are not being built.
package e2e
