#!/usr/bin/env bash
# Builds target/pyenv, the Python virtualenv of the chart tests (make chart-test), from the
# pinned charts/tests/requirements.txt. Idempotent: when the environment was built from the
# same requirements by the same interpreter it returns at once; otherwise it is rebuilt
# from scratch (delete target/pyenv to force that).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RAMIFY_PYENV:-$root/target/pyenv}"
requirements="$root/charts/tests/requirements.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: $python not found; the chart tests need Python 3.10 or newer" >&2
  exit 1
fi

# The stamp names what the environment was built from; anything else means rebuild.
want="$( { sha256sum "$requirements" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; command -v "$python"; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.ramify-stamp"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "error: $python cannot create virtualenvs; install python3-venv" >&2
    exit 1
  fi
fi

echo "==> building $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
# Wheels only: helm-python-sdk's source build would need Go and a C compiler, and a
# wheel that is missing for this platform should say so rather than start compiling.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --only-binary=:all: -r "$requirements"
echo "$want" > "$stamp"
