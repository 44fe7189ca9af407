#!/usr/bin/env bash
# End-to-end test of the branch workflows in local mode, driven as a user drives them (the
# `ramify` CLI, psql, pg_dump): a new branch restorable from its first second, reset,
# restore (at a time, --from, backup branch, range errors), checkpoints and revert (to an
# earlier and then a "future" checkpoint), `ramify diff`, expiry, protection, `ramify
# run`, and bad input. Run by `make test` (root: on a
# scratch XFS image with reflinks; as a normal user on the plain filesystem in copy mode).
#
#   e2e/local/workflows.sh [path/to/ramify]
set -euo pipefail

E2E_NAME=wf
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh"
# pg_dump without the random \restrict key newer minor releases write into every dump.
dump() { pg_dump "$@" | grep -Ev '^\\(un)?restrict '; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
field() { "$RAMIFY" branch get "$1" -o json | json "$2"; }
exists() { "$RAMIFY" branch get "$1" >/dev/null 2>&1; }
# Every row of a table, as one checksum (order-independent).
checksum() { q "$1" -c "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM $2 t"; }
used_bytes() { "$RAMIFY" local status -o json | json '["storage"]["used_bytes"]'; }
# What must not change when a command is refused: every branch's name, timeline, port,
# password, protection and expiry, and every checkpoint list.
state() {
  "$RAMIFY" branch list -o json | python3 -c '
import json, sys
for b in sorted(json.load(sys.stdin), key=lambda b: b["name"]):
    print(b["name"], b["timeline_id"], b["port"], b["password"], b["protected"], b["expires_at"], b["checkpoints"])'
  for b in $("$RAMIFY" branch list -o json | python3 -c 'import json,sys; print(" ".join(b["name"] for b in json.load(sys.stdin)))'); do
    "$RAMIFY" checkpoint list "$b" -o json
  done
}
wait_until() { local secs=$1; shift; local end=$((SECONDS + secs)); until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 6G); else XFS=(); fi
"$RAMIFY" local up "${XFS[@]}" >/dev/null

echo "# 0. history from the first second: a new branch is restorable at once (issue 14)"
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
q "$MAIN" -c "CREATE TABLE orders (id int PRIMARY KEY, amount int);
              INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 100) g"
sleep 6
q "$MAIN" -c "DROP TABLE orders"   # the mistake, a few seconds later
"$RAMIFY" branch restore main --at -5s -o json >"$WORK/first-restore.json"
check "restore --at -5s on a new branch brings the dropped table back" test "$(q "$MAIN" -c 'SELECT sum(amount) FROM orders')" = 50500
"$RAMIFY" branch create past --parent main --at -2s >/dev/null
check "a fork --at -2s of the restored branch has the table" test "$(q "$("$RAMIFY" branch connect past)" -c 'SELECT count(*) FROM orders')" = 100
check "branch get shows the restorable range" grep -Eq '^  restorable: +[0-9T:.-]+Z \(lsn [0-9A-F]+/[0-9A-F]+\) to now$' <<<"$("$RAMIFY" branch get main)"
check "branch list -o wide shows where each history starts" grep -q "RESTORABLE FROM" <<<"$("$RAMIFY" branch list -o wide)"
fresh_from=$("$RAMIFY" branch create fresh -o json | json '["restore_window"]["from_lsn"]')
check "a branch just created already has a restorable start" test "$fresh_from" != None
# Back to a plain main for what follows.
"$RAMIFY" branch delete past >/dev/null
"$RAMIFY" branch delete fresh >/dev/null
"$RAMIFY" branch delete "$(json '["backup"]' <"$WORK/first-restore.json")" >/dev/null
q "$MAIN" -c "DROP TABLE orders"
q "$MAIN" -c "CREATE TABLE items (id int PRIMARY KEY, what text NOT NULL);
              INSERT INTO items SELECT g, 'main ' || g FROM generate_series(1, 1000) g;
              CREATE INDEX items_what ON items (what);
              CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';"

