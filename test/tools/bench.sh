#!/usr/bin/env bash
# bench.sh: pgsidecar against PgBouncer (and PostgreSQL directly), in ONE
# interleaved run, as the markdown the README's benchmark section is made
# of: TPS and pgsidecar/PgBouncer ratios, CPU per transaction of each
# pooler process, of PostgreSQL and of the whole machine, added latency at
# 1 client, idle memory per client, and whether each target of issue 8
# holds. `make bench` runs it.
#
# What it sets up, all on 127.0.0.1, so the numbers can be read correctly:
#   - its own throwaway PostgreSQL: max_connections=400, and fsync=off,
#     synchronous_commit=off, full_page_writes=off: durability is off so the
#     disk does not dominate and the poolers' overhead is visible;
#   - pgbench -i -s $BENCH_SCALE (default 10);
#   - pgsidecar ($BENCH_PROXY_BIN, else built here) in transaction mode with
#     pool.max_size $BENCH_POOL_SIZE (default 20), SCRAM client auth;
#   - PgBouncer when installed (`bash test/tools/deps.sh bench` installs it;
#     `make bench` does that first): pool_mode transaction,
#     default_pool_size and max_db_connections $BENCH_POOL_SIZE, SCRAM auth.
#
# The runs: pgbench -S (select only), -M simple and -M extended at each
# client count, plus pgsidecar's -M prepared against PgBouncer's
# -M extended (PgBouncer before 1.21 cannot carry prepared statements in
# transaction mode; from 1.21 its max_prepared_statements is set to 200,
# but it still runs -M extended only), added to the -M extended cell of
# that client count. A cell is one client count and protocol; it runs each
# pooler and direct in turn, BENCH_ROUNDS times, the order rotated every
# round, so drift (other load, caches, autovacuum) hits all alike. CPU per
# transaction is the pooler process's utime+stime (/proc/PID/stat) over its
# runs divided by the transactions pgbench processed (client logins
# included: SCRAM costs each pooler about 1 ms of CPU per login);
# PostgreSQL's (pg_ticks) and the machine's (/proc/stat) are taken over
# the same runs. Idle
# memory is a FRESH process of each pooler (trust auth, so 10,000 logins
# take seconds), measured by test/tools/rssmeter: RSS with no client, then
# with BENCH_IDLE_CLIENTS idle clients that each ran one SELECT 1.
#
# Knobs (environment, defaults in brackets):
#   BENCH_SECONDS [8]            seconds per pgbench run
#   BENCH_ROUNDS [2]             rounds per cell (mean TPS over them)
#   BENCH_CLIENTS ["1 16 64 256"]
#   BENCH_MODES ["simple extended"]
#   BENCH_PREPARED_CLIENTS ["16 64 256"]  pgsidecar -M prepared vs PgBouncer
#                                -M extended at these counts; "" skips them
#   BENCH_TARGETS ["pgsidecar pgbouncer direct"]; add relaylab-goroutine,
#                                relaylab-epoll and relaylab-raw for the
#                                featureless relays of test/tools/relaylab (the
#                                floor of a goroutine-per-client relay on Go's
#                                netpoller, of a one-thread epoll loop, and of
#                                that loop with PgBouncer's system calls): a table of
#                                every target's TPS and CPU per transaction;
#                                pgsidecar-1cpu runs pgsidecar with
#                                GOMAXPROCS=1, as under a one-CPU quota
#   BENCH_IDLE_CLIENTS [10000]   idle clients for the memory figure; 0 skips
#                                it; capped by the open-file limit
#   BENCH_IDLE_SETTLE [3]        seconds to wait before reading RSS
#   BENCH_PROFILE [0]            1: also profile a 16-client simple run:
#                                pprof CPU top entries (pgsidecar -pprof) and
#                                perf stat syscalls / context switches per
#                                transaction (strace -c and /proc fallbacks);
#                                and the event loop alone (go test -bench
#                                LoopExchange/clients=16 ./proxy, 3 runs)
#   BENCH_PROFILE_SECONDS [10]   length of each profiled run
#   BENCH_JOBS [2]               pgbench -j, capped at the client count
#   BENCH_SCALE [10]  BENCH_POOL_SIZE [20]
#   BENCH_LATENCY_ROUNDS [8]     rounds of the 1-client latency series
#                                (direct, pgsidecar, PgBouncer in turn, per
#                                protocol; added latency = the median over
#                                rounds of each round's difference with
#                                direct); 0 skips it and the target falls
#                                back to the cells' means
#   BENCH_LATENCY_SECONDS [2]    seconds per run of that series
#   BENCH_MAX_MINUTES [20]       runs past this are skipped and marked
#   BENCH_OUT [bin/bench-results.md]  the markdown; logs and the profile go
#                                to bin/bench-results-logs/
#   BENCH_PROXY_BIN              use this pgsidecar binary (make bench sets it)
#   PG_BIN                       PostgreSQL's bin directory
# Defaults: 8 cells (the 3 prepared runs join the extended ones), 27 runs
# a round, and the latency series: about
# 11-12 minutes in all.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=test/tools/pglib.sh
. "$here/pglib.sh"

secs=${BENCH_SECONDS:-8}
rounds=${BENCH_ROUNDS:-2}
clients_list=${BENCH_CLIENTS:-"1 16 64 256"}
modes=${BENCH_MODES:-"simple extended"}
prepared_clients=${BENCH_PREPARED_CLIENTS-"16 64 256"}
targets=${BENCH_TARGETS:-"pgsidecar pgbouncer direct"}
idle_clients=${BENCH_IDLE_CLIENTS:-10000}
idle_settle=${BENCH_IDLE_SETTLE:-3}
profile=${BENCH_PROFILE:-0}
profile_secs=${BENCH_PROFILE_SECONDS:-10}
jobs=${BENCH_JOBS:-2}
scale=${BENCH_SCALE:-10}
pool_size=${BENCH_POOL_SIZE:-20}
max_minutes=${BENCH_MAX_MINUTES:-20}
lat_rounds=${BENCH_LATENCY_ROUNDS:-8}
lat_secs=${BENCH_LATENCY_SECONDS:-2}
out_file=${BENCH_OUT:-$root/bin/bench-results.md}
[[ $out_file == /* ]] || out_file=$PWD/$out_file
logs_dir=${out_file%.md}-logs
user=bench
pass=bench
db=bench
hz=$(getconf CLK_TCK)
notes=()

for v in secs rounds idle_clients idle_settle profile_secs jobs scale pool_size max_minutes lat_rounds lat_secs; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
if [ "$secs" -lt 1 ] || [ "$rounds" -lt 1 ]; then die "BENCH_SECONDS and BENCH_ROUNDS must be at least 1"; fi
[ "$profile_secs" -ge 4 ] || die "BENCH_PROFILE_SECONDS must be at least 4"
[ "$lat_secs" -ge 1 ] || die "BENCH_LATENCY_SECONDS must be at least 1"
[ "$idle_clients" -le 50000 ] || die "BENCH_IDLE_CLIENTS is capped at 50000"
in_list() { [[ " $2 " == *" $1 "* ]]; }
has_target() { in_list "$1" "$targets"; }
drop_target() { targets=$(echo " $targets " | sed "s/ $1 / /; s/^ *//; s/ *$//"); }

# relaylab_relays: test/tools/relaylab's -relay values; each is the target
# relaylab-<relay>. has_relaylab: one of them is a target.
relaylab_relays="goroutine epoll raw"
has_relaylab() {
	local r
	for r in $relaylab_relays; do has_target "relaylab-$r" && return 0; done
	return 1
}

known_targets="pgsidecar pgsidecar-1cpu pgbouncer direct"
for r in $relaylab_relays; do known_targets+=" relaylab-$r"; done
for t in $targets; do
	in_list "$t" "$known_targets" || die "BENCH_TARGETS: unknown target '$t' (${known_targets// /, })"
done
for m in $modes; do
	case $m in simple | extended | prepared) ;; *) die "BENCH_MODES: unknown mode '$m'" ;; esac
