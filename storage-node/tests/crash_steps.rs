//! SIGKILL of the storage node at every named step of create (root), fork (running
//! parent's backup, stopped parent, from a snapshot), snapshot (running and stopped),
//! snapshot delete, delete and restore-window GC (failpoints, see `src/failpoint.rs`).
//!
//! For each step: the node is started with the step armed, the operation runs, the node
//! dies at the step, and it is restarted without failpoints. Then nothing half-made is
//! visible through the API or left on disk, every snapshot directory is one a record
//! names and every record's snapshot has its directory, every Ready timeline's compute
//! starts, passes `pg_amcheck` (heap and btree) and has its source's rows at the fork
//! point, the interrupted operation succeeds when retried, DELETE works, and the startup
//! scan logged what it reconciled.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use ramify_api::{
    At, ClientError, CreateRestorePoint, CreateTimeline, TimelineId, TimelineInfo, TimelineState,
};
use ramify_testkit::Compute;

const FP: &str = "RAMIFY_FAILPOINTS";

/// No periodic snapshots or GC in the way of the steps under test.
const QUIET: &[&str] = &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"];

/// What the killed operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Root,
    ForkRunning,
    ForkStopped,
    ForkSnapshot,
    SnapshotRunning,
    SnapshotStopped,
    DeleteSnapshot,
    Delete,
}

/// What the startup scan logs for each thing it reconciles.
const CREATE_UNDONE: &str = "removing a timeline whose creation was interrupted";
const HALF_SNAPSHOT: &str = "removing a half-taken snapshot";
const UNREFERENCED_SNAPSHOT: &str = "removing a snapshot directory no record references";
const DELETE_FINISHED: &str = "finishing the deletion of a timeline";

/// Every step, the operation it interrupts and what the startup scan must log after it.
const CASES: &[(&str, Op, &str)] = &[
    ("create.after_begin", Op::Root, CREATE_UNDONE),
    ("root.after_initdb", Op::Root, CREATE_UNDONE),
    ("create.before_publish", Op::Root, CREATE_UNDONE),
    ("create.after_publish", Op::Root, CREATE_UNDONE),
    ("backup.after_start", Op::ForkRunning, CREATE_UNDONE),
    ("backup.after_clone", Op::ForkRunning, CREATE_UNDONE),
    ("backup.after_stop", Op::ForkRunning, CREATE_UNDONE),
    ("fork.after_fork_snapshot", Op::ForkRunning, CREATE_UNDONE),
    ("create.after_publish", Op::ForkRunning, CREATE_UNDONE),
    ("fork.stopped.after_clone", Op::ForkStopped, CREATE_UNDONE),
    ("create.before_publish", Op::ForkStopped, CREATE_UNDONE),
    ("fork.snapshot.after_clone", Op::ForkSnapshot, CREATE_UNDONE),
    ("fork.after_build", Op::ForkSnapshot, CREATE_UNDONE),
    ("snapshot.after_staging", Op::SnapshotRunning, HALF_SNAPSHOT),
    ("backup.after_clone", Op::SnapshotRunning, HALF_SNAPSHOT),
    (
        "snapshot.before_publish",
        Op::SnapshotRunning,
        HALF_SNAPSHOT,
    ),
    (
        "snapshot.after_publish",
        Op::SnapshotRunning,
        UNREFERENCED_SNAPSHOT,
    ),
    ("clone.stopped.mid", Op::SnapshotStopped, HALF_SNAPSHOT),
    (
        "snapshot.after_publish",
        Op::SnapshotStopped,
        UNREFERENCED_SNAPSHOT,
    ),
    (
        "snapshot_delete.after_record",
        Op::DeleteSnapshot,
        UNREFERENCED_SNAPSHOT,
    ),
    ("delete.after_mark", Op::Delete, DELETE_FINISHED),
    ("delete.after_retire", Op::Delete, DELETE_FINISHED),
    ("delete.after_remove", Op::Delete, DELETE_FINISHED),
];

fn data_dir(env: &Env) -> PathBuf {
    env.scratch.path().join("data")
}

/// Restarts the node with `failpoints` armed (empty: none).
async fn restart_with(env: &mut Env, failpoints: &str) {
    if failpoints.is_empty() {
        env.node.set_env(&[]);
    } else {
        env.node.set_env(&[(FP, failpoints)]);
    }
    env.node
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restart with failpoints {failpoints:?}: {e}"));
}