echo "# 1. reset: a drifted branch becomes its parent's latest state"
"$RAMIFY" branch create dev --parent main --suspend-after 0 >/dev/null
DEV=$("$RAMIFY" branch connect dev)
q "$DEV" -c "UPDATE items SET what = 'drifted' WHERE id <= 100; ALTER TABLE items ADD COLUMN extra int DEFAULT 7;
             DELETE FROM items WHERE id > 990"
"$RAMIFY" branch create kid --parent dev --suspend-after 0 >/dev/null
KID=$("$RAMIFY" branch connect kid)
kid_before=$(checksum "$KID" items)
# Data only dev's timeline holds: what the reset must free.
q "$DEV" -c "CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g"
old_tl=$(field dev '["timeline_id"]')
old_exclusive=$(field dev '["exclusive_bytes"]')
used_before=$(used_bytes)
(q "$DEV" -c "SELECT pg_sleep(30)" >"$WORK/session.out" 2>&1 || true) &
session=$!
sleep 1
"$RAMIFY" branch reset dev >/dev/null
wait "$session" || true
check "an open session is ended with Postgres's termination message" grep -q "FATAL:  terminating connection due to administrator command" "$WORK/session.out"
check "the same URI and password connect after the reset" test "$("$RAMIFY" branch connect dev)" = "$DEV"
check "reset: table checksum equals the parent's" test "$(checksum "$DEV" items)" = "$(checksum "$MAIN" items)"
dump -s "$MAIN" >"$WORK/main.schema"
dump -s "$DEV" >"$WORK/dev.schema"
check "reset: pg_dump -s equals the parent's (added column gone)" cmp -s "$WORK/main.schema" "$WORK/dev.schema"
check "reset: the child created before still has its old data" test "$(checksum "$KID" items)" = "$kid_before"
check "... and its added column" test "$(q "$KID" -c 'SELECT DISTINCT extra FROM items')" = 7
check "reset: the old timeline is deleted" test ! -e "$RAMIFY_DATA_DIR/storage/timelines/$old_tl"
new_exclusive=$(field dev '["exclusive_bytes"]')
freed_enough() { [ $(( used_before + new_exclusive - $(used_bytes) )) -ge $(( old_exclusive / 2 )) ]; }
check "reset: the old timeline's exclusive space ($((old_exclusive >> 20)) MiB) is freed" wait_until 10 freed_enough
fails_with "reset of a root is refused" "is a root" "$RAMIFY" branch reset main

