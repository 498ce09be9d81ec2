#!/usr/bin/env bash
# deps.sh: install what the test suite needs and a fresh Debian machine
# lacks, in one apt-get call; a no-op (a few lookups) when all is there.
# Used by `make test` and .ci/run. Needs root or password-less sudo to
# install; without them it names what is missing and leaves the failing
# tests to say the rest.
#
#   PostgreSQL server + contrib (pg_ctl, initdb, pgbench) and client (psql)
#   make, runuser (util-linux), git, CA certificates (Go module downloads)
#   node + npm (node-postgres driver test), a JDK and the PostgreSQL JDBC
#   driver (JDBC driver test)
#
# `deps.sh bench` (make bench only) installs, besides PostgreSQL,
# PgBouncer, which the benchmark compares against, and with BENCH_PROFILE=1 perf (linux-perf)
# for its syscall and context-switch counts, and not the driver tests'
# runtimes. make test never installs PgBouncer or perf.
set -euo pipefail

bench=""
case "${1:-}" in
"") ;;
bench) bench=1 ;;
*)
	echo "deps: unknown argument '$1' (usage: deps.sh [bench])" >&2
	exit 2
	;;
esac

have() { command -v "$1" >/dev/null 2>&1; }
need=()

# Debian keeps the server binaries in /usr/lib/postgresql/*/bin, off PATH.
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! have pg_ctl; then
	need+=(postgresql postgresql-contrib)
fi
if ! have pgbench && ! ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; then
	need+=(postgresql-contrib)
fi
have psql || need+=(postgresql-client)
have make || need+=(make)
have runuser || need+=(util-linux)
have git || need+=(git)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ -n "$bench" ]; then
	have pgbouncer || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
	[ "${BENCH_PROFILE:-0}" != 1 ] || have perf || need+=(linux-perf)
else
	# The driver tests' runtimes: the benchmark needs none of them.
	have node || need+=(nodejs)
	have npm || need+=(npm)
	have javac || need+=(default-jdk-headless)
	ls /usr/share/java/postgresql*.jar >/dev/null 2>&1 || need+=(libpostgresql-jdbc-java)
fi

[ "${#need[@]}" -gt 0 ] || exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if have sudo && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "deps: missing ${need[*]}; install them as root (apt-get install -y ${need[*]})" >&2
		exit 0
	fi
fi
if ! have apt-get; then
	echo "deps: missing ${need[*]} and no apt-get to install them" >&2
	exit 0
fi
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq </dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null
