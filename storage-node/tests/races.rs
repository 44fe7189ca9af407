//! Races of the storage node against what runs beside it, on real Postgres: a compute woken
//! in the middle of the clone of its stopped PGDATA, a client that goes away mid-create
//! and retries, two snapshots of one name at once, and many creates, deletes and
//! snapshots at once on one busy parent.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use ramify_api::{At, CreateTimeline, TimelineId, TimelineInfo, TimelineState};
use ramify_testkit::Compute;

/// The stopped clone stalls when it reaches `base/` (the relation files): whatever comes
/// before it in the directory has been cloned, the rest has not.
const MID_CLONE: (&str, &str) = ("RAMIFY_FAILPOINTS", "clone.stopped.mid=sleep(5000)");

/// pgbench scale of the parents: 500,000 accounts.
const SCALE: &str = "5";
const ACCOUNTS: i64 = 500_000;

/// Every account's balance minus what the ledger says was added to it, hashed: the
/// parent's accounts before any ledgered write. Equal on a copy that holds exactly a prefix
/// of the ledgered transactions (all of each one's writes, none after it).
async fn accounts_before_ledger(c: &Compute) -> String {
    query_text(
        c,
        "SELECT md5(string_agg(a.aid || ':' || a.bid || ':' || (a.abalance - coalesce(l.s, 0)) || ':' || a.filler, ',' ORDER BY a.aid)) \
         FROM pgbench_accounts a LEFT JOIN (SELECT aid, sum(delta) AS s FROM ledger GROUP BY aid) l USING (aid)",
    )
    .await
}

/// Ledger rows, after checking they are numbered 1..n without a gap.
async fn ledger_rows(c: &Compute) -> i64 {
    let gaps = c
        .query_i64("SELECT coalesce(max(i), 0) - count(*) FROM ledger")
        .await
        .expect("ledger");
    assert_eq!(gaps, 0, "the ledger has gaps: a torn copy of its table");
    count(c, "ledger").await
}

/// Writes numbered transactions (one account update and its ledger row each) with a
/// CHECKPOINT every 20, so the relation files on disk change, until `stop` is set.
/// Returns how many it committed.
fn writer(c: &Compute, first: i64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let conn_str = c.conn_str();
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .expect("writer connects");
        tokio::spawn(conn);
        let mut i = first;
        while !stop.load(Ordering::SeqCst) {
            let aid = (i * 7919) % ACCOUNTS + 1;
            client
                .batch_execute(&format!(
                    "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {aid}; \
                     INSERT INTO ledger VALUES ({i}, {aid}, {i}); COMMIT"
                ))
                .await
                .expect("ledgered write");
            if i % 20 == 0 {
                client
                    .batch_execute("CHECKPOINT")
                    .await
                    .expect("checkpoint");
            }
            i += 1;
        }
        i - first
    })
}

/// A parent with pgbench data and an empty ledger, its compute running, and the hash of
/// its accounts.
async fn ledgered_parent(env: &Env) -> (TimelineInfo, Compute, String) {
    let (root, rc) = env.root().await;
    rc.pgbench(&["-i", "-s", SCALE, "-q", "postgres"])
        .await
        .expect("pgbench -i");
    rc.execute(
        "CREATE TABLE ledger (i bigint PRIMARY KEY, aid int NOT NULL, delta bigint NOT NULL)",
    )
    .await
    .expect("ledger table");
    let before = accounts_before_ledger(&rc).await;
    (root, rc, before)
}

