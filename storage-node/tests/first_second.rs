//! History from the first second: a new root is born a Postgres cluster with a base
//! snapshot, so every point of its life — before its first commit, between two commits,
//! right after its creation — can be forked, with no snapshot taken by hand. Real Postgres
//! on a reflink scratch.

mod common;

use std::time::Instant;

use chrono::{DateTime, Utc};
use common::*;
use ramify_api::{At, CreateTimeline, Lsn, SnapshotKind, TimelineState};

const GIB: u64 = 1 << 30;

async fn now_in(c: &ramify_testkit::Compute) -> DateTime<Utc> {
    c.client()
        .await
        .expect("connect")
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .expect("clock_timestamp")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_is_restorable_from_its_first_second() {
    let env = Env::new(2 * GIB, &[]).await;
    let t_asked = Utc::now();
    let started = Instant::now();
    let root = env
        .client
        .create_timeline(&CreateTimeline::default())
        .await
        .expect("create root")
        .value;
    let create_ms = started.elapsed().as_millis();
    let after_create = Utc::now();
    // The restore window starts at the creation, not at a first snapshot.
    let w = &root.restore_window;
    let from_lsn = w
        .from_lsn
        .expect("a new root's restore window has a start LSN");
    let from_time = w
        .from_time
        .expect("a new root's restore window has a start time");
    assert!(
        from_time <= root.created_at && from_time >= t_asked - chrono::Duration::seconds(1),
        "window starts at {from_time}, the root was created at {}",
        root.created_at
    );

    let rc = env.start(&root).await;
    let lsn_after_start = current_lsn(&rc).await;
    sleep_ms(300).await;
    let before_t1 = now_in(&rc).await;
    sleep_ms(300).await;
    rc.execute("CREATE TABLE orders (id int primary key, amount int)")
        .await
        .unwrap();
    rc.execute("INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 250) g")
        .await
        .unwrap();
    let t1 = now_in(&rc).await;
    sleep_ms(300).await;
    let between = now_in(&rc).await;
    sleep_ms(300).await;
    rc.execute("DROP TABLE orders").await.unwrap();
    assert!(!table_exists(&rc, "orders").await);

    // Between creation and the first commit: the database as initdb left it.
    for (what, at) in [
        ("a time before the first commit", At::Time(before_t1)),
        ("the time the root was created", At::Time(after_create)),
        ("the window's first LSN", At::Lsn(from_lsn)),
        (
            "an LSN right after the first start",
            At::Lsn(lsn_after_start),
        ),
    ] {
        let f = env.fork(root.id, at.clone()).await;
        let fc = env.start(&f).await;
        assert!(
            !table_exists(&fc, "orders").await,
            "a fork at {what} ({at}) has the table created later"
        );
        assert_eq!(
            fc.query_i64("SELECT count(*) FROM pg_database WHERE datname = 'postgres'")
                .await
                .unwrap(),
            1,
            "a fork at {what} is a working cluster"
        );
        fc.pg_amcheck().await.expect("pg_amcheck");
    }

    // Between the commit and the drop: every row is back.
    let f = env.fork(root.id, At::Time(between)).await;
    let ft = f.fork_time.expect("fork_time");
    assert!(
        ft >= t1 - chrono::Duration::seconds(1) && ft <= between,
        "fork_time {ft} is not the insert's commit (before {t1})"
    );
    let fc = env.start(&f).await;
    assert!(
        table_exists(&fc, "orders").await,
        "the dropped table is back"
    );
    assert_eq!(count(&fc, "orders").await, 250);
    assert_eq!(
        fc.query_i64("SELECT sum(amount) FROM orders")
            .await
            .unwrap(),
        (1..=250).map(|g| g * 10).sum::<i64>()
    );
    fc.pg_amcheck().await.expect("pg_amcheck");

    // A point before the root existed is refused, naming the valid range.
    let before = Lsn(from_lsn.0 - 1);
    let err = env
        .client
        .create_timeline(&CreateTimeline {
            id: None,
            parent: Some(root.id),
            at: Some(At::Lsn(before)),
            follow: None,
            backup: None,
            from_backup: None,
        })
        .await
        .expect_err("an LSN before the root's creation");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("lsn {before} is before the restore window"))
            && msg.contains(&format!("valid range: lsn {from_lsn} to")),
        "{msg}"
    );
    let err = env
        .client
        .create_timeline(&CreateTimeline {
            id: None,
            parent: Some(root.id),
            at: Some(At::Time(from_time - chrono::Duration::seconds(60))),
            follow: None,
            backup: None,
            from_backup: None,
        })
        .await
        .expect_err("a time before the root's creation");
    assert!(
        err.to_string().contains("is before the restore window")
            && err.to_string().contains("valid range"),
        "{err}"
    );

    // The API shows what it is: a cluster, with its base snapshot.
    let info = env.get(root.id).await;
    assert_eq!(info.state, TimelineState::Ready);
    let base = &info.snapshots[0];
    assert_eq!(
        (base.name.as_str(), base.kind),
        ("base", SnapshotKind::Base)
    );
    assert_eq!(base.end_lsn, from_lsn);
    println!("root create (initdb + base snapshot + publish): {create_ms} ms");
}

