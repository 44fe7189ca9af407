//! `POST /v1/timelines/{id}/restore-points`: a named point written into a running compute's
//! WAL in one short transaction; a fork at its LSN is the timeline exactly as it was then.

mod common;

use common::{count, query_text, Env};
use ramify_api::{At, CreateRestorePoint};

const GIB: u64 = 1 << 30;

fn point(name: &str, snapshot_wal_bytes: Option<u64>) -> CreateRestorePoint {
    CreateRestorePoint {
        name: name.into(),
        snapshot_wal_bytes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_at_a_restore_point_is_the_state_when_it_was_written() {
    let env = Env::new(2 * GIB, &[]).await;
    let (root, mut rc) = env.root().await;
    rc.execute("CREATE TABLE steps (step int)").await.unwrap();

    // The root's base snapshot (its creation) precedes the first point: it can be forked
    // with no snapshot taken for it.
    rc.execute("INSERT INTO steps VALUES (1)").await.unwrap();
    let one = env
        .client
        .create_restore_point(root.id, &point("step-1", None))
        .await
        .unwrap();
    assert_eq!(one.name, "step-1");
    assert!(
        one.snapshot.is_none(),
        "no background snapshot was asked for"
    );
    let snaps = env.client.list_snapshots(root.id).await.unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].end_lsn <= one.lsn);

    rc.execute("INSERT INTO steps VALUES (2)").await.unwrap();
    // Plenty of WAL since the snapshot: this point starts one in the background.
    rc.execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let two = env
        .client
        .create_restore_point(root.id, &point("step-2", Some(1 << 20)))
        .await
        .unwrap();
    assert!(two.lsn > one.lsn);
    assert!(two.wal_since_snapshot >= 1 << 20, "{two:?}");
    let background = two.snapshot.clone().expect("a background snapshot");
    rc.execute("INSERT INTO steps VALUES (3)").await.unwrap();

    let at_one = env.fork(root.id, At::Lsn(one.lsn)).await;
    let c1 = env.start(&at_one).await;
    assert_eq!(count(&c1, "steps").await, 1);
    let at_two = env.fork(root.id, At::Lsn(two.lsn)).await;
    let c2 = env.start(&at_two).await;
    assert_eq!(count(&c2, "steps").await, 2);
    assert_eq!(count(&c2, "filler").await, 20000);
    c2.pg_amcheck().await.expect("pg_amcheck");

    let mut taken = false;
    for _ in 0..100 {
        let snaps = env.client.list_snapshots(root.id).await.unwrap();
        if snaps.iter().any(|s| s.name == background) {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(taken, "snapshot {background} was taken");

    let bad = env
        .client
        .create_restore_point(root.id, &point("Bad Name", None))
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400), "{bad}");
    assert!(bad.to_string().contains("restore point name"), "{bad}");
    rc.stop().await.unwrap();
    let stopped = env
        .client
        .create_restore_point(root.id, &point("step-4", None))
        .await
        .unwrap_err();
    assert_eq!(stopped.status().map(|s| s.as_u16()), Some(409), "{stopped}");
    assert!(
        stopped.to_string().contains("no running compute"),
        "{stopped}"
    );
}

/// A fork that replayed a long stretch of WAL to reach its point (a restore to an LSN or a
/// checkpoint) gets a base of its own once it runs, so that a fork of it — a restore of a
/// restore — replays only what came after; and until then a restore point on it counts
/// the WAL a fork at it would replay from where the fork's own replay began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_that_replayed_much_gets_a_base_of_its_own() {
    let env = Env::new(2 * GIB, &["--housekeeping-interval", "1s"]).await;
    let (root, rc) = env.root().await;
    rc.execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let p = env
        .client
        .create_restore_point(root.id, &point("p", None))
        .await
        .unwrap();
    let fork = env.fork(root.id, At::Lsn(p.lsn)).await;
    let base = env.client.list_snapshots(fork.id).await.unwrap();
    assert_eq!(base.len(), 1, "{base:?}");
    let replayed = p.lsn.bytes_since(base[0].start_lsn);
    assert!(replayed >= 16 << 20, "the fork replays {replayed} bytes");

    // Not started yet: nothing to take a snapshot of.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(env.client.list_snapshots(fork.id).await.unwrap().len(), 1);

    let fc = env.start(&fork).await;
    let q = env
        .client
        .create_restore_point(fork.id, &point("q", None))
        .await
        .unwrap();
    assert!(
        q.wal_since_snapshot >= replayed,
        "a fork at q replays from the fork's own start: {q:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let own = loop {
        let snaps = env.client.list_snapshots(fork.id).await.unwrap();
        if let Some(s) = snaps
            .iter()
            .find(|s| s.kind != ramify_api::SnapshotKind::Fork)
        {
            break s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no base of its own within 60 s: {snaps:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(own.start_lsn >= p.lsn, "{own:?}");
    assert_eq!(count(&fc, "filler").await, 100_000);

    // A restore of the restore, to a point after that base, starts from it. Flushed: the
    // count above set hint bits, whose full-page images (checksums are on) the WAL writer
    // flushes a moment later, and a point past the flushed end is refused.
    let later: ramify_api::Lsn = query_text(&fc, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .parse()
        .unwrap();
    let again = env.fork(fork.id, At::Lsn(later)).await;
    let again_base = env.client.list_snapshots(again.id).await.unwrap();
    assert!(again_base[0].start_lsn >= own.start_lsn, "{again_base:?}");
    let ac = env.start(&again).await;
    assert_eq!(count(&ac, "filler").await, 100_000);
}
