# Shared by the local-mode end-to-end scripts (run.sh, workflows.sh): the ramify binary,
# a throwaway data directory that is always cleaned up (daemon stopped, XFS image
# unmounted), and the pass/fail bookkeeping. Sourced, never run; the caller sets
# E2E_NAME (names the temporary directory) and passes its own arguments on.
# shellcheck disable=SC2034 # RAMIFY, PASS and FAIL are for the sourcing script

RAMIFY=$(readlink -f "${1:-target/debug/ramify}")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"
WORK=$(mktemp -d "/var/tmp/ramify-${E2E_NAME:-e2e}-XXXXXX")
chmod 755 "$WORK"
export RAMIFY_DATA_DIR="$WORK/data"
mkdir -p "$RAMIFY_DATA_DIR"
PASS=0
FAIL=0

cleanup() {
  "$RAMIFY" local down >/dev/null 2>&1 || true
  if mountpoint -q "$RAMIFY_DATA_DIR"; then umount "$RAMIFY_DATA_DIR" || umount -l "$RAMIFY_DATA_DIR"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# Runs a command that must fail with one clear line on stderr containing $2.
fails_with() {
  local what=$1 needle=$2; shift 2
  local out rc=0
  out=$("$@" 2>&1 >/dev/null) || rc=$?
  # One line saying what is wrong (clap adds a "For more information, try '--help'." hint).
  if [ "$rc" -ne 0 ] && grep -q -- "$needle" <<<"$out" && [ "$(grep -cv -e '^$' -e "try '--help'" <<<"$out")" -le 1 ]; then
    ok "$what"
  else
    bad "$what (exit $rc, stderr: $out)"
  fi
}
q() { psql -X -A -t -q "$@"; }
