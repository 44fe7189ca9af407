#!/usr/bin/env bash
# Runs a command against a Kubernetes cluster: the one $KUBECONFIG names (kind, k3d, a
# cloud), or else a fresh test cluster brought up before and torn down after it, with
# check-clean proving the teardown. This is how `make test` runs e2e/k8s.
#
#   e2e/cluster/with-cluster.sh [--prepare] COMMAND [ARG...]
#
# --prepare: when a fresh cluster is needed, first build its binaries and every image
# (make cluster-build cluster-images), so one line in `make test` does it all and a
# machine that skips builds nothing.
#
# Exit status: COMMAND's, or non-zero when the cluster did not come up or the teardown
# left something behind. When $KUBECONFIG is unset and this machine cannot run the test
# cluster (not root, no loop devices, ...) it prints "SKIP: <why>" and exits 0.
# RAMIFY_KEEP_CLUSTER=1 leaves the fresh cluster running afterwards (debugging; stop it
# with e2e/cluster/down.sh).
set -euo pipefail
SCRIPT_NAME=with-cluster
. "$(dirname "$0")/lib.sh"

PREPARE=0
if [ "${1:-}" = --prepare ]; then PREPARE=1; shift; fi
if [ $# = 0 ]; then usage >&2; exit 2; fi
if [ "$1" = -h ] || [ "$1" = --help ]; then usage; exit 0; fi

if [ -n "${KUBECONFIG:-}" ]; then
  log "using the cluster \$KUBECONFIG names ($KUBECONFIG)"
  exec "$@"
fi

reason=$(cluster_unsupported_reason)
if [ -n "$reason" ]; then
  echo "SKIP: $* needs a Kubernetes cluster: \$KUBECONFIG is unset and this machine cannot run the test cluster: $reason"
  exit 0
fi

t=$(now_us)
if [ "$PREPARE" = 1 ]; then
  "$CLUSTER_SRC/build.sh"
  "$CLUSTER_SRC/images.sh" --cargo --strict --no-import
fi
"$CLUSTER_SRC/up.sh"
export KUBECONFIG=$D/kubeconfig
log "cluster ready in $(elapsed "$t")s; running: $*"

teardown() {
  if [ "${RAMIFY_KEEP_CLUSTER:-0}" = 1 ]; then
    log "RAMIFY_KEEP_CLUSTER=1: leaving the cluster up (export KUBECONFIG=$KUBECONFIG; e2e/cluster/down.sh stops it)"
    return 0
  fi
  local t2
  t2=$(now_us)
  "$CLUSTER_SRC/down.sh" || return 1
  log "cluster torn down and the machine checked clean in $(elapsed "$t2")s"
}
trap 'trap - INT TERM; warn "interrupted; tearing the cluster down"; teardown; exit 130' INT TERM

rc=0
t=$(now_us)
"$@" || rc=$?
log "$* exited with $rc after $(elapsed "$t")s"
trap - INT TERM
if ! teardown; then
  warn "the teardown left something behind"
  [ "$rc" != 0 ] || rc=1
fi
exit "$rc"