echo "# 2. restore: back to before a DROP TABLE, --from another branch, range errors"
q "$DEV" -c "CREATE TABLE precious AS SELECT g FROM generate_series(1, 500) g"
sleep 1
before_drop=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
# The time exactly as psql prints `SELECT now()` (2026-12-04 14:45:02.954757+00).
before_drop_pg=$(q "$DEV" -c "SELECT now()")
sleep 1
q "$DEV" -c "DROP TABLE precious; INSERT INTO items VALUES (5000, 'after the drop')"
"$RAMIFY" branch create past --parent dev --at "$before_drop_pg" >/dev/null
check "a fork --at a time pasted from psql ($before_drop_pg) has the table from before the DROP" test "$(q "$("$RAMIFY" branch connect past)" -c 'SELECT count(*) FROM precious')" = 500
"$RAMIFY" branch delete past >/dev/null
fails_with "a time without a zone is refused, showing both accepted forms" "has no time zone: write it as Postgres prints timestamptz (2026-12-04 14:45:02+00) or in RFC 3339 (2026-12-04T14:45:02Z)" "$RAMIFY" branch restore dev --at "2026-12-04 14:45:02"
"$RAMIFY" branch restore dev --at "$before_drop" -o json >"$WORK/restore.json"
backup=$(json '["backup"]' <"$WORK/restore.json")
check "restore --at a time before the DROP brings the table back under the same URI" test "$(q "$DEV" -c 'SELECT count(*) FROM precious')" = 500
check "... without what came after" test "$(q "$DEV" -c 'SELECT count(*) FROM items WHERE id = 5000')" = 0
check "the backup branch is named NAME-before-restore-<UTC time>" grep -Eq '^dev-before-restore-[0-9]{8}t[0-9]{6}z$' <<<"$backup"
check "the backup branch is suspended" test "$(field "$backup" '["compute"]')" = suspended
check "the backup branch expires (after the restore window)" test "$(field "$backup" '["expires_at"]')" != None
BACKUP=$("$RAMIFY" branch connect "$backup")
check "the backup branch holds the post-drop state" test "$(q "$BACKUP" -c "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'")/$(q "$BACKUP" -c 'SELECT what FROM items WHERE id = 5000')" = "0/after the drop"
DEV_PW=$(field dev '["password"]')
out=$(PGCONNECT_TIMEOUT=10 psql "postgresql://app:$DEV_PW@127.0.0.1:$(field "$backup" '["port"]')/app" -c 'SELECT 1' 2>&1) || true
check "the backup branch has a password of its own" grep -q "password authentication failed" <<<"$out"
"$RAMIFY" branch restore dev --from kid --no-backup >/dev/null
check "restore --from another branch takes its state" test "$(checksum "$DEV" items)" = "$kid_before"
check "--no-backup keeps no backup branch" test "$("$RAMIFY" branch list -o json | json '.__len__()')" = 4
dev_tl=$(field dev '["timeline_id"]')
dev_sum=$(checksum "$DEV" items)
fails_with "a time before the restore window is refused with the valid range" "restore window" "$RAMIFY" branch restore dev --at -1h
fails_with "an LSN after the last flushed one is refused with the valid range" "valid range" "$RAMIFY" branch restore dev --at FF/0
check "... and the branch is unchanged" test "$(field dev '["timeline_id"]')/$(checksum "$DEV" items)" = "$dev_tl/$dev_sum"

echo "# 3. checkpoints: 10 agent steps, revert to 3, then to 7"
"$RAMIFY" branch create agent --parent main --suspend-after 0 >/dev/null
AGENT=$("$RAMIFY" branch connect agent)
: >"$WORK/checkpoint_ms"
for i in $(seq 1 10); do
  q "$AGENT" -c "ALTER TABLE items ADD COLUMN step$i int DEFAULT $i;
                 CREATE TABLE made_in_$i AS SELECT g FROM generate_series(1, $i * 10) g;
                 UPDATE items SET what = what || '.$i' WHERE id % 10 = $((i % 10));
                 DELETE FROM items WHERE id = $((900 + i));
                 CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT $i'"
  dump "$AGENT" >"$WORK/step$i.sql"
  "$RAMIFY" checkpoint create agent "step-$i" -o json | json '["create_ms"]' >>"$WORK/checkpoint_ms"
done
check "10 checkpoints are listed" test "$("$RAMIFY" checkpoint list agent -o json | json '.__len__()')" = 10
"$RAMIFY" branch restore agent --at checkpoint:step-3 >/dev/null
dump "$AGENT" >"$WORK/reverted3.sql"
check "revert to step-3 gives exactly the schema and data of step 3" cmp -s "$WORK/step3.sql" "$WORK/reverted3.sql"
check "step-7 now lives in the backup branch's history" grep -q "agent-before-restore-" <<<"$("$RAMIFY" checkpoint list agent | grep '^step-7 ')"
"$RAMIFY" branch restore agent --at checkpoint:step-7 >/dev/null
dump "$AGENT" >"$WORK/reverted7.sql"
check "then revert to step-7 (the future) gives exactly step 7" cmp -s "$WORK/step7.sql" "$WORK/reverted7.sql"
"$RAMIFY" branch restore agent --at checkpoint:step-2 >/dev/null
dump "$AGENT" >"$WORK/reverted2.sql"
check "and back to step-2 (before the first revert) gives step 2" cmp -s "$WORK/step2.sql" "$WORK/reverted2.sql"
echo "    checkpoint create, median of 10: $(median <"$WORK/checkpoint_ms") ms"

