#!/usr/bin/env bash
# How `make test` runs e2e/k8s:
#   * $KUBECONFIG set: on that cluster (kind, k3d, a cloud), with the images and values
#     the caller provides (see e2e/k8s/README.md);
#   * otherwise, on this machine's own test cluster (e2e/cluster) when it can run one
#     (root, loop devices, overlayfs, XFS, bridges): images built from the debug binaries
#     `make test` has just built, cluster up, scenario, cluster down and checked clean;
#   * otherwise it prints why it skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
. e2e/cluster/lib.sh >/dev/null 2>&1 || true

if [ -n "${KUBECONFIG:-}" ]; then
  exec bash e2e/k8s/run.sh
fi
reason=$(cluster_unsupported_reason)
if [ -n "$reason" ]; then
  echo "SKIPPED e2e/k8s: \$KUBECONFIG is unset and this machine cannot run the test cluster: $reason"
  exit 0
fi
CARGO="${CARGO:-cargo}"
"$CARGO" build -p ramify-operator -p ramify-proxy -p ramify-storage -p ramify-cli
bash e2e/cluster/build.sh
# weed, for the seaweedfs image (already current under `make test`, whose `tools` ran).
bash scripts/build-tools.sh
bash e2e/cluster/images.sh --strict --no-import --bin-dir target/debug
exec bash e2e/cluster/with-cluster.sh e2e/k8s/run.sh
