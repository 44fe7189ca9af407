//! A compute mounts its timeline directory read-write as the node's own uid, and timeline
//! ids are not secret. These tests plant, in every directory the node walks, symbolic
//! and hard links to ANOTHER timeline's files (and a tablespace link, and links in place
//! of snapshot directories), then fork at latest / LSN / time / snapshot, take and delete
//! snapshots and delete the timeline: each is refused naming the planted path (a delete
//! removes the link itself), and the other timeline stays byte-identical.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use ramify_api::{At, ClientError, CreateTimeline, TimelineId};

/// Asserts `r` is a 409 whose message contains `says`.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>, says: &str) {
    match r {
        Err(ClientError::Api {
            status,
            ref message,
            ..
        }) => {
            assert_eq!(status.as_u16(), 409, "{what}: {message}");
            assert!(
                message.contains(says),
                "{what}: {message:?} should say {says:?}"
            );
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

async fn fork(
    env: &Env,
    parent: TimelineId,
    at: At,
) -> Result<ramify_api::TimelineInfo, ClientError> {
    env.client
        .create_timeline(&CreateTimeline {
            id: None,
            parent: Some(parent),
            at: Some(at),
            follow: None,
            backup: None,
            from_backup: None,
        })
        .await
        .map(|r| r.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_planted_by_a_compute_are_never_followed() {
    let env = Env::new(2 << 30, &[]).await;
    // The victim: timeline A, with a table and a snapshot, then stopped (stable files).
    let (a, mut ac) = env.root().await;
    ac.execute("CREATE TABLE secret AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let rel = query_text(&ac, "SELECT pg_relation_filepath('secret')").await;
    env.client.create_snapshot(a.id, "a1").await.unwrap();
    ac.stop().await.unwrap();
    let a_dir = Path::new(&a.pgdata).parent().unwrap().to_path_buf();
    let victim = a_dir.join("pgdata").join(&rel);
    assert!(victim.is_file(), "{}", victim.display());
    let before = tree_sums(&a_dir);

    // The attacker: timeline B, running, with a snapshot.
    let (b, bc) = env.root().await;
    bc.execute("CREATE TABLE mine AS SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let b_rel = query_text(&bc, "SELECT pg_relation_filepath('mine')").await;
    let b_db = Path::new(&b_rel).parent().unwrap().to_path_buf();
    env.client.create_snapshot(b.id, "s1").await.unwrap();
    let b_dir = Path::new(&b.pgdata).parent().unwrap().to_path_buf();
    let b_tl = format!("timelines/{}", b.id);

    // Symbolic and hard links in each directory a fork at latest (or a snapshot) walks.
    let places: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from("pgdata"), "77777"),
        (Path::new("pgdata").join(&b_db), "99999"),
        (PathBuf::from("pgdata/pg_wal"), "00000009.history"),
        (PathBuf::from("wal"), "00000009.history"),
    ];
    for (dir, name) in &places {
        let at = b_dir.join(dir).join(name);
        let shown = format!("{b_tl}/{}/{name}", dir.display());
        symlink(&victim, &at).unwrap();
        refused(
            &format!("fork at latest with a symlink {shown}"),
            fork(&env, b.id, At::Latest).await,
            &format!("{shown} is a symbolic link"),
        );
        refused(
            &format!("snapshot with a symlink {shown}"),
            env.client.create_snapshot(b.id, "x").await,
            &format!("{shown} is a symbolic link"),
        );
        fs::remove_file(&at).unwrap();
        fs::hard_link(&victim, &at).unwrap();
        refused(
            &format!("fork at latest with a hard link {shown}"),
            fork(&env, b.id, At::Latest).await,
            &format!("{shown} has 2 hard links"),
        );
        fs::remove_file(&at).unwrap();
    }

    // A tablespace link is refused, not followed.
    let tblspc = b_dir.join("pgdata/pg_tblspc/16999");
    symlink(a_dir.join("pgdata"), &tblspc).unwrap();
    refused(
        "fork with a tablespace",
        fork(&env, b.id, At::Latest).await,
        &format!("{b_tl}/pgdata/pg_tblspc/16999 is a tablespace"),
    );
    fs::remove_file(&tblspc).unwrap();

    // A WAL-named symlink in wal/ is never reflinked into a fork at an LSN or a time.
    let lsn = current_lsn(&bc).await;
    let seg = ramify_storage::wal::segment_name(1, lsn.segment(ramify_storage::wal::SEGMENT_SIZE));
    let wal_link = b_dir.join("wal").join(&seg);
    symlink(&victim, &wal_link).unwrap();
    refused(
        "fork at an LSN with a segment symlink",
        fork(&env, b.id, At::Lsn(lsn)).await,
        &format!("{b_tl}/wal/{seg} is a symbolic link"),
    );
    refused(
        "fork at a time with a segment symlink",
        fork(&env, b.id, At::Time(chrono::Utc::now())).await,
        &format!("{b_tl}/wal/{seg} is a symbolic link"),
    );
    fs::remove_file(&wal_link).unwrap();

    // Links inside a snapshot's PGDATA: fork at that snapshot.
    let in_snap = b_dir.join("snapshots/s1/pgdata").join(&b_db).join("99999");
    let shown = format!("{b_tl}/snapshots/s1/pgdata/{}/99999", b_db.display());
    symlink(&victim, &in_snap).unwrap();
    refused(
        "fork at a snapshot holding a symlink",
        fork(&env, b.id, At::Snapshot("s1".into())).await,
        &format!("{shown} is a symbolic link"),
    );
    fs::remove_file(&in_snap).unwrap();
    fs::hard_link(&victim, &in_snap).unwrap();
    refused(
        "fork at a snapshot holding a hard link",
        fork(&env, b.id, At::Snapshot("s1".into())).await,
        &format!("{shown} has 2 hard links"),
    );
    fs::remove_file(&in_snap).unwrap();

    // A symlink in place of snapshots/s1, to A's snapshot: forking is refused, and
    // deleting s1 removes the link, not A's snapshot.
    fs::rename(b_dir.join("snapshots/s1"), b_dir.join("snapshots/s1.real")).unwrap();
    symlink(a_dir.join("snapshots/a1"), b_dir.join("snapshots/s1")).unwrap();
    refused(
        "fork at a snapshot that is a symlink",
        fork(&env, b.id, At::Snapshot("s1".into())).await,
        &format!("{b_tl}/snapshots/s1 is a symbolic link"),
    );
    env.client.delete_snapshot(b.id, "s1").await.unwrap();
    assert!(fs::symlink_metadata(b_dir.join("snapshots/s1")).is_err());
    assert!(a_dir.join("snapshots/a1/pgdata/PG_VERSION").is_file());

    // snapshots/ itself a symlink to A's: a new snapshot is refused and nothing is
    // written into A.
    fs::rename(b_dir.join("snapshots"), b_dir.join("snapshots.real")).unwrap();
    symlink(a_dir.join("snapshots"), b_dir.join("snapshots")).unwrap();
    refused(
        "snapshot with snapshots/ a symlink",
        env.client.create_snapshot(b.id, "s2").await,
        &format!("{b_tl}/snapshots is a symbolic link"),
    );
    // Listing (accounting walks every timeline) still works for everyone.
    env.client
        .list_timelines()
        .await
        .expect("list with links planted");

    // Links everywhere, then delete B: the links go, their targets stay.
    symlink(&victim, b_dir.join("pgdata").join(&b_db).join("99999")).unwrap();
    symlink(a_dir.join("pgdata"), b_dir.join("pgdata/dirlink")).unwrap();
    symlink(a_dir.join("wal"), b_dir.join("wal/dirlink")).unwrap();
    drop(bc);
    env.client
        .delete_timeline(b.id, true)
        .await
        .expect("delete B");
    assert!(!b_dir.exists());

    assert_eq!(tree_sums(&a_dir), before, "timeline A changed");
    let ac = env.start(&env.get(a.id).await).await;
    assert_eq!(count(&ac, "secret").await, 1000);
}
