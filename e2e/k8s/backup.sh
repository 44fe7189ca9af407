# shellcheck shell=bash
# Sourced by e2e/k8s/run.sh once its own branches are gone (it uses its helpers k, step,
# fail, wait_for, compute_image, pull_policy, and $SYS, $WORK, $PYTHON, $RUN, $CAPS).
# Off-node durability on a cluster (issue 16):
# 1. SeaweedFS in a Pod (S3 over TLS, its own CA, keys in a Secret); the chart applied
#    again with storage.backup naming it, so the storage node restarts with a repository.
# 2. A durable root `bank` (durable by default) and three forks with spec.backup.enabled;
#    transfers commit on all four until the disaster.
# 3. The disaster: the storage node's Pod and its PVC are deleted (the compute Pods go
#    with them). The StatefulSet makes a new, empty volume; the node restores every
#    durable timeline from the bucket before it serves (storage.backup.recoverIfEmpty).
# 4. The four branches come back under the same names with the same Secrets and
#    passwords; the total balance is constant, every balance agrees with the ledger,
#    what survived is exactly a prefix of what was acknowledged, and the span of
#    acknowledged commits lost is within the RPO (the computes' archive_timeout, 60 s).
# 5. A second storage node; a fork of bank placed on it (spec.storageNode) is copied
#    through the bucket: consistent, writable, independent of bank.
# 6. The durable fork f3 moves to the second node (spec.storageNode changed) while
#    transfers run on it: the same Secret and password, every acknowledged transfer there.
# 7. f2 moves there and straight back before it ever ran there (the operator starts it
#    once so that its node can seal it): every row.
S3_IMAGE="${S3_IMAGE:-ramify.test/seaweedfs:dev}"
S3_KEY="e2e$RUN$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
S3_SECRET="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')"
RPO_SECS=60
WORKLOAD_SECS=${BACKUP_WORKLOAD_SECS:-75}
BRANCHES=(bank f1 f2 f3)

step "backups: SeaweedFS in a Pod over TLS, the chart given storage.backup"
k create namespace "$NS_S3" >/dev/null
bash e2e/s3-tls.sh "$WORK/s3" "seaweedfs.$NS_S3.svc" localhost
k -n "$NS_S3" create secret generic s3-tls --from-file=tls.crt="$WORK/s3/cert.pem" \
  --from-file=tls.key="$WORK/s3/key.pem" >/dev/null
for ns in "$NS_S3" "$SYS"; do
  k -n "$ns" create secret generic s3-keys --from-literal=AWS_ACCESS_KEY_ID="$S3_KEY" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$S3_SECRET" >/dev/null
done
k -n "$SYS" create secret generic s3-ca --from-file=ca.crt="$WORK/s3/ca.pem" >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: seaweedfs, namespace: $NS_S3, labels: {app: seaweedfs}}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: weed
      image: $S3_IMAGE
      imagePullPolicy: $(pull_policy)
      command: [/usr/local/bin/weed, mini, -dir=/data, -ip=127.0.0.1, -ip.bind=0.0.0.0,
        -s3.port=8333, -s3.cert.file=/tls/tls.crt, -s3.key.file=/tls/tls.key,
        -admin.ui=false, -admin.port.legacy=0, -webdav=false, -master.telemetry=false]
      env:
        - {name: S3_BUCKET, value: ramify-e2e}
        - {name: AWS_ACCESS_KEY_ID, valueFrom: {secretKeyRef: {name: s3-keys, key: AWS_ACCESS_KEY_ID}}}
        - {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s3-keys, key: AWS_SECRET_ACCESS_KEY}}}
      ports: [{containerPort: 8333}]
      readinessProbe: {tcpSocket: {port: 8333}, periodSeconds: 1}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: tmp, mountPath: /tmp}
        - {name: tls, mountPath: /tls, readOnly: true}
  volumes:
    - {name: data, emptyDir: {}}
    - {name: tmp, emptyDir: {}}
    - {name: tls, secret: {secretName: s3-tls}}
---
apiVersion: v1
kind: Service
metadata: {name: seaweedfs, namespace: $NS_S3}
spec:
  selector: {app: seaweedfs}
  ports: [{port: 8333, targetPort: 8333}]
