//! Off-node durability against a real S3 server (SeaweedFS) and pgBackRest: durable
//! timelines are archived and backed up into the bucket, and a node whose data
//! directory is gone gets them back — same ids, fork relations, every archived row.

mod common;

use std::time::{Duration, Instant};

use common::{amcheck, query_text, table_checksum, Env};
use ramify_api::{At, CreateTimeline, TimelineId, TimelineInfo};
use ramify_testkit::s3::{skip_without_s3, S3Server};
use ramify_testkit::Compute;

const GIB: u64 = 1 << 30;

/// Node flags for a repository at `prefix`, pushing often (tests wait for it).
fn backup_args(s3: &S3Server, prefix: &str) -> Vec<String> {
    let mut a = s3.node_args(prefix);
    a.push("--backup-interval=200ms".into());
    // A replacement watches its predecessor's claim for three heartbeats.
    a.push("--backup-heartbeat=1s".into());
    a
}

/// A node with a repository at `prefix` of the test's bucket.
async fn node_on(s3: &S3Server, prefix: &str) -> Env {
    let args = backup_args(s3, prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Env::new_with_env(4 * GIB, &args, &s3.node_env()).await
}

async fn fork(env: &Env, parent: TimelineId, backup: Option<bool>) -> TimelineInfo {
    env.client
        .create_timeline(&CreateTimeline {
            parent: Some(parent),
            at: Some(At::Latest),
            backup,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("fork: {e}\n{}", env.node.log_tail()))
        .value
}

/// Ends the compute's current WAL segment (after a commit) and waits until the node
/// reports it in the repository, with nothing left to push.
async fn archived(env: &Env, c: &Compute, id: TimelineId) {
    let seg = query_text(c, "SELECT pg_walfile_name(pg_switch_wal())").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tl = env.client.get_timeline_without_sizes(id).await.unwrap();
        let b = tl
            .backup
            .clone()
            .expect("a durable timeline reports its backup");
        if b.healthy && b.backlog_bytes == 0 && b.archived_to.as_deref() >= Some(seg.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timeline {id}: segment {seg} not in the repository after 60 s: {b:?}\n{}",
            env.node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_volume_comes_back_from_the_bucket() {
    if skip_without_s3("a_lost_volume_comes_back_from_the_bucket") {
        return;
    }
    let s3 = S3Server::start("ramify-test").expect("S3 server");
    let mut env = node_on(&s3, "node-a").await;

    // A durable root, a durable fork of it, a durable fork of that fork, and a fork
    // nobody asked to keep.
    let (root, mut rc) = env.root().await;
    rc.execute(
        "CREATE TABLE t (id int PRIMARY KEY, who text, pad text);
         INSERT INTO t SELECT g, 'root', repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    archived(&env, &rc, root.id).await;
    let child = fork(&env, root.id, Some(true)).await;
    let mut cc = env.start(&child).await;
    cc.execute("INSERT INTO t SELECT g, 'child', 'c' FROM generate_series(100001, 100500) g")
        .await
        .unwrap();
    let grand = fork(&env, child.id, Some(true)).await;
    let mut gc = env.start(&grand).await;
    gc.execute("DELETE FROM t WHERE id <= 100; INSERT INTO t VALUES (200001, 'grand', 'g')")
        .await
        .unwrap();
    let scratch = fork(&env, root.id, None).await;
    assert!(
        scratch.backup.is_none(),
        "a fork is not durable unless asked"
    );
    // A durable fork deleted before the volume is lost stays deleted.
    let gone = fork(&env, root.id, Some(true)).await;
    let gc_gone = env.start(&gone).await;
    archived(&env, &gc_gone, gone.id).await;
    drop(gc_gone);
    env.client.delete_timeline(gone.id, true).await.unwrap();
    let key = format!("node-a/ramify/timelines/{}.json", gone.id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s3
        .get_object(&key)
        .unwrap()
        .is_some_and(|b| String::from_utf8_lossy(&b).contains("deleted_at"))
    {
        assert!(
            Instant::now() < deadline,
            "the deleted fork's record is not marked deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The root goes on after its forks.
    rc.execute("UPDATE t SET who = 'root-later' WHERE id BETWEEN 500 AND 600")
        .await
        .unwrap();
    for (c, id) in [(&rc, root.id), (&cc, child.id), (&gc, grand.id)] {
        archived(&env, c, id).await;
    }
    // The root's base backup runs beside its WAL pushes; it is there soon.
    wait_backup(&env, root.id, "the root has a base backup", |b| {
        b.newest_backup.is_some()
    })
    .await;
    let child_info = env
        .client
        .get_timeline_without_sizes(child.id)
        .await
        .unwrap();
    assert!(
        child_info.backup.as_ref().unwrap().newest_backup.is_none(),
        "a durable fork of a durable parent stores no backup of its own"
    );
    let sums = [
        table_checksum(&rc, "t").await,
        table_checksum(&cc, "t").await,
        table_checksum(&gc, "t").await,
    ];

    let rto = lose_volume_and_recover(&mut env, [&mut rc, &mut cc, &mut gc]).await;
    let listed: Vec<TimelineId> = env
        .client
        .list_timelines()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    for id in [root.id, child.id, grand.id] {
        assert!(
            listed.contains(&id),
            "timeline {id} recovered:\n{}",
            env.node.log_tail()
        );
    }
    assert!(
        !listed.contains(&scratch.id),
        "a fork that was not durable is not recovered"
    );
    assert!(
        !listed.contains(&gone.id),
        "a deleted durable fork is not brought back"
    );
    let got = |id| {
        let client = env.client.clone();
        async move { client.get_timeline_without_sizes(id).await.unwrap() }
    };
    assert_eq!(got(child.id).await.parent, Some(root.id));
    assert_eq!(got(grand.id).await.parent, Some(child.id));

    let rc = env.start(&got(root.id).await).await;
    let cc = env.start(&got(child.id).await).await;
    let gc = env.start(&got(grand.id).await).await;
    let after = [
        table_checksum(&rc, "t").await,
        table_checksum(&cc, "t").await,
        table_checksum(&gc, "t").await,
    ];
    assert_eq!(
        after, sums,
        "every archived row is back, each branch its own"
    );
    assert_eq!(
        gc.query_i64("SELECT count(*) FROM t WHERE who = 'grand'")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cc.query_i64("SELECT count(*) FROM t WHERE who = 'grand' OR who = 'root-later'")
            .await
            .unwrap(),
        0,
        "the child has neither its child's nor its parent's later rows"
    );
    for c in [&rc, &cc, &gc] {
        amcheck(c).await;
    }
    // Recovered timelines go on: written, archived again, forked.
    rc.execute("INSERT INTO t VALUES (300001, 'after-recovery', '')")
        .await
        .unwrap();
    archived(&env, &rc, root.id).await;
    let again = fork(&env, root.id, None).await;
    let ac = env.start(&again).await;
    assert_eq!(
        ac.query_i64("SELECT count(*) FROM t WHERE who = 'after-recovery'")
            .await
            .unwrap(),
        1
    );
    eprintln!("recovery of 3 timelines took {rto:?}");
}

/// The volume is lost: the computes and the node die, the data directory is emptied;
/// then the node starts with `--recover`. Returns how long it took to serve.
async fn lose_volume_and_recover<const N: usize>(
    env: &mut Env,
    computes: [&mut Compute; N],
) -> Duration {
    for c in computes {
        c.kill9().unwrap();
    }
    env.node.kill9().unwrap();
    let data = env.scratch.path().join("data");
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let t0 = Instant::now();
    env.node.add_args(&["--recover"]);
    env.node.restart().await.expect("node recovers and serves");
    t0.elapsed()
}

/// The archive's WAL file names on the node.
fn archive_names(tl: &TimelineInfo) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&tl.archive)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

async fn wait_backup<F: Fn(&ramify_api::BackupStatus) -> bool>(
    env: &Env,
    id: TimelineId,
    what: &str,
    ok: F,
) -> ramify_api::BackupStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = env
            .client
            .get_timeline_without_sizes(id)
            .await
            .unwrap()
            .backup
            .expect("durable");
        if ok(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {b:?}\n{}",
            env.node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_keeps_wal_on_the_node_and_wrong_credentials_say_so() {
    if skip_without_s3("an_unreachable_bucket_keeps_wal_on_the_node") {
        return;
    }
    let mut s3 = S3Server::start("ramify-faults").expect("S3 server");
    let mut args = backup_args(&s3, "node-b");
    // GC runs often and its window is short: only the backlog keeps old WAL.
    args.extend([
        "--housekeeping-interval=200ms".into(),
        "--restore-window=1s".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut envs = s3.node_env();
    envs.push(("RUST_LOG", "info,ramify_storage::backup=debug"));
    let mut env = Env::new_with_env(4 * GIB, &args, &envs).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t (id int, pad text)")
        .await
        .unwrap();
    archived(&env, &rc, root.id).await;

    s3.stop();
    for _ in 0..3 {
        rc.execute("INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g")
            .await
            .unwrap();
        rc.execute("SELECT pg_switch_wal()").await.unwrap();
    }
    let down = wait_backup(
        &env,
        root.id,
        "archiving reports the unreachable bucket",
        |b| !b.healthy && b.backlog_bytes > 0,
    )
    .await;
    let error = down.error.clone().unwrap_or_default();
    assert!(
        error.contains("archive-push") || error.contains("reach") || error.contains("connect"),
        "{down:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", env.node.metrics_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "ramify_storage_backup_healthy{{timeline=\"{}\"}} 0",
            root.id
        )),
        "/metrics shows the failing archiving:\n{metrics}"
    );
    // A snapshot makes everything before it unneeded for the (1 s) restore window: GC
    // would remove those segments, but they are not in the bucket yet.
    let before = archive_names(
        &env.client
            .get_timeline_without_sizes(root.id)
            .await
            .unwrap(),
    );
    env.client
        .create_snapshot(root.id, "after-outage")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tl = env
        .client
        .get_timeline_without_sizes(root.id)
        .await
        .unwrap();
    let during = archive_names(&tl);
    for name in &before {
        if tl.backup.as_ref().unwrap().archived_to.as_deref() < Some(name.as_str()) {
            assert!(
                during.contains(name),
                "segment {name}, not yet in the bucket, was removed"
            );
        }
    }

    // Back: the backlog drains, oldest first, and GC may then remove what is uploaded.
    s3.restart().expect("S3 server again");
    rc.execute("INSERT INTO t VALUES (0, '')").await.unwrap();
    archived(&env, &rc, root.id).await;
    let b = wait_backup(&env, root.id, "healthy again", |b| {
        b.healthy && b.error.is_none()
    })
    .await;
    assert_eq!(b.backlog_bytes, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while archive_names(
        &env.client
            .get_timeline_without_sizes(root.id)
            .await
            .unwrap(),
    )
    .iter()
    .any(|n| before.first() == Some(n))
    {
        assert!(
            Instant::now() < deadline,
            "GC never removed the uploaded segments: the test would not have shown anything\n{}",
            env.node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Wrong credentials: the node serves, and the timeline says why it is not archived.
    env.node.kill9().unwrap();
    env.node.set_env(&[
        ("AWS_ACCESS_KEY_ID", ramify_testkit::s3::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ]);
    env.node.restart().await.unwrap();
    rc.execute("INSERT INTO t VALUES (1, ''); SELECT pg_switch_wal()")
        .await
        .unwrap();
    let bad = wait_backup(&env, root.id, "wrong credentials reported", |b| !b.healthy).await;
    let error = bad.error.unwrap_or_default();
    assert!(
        error.contains("403") || error.contains("Signature") || error.contains("Access"),
        "the error names the refusal: {error}"
    );

    // Recovering from a prefix with no timelines is a clear error, and the node does
    // not start.
    let other = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(other.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = other.path().join("data");
    let mut a = s3.node_args("nothing-here");
    a.push("--recover".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // The message, not a backtrace, ends its log.
    let mut envs = s3.node_env();
    envs.push(("RUST_LIB_BACKTRACE", "0"));
    let err = match ramify_testkit::StorageNodeProcess::start_with_env(
        std::path::Path::new(env!("CARGO_BIN_EXE_ramify-storage")),
        &data,
        &a,
        &envs,
    )
    .await
    {
        Ok(_) => panic!("a node recovering from an empty repository started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("holds no Ramify timelines"), "{err}");
}

/// Starts a storage node named `name` on a data directory of its own, archiving to
/// `s3`'s prefix `shared`; the directory lives as long as the first value.
async fn start_named(
    s3: &S3Server,
    name: &str,
    extra: &[&str],
) -> (
    tempfile::TempDir,
    Result<ramify_testkit::StorageNodeProcess, String>,
) {
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut args = backup_args(s3, "shared");
    args.push(format!("--node-name={name}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut envs = s3.node_env();
    envs.push(("RUST_LIB_BACKTRACE", "0"));
    let started = ramify_testkit::StorageNodeProcess::start_with_env(
        std::path::Path::new(env!("CARGO_BIN_EXE_ramify-storage")),
        &dir.path().join("data"),
        &args,
        &envs,
    )
    .await
    .map_err(|e| e.to_string());
    (dir, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_has_one_writer_and_a_replacement_takes_it_over() {
    if skip_without_s3("a_prefix_has_one_writer_and_a_replacement_takes_it_over") {
        return;
    }
    let s3 = S3Server::start("ramify-writer").expect("S3 server");
    let mut a_args = backup_args(&s3, "shared");
    a_args.push("--node-name=node-a".into());
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let env = Env::new_with_env(2 * GIB, &a_args, &s3.node_env()).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t AS SELECT 1 AS id")
        .await
        .unwrap();
    archived(&env, &rc, root.id).await;
    let writer = s3
        .get_object("shared/ramify/writer.json")
        .unwrap()
        .expect("writer record");
    assert!(
        String::from_utf8_lossy(&writer).contains("\"node-a\""),
        "{}",
        String::from_utf8_lossy(&writer)
    );

    // Another node given the same prefix does not start, and says whose it is.
    let (_b, started) = start_named(&s3, "node-b", &[]).await;
    let Err(err) = started else {
        panic!("a second node started on a prefix node-a writes")
    };
    assert!(
        err.contains("is written by another storage node, node-a"),
        "{err}"
    );

    // node-a stops answering (its machine hangs): the same name on a new data directory
    // is its replacement. It watches the record for three heartbeats, takes the prefix
    // over and recovers.
    let a_pid = nix::unistd::Pid::from_raw(env.node.pid().expect("node-a runs") as i32);
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (_c, started) = start_named(&s3, "node-a", &["--recover"]).await;
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let c = started.expect("the replacement starts");
    assert!(
        c.log().contains("replaces an earlier incarnation"),
        "{}",
        c.log()
    );
    // The old incarnation wakes up, finds the newer claim at its next heartbeat and stops
    // writing: its timeline says why, and nothing more of it reaches the bucket.
    let fenced = wait_backup(&env, root.id, "the old incarnation stops", |b| {
        !b.healthy
            && b.error
                .as_deref()
                .is_some_and(|e| e.contains("took this backup repository over"))
    })
    .await;
    let before = fenced.archived_to.clone();
    rc.execute("INSERT INTO t VALUES (2)").await.unwrap();
    query_text(&rc, "SELECT pg_walfile_name(pg_switch_wal())").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env
        .client
        .get_timeline_without_sizes(root.id)
        .await
        .unwrap()
        .backup
        .expect("durable");
    assert_eq!(after.archived_to, before, "the fenced node pushed WAL");
    assert!(!after.healthy);

    // A second node of the same name while the replacement lives (a twin cluster given
    // the same bucket): refused, after watching the record.
    let (_d, started) = start_named(&s3, "node-a", &[]).await;
    let Err(err) = started else {
        panic!("a twin of node-a started while the replacement writes")
    };
    assert!(
        err.contains("a node of the same name runs elsewhere"),
        "{err}"
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_emptied_bucket_is_archived_anew_from_the_node() {
    if skip_without_s3("a_deleted_or_emptied_bucket_is_archived_anew_from_the_node") {
        return;
    }
    let s3 = S3Server::start("ramify-heal").expect("S3 server");
    let mut args = backup_args(&s3, "node-h");
    // GC runs often and its window is short: only what the bucket lacks keeps old WAL.
    args.extend([
        "--housekeeping-interval=200ms".into(),
        "--restore-window=1s".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = Env::new_with_env(4 * GIB, &args, &s3.node_env()).await;
    let (root, mut rc) = env.root().await;
    rc.execute(
        "CREATE TABLE t (id int PRIMARY KEY, who text, pad text);
         INSERT INTO t SELECT g, 'root', repeat('x', 200) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    archived(&env, &rc, root.id).await;
    wait_backup(&env, root.id, "the root has a base backup", |b| {
        b.newest_backup.is_some()
    })
    .await;
    let child = fork(&env, root.id, Some(true)).await;
    let mut cc = env.start(&child).await;
    cc.execute("INSERT INTO t SELECT g, 'child', '' FROM generate_series(100001, 100300) g")
        .await
        .unwrap();
    archived(&env, &cc, child.id).await;

    // The bucket is deleted: the root goes on writing, the child stays idle.
    let code = s3.delete_bucket().unwrap();
    assert!(code.starts_with('2'), "DELETE bucket answered {code}");
    for i in 0..3 {
        rc.execute(&format!(
            "INSERT INTO t SELECT g, 'outage', repeat('y', 500) FROM generate_series({}, {}) g",
            200_000 + i * 1000,
            200_000 + i * 1000 + 999
        ))
        .await
        .unwrap();
        rc.execute("SELECT pg_switch_wal()").await.unwrap();
    }
    for id in [root.id, child.id] {
        // The repository check (once a heartbeat) can name the missing bucket before
        // the root's next pass has counted the segments it could not push: the
        // backlog must show up, not necessarily with the first sign of the outage.
        wait_backup(
            &env,
            id,
            "the missing bucket is named, the root's backlog counted",
            |b| {
                !b.healthy
                    && b.error
                        .as_deref()
                        .is_some_and(|e| e.contains("does not exist"))
                    && (id != root.id || b.backlog_bytes > 0)
            },
        )
        .await;
    }
    // A snapshot makes the WAL before it unneeded on the node (1 s window): GC must
    // still keep what the bucket lacks.
    env.client
        .create_snapshot(root.id, "during-outage")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The bucket is back, empty: both timelines are archived anew, with a base to
    // recover from, and say so until then.
    let code = s3.create_bucket().unwrap();
    assert!(code.starts_with('2'), "PUT bucket answered {code}");
    for id in [root.id, child.id] {
        let b = wait_backup(&env, id, "archived anew with a base", |b| {
            b.healthy && b.error.is_none()
        })
        .await;
        if id == root.id {
            assert!(b.newest_backup.is_some(), "{b:?}");
        }
    }
    assert!(
        s3.get_object(&format!("node-h/ramify/timelines/{}.json", child.id))
            .unwrap()
            .is_some(),
        "the idle child's record is written again"
    );
    rc.execute("INSERT INTO t VALUES (300001, 'after-heal', '')")
        .await
        .unwrap();
    archived(&env, &rc, root.id).await;
    archived(&env, &cc, child.id).await;
    let sums = [
        table_checksum(&rc, "t").await,
        table_checksum(&cc, "t").await,
    ];

    // What the new bucket holds is enough to recover both, with every row.
    lose_volume_and_recover(&mut env, [&mut rc, &mut cc]).await;
    let tl = |id| {
        let client = env.client.clone();
        async move { client.get_timeline_without_sizes(id).await.unwrap() }
    };
    let rc = env.start(&tl(root.id).await).await;
    let cc = env.start(&tl(child.id).await).await;
    assert_eq!(
        [
            table_checksum(&rc, "t").await,
            table_checksum(&cc, "t").await
        ],
        sums,
        "every row written before, during and after the outage is back"
    );
    assert_eq!(
        rc.query_i64("SELECT count(*) FROM t WHERE who = 'outage'")
            .await
            .unwrap(),
        3000
    );
    assert_eq!(tl(child.id).await.parent, Some(root.id));
    for c in [&rc, &cc] {
        amcheck(c).await;
    }
}

/// Pids of the pgBackRest processes working on `stanza`.
fn pgbackrest_pids(stanza: &str) -> Vec<i32> {
    let flag = format!("--stanza={stanza}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"pgbackrest"))
                    && args.contains(&flag.as_bytes())
                    && args.contains(&&b"backup"[..])
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_cut_off_half_way_is_never_used_and_is_taken_again() {
    if skip_without_s3("a_base_backup_cut_off_half_way_is_never_used_and_is_taken_again") {
        return;
    }
    let s3 = S3Server::start("ramify-half").expect("S3 server");
    let mut args = backup_args(&s3, "node-c");
    args.push("--backup-full-after=16MiB".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = Env::new_with_env(8 * GIB, &args, &s3.node_env()).await;
    let (root, mut rc) = env.root().await;
    // Random hex, which compresses little: the backup takes a while to upload.
    rc.execute(
        "CREATE TABLE t (id int PRIMARY KEY, pad text);
         INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text)
             || md5(random()::text) || md5(random()::text) || md5(random()::text)
             || md5(random()::text) || md5(random()::text) || md5(random()::text)
           FROM generate_series(1, 600000) g",
    )
    .await
    .unwrap();
    archived(&env, &rc, root.id).await;
    let first = wait_backup(&env, root.id, "the first base backup", |b| {
        b.newest_backup.is_some()
    })
    .await
    .newest_backup
    .unwrap();
    env.client.create_snapshot(root.id, "big").await.unwrap();
    archived(&env, &rc, root.id).await;

    // The backup of the new snapshot starts; once some of it is in the bucket, the node
    // and its pgBackRest processes are killed (a node crash half-way).
    let stanza = root.id.to_string();
    let sets = format!("node-c/backup/{stanza}/");
    let deadline = Instant::now() + Duration::from_secs(120);
    let cut_set = loop {
        let uploading = s3
            .list_keys(&sets)
            .unwrap()
            .into_iter()
            .filter_map(|k| {
                let set = k.strip_prefix(&sets)?.split('/').next()?.to_string();
                (set != first.set && k.contains("/pg_data/")).then_some(set)
            })
            .next();
        let pids = pgbackrest_pids(&stanza);
        if let (Some(set), false) = (uploading, pids.is_empty()) {
            env.node.kill9().unwrap();
            for pid in pgbackrest_pids(&stanza) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            break set;
        }
        assert!(
            Instant::now() < deadline,
            "no second base backup under way\n{}",
            env.node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let keys = s3.list_keys(&format!("{sets}{cut_set}/")).unwrap();
    assert!(
        !keys.iter().any(|k| k.ends_with("/backup.manifest")),
        "the backup was complete before the kill; the test showed nothing: {keys:?}"
    );

    // Back up: the cut-off set is never recorded; the backup is taken again.
    env.node.restart().await.unwrap();
    let b = wait_backup(&env, root.id, "a whole second base backup", |b| {
        b.backups.len() == 2
    })
    .await;
    assert_eq!(b.backups[1].snapshot, "big", "{b:?}");
    rc.execute("INSERT INTO t VALUES (0, 'after')")
        .await
        .unwrap();
    archived(&env, &rc, root.id).await;
    let sum = table_checksum(&rc, "t").await;
    lose_volume_and_recover(&mut env, [&mut rc]).await;
    let rc = env
        .start(
            &env.client
                .get_timeline_without_sizes(root.id)
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(table_checksum(&rc, "t").await, sum);
    amcheck(&rc).await;
}

/// The status and message of a refused call.
fn refusal<T: std::fmt::Debug>(r: Result<T, ramify_api::ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("not refused: {v:?}"),
        Err(ramify_api::ClientError::Api {
            status, message, ..
        }) => (status.as_u16(), message),
        Err(e) => panic!("{e}"),
    }
}

/// The status and message of a refused create.
async fn refused(env: &Env, req: &CreateTimeline) -> (u16, String) {
    refusal(env.client.create_timeline(req).await.map(|r| r.value.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_timeline_is_copied_to_another_node_through_the_bucket() {
    if skip_without_s3("a_durable_timeline_is_copied_to_another_node_through_the_bucket") {
        return;
    }
    let s3 = S3Server::start("ramify-copy").expect("S3 server");
    let a = node_on(&s3, "node-a").await;
    // On node A: a durable root, a durable fork of it with rows of its own (its base is
    // the root's backup), and a fork nobody asked to keep.
    let (root, rc) = a.root().await;
    rc.execute(
        "CREATE TABLE t (id int PRIMARY KEY, who text, pad text);
         INSERT INTO t SELECT g, 'root', repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    archived(&a, &rc, root.id).await;
    wait_backup(&a, root.id, "the root has a base backup", |b| {
        b.newest_backup.is_some()
    })
    .await;
    let x = fork(&a, root.id, Some(true)).await;
    let xc = a.start(&x).await;
    xc.execute("DELETE FROM t WHERE id <= 500; INSERT INTO t VALUES (900001, 'fork', '')")
        .await
        .unwrap();
    archived(&a, &xc, x.id).await;
    rc.execute("UPDATE t SET who = 'root-later' WHERE id > 19000")
        .await
        .unwrap();
    archived(&a, &rc, root.id).await;
    let scratch = fork(&a, root.id, None).await;
    let x_sum = table_checksum(&xc, "t").await;

    // Node B, with a prefix of its own in the same bucket.
    let mut b = node_on(&s3, "node-b").await;
    let copy_of = |prefix: &str, timeline| CreateTimeline {
        from_backup: Some(ramify_api::FromBackup {
            prefix: prefix.into(),
            timeline,
            through: None,
        }),
        ..Default::default()
    };
    let (status, message) = refused(&b, &copy_of("../node-a", x.id)).await;
    assert!(
        status == 400 && message.contains("not a prefix"),
        "{message}"
    );
    let (status, message) = refused(&b, &copy_of("node-a", scratch.id)).await;
    assert!(
        status == 404 && message.contains("not in the backup repository"),
        "a timeline that is not durable cannot be copied: {message}"
    );
    let (status, message) = refused(
        &b,
        &CreateTimeline {
            parent: Some(root.id),
            ..copy_of("node-a", x.id)
        },
    )
    .await;
    assert!(status == 400 && message.contains("not with"), "{message}");

    // The copy: a root of node B, with the fork's rows as archived.
    let t0 = Instant::now();
    let copy = b
        .client
        .create_timeline(&copy_of("node-a/", x.id))
        .await
        .unwrap_or_else(|e| panic!("copy: {e}\n{}", b.node.log_tail()))
        .value;
    let copied_in = t0.elapsed();
    assert_eq!(copy.parent, None);
    assert!(
        !std::path::Path::new(&copy.pgdata)
            .parent()
            .unwrap()
            .join("lineage")
            .exists(),
        "the ancestors' WAL fetched for the copy is not published with it"
    );
    let mut bc = b.start(&copy).await;
    assert_eq!(table_checksum(&bc, "t").await, x_sum);
    assert_eq!(
        bc.query_i64("SELECT count(*) FROM t WHERE who = 'root-later'")
            .await
            .unwrap(),
        0,
        "the copy has the fork's history, not its parent's later rows"
    );
    amcheck(&bc).await;
    // The two go their own ways.
    bc.execute("INSERT INTO t VALUES (900002, 'copy', '')")
        .await
        .unwrap();
    assert_eq!(
        xc.query_i64("SELECT count(*) FROM t WHERE who = 'copy'")
            .await
            .unwrap(),
        0
    );
    assert_eq!(table_checksum(&xc, "t").await, x_sum);
    // Node B keeps its copy in its own prefix, with a base backup of its own, and gets
    // it back when its volume is lost.
    archived(&b, &bc, copy.id).await;
    // Of its `fork` snapshot: replaying it needs the lineage's WAL, which node B's own
    // prefix must hold.
    wait_backup(&b, copy.id, "the copy has a base backup on node B", |s| {
        s.healthy
            && s.newest_backup
                .as_ref()
                .is_some_and(|n| n.snapshot == "fork")
    })
    .await;
    assert!(s3
        .get_object(&format!("node-b/ramify/timelines/{}.json", copy.id))
        .unwrap()
        .is_some());
    let copy_sum = table_checksum(&bc, "t").await;
    lose_volume_and_recover(&mut b, [&mut bc]).await;
    let bc = b
        .start(&b.client.get_timeline_without_sizes(copy.id).await.unwrap())
        .await;
    assert_eq!(table_checksum(&bc, "t").await, copy_sum);
    // A copy may keep the timeline's id (a branch moving to this node).
    let moved = b
        .client
        .create_timeline(&CreateTimeline {
            id: Some(x.id),
            ..copy_of("node-a", x.id)
        })
        .await
        .unwrap()
        .value;
    assert_eq!(moved.id, x.id);
    let mc = b.start(&moved).await;
    assert_eq!(table_checksum(&mc, "t").await, x_sum);
    eprintln!("copied a timeline across nodes in {copied_in:?}");
}

/// The status and message of a refused seal.
async fn seal_refused(env: &Env, id: TimelineId) -> (u16, String) {
    refusal(env.client.seal_timeline(id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_timeline_moves_to_another_node_with_every_commit() {
    if skip_without_s3("a_sealed_timeline_moves_to_another_node_with_every_commit") {
        return;
    }
    let s3 = S3Server::start("ramify-move").expect("S3 server");
    let a = node_on(&s3, "node-a").await;
    let (root, mut rc) = a.root().await;
    rc.execute(
        "CREATE TABLE t (id int PRIMARY KEY, pad text);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    archived(&a, &rc, root.id).await;
    wait_backup(&a, root.id, "the root has a base backup", |b| {
        b.newest_backup.is_some()
    })
    .await;
    let scratch = fork(&a, root.id, None).await;
    // Commits after the last archived segment: only in the unfinished one, in pg_wal.
    for i in 0..50 {
        rc.execute(&format!("INSERT INTO t VALUES ({}, 'tail')", 100_000 + i))
            .await
            .unwrap();
    }
    let (status, message) = seal_refused(&a, root.id).await;
    assert!(
        status == 409 && message.contains("running"),
        "a running compute is stopped first: {status} {message}"
    );
    let (status, message) = seal_refused(&a, scratch.id).await;
    assert!(
        status == 409 && message.contains("not kept"),
        "a timeline that is not durable has nothing to seal into: {status} {message}"
    );
    let sum = table_checksum(&rc, "t").await;
    // A clean stop archives the segment it ends (Postgres switches it away when
    // archiving is on); the seal pushes the last one, with the shutdown checkpoint.
    rc.stop().await.unwrap();
    let t0 = Instant::now();
    let sealed = a
        .client
        .seal_timeline(root.id)
        .await
        .unwrap_or_else(|e| panic!("seal: {e}\n{}", a.node.log_tail()));
    let sealed_in = t0.elapsed();
    // A seal asked again finds everything in place.
    assert_eq!(a.client.seal_timeline(root.id).await.unwrap(), sealed);
    let partials = |s3: &S3Server| {
        s3.list_keys(&format!("node-a/archive/{}/", root.id))
            .unwrap()
            .into_iter()
            .filter(|k| k.contains(&format!("{}.partial-", sealed.partial)))
            .count()
    };
    assert_eq!(
        partials(&s3),
        1,
        "the tail is in the bucket as a partial segment"
    );

    // Node B copies it under its own id, through the sealed record.
    let b = node_on(&s3, "node-b").await;
    let move_req = |through| CreateTimeline {
        id: Some(root.id),
        from_backup: Some(ramify_api::FromBackup {
            prefix: "node-a".into(),
            timeline: root.id,
            through: Some(through),
        }),
        ..Default::default()
    };
    let (status, message) = refused(
        &b,
        &move_req(ramify_api::Lsn(sealed.lsn.0 + 64 * 1024 * 1024)),
    )
    .await;
    assert!(
        status == 409 && message.contains("seal it again"),
        "a copy that cannot reach the sealed record is refused: {status} {message}"
    );
    let t1 = Instant::now();
    let moved = b
        .client
        .create_timeline(&move_req(sealed.lsn))
        .await
        .unwrap_or_else(|e| panic!("copy: {e}\n{}", b.node.log_tail()))
        .value;
    let copied_in = t1.elapsed();
    let mut bc = b.start(&moved).await;
    assert_eq!(
        table_checksum(&bc, "t").await,
        sum,
        "every commit, the unarchived tail's too"
    );
    assert_eq!(
        bc.query_i64("SELECT count(*) FROM t WHERE pad = 'tail'")
            .await
            .unwrap(),
        50
    );
    amcheck(&bc).await;
    bc.stop().await.unwrap();

    // The move is called off and the compute runs on node A again, into the same
    // segment, then dies (SIGKILL): a second seal archives the longer tail in place of
    // the first's, and finds the end of the WAL without a clean shutdown.
    let mut rc = a.start(&root).await;
    for i in 0..20 {
        rc.execute(&format!("INSERT INTO t VALUES ({}, 'again')", 200_000 + i))
            .await
            .unwrap();
    }
    let sum2 = table_checksum(&rc, "t").await;
    let unarchived = query_text(&rc, "SELECT pg_walfile_name(pg_current_wal_lsn())").await;
    rc.kill9().unwrap();
    let sealed2 = a
        .client
        .seal_timeline(root.id)
        .await
        .unwrap_or_else(|e| panic!("second seal: {e}\n{}", a.node.log_tail()));
    assert!(sealed2.lsn > sealed.lsn, "{sealed2:?} after {sealed:?}");
    assert_eq!(
        sealed2.partial, unarchived,
        "the commits before the kill are in the partial segment only"
    );
    assert_eq!(
        sealed2.partial, sealed.partial,
        "the compute went on in the segment it was sealed in"
    );
    assert_eq!(partials(&s3), 1, "the older partial segment was replaced");
    // Node B's first copy is of another seal: refused as it stands, made again.
    let (status, _) = refused(&b, &move_req(sealed2.lsn)).await;
    assert_eq!(status, 409);
    b.client.delete_timeline(root.id, false).await.unwrap();
    let moved = b
        .client
        .create_timeline(&move_req(sealed2.lsn))
        .await
        .unwrap_or_else(|e| panic!("second copy: {e}\n{}", b.node.log_tail()))
        .value;
    let bc = b.start(&moved).await;
    assert_eq!(table_checksum(&bc, "t").await, sum2);
    assert_eq!(
        bc.query_i64("SELECT count(*) FROM t WHERE pad = 'again'")
            .await
            .unwrap(),
        20
    );
    amcheck(&bc).await;
    bc.execute("INSERT INTO t VALUES (300000, 'on b')")
        .await
        .unwrap();
    archived(&b, &bc, root.id).await;
    eprintln!("sealed in {sealed_in:?}, copied to the other node in {copied_in:?}");
}
