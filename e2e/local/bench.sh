#!/usr/bin/env bash
# Local-mode benchmark (part of `make bench`): wake from zero to first query through the
# proxy, the proxy next to PgBouncer (session mode, same machine, same run) under
# pgbench -S and -N, and branch create → first query through the CLI.
# Prints Markdown tables; every number is measured in this run.
#
#   e2e/local/bench.sh [path/to/ramify]
set -euo pipefail

RAMIFY=$(readlink -f "${1:-target/release/ramify}")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"
WAKES=${WAKES:-50}
CREATES=${CREATES:-10}
WORK=$(mktemp -d /var/tmp/ramify-bench-XXXXXX)
chmod 755 "$WORK"
export RAMIFY_DATA_DIR="$WORK/data"
mkdir -p "$RAMIFY_DATA_DIR"
cleanup() {
  [ -n "${PGB_PID:-}" ] && kill "$PGB_PID" 2>/dev/null
  "$RAMIFY" local down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 8G); else XFS=(); fi
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# percentile P of the numbers on stdin (nearest rank)
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; print a[i]}'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

echo "starting local mode and loading pgbench scale 10 …" >&2
"$RAMIFY" local up "${XFS[@]}" >/dev/null
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
main_json=$("$RAMIFY" branch get main -o json)
PGPASSWORD=$(json '["password"]' <<<"$main_json") pgbench -i -q -s 10 -h 127.0.0.1 -p "$(json '["port"]' <<<"$main_json")" -U app app >/dev/null 2>&1
psql -X -q "$MAIN" -c "SELECT 1" >/dev/null

echo "measuring $WAKES wakes …" >&2
"$RAMIFY" branch create w --parent main --suspend-after 0 >/dev/null
W=$("$RAMIFY" branch connect w)
# `branch connect` prints a verify-full URI: these connects run the TLS handshake. The
# same URI without its query string, with sslmode=disable, is the plaintext baseline.
W_PLAIN="${W%%\?*}?sslmode=disable"
# Wakes over TLS and in plaintext alternate, so both see the same machine.
: > "$WORK/wakes"
: > "$WORK/wakes_plain"
for _ in $(seq 1 "$WAKES"); do
  "$RAMIFY" branch suspend w >/dev/null
  t=$(date +%s%N)
  psql -X -A -t -q "$W" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >> "$WORK/wakes"
  "$RAMIFY" branch suspend w >/dev/null
  t=$(date +%s%N)
  psql -X -A -t -q "$W_PLAIN" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >> "$WORK/wakes_plain"
done
: > "$WORK/connects"
: > "$WORK/connects_plain"
for _ in $(seq 1 "$WAKES"); do
  t=$(date +%s%N)
  psql -X -A -t -q "$W" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >> "$WORK/connects"
  t=$(date +%s%N)
  psql -X -A -t -q "$W_PLAIN" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >> "$WORK/connects_plain"
done

echo "pgbench -S and -N: direct, through the proxy, through PgBouncer …" >&2
w_json=$("$RAMIFY" branch get w -o json)
export PGPASSWORD=$(json '["password"]' <<<"$w_json")
proxy_port=$(json '["port"]' <<<"$w_json")
tl=$(json '["timeline_id"]' <<<"$w_json")
direct_port=$(sed -n 4p "$RAMIFY_DATA_DIR/storage/timelines/$tl/pgdata/postmaster.pid")
# PgBouncer in session mode in front of the same compute, over TCP like the proxy, with
# SCRAM from the client as the compute asks. It runs in the foreground of this script's
# session, like the daemon and its computes: under the kernel's autogroup scheduling a
# daemonised PgBouncer would be a scheduling group of its own and get a CPU share the
# proxy, grouped with the Postgres it fronts, does not.
PGB="$WORK/pgbouncer"
mkdir -p "$PGB"
printf '"app" "%s"\n' "$PGPASSWORD" > "$PGB/users.txt"
PGB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$PGB/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$direct_port dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGB/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
stats_period = 3600
logfile = $PGB/pgbouncer.log
INI
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres "$PGB"
  runuser -u postgres -- pgbouncer "$PGB/pgbouncer.ini" >>"$PGB/out.log" 2>&1 & PGB_PID=$!
else
  pgbouncer "$PGB/pgbouncer.ini" >>"$PGB/out.log" 2>&1 & PGB_PID=$!
