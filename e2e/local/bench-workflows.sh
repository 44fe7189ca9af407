#!/usr/bin/env bash
# Workflow benchmark (part of `make bench`): reset, restore (latest and at an LSN with
# ~64 MB of WAL to replay), checkpoint create under pgbench load, revert to a checkpoint,
# and `ramify run -- true` (sequential and 8 at once), on a pgbench parent of SCALE
# (default 100, the issue's size). Every time is "command start → the same URI answers a
# query", measured in this run. Prints a Markdown table.
#
#   e2e/local/bench-workflows.sh [path/to/ramify]     (SCALE=10 for a quick run)
set -euo pipefail

RAMIFY=$(readlink -f "${1:-target/release/ramify}")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"
SCALE=${SCALE:-100}
RUNS=${RUNS:-5}
WAL_MB=${WAL_MB:-64}
WORK=$(mktemp -d /var/tmp/ramify-bw-XXXXXX)
chmod 755 "$WORK"
export RAMIFY_DATA_DIR="$WORK/data"
mkdir -p "$RAMIFY_DATA_DIR"
LOAD_PID=
cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  "$RAMIFY" local down >/dev/null 2>&1 || true
  if mountpoint -q "$RAMIFY_DATA_DIR"; then umount "$RAMIFY_DATA_DIR" || umount -l "$RAMIFY_DATA_DIR"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 24G); else XFS=(); fi
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; print a[i]}'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
q() { psql -X -A -t -q "$@"; }
# pgbench against a branch, through its proxy port.
bench_on() {
  local b=$1; shift
  local j; j=$("$RAMIFY" branch get "$b" -o json)
  PGPASSWORD=$(json '["password"]' <<<"$j") pgbench -h 127.0.0.1 -p "$(json '["port"]' <<<"$j")" -U app "$@" app
}
lsn() { q "$1" -c "SELECT pg_current_wal_lsn()"; }
wal_since() { q "$1" -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$2')"; }

echo "starting local mode and loading pgbench scale $SCALE …" >&2
"$RAMIFY" local up "${XFS[@]}" >/dev/null
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
t=$(date +%s%N)
bench_on main -i -q -s "$SCALE" --no-vacuum >/dev/null 2>&1
q "$MAIN" -c "VACUUM ANALYZE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
echo "loaded in $(( $(ms "$t") / 1000 )) s ($(q "$MAIN" -c "SELECT pg_size_pretty(pg_database_size('app'))"))" >&2

echo "reset × $RUNS …" >&2
"$RAMIFY" branch create dev --parent main --suspend-after 0 >/dev/null
DEV=$("$RAMIFY" branch connect dev)
: >"$WORK/reset"
for _ in $(seq 1 "$RUNS"); do
  bench_on dev -n -t 200 >/dev/null 2>&1 # drift a little
  t=$(date +%s%N)
  "$RAMIFY" branch reset dev >/dev/null
  q "$DEV" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >>"$WORK/reset"
done

echo "restore --from main (latest) × $RUNS …" >&2
: >"$WORK/restore_latest"
for _ in $(seq 1 "$RUNS"); do
  t=$(date +%s%N)
  "$RAMIFY" branch restore dev --from main >/dev/null
  q "$DEV" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >>"$WORK/restore_latest"
done

echo "restore --at an LSN with ~$WAL_MB MB of WAL to replay × $RUNS …" >&2
: >"$WORK/restore_at"
: >"$WORK/replayed"
for _ in $(seq 1 "$RUNS"); do
  start=$(lsn "$DEV")
  while [ "$(wal_since "$DEV" "$start")" -lt $((WAL_MB << 20)) ]; do
    bench_on dev -n -c 2 -j 2 -t 2000 >/dev/null 2>&1
  done
  target=$(lsn "$DEV")
  echo $(( $(wal_since "$DEV" "$start") >> 20 )) >>"$WORK/replayed"
  t=$(date +%s%N)
  "$RAMIFY" branch restore dev --at "$target" >/dev/null
  q "$DEV" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >>"$WORK/restore_at"
done

echo "checkpoint create under pgbench load × 20, then revert × $RUNS …" >&2
"$RAMIFY" branch create agent --parent main --suspend-after 0 >/dev/null
AGENT=$("$RAMIFY" branch connect agent)
bench_on agent -n -c 4 -j 2 -T 600 >/dev/null 2>&1 &
LOAD_PID=$!
sleep 3
: >"$WORK/checkpoint_cli"
: >"$WORK/checkpoint_server"
for i in $(seq 1 20); do
  t=$(date +%s%N)
  "$RAMIFY" checkpoint create agent "load-$i" -o json >"$WORK/cp.json"
  ms "$t" >>"$WORK/checkpoint_cli"
  json '["create_ms"]' <"$WORK/cp.json" >>"$WORK/checkpoint_server"
  sleep 0.5
done
kill "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=
: >"$WORK/revert"
for i in $(seq 1 "$RUNS"); do
  "$RAMIFY" checkpoint create agent "step-$i" >/dev/null
  bench_on agent -n -c 2 -j 2 -t 1000 >/dev/null 2>&1
  t=$(date +%s%N)
  "$RAMIFY" branch restore agent --at "checkpoint:step-$i" >/dev/null
  q "$AGENT" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t" >>"$WORK/revert"
done

echo "ramify run -- true × 10, then 8 at once …" >&2
: >"$WORK/run"
for _ in $(seq 1 10); do
  t=$(date +%s%N)
  "$RAMIFY" run --from main -- true
  ms "$t" >>"$WORK/run"
done
: >"$WORK/run8"
t8=$(date +%s%N)
for _ in $(seq 1 8); do
  ( t=$(date +%s%N); "$RAMIFY" run --from main -- true; ms "$t" >>"$WORK/run8" ) &
done
wait
wall8=$(ms "$t8")
left=$("$RAMIFY" branch list -o json | python3 -c 'import json,sys; print(sum(1 for b in json.load(sys.stdin) if b["name"].startswith("run-")))')
status=$("$RAMIFY" local status -o json)

echo "## Branch workflows (pgbench scale $SCALE parent, $(json '["storage"]["filesystem"]' <<<"$status"), clone method $(json '["storage"]["clone_method"]' <<<"$status"), $(nproc) cores)"
echo
echo "| measurement (until the same URI answers a query) | runs | p50 | min | max | goal |"
echo "|---|---:|---:|---:|---:|---:|"
row() { echo "| $1 | $(wc -l <"$2") | $(pct 50 <"$2") ms | $(pct 0 <"$2") ms | $(pct 100 <"$2") ms | $3 |"; }
row "branch reset (fork of the running parent at latest)" "$WORK/reset" "≤ 1500 ms"
row "branch restore --from main (latest), backup kept" "$WORK/restore_latest" "≤ 3000 ms"
row "branch restore --at LSN, $(pct 50 <"$WORK/replayed") MB of WAL to replay (p50), backup kept" "$WORK/restore_at" "≤ 3000 ms"
row "checkpoint create under pgbench -c 4 load (CLI wall time)" "$WORK/checkpoint_cli" "≤ 100 ms"
row "checkpoint create under pgbench -c 4 load (daemon side)" "$WORK/checkpoint_server" "≤ 100 ms"
row "revert: branch restore --at checkpoint:NAME" "$WORK/revert" "≤ 3000 ms"
row "ramify run -- true (create + run + delete)" "$WORK/run" "≤ 2000 ms"
row "ramify run -- true, 8 at once (each)" "$WORK/run8" "-"
echo
echo "8 concurrent \`ramify run -- true\` on $(nproc) cores: all done in $wall8 ms; run branches left: $left"
