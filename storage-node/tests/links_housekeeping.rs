//! The node's own background work walks directories a compute can write: restore-window
//! GC deletes old snapshots and archived segments and writes `wal/wal-kept-from`, the
//! archive drain moves files out of `archive-inbox/`, and space accounting walks every
//! timeline. An attacker timeline B plants symbolic links, hard links and a FIFO there,
//! pointing at a victim timeline A; GC removes the links themselves, the drain keeps them
//! aside, accounting skips them, and A stays byte-identical and still forks at its
//! snapshot. Real Postgres on the scratch filesystem (see links.rs for forks, snapshots
//! and delete).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ramify_api::{At, Lsn, TimelineId, TimelineInfo};
use ramify_testkit::Compute;

/// A restore window short enough for GC to act within the test.
const WINDOW_SECS: u64 = 5;

/// Periodic snapshots use a spread checkpoint; keep it short (as gc.rs does).
const SHORT_CHECKPOINT_SPREAD: &[(&str, &str)] = &[
    ("checkpoint_timeout", "30s"),
    ("checkpoint_completion_target", "0.01"),
];

fn timeline_dir(tl: &TimelineInfo) -> PathBuf {
    Path::new(&tl.pgdata).parent().unwrap().to_path_buf()
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Polls `cond` every 100 ms for up to `secs`; panics with `what` and the node's log.
async fn wait_until<F, Fut>(env: &Env, secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s\nnode log:\n{}",
            env.node.log_tail()
        );
        sleep_ms(100).await;
    }
}

