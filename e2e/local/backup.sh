#!/usr/bin/env bash
# Local mode loses its data directory and comes back from S3: a bank-transfer workload
# on a durable root and 3 durable forks, a fork that is not durable; the daemon and its
# computes are SIGKILLed mid-workload and the data directory (and its XFS image) deleted;
# `ramify local up --recover` brings the four durable branches back with their names,
# ports and passwords; the total balance is constant, every balance agrees with the
# ledger, and the commits lost are only the last archive_timeout's (the RPO, measured).
#
# The object storage is real: SeaweedFS (`weed mini`, built by `make tools`) over TLS on
# loopback, started and stopped here. Run by `make test`.
#
#   e2e/local/backup.sh [path/to/ramify]
set -euo pipefail

E2E_NAME=bk
# shellcheck source=e2e/local/lib.sh
. "$(dirname "$0")/lib.sh"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

WEED=${RAMIFY_TOOLS:-/var/tmp/ramify-tools}/bin/weed
if [ ! -x "$WEED" ] || ! command -v pgbackrest >/dev/null; then
  if [ "${RAMIFY_REQUIRE_TOOLS:-}" = 1 ]; then
    echo "FAIL - needs $WEED (make tools) and pgbackrest (make deps)"; exit 1
  fi
  echo "skipping: needs $WEED (make tools) and pgbackrest (make deps)"; exit 0
fi
if [ "$(id -u)" -eq 0 ]; then XFS=(--xfs-image 6G); else XFS=(); fi

echo "# an S3 server with a bucket, over TLS"
S3=$WORK/s3
mkdir -p "$S3/data"
bash "$(dirname "$0")/../s3-tls.sh" "$S3" localhost
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
S3_PORT=$(port)
export AWS_ACCESS_KEY_ID=ramifye2ekey AWS_SECRET_ACCESS_KEY=ramify-e2e-secret-0123456789
WEED_ARGS=(mini "-dir=$S3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 "-s3.port=$S3_PORT"
  "-s3.cert.file=$S3/cert.pem" "-s3.key.file=$S3/key.pem" -admin.ui=false -admin.port.legacy=0
  -webdav=false -master.telemetry=false)
for f in master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc \
  s3.port.grpc s3.port.iceberg s3.port.lance s3.debug.port admin.port admin.port.grpc debug.port metricsPort; do
  WEED_ARGS+=("-$f=$(port)")
done
S3_BUCKET=ramify-e2e "$WEED" "${WEED_ARGS[@]}" >"$S3/weed.log" 2>&1 &
WEED_PID=$!
trap 'kill -9 $WEED_PID 2>/dev/null || true; cleanup' EXIT
signed() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$1" --aws-sigv4 aws:amz:us-east-1:s3 \
  --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" --cacert "$S3/ca.pem" "https://localhost:$S3_PORT/$2"; }
for _ in $(seq 1 300); do
  code=$(signed GET "ramify-e2e?list-type=2" || true)
  [ "$code" = 200 ] && break
  [ "$code" = 404 ] && signed PUT ramify-e2e >/dev/null || true
  sleep 0.2
done
check "the bucket answers" test "$code" = 200
BACKUP=(--backup s3://ramify-e2e/local --backup-endpoint "localhost:$S3_PORT" --backup-uri-style path
  --backup-ca-file "$S3/ca.pem")

