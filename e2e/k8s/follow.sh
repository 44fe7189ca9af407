# Following an external Postgres (issue 15, spec.source.external). Sourced by run.sh;
# uses its helpers (k, step, fail, wait_for, client_pod, compute_image, pull_policy) and
# variables (SYS, NS_P, NS_V, WORK, PYTHON). Leaves nothing of its own behind but the
# namespaces, which run.sh's cleanup deletes.
#
# 1. "Production": Postgres 15 as a StatefulSet in $NS_P (the compute image, initdb at
#    first start), with a replication role, a pg_hba line for it, an application role
#    `bank` owning a database `bank` with a small bank (accounts, ledger), and transfers
#    committing in a loop, each one transaction that keeps the total balance.
# 2. `mirror` follows it: a DatabaseBranch with spec.source.external naming a Secret with
#    the URI (password in it) and a slot. It becomes Ready, Following=True, shows its lag;
#    its Secret names no login; it refuses writes; production's roles log in to it; its
#    restore is refused.
# 3. `preview`, a fork of mirror in $NS_V (mirror shares with it), under load, once
#    mirror's status shows its warm standby ready: served by it, Ready, the
#    bank's invariants hold, it holds every transfer committed on production before it
#    was asked for and none committed after it was Ready, and its own role writes.
# 4. `mirror-l` follows production logically (mode: logical, publication bank); its own
#    login reads and cannot write even out of read-only mode; its fork
#    `preview-l` in $NS_V is Ready, consistent, within the transfers committed around it,
#    writable (its sequences were advanced), and never runs the subscription.
# 5. All are deleted; mirror's deletion names the slot it leaves on production, and
#    mirror-l's slot is dropped there by the storage node.

PROD_PW="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')"
BANK_PW="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')"
WORKLOAD_PID=""
prod_sql() { # database sql...: psql on production's own socket, as its superuser
  local db="$1"; shift
  k -n "$NS_P" exec prod-db-0 -- psql -X -q -At -v ON_ERROR_STOP=1 -h /var/run/postgresql -U postgres -d "$db" "$@"
}
mirror_sql() { # sql...: through mirror's Service from a Pod, as production's role bank
  k -n "$NS_P" exec psql -- psql -X -q -At -v ON_ERROR_STOP=1 "$@"
}
bank_check() { # "name" sql-runner...: the bank's invariants; prints the ledger's length
  local what="$1"; shift
  local total wrong
  total=$("$@" -c 'SELECT sum(balance) FROM accounts')
  [ "$total" = 100000 ] || fail "$what: the total balance is $total, not 100000"
  wrong=$("$@" -c 'SELECT count(*) FROM accounts a WHERE a.balance <> 1000
      + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0)
      - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)')
  [ "$wrong" = 0 ] || fail "$what: $wrong balances disagree with the ledger"
  "$@" -c 'SELECT count(*) FROM ledger'
}

step "follow: production Postgres 15 (StatefulSet) with a replication role and a bank under load"
k create namespace "$NS_P" >/dev/null
k create namespace "$NS_V" >/dev/null
cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: prod-db, namespace: $NS_P}
spec:
  selector: {app: prod-db}
  ports: [{name: postgres, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: prod-db, namespace: $NS_P}
spec:
  serviceName: prod-db
  replicas: 1
  selector: {matchLabels: {app: prod-db}}
  template:
    metadata: {labels: {app: prod-db}}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: postgres
          image: $(compute_image)
          imagePullPolicy: $(pull_policy)
          command:
            - sh
            - -c
            - |
              set -e
              export PGDATA=/var/lib/postgresql/data/pgdata
              if [ ! -s "\$PGDATA/PG_VERSION" ]; then
                initdb -D "\$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
                echo "host replication replicator all scram-sha-256" >> "\$PGDATA/pg_hba.conf"
                echo "host all all all scram-sha-256" >> "\$PGDATA/pg_hba.conf"
              fi
              exec postgres -c listen_addresses='*' -c wal_level=logical -c max_wal_senders=10
          ports: [{name: postgres, containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -q, -h, 127.0.0.1]}
            periodSeconds: 1
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: run, mountPath: /var/run/postgresql}
      volumes:
        - {name: data, emptyDir: {}}
        - {name: run, emptyDir: {}}
