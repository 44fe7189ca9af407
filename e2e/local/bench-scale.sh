#!/usr/bin/env bash
# Scale of one storage node in local mode (part of `make bench`): BRANCHES forks
# (default 1000) of one root, suspended once idle; at 0, 100, 250, 500 and all of them it
# times `ramify branch list` and reads the daemon's memory (storage node, proxy and
# control plane in one process) and the volume's use, then wakes the last branch. Each
# fork's compute starts once and leaves ~20 MiB of its own (mostly the first WAL segment
# of its new Postgres timeline, which Postgres writes as a copy of the parent's), so the
# XFS image is sized for BRANCHES and, when this machine's /var/tmp cannot hold that,
# fewer branches are created and the table says so. Prints Markdown tables; every number
# is measured in this run.
#
#   e2e/local/bench-scale.sh [path/to/ramify]
set -euo pipefail

BRANCHES=${BRANCHES:-1000}
# A short name: every compute's socket path lies under it (Postgres allows 107 bytes).
E2E_NAME=sc
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh" "${1:-target/release/ramify}"

WANTED=$BRANCHES
PER_BRANCH_MIB=${PER_BRANCH_MIB:-24}
if [ "$(id -u)" -eq 0 ]; then
  # The node keeps a reserve of 5 % (at most 2 GiB) free: room for it and the root too.
  avail_mib=$(df --output=avail -m /var/tmp | tail -1)
  fits=$(( (avail_mib * 9 / 10 - 3072) / PER_BRANCH_MIB ))
  [ "$fits" -lt "$BRANCHES" ] && BRANCHES=$fits
  [ "$BRANCHES" -ge 1 ] || { echo "error: /var/tmp has ${avail_mib} MiB free, not enough for one branch" >&2; exit 1; }
  XFS=(--xfs-image "$(( (BRANCHES * PER_BRANCH_MIB + 3072 + 1023) / 1024 ))G")
else
  XFS=()
fi
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; print a[i]}'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

"$RAMIFY" local up "${XFS[@]}" >/dev/null
daemon_pid=$(json '["pid"]' < "$RAMIFY_DATA_DIR/local/daemon.json")
rss_kib() { awk '/^VmRSS/ {print $2}' /proc/"$daemon_pid"/status; }
used_mib() { df --output=used -m "$RAMIFY_DATA_DIR" | tail -1; }
running() { "$RAMIFY" local status -o json | json '["running_computes"]'; }
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
psql -X -q "$("$RAMIFY" branch connect main)" -c "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g"

: > "$WORK/rows"
measure() { # branches created so far
  # Idle forks suspend a second after their create; measure with (almost) none running.
  local deadline=$(( $(date +%s) + 60 ))
  while [ "$(running)" -gt 1 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
  : > "$WORK/list"; : > "$WORK/list_json"
  for _ in 1 2 3 4 5; do
    t=$(date +%s%N); "$RAMIFY" branch list >/dev/null; ms "$t" >> "$WORK/list"
    t=$(date +%s%N); "$RAMIFY" branch list -o json >/dev/null; ms "$t" >> "$WORK/list_json"
  done
  echo "$1 $(pct 50 < "$WORK/list") $(pct 50 < "$WORK/list_json") $(rss_kib) $(running) $(ls /proc/"$daemon_pid"/fd | wc -l) $(used_mib)" >> "$WORK/rows"
}

measure 0
echo "creating $BRANCHES forks of main …" >&2
: > "$WORK/creates"
for i in $(seq 1 "$BRANCHES"); do
  t=$(date +%s%N)
  "$RAMIFY" branch create "s$i" --parent main --suspend-after 1s >/dev/null
  ms "$t" >> "$WORK/creates"
  case $i in 100|250|500|"$BRANCHES") measure "$i"; echo "  $i created" >&2 ;; esac
done
# The last branch, suspended among all the others: wake it with a query.
t=$(date +%s%N)
[ "$(psql -X -A -t -q "$("$RAMIFY" branch connect "s$BRANCHES")" -c "SELECT count(*) FROM t")" = 10000 ]
wake_last=$(ms "$t")
status=$("$RAMIFY" local status -o json)

echo "## One storage node in local mode: $BRANCHES branches ($(json '["storage"]["filesystem"]' <<<"$status"), $(nproc) cores)"
echo
if [ "$BRANCHES" -lt "$WANTED" ]; then
  echo "Only $BRANCHES of the $WANTED branches asked for: at ~$PER_BRANCH_MIB MiB each, more do not fit in /var/tmp here."
  echo
fi
echo "| branches | \`ramify branch list\` p50 | \`branch list -o json\` p50 | daemon RSS | RSS per branch since 0 | volume used | used per branch since 0 | computes running | daemon file descriptors | goal |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
read -r _ _ _ rss0 _ _ used0 < "$WORK/rows"
while read -r n list list_json rss run fds used; do
  per="—"; per_used="—"
  if [ "$n" -gt 0 ]; then per="$(( (rss - rss0) / n )) KiB"; per_used="$(( (used - used0) / n )) MiB"; fi
  echo "| $n | $list ms | $list_json ms | $(( rss / 1024 )) MiB | $per | $used MiB | $per_used | $run | $fds | list ≤ 200 ms |"
done < "$WORK/rows"
echo
echo "| measurement | runs | p50 | p99 | max |"
echo "|---|---:|---:|---:|---:|"
echo "| branch create (fork of a running root) via the CLI | $(wc -l < "$WORK/creates") | $(pct 50 < "$WORK/creates") ms | $(pct 99 < "$WORK/creates") ms | $(pct 100 < "$WORK/creates") ms |"
echo "| wake of the last branch among $BRANCHES suspended → first query | 1 | $wake_last ms | | |"
