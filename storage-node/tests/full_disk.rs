//! A full disk (issue 14, item 4). On a small XFS volume one branch fills the disk with
//! big inserts while two others keep committing. The node's reserve must keep the others
//! writing: none of their commits fails and no compute PANICs; the filler gets a Postgres
//! ERROR (read-only), and when it evades that (`SET default_transaction_read_only = off`)
//! its compute is stopped once, with the reason in its log. Forks, new roots and
//! snapshots are refused with 507 naming the free space and the reserve. Once the
//! filler's data is dropped everything works again with no restart by hand: forks,
//! snapshots, the filler's writes, and a fork of the filler is writable too.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ramify_api::{At, CreateTimeline};
use ramify_testkit::Compute;
use reqwest::StatusCode;

/// Size of the scratch volume.
const VOLUME: u64 = 2 << 30;
/// The node's reserve: more than the filler writes in the guard's reaction time.
const RESERVE: &str = "512MiB";

/// Settings of every compute here: a small `pg_wal`, so WAL kept for checkpoints does not
/// dominate a 2 GiB volume.
const PARAMS: &[(&str, &str)] = &[("max_wal_size", "96MB"), ("min_wal_size", "32MB")];

/// Commits one 32 KiB row after another (about 1.5 MiB/s) until told to stop; counts
/// commits and failures.
struct Writer {
    commits: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    last_error: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_writer(c: &Compute, stop: Arc<AtomicBool>) -> Writer {
    let conn = c.conn_str();
    let commits = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(String::new()));
    let (n, f, le) = (commits.clone(), failures.clone(), last_error.clone());
    let task = tokio::spawn(async move {
        let mut client: Option<tokio_postgres::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        client = Some(c);
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        *le.lock().unwrap() = format!("connect: {e}");
                        sleep_ms(100).await;
                        continue;
                    }
                }
            }
            let c = client.as_ref().expect("connected");
            match c
                .batch_execute("INSERT INTO ticks(at, payload) VALUES (clock_timestamp(), repeat(md5(random()::text), 1024))")
                .await
            {
                Ok(()) => {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    *le.lock().unwrap() = format!("{e:?}");
                }
            }
            sleep_ms(20).await;
        }
    });
    Writer {
        commits,
        failures,
        last_error,
        task,
    }
}