/// Waits (up to 60 s) until the node's log shows it killed itself at `step`.
async fn wait_killed_at(env: &Env, step: &str, log_from: usize) {
    let line = format!("failpoint {step}: SIGKILL");
    for _ in 0..600 {
        if env.node.log().get(log_from..).unwrap_or("").contains(&line) {
            // Let the kernel finish the process off before it is restarted.
            sleep_ms(200).await;
            return;
        }
        sleep_ms(100).await;
    }
    panic!(
        "the node never reached failpoint {step}; log:\n{}",
        env.node.log_tail()
    );
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Checks everything the node holds after a restart: no half-made timeline or snapshot
/// through the API or on disk, snapshot records and directories agree, and every Ready
/// timeline other than the root starts, passes pg_amcheck and has `expected` rows.
async fn check_node(env: &Env, root: TimelineId, rc: Option<&Compute>, expected: &str) {
    let listed = env.client.list_timelines().await.expect("list timelines");
    let ids: BTreeSet<String> = listed.iter().map(|t| t.id.to_string()).collect();
    let on_disk = names_in(&data_dir(env).join("timelines"));
    assert_eq!(
        on_disk, ids,
        "timelines/ holds exactly the listed timelines (no staging, no retired or orphaned directory)"
    );
    for tl in &listed {
        assert_eq!(tl.state, TimelineState::Ready, "{} is not Ready", tl.id);
        assert!(
            Path::new(&tl.pgdata).join("PG_VERSION").is_file(),
            "{}: a listed timeline without its PGDATA",
            tl.id
        );
        let recorded: BTreeSet<String> = env
            .client
            .list_snapshots(tl.id)
            .await
            .expect("list snapshots")
            .into_iter()
            .map(|s| s.name)
            .collect();
        let snap_dir = Path::new(&tl.pgdata).parent().unwrap().join("snapshots");
        assert_eq!(
            names_in(&snap_dir),
            recorded,
            "{}: snapshot directories and records disagree",
            tl.id
        );
        if tl.id == root {
            if let Some(rc) = rc {
                amcheck(rc).await;
            }
            continue;
        }
        let mut c = env.start(tl).await;
        amcheck(&c).await;
        assert_eq!(
            table_checksum(&c, "pgbench_accounts").await,
            expected,
            "{}: rows differ from the source's at the fork point",
            tl.id
        );
        c.stop().await.expect("stop compute");
    }
}

fn fork_req(id: TimelineId, parent: TimelineId, at: At) -> CreateTimeline {
    CreateTimeline {
        id: Some(id),
        parent: Some(parent),
        at: Some(at),
        follow: None,
        backup: None,
        from_backup: None,
    }
}

fn gone(r: Result<(), ClientError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => e.code() == Some("not_found"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_then_restart() {
    let mut env = Env::new(6 << 30, QUIET).await;
    let (root, rc) = env.root().await;
    let mut rc = Some(rc);
    {
        let c = rc.as_ref().unwrap();
        c.pgbench(&["-i", "-s", "1", "-q", "postgres"])
            .await
            .expect("pgbench -i");
    }
    let expected = table_checksum(rc.as_ref().unwrap(), "pgbench_accounts").await;
    env.client
        .create_snapshot(root.id, "s1")
        .await
        .expect("snapshot s1");

    // RAMIFY_CRASH_STEPS=step,step runs only those steps (to look at one closely).
    let only: Option<Vec<String>> = std::env::var("RAMIFY_CRASH_STEPS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    for (i, &(step, op, scanned)) in CASES.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == step)) {
            continue;
        }
        eprintln!("--- case {i}: SIGKILL at {step} during {op:?}");
        let stopped = matches!(op, Op::ForkStopped | Op::SnapshotStopped);
        if stopped {
            rc.as_mut()
                .unwrap()
                .stop()
                .await
                .expect("stop root compute");
        }
        restart_with(&mut env, &format!("{step}=kill")).await;
        // What the operation needs that is not itself under test.
        let victim: Option<TimelineInfo> = match op {
            Op::Delete => Some(env.fork(root.id, At::Latest).await),
            _ => None,
        };
        let snap = format!("c{i}");
        if op == Op::DeleteSnapshot {
            env.client
                .create_snapshot(root.id, &snap)
                .await
                .expect("snapshot to delete");
        }
        let id = TimelineId::new_v4();
        let create = match op {
            Op::Root => Some(CreateTimeline {
                id: Some(id),
                ..Default::default()
            }),
            Op::ForkRunning | Op::ForkStopped => Some(fork_req(id, root.id, At::Latest)),
            Op::ForkSnapshot => Some(fork_req(id, root.id, At::Snapshot("s1".into()))),
            _ => None,
        };
        let log_from = env.node.log().len();
        let outcome = match op {
            _ if create.is_some() => env
                .client
                .create_timeline(create.as_ref().unwrap())
                .await
                .map(|_| ()),
            Op::SnapshotRunning | Op::SnapshotStopped => {
                env.client.create_snapshot(root.id, &snap).await.map(|_| ())
            }
            Op::DeleteSnapshot => env.client.delete_snapshot(root.id, &snap).await,
            Op::Delete => {
                env.client
                    .delete_timeline(victim.as_ref().unwrap().id, false)
                    .await
            }
            _ => unreachable!(),
        };
        assert!(
            outcome.is_err(),
            "{step}: the operation finished although the node was to die at that step"
        );
        wait_killed_at(&env, step, log_from).await;
        let log_from = env.node.log().len();
        restart_with(&mut env, "").await;
        let scan = env.node.log()[log_from..].to_string();
        if stopped {
            // The root's compute is checked once it runs again, in the next case.
            check_node(&env, root.id, None, &expected).await;
            rc.as_mut()
                .unwrap()
                .restart()
                .await
                .expect("restart root compute");
        } else {
            check_node(&env, root.id, rc.as_ref(), &expected).await;
        }

        // The interrupted operation, retried, succeeds.
        match op {
            _ if create.is_some() => {
                let tl = env
                    .client
                    .create_timeline(create.as_ref().unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{step}: retried create: {e}"))
                    .value;
                assert_eq!(tl.state, TimelineState::Ready);
                if op == Op::Root {
                    // A new root is an empty cluster: it starts and is sound.
                    let mut c = env.start(&tl).await;
                    amcheck(&c).await;
                    c.stop().await.expect("stop");
                } else {
                    check_node(&env, root.id, rc.as_ref(), &expected).await;
                }
                env.client
                    .delete_timeline(tl.id, false)
                    .await
                    .unwrap_or_else(|e| panic!("{step}: delete the retried timeline: {e}"));
            }
            Op::SnapshotRunning | Op::SnapshotStopped => {
                env.client
                    .create_snapshot(root.id, &snap)
                    .await
                    .unwrap_or_else(|e| panic!("{step}: retried snapshot {snap}: {e}"));
                env.client
                    .delete_snapshot(root.id, &snap)
                    .await
                    .expect("delete the retried snapshot");
            }
            Op::DeleteSnapshot => {
                assert!(
                    gone(env.client.delete_snapshot(root.id, &snap).await),
                    "{step}: retried snapshot delete"
                );
                // Its name is free again.
                env.client
                    .create_snapshot(root.id, &snap)
                    .await
                    .unwrap_or_else(|e| panic!("{step}: a new snapshot {snap}: {e}"));
                env.client
                    .delete_snapshot(root.id, &snap)
                    .await
                    .expect("delete it");
            }
            Op::Delete => {
                let v = victim.as_ref().unwrap().id;
                let r = env.client.delete_timeline(v, false).await;
                assert!(
                    matches!(&r, Ok(())) || matches!(&r, Err(e) if e.code() == Some("not_found")),
                    "{step}: retried delete answered {r:?}"
                );
                let listed = env.client.list_timelines().await.unwrap();
                assert!(
                    listed.iter().all(|t| t.id != v),
                    "{step}: the deleted timeline is still listed"
                );
            }
            _ => unreachable!(),
        }
        assert!(
            scan.contains(scanned),
            "{step}: the startup scan did not log {scanned:?}; it logged:\n{scan}"
        );
    }

    // A kill during the startup scan itself: the next start finishes it.
    let id = TimelineId::new_v4();
    restart_with(&mut env, "create.after_publish=kill").await;
    let log_from = env.node.log().len();
    assert!(env
        .client
        .create_timeline(&fork_req(id, root.id, At::Latest))
        .await
        .is_err());
    wait_killed_at(&env, "create.after_publish", log_from).await;
    env.node.set_env(&[(FP, "recover.mid=kill")]);
    assert!(
        env.node.restart().await.is_err(),
        "the node was to die in its startup scan"
    );
    let log_from = env.node.log().len();
    restart_with(&mut env, "").await;
    assert!(env.node.log()[log_from..].contains(CREATE_UNDONE));
    check_node(&env, root.id, rc.as_ref(), &expected).await;

    // DELETE works for every timeline left, the root included.
    rc.take().unwrap().stop().await.expect("stop root compute");
    for tl in env.client.list_timelines().await.unwrap() {
        env.client
            .delete_timeline(tl.id, false)
            .await
            .unwrap_or_else(|e| panic!("delete {}: {e}", tl.id));
    }
    assert!(env.client.list_timelines().await.unwrap().is_empty());
    assert!(names_in(&data_dir(&env).join("timelines")).is_empty());
}

/// Forks `root` at its snapshot `s1` with the node armed to die at `step`, a step of the
/// fork's background work, and waits until it died. Returns the fork's id.
async fn fork_at_s1_killed_at(env: &mut Env, root: TimelineId, step: &str) -> TimelineId {
    restart_with(env, &format!("{step}=kill")).await;
    let log_from = env.node.log().len();
    let id = TimelineId::new_v4();
    // The node may die before or after it answers: the fork is committed either way.
    let _ = env
        .client
        .create_timeline(&fork_req(id, root, At::Snapshot("s1".into())))
        .await;
    wait_killed_at(env, step, log_from).await;
    id
}

/// SIGKILL while a fork from a snapshot finishes its own `fork` snapshot in the background
/// (the fork itself committed): the restart removes the half-cloned snapshot and its
/// record, and the fork is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_fork_snapshot_is_finished_then_restart() {
    let mut env = Env::new(4 << 30, QUIET).await;
    let (root, rc, expected) = env.pgbench_root_with_s1().await;
    let id = fork_at_s1_killed_at(&mut env, root.id, "fork_snapshot.before_publish").await;
    let log_from = env.node.log().len();
    restart_with(&mut env, "").await;
    let scan = env.node.log()[log_from..].to_string();
    for logged in [
        HALF_SNAPSHOT,
        "dropping snapshot records whose directory is missing",
    ] {
        assert!(
            scan.contains(logged),
            "the startup scan did not log {logged:?}; it logged:\n{scan}"
        );
    }
    assert!(env.snapshot_names(id).await.is_empty());
    // The fork starts, passes pg_amcheck and has the snapshot's rows.
    check_node(&env, root.id, Some(&rc), &expected).await;
}

/// SIGKILL while the spare clone of a restored timeline's `fork` snapshot is made: the
/// restart removes the half-made clone; the next fork from that snapshot clones it and
/// is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_spare_clone_is_made_then_restart() {
    let mut env = Env::new(4 << 30, QUIET).await;
    let (root, rc, expected) = env.pgbench_root_with_s1().await;
    let id = fork_at_s1_killed_at(&mut env, root.id, "spare.before_publish").await;
    let fork_snapshot = data_dir(&env).join(format!("timelines/{id}/snapshots/fork"));
    assert!(
        fork_snapshot.join(".spare-tmp/PG_VERSION").is_file(),
        "the half-made spare is not where the node was killed"
    );
    restart_with(&mut env, "").await;
    assert_eq!(
        names_in(&fork_snapshot),
        BTreeSet::from(["pgdata".to_string()]),
        "the restart left a spare behind"
    );
    env.client
        .create_timeline(&fork_req(
            TimelineId::new_v4(),
            id,
            At::Snapshot("fork".into()),
        ))
        .await
        .expect("fork the fork at its snapshot");
    check_node(&env, root.id, Some(&rc), &expected).await;
}

/// Restore-window GC killed after its record commit (snapshots still on disk) and after
/// removing the snapshots (WAL not yet removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_gc_then_restart() {
    let args = [
        "--restore-window",
        "2s",
        "--housekeeping-interval",
        "1s",
        "--snapshot-interval",
        "0",
        "--snapshot-wal-bytes",
        "0",
    ];
    let mut env = Env::new(4 << 30, &args).await;
    let (root, rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "1", "-q", "postgres"])
        .await
        .expect("pgbench -i");
    let expected = table_checksum(&rc, "pgbench_accounts").await;
    // The first GC pass records where the root's WAL is kept from; arming a step only
    // after it, the step is reached by the collection below and not by that pass.
    let archive = PathBuf::from(&root.archive);
    for _ in 0..100 {
        if archive.join("wal-kept-from").exists() {
            break;
        }
        sleep_ms(100).await;
    }
    sleep_ms(1500).await;

    for (n, step) in ["gc.after_record", "gc.after_snapshots"].iter().enumerate() {
        restart_with(&mut env, &format!("{step}=kill")).await;
        let log_from = env.node.log().len();
        // A newer periodic snapshot makes the older ones (the root's base first)
        // collectable once the 2 s window has passed it.
        rc.execute(&format!("CREATE TABLE gc_{n} AS SELECT 1 AS x"))
            .await
            .expect("write");
        env.client
            .create_restore_point(
                root.id,
                &CreateRestorePoint {
                    name: format!("gc-{n}"),
                    snapshot_wal_bytes: Some(1),
                },
            )
            .await
            .expect("restore point with snapshot");
        wait_killed_at(&env, step, log_from).await;
        let log_from = env.node.log().len();
        restart_with(&mut env, "").await;
        if *step == "gc.after_record" {
            assert!(
                env.node.log()[log_from..].contains(UNREFERENCED_SNAPSHOT),
                "the startup scan did not remove what GC had dropped from the record:\n{}",
                env.node.log_tail()
            );
        }
        check_node(&env, root.id, Some(&rc), &expected).await;
        // The next GC passes finish the job: no archived segment below wal-kept-from.
        let kept: ramify_api::Lsn = std::fs::read_to_string(archive.join("wal-kept-from"))
            .expect("wal-kept-from")
            .trim()
            .parse()
            .expect("an LSN");
        let first = format!("{:08X}{:08X}", kept.0 >> 32, (kept.0 & 0xFFFF_FFFF) >> 24);
        for _ in 0..50 {
            let old: Vec<String> = names_in(&archive)
                .into_iter()
                .filter(|f| f.len() == 24 && f[8..] < first[..])
                .collect();
            if old.is_empty() {
                break;
            }
            sleep_ms(200).await;
        }
        let old: Vec<String> = names_in(&archive)
            .into_iter()
            .filter(|f| f.len() == 24 && f[8..] < first[..])
            .collect();
        assert!(
            old.is_empty(),
            "segments below wal-kept-from {kept} remain: {old:?}"
        );
        // A fork at latest still works after it.
        let tl = env.fork(root.id, At::Latest).await;
        let mut c = env.start(&tl).await;
        amcheck(&c).await;
        assert!(table_exists(&c, &format!("gc_{n}")).await);
        c.stop().await.unwrap();
        env.client.delete_timeline(tl.id, false).await.unwrap();
    }
}

