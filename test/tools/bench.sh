#!/usr/bin/env bash
# bench.sh: pgbench directly against PostgreSQL, through pgsidecar and
# (when it can be installed) through PgBouncer, interleaved, as a markdown
# table of TPS and ratios to direct.
#
# What it sets up, so the numbers can be read correctly:
#   - its own throwaway PostgreSQL: max_connections=400, and fsync=off,
#     synchronous_commit=off, full_page_writes=off: durability is off so the
#     disk does not dominate and the proxies' overhead is visible;
#   - pgbench -i -s $BENCH_SCALE (default 10);
#   - pgsidecar (bin/pgsidecar, built here) in transaction mode with
#     pool.max_size $BENCH_POOL_SIZE (default 20), SCRAM client auth;
#   - PgBouncer 'pool_mode = transaction', default_pool_size and
#     max_db_connections $BENCH_POOL_SIZE, SCRAM auth via a userlist file.
# Every cell runs direct, proxy, pgbouncer, then again in that order
# (BENCH_ROUNDS, default 2) so drift over time (caches, autovacuum,
# checkpoints) hits every target alike; the table shows the mean.
#
# Environment (defaults): BENCH_SECONDS (10) per run, BENCH_CLIENTS
# ("1 16 64 256"), BENCH_WORKLOADS ("select tpcb"), BENCH_MODES ("simple
# extended prepared"), BENCH_TARGETS ("direct proxy pgbouncer"),
# BENCH_ROUNDS (2), BENCH_JOBS (2, capped at the client count), BENCH_SCALE
# (10), BENCH_POOL_SIZE (20), BENCH_MAX_MINUTES (60: cells past it are
# skipped and marked), BENCH_OUT (bin/bench-results.md; server logs go to bin/bench-results-logs/), BENCH_PROXY_BIN (skip
# the build and use this binary), PG_BIN.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=test/tools/pglib.sh
. "$here/pglib.sh"

