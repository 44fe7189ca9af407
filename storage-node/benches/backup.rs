//! `make bench`: off-node durability, measured against a real S3 server (SeaweedFS,
//! `weed mini` over TLS on loopback) and pgBackRest, release build, printed as Markdown:
//!
//! 1. bucket bytes of a pgbench scale-100 root (its base backup and WAL) and of the same
//!    bucket once 10 durable forks of it each wrote their own WAL: the forks must cost
//!    their own WAL, not another copy (goal: total ≤ 1.3 × (root + forks' WAL));
//! 2. WAL archive lag under `pgbench -N -c 4`: from a segment's arrival in the node's
//!    archive to the node reporting it in the bucket (p50/p99);
//! 3. RTO: the node's data directory deleted, `--recover` → the root's first query;
//! 4. a copy of the root on a second node through the bucket (`from_backup`, what a fork
//!    placed on another storage node is) → its first query;
//! 5. a move of the root to that node (commits not yet archived): seal, then a copy
//!    through the sealed record → its first query, with every transaction.
//!
//! Every number is measured in this run; progress goes to stderr, tables to stdout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use ramify_api::{At, CreateTimeline, StorageClient, TimelineId, TimelineInfo};
use ramify_compute::{PgBin, PgUser};
use ramify_storage::backup::{s3::Bucket, Repo};
use ramify_testkit::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use ramify_testkit::{Compute, Scratch, StorageNodeProcess};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const SCALE: &str = "100";
const FORKS: usize = 10;
const LOAD_SECONDS: u64 = 30;

fn main() -> ExitCode {
    ramify_testkit::bench::main("backup bench", async {
        if let Err(why) = ramify_testkit::s3::available() {
            bail!("needs an S3 server and pgBackRest: {why}");
        }
        run().await?;
        progress("done");
        Ok(())
    })
}

use ramify_testkit::bench::progress;

fn storage_binary() -> Result<PathBuf> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ramify-storage") {
        return Ok(PathBuf::from(p));
    }
    bail!("CARGO_BIN_EXE_ramify-storage is not set: run through `cargo bench`")
}

struct Env {
    node: StorageNodeProcess,
    client: StorageClient,
    pg: PgBin,
    user: PgUser,
    s3: S3Server,
    scratch: Scratch,
}

impl Env {
    async fn start(&self, tl: &TimelineInfo) -> Result<Compute> {
        Ok(Compute::start(
            &self.pg,
            &self.user,
            Path::new(&tl.pgdata),
            Path::new(&tl.run_dir),
            &tl.archive_command,
            false,
            &[],
        )
        .await?)
    }

    async fn backup(&self, id: TimelineId) -> Result<ramify_api::BackupStatus> {
        self.client
            .get_timeline_without_sizes(id)
            .await?
            .backup
            .context("a durable timeline reports its backup")
    }

