#!/usr/bin/env bash
# Following-root benchmark (part of `make bench`): a pgbench "production" of SCALE
# (default 100) started here on a loopback port; side by side, its initial copy by
# `ramify branch create --follow` against plain `pg_basebackup` to the same local disk,
# replication lag under pgbench (the source's own pg_stat_replication), and a fork of the
# follower against a fork of an ordinary root of the same data; each for a physical and a
# logical (`--mode logical`) follower. Prints a Markdown table.
#
#   e2e/local/bench-follow.sh [path/to/ramify]     (SCALE=10 for a quick run)
set -euo pipefail

RAMIFY=$(readlink -f "${1:-target/release/ramify}")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"
SCALE=${SCALE:-100}
RUNS=${RUNS:-5}
LOAD_SECS=${LOAD_SECS:-30}
WORK=$(mktemp -d /var/tmp/ramify-bf-XXXXXX)
chmod 755 "$WORK"
export RAMIFY_DATA_DIR="$WORK/data"
mkdir -p "$RAMIFY_DATA_DIR"
if [ "$(id -u)" -eq 0 ]; then AS=(runuser -u postgres --); else AS=(); fi
PROD_DIR="$WORK/prod"
mkdir -p "$PROD_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$PROD_DIR"
cleanup() {
  "$RAMIFY" local down >/dev/null 2>&1 || true
  "${AS[@]}" pg_ctl -D "$PROD_DIR/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
  if mountpoint -q "$RAMIFY_DATA_DIR"; then umount "$RAMIFY_DATA_DIR" || umount -l "$RAMIFY_DATA_DIR"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; print a[i]}'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
q() { psql -X -A -t -q "$@"; }

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 24G); else XFS=(); fi
"$RAMIFY" local up "${XFS[@]}" >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${AS[@]}" initdb -D "$PROD_DIR/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
"${AS[@]}" pg_ctl -D "$PROD_DIR/pgdata" -l "$PROD_DIR/log" -w \
  -o "-p $PORT -k $PROD_DIR -c listen_addresses=127.0.0.1 -c max_wal_size=4GB -c wal_level=logical" start >/dev/null
PROD="host=$PROD_DIR port=$PORT user=postgres dbname=postgres"
q "$PROD" -c "CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'bench-Secret-1234'"
echo "# loading pgbench scale $SCALE into the source" >&2
pgbench -i -q -s "$SCALE" "$PROD" >/dev/null 2>&1
size=$(q "$PROD" -c "SELECT pg_size_pretty(pg_database_size('postgres'))")

# Plain pg_basebackup to the same disk: the baseline the initial copy is measured against.
plain=()
for i in $(seq 1 "${COPY_RUNS:-2}"); do
  d="$RAMIFY_DATA_DIR/plain-$i"
  t=$(date +%s%N)
  PGPASSWORD=bench-Secret-1234 pg_basebackup -d "postgresql://replicator@127.0.0.1:$PORT/postgres" \
    -D "$d" --wal-method=stream --checkpoint=fast --no-sync
  sync -f "$RAMIFY_DATA_DIR"
  plain+=("$(ms "$t")")
  rm -rf "$d"
done
t=$(date +%s%N)
"$RAMIFY" branch create prod --follow "postgresql://replicator:bench-Secret-1234@127.0.0.1:$PORT/postgres" \
  --slot ramify_bench >/dev/null 2>"$WORK/progress" || { cat "$WORK/progress" >&2; exit 1; }
follow_ms=$(ms "$t")
progress_lines=$(grep -c "copying the source" "$WORK/progress" || true)
plain_ms=$(printf '%s\n' "${plain[@]}" | pct 50)
q "$PROD" -c "CREATE PUBLICATION bench FOR ALL TABLES" -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO replicator"
t=$(date +%s%N)
"$RAMIFY" branch create prod-l --follow "postgresql://replicator:bench-Secret-1234@127.0.0.1:$PORT/postgres" \
  --mode logical --publication bench >/dev/null 2>"$WORK/progress-l" || { cat "$WORK/progress-l" >&2; exit 1; }