echo "# local up with a backup repository; a bank on main"
"$RAMIFY" local up "${XFS[@]}" "${BACKUP[@]}" >/dev/null
"$RAMIFY" branch create main --suspend-after 0 >/dev/null
MAIN=$("$RAMIFY" branch connect main)
q "$MAIN" -c "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
  INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
  CREATE TABLE ledger (id bigserial PRIMARY KEY, src int, dst int, amount int,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"
for f in f1 f2 f3; do "$RAMIFY" branch create "$f" --parent main --backup --suspend-after 0 >/dev/null; done
"$RAMIFY" branch create scratch --parent main --suspend-after 0 >/dev/null
fails_with "recovering into a data directory that has branches is refused" "already running" \
  "$RAMIFY" local up "${BACKUP[@]}" --recover

cat >"$WORK/transfer.sql" <<'SQL'
\set a random(1, 100)
\set b random(1, 100)
\set amount random(1, 50)
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :a;
UPDATE accounts SET balance = balance + :amount WHERE id = :b;
INSERT INTO ledger (src, dst, amount) VALUES (:a, :b, :amount);
END;
SQL
declare -A URI PW PORT
for b in main f1 f2 f3 scratch; do
  URI[$b]=$("$RAMIFY" branch connect "$b")
  PW[$b]=$("$RAMIFY" branch get "$b" -o json | json '["password"]')
  PORT[$b]=$("$RAMIFY" branch get "$b" -o json | json '["port"]')
done

# Long enough for one archive_timeout (60 s) to pass while it writes: the volume is lost
# while transfers still commit.
SECONDS_OF_LOAD=${E2E_BACKUP_LOAD_SECONDS:-75}
echo "# transfers on all five branches for ${SECONDS_OF_LOAD}s, then the data directory is lost"
pids=()
for b in main f1 f2 f3 scratch; do
  pgbench -n -f "$WORK/transfer.sql" -c 1 -R 20 -T "$SECONDS_OF_LOAD" "${URI[$b]}" >"$WORK/pgbench-$b.log" 2>&1 &
  pids+=($!)
done
sleep $((SECONDS_OF_LOAD - 2))
declare -A BEFORE
for b in main f1 f2 f3; do BEFORE[$b]=$(q "${URI[$b]}" -c "SELECT count(*) FROM ledger"); done
LOST_AT=$(q "${URI[main]}" -c "SELECT extract(epoch FROM clock_timestamp())")
DAEMON_PID=$(json '["pid"]' <"$RAMIFY_DATA_DIR/local/daemon.json")
kill -9 "$DAEMON_PID"
pkill -9 -f "postgres -D $RAMIFY_DATA_DIR" || true
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
sleep 1
if mountpoint -q "$RAMIFY_DATA_DIR"; then umount "$RAMIFY_DATA_DIR" || umount -l "$RAMIFY_DATA_DIR"; fi
rm -rf "$RAMIFY_DATA_DIR" "$RAMIFY_DATA_DIR.xfs.img"
mkdir -p "$RAMIFY_DATA_DIR"

echo "# local up --recover on an empty data directory"
t0=$(date +%s.%N)
"$RAMIFY" local up "${XFS[@]}" "${BACKUP[@]}" --recover >/dev/null
names=$("$RAMIFY" branch list -o json | python3 -c 'import json,sys; print(" ".join(sorted(b["name"] for b in json.load(sys.stdin))))')
check "the four durable branches are back, the scratch fork is not ($names)" test "$names" = "f1 f2 f3 main"
for b in main f1 f2 f3; do
  check "$b keeps its port" test "$("$RAMIFY" branch get "$b" -o json | json '["port"]')" = "${PORT[$b]}"
  check "$b keeps its password" test "$("$RAMIFY" branch get "$b" -o json | json '["password"]')" = "${PW[$b]}"
  n=$(q "${URI[$b]}" -c "SELECT count(*) FROM ledger")
  check "$b answers its old connection string, $n of ${BEFORE[$b]} transfers back" test "$n" -gt 0
  check "$b: total balance constant" test "$(q "${URI[$b]}" -c "SELECT sum(balance) FROM accounts")" = 100000
  bad_accounts=$(q "${URI[$b]}" -c "SELECT count(*) FROM accounts a WHERE a.balance <> 1000
      - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)
      + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0)")
  check "$b: every balance agrees with the ledger" test "$bad_accounts" = 0
done
RTO=$(echo "$(date +%s.%N) - $t0" | bc)
LOST_WINDOW=$(q "${URI[main]}" -c "SELECT round($LOST_AT - extract(epoch FROM max(at)), 1) FROM ledger")
check "main lost at most the last archive_timeout of commits (${LOST_WINDOW}s; RPO 60 s + 1 s push + 2 s)" \
  python3 -c "import sys; sys.exit(0 if float('$LOST_WINDOW') <= 63 else 1)"
echo "recovery to the last branch's first query: ${RTO}s; main lost the last ${LOST_WINDOW}s of transfers ($(q "${URI[main]}" -c "SELECT count(*) FROM ledger") of ${BEFORE[main]} kept)"
q "${URI[main]}" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 0)"
check "main takes writes after recovery" true

"$RAMIFY" local down >/dev/null
echo "# $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
