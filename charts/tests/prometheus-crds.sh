#!/usr/bin/env bash
# Puts the Prometheus Operator's ServiceMonitor and PodMonitor CRDs, which the chart tests
# validate the chart's monitors against, into a cache directory and prints its path.
#
#   charts/tests/prometheus-crds.sh [CACHE_DIR]
#
# They come from the prometheus-operator Go module (example/prometheus-operator-crd/),
# pinned below, through the Go module proxy (GOPROXY) with its checksum verified against
# the Go checksum database, like every other Go module the project builds. Once the files
# are in the cache this returns at once; delete the directory to fetch them again.
set -euo pipefail

MODULE=github.com/prometheus-operator/prometheus-operator
VERSION=v0.85.0
FILES=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${1:-$root/target/prometheus-operator-crds/$VERSION}"

have_all() {
  local f
  for f in "${FILES[@]}"; do [ -s "$cache/$f" ] || return 1; done
}
if have_all; then
  echo "$cache"
  exit 0
fi

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
if [ ! -x "$GO" ]; then
  echo "error: Go not found (on PATH or /usr/local/go/bin/go); it fetches the Prometheus Operator CRDs" \
    "($MODULE@$VERSION) that the chart tests validate the ServiceMonitors against" >&2
  exit 1
fi

# A private module cache, removed afterwards: only the two CRD files are kept.
modcache="$(mktemp -d)"
trap 'chmod -R u+w "$modcache" 2>/dev/null; rm -rf "$modcache"' EXIT
dir="$(cd "$modcache" && GOMODCACHE="$modcache" GOFLAGS=-mod=mod "$GO" mod download -json "$MODULE@$VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$dir" ] || [ ! -d "$dir/example/prometheus-operator-crd" ]; then
  echo "error: go mod download $MODULE@$VERSION gave no example/prometheus-operator-crd/ (GOPROXY=$("$GO" env GOPROXY))" >&2
  exit 1
fi
mkdir -p "$cache"
for f in "${FILES[@]}"; do
  install -m 0644 "$dir/example/prometheus-operator-crd/$f" "$cache/$f.tmp"
  mv -f "$cache/$f.tmp" "$cache/$f"
done
echo "$MODULE@$VERSION" > "$cache/SOURCE"
echo "$cache"