EOF
k -n "$NS_P" rollout status statefulset/prod-db --timeout=120s >/dev/null
prod_sql postgres -c "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$PROD_PW'" \
  -c "CREATE ROLE bank LOGIN PASSWORD '$BANK_PW'" -c "CREATE DATABASE bank OWNER bank"
k -n "$NS_P" exec -i prod-db-0 -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -U bank -d bank >/dev/null <<'SQL'
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
CREATE TABLE ledger (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
                     amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
-- Transfers for `seconds`, each one committed transaction that keeps the total.
CREATE PROCEDURE transfers(seconds int) LANGUAGE plpgsql AS $$
DECLARE
  stop_at timestamptz := clock_timestamp() + make_interval(secs => seconds);
  s int; d int; a bigint;
BEGIN
  WHILE clock_timestamp() < stop_at LOOP
    s := 1 + floor(random() * 100); d := 1 + floor(random() * 100); a := 1 + floor(random() * 50);
    UPDATE accounts SET balance = balance - a WHERE id = s;
    UPDATE accounts SET balance = balance + a WHERE id = d;
    INSERT INTO ledger (src, dst, amount) VALUES (s, d, a);
    COMMIT;
    PERFORM pg_sleep(0.005);
  END LOOP;
END $$;
-- What a logical follower subscribes to, readable by the replication role.
CREATE PUBLICATION bank FOR TABLE accounts, ledger;
GRANT SELECT ON accounts, ledger TO replicator;
SQL
k -n "$NS_P" exec prod-db-0 -- psql -X -q -h /var/run/postgresql -U bank -d bank -c 'CALL transfers(300)' \
  >"$WORK/transfers.out" 2>&1 &
WORKLOAD_PID=$!
sleep 1
[ "$(prod_sql bank -c 'SELECT count(*) > 0 FROM ledger')" = t ] || fail "the transfers do not commit: $(cat "$WORK/transfers.out")"

step "follow: mirror follows production (spec.source.external, URI with password in a Secret)"
k -n "$NS_P" create secret generic prod-replication \
  --from-literal=uri="postgresql://replicator:$PROD_PW@prod-db.$NS_P.svc:5432/bank" >/dev/null
cat <<EOF | k apply -f - >/dev/null
apiVersion: ramify.dev/v1alpha1
kind: DatabaseBranch
metadata: {name: mirror, namespace: $NS_P}
spec:
  source:
    external:
      connectionSecretRef: {name: prod-replication, key: uri}
      slot: ramify_e2e
  sharing: {namespaces: [$NS_V]}
EOF
k -n "$NS_P" wait --for=condition=Ready databasebranch/mirror --timeout=240s >/dev/null \
  || fail "mirror is not Ready: $(k -n "$NS_P" get databasebranch mirror -o jsonpath='{.status.conditions}')"
wait_for "mirror streaming" '{.status.conditions[?(@.type=="Following")].status}' '^True$' 90 -n "$NS_P" databasebranch mirror
wait_for "mirror's lag figures" '{.status.following.lastReceivedAt}' 'Z$' 60 -n "$NS_P" databasebranch mirror
echo "    $(k -n "$NS_P" get databasebranch mirror -o jsonpath='{.status.conditions[?(@.type=="Following")].message}')"
echo "    lag $(k -n "$NS_P" get databasebranch mirror -o jsonpath='{.status.following.lagBytes} bytes, {.status.following.lagSeconds} s; last received {.status.following.lastReceivedAt}')"
[ "$(k -n "$NS_P" get databasebranch mirror -o jsonpath='{.status.following.source}')" = "postgresql://replicator@prod-db.$NS_P.svc:5432/bank" ] \
  || fail "mirror's status.following.source is not the URI without its password"
shown="$(k -n "$NS_P" get databasebranch mirror -o json; k -n "$SYS" get pods -l ramify.dev/branch-name=mirror -o yaml)"
case "$shown" in *"$PROD_PW"*) fail "mirror's object or compute Pod shows the replication password" ;; esac
keys=$(k -n "$NS_P" get secret mirror-postgres -o jsonpath='{.data}' | "$PYTHON" -c 'import json,sys; print(" ".join(k for k in sorted(json.load(sys.stdin)) if k != "ca.crt"))')
[ "$keys" = "database host port uri" ] || fail "mirror's Secret holds $keys, not database host port uri"
[ "$(k -n "$NS_P" get secret mirror-postgres -o jsonpath='{.data.database}' | base64 -d)" = bank ] \
  || fail "mirror's Secret does not name production's database"