/// A snapshot directory no record references (left by an older release, or put there by
/// hand) does not block a snapshot of its name: the new snapshot replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_replaces_a_directory_no_record_references() {
    let env = Env::new(2 << 30, QUIET).await;
    let (root, rc) = env.root().await;
    let stray = Path::new(&root.pgdata)
        .parent()
        .unwrap()
        .join("snapshots/again");
    std::fs::create_dir_all(stray.join("pgdata")).unwrap();
    std::fs::write(stray.join("pgdata/PG_VERSION"), "15\n").unwrap();
    for p in [
        stray.join("pgdata/PG_VERSION"),
        stray.join("pgdata"),
        stray.clone(),
    ] {
        env.user.chown(&p).unwrap();
    }
    rc.execute("CREATE TABLE t AS SELECT 42 AS x")
        .await
        .unwrap();
    let s = env
        .client
        .create_snapshot(root.id, "again")
        .await
        .unwrap_or_else(|e| panic!("snapshot over a stray directory: {e}"));
    assert_eq!(s.name, "again");
    let tl = env
        .client
        .create_timeline(&fork_req(
            TimelineId::new_v4(),
            root.id,
            At::Snapshot("again".into()),
        ))
        .await
        .expect("fork at the snapshot")
        .value;
    let mut c = env.start(&tl).await;
    amcheck(&c).await;
    assert_eq!(c.query_i64("SELECT x FROM t").await.unwrap(), 42);
    c.stop().await.unwrap();
}