/// A branch made from the suspended parent while it was woken: starts, passes amcheck,
/// and holds the parent's state at one point (the accounts match the ledger's prefix).
async fn check_branch(env: &Env, tl: &TimelineInfo, before: &str, what: &str) -> i64 {
    let mut c = env.start(tl).await;
    amcheck(&c).await;
    let rows = ledger_rows(&c).await;
    assert_eq!(
        accounts_before_ledger(&c).await,
        before,
        "{what}: the accounts are not the parent's at any one point (ledger has {rows} rows)"
    );
    c.stop().await.expect("stop");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_during_the_clone_of_a_suspended_branch() {
    let env = Env::new_with_env(
        6 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
        &[MID_CLONE],
    )
    .await;
    let (root, mut rc, before) = ledgered_parent(&env).await;
    let mut next = 1;

    // A fork at latest of the suspended branch; the branch wakes while its PGDATA is being
    // cloned and commits (and checkpoints) at once.
    rc.stop().await.expect("suspend the parent");
    let client = env.client.clone();
    let req = CreateTimeline {
        id: None,
        parent: Some(root.id),
        at: Some(At::Latest),
        follow: None,
        backup: None,
        from_backup: None,
    };
    let fork = tokio::spawn(async move { client.create_timeline(&req).await });
    sleep_ms(300).await;
    rc.restart().await.expect("wake the parent");
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&rc, next, stop.clone());
    let fork = fork
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("fork: {e}\nnode log:\n{}", env.node.log_tail()))
        .value;
    stop.store(true, Ordering::SeqCst);
    next += w.await.unwrap();
    let rows = check_branch(&env, &fork, &before, "fork of a branch woken mid-clone").await;
    eprintln!("fork: {rows} of the {} ledgered writes", next - 1);
    // The race happened: the branch holds writes of the woken compute.
    assert!(
        rows > 0,
        "the fork holds none of the woken compute's writes"
    );

    // A snapshot of the suspended branch, woken the same way; a fork at that snapshot.
    rc.stop().await.expect("suspend the parent again");
    let client = env.client.clone();
    let snap = tokio::spawn(async move { client.create_snapshot(root.id, "woken").await });
    sleep_ms(300).await;
    rc.restart().await.expect("wake the parent");
    stop.store(false, Ordering::SeqCst);
    let w = writer(&rc, next, stop.clone());
    let snap = snap
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("snapshot: {e}\nnode log:\n{}", env.node.log_tail()));
    stop.store(true, Ordering::SeqCst);
    next += w.await.unwrap();
    let at_snap = env.fork(root.id, At::Snapshot(snap.name.clone())).await;
    let rows = check_branch(&env, &at_snap, &before, "fork at a snapshot taken mid-wake").await;
    eprintln!("snapshot: {rows} of the {} ledgered writes", next - 1);
    assert!(
        rows > 0,
        "the snapshot holds none of the woken compute's writes"
    );
    let woke = env
        .node
        .log()
        .matches("the compute woke while its stopped PGDATA was being cloned")
        .count();
    assert_eq!(woke, 2, "the node saw a wake during both clones");

    // The parent itself is intact too.
    amcheck(&rc).await;
    assert_eq!(accounts_before_ledger(&rc).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_answers_only_once_the_timeline_exists() {
    let env = Env::new_with_env(
        6 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
        &[MID_CLONE],
    )
    .await;
    let (root, mut rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "1", "-q", "postgres"])
        .await
        .expect("pgbench -i");
    let before = table_checksum(&rc, "pgbench_accounts").await;
    // Suspended: the fork clones the stopped PGDATA, which stalls mid-way.
    rc.stop().await.expect("suspend the parent");

    let id = TimelineId::new_v4();
    let req = CreateTimeline {
        id: Some(id),
        parent: Some(root.id),
        at: Some(At::Latest),
        follow: None,
        backup: None,
        from_backup: None,
    };
    // The client goes away mid-fork (an operator restarting), then retries at once.
    let client = env.client.clone();
    let r = req.clone();
    let first = tokio::spawn(async move { client.create_timeline(&r).await });
    sleep_ms(500).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let t0 = Instant::now();
    let tl = env
        .client
        .create_timeline(&req)
        .await
        .unwrap_or_else(|e| panic!("retry: {e}\nnode log:\n{}", env.node.log_tail()))
        .value;
    eprintln!("the retry answered after {:?}", t0.elapsed());
    assert_eq!(tl.id, id);
    assert_eq!(tl.state, TimelineState::Ready);
    assert!(
        std::path::Path::new(&tl.pgdata)
            .join("PG_VERSION")
            .is_file(),
        "the retry answered before the timeline's PGDATA existed ({})",
        tl.pgdata
    );
    let mut c = env.start(&tl).await;
    assert_eq!(table_checksum(&c, "pgbench_accounts").await, before);
    amcheck(&c).await;
    c.stop().await.expect("stop");

    // Listed once, and deleting it works.
    let listed = env.client.list_timelines().await.expect("list");
    assert_eq!(listed.iter().filter(|t| t.id == id).count(), 1);
    env.client.delete_timeline(id, false).await.expect("delete");
}