echo "# 4. diff: schema and data differences between branches"
diff_start=$SECONDS
"$RAMIFY" branch create base --parent main --suspend-after 0 >/dev/null
BASE=$("$RAMIFY" branch connect base)
q "$BASE" -c "CREATE TABLE ledger (id int PRIMARY KEY, v int CONSTRAINT v_positive CHECK (v > 0));
              INSERT INTO ledger SELECT g, g FROM generate_series(1, 100) g"
"$RAMIFY" branch create same --parent base --suspend-after 0 >/dev/null
"$RAMIFY" branch create feat --parent base >/dev/null
FEAT=$("$RAMIFY" branch connect feat)
"$RAMIFY" checkpoint create feat clean >/dev/null
q "$FEAT" -c "ALTER TABLE items ADD COLUMN note text;
              CREATE INDEX items_note ON items (note);
              CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 43';
              ALTER TABLE ledger DROP CONSTRAINT v_positive;
              INSERT INTO ledger SELECT g, g FROM generate_series(101, 105) g;
              UPDATE ledger SET v = v + 1000 WHERE id <= 7;
              DELETE FROM ledger WHERE id > 97 AND id <= 100"
"$RAMIFY" branch suspend feat >/dev/null
rc=0; "$RAMIFY" diff feat --exit-code >"$WORK/diff.out" 2>"$WORK/diff.err" || rc=$?
sed 's/^/    /' "$WORK/diff.out"
check "diff of a changed branch exits 1 with --exit-code" test "$rc" = 1
check "... compares its parent (---) with it (+++)" test "$(head -2 "$WORK/diff.out" | tr '\n' ' ')" = "--- base +++ feat "
check "... says it woke the suspended branch" grep -qx "woke feat" "$WORK/diff.err"
check "... shows the added column" grep -Eq '^\+ +note text' "$WORK/diff.out"
check "... the new index" grep -Eq '^\+CREATE INDEX items_note ON public\.items' "$WORK/diff.out"
check "... the changed function" bash -c "grep -q '^## function public.answer() (changed)' '$WORK/diff.out' && grep -q \"^-.*SELECT 42\" '$WORK/diff.out' && grep -q \"^+.*SELECT 43\" '$WORK/diff.out'"
check "... and the dropped constraint" bash -c "grep -Eq '^## .*v_positive \(removed\)' '$WORK/diff.out' && grep -Eq '^-.*CHECK \(\(?v > 0' '$WORK/diff.out'"
rc=0; "$RAMIFY" diff feat base --exit-code >"$WORK/rev.out" || rc=$?
check "diff A B: A is the before side (the column shows as removed)" test "$rc/$(grep -Ec '^- +note text' "$WORK/rev.out")" = 1/1
rc=0; out=$("$RAMIFY" diff base same --exit-code --data) || rc=$?
check "identical branches: empty output, exit 0 with --exit-code" test "$rc/$out" = "0/"
"$RAMIFY" diff base feat --data -o json >"$WORK/diff.json"
ledger=$(json '["data"]' <"$WORK/diff.json" | python3 -c 'import ast,sys; t=[x for x in ast.literal_eval(sys.stdin.read()) if x["table"]=="public.ledger"][0]; print(t["comparison"], t["only_in_a"], t["only_in_b"], t["changed"], t["rows_a"], t["rows_b"])')
check "--data counts exactly 3 deleted, 5 inserted, 7 updated rows (100 → 102)" test "$ledger" = "by_key 3 5 7 100 102"
check "-o json names both sides and says they differ" test "$(json '["a"], d["b"], d["identical"]' <"$WORK/diff.json")" = "base feat False"
check "--data text names the branches" grep -q "^public.ledger (key id): 3 only in base, 5 only in feat, 7 changed; 100 → 102 rows$" <<<"$("$RAMIFY" diff feat --data)"
branches=$("$RAMIFY" branch list -o json | json '.__len__()')
rc=0; out=$("$RAMIFY" diff feat@checkpoint:clean base --exit-code --data) || rc=$?
check "BRANCH@checkpoint:NAME reads the branch at that checkpoint (identical to its parent)" test "$rc/$out" = "0/"
check "... and its throwaway branch is deleted" test "$("$RAMIFY" branch list -o json | json '.__len__()')" = "$branches"
"$RAMIFY" branch create doomed --parent base >/dev/null
"$RAMIFY" branch delete doomed >/dev/null
state >"$WORK/state.before"
fails_with "diff of a deleted branch is one clear line" "does not exist" "$RAMIFY" diff doomed --exit-code
rc=0; "$RAMIFY" diff base doomed --exit-code >/dev/null 2>&1 || rc=$?
check "... exiting 2, not 1 (differ)" test "$rc" = 2
fails_with "diff of a root without a second branch" "is a root" "$RAMIFY" diff main
state >"$WORK/state.after"
check "... and nothing changed" cmp -s "$WORK/state.before" "$WORK/state.after"
"$RAMIFY" branch delete feat >/dev/null
"$RAMIFY" branch delete same >/dev/null
"$RAMIFY" branch delete base >/dev/null
echo "    diff checks took $((SECONDS - diff_start)) s"

