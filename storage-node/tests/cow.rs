//! Acceptance 5: copy-on-write. On a ~1 GB database (pgbench scale 60), a branch that
//! changes about 50 MB owns (`exclusive_bytes`: changed blocks plus the WAL it wrote) less
//! than twice what it changed, `df` agrees with that within 10%, and deleting the branch
//! frees exactly that. "Changed" is measured, not assumed: the 8 KiB blocks of relation
//! files that differ from the parent's.

mod common;

use std::io::Read;
use std::path::Path;

use common::*;
use ramify_api::At;

const PAGE: usize = 8192;

/// Bytes of relation data that differ between two PGDATAs: 8 KiB blocks that differ or
/// that only `child` has, over every file under `base/`.
fn changed_bytes(parent: &Path, child: &Path) -> u64 {
    let mut changed = 0u64;
    let mut stack = vec![child.join("base")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(child).unwrap();
            let mut a = std::fs::File::open(&p).unwrap();
            let mut b = std::fs::File::open(parent.join(rel)).ok();
            let (mut ba, mut bb) = (vec![0u8; PAGE], vec![0u8; PAGE]);
            loop {
                let n = read_full(&mut a, &mut ba);
                if n == 0 {
                    break;
                }
                let m = b.as_mut().map(|f| read_full(f, &mut bb)).unwrap_or(0);
                if m != n || ba[..n] != bb[..n] {
                    changed += n as u64;
                }
            }
        }
    }
    changed
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_pays_only_for_what_it_changes() {
    let env = Env::new(8 << 30, &[]).await;
    if !env.reflink() {
        eprintln!("NOTICE: no reflink filesystem here (needs root and xfsprogs); copy-on-write assertions skipped");
        return;
    }
    let (root, mut rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "60", "-q", "postgres"])
        .await
        .expect("pgbench -i -s 60");
    rc.execute("CHECKPOINT").await.unwrap();
    let db_bytes = rc
        .query_i64("SELECT pg_database_size('postgres')")
        .await
        .unwrap();
    assert!(
        db_bytes > 800 << 20,
        "scale 60 should be ~1 GB, is {db_bytes}"
    );
    // The parent stays quiet from here on: stopped, so it writes no shared block itself.
    rc.stop().await.unwrap();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("| workload | changed blocks | WAL written | exclusive_bytes (Δ) | df used (Δ) | exclusive / changed | df vs exclusive |");
    eprintln!("|---|---|---|---|---|---|---|");
    // Scattered OLTP-style updates (one row in every ~16 pages, as random pgbench
    // transactions touch them), then one bulk update of a contiguous range, each on a
    // fresh branch.
    let workloads = [
        (
            "scattered: 6000 rows, 1 per 1000",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0",
            true,
        ),
        (
            "bulk: 100000 contiguous rows",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100000",
            false,
        ),
    ];
    for (label, sql, must_be_under_2x) in workloads {
        let child = env.fork(root.id, At::Latest).await;
        let mut cc = env.start(&child).await;
        cc.execute("CHECKPOINT").await.unwrap();
        archive_drained(&child).await;
        env.scratch.sync().unwrap();
        let df0 = env.scratch.df_used_bytes().unwrap();
        let ex0 = env.get(child.id).await.exclusive_bytes;
        let wal0 = current_lsn(&cc).await;
        cc.execute(sql).await.unwrap();
        let wal = current_lsn(&cc).await.bytes_since(wal0);
        cc.execute("CHECKPOINT").await.unwrap();
        cc.stop().await.unwrap();
        archive_drained(&child).await;
        env.scratch.sync().unwrap();
        let df1 = env.scratch.df_used_bytes().unwrap();
        let ex1 = env.get(child.id).await.exclusive_bytes;

        let changed = changed_bytes(Path::new(&root.pgdata), Path::new(&child.pgdata));
        let owned = ex1 - ex0;
        let df_delta = df1.saturating_sub(df0);
        let ratio = owned as f64 / changed as f64;
        let df_off = (df_delta as f64 - owned as f64) / owned as f64;
        eprintln!(
            "| {label} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {ratio:.2} | {:+.1}% |",
            mib(changed),
            mib(wal),
            mib(owned),
            mib(df_delta),
            df_off * 100.0
        );
        assert!(
            changed > 20 << 20 && changed < 120 << 20,
            "{label}: changed {changed} bytes"
        );
        if must_be_under_2x {
            assert!(
                owned < 2 * changed,
                "{label}: exclusive {owned} ≥ 2 × changed {changed}"
            );
        }
        assert!(
            df_off.abs() <= 0.10,
            "{label}: df grew {df_delta}, exclusive {owned}"
        );
        // Deleting the branch frees what it owned, and only that.
        env.client.delete_timeline(child.id, false).await.unwrap();
        // XFS frees unlinked inodes' blocks in the background: give it a moment.
        let mut freed = 0;
        for _ in 0..50 {
            env.scratch.sync().unwrap();
            freed = df1.saturating_sub(env.scratch.df_used_bytes().unwrap());
            if freed >= ex1 - ex1 / 20 {
                break;
            }
            sleep_ms(200).await;
        }
        let off = (freed as f64 - ex1 as f64).abs() / ex1 as f64;
        assert!(
            off <= 0.10,
            "{label}: deleting freed {freed}, the branch owned {ex1}"
        );
    }
    // And the parent still has its original data.
    rc.restart().await.unwrap();
    assert_eq!(
        rc.query_i64("SELECT sum(abalance) FROM pgbench_accounts WHERE aid <= 100000")
            .await
            .unwrap(),
        0
    );
}