/// What one of the concurrent workers did.
#[derive(Debug)]
struct Done {
    fork: TimelineId,
    fork_deleted: bool,
    snapshot: String,
    snapshot_deleted: bool,
    at_snapshot: Option<TimelineId>,
}

/// pgbench's own invariant: every transaction adds the same delta to one account, one
/// teller, one branch and writes it to the history, so the four sums agree on any copy
/// that holds whole transactions (and only those).
async fn pgbench_sums_agree(c: &Compute, what: &str) {
    let sums = query_text(
        c,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) \
         || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    )
    .await;
    let parts: Vec<&str> = sums.split(' ').collect();
    assert!(
        parts.iter().all(|p| *p == parts[0]),
        "{what}: pgbench sums disagree (accounts, tellers, branches, history): {sums}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_deletes_and_snapshots_on_one_busy_parent() {
    const WORKERS: usize = 8;
    let env = Env::new(
        6 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
    )
    .await;
    let (root, mut rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "2", "-q", "postgres"])
        .await
        .expect("pgbench -i");

    // pgbench load on the parent while 8 workers each fork it, snapshot it, fork at that
    // snapshot, and delete some of what they made, all at once.
    let load = rc.pgbench(&["-n", "-c", "2", "-T", "25", "postgres"]);
    let ops = async {
        let mut set = tokio::task::JoinSet::new();
        for k in 0..WORKERS {
            let client = env.client.clone();
            let parent = root.id;
            set.spawn(async move {
                let created = |what: &str, r: Result<TimelineInfo, ramify_api::ClientError>| {
                    r.unwrap_or_else(|e| panic!("worker {k}: {what}: {e}"))
                };
                let fork = client
                    .create_timeline(&CreateTimeline {
                        id: None,
                        parent: Some(parent),
                        at: Some(At::Latest),
                        follow: None,
                        backup: None,
                        from_backup: None,
                    })
                    .await
                    .map(|c| c.value);
                let fork = created("fork at latest", fork).id;
                let snapshot = format!("w{k}");
                client
                    .create_snapshot(parent, &snapshot)
                    .await
                    .unwrap_or_else(|e| panic!("worker {k}: snapshot: {e}"));
                let at_snapshot = if k % 4 == 3 {
                    let r = client
                        .create_timeline(&CreateTimeline {
                            id: None,
                            parent: Some(parent),
                            at: Some(At::Snapshot(snapshot.clone())),
                            follow: None,
                            backup: None,
                            from_backup: None,
                        })
                        .await
                        .map(|c| c.value);
                    Some(created("fork at the snapshot", r).id)
                } else {
                    None
                };
                let fork_deleted = k % 2 == 0;
                if fork_deleted {
                    client
                        .delete_timeline(fork, false)
                        .await
                        .unwrap_or_else(|e| panic!("worker {k}: delete fork: {e}"));
                }
                let snapshot_deleted = k % 4 == 1;
                if snapshot_deleted {
                    client
                        .delete_snapshot(parent, &snapshot)
                        .await
                        .unwrap_or_else(|e| panic!("worker {k}: delete snapshot: {e}"));
                }
                Done {
                    fork,
                    fork_deleted,
                    snapshot,
                    snapshot_deleted,
                    at_snapshot,
                }
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            done.push(r.unwrap_or_else(|e| panic!("a worker failed: {e}")));
        }
        done
    };
    let (load, done) = tokio::join!(load, ops);
    load.expect("pgbench load on the parent");
    assert_eq!(done.len(), WORKERS);

    // What the API lists is exactly what is on disk, and every branch kept is sound.
    let data = std::path::Path::new(&root.pgdata)
        .parent()
        .and_then(|t| t.parent())
        .expect("timelines directory")
        .to_path_buf();
    let listed = env.client.list_timelines().await.expect("list");
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&data)
        .expect("timelines directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listed_ids: std::collections::BTreeSet<String> =
        listed.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(
        on_disk, listed_ids,
        "timeline directories on disk and timelines listed differ"
    );
    let mut kept = Vec::new();
    for d in &done {
        let present = listed.iter().any(|t| t.id == d.fork);
        assert_eq!(present, !d.fork_deleted, "fork {:?}", d);
        if d.fork_deleted {
            let e = env.client.get_timeline(d.fork).await.unwrap_err();
            assert_eq!(e.status(), Some(reqwest::StatusCode::NOT_FOUND), "{e}");
        } else {
            kept.push(d.fork);
        }
        kept.extend(d.at_snapshot);
    }
    let snaps: std::collections::BTreeSet<String> =
        env.snapshot_names(root.id).await.into_iter().collect();
    let snap_dirs: std::collections::BTreeSet<String> =
        std::fs::read_dir(data.join(root.id.to_string()).join("snapshots"))
            .expect("snapshots directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(
        snaps, snap_dirs,
        "snapshots listed and snapshot directories on disk differ"
    );
    for d in &done {
        assert_eq!(
            snaps.contains(&d.snapshot),
            !d.snapshot_deleted,
            "snapshot {}",
            d.snapshot
        );
    }
    for id in kept {
        let tl = env.get(id).await;
        let mut c = env.start(&tl).await;
        amcheck(&c).await;
        pgbench_sums_agree(&c, &format!("branch {id}")).await;
        c.stop().await.expect("stop");
    }
    pgbench_sums_agree(&rc, "the parent").await;
    amcheck(&rc).await;
    rc.stop().await.expect("stop the parent");
}

/// Two requests for a snapshot of one name on one timeline at once: exactly one takes it,
/// the other is refused with 409 naming it, the snapshot taken is whole, and no staging
/// directory is left behind (the two once shared `snapshots/.creating-<name>`, each
/// removing what the other had staged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshots_of_one_name_at_once() {
    // Each take stalls once it has made its staging directory, so the two overlap.
    let env = Env::new_with_env(
        2 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
        &[("RAMIFY_FAILPOINTS", "snapshot.after_staging=sleep(2000)")],
    )
    .await;
    let (root, mut rc) = env.root().await;
    rc.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .expect("create t");

    let (a, b) = tokio::join!(
        env.client.create_snapshot(root.id, "s1"),
        env.client.create_snapshot(root.id, "s1")
    );
    let (taken, refused) = match (a, b) {
        (Ok(t), Err(r)) | (Err(r), Ok(t)) => (t, r),
        (a, b) => panic!(
            "exactly one of two snapshots named s1 must be taken, got {a:?} and {b:?}\nnode log:\n{}",
            env.node.log_tail()
        ),
    };
    assert_eq!(taken.name, "s1");
    assert_eq!(
        refused.status().map(|s| s.as_u16()),
        Some(409),
        "the second take must be a conflict: {refused}"
    );
    let msg = refused.to_string();
    assert!(
        msg.contains("\"s1\"") && msg.contains("is being taken"),
        "the refusal must name the snapshot being taken: {msg}"
    );

    let listed: Vec<String> = env
        .snapshot_names(root.id)
        .await
        .into_iter()
        .filter(|n| n == "s1")
        .collect();
    assert_eq!(listed, ["s1"], "s1 is listed once");
    let snaps = std::path::Path::new(&root.pgdata)
        .parent()
        .expect("pgdata has a parent")
        .join("snapshots");
    let staging: Vec<String> = std::fs::read_dir(&snaps)
        .expect("snapshots directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".creating-"))
        .collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");

    // The snapshot that was taken is whole: a fork of it starts with t's rows.
    let fork = env.fork(root.id, At::Snapshot("s1".into())).await;
    let mut fc = env.start(&fork).await;
    assert_eq!(count(&fc, "t").await, 1000);
    fc.stop().await.expect("stop the fork");
    rc.stop().await.expect("stop the root");
    env.delete_all(&[fork.id, root.id], false).await;
}
