#!/usr/bin/env bash
# End-to-end test of following roots in local mode, driven as a user drives them: a
# "production" Postgres 15 started here on a loopback port with a bank workload (pgbench
# running transfers that move money between two accounts and write a ledger row), a root
# that follows it (`ramify branch create prod --follow URI --slot …`), forks of it at
# latest, an LSN and a time taken under load, a daemon restart, a reset that pulls the
# newest production state, and bad input; then a logical follower (`--mode logical
# --publication bank`) and its forks. Run by `make test`.
#
#   e2e/local/follow.sh [path/to/ramify]
set -euo pipefail

E2E_NAME=fw
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
wait_until() { local secs=$1; shift; local end=$((SECONDS + secs)); until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done; }

# Production: its own cluster, as the Postgres OS user when we are root.
if [ "$(id -u)" -eq 0 ]; then AS=(runuser -u postgres --); else AS=(); fi
PROD_DIR="$WORK/prod"
mkdir -p "$PROD_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$PROD_DIR"
PROD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${AS[@]}" initdb -D "$PROD_DIR/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
"${AS[@]}" pg_ctl -D "$PROD_DIR/pgdata" -l "$PROD_DIR/log" -w \
  -o "-p $PROD_PORT -k $PROD_DIR -c listen_addresses=127.0.0.1 -c wal_level=logical" start >/dev/null
stop_prod() { "${AS[@]}" pg_ctl -D "$PROD_DIR/pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'kill "${LOAD:-0}" 2>/dev/null || true; stop_prod; cleanup' EXIT
PROD="host=$PROD_DIR port=$PROD_PORT user=postgres dbname=postgres"
SECRET='Repl-Secret-9f2c'
q "$PROD" -c "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$SECRET';
              CREATE ROLE reader LOGIN PASSWORD '$SECRET';
              CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
              INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
              CREATE TABLE ledger (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
                                   amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
              GRANT SELECT ON accounts, ledger TO reader, replicator;
              CREATE PUBLICATION bank FOR TABLE accounts, ledger"
cat >"$WORK/transfer.sql" <<'SQL'
\set src random(1, 100)
\set dst random(1, 100)
\set amt random(1, 50)
BEGIN;
UPDATE accounts SET balance = balance - :amt WHERE id = :src;
UPDATE accounts SET balance = balance + :amt WHERE id = :dst;
INSERT INTO ledger (src, dst, amount) VALUES (:src, :dst, :amt);
END;
SQL
chmod 644 "$WORK/transfer.sql"
pgbench -n -c 2 -T 600 -f "$WORK/transfer.sql" "$PROD" >"$WORK/pgbench.log" 2>&1 &
LOAD=$!
# The bank's invariants on a copy: the total never changes, every balance is what the
# ledger says it is.
bank_ok() {
  test "$(q "$1" -c "SELECT sum(balance) FROM accounts")" = 100000 &&
  test "$(q "$1" -c "SELECT count(*) FROM accounts a WHERE a.balance <> 1000
            + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0)
            - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)")" = 0
}
# pg_amcheck as the bootstrap superuser over the branch compute's own socket (amcheck
# is no extension a branch role may create).
amcheck_ok() {
  local tl run sock
  tl=$("$RAMIFY" branch get "$1" -o json | json '["timeline_id"]')
  run="$RAMIFY_DATA_DIR/storage/timelines/$tl/run"
  sock=$(find "$run" -maxdepth 1 -name '.s.PGSQL.*' ! -name '*.lock' | head -1)
  "${AS[@]}" psql -X -q -h "$run" -p "${sock##*.}" -U postgres -d postgres -c "CREATE EXTENSION IF NOT EXISTS amcheck" &&
  "${AS[@]}" pg_amcheck --heapallindexed -h "$run" -p "${sock##*.}" -U postgres -d postgres >/dev/null
}
connect() { "$RAMIFY" branch connect "$1"; }

if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 4G); else XFS=(); fi
"$RAMIFY" local up "${XFS[@]}" >/dev/null
sleep 1

