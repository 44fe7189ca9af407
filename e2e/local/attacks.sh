#!/usr/bin/env bash
# Attacks on local mode's trust boundaries, each tried the way an attacker would: another
# program on the same machine talking to the daemon's loopback ports. Every attack must be
# refused and leave the branches as they were. Run by `make test`.
#
#   e2e/local/attacks.sh [path/to/ramify]
set -euo pipefail

E2E_NAME=atk
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
# HTTP status of a request: http_status METHOD URL [curl args...]
http_status() {
  local method=$1 url=$2; shift 2
  curl -s -o "$WORK/body" -w '%{http_code}' -X "$method" "$@" "$url" || echo "000"
}

echo "# local up"
"$RAMIFY" local up
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
q "$MAIN" -c "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 10)"
TL=$("$RAMIFY" branch get main -o json | json '["timeline_id"]')
STORAGE=$("$RAMIFY" local status -o json | json '["storage_url"]')
echo "storage api: $STORAGE, main's timeline: $TL"

echo "# the storage API refuses callers without its token"
code=$(http_status GET "$STORAGE/v1/timelines")
check "GET /v1/timelines without a token is refused (got $code)" test "$code" = 401
check "... and the answer lists no timeline" bash -c "! grep -q '$TL' '$WORK/body'"
check "... with an unauthorized JSON error" grep -q '"code":"unauthorized"' "$WORK/body"
code=$(http_status GET "$STORAGE/v1/timelines" -H "Authorization: Bearer not-the-token-not-the-token-not-the-token")
check "GET /v1/timelines with a wrong token is refused (got $code)" test "$code" = 401
code=$(http_status PUT "$STORAGE/v1/timelines/$TL/credentials" -H 'Content-Type: application/json' \
  -d '{"user":"intruder","password":"Intruder-password-0123456789","database":"app"}')
check "PUT credentials without a token is refused (got $code)" test "$code" = 401
PORT=$("$RAMIFY" branch get main -o json | json '["port"]')
out=$(PGCONNECT_TIMEOUT=10 timeout 15 psql "postgresql://intruder:Intruder-password-0123456789@127.0.0.1:$PORT/app" -c 'SELECT 1' 2>&1) || true
check "... and no intruder login exists on main" bash -c "! grep -qx ' *1' <<<'$out'"
code=$(http_status DELETE "$STORAGE/v1/timelines/$TL?force=true")
check "DELETE ?force=true without a token is refused (got $code)" test "$code" = 401
code=$(http_status POST "$STORAGE/v1/timelines" -H 'Content-Type: application/json' -d "{\"parent\":\"$TL\"}")
check "POST /v1/timelines (a fork) without a token is refused (got $code)" test "$code" = 401
check "main still has its rows" test "$(q "$MAIN" -c 'SELECT count(*) FROM items')" = 10
check "main is still the only branch" test "$("$RAMIFY" branch list -o json | json '.__len__()')" = 1

echo "# the daemon's own caller still gets through"
DAEMON_FILE="$RAMIFY_DATA_DIR/local/daemon.json"
check "the daemon file holding the storage token is private (mode $(stat -c %a "$DAEMON_FILE"))" test "$(stat -c %a "$DAEMON_FILE")" = 600
TOKEN=$(json '["storage_token"]' < "$DAEMON_FILE")
code=$(http_status GET "$STORAGE/v1/timelines" -H "Authorization: Bearer $TOKEN")
check "GET /v1/timelines with the daemon file's token is answered (got $code)" test "$code" = 200
check "... and lists main's timeline" grep -q "$TL" "$WORK/body"
check "ramify local status still reports the storage node" bash -c "'$RAMIFY' local status | grep -q 'storage api'"
"$RAMIFY" branch create dev --parent main >/dev/null
check "a fork through the CLI works" test "$(q "$("$RAMIFY" branch connect dev)" -c 'SELECT count(*) FROM items')" = 10

echo "# $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
