#!/usr/bin/env bash
# Proves the test cluster works and leaves nothing behind, whichever way it ends:
#   1. up -> smoke.sh (Pods run, XFS reflinks, Postgres) -> down -> check-clean
#   2. up failing on purpose half-way (RAMIFY_CLUSTER_FAIL_AT=coredns) -> check-clean
#   3. up interrupted (SIGTERM) once the API server is ready -> check-clean
#   4. up killed (SIGKILL, no chance to clean) once the node is up -> down -> check-clean
#
#   e2e/cluster/test-cluster.sh
set -euo pipefail
SCRIPT_NAME=cluster-test
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi
need_root

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); log "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); log "FAIL - $*"; }
clean() { if "$CLUSTER_SRC/check-clean.sh" >/dev/null; then ok "$1: nothing left"; else bad "$1: leftovers (above)"; fi; }

OUT=$(mktemp -d /var/tmp/ramify-cluster-test-XXXXXX)
trap '"$CLUSTER_SRC/down.sh" >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

# up_until PATTERN SIGNAL: starts up.sh, sends SIGNAL when its output shows PATTERN,
# returns its exit status.
up_until() {
  local pattern=$1 sig=$2 pid rc=0
  "$CLUSTER_SRC/up.sh" >"$OUT/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q -- "$pattern" "$OUT/up.log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  grep -q -- "$pattern" "$OUT/up.log" || { cat "$OUT/up.log" >&2; bad "up.sh never printed '$pattern'"; }
  kill "-$sig" "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  return "$rc"
}

# 1. The normal life of a cluster.
if "$CLUSTER_SRC/up.sh" >"$OUT/up.log" 2>&1; then
  ok "up: $(grep -o 'cluster up in [0-9.]*s' "$OUT/up.log")"
  if "$CLUSTER_SRC/smoke.sh"; then ok "smoke test"; else bad "smoke test"; fi
  if "$CLUSTER_SRC/down.sh" >"$OUT/down.log" 2>&1; then ok "down: $(grep -o 'down in [0-9.]*s' "$OUT/down.log")"; else
    cat "$OUT/down.log" >&2
    bad "down"
  fi
else
  cat "$OUT/up.log" >&2
  bad "up"
  "$CLUSTER_SRC/down.sh" >/dev/null 2>&1 || true
fi
clean "after up, smoke, down"

# 2. A step fails half-way: up must tear down by itself.
if RAMIFY_CLUSTER_FAIL_AT=coredns "$CLUSTER_SRC/up.sh" >"$OUT/up.log" 2>&1; then
  bad "up with RAMIFY_CLUSTER_FAIL_AT=coredns succeeded"
elif grep -q "failing on purpose at step 'coredns'" "$OUT/up.log" && grep -q 'tearing down' "$OUT/up.log"; then
  ok "up failing at step coredns exits non-zero and tears down"
else
  cat "$OUT/up.log" >&2
  bad "up failing at step coredns: unexpected output"
fi
clean "after a failed up"

# 3. Interrupted (Ctrl-C or a CI timeout) while the control plane starts.
rc=0
up_until "kube-apiserver ready" TERM || rc=$?
if [ "$rc" = 143 ] && grep -q 'tearing down' "$OUT/up.log"; then ok "up interrupted by SIGTERM exits 143 and tears down"; else
  cat "$OUT/up.log" >&2
  bad "up interrupted by SIGTERM: exit $rc"
fi
clean "after an interrupted up"

# 4. Killed outright: nothing runs its trap, so down.sh must find everything.
rc=0
up_until "node $NODE_NAME Ready" KILL || rc=$?
left=$("$CLUSTER_SRC/check-clean.sh" 2>&1 | grep -c '^  ' || true)
log "after SIGKILL of up.sh (exit $rc) check-clean lists $left leftovers; running down.sh"
if "$CLUSTER_SRC/down.sh" >"$OUT/down.log" 2>&1; then ok "down after a killed up"; else
  cat "$OUT/down.log" >&2
  bad "down after a killed up"
fi
clean "after a killed up and down"

# down twice, and with nothing running, is harmless.
if "$CLUSTER_SRC/down.sh" >/dev/null 2>&1; then ok "down with nothing running"; else bad "down with nothing running"; fi

log "$PASS passed, $FAIL failed in $(elapsed)s"
[ "$FAIL" = 0 ]
