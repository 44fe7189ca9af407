#!/usr/bin/env bash
# Builds the third-party checkers `make test` runs on what Ramify publishes, from their
# pinned Go modules (through GOPROXY, never a downloaded binary), once:
#   krew 0.4.3   kubectl-krew and validate-krew-manifest, the validator krew-index runs on
#                every plugin manifest (install step included) — plugins/package.sh output
#   actionlint   the GitHub Actions workflow linter (with shellcheck from apt for `run:`)
#                — the workflows in examples/
# into ${RAMIFY_TOOLS:-/var/tmp/ramify-tools}/bin. A binary is rebuilt only when missing or
# when its module version or the Go version changed (a stamp file beside it), so a second
# run costs nothing.
#
# usage: scripts/build-tools.sh [--force]
set -euo pipefail

TOOLS=${RAMIFY_TOOLS:-/var/tmp/ramify-tools}
BIN=$TOOLS/bin
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

# binary | package@version | name to install it as
SPECS=(
  "krew|sigs.k8s.io/krew/cmd/krew@v0.4.3|kubectl-krew"
  "validate-krew-manifest|sigs.k8s.io/krew/cmd/validate-krew-manifest@v0.4.3|validate-krew-manifest"
  "actionlint|github.com/rhysd/actionlint/cmd/actionlint@v1.7.12|actionlint"
)

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || { echo "error: Go not found (need it on PATH or at /usr/local/go/bin/go) to build krew and actionlint from their modules" >&2; exit 1; }
GO_VERSION=$("$GO" env GOVERSION)

mkdir -p "$BIN"
for spec in "${SPECS[@]}"; do
  IFS='|' read -r built pkg name <<<"$spec"
  stamp="$BIN/.$name.stamp"
  want="$pkg $GO_VERSION"
  if [ $FORCE = 0 ] && [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    continue
  fi
  echo "==> building $name from $pkg ($GO_VERSION)"
  start=$(date +%s)
  stage=$(mktemp -d)
  # @version: the module's own go.mod and go.sum decide every dependency.
  GOBIN=$stage GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" install -trimpath -ldflags='-s -w' "$pkg"
  mv "$stage/$built" "$BIN/$name.new" && mv "$BIN/$name.new" "$BIN/$name"
  rm -rf "$stage"
  echo "$want" >"$stamp"
  echo "    built $BIN/$name in $(($(date +%s) - start))s"
done

# actionlint checks `run:` scripts with shellcheck when it finds one on PATH.
if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing shellcheck (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
  else
    echo "error: shellcheck is missing; actionlint needs it to check workflow scripts: sudo apt-get install shellcheck" >&2
    exit 1
  fi
fi