YAML
k -n "$NS_S3" wait --for=condition=Ready pod/seaweedfs --timeout=120s >/dev/null \
  || fail "SeaweedFS did not start: $(k -n "$NS_S3" logs seaweedfs --tail=20 2>&1)"
# The bucket, made (if `weed mini` has not yet) and checked through a port-forward.
k -n "$NS_S3" port-forward pod/seaweedfs :8333 >"$WORK/s3/pf.out" 2>&1 &
S3_PF=$!
S3_PORT=""
for _ in $(seq 1 50); do
  S3_PORT=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/s3/pf.out" | head -1)
  [ -n "$S3_PORT" ] && break
  sleep 0.2
done
[ -n "$S3_PORT" ] || fail "port-forward to SeaweedFS did not start: $(cat "$WORK/s3/pf.out")"
signed() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$1" --aws-sigv4 aws:amz:us-east-1:s3 \
  --user "$S3_KEY:$S3_SECRET" --cacert "$WORK/s3/ca.pem" "https://localhost:$S3_PORT/$2"; }
code=""
for _ in $(seq 1 150); do
  code=$(signed GET "ramify-e2e?list-type=2" || true)
  [ "$code" = 200 ] && break
  [ "$code" = 404 ] && { signed PUT ramify-e2e >/dev/null || true; }
  sleep 0.2
done
kill "$S3_PF" 2>/dev/null || true
[ "$code" = 200 ] || fail "the bucket does not answer (HTTP $code)"
apply_chart_with_backup() { # storage replicas
  "$PYTHON" e2e/k8s/render.py charts/ramify "$SYS" --values "$VALUES" "${CAPS[@]}" \
    --set "storage.storageClassName=$STORAGE_CLASS" --set "storage.replicas=$1" \
    --set compute.maxResources.memory=2Gi --set "following.allowedHosts=[prod-db.$NS_P.svc]" \
    --set storage.backup.repository=s3://ramify-e2e/k8s \
    --set "storage.backup.endpoint=seaweedfs.$NS_S3.svc:8333" --set storage.backup.uriStyle=path \
    --set storage.backup.credentialsSecret=s3-keys --set storage.backup.caSecret.name=s3-ca \
    >"$WORK/ramify.yaml"
  k apply --server-side -n "$SYS" -f "$WORK/ramify.yaml" >/dev/null
}
apply_chart_with_backup 1
k -n "$SYS" rollout status statefulset/ramify-storage --timeout=180s >/dev/null
k -n "$SYS" logs ramify-storage-0 >"$WORK/storage.log" 2>&1 || true
grep -q "claimed the backup repository prefix" "$WORK/storage.log" \
  || fail "the storage node does not write the repository: $(tail -20 "$WORK/storage.log")"

step "backups: durable root bank and 3 durable forks, BackupHealthy"
k create namespace "$NS_K" >/dev/null
branch_yaml() { # name [parent]
  printf 'apiVersion: ramify.dev/v1alpha1\nkind: DatabaseBranch\nmetadata: {name: %s, namespace: %s}\nspec:\n  compute: {suspendAfter: 10m}\n' "$1" "$NS_K"
  [ -z "${2:-}" ] || printf '  parent: {name: %s}\n  backup: {enabled: true}\n' "$2"
}
bank_client() { # the client Pod, its environment the URIs of the branches' Secrets
  psql_pod "$NS_K" bank-client "$(for b in "$@"; do
    printf '        - {name: URI_%s, valueFrom: {secretKeyRef: {name: %s-postgres, key: uri}}}\n' "$b" "$b"
  done)"
}
on() { # branch psql-args...: psql on the branch from the client Pod
  local b=$1
  shift
  # shellcheck disable=SC2016 # expanded by the Pod's shell
  k -n "$NS_K" exec bank-client -- bash -c 'psql "$(printenv URI_'"$b"')" -X -q -At -v ON_ERROR_STOP=1 "$@"' _ "$@"
}
branch_yaml bank | k apply -f - >/dev/null
k -n "$NS_K" wait --for=condition=Ready databasebranch/bank --timeout=240s >/dev/null
bank_client bank
on bank -c "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
  CREATE TABLE ledger (branch text NOT NULL, n int NOT NULL, src int, dst int, amount int, PRIMARY KEY (branch, n));
  INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;"
