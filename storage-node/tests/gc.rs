//! Acceptance 8: with a short restore window, old snapshots and archived WAL are removed,
//! a fork just inside the window works and one just outside is refused with 422.
//! Also covers periodic snapshots (by WAL volume and by interval).

mod common;

use common::*;
use ramify_api::{At, ClientError, Lsn, SnapshotKind};

/// Periodic snapshots use a spread checkpoint; shorten the spread so the tests run in
/// seconds rather than minutes.
const SHORT_CHECKPOINT_SPREAD: &[(&str, &str)] = &[
    ("checkpoint_timeout", "30s"),
    ("checkpoint_completion_target", "0.01"),
];

/// A root timeline with a running compute whose checkpoints are not spread out.
async fn running_root(env: &Env) -> (ramify_api::TimelineInfo, ramify_testkit::Compute) {
    let tl = env
        .client
        .create_timeline(&Default::default())
        .await
        .unwrap()
        .value;
    let rc = env.start_with(&tl, SHORT_CHECKPOINT_SPREAD).await;
    (tl, rc)
}

/// Polls (up to 20 s) until the timeline has `n` snapshots; returns how many it has.
async fn wait_for_snapshots(env: &Env, id: ramify_api::TimelineId, n: usize) -> usize {
    let mut have = 0;
    for _ in 0..100 {
        have = env.get(id).await.snapshots.len();
        if have >= n {
            break;
        }
        sleep_ms(200).await;
    }
    have
}

fn archive_segments(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_window_gc_removes_history_and_bounds_forks() {
    let env = Env::new(
        4 << 30,
        &[
            "--restore-window",
            "4s",
            "--snapshot-interval",
            "1s",
            "--snapshot-wal-bytes",
            "0",
            "--housekeeping-interval",
            "300ms",
        ],
    )
    .await;
    let (tl, rc) = running_root(&env).await;
    rc.execute("CREATE TABLE t (i int)").await.unwrap();
    let mut first_snapshot = None;
    // Write and switch WAL segments for a while: each second brings new WAL, so a new
    // periodic snapshot, and GC moves the window along.
    for round in 0..12 {
        rc.execute(&format!(
            "INSERT INTO t SELECT {round} FROM generate_series(1, 2000); SELECT pg_switch_wal()"
        ))
        .await
        .unwrap();
        sleep_ms(700).await;
        if first_snapshot.is_none() {
            first_snapshot = env
                .get(tl.id)
                .await
                .snapshots
                .first()
                .map(|s| s.name.clone());
        }
    }
    let first_snapshot = first_snapshot.expect("a periodic snapshot was taken");
    // Quiet now: no new WAL, so no new snapshots; let GC settle on the newest base.
    sleep_ms(5500).await;
    let info = env.get(tl.id).await;
    let names: Vec<_> = info.snapshots.iter().map(|s| s.name.clone()).collect();
    assert!(info
        .snapshots
        .iter()
        .all(|s| s.kind == SnapshotKind::Periodic));
    assert!(
        !names.contains(&first_snapshot),
        "the oldest snapshot {first_snapshot} was not collected: {names:?}"
    );
    assert!(
        names.len() <= 2,
        "only the base before the window should remain: {names:?}"
    );
    let snap_dirs = std::fs::read_dir(
        std::path::Path::new(&info.pgdata)
            .parent()
            .unwrap()
            .join("snapshots"),
    )
    .unwrap()
    .count();
    assert_eq!(
        snap_dirs,
        names.len(),
        "snapshot directories removed with their records"
    );
    let from = info.restore_window.from_lsn.expect("window start");
    let segs = archive_segments(&info.archive);
    // WAL is kept from the base snapshot's redo start, which may lie a segment before
    // the point where that snapshot became consistent (the window's from_lsn).
    let base_start = info.snapshots.first().expect("a base snapshot").start_lsn;
    assert!(base_start <= from);
    let first_kept =
        ramify_storage::wal::segment_name(1, base_start.segment(ramify_storage::wal::SEGMENT_SIZE));
    assert!(
        segs.first().is_some_and(|s| s[8..] >= first_kept[8..]),
        "archive still holds {:?}, older than the base snapshot's start {first_kept}",
        segs.first()
    );
    assert!(
        segs.len() < 12,
        "old WAL was removed ({} segments left)",
        segs.len()
    );

    // Just inside: the window's first LSN. Just outside: one byte before it.
    let inside = env.fork(tl.id, At::Lsn(from)).await;
    assert_eq!(inside.fork_lsn, Some(from));
    let c = env.start(&inside).await;
    assert!(count(&c, "t").await > 0);
    let outside = env
        .client
        .create_timeline(&ramify_api::CreateTimeline {
            id: None,
            parent: Some(tl.id),
            at: Some(At::Lsn(Lsn(from.0 - 1))),
            follow: None,
            backup: None,
            from_backup: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&outside, ClientError::Api { status, .. } if status.as_u16() == 422),
        "{outside}"
    );
    assert!(
        outside.to_string().contains(&from.to_string()),
        "the error names the window: {outside}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_snapshot_after_enough_wal() {
    let env = Env::new(
        4 << 30,
        &[
            "--snapshot-interval",
            "1h",
            "--snapshot-wal-bytes",
            "20MiB",
            "--housekeeping-interval",
            "300ms",
        ],
    )
    .await;
    let (tl, rc) = running_root(&env).await;
    // A new root has one snapshot from its creation: its base.
    let n = wait_for_snapshots(&env, tl.id, 1).await;
    assert_eq!(n, 1, "a new root has its base snapshot");
    assert_eq!(env.get(tl.id).await.snapshots[0].kind, SnapshotKind::Base);
    // 5 MB of WAL is not enough for another.
    rc.execute(
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    sleep_ms(1500).await;
    assert_eq!(env.get(tl.id).await.snapshots.len(), 1);
    // 20 MiB more is.
    rc.execute("INSERT INTO t SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 120000) g")
        .await
        .unwrap();
    let n = wait_for_snapshots(&env, tl.id, 2).await;
    assert_eq!(n, 2, "a snapshot follows snapshot_wal_bytes of new WAL");
}
