#!/usr/bin/env bash
# Packages a `ramify` binary for krew: target/krew/ramify-linux-amd64.tar.gz and the
# manifest target/krew/ramify.yaml (from plugins/ramify.yaml.in) with that archive's
# sha256. The manifest's uri is $RAMIFY_RELEASE_URL (where the archive will be published)
# or, without it, the local archive as a file:// URI.
#
# usage: plugins/package.sh [BINARY] [OUT_DIR]   (defaults: target/release/ramify, target/krew)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ramify}
OUT=${2:-target/krew}
[ -x "$BIN" ] || { echo "error: $BIN is not an executable; build it first (cargo build --release -p ramify-cli)" >&2; exit 2; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || { echo "error: no version in Cargo.toml's [workspace.package]" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
install -m 0755 "$BIN" "$STAGE/ramify"
ARCHIVE="$OUT/ramify-linux-amd64.tar.gz"
# Reproducible: fixed owner, mode and time, so the same binary gives the same sha256.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$STAGE" -cf - ramify | gzip -n >"$ARCHIVE"
SHA256=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
URI=${RAMIFY_RELEASE_URL:-file://$ARCHIVE}
export VERSION SHA256 URI
python3 - plugins/ramify.yaml.in "$OUT/ramify.yaml" <<'PY'
import os, string, sys
src, dst = sys.argv[1], sys.argv[2]
text = string.Template(open(src).read()).substitute(os.environ)
open(dst, "w").write(text)
PY
echo "wrote $ARCHIVE (sha256 $SHA256) and $OUT/ramify.yaml"
