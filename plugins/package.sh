#!/usr/bin/env bash
# Packages a `ramify` binary for krew: target/krew/ramify-linux-amd64.tar.gz (the binary
# and the LICENSE, which krew-index requires every installed plugin to carry) and the
# manifest target/krew/ramify.yaml (from plugins/ramify.yaml.in) with that archive's
# sha256. A release uploads both files to its GitHub release, where the manifest's uri
# points: https://github.com/ramify/ramify/releases/download/v<version>/ramify-linux-amd64.tar.gz
# $RAMIFY_RELEASE_URL replaces that uri (another https:// host; http:// only on loopback,
# which the tests serve the archive from). Install a local build without publishing it
# with `kubectl krew install --manifest=target/krew/ramify.yaml --archive=<the archive>`.
#
# usage: plugins/package.sh [BINARY] [OUT_DIR]   (defaults: target/release/ramify, target/krew)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ramify}
OUT=${2:-target/krew}
[ -x "$BIN" ] || { echo "error: $BIN is not an executable; build it first (cargo build --release -p ramify-cli)" >&2; exit 2; }
[ -f LICENSE ] || { echo "error: LICENSE is missing from $(pwd); krew-index refuses a plugin whose archive has no license" >&2; exit 2; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || { echo "error: no version in Cargo.toml's [workspace.package]" >&2; exit 2; }
RELEASE_URL=${RAMIFY_RELEASE_URL:-}
case $RELEASE_URL in
  "" | https://?* | http://127.0.0.1[:/]* | http://localhost[:/]* | http://\[::1\][:/]*) ;;
  *)
    echo "error: RAMIFY_RELEASE_URL=$RELEASE_URL is neither https:// nor http:// on loopback (127.0.0.1, localhost, [::1]); krew users download the archive from it" >&2
    exit 2
    ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
install -m 0755 "$BIN" "$STAGE/ramify"
install -m 0644 LICENSE "$STAGE/LICENSE"
ARCHIVE="$OUT/ramify-linux-amd64.tar.gz"
# Reproducible: fixed owner, mode and time, so the same binary gives the same sha256.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$STAGE" -cf - LICENSE ramify | gzip -n >"$ARCHIVE"
SHA256=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
export VERSION SHA256 RELEASE_URL
python3 - plugins/ramify.yaml.in "$OUT/ramify.yaml" <<'PY'
import os, re, string, sys
src, dst = sys.argv[1], sys.argv[2]
text = string.Template(open(src).read()).substitute(os.environ)
if os.environ["RELEASE_URL"]:
    text, n = re.subn(r"(?m)^(\s*uri: ).*$", lambda m: m.group(1) + os.environ["RELEASE_URL"], text)
    assert n == 1, f"{src} has {n} uri lines, expected one"
open(dst, "w").write(text)
PY
echo "wrote $ARCHIVE (sha256 $SHA256) and $OUT/ramify.yaml"
