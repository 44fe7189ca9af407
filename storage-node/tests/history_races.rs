//! Forks that read a timeline's history (a snapshot and the archived WAL after it) while
//! that history is being removed: a snapshot deleted by its user, and restore-window GC
//! removing the fork's base snapshot and WAL. The fork's clone of the snapshot stalls
//! half-way (failpoint), the removal runs meanwhile. Every fork that succeeds must start
//! and pass pg_amcheck with its source's rows; one that cannot be served must say so
//! with 404 or 409 — never a fork with relation or pg_xact files missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ramify_api::{At, ClientError, CreateRestorePoint, TimelineInfo};

/// The clone of a snapshot into a fork stalls at its 300th entry (half-way through an
/// initdb'd or pgbench scale 1 PGDATA) for `ms`.
fn stall(ms: u64) -> (&'static str, String) {
    (
        "RAMIFY_FAILPOINTS",
        format!("fork.snapshot.clone_entry=300*sleep({ms})"),
    )
}

/// A fork that succeeded is whole: it starts, passes pg_amcheck and holds `expected`;
/// one that failed was refused clearly.
async fn judge(env: &Env, fork: Result<TimelineInfo, ClientError>, expected: &str) -> bool {
    match fork {
        Ok(tl) => {
            let mut c = env.start(&tl).await;
            amcheck(&c).await;
            assert_eq!(
                table_checksum(&c, "pgbench_accounts").await,
                expected,
                "the fork's rows differ from its source's"
            );
            c.stop().await.unwrap();
            true
        }
        Err(e) => {
            assert!(
                matches!(e.code(), Some("not_found") | Some("conflict")),
                "a fork that cannot be served must be refused with 404 or 409, got: {e}\nnode log:\n{}",
                env.node.log_tail()
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_at_a_snapshot_while_it_is_deleted() {
    let (k, v) = stall(6000);
    let env = Env::new_with_env(
        4 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
        &[(k, &v)],
    )
    .await;
    let (root, _rc, expected) = env.pgbench_root_with_s1().await;

    let client = env.client.clone();
    let req = ramify_api::CreateTimeline {
        id: None,
        parent: Some(root.id),
        at: Some(At::Snapshot("s1".into())),
        follow: None,
        backup: None,
        from_backup: None,
    };
    let fork = tokio::spawn(async move { client.create_timeline(&req).await.map(|c| c.value) });
    // The fork is in the middle of cloning s1 now.
    sleep_ms(2000).await;
    env.client
        .delete_snapshot(root.id, "s1")
        .await
        .expect("delete the snapshot");
    let served = judge(&env, fork.await.unwrap(), &expected).await;
    eprintln!("fork during the snapshot's deletion: served = {served}");

    // Once it is deleted, a fork at it is a clear 404.
    let e = env
        .client
        .create_timeline(&ramify_api::CreateTimeline {
            id: None,
            parent: Some(root.id),
            at: Some(At::Snapshot("s1".into())),
            follow: None,
            backup: None,
            from_backup: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");
    assert!(!std::path::Path::new(&root.pgdata)
        .parent()
        .unwrap()
        .join("snapshots/s1")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_at_a_time_while_gc_removes_its_base() {
    let (k, v) = stall(8000);
    let env = Env::new_with_env(
        4 << 30,
        &[
            "--restore-window",
            "4s",
            "--housekeeping-interval",
            "1s",
            "--snapshot-interval",
            "0",
            "--snapshot-wal-bytes",
            "0",
        ],
        &[(k, &v)],
    )
    .await;
    let (root, rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "1", "-q", "postgres"])
        .await
        .expect("pgbench -i");
    let expected = table_checksum(&rc, "pgbench_accounts").await;
    sleep_ms(1100).await;
    let at = chrono::Utc::now();
    sleep_ms(1100).await;
    rc.execute("CREATE TABLE after_target AS SELECT 1 AS x")
        .await
        .unwrap();
    // A newer snapshot: once the window has passed it, GC removes the root's base
    // snapshot (the fork's base) and the WAL before the new one.
    env.client
        .create_restore_point(
            root.id,
            &CreateRestorePoint {
                name: "newer".into(),
                snapshot_wal_bytes: Some(1),
            },
        )
        .await
        .unwrap();
    for _ in 0..100 {
        if env.client.list_snapshots(root.id).await.unwrap().len() >= 2 {
            break;
        }
        sleep_ms(100).await;
    }
    let snaps = env.client.list_snapshots(root.id).await.unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");

    let client = env.client.clone();
    let req = ramify_api::CreateTimeline {
        id: None,
        parent: Some(root.id),
        at: Some(At::Time(at)),
        follow: None,
        backup: None,
        from_backup: None,
    };
    let fork = tokio::spawn(async move { client.create_timeline(&req).await.map(|c| c.value) });
    let served = judge(&env, fork.await.unwrap(), &expected).await;
    eprintln!("fork at a time during GC: served = {served}");

    // GC did its work in the end: the base snapshot is gone from record and disk.
    let mut left = Vec::new();
    for _ in 0..100 {
        left = env
            .client
            .list_snapshots(root.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>();
        if !left.iter().any(|n| n == "base") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!left.iter().any(|n| n == "base"), "GC never ran: {left:?}");
    assert!(!std::path::Path::new(&root.pgdata)
        .parent()
        .unwrap()
        .join("snapshots/base")
        .exists());
}

/// A fork from a snapshot is committed before its own `fork` snapshot is whole: the rest
/// of that snapshot is cloned from the parent's in the background (stalled here). Meanwhile
/// the record lists it, a fork of the fork at it waits for it and is whole, and the
/// parent's snapshot it is cloned from is not deleted from under it. Once published it
/// holds exactly the fork's starting state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forks_own_snapshot_is_finished_in_the_background_and_waited_for() {
    let env = Env::new_with_env(
        4 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
        &[(
            "RAMIFY_FAILPOINTS",
            "fork_snapshot.before_publish=1*sleep(4000)",
        )],
    )
    .await;
    let (root, _rc, expected) = env.pgbench_root_with_s1().await;

    let t = std::time::Instant::now();
    let fork = env.fork(root.id, At::Snapshot("s1".into())).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the fork waited for its own snapshot: {:?}",
        t.elapsed()
    );
    let dir = Path::new(&fork.pgdata).parent().unwrap().to_path_buf();
    assert!(
        !dir.join("snapshots/fork").exists(),
        "the fork snapshot was published before its clone was done"
    );
    assert_eq!(env.snapshot_names(fork.id).await, vec!["fork".to_string()]);
    // Its PGDATA before the first start, but for what the recovery settings add.
    let mut before = tree_sums(&dir.join("pgdata"));
    for f in ["recovery.signal", "ramify.recovery.conf", "postgresql.conf"] {
        before.remove(Path::new(f));
    }

    let client = env.client.clone();
    let grandchild = tokio::spawn(async move {
        client
            .create_timeline(&ramify_api::CreateTimeline {
                parent: Some(fork.id),
                at: Some(At::Snapshot("fork".into())),
                ..Default::default()
            })
            .await
            .map(|c| c.value)
    });
    let client = env.client.clone();
    let deleted = tokio::spawn(async move { client.delete_snapshot(root.id, "s1").await });
    sleep_ms(500).await;
    assert!(
        !grandchild.is_finished() && !deleted.is_finished(),
        "a fork of the fork and the deletion of its source snapshot did not wait"
    );
    let grandchild = grandchild.await.unwrap().expect("fork of the fork");
    deleted
        .await
        .unwrap()
        .expect("delete s1 once the fork snapshot is taken");

    let mut snap = tree_sums(&dir.join("snapshots/fork/pgdata"));
    snap.remove(Path::new("postgresql.conf"));
    assert_eq!(
        snap, before,
        "the fork snapshot is not the fork's starting state"
    );
    assert!(judge(&env, Ok(grandchild), &expected).await);
    assert!(judge(&env, Ok(env.get(fork.id).await), &expected).await);
}

/// What the node logs when a fork takes the spare clone of its base snapshot.
const TOOK_SPARE: &str = "took the snapshot's spare clone";

/// Where timeline `tl`'s `fork` snapshot keeps its spare clone.
fn spare_of(tl: &TimelineInfo) -> std::path::PathBuf {
    Path::new(&tl.pgdata)
        .parent()
        .unwrap()
        .join("snapshots/fork/spare")
}

/// Waits (up to 60 s) until `dir` holds a whole PGDATA.
async fn wait_for_pgdata(dir: &Path, env: &Env) {
    for _ in 0..600 {
        if dir.join("PG_VERSION").is_file() {
            return;
        }
        sleep_ms(100).await;
    }
    panic!(
        "{} never appeared; node log:\n{}",
        dir.display(),
        env.node.log_tail()
    );
}

/// A fork from a snapshot (a restore, a revert) leaves, once its own `fork` snapshot is
/// published, a spare clone of that snapshot; the next fork from it takes the spare
/// instead of cloning, the one after clones as before, and all are whole. A restart
/// removes every spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fork_from_a_restored_timelines_snapshot_takes_its_spare_clone() {
    let mut env = Env::new(
        4 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
    )
    .await;
    let (root, _rc, expected) = env.pgbench_root_with_s1().await;
    let restored = env.fork(root.id, At::Snapshot("s1".into())).await;
    let spare = spare_of(&restored);
    wait_for_pgdata(&spare, &env).await;

    let took = env.node.log().matches(TOOK_SPARE).count();
    let first = env.fork(restored.id, At::Snapshot("fork".into())).await;
    assert_eq!(
        env.node.log().matches(TOOK_SPARE).count(),
        took + 1,
        "the first fork from the snapshot did not take its spare:\n{}",
        env.node.log_tail()
    );
    assert!(!spare.exists(), "the spare was taken, not copied");
    let second = env.fork(restored.id, At::Snapshot("fork".into())).await;
    assert_eq!(
        env.node.log().matches(TOOK_SPARE).count(),
        took + 1,
        "a second fork found a spare that was already taken"
    );
    for tl in [&restored, &first, &second] {
        assert!(judge(&env, Ok(tl.clone()), &expected).await);
    }

    // The forks from a snapshot made spares of their own; a restart removes them all.
    let spares: Vec<_> = [&first, &second].map(spare_of).to_vec();
    for s in &spares {
        wait_for_pgdata(s, &env).await;
    }
    env.node.restart().await.expect("restart the node");
    for s in &spares {
        assert!(!s.exists(), "{} survived a restart", s.display());
    }
}
