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

echo "# the branch role reaches neither the OS nor superuser (SQL as the branch's own role)"
DEV=$("$RAMIFY" branch connect dev)
MARKER="$WORK/pwned"
# Each must fail with a privilege error; "the branch role could ..." if it does not.
sql_refused() {
  local what=$1 sql=$2 out rc=0
  out=$(psql -X -A -t -q -v ON_ERROR_STOP=1 "$MAIN" -c "$sql" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] && grep -Eq 'permission denied|must be superuser|must have admin option' <<<"$out"; then
    ok "$what is refused ($(grep -Eo 'ERROR: .*' <<<"$out" | head -1))"
  else
    bad "$what: the branch role could run it (exit $rc: $out)"
  fi
}
sql_refused "GRANT pg_execute_server_program TO current_user" "GRANT pg_execute_server_program TO current_user"
sql_refused "GRANT pg_read_server_files TO current_user" "GRANT pg_read_server_files TO current_user"
sql_refused "GRANT pg_write_server_files TO current_user" "GRANT pg_write_server_files TO current_user"
sql_refused "COPY ... TO PROGRAM" "COPY (SELECT 1) TO PROGRAM 'id > $MARKER'"
check "... and the program never ran" test ! -e "$MARKER"
sql_refused "COPY ... FROM a server file" "CREATE TEMP TABLE f (l text); COPY f FROM '/etc/hostname'"
sql_refused "pg_read_file of a server file" "SELECT pg_read_file('/etc/passwd')"
sql_refused "ALTER SYSTEM" "ALTER SYSTEM SET work_mem = '1GB'"
sql_refused "CREATE ROLE" "CREATE ROLE other LOGIN PASSWORD 'x'"
sql_refused "ALTER ROLE ... SUPERUSER" "ALTER ROLE CURRENT_USER SUPERUSER"
check "the branch role still owns its database: tables, a trusted extension, statistics" \
  q -o /dev/null "$MAIN" -c "CREATE TABLE mine (i int); CREATE EXTENSION IF NOT EXISTS pgcrypto; SELECT count(*) FROM pg_stat_activity"

echo "# links planted in a timeline directory never reach another timeline"
STORE="$RAMIFY_DATA_DIR/storage/timelines"
DEV_TL=$("$RAMIFY" branch get dev -o json | json '["timeline_id"]')
DB_OID=$(q "$DEV" -c "SELECT oid FROM pg_database WHERE datname = current_database()")
REL=$(q "$DEV" -c "SELECT pg_relation_filepath('items')")
VICTIM="$STORE/$DEV_TL/pgdata/$REL"
q "$DEV" -c "CHECKPOINT" 2>/dev/null || true
dev_sum=$(q "$DEV" -c "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM items")
victim_sum=$(md5sum < "$VICTIM")
"$RAMIFY" snapshot create main before-planting >/dev/null
q "$MAIN" -c "INSERT INTO items VALUES (11); DELETE FROM items WHERE id = 11"
LSN=$(q "$MAIN" -c "SELECT pg_current_wal_lsn()")
# Where a fork reads: a relation file of PGDATA (fork at latest clones it), and a
# timeline history file in its archive (a fork at an LSN gathers every one).
for case in "pgdata/base/$DB_OID/999999|" "wal/00000063.history|--at $LSN"; do
  planted=${case%%|*}
  read -r -a at <<<"${case#*|}"
  ln -s "$VICTIM" "$STORE/$TL/$planted"
  fails_with "a fork of main ${at[*]} with a symlink at $planted is refused, naming it" "$planted" \
    "$RAMIFY" branch create stolen --parent main "${at[@]}"
  rm -f "$STORE/$TL/$planted"
  ln "$VICTIM" "$STORE/$TL/$planted"
  fails_with "a fork of main ${at[*]} with a hard link at $planted is refused, naming it" "$planted" \
    "$RAMIFY" branch create stolen --parent main "${at[@]}"
  rm -f "$STORE/$TL/$planted"
done
check "no half-made branch is left behind" bash -c "! '$RAMIFY' branch get stolen >/dev/null 2>&1"
check "dev's table file is byte-identical" test "$(md5sum < "$VICTIM")" = "$victim_sum"
check "dev's rows are unchanged" test "$(q "$DEV" -c "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM items")" = "$dev_sum"
"$RAMIFY" branch create clean --parent main >/dev/null
check "with the links gone, the same fork works" test "$(q "$("$RAMIFY" branch connect clean)" -c 'SELECT count(*) FROM items')" = 10