    /// Switches the compute's segment and waits until the node has it in the bucket.
    async fn archived(&self, c: &Compute, id: TimelineId) -> Result<()> {
        let seg: String = c
            .client()
            .await?
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await?
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let b = self.backup(id).await?;
            if b.backlog_bytes == 0 && b.archived_to.as_deref() >= Some(seg.as_str()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("segment {seg} of {id} not in the bucket after 300 s: {b:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn bucket(&self) -> Result<Bucket> {
        let mut repo = Repo::parse(
            &format!("s3://{}/bench", self.s3.bucket()),
            &self.s3.endpoint(),
        )?;
        repo.path_style = true;
        repo.access_key = ACCESS_KEY.into();
        repo.secret_key = SECRET_KEY.into();
        repo.ca_file = Some(self.s3.ca_file());
        Ok(Bucket::new(&repo)?)
    }

    /// Bytes in the bucket under the repository, and those of stanza `id`'s archive.
    async fn bucket_bytes(&self) -> Result<(u64, HashMap<String, u64>)> {
        let all = self.bucket()?.list_sizes("").await?;
        let total = all.iter().map(|(_, s)| s).sum();
        let mut per_stanza_wal: HashMap<String, u64> = HashMap::new();
        for (k, s) in &all {
            if let Some(rest) = k.strip_prefix("archive/") {
                let stanza = rest.split('/').next().unwrap_or("").to_string();
                *per_stanza_wal.entry(stanza).or_default() += s;
            }
        }
        Ok((total, per_stanza_wal))
    }
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run() -> Result<()> {
    let scratch = Scratch::reflink(40 * GIB)?;
    let pg = PgBin::find(None)?;
    let user = PgUser::resolve(None)?;
    progress("starting the S3 server (weed mini)");
    let s3 = S3Server::start("ramify-bench")?;
    let mut args = s3.node_args("bench");
    args.extend([
        "--pg-bin".to_string(),
        pg.dir().display().to_string(),
        // One base backup, of the snapshot taken after the load below.
        "--backup-full-after=256MiB".into(),
        "--snapshot-wal-bytes=0".into(),
        "--snapshot-interval=0".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = StorageNodeProcess::start_with_env(
        &storage_binary()?,
        &scratch.path().join("data"),
        &args,
        &s3.node_env(),
    )
    .await?;
    let client = node.client();
    let mut env = Env {
        node,
        client,
        pg,
        user,
        s3,
        scratch,
    };

    // 1. The root and its backup.
    let root = env
        .client
        .create_timeline(&CreateTimeline::default())
        .await?
        .value;
    let rc = env.start(&root).await?;
    progress(&format!("pgbench -i -s {SCALE} on the durable root"));
    rc.pgbench(&["-i", "-s", SCALE, "-q", "postgres"]).await?;
    env.archived(&rc, root.id).await?;
    env.client.create_snapshot(root.id, "loaded").await?;
    env.archived(&rc, root.id).await?;
    progress("waiting for the base backup of the loaded root");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let b = env.backup(root.id).await?;
        if b.newest_backup
            .as_ref()
            .is_some_and(|n| n.snapshot == "loaded")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no backup of the loaded root after 900 s: {b:?}\n{}",
                env.node.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (root_bytes, _) = env.bucket_bytes().await?;
    progress(&format!("root in the bucket: {}", fmt_bytes(root_bytes)));

    // 10 durable forks, each writing a little.
    let mut forks = Vec::new();
    for i in 0..FORKS {
        let f = env
            .client
            .create_timeline(&CreateTimeline {
                parent: Some(root.id),
                at: Some(At::Latest),
                backup: Some(true),
                ..Default::default()
            })
            .await?
            .value;
        let c = env.start(&f).await?;
        c.pgbench(&["-N", "-t", "500", "-c", "1", "postgres"])
            .await?;
        env.archived(&c, f.id).await?;
        progress(&format!("fork {} of {FORKS} archived", i + 1));
        forks.push((f, c));
    }
    let (total, per_stanza) = env.bucket_bytes().await?;
    let forks_wal: u64 = forks
        .iter()
        .map(|(f, _)| per_stanza.get(&f.id.to_string()).copied().unwrap_or(0))
        .sum();
    let ratio = total as f64 / (root_bytes + forks_wal) as f64;
    for (_, c) in forks.iter_mut() {
        c.stop().await?;
    }

    // 2. Archive lag under load: a segment's arrival in wal/ → reported in the bucket.
    progress(&format!(
        "archive lag under pgbench -N -c 4 for {LOAD_SECONDS} s"
    ));
    let archive = PathBuf::from(&root.archive);
    let seconds = LOAD_SECONDS.to_string();
    let load_args = ["-N", "-c", "4", "-T", seconds.as_str(), "postgres"];
    let load = {
        let c = rc.pgbench(&load_args);
        let mut seen: HashMap<String, SystemTime> = HashMap::new();
        let mut last = env.backup(root.id).await?.archived_to;
        tokio::pin!(c);
        let stop_after = Instant::now() + Duration::from_secs(LOAD_SECONDS + 30);
        let mut done = false;
        loop {
            tokio::select! {
                r = &mut c, if !done => { r?; done = true; }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let b = env.backup(root.id).await?;
            if b.archived_to != last {
                let now = SystemTime::now();
                if let Some(n) = &b.archived_to {
                    seen.entry(n.clone()).or_insert(now);
                }
                last = b.archived_to.clone();
            }
            if (done && b.backlog_bytes == 0) || Instant::now() > stop_after {
                break;
            }
        }
        seen
    };
    // Every segment that arrived during the load and was seen pushed. Pushes of several
    // segments in one pass are seen together: each counts from its own arrival.
    let mut lags = Vec::new();
    let pushed_max = load.keys().max().cloned();
    let mut arrivals: Vec<(String, SystemTime)> = std::fs::read_dir(&archive)?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.len() == 24).then(|| Some((n, e.metadata().ok()?.modified().ok()?)))?
        })
        .collect();
    arrivals.sort();
    let mut pushed_at: Vec<(String, SystemTime)> = load.into_iter().collect();
    pushed_at.sort();
    for (name, arrived) in &arrivals {
        if Some(name) > pushed_max.as_ref() {
            continue;
        }
        // The first report at or beyond this name covers it.
        if let Some((_, t)) = pushed_at.iter().find(|(n, _)| n >= name) {
            if let Ok(d) = t.duration_since(*arrived) {
                lags.push(d.as_secs_f64() * 1000.0);
            }
        }
    }
    let segments = lags.len();
    let (p50, p99) = (
        percentile(&mut lags.clone(), 0.5),
        percentile(&mut lags, 0.99),
    );

    // 3. RTO: the volume is lost; --recover, then the root's first query.
    drop(rc);
    for (_, c) in forks.iter_mut() {
        let _ = c.kill9();
    }
    env.node.kill9()?;
    let data = env.scratch.path().join("data");
    for e in std::fs::read_dir(&data)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    progress("recovering the lost node from the bucket");
    let t0 = Instant::now();
    env.node.add_args(&["--recover"]);
    env.node.restart().await?;
    let t_node = t0.elapsed();
    let root_again = env.client.get_timeline_without_sizes(root.id).await?;
    let mut c = env.start(&root_again).await?;
    let n = c.query_i64("SELECT count(*) FROM pgbench_accounts").await?;
    let rto = t0.elapsed();
    if n != 100 * 100_000 {
        bail!("the recovered root has {n} accounts");
    }
    let listed = env.client.list_timelines().await?.len();

    // 4. A copy of the root on a second node that never had it, through the bucket (what
    // a fork placed on another storage node is). As of the root's last archived segment.
    env.archived(&c, root.id).await?;
    progress("copying the root onto a second node (from_backup)");
    let mut b_args = env.s3.node_args("bench-b");
    b_args.extend(["--pg-bin".to_string(), env.pg.dir().display().to_string()]);
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let node_b = StorageNodeProcess::start_with_env(
        &storage_binary()?,
        &env.scratch.path().join("data-b"),
        &b_args,
        &env.s3.node_env(),
    )
    .await?;
    let t0 = Instant::now();
    let copy = node_b
        .client()
        .create_timeline(&CreateTimeline {
            from_backup: Some(ramify_api::FromBackup {
                prefix: "bench".into(),
                timeline: root.id,
                through: None,
            }),
            backup: Some(false),
            ..Default::default()
        })
        .await
        .with_context(|| format!("copy onto a second node\n{}", node_b.log_tail()))?
        .value;
    let t_copy = t0.elapsed();
    let cc = env.start(&copy).await?;
    let n = cc
        .query_i64("SELECT count(*) FROM pgbench_accounts")
        .await?;
    let t_copy_query = t0.elapsed();
    if n != 100 * 100_000 {
        bail!("the copy has {n} accounts");
    }

    // 5. A move of the root to the second node (a changed spec.storageNode): commits not
    // yet archived, the compute stopped, the node seals the timeline, the other node
    // copies it under the same id through the sealed record — every commit.
    c.pgbench(&["-N", "-t", "300", "-c", "1", "postgres"])
        .await?;
    let history = c.query_i64("SELECT count(*) FROM pgbench_history").await?;
    c.stop().await?;
    progress("moving the root onto the second node (seal, then from_backup through it)");
    let t0 = Instant::now();
    let sealed = env.client.seal_timeline(root.id).await?;
    let t_seal = t0.elapsed();
    let moved = node_b
        .client()
        .create_timeline(&CreateTimeline {
            id: Some(root.id),
            from_backup: Some(ramify_api::FromBackup {
                prefix: "bench".into(),
                timeline: root.id,
                through: Some(sealed.lsn),
            }),
            backup: Some(false),
            ..Default::default()
        })
        .await
        .with_context(|| format!("move onto a second node\n{}", node_b.log_tail()))?
        .value;
    let t_move = t0.elapsed();
    let mc = env.start(&moved).await?;
    let h = mc.query_i64("SELECT count(*) FROM pgbench_history").await?;
    let t_move_query = t0.elapsed();
    if h != history {
        bail!("the moved root has {h} of {history} pgbench_history rows");
    }

    println!(
        "\n## Off-node durability (pgBackRest → SeaweedFS over TLS, loopback, this machine)\n"
    );
    println!("| measure | value | goal |");
    println!("|---|---:|---|");
    println!(
        "| bucket: pgbench scale-{SCALE} root (base backup + WAL) | {} | — |",
        fmt_bytes(root_bytes)
    );
    println!(
        "| bucket: root + {FORKS} durable forks | {} | — |",
        fmt_bytes(total)
    );
    println!(
        "| forks' own WAL in the bucket (sum) | {} | — |",
        fmt_bytes(forks_wal)
    );
    println!("| total / (root + forks' own WAL) | {ratio:.2}x | ≤ 1.3x |");
    println!("| archive lag under `pgbench -N -c 4` ({segments} segments), p50 / p99 | {p50:.0} / {p99:.0} ms | — |");
    println!(
        "| RTO: `--recover` of {listed} timelines → node serving | {:.1} s | — |",
        t_node.as_secs_f64()
    );
    println!(
        "| RTO: `--recover` → first query on the scale-{SCALE} root | {:.1} s | — |",
        rto.as_secs_f64()
    );
    println!(
        "| copy of the scale-{SCALE} root onto another node (`from_backup`) → timeline ready | {:.1} s | — |",
        t_copy.as_secs_f64()
    );
    println!(
        "| copy onto another node → first query | {:.1} s | — |",
        t_copy_query.as_secs_f64()
    );
    println!(
        "| move of the root to another node: seal (compute stopped) | {:.2} s | — |",
        t_seal.as_secs_f64()
    );
    println!(
        "| move: seal → copy through the sealed record ready there | {:.1} s | — |",
        t_move.as_secs_f64()
    );
    println!(
        "| move → first query there ({history} of {history} transactions) | {:.1} s | — |",
        t_move_query.as_secs_f64()
    );
    if ratio > 1.3 {
        bail!("forks cost more than their own WAL: {ratio:.2}x");
    }
    Ok(())
}