# The initial copy ran confined to its staging directory (Landlock) inside the storage
# node's Pod: the node says so when it cannot.
if k -n "$SYS" logs statefulset/ramify-storage --tail=-1 | grep -q "cannot be confined"; then
  fail "the storage node copied mirror's source unconfined: $(k -n "$SYS" logs statefulset/ramify-storage --tail=-1 | grep "cannot be confined" | head -1)"
fi

step "follow: production's roles read mirror; mirror refuses writes and a restore"
cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: psql, namespace: $NS_P}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 999, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: psql
      image: $(compute_image)
      imagePullPolicy: $(pull_policy)
      command: ["sleep", "3600"]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      env:
        - {name: PGHOST, valueFrom: {secretKeyRef: {name: mirror-postgres, key: host}}}
        - {name: PGPORT, valueFrom: {secretKeyRef: {name: mirror-postgres, key: port}}}
        - {name: PGDATABASE, valueFrom: {secretKeyRef: {name: mirror-postgres, key: database}}}
        - {name: PGUSER, value: bank}
        - {name: PGPASSWORD, value: "$BANK_PW"}
EOF
k -n "$NS_P" wait --for=condition=Ready pod/psql --timeout=120s >/dev/null
seen=$(prod_sql bank -c 'SELECT count(*) FROM ledger')
deadline=$(( $(date +%s) + 60 ))
until [ "$(mirror_sql -c 'SELECT count(*) FROM ledger')" -ge "$seen" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "mirror did not catch up with production's $seen transfers in 60 s"
  sleep 0.5
done
n=$(bank_check "mirror" mirror_sql)
echo "    mirror holds $n transfers (production had $seen a moment before), invariants hold"
if out=$(mirror_sql -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)" 2>&1); then
  fail "mirror accepted a write"
fi
echo "$out" | grep -q "read-only transaction" || fail "mirror refused the write with: $out"
cat <<EOF | k apply -f - >/dev/null
apiVersion: ramify.dev/v1alpha1
kind: BranchRestore
metadata: {name: rewind-mirror, namespace: $NS_P}
spec:
  branch: mirror
  source: {time: "$(date -u -d '-5 seconds' +%Y-%m-%dT%H:%M:%SZ)"}
EOF
wait_for "mirror's restore refused" '{.status.conditions[?(@.type=="Succeeded")].reason}' '^Following$' 60 -n "$NS_P" branchrestore rewind-mirror
echo "    $(k -n "$NS_P" get branchrestore rewind-mirror -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].message}' | cut -c1-150)…"

step "follow: preview, a fork of mirror in $NS_V under load: consistent, and writable"
# The storage node keeps a warm standby beside mirror; once it has caught up, a fork at
# latest is its promotion and replays nothing of production's WAL.
wait_for "mirror's warm standby" '{.status.following.warmStandby}' '^ready$' 240 -n "$NS_P" databasebranch mirror
served=$(k -n "$SYS" logs statefulset/ramify-storage --tail=-1 | grep -c "fork served by the follower's warm standby" || true)
before=$(prod_sql bank -c 'SELECT count(*) FROM ledger')
# What production committed so far is on mirror before the fork is asked for.
deadline=$(( $(date +%s) + 60 ))
until [ "$(mirror_sql -c 'SELECT count(*) FROM ledger')" -ge "$before" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "mirror did not catch up with production's $before transfers in 60 s"
  sleep 0.2
done
cat <<EOF | k apply -f - >/dev/null
apiVersion: ramify.dev/v1alpha1
kind: DatabaseBranch
metadata: {name: preview, namespace: $NS_V}
spec:
  parent: {name: mirror, namespace: $NS_P}
EOF
k -n "$NS_V" wait --for=condition=Ready databasebranch/preview --timeout=240s >/dev/null \
  || fail "preview is not Ready: $(k -n "$NS_V" get databasebranch preview -o jsonpath='{.status.conditions}')"
after=$(prod_sql bank -c 'SELECT count(*) FROM ledger')
[ "$(k -n "$SYS" logs statefulset/ramify-storage --tail=-1 | grep -c "fork served by the follower's warm standby" || true)" -gt "$served" ] \
  || fail "preview was not served by mirror's warm standby: $(k -n "$SYS" logs statefulset/ramify-storage --tail=-1 | grep -i "warm" | tail -3)"
client_pod "$NS_V" preview
[ "$(psql_in "$NS_V" -c 'SELECT current_database()')" = bank ] || fail "preview's Secret does not name the bank database"
n=$(bank_check "preview" psql_in "$NS_V")
if [ "$n" -lt "$before" ] || [ "$n" -gt "$after" ]; then
  fail "preview holds $n transfers: not between the $before committed before it was asked for and the $after when it was Ready"
fi
echo "    preview forked at $(k -n "$NS_V" get databasebranch preview -o jsonpath='{.status.forkLsn}'): $n transfers ($before before the request, $after once Ready), invariants hold"
# A transfer of preview's own, dated 2000 so that it is told apart from production's.
psql_in "$NS_V" -c "UPDATE accounts SET balance = balance - 7 WHERE id = 1; UPDATE accounts SET balance = balance + 7 WHERE id = 2; INSERT INTO ledger (src, dst, amount, at) VALUES (1, 2, 7, '2000-01-01');" \
  || fail "preview's role cannot write the bank's tables"
[ "$(bank_check "preview after a write" psql_in "$NS_V")" = $((n + 1)) ] || fail "preview's write is not there"
[ "$(prod_sql bank -c "SELECT count(*) FROM ledger WHERE at < '2001-01-01'")" = 0 ] || fail "preview's write reached production"
[ "$(mirror_sql -c "SELECT count(*) FROM ledger WHERE at < '2001-01-01'")" = 0 ] || fail "preview's write reached mirror"
[ "$(psql_in "$NS_V" -c 'SELECT current_user')" = app ] || fail "preview's Secret does not log in as its own role"

step "follow: kubectl ramify branch create mirror-l --follow URI --mode logical; preview-l, its fork in $NS_V, under load"
# Every transfer committed before mirror-l is asked for is in its initial copy.
before=$(prod_sql bank -c 'SELECT count(*) FROM ledger')
# The password in a file, as a script keeps it off its command line.
printf '%s\n' "$PROD_PW" >"$WORK/prod.pass"
out=$(kr branch create mirror-l -n "$NS_P" --follow "postgresql://replicator@prod-db.$NS_P.svc:5432/bank" \
  --password-file "$WORK/prod.pass" --mode logical --publication bank --wait --timeout 240 2>&1) \
  || fail "kubectl ramify branch create mirror-l --follow: $out"
case "$out" in *"$PROD_PW"*) fail "kubectl ramify branch create --follow printed the password" ;; esac
[ "$(k -n "$NS_P" get databasebranch mirror-l -o jsonpath='{.spec.source.external.connectionSecretRef.name} {.spec.source.external.mode} {.spec.source.external.publication}')" = "mirror-l-source logical bank" ] \
  || fail "mirror-l's spec.source.external is not the CLI's Secret, mode and publication: $(k -n "$NS_P" get databasebranch mirror-l -o jsonpath='{.spec.source}')"
[ "$(k -n "$NS_P" get secret mirror-l-source -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')" = DatabaseBranch/mirror-l ] \
  || fail "the source Secret mirror-l-source is not owned by mirror-l"
[ "$(k -n "$NS_P" get secret mirror-l-source -o jsonpath='{.data.uri}' | base64 -d)" = "postgresql://replicator:$PROD_PW@prod-db.$NS_P.svc:5432/bank" ] \
  || fail "the source Secret mirror-l-source does not hold the URI with the password from --password-file"
k -n "$NS_P" patch databasebranch mirror-l --type merge -p "{\"spec\":{\"sharing\":{\"namespaces\":[\"$NS_V\"]}}}" >/dev/null
wait_for "mirror-l applying" '{.status.conditions[?(@.type=="Following")].status}' '^True$' 90 -n "$NS_P" databasebranch mirror-l
[ "$(k -n "$NS_P" get databasebranch mirror-l -o jsonpath='{.status.following.mode} {.status.following.publication}')" = "logical bank" ] \
  || fail "mirror-l's status.following does not show mode logical and publication bank"
lslot=$(k -n "$NS_P" get databasebranch mirror-l -o jsonpath='{.status.following.slot}')
[ "$(prod_sql postgres -c "SELECT slot_type FROM pg_replication_slots WHERE slot_name = '$lslot'")" = logical ] \
  || fail "production has no logical slot $lslot for mirror-l"
echo "    mirror-l: $(k -n "$NS_P" get databasebranch mirror-l -o jsonpath='{.status.conditions[?(@.type=="Following")].message}'), slot $lslot"
# Its own login (its Secret's uri) reads and never writes.
luri=$(k -n "$NS_P" get secret mirror-l-postgres -o jsonpath='{.data.uri}' | base64 -d)
[ "$(k -n "$NS_P" exec psql -- psql -X -q -At "$luri" -c 'SELECT count(*) > 0 FROM ledger')" = t ] \
  || fail "mirror-l's own login cannot read the ledger"
if out=$(k -n "$NS_P" exec psql -- psql -X -q -At "$luri" -c "SET default_transaction_read_only = off" -c "INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)" 2>&1); then
  fail "mirror-l's login wrote to the ledger"
fi
echo "$out" | grep -q "permission denied" || fail "mirror-l refused the write with: $out"
cat <<EOF | k apply -f - >/dev/null
apiVersion: ramify.dev/v1alpha1
kind: DatabaseBranch
metadata: {name: preview-l, namespace: $NS_V}
spec:
  parent: {name: mirror-l, namespace: $NS_P}
EOF
k -n "$NS_V" wait --for=condition=Ready databasebranch/preview-l --timeout=240s >/dev/null \
  || fail "preview-l is not Ready: $(k -n "$NS_V" get databasebranch preview-l -o jsonpath='{.status.conditions}')"
after=$(prod_sql bank -c 'SELECT count(*) FROM ledger')
k -n "$NS_V" delete pod psql --timeout=60s >/dev/null
client_pod "$NS_V" preview-l
[ "$(psql_in "$NS_V" -c 'SELECT current_database()')" = bank ] || fail "preview-l's Secret does not name the bank database"
n=$(bank_check "preview-l" psql_in "$NS_V")
if [ "$n" -lt "$before" ] || [ "$n" -gt "$after" ]; then
  fail "preview-l holds $n transfers: not between the $before committed before mirror-l was asked for and the $after when preview-l was Ready"
fi
psql_in "$NS_V" -c "INSERT INTO ledger (src, dst, amount, at) VALUES (3, 3, 0, '2000-01-01')" \
  || fail "preview-l's role cannot insert into the ledger (sequence not advanced past production's ids?)"
[ "$(psql_in "$NS_V" -c 'SHOW max_logical_replication_workers')" = 0 ] \
  || fail "preview-l may run the subscription its catalog carries"
[ "$(prod_sql bank -c "SELECT count(*) FROM ledger WHERE at < '2001-01-01'")" = 0 ] || fail "preview-l's write reached production"
echo "    preview-l: $n transfers ($before before mirror-l was asked for, $after once preview-l was Ready), invariants hold, writable"

step "follow: delete the branches; mirror's slot left on production is named, mirror-l's is dropped"
k -n "$NS_V" delete pod psql --wait=false >/dev/null
k -n "$NS_P" delete pod psql --wait=false >/dev/null
k -n "$NS_V" delete databasebranch preview preview-l --timeout=120s >/dev/null
k -n "$NS_P" delete databasebranch mirror mirror-l --timeout=120s >/dev/null
[ "$(prod_sql postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$lslot'")" = 0 ] \
  || fail "mirror-l's slot $lslot is still on production after its deletion"
# The source Secret the CLI wrote goes with the branch that owns it.
deadline=$(( $(date +%s) + 60 ))
while k -n "$NS_P" get secret mirror-l-source >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the source Secret mirror-l-source outlived mirror-l by 60 s"
  sleep 0.5
done
notes="$(k -n "$NS_P" get events.events.k8s.io --field-selector reason=Deleted -o jsonpath='{.items[*].note}')"
case "$notes" in *"pg_drop_replication_slot('ramify_e2e')"*) ;; *) fail "mirror's deletion does not name the slot it leaves: $notes" ;; esac
[ "$(prod_sql postgres -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ramify_e2e'")" = 1 ] \
  || fail "the slot ramify_e2e is not on production"
kill "$WORKLOAD_PID" 2>/dev/null; wait "$WORKLOAD_PID" 2>/dev/null || true; WORKLOAD_PID=""
k delete namespace "$NS_P" "$NS_V" --wait=false >/dev/null