/// A root nobody started yet is a cluster too: it can be forked at once, at latest and at
/// its first LSN, and each fork starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_never_started_can_be_forked() {
    let env = Env::new(GIB, &[]).await;
    let mut times = vec![];
    let mut roots = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        roots.push(
            env.client
                .create_timeline(&CreateTimeline::default())
                .await
                .expect("create root")
                .value,
        );
        times.push(t.elapsed().as_millis());
    }
    times.sort();
    println!(
        "root create, 5 runs: min {} ms, median {} ms, max {} ms",
        times[0], times[2], times[4]
    );
    for line in env.node.log_tail().lines() {
        if line.contains("created root timeline") {
            println!("{line}");
        }
    }
    let root = &roots[0];
    assert_eq!(root.state, TimelineState::Ready);
    let from = root.restore_window.from_lsn.expect("from_lsn");
    for at in [At::Latest, At::Lsn(from)] {
        let f = env.fork(root.id, at).await;
        let fc = env.start(&f).await;
        fc.execute("CREATE TABLE t AS SELECT 1 AS x").await.unwrap();
        assert_eq!(count(&fc, "t").await, 1);
    }
}

/// A parent whose compute is shutting down (a restore detaches the old compute and stops
/// it in the background, and `branch create past --parent main --at -2s` may reach that
/// timeline right then) refuses new connections; a fork at a time of it waits for the
/// shutdown and forks the stopped history instead of failing with a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_at_a_time_waits_out_a_parent_shutting_down() {
    let env = Env::new(GIB, &[]).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE kept AS SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    sleep_ms(200).await;
    let t = now_in(&rc).await;
    // A session that keeps a smart shutdown waiting, refusing every new connection with
    // "the database system is shutting down" meanwhile.
    let session = rc.client().await.unwrap();
    let mut stop = tokio::process::Command::new(env.pg.pg_ctl());
    stop.arg("stop")
        .arg("-D")
        .arg(&root.pgdata)
        .args(["-m", "smart", "--no-wait"]);
    env.user.apply_tokio(&mut stop);
    assert!(
        stop.status().await.unwrap().success(),
        "pg_ctl stop -m smart"
    );
    sleep_ms(300).await;
    assert!(
        rc.client().await.is_err(),
        "the parent still accepts connections: the shutdown did not begin"
    );
    let release = tokio::spawn(async move {
        sleep_ms(1500).await;
        drop(session);
    });
    let f = env.fork(root.id, At::Time(t)).await;
    release.await.unwrap();
    let fc = env.start(&f).await;
    assert_eq!(count(&fc, "kept").await, 10);
    fc.pg_amcheck().await.expect("pg_amcheck");
}