logical_ms=$(ms "$t")
lslot=$("$RAMIFY" branch get prod-l -o json | json '["following"]["slot"]')

# Lag under load: the source's own view of each follower (replay_lag of the walsender
# holding its slot), sampled 4 times a second, both followers under the same load.
pgbench -n -c 4 -j 2 -T "$LOAD_SECS" -N "$PROD" >"$WORK/load.txt" 2>&1 &
load=$!
for f in lag lagbytes lag-l lagbytes-l; do : >"$WORK/$f"; done
while kill -0 "$load" 2>/dev/null; do
  q "$PROD" -c "SELECT s.slot_name = '$lslot', coalesce(extract(epoch FROM r.replay_lag) * 1000, 0)::int,
                       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint
                FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
                WHERE s.slot_name IN ('ramify_bench', '$lslot')" |
    awk -F'|' -v W="$WORK" 'NF == 3 { sfx = ($1 == "t") ? "-l" : ""; print $2 >> (W "/lag" sfx); print $3 >> (W "/lagbytes" sfx) }'
  sleep 0.25
done
tps=$(grep -Eo 'tps = [0-9.]+' "$WORK/load.txt" | head -1 | awk '{print $3}')
lag50=$(pct 50 <"$WORK/lag"); lag99=$(pct 99 <"$WORK/lag")
lagb50=$(pct 50 <"$WORK/lagbytes"); lagb99=$(pct 99 <"$WORK/lagbytes")
llag50=$(pct 50 <"$WORK/lag-l"); llag99=$(pct 99 <"$WORK/lag-l")
llagb50=$(pct 50 <"$WORK/lagbytes-l"); llagb99=$(pct 99 <"$WORK/lagbytes-l")

# A fork of the follower vs a fork of an ordinary root holding the same data after the
# same load: request to first query on the fork.
"$RAMIFY" branch create plain --suspend-after 0 >/dev/null
j=$("$RAMIFY" branch get plain -o json)
PGPASSWORD=$(json '["password"]' <<<"$j") pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$(json '["port"]' <<<"$j")" -U app app >/dev/null 2>&1
# The same history as the follower's: a snapshot of the loaded data (the follower's is
# its base snapshot), then the same write load. Updates of pages a snapshot shares make
# a copy-on-write file fragmented, and a fork's clone pays per extent: without the
# snapshot the root's pages would be overwritten in place and its forks clone a few
# large extents, which no branch that has ever been snapshotted or forked does.
"$RAMIFY" snapshot create plain loaded >/dev/null
PGPASSWORD=$(json '["password"]' <<<"$j") pgbench -n -c 4 -j 2 -T "$LOAD_SECS" -N -h 127.0.0.1 -p "$(json '["port"]' <<<"$j")" -U app app >/dev/null 2>&1
fork_time() {
  local parent=$1 name=$2 t uri
  t=$(date +%s%N)
  uri=$("$RAMIFY" branch create "$name" --parent "$parent" -o json | json '["uri"]')
  q "$uri" -c "SELECT count(*) FROM pgbench_branches" >/dev/null
  ms "$t"
  "$RAMIFY" branch delete "$name" >/dev/null
}
# A physical follower's fork at latest is served by its warm standby once that has caught
# up; after each fork the node builds the next from the follower's newest snapshot. The
# wait for it is measured too (the pace at which forks can come at full speed).
warm_ready() {
  local t deadline state
  t=$(date +%s%N); deadline=$(( $(date +%s) + 300 ))
  # RAMIFY_WARM_STANDBYS=false: the daemon keeps none, so forks replay (the comparison).
  if [ "${RAMIFY_WARM_STANDBYS:-}" = false ]; then echo 0; return; fi
  while state=$("$RAMIFY" branch get prod -o json | json '["following"].get("warm_standby")'); [ "$state" != ready ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "the warm standby is not ready after 300 s ($state)" >&2; exit 1; }
    sleep 0.2
  done
  ms "$t"
}
ff=(); fl=(); fo=(); wr=()
for i in $(seq 1 "$RUNS"); do
  wr+=("$(warm_ready)")
  ff+=("$(fork_time prod "ff-$i")")
  fl+=("$(fork_time prod-l "fl-$i")")
  fo+=("$(fork_time plain "fo-$i")")