for b in f1 f2 f3; do branch_yaml "$b" bank | k apply -f - >/dev/null; done
for b in f1 f2 f3; do
  k -n "$NS_K" wait --for=condition=Ready "databasebranch/$b" --timeout=240s >/dev/null
done
# The environment is read when a Pod starts: again, now that the forks' Secrets exist.
k -n "$NS_K" delete pod bank-client --wait=true >/dev/null
bank_client "${BRANCHES[@]}"
consistent() { # branch: the total balance is constant and every balance agrees with the ledger
  [ "$(on "$1" -c 'SELECT sum(balance) FROM accounts')" = 100000 ] || fail "$1: the total balance is not 100000"
  local bad
  bad=$(on "$1" -c "SELECT count(*) FROM accounts a WHERE balance <> 1000
      + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0)
      - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)")
  [ "$bad" = 0 ] || fail "$1: $bad balances disagree with the ledger"
}
for b in "${BRANCHES[@]}"; do
  wait_for "$b BackupHealthy" '{.status.conditions[?(@.type=="BackupHealthy")].status}' '^True$' 120 -n "$NS_K" databasebranch "$b"
done
wait_for "bank's first base backup" '{.status.conditions[?(@.type=="BackupHealthy")].message}' 'newest base backup' 180 -n "$NS_K" databasebranch bank
echo "    bank: $(k -n "$NS_K" get databasebranch bank -o jsonpath='{.status.conditions[?(@.type=="BackupHealthy")].message}')"
declare -A PW_BEFORE
for b in "${BRANCHES[@]}"; do
  PW_BEFORE[$b]=$(k -n "$NS_K" get secret "$b-postgres" -o jsonpath='{.data.password}')
done

step "backups: transfers on all four for ${WORKLOAD_SECS} s"
# Each transfer is one transaction; its number is logged with the time once COMMIT is
# acknowledged. A failed one is not retried under the same number.
cat >"$WORK/transfers.sh" <<'SH'
for b in "$@"; do
  (
    uri=$(printenv "URI_$b")
    n=0
    while [ ! -f /tmp/stop ]; do
      n=$((n + 1)) src=$((RANDOM % 100 + 1)) dst=$((RANDOM % 100 + 1)) amt=$((RANDOM % 50 + 1))
      if psql "$uri" -X -q -v ON_ERROR_STOP=1 -c "BEGIN; UPDATE accounts SET balance = balance - $amt WHERE id = $src; UPDATE accounts SET balance = balance + $amt WHERE id = $dst; INSERT INTO ledger VALUES ('$b', $n, $src, $dst, $amt); COMMIT" >/dev/null 2>&1; then
        echo "$n $(date +%s.%N)" >>"/tmp/acked-$b"
      else
        sleep 0.2
      fi
    done
  ) &
done
wait
SH
k -n "$NS_K" exec -i bank-client -- bash -s "${BRANCHES[@]}" <"$WORK/transfers.sh" >"$WORK/workload.log" 2>&1 &
WORKLOAD_PID=$!
sleep "$WORKLOAD_SECS"
k -n "$NS_K" exec bank-client -- touch /tmp/stop
wait "$WORKLOAD_PID" || true
WORKLOAD_PID=""
for b in "${BRANCHES[@]}"; do
  k -n "$NS_K" exec bank-client -- cat "/tmp/acked-$b" >"$WORK/acked-$b" || fail "no transfer committed on $b"
  echo "    $b: $(wc -l <"$WORK/acked-$b") transfers acknowledged"
done