secs=${BENCH_SECONDS:-10}
clients_list=${BENCH_CLIENTS:-"1 16 64 256"}
workloads=${BENCH_WORKLOADS:-"select tpcb"}
modes=${BENCH_MODES:-"simple extended prepared"}
targets=${BENCH_TARGETS:-"direct proxy pgbouncer"}
rounds=${BENCH_ROUNDS:-2}
jobs=${BENCH_JOBS:-2}
scale=${BENCH_SCALE:-10}
pool_size=${BENCH_POOL_SIZE:-20}
max_minutes=${BENCH_MAX_MINUTES:-60}
out_file=${BENCH_OUT:-$root/bin/bench-results.md}
[[ $out_file == /* ]] || out_file=$PWD/$out_file
logs_dir=${out_file%.md}-logs
user=bench
pass=bench
db=bench
notes=()

has_target() { [[ " $targets " == *" $1 "* ]]; }
drop_target() { targets=$(echo " $targets " | sed "s/ $1 / /; s/^ *//; s/ *$//"); }

ensure_pg_bindir
pgbench_bin="$PG_BIN/pgbench"
[ -x "$pgbench_bin" ] || pgbench_bin=$(command -v pgbench) || die "pgbench not found (Debian: postgresql-contrib or postgresql-client)"

# --- the proxy binary -------------------------------------------------------
if has_target proxy; then
	if [ -z "${BENCH_PROXY_BIN:-}" ]; then
		log "building bin/pgsidecar"
		(cd "$root" && PATH="$PATH:/usr/local/go/bin" go build -o bin/pgsidecar .) || die "go build failed"
		BENCH_PROXY_BIN=$root/bin/pgsidecar
	fi
	[ -x "$BENCH_PROXY_BIN" ] || die "$BENCH_PROXY_BIN is not an executable"
fi

# --- pgbouncer (optional) ---------------------------------------------------
pgbouncer_bin=""
if has_target pgbouncer; then
	pgbouncer_bin=$(command -v pgbouncer || true)
	[ -n "$pgbouncer_bin" ] || [ ! -x /usr/sbin/pgbouncer ] || pgbouncer_bin=/usr/sbin/pgbouncer
	if [ -z "$pgbouncer_bin" ]; then
		log "pgbouncer not installed; trying apt-get install pgbouncer"
		if apt_install pgbouncer >/dev/null 2>&1; then
			pgbouncer_bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
		fi
	fi
	if [ -z "$pgbouncer_bin" ] || [ ! -x "$pgbouncer_bin" ]; then
		notes+=("PgBouncer could not be installed: its column is left out.")
		drop_target pgbouncer
		pgbouncer_bin=""
	fi
fi

# --- the cluster ------------------------------------------------------------
dir=$(mktemp -d "${TMPDIR:-/tmp}/pgbench-cmp.XXXXXX")
proxy_pid=""
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$proxy_pid" ]; then
		kill -TERM "$proxy_pid" 2>/dev/null || true
		wait "$proxy_pid" 2>/dev/null || true
	fi
	if [ -f "$dir/pgbouncer/pgbouncer.pid" ]; then
		kill -TERM "$(cat "$dir/pgbouncer/pgbouncer.pid")" 2>/dev/null || true
		sleep 0.5
	fi
	pg_stop "$dir"
	# Keep the servers' logs next to the table: a surprising number needs them.
	mkdir -p "$logs_dir"
	cp "$dir"/*.log "$dir"/pgbouncer/*.log "$logs_dir"/ 2>/dev/null || true
	rm -rf "$dir"
}
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

declare -A port
port[direct]=$PG_PORT

if has_target proxy; then
	proxy_port=$(free_port)
	health_port=$(free_port)
	log "starting pgsidecar on 127.0.0.1:$proxy_port (transaction mode, pool.max_size $pool_size)"
	# From the temp dir, so no ./config.yaml is picked up, and with every
	# other PGSIDECAR_* variable removed: the settings are exactly these.
	(
		cd "$dir"
		# shellcheck disable=SC2046
		unset $(compgen -e | grep '^PGSIDECAR_' || true)
		export DATABASE_URL="postgres://$user:$pass@127.0.0.1:$PG_PORT/$db" \
			PGSIDECAR_LISTEN=127.0.0.1:$proxy_port \
			PGSIDECAR_HEALTH__LISTEN=127.0.0.1:$health_port \
			PGSIDECAR_POOL__MODE=transaction \
			PGSIDECAR_POOL__MAX_SIZE=$pool_size \
			PGSIDECAR_AUTH__METHOD=scram-sha-256 \
			PGSIDECAR_SHUTDOWN_TIMEOUT=5s \
			PGSIDECAR_LOG__LEVEL=warn
		exec "$BENCH_PROXY_BIN" >"$dir/proxy.log" 2>&1
	) &
	proxy_pid=$!
	for _ in $(seq 1 150); do
		[ "$(http_status "127.0.0.1:$health_port" /health)" = 200 ] && break
		kill -0 "$proxy_pid" 2>/dev/null || { proxy_pid=""; break; }
		sleep 0.2
	done
	if [ "$(http_status "127.0.0.1:$health_port" /health)" != 200 ]; then
		tail -n 30 "$dir/proxy.log" >&2
		die "pgsidecar did not report healthy on 127.0.0.1:$health_port/health within 30s"
	fi
	port[proxy]=$proxy_port
fi

if has_target pgbouncer; then
	bdir=$dir/pgbouncer
	mkdir -p "$bdir"
	bport=$(free_port)
	version=$("$pgbouncer_bin" --version | awk 'NR == 1 { print $2 }')
	prepared_line="; max_prepared_statements needs PgBouncer 1.21+, this is $version"
	if [ "$(printf '%s\n' 1.21 "$version" | sort -V | head -n 1)" = 1.21 ]; then
		prepared_line="max_prepared_statements = 200"
	else
		notes+=("PgBouncer $version predates max_prepared_statements (1.21): -M prepared through it is expected to fail in transaction mode.")
	fi
	printf '"%s" "%s"\n' "$user" "$pass" >"$bdir/userlist.txt"
	cat >"$bdir/pgbouncer.ini" <<EOF
[databases]
$db = host=127.0.0.1 port=$PG_PORT dbname=$db

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir = $bdir
auth_type = scram-sha-256
auth_file = $bdir/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
max_db_connections = $pool_size
max_client_conn = 2000
$prepared_line
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
EOF
	[ "$(id -u)" -ne 0 ] || chown -R postgres: "$bdir"
	# PgBouncer refuses to run as root; as_pg runs it as postgres then.
	as_pg "$pgbouncer_bin" -d -q "$bdir/pgbouncer.ini" || die "pgbouncer did not start"
	for _ in $(seq 1 50); do port_in_use "$bport" && break; sleep 0.1; done
	port_in_use "$bport" || die "pgbouncer is not listening on $bport"
	log "PgBouncer $version on 127.0.0.1:$bport (transaction mode, pool $pool_size)"
	port[pgbouncer]=$bport
fi

# --- the runs ---------------------------------------------------------------
declare -A tps_sum fail_sum runs aborted no_tps tried
cells=0
for _ in $workloads; do for _ in $modes; do for _ in $clients_list; do cells=$((cells + 1)); done; done; done
ntargets=$(wc -w <<<"$targets")
log "$cells cells x $rounds rounds x $ntargets targets x ${secs}s: about $((cells * rounds * ntargets * (secs + 2) / 60 + 1)) minutes (capped at $max_minutes)"
deadline=$((SECONDS + max_minutes * 60))
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# run_one TARGET WORKLOAD MODE CLIENTS: one pgbench run, added to the sums.
run_one() {
	local target=$1 workload=$2 mode=$3 c=$4 key="$2|$3|$4|$1" out rc tps failed
	local -a args=(-n -M "$mode" -c "$c" -j "$((c < jobs ? c : jobs))" -T "$secs")
	[ "$workload" = select ] && args+=(-S)
	out=$(timeout $((secs + 60)) "$pgbench_bin" "${args[@]}" -h 127.0.0.1 -p "${port[$target]}" -U "$user" "$db" 2>&1) && rc=0 || rc=$?
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n 1)
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
	[ "$rc" -eq 0 ] || aborted[$key]=$((${aborted[$key]:-0} + 1))
	if [ "$rc" -ne 0 ] || [ -z "$tps" ]; then
		printf '%s\n' "--- $key (exit $rc)" "$out" >>"$dir/failures.log"
	fi
	# A run that printed no TPS (it aborted, or every connection took the
	# whole duration) is not averaged in as zero; it is counted apart.
	if [ -n "$tps" ]; then
		tps_sum[$key]=$(awk -v a="${tps_sum[$key]:-0}" -v b="$tps" 'BEGIN { print a + b }')
		runs[$key]=$((${runs[$key]:-0} + 1))
	else
		no_tps[$key]=$((${no_tps[$key]:-0} + 1))
	fi
	fail_sum[$key]=$((${fail_sum[$key]:-0} + ${failed:-0}))
	tried[$key]=1
	log "$(printf '%-7s %-8s %-8s c=%-4s tps=%-10s failed=%s%s' "$target" "$workload" "$mode" "$c" "${tps:-n/a}" "${failed:-n/a}" "$([ "$rc" -eq 0 ] || echo " (pgbench exit $rc)")")"
}

mkdir -p "$(dirname "$out_file")"
rm -rf "$logs_dir"
skipped=0
for workload in $workloads; do
	for mode in $modes; do
		for c in $clients_list; do
			for _ in $(seq 1 "$rounds"); do
				for target in $targets; do
					if [ "$SECONDS" -ge "$deadline" ]; then
						skipped=1
						continue
					fi
					run_one "$target" "$workload" "$mode" "$c"
				done
			done
		done
	done
done
[ "$skipped" -eq 0 ] || notes+=("BENCH_MAX_MINUTES=$max_minutes was reached: cells without numbers were skipped.")

# --- the table --------------------------------------------------------------
mean() { # mean KEY: mean TPS over the runs of KEY that reported one, else "-"
	local k=$1
	if [ -z "${runs[$k]:-}" ]; then echo "-"; else awk -v s="${tps_sum[$k]}" -v n="${runs[$k]}" 'BEGIN { printf "%.0f", s / n }'; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
failures() { # failures KEY: failed transactions over the runs, plus runs that aborted or printed no TPS
	local k=$1 s
	if [ -z "${tried[$k]:-}" ]; then
		echo "-"
		return
	fi
	s=${fail_sum[$k]}
	[ -z "${aborted[$k]:-}" ] || s+=" (${aborted[$k]} run(s) aborted)"
	[ -z "${no_tps[$k]:-}" ] || s+=" (${no_tps[$k]} without TPS)"
	echo "$s"
}
{
	echo "pgbench, ${secs}s per run, $rounds interleaved rounds (mean TPS), scale $scale, -j up to $jobs;"
	echo "PostgreSQL with fsync=off, synchronous_commit=off, full_page_writes=off; pools of $pool_size in transaction mode."
	echo "ratio = TPS / direct TPS. failed = pgbench's failed transactions over all runs; a run whose pgbench exited"
	echo "with an error (a client aborted, e.g. \"prepared statement does not exist\") is counted as aborted; one"
	echo "\"without TPS\" processed no transaction (e.g. its connections took all of -T) and is left out of the mean."
	echo "Machine: $(nproc) cores, load average $load_at_start at the start: other work on it skews every column."
	echo
	header="| workload | mode | clients | direct TPS"
	rule="|---|---|---:|---:"
	for t in $targets; do
		[ "$t" = direct ] && continue
		header+=" | $t TPS | $t ratio"
		rule+="|---:|---:"
	done
	header+=" | failed ($(echo "$targets" | tr ' ' '/')) |"
	rule+="|---|"
	echo "$header"
	echo "$rule"
	for workload in $workloads; do
		for mode in $modes; do
			for c in $clients_list; do
				d=$(mean "$workload|$mode|$c|direct")
				line="| $workload | $mode | $c | $d"
				f=""
				for t in $targets; do
					f+="${f:+ / }$(failures "$workload|$mode|$c|$t")"
					[ "$t" = direct ] && continue
					v=$(mean "$workload|$mode|$c|$t")
					line+=" | $v | $(ratio "$v" "$d")"
				done
				echo "$line | $f |"
			done
		done
	done
	for n in "${notes[@]+"${notes[@]}"}"; do
		echo
		echo "Note: $n"
	done
} | tee "$out_file"
log "table saved to $out_file"
log "server logs$([ ! -f "$dir/failures.log" ] || echo " and the output of failed pgbench runs") will be in $logs_dir"