echo "# 5. expiry and protection"
"$RAMIFY" branch create short --parent main --expires-in 3s >/dev/null
short_tl=$(field short '["timeline_id"]')
q "$("$RAMIFY" branch connect short)" -c "CREATE TABLE scratch AS SELECT g FROM generate_series(1, 10000) g"
"$RAMIFY" branch create later --parent main --expires-in 2h >/dev/null
check "branch list shows the time left" grep -Eq '^[└├]─ later .* (1h59m|2h)$' <<<"$("$RAMIFY" branch list)"
gone() { ! exists short; }
check "a branch with a 3 s expiry is gone within 10 s" wait_until 10 gone
check "... its compute stopped" test -z "$(pgrep -f "postgres -D .*$short_tl/pgdata" || true)"
check "... its storage freed" test ! -e "$RAMIFY_DATA_DIR/storage/timelines/$short_tl"
"$RAMIFY" branch expire later --never >/dev/null
check "expire --never clears an expiry" test "$(field later '["expires_at"]')" = None
"$RAMIFY" branch protect kid >/dev/null
fails_with "a protected branch refuses delete, naming the flag" "protected: true" "$RAMIFY" branch delete kid
fails_with "a protected branch refuses reset" "cannot be reset" "$RAMIFY" branch reset kid
fails_with "a protected branch refuses restore" "cannot be restored" "$RAMIFY" branch restore kid --at -1s
fails_with "a protected branch refuses an expiry" "cannot be given an expiry" "$RAMIFY" branch expire kid --in 1h
check "branch list shows it protected" grep -Eq '^.*kid .* protected$' <<<"$("$RAMIFY" branch list)"
"$RAMIFY" branch unprotect kid >/dev/null
"$RAMIFY" branch delete kid >/dev/null
check "unprotect, then delete works" bash -c "! '$RAMIFY' branch get kid >/dev/null 2>&1"

