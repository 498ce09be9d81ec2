# shellcheck shell=bash
# Shared helpers for the operator scripts (devpg.sh, bench.sh): find or
# install the PostgreSQL server binaries, run a throwaway cluster in a temp
# dir, pick free loopback ports, poll an HTTP endpoint without curl.
# Source it; it defines functions and sets nothing else but _apt_updated
# (apt_install's once-per-script flag, empty).

# log prints to stderr so that a script's stdout stays for its results.
log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install installs Debian packages, running apt-get update once per
# script. It needs root (or sudo without a password).
_apt_updated=""
apt_install() {
	local sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || { log "need root to apt-get install $*"; return 1; }
		sudo="sudo -n"
	fi
	command -v apt-get >/dev/null 2>&1 || { log "no apt-get: install $* by hand"; return 1; }
	if [ -z "$_apt_updated" ]; then
		DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq || return 1
		_apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# pg_bindir prints the directory holding pg_ctl: $PG_BIN if set, the newest
# /usr/lib/postgresql/*/bin (Debian keeps the server binaries off PATH), or
# wherever pg_ctl is on PATH. Prints nothing if there is none.
pg_bindir() {
	if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/pg_ctl" ]; then
		echo "$PG_BIN"
		return
	fi
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then
		echo "$d"
		return
	fi
	if command -v pg_ctl >/dev/null 2>&1; then
		dirname "$(command -v pg_ctl)"
	fi
}

# ensure_pg_bindir sets PG_BIN, installing the server package if no
# pg_ctl exists on this machine.
ensure_pg_bindir() {
	PG_BIN=$(pg_bindir)
	if [ -z "$PG_BIN" ]; then
		log "no PostgreSQL server binaries found; installing the postgresql package"
		apt_install postgresql postgresql-contrib || die "could not install postgresql"
		PG_BIN=$(pg_bindir)
		[ -n "$PG_BIN" ] || die "postgresql installed but pg_ctl still not found"
	fi
	export PG_BIN
}

# as_pg runs a command as the cluster's owner: the postgres user when we
# are root (initdb and postgres refuse to run as root), else ourselves.
as_pg() {
	if [ "$(id -u)" -ne 0 ]; then
		"$@"
	elif command -v runuser >/dev/null 2>&1; then
		runuser -u postgres -- "$@"
	else
		su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
	fi
}

# port_in_use reports whether something accepts on 127.0.0.1:$1.
port_in_use() { (exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1"); }

# free_port prints a loopback port nobody listens on. There is a small
# window before the caller binds it; callers that start a server retry.
free_port() {
	local p
	for _ in $(seq 1 200); do
		# Below Linux's ephemeral range (32768-60999 by default): a port
		# there may be the local end of an outgoing connection (10,000 of
		# them in the idle-memory probe), which no listener can bind.
		p=$((20000 + RANDOM % 12000))
		if ! port_in_use "$p"; then
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

# http_status prints the status code of GET http://$1$2 (e.g.
# 127.0.0.1:9930 /health), or 000 when nothing answers. It uses bash's
# /dev/tcp so a fresh machine without curl can run it.
http_status() {
	local hostport=$1 path=$2 host port line
	host=${hostport%:*}
	port=${hostport##*:}
	line=$(
		exec 2>/dev/null # bash reports a refused /dev/tcp connect on stderr
		exec 3<>"/dev/tcp/$host/$port" || exit 0
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
		timeout 5 head -n 1 <&3
	) || true
	line=${line#HTTP/* }
	echo "${line:0:3}" | grep -E '^[0-9]{3}$' || echo 000
}

# wait_http waits up to $3 seconds for GET $1$2 to answer 200.
wait_http() {
	local deadline=$((SECONDS + $3))
	while [ "$SECONDS" -lt "$deadline" ]; do
		[ "$(http_status "$1" "$2")" = 200 ] && return 0
		sleep 0.2
	done
	return 1
}

# pg_start creates and starts a cluster. Arguments: the temp dir (it must
# exist; the data dir, socket and log go in it) and extra postgres -c
# settings ("name=value" words). Sets PG_PORT. Auth: trust on the unix
# socket (only the owner can reach it, inside the temp dir), SCRAM on TCP,
# so clients on 127.0.0.1 must present a real password.
pg_start() {
	local dir=$1
	shift
	local opts="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir" kv
	for kv in "$@"; do
		opts+=" -c $kv"
	done
	if [ "$(id -u)" -eq 0 ]; then
		id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh postgres
		chown postgres: "$dir"
	fi
	as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
		--encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
	local try
	for try in 1 2 3 4 5; do
		PG_PORT=$(free_port)
		if as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
			-o "-p $PG_PORT $opts" start >/dev/null; then
			export PG_PORT
			return 0
		fi
		log "postgres did not start on port $PG_PORT (attempt $try); retrying"
	done
	tail -n 20 "$dir/postgres.log" >&2
	die "postgres would not start"
}

# pg_stop stops the cluster in $1 (fast: rolls back and disconnects).
pg_stop() {
	[ -f "$1/data/postmaster.pid" ] || return 0
	as_pg "$PG_BIN/pg_ctl" -D "$1/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
		as_pg "$PG_BIN/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}

# pg_superuser_sql runs SQL as the cluster's superuser over the socket.
pg_superuser_sql() {
	local dir=$1
	shift
	as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# pg_create_app creates a login role and a database it owns: $2/$3 are
# user/password, $4 the database.
pg_create_app() {
	local dir=$1 user=$2 pass=$3 db=$4
	pg_superuser_sql "$dir" -c "CREATE ROLE \"$user\" LOGIN PASSWORD '$pass'" >/dev/null
	pg_superuser_sql "$dir" -c "CREATE DATABASE \"$db\" OWNER \"$user\"" >/dev/null
}
