#!/usr/bin/env bash
# Local-mode benchmark (part of `make bench`): wake from zero to first query through the
# proxy, proxy overhead under pgbench -S, and branch create → first query through the CLI.
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

echo "pgbench -S through the proxy and direct …" >&2
w_json=$("$RAMIFY" branch get w -o json)
export PGPASSWORD=$(json '["password"]' <<<"$w_json")
proxy_port=$(json '["port"]' <<<"$w_json")
tl=$(json '["timeline_id"]' <<<"$w_json")
direct_port=$(sed -n 4p "$RAMIFY_DATA_DIR/storage/timelines/$tl/pgdata/postmaster.pid")
tps() { PGSSLMODE=disable pgbench -n -S -c 8 -j 2 -T "${PGBENCH_SECONDS:-15}" -h 127.0.0.1 -p "$1" -U app app 2>/dev/null | awk '/^tps/ {print int($3)}'; }
direct=$(tps "$direct_port")
proxied=$(tps "$proxy_port")
direct2=$(tps "$direct_port")
proxied2=$(tps "$proxy_port")
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
echo "| pgbench -S, 8 clients, plaintext | direct to the compute | through the proxy | proxy / direct |"
echo "|---|---:|---:|---:|"
echo "| run 1 | $direct tps | $proxied tps | $(( 100 * proxied / direct ))% |"
echo "| run 2 | $direct2 tps | $proxied2 tps | $(( 100 * proxied2 / direct2 ))% |"