done

ensure_pg_bindir
pgbench_bin="$PG_BIN/pgbench"
[ -x "$pgbench_bin" ] || pgbench_bin=$(command -v pgbench) || die "pgbench not found (Debian: postgresql-contrib or postgresql-client)"
export PATH="$PATH:/usr/local/go/bin"

# --- the binaries -----------------------------------------------------------
if has_target pgsidecar || [ "$idle_clients" -gt 0 ]; then
	if [ -z "${BENCH_PROXY_BIN:-}" ]; then
		log "building bin/pgsidecar"
		(cd "$root" && go build -o bin/pgsidecar .) || die "go build failed"
		BENCH_PROXY_BIN=$root/bin/pgsidecar
	fi
	[ -x "$BENCH_PROXY_BIN" ] || die "$BENCH_PROXY_BIN is not an executable"
fi
relaylab_bin=""
if has_relaylab; then
	relaylab_bin=$root/bin/relaylab
	(cd "$root" && go build -o "$relaylab_bin" ./test/tools/relaylab) || die "go build relaylab failed"
fi
rssmeter_bin=""
if [ "$idle_clients" -gt 0 ]; then
	rssmeter_bin=$root/bin/rssmeter
	(cd "$root" && go build -o "$rssmeter_bin" ./test/tools/rssmeter) || die "go build rssmeter failed"
fi

pgbouncer_bin=$(command -v pgbouncer || true)
[ -n "$pgbouncer_bin" ] || [ ! -x /usr/sbin/pgbouncer ] || pgbouncer_bin=/usr/sbin/pgbouncer
if [ -z "$pgbouncer_bin" ]; then
	notes+=("PgBouncer is not installed (\`bash test/tools/deps.sh bench\` installs it): its columns are empty.")
	drop_target pgbouncer
fi
pgbouncer_version=""
[ -z "$pgbouncer_bin" ] || pgbouncer_version=$("$pgbouncer_bin" --version | awk 'NR == 1 { print $2 }')

# Open files: each idle client is a socket in rssmeter and in the pooler
# (and PgBouncer gets 1024 from runuser unless told otherwise).
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
ulimit -n "$hard_nofile" 2>/dev/null || true
if [ "$idle_clients" -gt $((hard_nofile - 500)) ]; then
	notes+=("The open-file limit ($hard_nofile) allowed only $((hard_nofile - 500)) of BENCH_IDLE_CLIENTS=$idle_clients idle clients.")
	idle_clients=$((hard_nofile - 500))
	[ "$idle_clients" -gt 0 ] || idle_clients=0
fi