echo "# passwords reach no log"
leaked=0
for pw in $("$RAMIFY" branch list -o json | python3 -c 'import json,sys; print(" ".join(b["password"] for b in json.load(sys.stdin)))'); do
  if grep -rlF --exclude=branches.json --exclude=daemon.json "$pw" "$RAMIFY_DATA_DIR" >"$WORK/leaks" 2>/dev/null; then
    leaked=1; cat "$WORK/leaks"
  fi
done
check "no branch password in any file of the data directory but the private branch store" test "$leaked" = 0
check "every service still answers" q -o /dev/null "$MAIN" -c "SELECT 1"

echo "# clients that never authenticate keep no branch awake and get past no cap"
FLOOD="python3 $(dirname "$0")/../wake_flood.py"
"$RAMIFY" branch create idle --parent main --suspend-after 3s >/dev/null
IDLE_PORT=$("$RAMIFY" branch get idle -o json | json '["port"]')
compute_of() { "$RAMIFY" branch get "$1" -o json | json '["compute"]'; }
# Five clients that sit at the password challenge for 15 s: they woke the branch, but
# only authenticated sessions count as use, so it suspends after its 3 s all the same.
$FLOOD hold 127.0.0.1 "$IDLE_PORT" 5 15 >"$WORK/hold.json" &
holder=$!
sleep 9
state=$(compute_of idle)
check "a branch held open by 5 unauthenticated clients is suspended after its suspend-after (state: $state)" test "$state" = suspended
wait "$holder"
check "... and those clients had reached the password challenge: $(cat "$WORK/hold.json")" \
  test "$(json '["challenged"]' <"$WORK/hold.json")" -ge 1
# A flood beyond the proxy's per-branch cap (100): refused with 53300 before anything is
# woken or read, while other branches keep serving.
$FLOOD hold 127.0.0.1 "$IDLE_PORT" 110 2 >"$WORK/flood.json"
check "a flood of 110 unauthenticated clients is refused by the proxy's cap beyond 100: $(json '["proxy_cap"]' <"$WORK/flood.json") refused" \
  test "$(json '["proxy_cap"]' <"$WORK/flood.json")" -ge 10
check "... and main still answers" test "$(q "$MAIN" -c 'SELECT count(*) FROM items')" = 10
check "... and so does idle, with its password, once the flood is gone" \
  test "$(q "$("$RAMIFY" branch connect idle)" -c 'SELECT count(*) FROM items')" = 10

echo "# TLS on every branch endpoint: psql and psycopg with sslmode=verify-full"
URI=$("$RAMIFY" branch connect main)
check "the connection URI asks for verify-full against local mode's CA" grep -q "sslmode=verify-full&sslrootcert=" <<<"$URI"
ssl=$(psql -X "$URI" -c '\conninfo' 2>&1)
check "psql verify-full: $(grep -o 'SSL connection (protocol: [^,]*' <<<"$ssl")" grep -q "SSL connection (protocol: TLSv1.3" <<<"$ssl"
PYTHON=${PYTHON:-target/pyenv/bin/python}
if "$PYTHON" -c 'import psycopg' 2>/dev/null; then
  got=$("$PYTHON" - "$URI" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    ssl = c.pgconn.ssl_in_use
    n = c.execute("SELECT count(*) FROM items").fetchone()[0]
    print(f"ssl={ssl} rows={n}")
PY
  )
  check "psycopg verify-full ($got)" test "$got" = "ssl=True rows=10"
  bad_ca="$WORK/other-ca.crt"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=other -days 1 \
    -keyout "$WORK/other-ca.key" -out "$bad_ca" 2>/dev/null
  other_uri=$(sed "s|sslrootcert=[^&]*|sslrootcert=$bad_ca|" <<<"$URI")
  out=$("$PYTHON" -c 'import sys, psycopg; psycopg.connect(sys.argv[1])' "$other_uri" 2>&1 || true)
  check "psycopg refuses a server its CA did not sign (certificate verify failed)" grep -q "certificate verify failed" <<<"$out"
else
  bad "psycopg is missing from $PYTHON (make chart-test installs it)"
fi

echo "# $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
