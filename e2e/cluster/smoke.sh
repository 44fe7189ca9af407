#!/usr/bin/env bash
# Smoke test of a running test cluster (make cluster-up first): the compute image runs
# `postgres --version`, and a Pod on a ramify-xfs claim proves the volume is XFS with
# reflinks (cp --reflink=always) and that initdb, postgres and psql work there as uid 999.
#
#   e2e/cluster/smoke.sh
#
# Works in namespace cluster-smoke, deleted at the end (its claim's PV stays Released).
set -euo pipefail
SCRIPT_NAME=cluster-smoke
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi
export KUBECONFIG=${KUBECONFIG:-$D/kubeconfig}
K() { "$KUBECTL" -n cluster-smoke "$@"; }
NS_CREATED=0
cleanup() {
  [ "$NS_CREATED" = 1 ] && "$KUBECTL" delete namespace cluster-smoke --wait=false >/dev/null 2>&1
  true
}
trap cleanup EXIT

# wait_pod NAME SECONDS: until the Pod has succeeded; its log on failure.
wait_pod() {
  local phase
  for _ in $(seq 1 $(($2 * 5))); do
    phase=$(K get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    case $phase in
      Succeeded) return 0 ;;
      Failed) break ;;
    esac
    sleep 0.2
  done
  K describe pod "$1" | tail -n 20 >&2 || true
  K logs "$1" >&2 || true
  die "Pod $1 did not succeed (phase '${phase:-none}')"
}

"$KUBECTL" create namespace cluster-smoke >/dev/null
NS_CREATED=1

t=$(now_us)
K run pg-version --image=ramify.test/postgres:15 --image-pull-policy=Never --restart=Never \
  --command -- postgres --version >/dev/null
wait_pod pg-version 60
out=$(K logs pg-version)
grep -q '^postgres (PostgreSQL) 15\.' <<<"$out" || die "postgres --version printed '$out'"
log "ramify.test/postgres:15 runs: $out ($(elapsed "$t")s)"

t=$(now_us)
K apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  storageClassName: ramify-xfs
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: xfs-reflink}
spec:
  restartPolicy: Never
  # As the chart's storage Pod: uid/gid 999, fsGroup 999 changed only on a mismatch.
  securityContext:
    runAsUser: 999
    runAsGroup: 999
    fsGroup: 999
    fsGroupChangePolicy: OnRootMismatch
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: check
    image: ramify.test/postgres:15
    imagePullPolicy: Never
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: data, mountPath: /data}]
    command:
    - sh
    - -euc
    - |
      cd /data
      echo "filesystem $(stat -f -c %T .), owner $(stat -c %u:%g .), running as $(id -u):$(id -g)"
      head -c 16777216 /dev/urandom > original
      cp --reflink=always original clone
      cmp original clone
      echo "reflink copy ok"
      initdb -D /data/pg -U postgres --auth-local=trust >/dev/null
      pg_ctl -D /data/pg -o "-c listen_addresses='' -c unix_socket_directories=/data" -w start >/dev/null
      psql -h /data -U postgres -Atc 'select version()'
      pg_ctl -D /data/pg -m fast -w stop >/dev/null
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data}
EOF
wait_pod xfs-reflink 120
out=$(K logs xfs-reflink)
grep -q '^filesystem xfs' <<<"$out" || die "the ramify-xfs volume is not XFS: $out"
grep -q '^reflink copy ok' <<<"$out" || die "cp --reflink=always failed on the volume: $out"
grep -q '^PostgreSQL 15' <<<"$out" || die "Postgres did not run on the volume: $out"
log "ramify-xfs claim bound to $(K get pvc data -o jsonpath='{.spec.volumeName}'); in the Pod ($(elapsed "$t")s):"
while IFS= read -r line; do echo "    $line"; done <<<"$out"
log "smoke test passed in $(elapsed)s"