step "backups: the storage node's Pod and PVC are deleted (a lost volume)"
T_LOST=$(date +%s.%N)
OLD_PVC=$(k -n "$SYS" get pvc data-ramify-storage-0 -o jsonpath='{.metadata.uid}')
k -n "$SYS" delete pvc data-ramify-storage-0 --wait=false >/dev/null
k -n "$SYS" delete pod ramify-storage-0 --grace-period=0 --force >/dev/null 2>&1
# The claim goes once no Pod uses it: the computes die with their volume.
deadline=$(($(date +%s) + 180))
while :; do
  uid=$(k -n "$SYS" get pvc data-ramify-storage-0 -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  [ "$uid" != "$OLD_PVC" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "the storage node's PVC was not deleted within 180 s"
  k -n "$SYS" delete pods -l app.kubernetes.io/component=compute --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  sleep 1
done
printf '    PVC %s gone after %.1f s\n' "$OLD_PVC" "$(echo "$(date +%s.%N) - $T_LOST" | bc)"

step "backups: the node recovers from the bucket onto a new volume; the branches come back"
deadline=$(($(date +%s) + 600))
until [ "$(k -n "$SYS" get pod ramify-storage-0 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the storage node did not come back: $(k -n "$SYS" logs ramify-storage-0 --tail=30 2>&1)"
  sleep 1
done
T_SERVING=$(date +%s.%N)
k -n "$SYS" logs ramify-storage-0 >"$WORK/storage.log" 2>&1 || true
grep "recovery from the backup repository finished" "$WORK/storage.log" | tail -1 \
  | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /'
grep -q "recovery from the backup repository finished" "$WORK/storage.log" \
  || fail "the new storage node did not recover: $(tail -20 "$WORK/storage.log")"
if grep -q "NOT RECOVERED" "$WORK/storage.log"; then
  fail "timelines not recovered: $(grep 'NOT RECOVERED' "$WORK/storage.log")"
fi
for b in "${BRANCHES[@]}"; do
  deadline=$(($(date +%s) + 240))
  until on "$b" -c "SELECT 1" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$b does not answer after the recovery: $(on "$b" -c 'SELECT 1' 2>&1 | tail -2)"
    sleep 1
  done
done
T_QUERY=$(date +%s.%N)
for b in "${BRANCHES[@]}"; do
  [ "$(k -n "$NS_K" get secret "$b-postgres" -o jsonpath='{.data.password}')" = "${PW_BEFORE[$b]}" ] \
    || fail "$b's password changed"
  consistent "$b"
  on "$b" -c "SELECT n FROM ledger WHERE branch = '$b' ORDER BY n" >"$WORK/kept-$b"
  # What survived is a prefix of what was acknowledged; what was lost is the window from
  # the first acknowledged commit missing to the loss of the volume, at most the RPO.
  lost=$("$PYTHON" - "$WORK/acked-$b" "$WORK/kept-$b" "$T_LOST" 2>&1 <<'PY'
import sys
acked = [(int(n), float(t)) for n, t in (l.split() for l in open(sys.argv[1]) if l.strip())]
kept = {int(l) for l in open(sys.argv[2]) if l.strip()}
t_lost = float(sys.argv[3])
top = max(kept, default=0)
holes = [n for n, _ in acked if n <= top and n not in kept]
if holes:
    sys.exit(f"acknowledged transfers {holes[:5]} are missing below the newest kept one ({top})")
lost = [(n, t) for n, t in acked if n not in kept]
window = t_lost - lost[0][1] if lost else 0.0
print(f"{len(lost)} {window:.1f}")
PY
  ) || fail "$b: $lost"
  read -r nlost window <<<"$lost"
  echo "    $b: $(wc -l <"$WORK/kept-$b") of its transfers kept, $nlost acknowledged ones lost (the last $window s before the volume was lost)"
  [ "$(echo "$window <= $RPO_SECS + 10" | bc)" = 1 ] \
    || fail "$b lost the last $window s of acknowledged commits, more than the RPO ($RPO_SECS s)"
  on "$b" -c "UPDATE accounts SET balance = balance WHERE id = 1" >/dev/null || fail "$b takes no writes"
done
printf '    node serving %.1f s, every branch answering %.1f s after the volume was lost\n' \
  "$(echo "$T_SERVING - $T_LOST" | bc)" "$(echo "$T_QUERY - $T_LOST" | bc)"
for b in "${BRANCHES[@]}"; do
  wait_for "$b BackupHealthy after the recovery" '{.status.conditions[?(@.type=="BackupHealthy")].status}' '^True$' 120 -n "$NS_K" databasebranch "$b"
done

step "backups: a second storage node; a fork of bank placed there is copied through the bucket"
apply_chart_with_backup 2
k -n "$SYS" rollout status statefulset/ramify-storage --timeout=300s >/dev/null \
  || fail "the second storage node did not start: $(k -n "$SYS" logs ramify-storage-1 --tail=20 2>&1)"
printf 'apiVersion: ramify.dev/v1alpha1\nkind: DatabaseBranch\nmetadata: {name: nowhere, namespace: %s}\nspec: {parent: {name: bank}, storageNode: ramify-storage-9}\n' "$NS_K" \
  | k apply -f - >/dev/null
wait_for "a fork on an unknown node waits, naming the nodes" '{.status.conditions[?(@.type=="Ready")].reason}' '^UnknownStorageNode$' 60 -n "$NS_K" databasebranch nowhere
k -n "$NS_K" delete databasebranch nowhere --wait=false >/dev/null
T_FAR=$(date +%s.%N)
printf 'apiVersion: ramify.dev/v1alpha1\nkind: DatabaseBranch\nmetadata: {name: far, namespace: %s}\nspec:\n  parent: {name: bank}\n  storageNode: ramify-storage-1\n  compute: {suspendAfter: 10m}\n' "$NS_K" \
  | k apply -f - >/dev/null
k -n "$NS_K" wait --for=condition=Ready databasebranch/far --timeout=300s >/dev/null \
  || fail "far is not Ready: $(k -n "$NS_K" get databasebranch far -o jsonpath='{.status.conditions}')"
printf '    far Ready %.1f s after it was applied\n' "$(echo "$(date +%s.%N) - $T_FAR" | bc)"
[ "$(k -n "$NS_K" get databasebranch far -o jsonpath='{.status.timeline.storageNode}')" = ramify-storage-1 ] \
  || fail "far is not on ramify-storage-1: $(k -n "$NS_K" get databasebranch far -o jsonpath='{.status.timeline}')"
k -n "$NS_K" delete pod bank-client --wait=true >/dev/null
bank_client "${BRANCHES[@]}" far
deadline=$(($(date +%s) + 120))
until on far -c "SELECT 1" >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "far does not answer: $(on far -c 'SELECT 1' 2>&1 | tail -2)"
  sleep 1
done
consistent far
far_n=$(on far -c "SELECT count(*) FROM ledger WHERE branch = 'bank'")
bank_n=$(on bank -c "SELECT count(*) FROM ledger WHERE branch = 'bank'")
if [ "$far_n" -eq 0 ] || [ "$far_n" -gt "$bank_n" ]; then fail "far has $far_n of bank's $bank_n transfers"; fi
echo "    far: $far_n of bank's $bank_n transfers (bank as of its last archived WAL)"
on far -c "INSERT INTO ledger VALUES ('far', 1, 1, 1, 0)" >/dev/null || fail "far takes no writes"
[ "$(on bank -c "SELECT count(*) FROM ledger WHERE branch = 'far'")" = 0 ] || fail "far's write reached bank"

step "backups: f3 moves to the second storage node while transfers run on it"
# Transfers on f3 numbered apart from the first run's; every acknowledged one must be
# there after the move (a move loses no commit). While f3 moves, they fail and retry.
cat >"$WORK/moving.sh" <<'SH'
uri=$(printenv URI_f3)
rm -f /tmp/stop-move /tmp/acked-move
n=0
while [ ! -f /tmp/stop-move ]; do
  n=$((n + 1)) src=$((RANDOM % 100 + 1)) dst=$((RANDOM % 100 + 1)) amt=$((RANDOM % 50 + 1))
  if psql "$uri" -X -q -v ON_ERROR_STOP=1 -c "BEGIN; UPDATE accounts SET balance = balance - $amt WHERE id = $src; UPDATE accounts SET balance = balance + $amt WHERE id = $dst; INSERT INTO ledger VALUES ('move', $n, $src, $dst, $amt); COMMIT" >/dev/null 2>&1; then
    echo "$n $(date +%s.%N)" >>/tmp/acked-move
  else
    sleep 0.2
  fi
done
SH
k -n "$NS_K" exec -i bank-client -- bash -s <"$WORK/moving.sh" >"$WORK/moving.log" 2>&1 &
MOVE_PID=$!
sleep 5
T_MOVE=$(date +%s.%N)
# The CLI sets spec.storageNode and waits until f3 is Ready there, the old copy deleted.
kr branch move f3 --storage-node ramify-storage-1 -n "$NS_K" --timeout 5m 2>"$WORK/move.err" | sed 's/^/    /' \
  || fail "kubectl ramify branch move f3 failed: $(tail -3 "$WORK/move.err")"
T_MOVED=$(date +%s.%N)
[ "$(k -n "$NS_K" get databasebranch f3 -o jsonpath='{.status.timeline.storageNode}')" = ramify-storage-1 ] \
  || fail "f3 is not on ramify-storage-1: $(k -n "$NS_K" get databasebranch f3 -o jsonpath='{.status.timeline}')"

# Transfers go on, on the new node.
deadline=$(($(date +%s) + 120))
until [ "$(k -n "$NS_K" exec bank-client -- tail -1 /tmp/acked-move 2>/dev/null | cut -d' ' -f2 | cut -d. -f1)" -gt "${T_MOVED%.*}" ] 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no transfer committed on f3 after its move: $(tail -3 "$WORK/moving.log")"
  sleep 1
done
k -n "$NS_K" exec bank-client -- touch /tmp/stop-move
wait "$MOVE_PID" || true
k -n "$NS_K" exec bank-client -- cat /tmp/acked-move >"$WORK/acked-move" || fail "no transfer committed on f3"
[ -z "$(k -n "$NS_K" get databasebranch f3 -o jsonpath='{.status.moving}')" ] \
  || fail "f3's move is not finished (the old node's copy not deleted): $(k -n "$NS_K" get databasebranch f3 -o jsonpath='{.status.moving}')"
[ "$(k -n "$NS_K" get secret f3-postgres -o jsonpath='{.data.password}')" = "${PW_BEFORE[f3]}" ] \
  || fail "f3's password changed with the move"
consistent f3
on f3 -c "SELECT n FROM ledger WHERE branch = 'move' ORDER BY n" >"$WORK/kept-move"
moved=$("$PYTHON" - "$WORK/acked-move" "$WORK/kept-move" "$T_MOVE" 2>&1 <<'PY'
import sys
acked = [(int(n), float(t)) for n, t in (l.split() for l in open(sys.argv[1]) if l.strip())]
kept = {int(l) for l in open(sys.argv[2]) if l.strip()}
lost = [n for n, _ in acked if n not in kept]
if lost:
    sys.exit(f"acknowledged transfers {lost[:5]} ({len(lost)} in all) are not on f3 after its move")
t_move = float(sys.argv[3])
before = [t for _, t in acked if t <= t_move]
times = sorted(t for _, t in acked)
gap = max((b - a for a, b in zip(times, times[1:])), default=float("nan"))
print(f"{len(acked)} {len(before)} {gap:.1f}")
PY
) || fail "$moved"
read -r n_acked n_before gap <<<"$moved"
printf '    f3 on ramify-storage-1, Ready %.1f s after the patch; all %s acknowledged transfers there (%s before the move was asked for); the longest stretch without a commit %s s\n' \
  "$(echo "$T_MOVED - $T_MOVE" | bc)" "$n_acked" "$n_before" "$gap"
wait_for "f3 BackupHealthy on its new node" '{.status.conditions[?(@.type=="BackupHealthy")].status}' '^True$' 240 -n "$NS_K" databasebranch f3

step "backups: f2 moves to the second node and straight back, never started there"
# Its copy on ramify-storage-1 has not run when it leaves again (nothing connects): its
# WAL ends on a newer Postgres timeline than its pg_control names, so the operator starts
# it there once before the node seals it.
f2_rows=$(on f2 -c "SELECT count(*) FROM ledger")
for node in ramify-storage-1 ramify-storage-0; do
  kr branch move f2 --storage-node "$node" -n "$NS_K" --timeout 5m 2>"$WORK/move.err" | sed 's/^/    /' \
    || fail "kubectl ramify branch move f2 --storage-node $node failed: $(tail -3 "$WORK/move.err")"
  [ "$(k -n "$NS_K" get databasebranch f2 -o jsonpath='{.status.timeline.storageNode}')" = "$node" ] \
    || fail "f2 is not on $node: $(k -n "$NS_K" get databasebranch f2 -o jsonpath='{.status.timeline}')"
done
k -n "$NS_K" get events.events.k8s.io --field-selector reason=StartedForMove -o jsonpath='{.items[*].note}' | grep -q "on ramify-storage-1 once" \
  || fail "the operator did not start f2 once on ramify-storage-1 before sealing it there"
consistent f2
[ "$(on f2 -c "SELECT count(*) FROM ledger")" = "$f2_rows" ] || fail "f2 lost ledger rows in its two moves"
echo "    f2: there and back with all $f2_rows ledger rows (started once on ramify-storage-1 to be sealed)"