done
ff50=$(printf '%s\n' "${ff[@]}" | pct 50)
fl50=$(printf '%s\n' "${fl[@]}" | pct 50)
fo50=$(printf '%s\n' "${fo[@]}" | pct 50)
# The first wait is the build after the load; the others the rebuild after a fork.
wr50=$(printf '%s\n' "${wr[@]:1}" | pct 50)
# (grep -c exits 1 on a log without the line: RAMIFY_WARM_STANDBYS=false.)
served=$({ grep -h -c "fork served by the follower's warm standby" "$RAMIFY_DATA_DIR"/local/*.log 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}')
# Why a fork the warm standby did not serve fell back to replaying.
grep -h "could not serve this fork" "$RAMIFY_DATA_DIR"/local/*.log >&2 || true
# Where the warm standby's forks spent their time: feed, promotion, shutdown checkpoint.
grep -h "promoted and stopped the warm standby" "$RAMIFY_DATA_DIR"/local/*.log 2>/dev/null | grep -o 'feed_ms=[0-9]*.*stop_ms=[0-9]*' >&2 || true

# Where a fork of the follower spends its time (the storage node's own breakdown).
grep -h "forked timeline" "$RAMIFY_DATA_DIR"/local/*.log 2>/dev/null | grep -o 'elapsed_ms=[0-9]*.*commit_ms=[0-9]*' | tail -"$((2 * RUNS))" >&2 || true
ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}x')"; }
echo
echo "Following a pgbench scale-$SCALE source ($size), this machine, release build, $(date -u +%Y-%m-%d)"
echo
echo "| measure | Ramify | baseline | ratio | goal |"
echo "|---|---:|---:|---:|---|"
echo "| initial copy (\`branch create --follow\`, to streaming) vs plain \`pg_basebackup\` to the same disk | ${follow_ms} ms | ${plain_ms} ms | $(ratio "$follow_ms" "$plain_ms") | ≤ 1.3x |"
echo "| replication lag under \`pgbench -N -c 4\` (${tps:-?} tps), p50 / p99 (source's replay_lag) | ${lag50} / ${lag99} ms | — | — | p50 ≤ 1000 ms |"
echo "| replication lag in bytes, p50 / p99 | ${lagb50} / ${lagb99} B | — | — | — |"
echo "| fork → first query, of the follower (its warm standby ready) vs of an ordinary root with the same snapshot and load (p50 of $RUNS) | ${ff50} ms | ${fo50} ms | $(ratio "$ff50" "$fo50") | same as an ordinary root |"
echo "| physical: warm standby ready again after a fork (p50 of $((RUNS - 1))); forks it served | ${wr50} ms | — | — | $served of $RUNS |"
echo "| logical: initial copy (\`--mode logical\`: schema, subscription, every table copied) vs plain \`pg_basebackup\` | ${logical_ms} ms | ${plain_ms} ms | $(ratio "$logical_ms" "$plain_ms") | — |"
echo "| logical: lag under the same load, p50 / p99 (source's replay_lag) | ${llag50} / ${llag99} ms | — | — | p50 ≤ 1000 ms |"
echo "| logical: lag in bytes, p50 / p99 | ${llagb50} / ${llagb99} B | — | — | — |"
echo "| logical: fork → first query, of the follower vs of the same ordinary root (p50 of $RUNS) | ${fl50} ms | ${fo50} ms | $(ratio "$fl50" "$fo50") | same as an ordinary root |"
echo
echo "progress lines the CLI printed during the copy: $progress_lines"
