#!/usr/bin/env bash
# End-to-end test of local mode, driven exactly as a user drives it: the `ramify` CLI,
# psql and pgbench. Run by `make test` (needs root for the XFS image; as a normal user
# it runs on the plain filesystem in copy mode).
#
#   e2e/local/run.sh [path/to/ramify]
set -euo pipefail

E2E_NAME=e2e
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 6G); else XFS=(); fi

echo "# local up"
"$RAMIFY" local up "${XFS[@]}"
fails_with "local up twice is refused" "already running" "$RAMIFY" local up
"$RAMIFY" local status

echo "# main with data, dev forked from it"
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
q "$MAIN" -c "CREATE TABLE items (id int primary key, what text); INSERT INTO items SELECT g, 'main ' || g FROM generate_series(1, 1000) g"
"$RAMIFY" branch create dev --parent main --suspend-after 2s
DEV=$("$RAMIFY" branch connect dev)
check "psql connects to dev through its connection string" test "$(q "$DEV" -c 'SELECT count(*) FROM items')" = 1000

MAIN_PW=$("$RAMIFY" branch get main -o json | json '["password"]')
DEV_PORT=$("$RAMIFY" branch get dev -o json | json '["port"]')
out=$(PGCONNECT_TIMEOUT=10 timeout 15 psql "postgresql://app:$MAIN_PW@127.0.0.1:$DEV_PORT/app" -c 'SELECT 1' 2>&1) && rc=0 || rc=$?
check "main's password is rejected on dev" grep -q "password authentication failed" <<<"$out"
out=$(PGCONNECT_TIMEOUT=10 timeout 15 psql "postgresql://app:wrong@127.0.0.1:$DEV_PORT/app" -c 'SELECT 1' 2>&1) && rc=0 || rc=$?
check "a wrong password gets an authentication error, not a hang" grep -q "password authentication failed" <<<"$out"

echo "# isolation"
q "$DEV" -c "INSERT INTO items VALUES (5000, 'dev only')"
check "dev's row is absent in main" test "$(q "$MAIN" -c 'SELECT count(*) FROM items WHERE id = 5000')" = 0

echo "# scale to zero and wake on connect"
dev_pgdata=$("$RAMIFY" branch get dev -o json | json '["timeline_id"]')
compute_pids() { pgrep -f "postgres -D .*$dev_pgdata/pgdata" || true; }
sleep 5
check "dev's compute is gone after 2 s idle" test -z "$(compute_pids)"
check "dev shows as suspended" test "$("$RAMIFY" branch get dev -o json | json '["compute"]')" = suspended
check "a new psql wakes dev and sees its data" test "$(q "$DEV" -c 'SELECT what FROM items WHERE id = 5000')" = "dev only"
sleep 5
starts_before=$(grep -c "compute started" "$RAMIFY_DATA_DIR/local/daemon.log" || true)
pids=()
for i in $(seq 1 20); do
  (q "$DEV" -c "SELECT count(*) FROM items" > "$WORK/client.$i" 2>&1) &
  pids+=($!)
done
all_ok=1
for p in "${pids[@]}"; do wait "$p" || all_ok=0; done
for i in $(seq 1 20); do [ "$(cat "$WORK/client.$i")" = 1001 ] || all_ok=0; done
starts_after=$(grep -c "compute started" "$RAMIFY_DATA_DIR/local/daemon.log" || true)
check "20 clients at once on a suspended branch all succeed" test "$all_ok" = 1
check "... after a single wake" test $((starts_after - starts_before)) = 1

echo "# kill -9 of the compute mid-transaction"
q "$DEV" -c "INSERT INTO items VALUES (6000, 'committed')"
(q "$DEV" -c "BEGIN; INSERT INTO items VALUES (6001, 'never committed'); SELECT pg_sleep(30)" >/dev/null 2>&1 &)
sleep 1
pkill -9 -f "postgres -D .*$dev_pgdata/pgdata" || true
sleep 1
check "the next connection wakes dev with every committed row" test "$(q "$DEV" -c 'SELECT count(*) FROM items WHERE id IN (6000, 6001)')" = 1

echo "# bad input: one clear line, non-zero exit"
fails_with "unknown parent" "unknown parent" "$RAMIFY" branch create x --parent nope
fails_with "bad name" "invalid branch name" "$RAMIFY" branch create Bad_Name
fails_with "LSN outside the restore window" "restore window" "$RAMIFY" branch create y --parent main --at 0/1
fails_with "garbage LSN" "LSN" "$RAMIFY" branch create y --parent main --at 0/ZZ
fails_with "delete of a branch with children names them" "dev" "$RAMIFY" branch delete main

echo "# delete frees compute, port and storage"
"$RAMIFY" branch create scratch --parent dev >/dev/null
SCRATCH_PORT=$("$RAMIFY" branch get scratch -o json | json '["port"]')
q "$("$RAMIFY" branch connect scratch)" -c "CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g"
scratch_tl=$("$RAMIFY" branch get scratch -o json | json '["timeline_id"]')
"$RAMIFY" branch delete scratch
check "scratch is no longer listed" bash -c "! '$RAMIFY' branch list -o json | grep -q '\"scratch\"'"
check "its port is free" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$SCRATCH_PORT) 2>/dev/null"
check "its compute is gone" test -z "$(pgrep -f "postgres -D .*$scratch_tl/pgdata" || true)"
check "its storage is gone" test ! -e "$RAMIFY_DATA_DIR/storage/timelines/$scratch_tl"
"$RAMIFY" branch list

echo "# the daemon is killed; local up again brings every branch back"
daemon_pid=$(json '["pid"]' < "$RAMIFY_DATA_DIR/local/daemon.json")
kill -9 "$daemon_pid"
sleep 1
"$RAMIFY" local up "${XFS[@]}" >/dev/null
check "main is back on its port with its data" test "$(q "$MAIN" -c 'SELECT count(*) FROM items')" = 1000
check "dev is back on its port with its data" test "$(q "$DEV" -c 'SELECT count(*) FROM items WHERE id = 6000')" = 1

echo "# local down"
"$RAMIFY" local down
check "no compute survives local down" test -z "$(pgrep -f "postgres -D $RAMIFY_DATA_DIR" || true)"
fails_with "a command without the daemon says to start it" "ramify local up" "$RAMIFY" branch list
fails_with "Postgres binaries not found" "Postgres" "$RAMIFY" local up --pg-bin /nonexistent

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
