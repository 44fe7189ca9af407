//! `ramify demo`: the whole product in two minutes, on a data directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ramify_api::{At, CloneMethod};
use ramify_compute::PgBin;
use ramify_lifecycle::{BranchView, ComputeStatus, CreateBranch};
use ramify_local::DaemonClient;

use crate::args::{OutputFormat, UpArgs};
use crate::commands::{local, Context};
use crate::render;

/// pgbench scale of the sample database (~150 MB).
const SCALE: &str = "10";

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}/8] {what}\x1b[0m");
}

/// Where the demo keeps its own local mode, so it never touches the user's branches.
fn demo_dir(ctx: &Context) -> PathBuf {
    let mut name = ctx.data_dir.file_name().unwrap_or_default().to_os_string();
    name.push("-demo");
    ctx.data_dir.with_file_name(name)
}

/// Runs the demo; `keep` leaves local mode and the branches running.
pub fn run(ctx: &Context, keep: bool) -> anyhow::Result<()> {
    let dir = demo_dir(ctx);
    let demo_ctx = Context {
        data_dir: dir.clone(),
        output: OutputFormat::Table,
    };
    if DaemonClient::for_data_dir(&dir).is_ok() {
        bail!(
            "a demo is already running in {} (kept with --keep); stop it with: ramify --data-dir {} local down",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    step(1, &format!("Start local mode in {}", dir.display()));
    let root = nix::unistd::geteuid().is_root();
    local::up(
        &demo_ctx,
        UpArgs {
            foreground: false,
            // As root, a scratch XFS image gives real reflinks on any host filesystem.
            xfs_image: root.then_some(6 << 30),
            pg_bin: None,
            pg_user: None,
            // The demo's own queries use the plain connection on loopback.
            tls_required: false,
            // The demo's branches live only as long as the demo.
            backup: Default::default(),
            recover: false,
            detached: false,
        },
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(walk(&demo_ctx));
    if keep {
        println!(
            "\n--keep: local mode stays up. Try: ramify --data-dir {} branch list",
            dir.display()
        );
    } else {
        step(8, "Clean up");
        rt.block_on(local::down(&demo_ctx))?;
        std::fs::remove_dir_all(&dir).ok();
        let mut image = dir.clone().into_os_string();
        image.push(".xfs.img");
        std::fs::remove_file(PathBuf::from(image)).ok();
        println!("    removed {}", dir.display());
    }
    result
}

async fn query(b: &BranchView, sql: &str) -> anyhow::Result<String> {
    let client = ramify_diff::connect(&b.uri)
        .await
        .with_context(|| format!("cannot connect to branch {}", b.name))?;
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| format!("{sql} on {}", b.name))?;
    Ok(row.get(0))
}

async fn execute(b: &BranchView, sql: &str) -> anyhow::Result<()> {
    let client = ramify_diff::connect(&b.uri)
        .await
        .with_context(|| format!("cannot connect to branch {}", b.name))?;
    client
        .batch_execute(sql)
        .await
        .with_context(|| format!("{sql} on {}", b.name))
}

fn pgbench_init(pg: &Path, b: &BranchView) -> anyhow::Result<()> {
    let out = Process::new(pg)
        .args([
            "-i",
            "-q",
            "-s",
            SCALE,
            "-h",
            &b.host,
            "-p",
            &b.port.to_string(),
        ])
        .args(["-U", &b.user, &b.database])
        .env("PGPASSWORD", &b.password)
        .output()
        .context("cannot run pgbench")?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn walk(ctx: &Context) -> anyhow::Result<()> {
    let api = ctx.client()?;
    let status = api.status().await?;
    if status.storage.clone_method == CloneMethod::Copy {
        println!("    COPY MODE: this filesystem has no reflinks, so every branch is a full copy (run as root for a scratch XFS image)");
    }
    let pg = PgBin::find(None)?;
    let pgbench = pg
        .pgbench()
        .context("pgbench is not installed next to postgres")?;

    step(
        2,
        &format!("Create branch 'main' with sample data (pgbench scale {SCALE})"),
    );
    let main = api
        .create_branch(&CreateBranch {
            name: "main".into(),
            suspend_after_secs: Some(0),
            ..Default::default()
        })
        .await?;
    let t = Instant::now();
    print!("    loading … ");
    pgbench_init(&pgbench, &main)?;
    let size = query(
        &main,
        "SELECT pg_size_pretty(pg_database_size(current_database()))",
    )
    .await?;
    println!("{size} in {:.1} s", t.elapsed().as_secs_f64());

    step(3, "Branch 'dev' from main, while main keeps running");
    let t = Instant::now();
    let dev = api
        .create_branch(&CreateBranch {
            name: "dev".into(),
            parent: Some("main".into()),
            suspend_after_secs: Some(3),
            ..Default::default()
        })
        .await?;
    query(&dev, "SELECT 'ready'").await?;
    println!(
        "    dev forked at LSN {} and answered its first query {} ms after the request",
        dev.fork_lsn.map(|l| l.to_string()).unwrap_or_default(),
        t.elapsed().as_millis()
    );
    println!("    connect: psql \"{}\"", dev.uri);

    step(4, "Change dev; main does not see it");
    let before: String = query(
        &dev,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    execute(
        &dev,
        "DELETE FROM pgbench_accounts WHERE aid <= 10000; \
         UPDATE pgbench_branches SET bbalance = bbalance + 100; \
         CREATE TABLE feature_flags (name text PRIMARY KEY, enabled bool)",
    )
    .await?;
    let accounts = "SELECT count(*)::text FROM pgbench_accounts";
    let flags = "SELECT count(*)::text FROM pg_tables WHERE tablename = 'feature_flags'";
    println!(
        "    main: {} accounts, feature_flags table: {}",
        query(&main, accounts).await?,
        query(&main, flags).await?
    );
    println!(
        "    dev:  {} accounts, feature_flags table: {}",
        query(&dev, accounts).await?,
        query(&dev, flags).await?
    );

    step(5, "What dev costs");
    let dev_now = api.get_branch("dev").await?;
    println!(
        "    dev holds {} of data but owns only {} of storage (the rest is shared with main)",
        render::human_bytes(dev_now.logical_bytes),
        render::human_bytes(dev_now.exclusive_bytes)
    );

    step(6, "Time travel: dev as it was before the change");
    let t = Instant::now();
    let at = chrono::DateTime::parse_from_rfc3339(&before)?.with_timezone(&chrono::Utc);
    let back = api
        .create_branch(&CreateBranch {
            name: "dev-before".into(),
            parent: Some("dev".into()),
            at: Some(At::Time(at).into()),
            suspend_after_secs: Some(0),
            ..Default::default()
        })
        .await?;
    println!(
        "    dev-before at {before}: {} accounts, feature_flags table: {} (ready in {} ms)",
        query(&back, accounts).await?,
        query(&back, flags).await?,
        t.elapsed().as_millis()
    );

    step(
        7,
        "Scale to zero: dev suspends after 3 s idle, the next query wakes it",
    );
    print!("    waiting for dev to suspend … ");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_branch("dev").await?.compute != ComputeStatus::Suspended {
        if Instant::now() > deadline {
            bail!("dev did not suspend within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("suspended");
    let t = Instant::now();
    let n = query(&dev, accounts).await?;
    println!(
        "    a query woke dev and returned {n} accounts in {} ms",
        t.elapsed().as_millis()
    );
    println!();
    let rows: Vec<_> = api
        .list_branches()
        .await?
        .iter()
        .map(crate::backend::local::row)
        .collect();
    print!(
        "{}",
        render::branch_list(&rows, chrono::Utc::now(), "no branches")
    );
    Ok(())
}