echo "# 1. a root that follows production"
URI="postgresql://replicator@127.0.0.1:$PROD_PORT/postgres"
out=$("$RAMIFY" branch create prod --follow "postgresql://replicator:$SECRET@127.0.0.1:$PROD_PORT/postgres" --slot ramify_prod 2>&1) || { echo "$out"; tail -20 "$RAMIFY_DATA_DIR/ramify.log" 2>/dev/null; exit 1; }
check "create --follow names the source, without the password" grep -q "following $URI" <<<"$out"
check "the password appears nowhere in what the CLI prints" bash -c "! grep -q '$SECRET' <<<\"\$1\"" _ "$out$("$RAMIFY" branch get prod -o json)$("$RAMIFY" branch list -o json)"
check "nor in the daemon's files and log" bash -c "! grep -rqs '$SECRET' '$RAMIFY_DATA_DIR/local' '$RAMIFY_DATA_DIR/ramify.log'"
following() { "$RAMIFY" branch get prod -o json | json '["following"].get("status", {}).get("streaming")' | grep -q True; }
check "the follower streams from production" wait_until 30 following
check "ramify status lists the following root and its source" grep -q "following: *prod ← $URI: following (lag" <<<"$("$RAMIFY" status)"
check "branch list shows it following with its lag" grep -Eq 'prod +following \(lag' <<<"$("$RAMIFY" branch list)"
check "branch get shows source, slot, lag and last received" bash -c 'o=$("$1" branch get prod); grep -q "follows: *$2" <<<"$o" && grep -q "slot: *ramify_prod" <<<"$o" && grep -q "lag:" <<<"$o" && grep -q "last received:" <<<"$o"' _ "$RAMIFY" "$URI"
FOLLOWER="postgresql://reader:$SECRET@127.0.0.1:$("$RAMIFY" branch get prod -o json | json '["port"]')/postgres?sslmode=require"
check "production's own roles log in to the follower" test "$(q "$FOLLOWER" -c 'SELECT count(*) FROM accounts')" = 100
check "the follower refuses writes" bash -c '! psql -X -q "$1" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)" 2>/dev/null' _ "$FOLLOWER"
check "the follower holds the bank's invariants" bank_ok "$FOLLOWER"
check "production has the slot it was asked for" test "$(q "$PROD" -c "SELECT string_agg(slot_name, ',') FROM pg_replication_slots")" = ramify_prod

