#!/usr/bin/env bash
# devpg.sh: run pgsidecar in front of a throwaway local PostgreSQL.
#
#   test/tools/devpg.sh [COMMAND [ARGS...]]      (default COMMAND: bin/pgsidecar)
#
# It installs the postgresql server package if this machine has no pg_ctl,
# initdb's a cluster in a temp dir (as the postgres user when run as root),
# starts it on a free 127.0.0.1 port, creates the login role and database
# app/app (password "app"), prints the psql line that connects THROUGH the
# proxy, and runs COMMAND in the foreground with DATABASE_URL pointing at the
# cluster. On exit (the proxy stops, Ctrl-C, SIGTERM) the cluster is stopped
# and its directory removed.
#
# Environment: DEVPG_USER / DEVPG_PASSWORD / DEVPG_DB (default app/app/app),
# PGSIDECAR_LISTEN (default 127.0.0.1:6432), PGSIDECAR_HEALTH__LISTEN
# (default 127.0.0.1:9930), PG_BIN (server binaries directory).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=test/tools/pglib.sh
. "$here/pglib.sh"

user=${DEVPG_USER:-app}
pass=${DEVPG_PASSWORD:-app}
db=${DEVPG_DB:-app}
export PGSIDECAR_LISTEN=${PGSIDECAR_LISTEN:-127.0.0.1:6432}
export PGSIDECAR_HEALTH__LISTEN=${PGSIDECAR_HEALTH__LISTEN:-127.0.0.1:9930}
if [ "$#" -eq 0 ]; then
	set -- "$here/../../bin/pgsidecar"
fi

# Fail before creating anything if the proxy could not bind its ports.
for hp in "$PGSIDECAR_LISTEN" "$PGSIDECAR_HEALTH__LISTEN"; do
	if port_in_use "${hp##*:}"; then
		die "port ${hp##*:} is already in use; set PGSIDECAR_LISTEN / PGSIDECAR_HEALTH__LISTEN to free ones"
	fi
done

ensure_pg_bindir
dir=$(mktemp -d "${TMPDIR:-/tmp}/devpg.XXXXXX")
cleanup() {
	trap - EXIT INT TERM
	log "stopping the throwaway PostgreSQL and removing $dir"
	pg_stop "$dir"
	rm -rf "$dir"
}
trap cleanup EXIT
# On a signal, exit through the EXIT trap (which cleans up) with the
# conventional status.
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting a throwaway PostgreSQL ($("$PG_BIN/postgres" --version)) in $dir"
pg_start "$dir"
pg_create_app "$dir" "$user" "$pass" "$db"
export DATABASE_URL="postgres://$user:$pass@127.0.0.1:$PG_PORT/$db"

cat <<EOF

  PostgreSQL (direct): $DATABASE_URL
  Connect through pgsidecar with:

    psql "postgres://$user:$pass@$PGSIDECAR_LISTEN/$db"

  Health:  http://$PGSIDECAR_HEALTH__LISTEN/health   Stats: http://$PGSIDECAR_HEALTH__LISTEN/stats
  Ctrl-C stops the proxy and removes the cluster.

EOF

# Not exec: the EXIT trap must outlive the proxy to remove the cluster.
# The proxy runs in a session of its own (setsid), out of the terminal's
# process group: Ctrl-C reaches this script alone, and the INT trap below
# passes one SIGTERM on, so the proxy drains (open transactions finish
# within shutdown_timeout). In the terminal's group it would get the
# SIGINT too, and the trap's SIGTERM would be a second signal, which
# closes every client at once.
setsid "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child" || true; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child" || true; exit 143' TERM
wait "$child"