/// Names of the timeline's snapshots, oldest first.
async fn snapshot_names(env: &Env, id: TimelineId) -> Vec<String> {
    env.get(id)
        .await
        .snapshots
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// One round of new WAL on B: rows and a segment switch, so periodic snapshots keep
/// coming and GC moves the window along.
async fn write_round(c: &Compute, round: u32) {
    c.execute(&format!(
        "INSERT INTO t SELECT {round} FROM generate_series(1, 2000); SELECT pg_switch_wal()"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_planted_where_gc_drain_and_accounting_walk_are_never_followed() {
    let window = format!("{WINDOW_SECS}s");
    let env = Env::new(
        4 << 30,
        &[
            "--restore-window",
            &window,
            "--snapshot-interval",
            "1s",
            "--snapshot-wal-bytes",
            "0",
            "--housekeeping-interval",
            "300ms",
            "--archive-drain-interval",
            "200ms",
        ],
    )
    .await;

    // The victim A: a table of a few MB, a manual snapshot a1 (GC keeps manual ones),
    // then stopped. Its own GC then drops its first periodic snapshot and writes its
    // wal-kept-from; once that has settled, A must not change any more.
    let (a, mut ac) = env.root().await;
    ac.execute(
        "CREATE TABLE secret AS SELECT g, repeat('s', 100) AS pad FROM generate_series(1, 30000) g",
    )
    .await
    .unwrap();
    let rel = query_text(&ac, "SELECT pg_relation_filepath('secret')").await;
    env.client.create_snapshot(a.id, "a1").await.unwrap();
    ac.stop().await.unwrap();
    let a_dir = timeline_dir(&a);
    let victim = a_dir.join("pgdata").join(&rel);
    let victim_len = fs::metadata(&victim).unwrap().len();
    assert!(victim_len > 1 << 20, "victim is {victim_len} bytes");
    let a_kept_from = a_dir.join("wal/wal-kept-from");
    let settled = chrono::Duration::seconds(WINDOW_SECS as i64 + 1);
    wait_until(&env, 30, "A's own GC did not settle", || async {
        let snaps = env.get(a.id).await.snapshots;
        a_kept_from.is_file() && snaps.iter().all(|s| chrono::Utc::now() - s.time > settled)
    })
    .await;
    sleep_ms(1000).await;
    let before = tree_sums(&a_dir);

    // The attacker B: running, writing, with periodic snapshots.
    let b = env
        .client
        .create_timeline(&Default::default())
        .await
        .unwrap()
        .value;
    let mut bc = env.start_with(&b, SHORT_CHECKPOINT_SPREAD).await;
    bc.execute("CREATE TABLE t (i int)").await.unwrap();
    let b_dir = timeline_dir(&b);
    let mut round = 0;
    let mut names = vec![];
    while names.len() < 2 {
        assert!(round < 30, "B took no second periodic snapshot: {names:?}");
        write_round(&bc, round).await;
        round += 1;
        sleep_ms(300).await;
        names = snapshot_names(&env, b.id).await;
    }

    // 1. GC. B's newest snapshot is collected once a later one leaves the window (the
    //    newest, so GC cannot have taken it already on a busy machine): replace it now
    //    with a link to A's snapshot a1. Plant a link named like a segment older than any
    //    base, to A's relation file, and links under the names GC writes wal-kept-from
    //    through, to A's files.
    let doomed = names.last().unwrap().clone();
    let doomed_dir = b_dir.join("snapshots").join(&doomed);
    fs::remove_dir_all(&doomed_dir).unwrap();
    symlink(a_dir.join("snapshots/a1"), &doomed_dir).unwrap();
    let old_segment = b_dir.join("wal/000000010000000000000000");
    symlink(&victim, &old_segment).unwrap();
    let kept_from = b_dir.join("wal/wal-kept-from");
    let _ = fs::remove_file(&kept_from);
    symlink(&victim, &kept_from).unwrap();
    let kept_from_tmp = b_dir.join("wal/wal-kept-from.tmp");
    symlink(&a_kept_from, &kept_from_tmp).unwrap();

    // Keep B writing past the window, then wait for GC to drop the doomed snapshot.
    let until = Instant::now() + Duration::from_secs(WINDOW_SECS + 2);
    while Instant::now() < until {
        write_round(&bc, round).await;
        round += 1;
        sleep_ms(500).await;
    }
    wait_until(
        &env,
        30,
        "GC did not collect B's oldest snapshot",
        || async { !snapshot_names(&env, b.id).await.contains(&doomed) },
    )
    .await;
    assert!(
        !exists(&doomed_dir),
        "GC left the link in place of snapshot {doomed}"
    );
    assert!(
        !exists(&old_segment),
        "GC left the link named like an old segment"
    );
    let kept = fs::symlink_metadata(&kept_from).unwrap();
    assert!(
        kept.is_file(),
        "wal-kept-from is not a file of B's own: {kept:?}"
    );
    let kept_lsn: Lsn = fs::read_to_string(&kept_from)
        .unwrap()
        .trim()
        .parse()
        .expect("wal-kept-from holds an LSN");
    assert!(kept_lsn > Lsn(0));
    assert!(!exists(&kept_from_tmp), "wal-kept-from.tmp was left behind");
    assert_eq!(tree_sums(&a_dir), before, "GC of B changed timeline A");

    // 2. The archive drain: a symlink, a hard link and a FIFO with segment names (of a
    //    Postgres timeline B never had) are kept aside, none reaches wal/.
    let inbox = b_dir.join("archive-inbox");
    let planted = [
        ("000000070000000000000001", "symlink"),
        ("000000070000000000000002", "hard link"),
        ("000000070000000000000003", "fifo"),
        ("000000070000000000000004", "unreadable file"),
    ];
    symlink(&victim, inbox.join(planted[0].0)).unwrap();
    fs::hard_link(&victim, inbox.join(planted[1].0)).unwrap();
    // Mode 0700 and owned by the test's user: the node (the Postgres OS user when the
    // test runs as root) may not open it, as if a compute had taken its bits away.
    nix::unistd::mkfifo(&inbox.join(planted[2].0), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let unreadable = inbox.join(planted[3].0);
    fs::write(&unreadable, b"not for the node").unwrap();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    wait_until(
        &env,
        20,
        "the drain did not take the planted files",
        || async { planted.iter().all(|(n, _)| !exists(&inbox.join(n))) },
    )
    .await;
    let rejected: Vec<(String, fs::Metadata)> = fs::read_dir(b_dir.join("archive-rejected"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::symlink_metadata(e.path()).unwrap(),
            )
        })
        .collect();
    for (name, kind) in planted {
        assert!(
            !exists(&b_dir.join("wal").join(name)),
            "the {kind} {name} was moved into wal/"
        );
        let aside: Vec<_> = rejected
            .iter()
            .filter(|(n, _)| n.starts_with(name))
            .collect();
        assert_eq!(
            aside.len(),
            1,
            "the {kind} {name} in archive-rejected: {rejected:?}"
        );
        let m = &aside[0].1;
        let ok = match kind {
            "symlink" => m.file_type().is_symlink(),
            "hard link" => m.is_file() && m.ino() == fs::metadata(&victim).unwrap().ino(),
            "fifo" => m.file_type().is_fifo(),
            _ => m.is_file() && m.mode() & 0o777 == 0,
        };
        assert!(
            ok,
            "the {kind} {name} was kept aside as something else: {m:?}"
        );
    }
    // The hard link kept aside still shares A's inode: drop it so A is whole again.
    let (aside_hard, _) = rejected
        .iter()
        .find(|(n, _)| n.starts_with(planted[1].0))
        .unwrap();
    fs::remove_file(b_dir.join("archive-rejected").join(aside_hard)).unwrap();
    assert_eq!(
        tree_sums(&a_dir),
        before,
        "the drain of B changed timeline A"
    );

    // 3. Accounting. B stopped so its PGDATA is stable; links in its PGDATA are
    //    skipped: B's figures do not grow by A's files, A's do not change, and GET and
    //    list answer for everyone.
    bc.stop().await.unwrap();
    drop(bc);
    assert!(std::process::Command::new("sync")
        .status()
        .unwrap()
        .success());
    let (a0, b0) = (env.get(a.id).await, env.get(b.id).await);
    // The `postgres` database has the same directory in every cluster.
    let b_db = b_dir.join("pgdata").join(Path::new(&rel).parent().unwrap());
    assert!(b_db.is_dir(), "{}", b_db.display());
    symlink(&victim, b_db.join("88888")).unwrap();
    symlink(a_dir.join("pgdata"), b_dir.join("pgdata/stolen")).unwrap();
    symlink(a_dir.join("snapshots"), b_dir.join("snapshots/stolen")).unwrap();
    nix::unistd::mkfifo(&b_db.join("88889"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (a1, b1) = (env.get(a.id).await, env.get(b.id).await);
    let figures = |t: &TimelineInfo| (t.logical_bytes, t.exclusive_bytes, t.history_bytes);
    // B's history figures move with its own GC; its PGDATA size does not.
    assert_eq!(
        b1.logical_bytes, b0.logical_bytes,
        "B's logical size counts what its links point at"
    );
    assert_eq!(figures(&a1), figures(&a0), "A's figures changed");
    // A hard link into A's relation: B's figures still leave it out. An empty file and
    // a directory whose modes deny the node: skipped, not an error for every timeline.
    fs::hard_link(&victim, b_db.join("88890")).unwrap();
    let locked_file = b_db.join("88891");
    fs::write(&locked_file, b"").unwrap();
    fs::set_permissions(&locked_file, fs::Permissions::from_mode(0o000)).unwrap();
    let locked_dir = b_dir.join("pgdata/locked");
    fs::create_dir(&locked_dir).unwrap();
    fs::write(locked_dir.join("inside"), b"bytes the node cannot see").unwrap();
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o000)).unwrap();
    let b2 = env
        .client
        .get_timeline(b.id)
        .await
        .expect("GET B with unreadable files planted");
    assert_eq!(
        b2.logical_bytes, b0.logical_bytes,
        "B's logical size counts a hard link to A's file"
    );
    env.client
        .get_timeline(a.id)
        .await
        .expect("GET A with unreadable files planted in B");
    let all = env
        .client
        .list_timelines()
        .await
        .expect("list with links planted");
    assert_eq!(all.len(), 2);
    for p in ["88888", "88889", "88890", "88891"] {
        fs::remove_file(b_db.join(p)).unwrap();
    }
    fs::remove_dir_all(&locked_dir).unwrap();
    fs::remove_file(b_dir.join("pgdata/stolen")).unwrap();
    fs::remove_file(b_dir.join("snapshots/stolen")).unwrap();

    // A is byte-identical and still forks at a1 with every row.
    assert_eq!(tree_sums(&a_dir), before, "timeline A changed");
    let f = env.fork(a.id, At::Snapshot("a1".into())).await;
    let fc = env.start(&f).await;
    assert_eq!(count(&fc, "secret").await, 30000);
}