echo "# 2. forks of production under load"
before=$(q "$PROD" -c "SELECT count(*) FROM ledger")
"$RAMIFY" branch create pr-1 --parent prod >/dev/null
PR1=$(connect pr-1)
check "a fork at latest holds the invariants" bank_ok "$PR1"
check "a fork at latest has every transfer committed before it" test "$(q "$PR1" -c 'SELECT count(*) FROM ledger')" -ge "$before"
check "a fork at latest is clean under pg_amcheck" amcheck_ok pr-1
check "a fork of the follower is writable" q "$PR1" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)"
lsn=$(q "$PROD" -c "SELECT pg_current_wal_lsn()")
t=$(q "$PROD" -c "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
sleep 2
"$RAMIFY" branch create at-lsn --parent prod --at "$lsn" >/dev/null
"$RAMIFY" branch create at-time --parent prod --at "$t" >/dev/null
check "a fork at an LSN of production holds the invariants" bank_ok "$(connect at-lsn)"
check "a fork at a time of production holds the invariants" bank_ok "$(connect at-time)"
last=$(q "$(connect at-time)" -c "SELECT coalesce(max(at), '-infinity') <= '$t' FROM ledger")
check "a fork at a time has no transfer after it" test "$last" = t
check "a fork at an LSN is clean under pg_amcheck" amcheck_ok at-lsn

echo "# 3. a reset pulls production's newest state; a restart keeps following"
sleep 2
newest=$(q "$PROD" -c "SELECT max(id) FROM ledger")
"$RAMIFY" branch reset pr-1 >/dev/null
check "the reset fork has transfers production made after it was first forked" test "$(q "$PR1" -c "SELECT max(id) FROM ledger WHERE src <> dst OR amount <> 0")" -ge "$newest"
"$RAMIFY" local down >/dev/null
"$RAMIFY" local up "${XFS[@]}" >/dev/null
check "after a daemon restart the follower streams again by itself" wait_until 60 following
caught_up() { test "$(q "$FOLLOWER" -c "SELECT count(*) FROM ledger")" -ge "$(q "$PROD" -c "SELECT count(*) - 50 FROM ledger")"; }
check "and catches up with production" wait_until 60 caught_up

echo "# 4. what a follower refuses, and bad input"
fails_with "a follower cannot be reset" "its history is its source's" "$RAMIFY" branch reset prod
fails_with "nor restored" "its history is its source's" "$RAMIFY" branch restore prod --at -10s
check "--follow takes no --parent" bash -c '"$1" branch create x --follow "$2" --parent prod 2>&1 | grep -q "cannot be used with"' _ "$RAMIFY" "$URI"
fails_with "--follow wants a URI" "takes a URI" "$RAMIFY" branch create x --follow "host=127.0.0.1"
fails_with "a wrong password is named, not echoed" "password authentication failed" "$RAMIFY" branch create x --follow "postgresql://replicator:nope@127.0.0.1:$PROD_PORT/postgres"
fails_with "an unreachable source is named" "check that the source runs" "$RAMIFY" branch create x --follow "postgresql://replicator@127.0.0.1:1/postgres"
check "a refused create leaves no branch" bash -c '! "$1" branch get x >/dev/null 2>&1' _ "$RAMIFY"

echo "# 5. a logical follower: the schema, a subscription to a publication, forks"
check "--mode logical wants a publication" bash -c '"$1" branch create x --follow "$2" --mode logical 2>&1 | grep -q "required arguments were not provided: *$" ' _ "$RAMIFY" "$URI"
fails_with "a publication production lacks is named, with the command that makes it" "CREATE PUBLICATION nosuch" "$RAMIFY" branch create x --follow "$URI" --password-file <(echo "$SECRET") --mode logical --publication nosuch
out=$("$RAMIFY" branch create prod-l --follow "$URI" --password-file <(echo "$SECRET") --mode logical --publication bank 2>&1) || { echo "$out"; tail -20 "$RAMIFY_DATA_DIR/ramify.log" 2>/dev/null; exit 1; }
check "create --mode logical names the source" grep -q "following $URI" <<<"$out"
check "branch get shows the mode, the publication and the subscription's slot" bash -c 'o=$("$1" branch get prod-l); grep -q "mode: *logical (publication bank)" <<<"$o" && grep -Eq "slot: *ramify_[0-9a-f]{32}" <<<"$o"' _ "$RAMIFY"
lfollowing() { "$RAMIFY" branch get prod-l -o json | json '["following"].get("status", {}).get("streaming")' | grep -q True; }
check "the logical follower applies production's changes" wait_until 30 lfollowing
PRODL=$(connect prod-l)
check "the logical follower's own login reads production's data" test "$(q "$PRODL" -c 'SELECT count(*) FROM accounts')" = 100
check "and writes nothing, even out of read-only mode" bash -c 'psql -X -q "$1" -c "SET default_transaction_read_only = off" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)" 2>&1 | grep -q "permission denied for table ledger"' _ "$PRODL"
before=$(q "$PROD" -c "SELECT count(*) FROM ledger")
sleep 2
"$RAMIFY" branch create pr-l --parent prod-l >/dev/null
PRL=$(connect pr-l)
check "a fork of the logical follower holds the invariants" bank_ok "$PRL"
check "and has the transfers committed before it" test "$(q "$PRL" -c 'SELECT count(*) FROM ledger')" -ge "$before"
check "and is clean under pg_amcheck" amcheck_ok pr-l
check "its sequences were advanced: its own inserts take new ids" q "$PRL" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)"
check "it never runs the subscription its catalog carries" test "$(q "$PRL" -c "SHOW max_logical_replication_workers")" = 0
newest=$(q "$PROD" -c "SELECT max(id) FROM ledger")
sleep 2
"$RAMIFY" branch reset pr-l >/dev/null
check "a reset of the fork pulls production's newer transfers" test "$(q "$PRL" -c "SELECT max(id) FROM ledger WHERE src <> dst OR amount <> 0")" -ge "$newest"
check "production has one logical slot for it, beside the physical one" test "$(q "$PROD" -c "SELECT string_agg(slot_type, ',' ORDER BY slot_type) FROM pg_replication_slots")" = logical,physical
"$RAMIFY" branch delete pr-l >/dev/null

kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
tail -3 "$WORK/pgbench.log"
echo "# production ran $(q "$PROD" -c 'SELECT count(*) FROM ledger') transfers"
echo "# $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
