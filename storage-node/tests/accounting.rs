//! Space accounting runs in the background: reads answer with the figures of the last
//! pass and the time it started, never sweeping the node themselves; `?sizes=fresh`
//! waits for a pass that started after the call; the figures keep their meaning
//! (exclusive = what deleting the timeline frees).

mod common;

use std::io::Write;
use std::path::Path;

use chrono::Utc;
use common::*;
use ramify_api::At;
use ramify_testkit::{Scratch, StorageNodeProcess};

const MIB: u64 = 1 << 20;
/// Every accounting pass of the node under test stalls this long, so a read that ran or
/// waited for one would still be pending when the cached read returns.
const PASS_STALL_MS: u64 = 1500;

async fn env_with_slow_passes() -> Env {
    let scratch = Scratch::reflink(2 << 30).expect("scratch filesystem");
    let pg = ramify_compute::PgBin::find(None).expect("Postgres binaries");
    let user = ramify_compute::PgUser::resolve(None).expect("Postgres OS user");
    let stall = format!("accounting.pass=sleep({PASS_STALL_MS})");
    let node = StorageNodeProcess::start_with_env(
        Path::new(env!("CARGO_BIN_EXE_ramify-storage")),
        &scratch.path().join("data"),
        &[
            "--pg-bin",
            pg.dir().to_str().unwrap(),
            // Passes only when asked (a new timeline, `?sizes=fresh`).
            "--accounting-interval",
            "1h",
        ],
        &[("RAMIFY_FAILPOINTS", stall.as_str())],
    )
    .await
    .expect("storage node");
    let client = node.client();
    Env {
        node,
        client,
        pg,
        user,
        scratch,
    }
}

/// Appends `bytes` of data to a new file in `dir`, readable by the node, on disk.
fn plant(dir: &Path, name: &str, bytes: u64) {
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    f.write_all(&vec![7u8; bytes as usize]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_from_the_last_pass_and_fresh_waits_for_a_new_one() {
    let env = env_with_slow_passes().await;
    let (root, mut rc) = env.root().await;
    rc.execute(
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 50000) g",
    )
    .await
    .unwrap();
    rc.execute("CHECKPOINT").await.unwrap();
    rc.stop().await.unwrap();
    archive_drained(&root).await;

    let t0 = Utc::now();
    let f1 = env.get(root.id).await;
    let at1 = f1.sizes_measured_at.expect("a fresh read is measured");
    assert!(at1 >= t0, "fresh figures measured at {at1}, asked at {t0}");
    assert!(f1.logical_bytes > 10 * MIB, "{f1:?}");
    assert!(f1.exclusive_bytes >= f1.logical_bytes / 2, "{f1:?}");

    // New data in the root. A plain read answers at once with the last pass's figures
    // (the pass a fresh read now waits for is still stalled).
    plant(Path::new(&root.pgdata), "ramify_accounting_test", 4 * MIB);
    let fresh = {
        let client = env.client.clone();
        tokio::spawn(async move { client.get_timeline_fresh(root.id).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let cached = env.client.get_timeline(root.id).await.unwrap();
    assert!(
        !fresh.is_finished(),
        "the fresh read returned before the cached one: it did not wait for a new pass"
    );
    assert_eq!(cached.sizes_measured_at, Some(at1));
    assert_eq!(
        (
            cached.logical_bytes,
            cached.exclusive_bytes,
            cached.history_bytes
        ),
        (f1.logical_bytes, f1.exclusive_bytes, f1.history_bytes),
        "a plain read measured the node itself"
    );
    let f2 = fresh.await.unwrap().expect("fresh read");
    assert!(f2.sizes_measured_at.unwrap() > at1);
    assert_eq!(f2.logical_bytes, f1.logical_bytes + 4 * MIB);
    assert!(
        f2.exclusive_bytes >= f1.exclusive_bytes + 4 * MIB,
        "{} then {}",
        f1.exclusive_bytes,
        f2.exclusive_bytes
    );

    // A fork is not measured when created (its figures say so) and a fresh list
    // measures everyone in one pass: the child shares the root's data, so the root's
    // exclusive bytes drop by about its PGDATA, and the child owns almost nothing.
    let child = env.fork(root.id, At::Latest).await;
    assert_eq!(child.sizes_measured_at, None, "{child:?}");
    assert_eq!(child.exclusive_bytes, 0);
    let all = env.client.list_timelines_fresh().await.unwrap();
    assert_eq!(all.len(), 2);
    let at3 = all[0]
        .sizes_measured_at
        .expect("listed figures are measured");
    assert!(at3 > f2.sizes_measured_at.unwrap());
    assert!(all.iter().all(|t| t.sizes_measured_at == Some(at3)));
    let of = |id| all.iter().find(|t| t.id == id).unwrap();
    let (r3, c3) = (of(root.id), of(child.id));
    assert!(
        r3.exclusive_bytes + c3.logical_bytes / 2 < f2.exclusive_bytes,
        "the root still owns what it shares with its fork: {} before, {} after, fork PGDATA {}",
        f2.exclusive_bytes,
        r3.exclusive_bytes,
        c3.logical_bytes
    );
    assert!(
        c3.exclusive_bytes < c3.logical_bytes / 4,
        "a fresh fork owns {} of {}",
        c3.exclusive_bytes,
        c3.logical_bytes
    );

    // The query parameter is checked and the valid values named.
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/timelines/{}?sizes=later",
            env.node.url(),
            root.id
        ))
        .bearer_auth(env.node.token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("sizes=fresh") && body.contains("sizes=false"),
        "{body}"
    );
}