# --- the cluster ------------------------------------------------------------
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgsidecar-bench.XXXXXX")
chmod 755 "$dir"
sidecar_pids=()
bouncer_dirs=()
cleanup() {
	trap - EXIT INT TERM
	local p d
	for p in "${sidecar_pids[@]+"${sidecar_pids[@]}"}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${sidecar_pids[@]+"${sidecar_pids[@]}"}"; do
		wait "$p" 2>/dev/null || true
	done
	for d in "${bouncer_dirs[@]+"${bouncer_dirs[@]}"}"; do
		[ ! -f "$d/pgbouncer.pid" ] || kill -TERM "$(cat "$d/pgbouncer.pid")" 2>/dev/null || true
	done
	[ "${#bouncer_dirs[@]}" -eq 0 ] || sleep 0.5
	pg_stop "$dir"
	# Keep the servers' logs next to the table: a surprising number needs them.
	mkdir -p "$logs_dir"
	cp "$dir"/*.log "$logs_dir"/ 2>/dev/null || true
	for d in "${bouncer_dirs[@]+"${bouncer_dirs[@]}"}"; do
		cp "$d/pgbouncer.log" "$logs_dir/$(basename "$d").log" 2>/dev/null || true
	done
	rm -rf "$dir"
}
mkdir -p "$(dirname "$out_file")"
rm -rf "$logs_dir"
mkdir -p "$logs_dir"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting PostgreSQL ($("$PG_BIN/postgres" --version)) in $dir"
pg_start "$dir" max_connections=400 shared_buffers=256MB fsync=off synchronous_commit=off \
	full_page_writes=off max_wal_size=4GB checkpoint_timeout=30min
pg_create_app "$dir" "$user" "$pass" "$db"
export PGPASSWORD=$pass
log "pgbench -i -s $scale"
"$pgbench_bin" -i -q -s "$scale" -h 127.0.0.1 -p "$PG_PORT" -U "$user" "$db" >"$dir/init.log" 2>&1 ||
	{ cat "$dir/init.log" >&2; die "pgbench -i failed"; }

# Every pooler runs in a session of its own, as PostgreSQL's postmaster
# and a daemonized PgBouncer (-d) do. With the kernel's autogroup
# scheduling on (/proc/sys/kernel/sched_autogroup_enabled, the default of
# most distributions), a session is a CPU group: a pooler left in this
# script's session would share pgbench's CPU share while PgBouncer had one
# of its own, which skews every loaded cell (measured: 0.74x against 0.85x
# PgBouncer's TPS at 256 clients, the same binary). A sidecar container has
# a CPU group of its own too. setsid calls setsid(2) and execs, without a
# fork, in a process that leads no process group (a background job of a
# script), so $! stays the pooler's pid; own_session checks that.

# own_session PID NAME: dies unless PID leads its own session.
own_session() {
	local sid
	for _ in $(seq 1 20); do
		sid=$(ps -o sid= -p "$1" 2>/dev/null | tr -d ' ')
		[ "$sid" = "$1" ] && return 0
		[ -n "$sid" ] || break
		sleep 0.05
	done
	kill -TERM "$1" 2>/dev/null || true
	die "$2 (pid $1) does not lead its own session (sid '${sid:-gone}'): setsid forked, and the CPU figures would be another process's"
}

# start_sidecar NAME AUTH MAX_CLIENTS [PROXY ARGS...]: a pgsidecar in
# transaction mode from a clean environment (run from the temp dir, so no
# ./config.yaml is read, and every other PGSIDECAR_* variable unset); sets
# started_pid and started_port.
start_sidecar() {
	local name=$1 auth=$2 maxc=$3 health_port try
	shift 3
	# free_port's port may be taken by someone else before pgsidecar binds
	# it: then pgsidecar exits with "address already in use", and another
	# pair of ports is tried.
	for try in 1 2 3; do
		start_sidecar_once "$name" "$auth" "$maxc" "$@" && return 0
		grep -q 'address already in use' "$dir/$name.log" 2>/dev/null || break
		log "pgsidecar ($name): a port was taken before it bound it; trying others ($try/3)"
	done
	tail -n 30 "$dir/$name.log" >&2
	die "pgsidecar ($name) did not report healthy on 127.0.0.1:$health_port/health within 30s"
}

# start_sidecar_once: one attempt of start_sidecar, with fresh ports.
start_sidecar_once() {
	local name=$1 auth=$2 maxc=$3
	shift 3
	started_port=$(free_port)
	health_port=$(free_port)
	(
		cd "$dir"
		# shellcheck disable=SC2046
		unset $(compgen -e | grep '^PGSIDECAR_' || true)
		export DATABASE_URL="postgres://$user:$pass@127.0.0.1:$PG_PORT/$db" \
			PGSIDECAR_LISTEN=127.0.0.1:$started_port \
			PGSIDECAR_HEALTH__LISTEN=127.0.0.1:$health_port \
			PGSIDECAR_POOL__MODE=transaction \
			PGSIDECAR_POOL__MAX_SIZE=$pool_size \
			PGSIDECAR_POOL__MAX_CLIENT_CONN=$maxc \
			PGSIDECAR_AUTH__METHOD=$auth \
			PGSIDECAR_SHUTDOWN_TIMEOUT=5s \
			PGSIDECAR_LOG__LEVEL=warn
		# pgsidecar-1cpu: what the Go runtime picks under a one-CPU
		# container quota (cpu.max), the common sidecar limit.
		[ -z "${sidecar_gomaxprocs:-}" ] || export GOMAXPROCS=$sidecar_gomaxprocs
		exec setsid "$BENCH_PROXY_BIN" "$@" >"$dir/$name.log" 2>&1
	) &
	started_pid=$!
	own_session "$started_pid" "$name"
	sidecar_pids+=("$started_pid")
	wait_http "127.0.0.1:$health_port" /health 30 && return 0
	kill -TERM "$started_pid" 2>/dev/null || true
	wait "$started_pid" 2>/dev/null || true
	return 1
}

# start_relaylab NAME RELAY: test/tools/relaylab with -relay RELAY
# (goroutine, epoll or raw), pool $pool_size, clients trusted; sets started_pid
# and started_port.
start_relaylab() {
	local name=$1 relay=$2 try
	for try in 1 2 3; do
		started_port=$(free_port)
		DATABASE_URL="postgres://$user:$pass@127.0.0.1:$PG_PORT/$db" \
			setsid "$relaylab_bin" -relay "$relay" -pool "$pool_size" -listen "127.0.0.1:$started_port" >"$dir/$name.log" 2>&1 &
		started_pid=$!
		own_session "$started_pid" "$name"
		sidecar_pids+=("$started_pid")
		for _ in $(seq 1 50); do port_in_use "$started_port" && return 0; kill -0 "$started_pid" 2>/dev/null || break; sleep 0.1; done
		kill -TERM "$started_pid" 2>/dev/null || true
		log "relaylab ($name) did not listen on $started_port ($try/3): $(tail -n 1 "$dir/$name.log")"
	done
	die "relaylab ($name) did not start"
}

# stop_sidecar PID: SIGTERM and wait.
stop_sidecar() {
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# start_bouncer NAME AUTH MAX_CLIENTS: a PgBouncer in transaction mode in
# $dir/NAME; sets started_pid and started_port.
start_bouncer() {
	local name=$1 auth=$2 maxc=$3 bdir=$dir/$1 prepared_line
	mkdir -p "$bdir"
	bouncer_dirs+=("$bdir")
	started_port=$(free_port)
	prepared_line="; max_prepared_statements needs PgBouncer 1.21+, this is $pgbouncer_version"
	if [ "$(printf '%s\n' 1.21 "$pgbouncer_version" | sort -V | head -n 1)" = 1.21 ]; then
		prepared_line="max_prepared_statements = 200"
	fi
	printf '"%s" "%s"\n' "$user" "$pass" >"$bdir/userlist.txt"
	cat >"$bdir/pgbouncer.ini" <<EOF
[databases]
$db = host=127.0.0.1 port=$PG_PORT dbname=$db

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $started_port
unix_socket_dir = $bdir
auth_type = $auth
auth_file = $bdir/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
max_db_connections = $pool_size
max_client_conn = $maxc
$prepared_line
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
EOF
	[ "$(id -u)" -ne 0 ] || chown -R postgres: "$bdir"
	# PgBouncer refuses to run as root; as_pg runs it as postgres then, and
	# runuser resets the open-file limit, so it is raised again inside.
	# shellcheck disable=SC2016 # $1 and $@ are the inner sh's
	as_pg sh -c 'ulimit -n "$1" 2>/dev/null; shift; exec "$@"' sh "$hard_nofile" \
		"$pgbouncer_bin" -d -q "$bdir/pgbouncer.ini" || die "pgbouncer ($name) did not start"
	for _ in $(seq 1 50); do port_in_use "$started_port" && [ -s "$bdir/pgbouncer.pid" ] && break; sleep 0.1; done
	port_in_use "$started_port" || die "pgbouncer ($name) is not listening on $started_port"
	started_pid=$(cat "$bdir/pgbouncer.pid")
}

stop_bouncer() {
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

declare -A port pid_of
port[direct]=$PG_PORT
proxy_args=()
pprof_port=""
if [ "$profile" = 1 ] && has_target pgsidecar; then
	pprof_port=$(free_port)
	proxy_args=(-pprof "127.0.0.1:$pprof_port")
fi
if has_target pgsidecar; then
	start_sidecar pgsidecar scram-sha-256 2000 "${proxy_args[@]+"${proxy_args[@]}"}"
	port[pgsidecar]=$started_port
	pid_of[pgsidecar]=$started_pid
	log "pgsidecar $("$BENCH_PROXY_BIN" version | awk '{ print $2 }') on 127.0.0.1:$started_port (pid $started_pid, transaction mode, pool.max_size $pool_size)"
fi
if has_target pgsidecar-1cpu; then
	sidecar_gomaxprocs=1
	start_sidecar pgsidecar-1cpu scram-sha-256 2000
	sidecar_gomaxprocs=""
	port[pgsidecar-1cpu]=$started_port
	pid_of[pgsidecar-1cpu]=$started_pid
	log "pgsidecar with GOMAXPROCS=1 on 127.0.0.1:$started_port (pid $started_pid)"
fi
for r in $relaylab_relays; do
	has_target "relaylab-$r" || continue
	start_relaylab "relaylab-$r" "$r"
	port[relaylab-$r]=$started_port
	pid_of[relaylab-$r]=$started_pid
	log "relaylab -relay $r on 127.0.0.1:$started_port (pid $started_pid, pool $pool_size)"
done
if has_target pgbouncer; then
	start_bouncer pgbouncer scram-sha-256 2000
	port[pgbouncer]=$started_port
	pid_of[pgbouncer]=$started_pid
	log "PgBouncer $pgbouncer_version on 127.0.0.1:$started_port (pid $started_pid, transaction mode, pool $pool_size)"
fi

# cpu_ticks PID: utime + stime of the whole process, in clock ticks (the
# fields after the command name, which may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# pg_ticks: PostgreSQL's CPU, every process of it, in clock ticks: the
# postmaster's own and reaped children's time (cutime, cstime) plus its
# live children's utime + stime. A backend that exits moves from the
# second sum to the first when the postmaster reaps it, so a backend a
# pooler recycles mid-run is still counted.
pg_ticks() {
	local pm k
	pm=$(head -n 1 "$dir/data/postmaster.pid")
	{
		sed 's/^.*) //' "/proc/$pm/stat" | awk '{ print $12 + $13 + $14 + $15 }'
		# A child may exit between pgrep and the read (a recycled
		# backend, an autovacuum worker): its time is then the
		# postmaster's cutime, read above or at the next call.
		for k in $(pgrep -P "$pm" || true); do
			sed 's/^.*) //' "/proc/$k/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true
		done
	} | awk '{ s += $1 } END { print s + 0 }'
}

# machine_ticks: the busy time of every CPU (/proc/stat: user, nice,
# system, irq, softirq, steal), in clock ticks.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# --- the cells --------------------------------------------------------------
# A cell is "CLIENTS VARIANT..." with VARIANT = TARGET:PGBENCH_MODE.
cells=()
for m in $modes; do
	for c in $clients_list; do
		vs=()
		for t in $targets; do vs+=("$t:$m"); done
		if [ "$m" = extended ] && in_list "$c" "$prepared_clients" && has_target pgsidecar; then
			vs+=(pgsidecar:prepared)
		fi
		cells+=("$c ${vs[*]}")
	done
done
if ! in_list extended "$modes" && has_target pgsidecar; then
	for c in $prepared_clients; do
		vs=(pgsidecar:prepared)
		! has_target pgbouncer || vs+=(pgbouncer:extended)
		cells+=("$c ${vs[*]}")
	done
fi
nruns=0
for cell in "${cells[@]}"; do nruns=$((nruns + $(wc -w <<<"$cell") - 1)); done
log "${#cells[@]} cells, $nruns runs a round x $rounds rounds x ${secs}s: about $((nruns * rounds * (secs + 1) / 60 + 1)) minutes of pgbench (capped at $max_minutes)"
deadline=$((SECONDS + max_minutes * 60))
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')

declare -A tps_list tps_sum runs tx_sum ticks_sum pg_ticks_sum machine_ticks_sum lat_sum fail_sum aborted no_tps tried
skipped=0

# pgbench_run TARGET MODE CLIENTS SECONDS: one pgbench -S; its output in $pg_out.
pgbench_run() {
	local -a args=(-n -S -M "$2" -c "$3" -j "$(($3 < jobs ? $3 : jobs))" -T "$4")
	pg_out=$(timeout $(($4 + 60)) "$pgbench_bin" "${args[@]}" -h 127.0.0.1 -p "${port[$1]}" -U "$user" "$db" 2>&1) && pg_rc=0 || pg_rc=$?
}
field() { sed -n "s/^$1\([0-9.]*\).*/\1/p" <<<"$pg_out" | head -n 1; }

# run_one CLIENTS TARGET:MODE: one measured run, added to the sums.
run_one() {
	local c=$1 target=${2%%:*} mode=${2#*:} key="$1|$2" pid t0="" t1 g0 g1 m0 m1 tps tx lat failed
	pid=${pid_of[$target]:-}
	g0=$(pg_ticks)
	m0=$(machine_ticks)
	[ -z "$pid" ] || t0=$(cpu_ticks "$pid")
	pgbench_run "$target" "$mode" "$c" "$secs"
	[ -z "$pid" ] || t1=$(cpu_ticks "$pid")
	m1=$(machine_ticks)
	g1=$(pg_ticks)
	tps=$(field 'tps = ')
	tx=$(field 'number of transactions actually processed: ')
	lat=$(field 'latency average = ')
	failed=$(field 'number of failed transactions: ')
	[ "$pg_rc" -eq 0 ] || aborted[$key]=$((${aborted[$key]:-0} + 1))
	if [ "$pg_rc" -ne 0 ] || [ -z "$tps" ]; then
		printf '%s\n' "--- $key (exit $pg_rc)" "$pg_out" >>"$logs_dir/failures.log"
	fi
	# A run that printed no TPS (it aborted, or every connection took the
	# whole duration) is not averaged in as zero; it is counted apart.
	tps_list[$key]+="${tps_list[$key]:+ }${tps:--}"
	if [ -n "$tps" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ]; then
		tps_sum[$key]=$(awk -v a="${tps_sum[$key]:-0}" -v b="$tps" 'BEGIN { print a + b }')
		lat_sum[$key]=$(awk -v a="${lat_sum[$key]:-0}" -v b="${lat:-0}" 'BEGIN { print a + b }')
		tx_sum[$key]=$((${tx_sum[$key]:-0} + tx))
		[ -z "$pid" ] || ticks_sum[$key]=$((${ticks_sum[$key]:-0} + t1 - t0))
		pg_ticks_sum[$key]=$((${pg_ticks_sum[$key]:-0} + g1 - g0))
		machine_ticks_sum[$key]=$((${machine_ticks_sum[$key]:-0} + m1 - m0))
		runs[$key]=$((${runs[$key]:-0} + 1))
	else
		no_tps[$key]=$((${no_tps[$key]:-0} + 1))
	fi
	fail_sum[$key]=$((${fail_sum[$key]:-0} + ${failed:-0}))
	tried[$key]=1
	log "$(printf '%-9s %-8s c=%-4s tps=%-9s lat=%-7s cpu=%-5s pg=%-5s machine=%-5s failed=%s%s' "$target" "$mode" "$c" "${tps:-n/a}" "${lat:-n/a}ms" \
		"$([ -z "$pid" ] || [ -z "$tps" ] || awk -v t=$((t1 - t0)) -v n="$tx" -v hz="$hz" 'BEGIN { printf "%.0fus", t * 1e6 / hz / n }')" \
		"$([ -z "$tps" ] || awk -v t=$((g1 - g0)) -v n="$tx" -v hz="$hz" 'BEGIN { printf "%.0fus", t * 1e6 / hz / n }')" \
		"$([ -z "$tps" ] || awk -v t=$((m1 - m0)) -v n="$tx" -v hz="$hz" 'BEGIN { printf "%.0fus", t * 1e6 / hz / n }')" \
		"${failed:-n/a}" "$([ "$pg_rc" -eq 0 ] || echo " (pgbench exit $pg_rc)")")"
}

for cell in "${cells[@]}"; do
	read -r c rest <<<"$cell"
	read -r -a vs <<<"$rest"
	n=${#vs[@]}
	for ((r = 0; r < rounds; r++)); do
		for ((i = 0; i < n; i++)); do
			if [ "$SECONDS" -ge "$deadline" ]; then
				skipped=1
				continue
			fi
			run_one "$c" "${vs[$(((i + r) % n))]}"
		done
	done
done
[ "$skipped" -eq 0 ] || notes+=("BENCH_MAX_MINUTES=$max_minutes was reached: cells without numbers were skipped.")

# --- the latency series -----------------------------------------------------
# Added latency at 1 client is a difference of two small numbers taken
# seconds apart on shared cores: a mean over the cells' two rounds moved by
# 200 µs between runs of the same build. So it has a series of its own:
# BENCH_LATENCY_ROUNDS short rounds of direct, pgsidecar and PgBouncer at 1
# client, the order rotated each round, and each pooler's added latency
# taken within its round (its latency minus direct's in the same round),
# then the median over rounds, which one noisy round cannot move.
declare -A lat_round added_round
if [ "$lat_rounds" -gt 0 ] && has_target direct; then
	lat_targets=()
	for t in direct pgsidecar pgbouncer; do has_target "$t" && lat_targets+=("$t"); done
	log "latency series: ${#lat_targets[@]} targets x $lat_rounds rounds x ${lat_secs}s at 1 client, per protocol"
	for m in $modes; do
		for ((r = 0; r < lat_rounds; r++)); do
			declare -A this_round=()
			for ((i = 0; i < ${#lat_targets[@]}; i++)); do
				t=${lat_targets[$(((i + r) % ${#lat_targets[@]}))]}
				[ "$SECONDS" -lt "$deadline" ] || { skipped=1; continue; }
				pgbench_run "$t" "$m" 1 "$lat_secs"
				lat=$(field 'latency average = ')
				[ "$pg_rc" -eq 0 ] && [ -n "$lat" ] || continue
				this_round[$t]=$(awk -v l="$lat" 'BEGIN { printf "%.1f", l * 1000 }')
				lat_round[$t:$m]+="${lat_round[$t:$m]:+ }${this_round[$t]}"
			done
			[ -n "${this_round[direct]:-}" ] || continue
			for t in pgsidecar pgbouncer; do
				[ -n "${this_round[$t]:-}" ] || continue
				added_round[$t:$m]+="${added_round[$t:$m]:+ }$(awk -v a="${this_round[$t]}" -v d="${this_round[direct]}" 'BEGIN { printf "%.1f", a - d }')"
			done
			unset this_round
		done
		for t in pgsidecar pgbouncer; do
			[ -z "${added_round[$t:$m]:-}" ] || log "latency series: $t $m added µs by round: ${added_round[$t:$m]}"
		done
	done
fi

# --- the profile (BENCH_PROFILE=1) -----------------------------------------
# The profiled runs are extra, after the measured ones, so profiling never
# slows a measured run.
profile_md=""
if [ "$profile" = 1 ]; then
	pprof_top=""
	if [ -n "$pprof_port" ]; then
		log "profile: pgsidecar CPU profile over a 16-client simple run (${profile_secs}s)"
		# The first `go tool pprof` may build the tool: do it before the
		# run, so the profile's window falls inside it.
		go tool pprof -h >/dev/null 2>&1 || true
		export PPROF_TMPDIR=$logs_dir
		( pgbench_run pgsidecar simple 16 "$profile_secs" ) &
		bpid=$!
		sleep 1
		if go tool pprof -proto -output "$logs_dir/pgsidecar-cpu.pb.gz" \
			"http://127.0.0.1:$pprof_port/debug/pprof/profile?seconds=$((profile_secs - 2))" >"$logs_dir/pprof-fetch.log" 2>&1; then
			pprof_top="by own time (flat):"$'\n'$(go tool pprof -top -nodecount=20 "$BENCH_PROXY_BIN" "$logs_dir/pgsidecar-cpu.pb.gz" 2>/dev/null |
				sed -n '/flat%/,$p')
			pprof_top+=$'\n\n'"by time including callees (cum):"$'\n'$(go tool pprof -top -cum -nodecount=20 "$BENCH_PROXY_BIN" "$logs_dir/pgsidecar-cpu.pb.gz" 2>/dev/null |
				sed -n '/flat%/,$p')
		else
			notes+=("The CPU profile could not be fetched: see $logs_dir/pprof-fetch.log.")
		fi
		wait "$bpid" || true
	fi
	# Syscalls and context switches per transaction: perf stat when the
	# kernel lets us count them, else strace -c (slows the process, but the
	# counts per transaction stand) and the threads' ctxt counts in /proc.
	use_perf=0 perf_events=raw_syscalls:sys_enter,context-switches
	if command -v perf >/dev/null 2>&1 && perf stat -e "$perf_events" -- true >/dev/null 2>&1; then
		use_perf=1
		# Which system calls, where the kernel has the per-call tracepoints.
		by_call=$perf_events
		for sc in read write recvfrom sendto readv writev epoll_pwait epoll_wait epoll_ctl futex nanosleep sched_yield \
			getsockopt setsockopt tgkill rt_sigreturn madvise mmap; do
			by_call+=",syscalls:sys_enter_$sc"
		done
		! perf stat -e "$by_call" -- true >/dev/null 2>&1 || perf_events=$by_call
	fi
	calls_md=""
	counts_md="| pooler | tool | transactions | syscalls / tx | context switches / tx | CPU µs / tx |"$'\n'"|---|---|---:|---:|---:|---:|"
	for t in pgsidecar pgbouncer; do
		has_target "$t" || continue
		pid=${pid_of[$t]}
		log "profile: syscalls and context switches of $t over a 16-client simple run (${profile_secs}s)"
		ctx0=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }')
		t0=$(cpu_ticks "$pid")
		if [ "$use_perf" = 1 ]; then
			tool="perf stat"
			perf stat -e "$perf_events" -x, -o "$logs_dir/perf-$t.csv" -p "$pid" &
		elif command -v strace >/dev/null 2>&1; then
			tool="strace -c -f"
			strace -c -f -q -o "$logs_dir/strace-$t.txt" -p "$pid" &
		else
			tool="/proc"
			sleep 0 &
		fi
		tracer=$!
		sleep 0.5
		pgbench_run "$t" simple 16 "$profile_secs"
		t1=$(cpu_ticks "$pid")
		ctx1=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }')
		kill -INT "$tracer" 2>/dev/null || true
		wait "$tracer" 2>/dev/null || true
		tx=$(field 'number of transactions actually processed: ')
		sc="-"
		cs=$((ctx1 - ctx0))
		case $tool in
		"perf stat")
			sc=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$logs_dir/perf-$t.csv")
			cs=$(awk -F, '$3 == "context-switches" { print $1 }' "$logs_dir/perf-$t.csv")
			calls_md+="| $t | $(awk -F, -v n="${tx:-0}" '$3 ~ /^syscalls:sys_enter_/ && n > 0 && $1 / n >= 0.05 {
				sub("syscalls:sys_enter_", "", $3); printf "%s%s %.2f", (k++ ? ", " : ""), $3, $1 / n } END { if (!k) printf "-" }' "$logs_dir/perf-$t.csv") |"$'\n'
			;;
		"strace -c -f") sc=$(awk '$NF == "total" { print $(NF - 2) }' "$logs_dir/strace-$t.txt") ;;
		esac
		per() { awk -v a="$1" -v n="$2" 'BEGIN { if (a == "" || a == "-" || a !~ /^[0-9.]+$/ || n + 0 == 0) print "-"; else printf "%.1f", a / n }'; }
		counts_md+=$'\n'"| $t | $tool | ${tx:-0} | $(per "$sc" "${tx:-0}") | $(per "$cs" "${tx:-0}") | $(awk -v t=$((t1 - t0)) -v n="${tx:-0}" -v hz="$hz" 'BEGIN { if (n == 0) print "-"; else printf "%.1f", t * 1e6 / hz / n }') |"
	done
	# The loop alone, with no PostgreSQL or pgbench on the cores: the
	# relay's own cost per exchange, steadier than anything above from one
	# run to the next (proxy/loop_test.go, BenchmarkLoopExchange).
	log "profile: the event loop alone (go test -bench LoopExchange/clients=16, 3 runs)"
	loop_md=""
	if (cd "$root" && go test -run '^$' -bench 'LoopExchange/clients=16$' -benchtime 100000x -count 3 ./proxy) >"$logs_dir/loop-bench.txt" 2>&1; then
		loop_md=$(awk '/^BenchmarkLoopExchange/ {
			for (i = 1; i <= NF; i++) { if ($i == "ns/op") ns = $(i - 1); if ($i == "loop-ns/op") loop = $(i - 1) }
			printf "| %d | %.2f | %.2f |\n", ++n, loop / 1000, ns / 1000 }' "$logs_dir/loop-bench.txt")
	else
		notes+=("The loop benchmark failed: see $logs_dir/loop-bench.txt.")
	fi
	profile_md="### Profile (BENCH_PROFILE=1): pgbench -S -M simple, 16 clients, ${profile_secs}s"$'\n\n'
	if [ -n "$pprof_top" ]; then
		profile_md+="pgsidecar CPU profile, \`go tool pprof -top\` (the profile is in $logs_dir/pgsidecar-cpu.pb.gz):"$'\n\n```\n'"$pprof_top"$'\n```\n\n'
	fi
	profile_md+="Per transaction, over the whole run (the tracer attached throughout):"$'\n\n'"$counts_md"$'\n'
	if [ -n "$calls_md" ]; then
		profile_md+=$'\n'"System calls per transaction by call (perf stat, those at 0.05 or more):"$'\n\n'"| pooler | calls / tx |"$'\n'"|---|---|"$'\n'"$calls_md"
	fi
	if [ -n "$loop_md" ]; then
		profile_md+=$'\n'"The event loop alone, \`BenchmarkLoopExchange/clients=16\` (16 clients, in-process fake backends, 100,000 exchanges a run): the loop thread's CPU per exchange, and the time per exchange:"$'\n\n'"| run | loop thread µs / exchange | µs / exchange |"$'\n'"|---:|---:|---:|"$'\n'"$loop_md"$'\n'
	fi
fi

# --- idle memory ------------------------------------------------------------
declare -A idle_rss0 idle_rssn idle_per
idle_probe() { # idle_probe NAME PID PORT
	local out
	if out=$("$rssmeter_bin" -pid "$2" -url "postgres://$user:$pass@127.0.0.1:$3/$db?sslmode=disable" \
		-n "0,$idle_clients" -settle "${idle_settle}s" -timeout 5m 2>&1); then
		idle_rss0[$1]=$(awk 'NR == 2 { print $2 }' <<<"$out")
		idle_rssn[$1]=$(awk 'NR == 3 { print $2 }' <<<"$out")
		idle_per[$1]=$(awk -v a="${idle_rss0[$1]}" -v b="${idle_rssn[$1]}" -v n="$idle_clients" 'BEGIN { printf "%.2f", (b - a) / n }')
		log "idle: $1 RSS ${idle_rss0[$1]} kB fresh, ${idle_rssn[$1]} kB with $idle_clients idle clients: ${idle_per[$1]} kB each"
	else
		printf '%s\n' "--- rssmeter $1" "$out" >>"$logs_dir/failures.log"
		notes+=("The idle-memory probe of $1 failed: $(tail -n 1 <<<"$out")")
	fi
}
if [ "$idle_clients" -gt 0 ]; then
	if has_target pgsidecar; then
		log "idle: a fresh pgsidecar and $idle_clients idle clients"
		start_sidecar idle-pgsidecar trust $((idle_clients + 100))
		idle_probe pgsidecar "$started_pid" "$started_port"
		stop_sidecar "$started_pid"
	fi
	if has_target pgbouncer; then
		log "idle: a fresh PgBouncer and $idle_clients idle clients"
		start_bouncer idle-pgbouncer trust $((idle_clients + 100))
		idle_probe pgbouncer "$started_pid" "$started_port"
		stop_bouncer "$started_pid"
	fi
fi

# --- the report -------------------------------------------------------------
# Figures per key (CLIENTS|TARGET:MODE); "-" when there is none.
mean_tps() { if [ -z "${runs[$1]:-}" ]; then echo "-"; else awk -v s="${tps_sum[$1]}" -v n="${runs[$1]}" 'BEGIN { printf "%.0f", s / n }'; fi; }
mean_lat_us() { if [ -z "${runs[$1]:-}" ]; then echo "-"; else awk -v s="${lat_sum[$1]}" -v n="${runs[$1]}" 'BEGIN { printf "%.0f", s / n * 1000 }'; fi; }
# per_tx_us TICKS KEY: TICKS (a sum over KEY's measured runs) in µs per
# transaction; "-" when KEY has no measured run or TICKS is empty.
per_tx_us() {
	if [ -z "${runs[$2]:-}" ] || [ -z "$1" ]; then echo "-"; else
		awk -v t="$1" -v n="${tx_sum[$2]}" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'
	fi
}
# cpu_us KEY: the pooler process's CPU per transaction.
cpu_us() { per_tx_us "${ticks_sum[$1]:-}" "$1"; }
# round_ratios KEY_A KEY_B: A/B round by round ("0.81 0.86"), the spread
# showing how noisy the cell was.
round_ratios() {
	awk -v a="${tps_list[$1]:-}" -v b="${tps_list[$2]:-}" 'BEGIN {
		n = split(a, x, " "); split(b, y, " "); s = ""
		for (i = 1; i <= n; i++) s = s (i > 1 ? " " : "") ((x[i] == "-" || y[i] == "-" || y[i] == 0) ? "-" : sprintf("%.2f", x[i] / y[i]))
		print (s == "" ? "-" : s)
	}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
# sorted LIST: a space-separated list of numbers, one a line, in order.
# median LIST [FORMAT]: its median printed with FORMAT (default %+.0f, a
# signed difference); spread LIST: its lowest and highest ("+12 to +80").
# Both print "-" for an empty list.
sorted() { tr ' ' '\n' <<<"${1:-}" | grep . | sort -g; }
median() { sorted "${1:-}" | awk -v f="${2:-%+.0f}" '{ v[NR] = $1 } END { if (!NR) print "-"; else printf f, NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { sorted "${1:-}" | awk '{ v[NR] = $1 } END { if (!NR) print "-"; else printf "%+.0f to %+.0f", v[1], v[NR] }'; }
# added_us POOLER MODE: the pooler's added latency at 1 client: the
# latency series' median when it ran, else the cells' mean difference.
added_us() {
	if [ -n "${added_round[$1:$2]:-}" ]; then median "${added_round[$1:$2]}"; else
		diff_us "$(mean_lat_us "1|$1:$2")" "$(mean_lat_us "1|direct:$2")"
	fi
}
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+d", a - b }'; }
failures() {
	local k=$1 s
	[ -n "${tried[$k]:-}" ] || { echo "-"; return; }
	s=${fail_sum[$k]}
	[ -z "${aborted[$k]:-}" ] || s+=" (${aborted[$k]} aborted)"
	[ -z "${no_tps[$k]:-}" ] || s+=" (${no_tps[$k]} without TPS)"
	echo "$s"
}
# verdict HOLDS: yes / no / "-" (nothing measured).
le() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else print (a + 0 <= b + 0) ? "yes" : "no" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else print (a + 0 >= b + 0) ? "yes" : "no" }'; }
# all_of VERDICT...: yes if all yes, no if any no, else "-".
all_of() {
	local v r="-"
	for v in "$@"; do
		case $v in no) echo no; return ;; yes) r=yes ;; esac
	done
	echo "$r"
}

{
	echo "pgbench -S, ${secs}s x $rounds interleaved rounds per cell (order rotated each round), -j up to $jobs, scale $scale;"
	echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }') with fsync, synchronous_commit and full_page_writes off; pools of $pool_size in transaction mode;"
	echo "pgsidecar $("$BENCH_PROXY_BIN" version 2>/dev/null | awk '{ print $2 }'), PgBouncer ${pgbouncer_version:-(not installed)}. $started_at, $(nproc) cores,"
	echo "load average $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown) at the end: other work on the machine skews every figure, ratios included."
	echo
	echo "| protocol | clients | direct TPS | pgsidecar TPS | PgBouncer TPS | pgsidecar / PgBouncer | per round | pgsidecar CPU µs/tx | PgBouncer CPU µs/tx | failed (pgsidecar / PgBouncer / direct) |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
	for m in $modes; do
		for c in $clients_list; do
			s="$c|pgsidecar:$m" b="$c|pgbouncer:$m" d="$c|direct:$m"
			echo "| $m | $c | $(mean_tps "$d") | $(mean_tps "$s") | $(mean_tps "$b") | $(ratio "$(mean_tps "$s")" "$(mean_tps "$b")") | $(round_ratios "$s" "$b") | $(cpu_us "$s") | $(cpu_us "$b") | $(failures "$s") / $(failures "$b") / $(failures "$d") |"
		done
	done
	for c in $prepared_clients; do
		s="$c|pgsidecar:prepared" b="$c|pgbouncer:extended"
		echo "| pgsidecar prepared vs PgBouncer extended | $c | - | $(mean_tps "$s") | $(mean_tps "$b") | $(ratio "$(mean_tps "$s")" "$(mean_tps "$b")") | $(round_ratios "$s" "$b") | $(cpu_us "$s") | $(cpu_us "$b") | $(failures "$s") / $(failures "$b") / - |"
	done
	if has_relaylab || has_target pgsidecar-1cpu; then
		echo
		echo "Every target, TPS and CPU µs per transaction (pgsidecar-1cpu: GOMAXPROCS=1, as under a one-CPU quota; relaylab: test/tools/relaylab, relays without pgsidecar's features that trust every client):"
		echo
		header="| protocol | clients |" rule="|---|---:|"
		for t in $targets; do [ "$t" = direct ] || { header+=" $t TPS | $t CPU µs/tx |"; rule+="---:|---:|"; }; done
		echo "$header"
		echo "$rule"
		for m in $modes; do
			for c in $clients_list; do
				line="| $m | $c |"
				for t in $targets; do [ "$t" = direct ] || line+=" $(mean_tps "$c|$t:$m") | $(cpu_us "$c|$t:$m") |"; done
				echo "$line"
			done
		done
	fi
	echo
	echo "Where the machine's CPU went, µs per transaction: the pooler process, PostgreSQL (every process of it), the rest (pgbench, and kernel work charged to none of them) and the machine's total busy time (/proc/stat), at each client count above 1. These runs saturate the machine, so TPS follows the total, and a pooler's own CPU is not all it costs: PostgreSQL's and pgbench's shares differ behind each pooler too. (At 1 client the machine is mostly idle, and /proc/stat's tick-sampled busy time falls below the processes' own figures: not shown.)"
	echo
	echo "| protocol | clients | target | TPS | pooler | PostgreSQL | rest | machine |"
	echo "|---|---:|---|---:|---:|---:|---:|---:|"
	for m in $modes; do
		for c in $clients_list; do
			[ "$c" -gt 1 ] || continue
			for t in $targets; do
				k="$c|$t:$m"
				[ -n "${runs[$k]:-}" ] || continue
				total=$(per_tx_us "${machine_ticks_sum[$k]}" "$k")
				pooler=$(cpu_us "$k")
				pgus=$(per_tx_us "${pg_ticks_sum[$k]}" "$k")
				rest=$(awk -v a="$total" -v b="$pooler" -v g="$pgus" 'BEGIN { if (b == "-") b = 0; printf "%.1f", a - b - g }')
				echo "| $m | $c | $t | $(mean_tps "$k") | $pooler | $pgus | $rest | $total |"
			done
		done
	done
	echo
	echo "pgsidecar / PgBouncer TPS:"
	echo
	header="| protocol |" rule="|---|"
	for c in $clients_list; do header+=" $c |" rule+="---:|"; done
	echo "$header"
	echo "$rule"
	for m in $modes; do
		line="| $m |"
		for c in $clients_list; do line+=" $(ratio "$(mean_tps "$c|pgsidecar:$m")" "$(mean_tps "$c|pgbouncer:$m")") |"; done
		echo "$line"
	done
	if [ -n "$prepared_clients" ]; then
		line="| pgsidecar prepared / PgBouncer extended |"
		for c in $clients_list; do
			if in_list "$c" "$prepared_clients"; then
				line+=" $(ratio "$(mean_tps "$c|pgsidecar:prepared")" "$(mean_tps "$c|pgbouncer:extended")") |"
			else line+=" |"; fi
		done
		echo "$line"
	fi
	echo
	echo "Latency at 1 client (pgbench's average, µs):"
	echo
	echo "| protocol | direct | pgsidecar | added by pgsidecar | PgBouncer | added by PgBouncer |"
	echo "|---|---:|---:|---:|---:|---:|"
	for m in $modes; do
		d=$(mean_lat_us "1|direct:$m") s=$(mean_lat_us "1|pgsidecar:$m") b=$(mean_lat_us "1|pgbouncer:$m")
		echo "| $m | $d | $s | $(diff_us "$s" "$d") | $b | $(diff_us "$b" "$d") |"
	done
	if [ "${#added_round[@]}" -gt 0 ]; then
		echo
		echo "Added latency at 1 client, the latency series: $lat_rounds rounds of ${lat_secs}s, direct, pgsidecar and PgBouncer in turn; each pooler's latency minus direct's in the same round, µs:"
		echo
		echo "| protocol | direct, median | pgsidecar: median | range | PgBouncer: median | range |"
		echo "|---|---:|---:|---|---:|---|"
		for m in $modes; do
			echo "| $m | $(median "${lat_round[direct:$m]:-}" %.0f) | $(median "${added_round[pgsidecar:$m]:-}") | $(spread "${added_round[pgsidecar:$m]:-}") | $(median "${added_round[pgbouncer:$m]:-}") | $(spread "${added_round[pgbouncer:$m]:-}") |"
		done
	fi
	if [ "$idle_clients" -gt 0 ]; then
		echo
		echo "Idle memory: a fresh process, RSS with no client and with $idle_clients idle clients (each ran one SELECT 1):"
		echo
		echo "| pooler | RSS fresh (kB) | RSS with $idle_clients idle (kB) | per idle client (kB) |"
		echo "|---|---:|---:|---:|"
		for t in pgsidecar pgbouncer; do
			has_target "$t" || continue
			echo "| $t | ${idle_rss0[$t]:--} | ${idle_rssn[$t]:--} | ${idle_per[$t]:--} |"
		done
	fi

	# The targets of issue 8.
	echo
	echo "Targets (issue 8):"
	echo
	echo "| target | holds | measured |"
	echo "|---|---|---|"
	vs=() detail="" aims=() aim_detail=""
	for m in $modes; do
		for c in $clients_list; do
			r=$(ratio "$(mean_tps "$c|pgsidecar:$m")" "$(mean_tps "$c|pgbouncer:$m")")
			vs+=("$(ge "$r" 1.0)")
			detail+="${detail:+, }$m/$c $r"
			if [ "$c" = 64 ] || [ "$c" = 256 ]; then
				aims+=("$(ge "$r" 1.2)")
				aim_detail+="${aim_detail:+, }$m/$c $r"
			fi
		done
	done
	echo "| TPS pgsidecar/PgBouncer >= 1.0 in every cell | $(all_of "${vs[@]+"${vs[@]}"}") | $detail |"
	echo "| aim: >= 1.2 at 64 and 256 clients | $(all_of "${aims[@]+"${aims[@]}"}") | ${aim_detail:--} |"
	vs=() detail=""
	for m in $modes; do
		for c in 16 64; do
			in_list "$c" "$clients_list" || continue
			s=$(cpu_us "$c|pgsidecar:$m") b=$(cpu_us "$c|pgbouncer:$m")
			vs+=("$(le "$s" "$b")")
			detail+="${detail:+, }$m/$c $s vs $b µs ($(ratio "$s" "$b")x)"
		done
	done
	echo "| CPU per transaction <= PgBouncer's at 16 and 64 clients | $(all_of "${vs[@]+"${vs[@]}"}") | ${detail:--} |"
	vs=() detail=""
	for m in $modes; do
		a=$(added_us pgsidecar "$m")
		vs+=("$(le "$a" 50)")
		detail+="${detail:+, }$m ${a} µs (PgBouncer $(added_us pgbouncer "$m") µs)"
	done
	src=""; [ "${#added_round[@]}" -eq 0 ] || src=" (the latency series' medians)"
	echo "| added latency at 1 client <= 50 µs | $(all_of "${vs[@]+"${vs[@]}"}") | ${detail:--}$src |"
	vs=() detail=""
	for c in $prepared_clients; do
		r=$(ratio "$(mean_tps "$c|pgsidecar:prepared")" "$(mean_tps "$c|pgbouncer:extended")")
		vs+=("$(ge "$r" 1.3)")
		detail+="${detail:+, }$c clients ${r}x"
	done
	echo "| pgsidecar -M prepared >= 1.3x PgBouncer -M extended | $(all_of "${vs[@]+"${vs[@]}"}") | ${detail:--} |"
	if [ "$idle_clients" -gt 0 ]; then
		echo "| <= 4 KB per idle client at $idle_clients clients | $(le "${idle_per[pgsidecar]:--}" 4) | pgsidecar ${idle_per[pgsidecar]:--} kB, PgBouncer ${idle_per[pgbouncer]:--} kB |"
	fi
	if [ -n "$profile_md" ]; then
		echo
		printf '%s' "$profile_md"
	fi
	for n in "${notes[@]+"${notes[@]}"}"; do
		echo
		echo "Note: $n"
	done
} | tee "$out_file"
log "table saved to $out_file; logs$([ ! -f "$logs_dir/failures.log" ] || echo " and failed runs' output") in $logs_dir"