/// Inserts 16 MiB per transaction (uncompressed TOAST) on `c` until a statement fails
/// with an error other than a lost connection (then returns its message), reconnecting
/// after a lost one; `evade` turns the read-only default off in each session first.
/// Panics after `limit`.
async fn fill(c: &Compute, evade: bool, limit: Duration) -> (String, u64) {
    let deadline = Instant::now() + limit;
    let mut inserted = 0u64;
    let mut terminated = 0u64;
    loop {
        assert!(
            Instant::now() < deadline,
            "the filler wrote {inserted} MiB in {limit:?} without being stopped; compute log:\n{}",
            c.log_tail()
        );
        let client = match tokio_postgres::connect(&c.conn_str(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
            }
            Err(e) => return (format!("connect: {e}"), terminated),
        };
        if evade {
            client
                .batch_execute("SET default_transaction_read_only = off")
                .await
                .expect("a session may set its own default");
        }
        loop {
            let r = client
                .batch_execute(
                    "INSERT INTO big(payload) SELECT repeat(md5(i::text), 32768) FROM generate_series(1, 16) i",
                )
                .await;
            match r {
                Ok(()) => inserted += 16,
                Err(e) => match e.as_db_error() {
                    // Terminated by the node (FATAL 57P01): reconnect and carry on.
                    Some(db) if db.code().code() == "57P01" => {
                        terminated += 1;
                        break;
                    }
                    Some(db) => {
                        return (format!("{}: {}", db.severity(), db.message()), terminated)
                    }
                    None if client.is_closed() => {
                        terminated += 1;
                        break;
                    }
                    None => return (format!("{e}"), terminated),
                },
            }
        }
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

fn server_log(c: &Compute) -> String {
    std::fs::read_to_string(c.run_dir().join("postgres.log")).unwrap_or_default()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        sleep_ms(200).await;
    }
}

async fn expect_507(what: &str, r: Result<impl std::fmt::Debug, ramify_api::ClientError>) {
    match r {
        Err(ramify_api::ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(
                status,
                StatusCode::INSUFFICIENT_STORAGE,
                "{what}: {message}"
            );
            assert_eq!(code, "insufficient_storage", "{what}");
            for needle in ["is free", "reserve of 512 MiB", "delet", "grow"] {
                assert!(
                    message.contains(needle),
                    "{what}: {message:?} does not say {needle:?}"
                );
            }
        }
        other => panic!("{what}: expected 507 insufficient_storage, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_filling_the_disk_leaves_the_others_writing() {
    let mut env = Env::new_with_env(
        VOLUME,
        &[
            "--reserve",
            RESERVE,
            "--space-check-interval",
            "250ms",
            // Snapshots would keep the filler's dropped data: none here but the forks'.
            "--snapshot-interval",
            "0",
            "--snapshot-wal-bytes",
            "0",
        ],
        &[("RUST_LOG", "info,ramify_storage::node::reserve=debug")],
    )
    .await;
    if !env.reflink() {
        eprintln!("full_disk: no XFS scratch volume (needs root and xfsprogs): skipped");
        return;
    }
    let status = env.client.status().await.expect("status");
    let reserve = status
        .reserve
        .clone()
        .expect("the node reports its reserve");
    assert_eq!(reserve.reserve_bytes, 512 << 20);
    assert!(!reserve.below_reserve, "{status:?}");

    // Two roots and a fork of one: the filler, and two branches that keep committing.
    let filler_tl = env
        .client
        .create_timeline(&CreateTimeline::default())
        .await
        .expect("create filler root")
        .value;
    let mut filler = env.start_with(&filler_tl, PARAMS).await;
    let (app_tl, app) = {
        let tl = env
            .client
            .create_timeline(&CreateTimeline::default())
            .await
            .expect("create root")
            .value;
        let c = env.start_with(&tl, PARAMS).await;
        (tl, c)
    };
    app.execute(
        "CREATE TABLE ticks(id bigserial PRIMARY KEY, at timestamptz, payload text); \
         ALTER TABLE ticks ALTER COLUMN payload SET STORAGE EXTERNAL",
    )
    .await
    .unwrap();
    let preview_tl = env.fork(app_tl.id, At::Latest).await;
    let preview = env.start_with(&preview_tl, PARAMS).await;
    filler
        .execute("CREATE TABLE big(payload text); ALTER TABLE big ALTER COLUMN payload SET STORAGE EXTERNAL")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        spawn_writer(&app, stop.clone()),
        spawn_writer(&preview, stop.clone()),
    ];
    sleep_ms(500).await;

    // 1. Fill: the filler is made read-only and gets an ERROR.
    let t0 = Instant::now();
    let (error, terminated) = fill(&filler, false, Duration::from_secs(180)).await;
    eprintln!(
        "filler stopped after {:?}: {error} (sessions terminated: {terminated})",
        t0.elapsed()
    );
    assert!(
        error.starts_with("ERROR") && error.contains("read-only transaction"),
        "the filler should get a read-only ERROR, got {error:?}\ncompute log:\n{}\nnode log:\n{}",
        filler.log_tail(),
        env.node.log_tail()
    );
    let status = env.client.status().await.expect("status");
    let reserve = status.reserve.clone().expect("reserve");
    eprintln!(
        "after the fill: {} MiB free of {} MiB, reserve {} MiB",
        status.available_bytes >> 20,
        status.capacity_bytes >> 20,
        reserve.reserve_bytes >> 20
    );
    // Free space may be back above the reserve already (XFS gives back what it
    // preallocated past the end of the filler's files when its sessions end): the node is
    // short of space until it is back above the reserve plus a quarter.
    assert!(reserve.below_reserve, "{status:?}");
    assert!(
        status.available_bytes < reserve.reserve_bytes / 4 * 5,
        "{status:?}"
    );
    assert_eq!(
        reserve.read_only_timelines,
        vec![filler_tl.id],
        "{status:?}"
    );
    assert!(status.available_bytes > 0);

    // 2. Forks, new roots and snapshots are refused, naming the free space and reserve.
    expect_507(
        "fork",
        env.client
            .create_timeline(&CreateTimeline {
                id: None,
                parent: Some(app_tl.id),
                at: Some(At::Latest),
                follow: None,
                backup: None,
                from_backup: None,
            })
            .await,
    )
    .await;
    expect_507(
        "new root",
        env.client.create_timeline(&CreateTimeline::default()).await,
    )
    .await;
    expect_507(
        "snapshot",
        env.client
            .create_snapshot(app_tl.id, "before-cleanup")
            .await,
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", env.node.metrics_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ramify_storage_below_reserve 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ramify_storage_read_only_timelines 1"),
        "{metrics}"
    );

    // 3. The filler evades (turns the default off in its session): stopped, once.
    let (error, _) = fill(&filler, true, Duration::from_secs(180)).await;
    eprintln!("evading filler stopped: {error}");
    wait_for(
        "the filler's postmaster to exit",
        Duration::from_secs(30),
        || async { !filler.pgdata().join("postmaster.pid").exists() },
    )
    .await;
    let log = server_log(&filler);
    assert!(
        log.contains("kept writing"),
        "no reason in the filler's log:\n{log}"
    );
    assert!(
        env.node.log().contains("stopping its compute"),
        "{}",
        env.node.log_tail()
    );

    // Nothing PANICked, and every commit of the others went through.
    for (name, c) in [("filler", &filler), ("app", &app), ("preview", &preview)] {
        let log = server_log(c);
        assert_eq!(count_lines(&log, "PANIC"), 0, "{name} PANICked:\n{log}");
    }
    for w in &writers {
        assert_eq!(
            w.failures.load(Ordering::Relaxed),
            0,
            "a branch that was not filling the disk failed to commit: {}",
            w.last_error.lock().unwrap()
        );
    }

    // The node is killed and started again while the filler is restricted: it reads the
    // restriction back, so it still lifts it once space is freed.
    env.node.kill9().expect("kill the storage node");
    env.node
        .restart()
        .await
        .expect("start the storage node again");
    wait_for(
        "the restriction to be read back after the restart",
        Duration::from_secs(30),
        || async {
            let s = env.client.status().await.expect("status");
            s.reserve.expect("reserve").read_only_timelines == vec![filler_tl.id]
        },
    )
    .await;

    // 4. Free space: the filler (woken as the proxy would) is still read-only; its
    //    tenant drops the data in a session of its own, and everything is lifted.
    filler.restart().await.expect("the filler starts again");
    assert_eq!(
        query_text(&filler, "SHOW default_transaction_read_only").await,
        "on",
        "a restarted restricted compute must still be read-only"
    );
    {
        let c = filler.client().await.expect("connect to the filler");
        // Its own statement: a SET inside a batch would not change the batch's transaction.
        c.batch_execute("SET default_transaction_read_only = off")
            .await
            .expect("a session may set its own default");
        c.batch_execute("DROP TABLE big")
            .await
            .expect("drop the filler's data");
        c.batch_execute("CHECKPOINT").await.expect("checkpoint");
    }
    wait_for(
        "the restriction to be lifted",
        Duration::from_secs(60),
        || async {
            let s = env.client.status().await.expect("status");
            let r = s.reserve.expect("reserve");
            !r.below_reserve && r.read_only_timelines.is_empty()
        },
    )
    .await;
    assert_eq!(
        query_text(&filler, "SHOW default_transaction_read_only").await,
        "off"
    );
    filler
        .execute("CREATE TABLE after_cleanup(v int); INSERT INTO after_cleanup VALUES (1)")
        .await
        .expect("the filler writes again");
    let fork = env.fork(app_tl.id, At::Latest).await;
    env.client
        .create_snapshot(app_tl.id, "after-cleanup")
        .await
        .expect("snapshots work again");
    // A fork of the once-restricted branch carries no read-only setting.
    let filler_fork = env.fork(filler_tl.id, At::Latest).await;
    let ff = env.start_with(&filler_fork, PARAMS).await;
    assert_eq!(
        query_text(&ff, "SHOW default_transaction_read_only").await,
        "off"
    );
    ff.execute("INSERT INTO after_cleanup VALUES (2)")
        .await
        .expect("the fork writes");

    sleep_ms(500).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.task.await.unwrap();
        let (n, f) = (
            w.commits.load(Ordering::Relaxed),
            w.failures.load(Ordering::Relaxed),
        );
        eprintln!("writer: {n} commits, {f} failures");
        assert_eq!(f, 0, "{}", w.last_error.lock().unwrap());
        assert!(n > 50, "the writer committed only {n} times");
    }
    let fork_c = env.start_with(&fork, PARAMS).await;
    assert!(count(&fork_c, "ticks").await > 0);
    amcheck(&app).await;
    amcheck(&preview).await;
}