echo "# 6. ramify run: a branch per command run"
runs_left() { "$RAMIFY" branch list -o json | python3 -c 'import json,sys; print(sum(1 for b in json.load(sys.stdin) if b["name"].startswith(("run-", "ci-", "par-"))))'; }
out=$("$RAMIFY" run --from main --name-prefix ci -- sh -c 'psql -XAtq "$DATABASE_URL" -c "SELECT count(*) FROM items"; psql -XAtq -c "SELECT answer()"; echo "$RAMIFY_BRANCH"')
check "the command sees its own branch via DATABASE_URL and PG*" test "$(head -2 <<<"$out" | tr '\n' ' ')" = "1000 42 "
check "... named with the prefix" grep -Eq '^ci-[a-z0-9]{8}$' <<<"$(tail -1 <<<"$out")"
rc=0; "$RAMIFY" run --from main -- sh -c 'exit 3' || rc=$?
check "the command's exit status is returned" test "$rc" = 3
rc=0; "$RAMIFY" run --from main -- sh -c 'kill -9 $$' || rc=$?
check "a killed command gives 128+9" test "$rc" = 137
set -m
"$RAMIFY" run --from main -- sleep 60 &
run_pid=$!
set +m
started() { [ "$(runs_left)" = 1 ]; }
wait_until 30 started || true
kill -INT "$run_pid"
rc=0; wait "$run_pid" || rc=$?
check "Ctrl-C (SIGINT) ends the command and returns 130" test "$rc" = 130
check "no run branch is left after success, failure, kill and SIGINT" test "$(runs_left)" = 0
for i in 1 2 3 4; do
  "$RAMIFY" run --from main --name-prefix par -- sh -c "psql -XAtq -c \"INSERT INTO items VALUES (2000 + $i, 'run $i')\" && sleep 1 && psql -XAtq -c 'SELECT what FROM items WHERE id > 2000'" >"$WORK/par.$i" 2>&1 &
done
wait
all_own=1
for i in 1 2 3 4; do [ "$(cat "$WORK/par.$i")" = "run $i" ] || all_own=0; done
check "4 parallel runs each see only their own write" test "$all_own" = 1
check "... and leave nothing behind" test "$(runs_left)/$(q "$MAIN" -c 'SELECT count(*) FROM items WHERE id > 2000')" = 0/0

echo "# 7. bad input: one clear line, non-zero exit, nothing changed"
state >"$WORK/state.before"
fails_with "reset of an unknown branch" "does not exist" "$RAMIFY" branch reset ghost
fails_with "restore of an unknown branch" "does not exist" "$RAMIFY" branch restore ghost --at -1m
fails_with "restore of a root with no --at" "needs --at" "$RAMIFY" branch restore main
fails_with "restore to an unknown checkpoint names the known ones" "step-1, step-2" "$RAMIFY" branch restore agent --at checkpoint:nope
fails_with "restore --from an unknown branch" "unknown branch" "$RAMIFY" branch restore dev --from ghost
fails_with "restore --at garbage names the accepted forms" "checkpoint:NAME" "$RAMIFY" branch restore dev --at yesterday
fails_with "a fork at an unknown checkpoint" "no checkpoint" "$RAMIFY" branch create x --parent agent --at checkpoint:nope
fails_with "checkpoint of an unknown branch" "does not exist" "$RAMIFY" checkpoint create ghost
fails_with "checkpoint list of an unknown branch" "does not exist" "$RAMIFY" checkpoint list ghost
fails_with "a checkpoint name that is taken" "already has a checkpoint" "$RAMIFY" checkpoint create agent step-3
fails_with "an invalid checkpoint name" "invalid checkpoint name" "$RAMIFY" checkpoint create agent 'Step 3'
fails_with "protect of an unknown branch" "does not exist" "$RAMIFY" branch protect ghost
fails_with "expire of an unknown branch" "does not exist" "$RAMIFY" branch expire ghost --in 1h
fails_with "an expiry in the past" "not in the future" "$RAMIFY" branch expire dev --at 2000-01-01T00:00:00Z
fails_with "an expiry that is not a duration" "invalid duration" "$RAMIFY" branch expire dev --in soon
fails_with "run from an unknown branch" "unknown parent" "$RAMIFY" run --from ghost -- true
fails_with "run with a bad prefix" "name-prefix" "$RAMIFY" run --from main --name-prefix BAD -- true
rc=0; out=$("$RAMIFY" run --from main 2>&1) || rc=$?
check "run without a command is a usage error" test "$rc/$(grep -c '<COMMAND>' <<<"$out")" = 2/2
state >"$WORK/state.after"
check "nothing changed" cmp -s "$WORK/state.before" "$WORK/state.after"

"$RAMIFY" branch list
"$RAMIFY" local down >/dev/null
check "no compute survives local down" test -z "$(pgrep -f "postgres -D $RAMIFY_DATA_DIR" || true)"

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
