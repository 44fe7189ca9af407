//! A compute appends to its timeline's history and cannot rewrite it: its archive_command
//! writes an inbox, and the node moves each arrival into `wal/`, which no compute writes.
//! Real Postgres on a reflink scratch filesystem.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ramify_api::{At, TimelineInfo};
use ramify_testkit::Compute;

const GIB: u64 = 1 << 30;

/// The directory the compute's archive_command writes into (`../<dir>/%f` relative to
/// PGDATA), as a path: the one part of its history a compute can reach.
fn compute_archive_dir(tl: &TimelineInfo) -> PathBuf {
    let cmd = &tl.archive_command;
    let start = cmd.find("../").expect("archive_command names ../<dir>") + 3;
    let end = start + cmd[start..].find('/').expect("../<dir>/%f");
    Path::new(&tl.pgdata)
        .parent()
        .unwrap()
        .join(&cmd[start..end])
}

/// The timeline's archive, which forks and restores read.
fn archive_dir(tl: &TimelineInfo) -> PathBuf {
    PathBuf::from(&tl.archive)
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 24)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Finishes the current segment and waits until Postgres reports it archived; returns
/// its name.
async fn switch_and_wait(c: &Compute) -> String {
    let seg = query_text(c, "SELECT pg_walfile_name(pg_current_wal_lsn())").await;
    c.execute("SELECT pg_switch_wal()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = query_text(
            c,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )
        .await;
        if last.len() == 24 && last[8..] >= seg[8..] {
            return seg;
        }
        assert!(
            Instant::now() < deadline,
            "segment {seg} was not archived within 30 s (last archived: {last:?})\n{}",
            c.log_tail()
        );
        sleep_ms(100).await;
    }
}

async fn insert_batch(c: &Compute, batch: i32) {
    c.execute(&format!(
        "INSERT INTO t SELECT {batch}, g FROM generate_series(1, 5000) g"
    ))
    .await
    .unwrap();
}

/// No background drain runs during this test (its interval is an hour): a fork at an LSN
/// right after the compute archived still finds every segment, because the fork drains
/// the inbox first, and afterwards the archive holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_right_after_archiving_finds_every_segment() {
    let env = Env::new(
        4 * GIB,
        &[
            "--archive-drain-interval",
            "1h",
            "--housekeeping-interval",
            "1h",
        ],
    )
    .await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t (batch int, i int)")
        .await
        .unwrap();
    env.client
        .create_snapshot(root.id, "after-create-table")
        .await
        .unwrap();
    let mut lsns = vec![];
    let mut archived = vec![];
    for batch in 1..=3 {
        insert_batch(&rc, batch).await;
        lsns.push(current_lsn(&rc).await);
        archived.push(switch_and_wait(&rc).await);
    }
    // Old segments leave pg_wal: from now on only the archive (or inbox) holds them.
    rc.execute("CHECKPOINT").await.unwrap();
    rc.execute("CHECKPOINT").await.unwrap();
    let inbox = compute_archive_dir(&root);
    assert_ne!(
        inbox,
        archive_dir(&root),
        "the compute archives into an inbox"
    );
    let waiting = segments(&inbox);
    for s in &archived {
        assert!(
            waiting.contains(s),
            "{s} should still wait in the inbox (no drain ran): {waiting:?}"
        );
        assert!(!segments(&archive_dir(&root)).contains(s));
    }

    let fork = env.fork(root.id, At::Lsn(lsns[1])).await;
    let fc = env.start(&fork).await;
    assert_eq!(count(&fc, "t").await, 10_000, "batches 1 and 2, not 3");
    fc.pg_amcheck().await.expect("pg_amcheck on the fork");

    let (kept, left) = (segments(&archive_dir(&root)), segments(&inbox));
    for s in &archived {
        assert!(
            kept.contains(s),
            "{s} is in the archive after the fork: {kept:?}"
        );
        assert!(!left.contains(s), "{s} left the inbox: {left:?}");
    }
}

/// The attack: a shell in the compute rewrites a segment already archived, where it can
/// write (the directory its archive_command names). History — the archive forks and
/// restores read — does not change, the arrival is kept aside, and forks still see the
/// real past. Also shows the background drain moving arrivals into the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_cannot_rewrite_an_archived_segment() {
    let env = Env::new(4 * GIB, &["--archive-drain-interval", "200ms"]).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t (batch int, i int)")
        .await
        .unwrap();
    env.client
        .create_snapshot(root.id, "after-create-table")
        .await
        .unwrap();
    insert_batch(&rc, 1).await;
    let lsn = current_lsn(&rc).await;
    let seg = switch_and_wait(&rc).await;
    insert_batch(&rc, 2).await;
    switch_and_wait(&rc).await;
    rc.execute("CHECKPOINT").await.unwrap();

    // The background drain moves it into the archive.
    let archived = archive_dir(&root).join(&seg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !archived.exists() {
        assert!(
            Instant::now() < deadline,
            "{seg} did not reach the archive within 15 s\n{}",
            env.node.log_tail()
        );
        sleep_ms(100).await;
    }
    let history = std::fs::read(&archived).unwrap();

    // Rewrite it where the compute can write, the way its archive_command writes (as the
    // compute's user, under a temporary name, then renamed over).
    let dir = compute_archive_dir(&root);
    let tmp = dir.join(format!("{seg}.tmp"));
    std::fs::write(&tmp, vec![0xAB; history.len()]).unwrap();
    env.user.chown(&tmp).unwrap();
    std::fs::rename(&tmp, dir.join(&seg)).unwrap();
    sleep_ms(1000).await;
    // A fork drains the inbox synchronously as well.
    let fork = env.fork(root.id, At::Lsn(lsn)).await;

    assert!(
        std::fs::read(&archived).unwrap() == history,
        "the archived {seg} was rewritten by the compute"
    );
    let fc = env.start(&fork).await;
    assert_eq!(
        count(&fc, "t").await,
        5_000,
        "the fork replays the real batch 1"
    );
    let rejected = Path::new(&root.pgdata)
        .parent()
        .unwrap()
        .join("archive-rejected");
    let aside: Vec<String> = std::fs::read_dir(&rejected)
        .unwrap_or_else(|e| panic!("{}: {e}", rejected.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside.iter().any(|n| n.starts_with(&seg)),
        "the forged {seg} is kept aside: {aside:?}"
    );
    assert!(
        env.node
            .log_tail()
            .contains("refused a file in the archive inbox"),
        "the node logs the refusal"
    );
}
