//! `make demo`: the storage node end to end on this machine.
//!
//! Mounts a scratch XFS image (reflinks), starts `ramify-storage`, loads a pgbench
//! database into a root timeline, branches it, changes the branch, shows both sides,
//! measures the fork and the bytes the branch owns, travels back in time to before the
//! change, and cleans everything up (`--keep` leaves it running and prints how to reach it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ramify_api::{At, CreateTimeline, StorageClient, TimelineInfo, TimelineState};
use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch, StorageNodeProcess};

const SCALE: &str = "20";

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn storage_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    let bin = dir.join("ramify-storage");
    if !bin.exists() {
        bail!(
            "{} is missing; build it first: cargo build --release -p ramify-storage",
            bin.display()
        );
    }
    Ok(bin)
}

async fn start(pg: &PgBin, user: &PgUser, tl: &TimelineInfo) -> Result<Compute> {
    Ok(Compute::start(
        pg,
        user,
        Path::new(&tl.pgdata),
        Path::new(&tl.run_dir),
        &tl.archive_command,
        tl.state == TimelineState::Empty,
        &[],
    )
    .await?)
}

async fn text(c: &Compute, sql: &str) -> Result<String> {
    Ok(c.client().await?.query_one(sql, &[]).await?.get(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: walkthrough [--keep]\n\nRuns the Ramify storage-node demo on a scratch XFS image; --keep leaves it running.");
        return Ok(());
    }

    step(1, "Scratch filesystem and storage node");
    let scratch = Scratch::reflink(8 << 30)?;
    let pg = PgBin::find(None)?;
    let user = PgUser::resolve(None)?;
    let node = StorageNodeProcess::start(
        &storage_binary()?,
        &scratch.path().join("data"),
        &["--pg-bin", &pg.dir().to_string_lossy()],
    )
    .await?;
    let api = StorageClient::new(node.url());
    let st = api.status().await?;
    println!(
        "    ramify-storage {} on {} ({}), clone method: {}{}",
        st.version,
        st.data_dir,
        st.filesystem,
        st.clone_method,
        if st.clone_method == ramify_api::CloneMethod::Copy {
            "  <-- NO REFLINKS: forks are full copies (run as root with xfsprogs for the real thing)"
        } else {
            ""
        }
    );

    step(
        2,
        &format!("Root timeline 'main' with pgbench data (scale {SCALE})"),
    );
    let main_tl = api.create_timeline(&CreateTimeline::default()).await?.value;
    let main = start(&pg, &user, &main_tl).await?;
    print!("    loading pgbench data … ");
    let t = Instant::now();
    main.pgbench(&["-i", "-s", SCALE, "-q", "postgres"]).await?;
    main.execute("CHECKPOINT").await?;
    let size = main
        .query_i64("SELECT pg_database_size('postgres')")
        .await?;
    println!("{} in {:.1} s", mib(size as u64), t.elapsed().as_secs_f64());

    step(3, "Branch 'dev' from main at latest (main keeps running)");
    let t = Instant::now();
    let dev_tl = api
        .create_timeline(&CreateTimeline {
            id: None,
            parent: Some(main_tl.id),
            at: Some(At::Latest),
        })
        .await?
        .value;
    let fork_api = t.elapsed();
    let dev = start(&pg, &user, &dev_tl).await?;
    dev.query_i64("SELECT 1").await?;
    let ready = t.elapsed();
    println!(
        "    forked at LSN {} in {} ms; dev answered its first query {} ms after the request",
        dev_tl.fork_lsn.map(|l| l.to_string()).unwrap_or_default(),
        fork_api.as_millis(),
        ready.as_millis()
    );

    step(4, "Change dev; main is untouched");
    let before_change: chrono::DateTime<chrono::Utc> = dev
        .client()
        .await?
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    dev.execute(
        "DELETE FROM pgbench_accounts WHERE aid <= 20000; \
         ALTER TABLE pgbench_branches ADD COLUMN region text DEFAULT 'eu'; \
         CHECKPOINT",
    )
    .await?;
    let q = "SELECT count(*)::text FROM pgbench_accounts";
    println!("    main: {} accounts", text(&main, q).await?);
    println!("    dev:  {} accounts, pgbench_branches has column 'region': {}", text(&dev, q).await?,
        text(&dev, "SELECT (count(*) = 1)::text FROM information_schema.columns WHERE table_name = 'pgbench_branches' AND column_name = 'region'").await?);

    step(5, "What dev costs");
    let info = api.get_timeline(dev_tl.id).await?;
    println!(
        "    logical size {}  |  exclusive (owned by dev alone) {}  |  of which history {}",
        mib(info.logical_bytes),
        mib(info.exclusive_bytes),
        mib(info.history_bytes)
    );

    step(6, "Time travel: branch dev as it was before the change");
    let t = Instant::now();
    let back_tl = api
        .create_timeline(&CreateTimeline {
            id: None,
            parent: Some(dev_tl.id),
            at: Some(At::Time(before_change)),
        })
        .await?
        .value;
    let back = start(&pg, &user, &back_tl).await?;
    println!(
        "    'dev-before' at {} (LSN {}): {} accounts, ready in {} ms",
        before_change.to_rfc3339(),
        back_tl.fork_lsn.map(|l| l.to_string()).unwrap_or_default(),
        text(&back, q).await?,
        t.elapsed().as_millis()
    );

    step(7, "All timelines");
    for tl in api.list_timelines().await? {
        println!(
            "    {}  parent {:<36}  fork {:<12} compute {:?}  exclusive {}",
            tl.id,
            tl.parent
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            tl.fork_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            tl.compute,
            mib(tl.exclusive_bytes)
        );
    }

    if keep {
        println!(
            "\n--keep: leaving everything running. API: {}   psql: psql -h {} -p {} -U postgres",
            node.url(),
            main.run_dir().display(),
            main.port()
        );
        std::mem::forget((back, dev, main, node, scratch));
        return Ok(());
    }
    step(8, "Clean up");
    drop((back, dev, main));
    drop(node);
    drop(scratch);
    println!("    stopped Postgres and the storage node, removed the scratch filesystem. Done.");
    Ok(())
}