fi
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$PGB_PORT" && break; sleep 0.1; done
# The proxy's work is its connection thread in the daemon; PgBouncer is one process.
daemon_pid=$(json '["pid"]' < "$RAMIFY_DATA_DIR/local/daemon.json")
pgb_pid=$(pgrep -P "$PGB_PID" pgbouncer || echo "$PGB_PID")
proxy_ticks() { cat /proc/"$daemon_pid"/task/*/stat | awk '$2 == "(ramify-proxy-io)" {s += $14 + $15} END {print s + 0}'; }
pgb_ticks() { awk '{print $14 + $15}' /proc/"$pgb_pid"/stat; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
# One pgbench run against a port: prints "tps cpu-µs-per-transaction" (the CPU of the
# process named by the ticks function, or "-").
bench_run() { # port -S|-N [ticks-function]
  local t0=0 t1=0 out
  [ -n "${3:-}" ] && t0=$($3)
  out=$(PGSSLMODE=disable pgbench -n "$2" -c 8 -j 2 -T "${PGBENCH_SECONDS:-10}" -h 127.0.0.1 -p "$1" -U app app 2>/dev/null)
  [ -n "${3:-}" ] && t1=$($3)
  awk -v dt=$(( (t1 - t0) * TICK_US )) -v f="${3:-}" '/actually processed/ {split($NF, a, "/"); n = a[1]} /^tps/ {tps = int($3)} END {printf "%d %s\n", tps, f == "" ? "-" : sprintf("%.1f", dt / n)}' <<<"$out"
}
: > "$WORK/poolers"
for mode in -S -N; do
  for run in $(seq 1 "${POOLER_RUNS:-3}"); do
    read -r d _ < <(bench_run "$direct_port" "$mode")
    read -r p pc < <(bench_run "$proxy_port" "$mode" proxy_ticks)
    read -r b bc < <(bench_run "$PGB_PORT" "$mode" pgb_ticks)
    echo "$mode $run $d $p $pc $b $bc" >> "$WORK/poolers"
  done
done
kill "$PGB_PID" 2>/dev/null; wait "$PGB_PID" 2>/dev/null || true; PGB_PID=
unset PGPASSWORD

echo "measuring $CREATES branch creates …" >&2
: > "$WORK/creates"
for i in $(seq 1 "$CREATES"); do
  t=$(date +%s%N)
  "$RAMIFY" branch create "b$i" --parent main >/dev/null
  psql -X -A -t -q "$("$RAMIFY" branch connect "b$i")" -c "SELECT 1" >/dev/null
  ms "$t" >> "$WORK/creates"
  "$RAMIFY" branch delete "b$i" >/dev/null
done
status=$("$RAMIFY" local status -o json)

echo "## Local mode ($(json '["storage"]["filesystem"]' <<<"$status"), clone method $(json '["storage"]["clone_method"]' <<<"$status"), $(nproc) cores)"
echo
echo "| measurement | runs | p50 | p99 | min | max |"
echo "|---|---:|---:|---:|---:|---:|"
row() { echo "| $1 | $(wc -l < "$2") | $(pct 50 < "$2") ms | $(pct 99 < "$2") ms | $(pct 0 < "$2") ms | $(pct 100 < "$2") ms |"; }
row "wake from zero → first query result (psql through the proxy, TLS verify-full)" "$WORK/wakes"
row "wake from zero → first query result (psql through the proxy, plaintext)" "$WORK/wakes_plain"
row "connect → first query, compute already running (psql through the proxy, TLS verify-full)" "$WORK/connects"
row "connect → first query, compute already running (psql through the proxy, plaintext)" "$WORK/connects_plain"
echo "| TLS handshake, extra connect time (p50 TLS − p50 plaintext), compute running | $(wc -l < "$WORK/connects") | $(( $(pct 50 < "$WORK/connects") - $(pct 50 < "$WORK/connects_plain") )) ms | | | |"
echo "| TLS handshake, extra wake time (p50 TLS − p50 plaintext) | $(wc -l < "$WORK/wakes") | $(( $(pct 50 < "$WORK/wakes") - $(pct 50 < "$WORK/wakes_plain") )) ms | | | |"
row "branch create (fork at latest, parent running) → first query, via the CLI" "$WORK/creates"
echo
echo "| pgbench, 8 clients, plaintext, same compute | direct | through the proxy | through PgBouncer (session) | proxy / direct | PgBouncer / direct | proxy CPU per txn | PgBouncer CPU per txn | goal |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
percent() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", 100 * a / b}'; }
while read -r mode run d p pc b bc; do
  case $mode in
    -S) goal="proxy / direct ≥ PgBouncer / direct" ;;
    -N) goal="proxy / direct ≥ 90 %" ;;
  esac
  echo "| $mode run $run | $d tps | $p tps | $b tps | $(percent "$p" "$d") % | $(percent "$b" "$d") % | $pc µs | $bc µs | $goal |"
done < "$WORK/poolers"
for mode in -S -N; do
  # Medians over the runs, by ratio (each run's three measurements are back to back).
  awk -v m="$mode" '$1 == m {print 100 * $4 / $3, 100 * $6 / $3, $5, $7}' "$WORK/poolers" | sort -n > "$WORK/ratios"
  pr=$(cut -d' ' -f1 "$WORK/ratios" | sort -n | pct 50); br=$(cut -d' ' -f2 "$WORK/ratios" | sort -n | pct 50)
  pc=$(cut -d' ' -f3 "$WORK/ratios" | sort -n | pct 50); bc=$(cut -d' ' -f4 "$WORK/ratios" | sort -n | pct 50)
  echo "| $mode median of $(wc -l < "$WORK/ratios") runs | | | | $(printf %.0f "$pr") % | $(printf %.0f "$br") % | $pc µs | $bc µs | |"
done
