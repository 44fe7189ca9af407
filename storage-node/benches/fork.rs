//! `make bench`: the measurements behind the README's speed claims, printed as Markdown.
//!
//! Starts a real `ramify-storage` on a loop-mounted reflink XFS scratch filesystem and
//! Postgres computes on its timelines (the same harness as the integration tests), then
//! measures:
//!
//! 1. fork at latest → child accepts connections, quiet parent, pgbench scale 10 and 100;
//! 2. the same databases copied with `pg_dump -Fc | pg_restore` and `CREATE DATABASE …
//!    TEMPLATE` (both strategies of Postgres 15);
//! 3. fork at an LSN with at least 256 MiB of WAL to replay from the base snapshot;
//! 4. fork at latest while pgbench writes with 8 clients, next to a quiet parent.
//!
//! Every number printed is measured in this run. Progress goes to stderr, tables to
//! stdout. Everything (computes, node, scratch filesystem) is cleaned up by the testkit's
//! `Drop` impls, on error and on Ctrl-C too.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ramify_api::{At, CreateTimeline, Lsn, StorageClient, TimelineId, TimelineInfo, TimelineState};
use ramify_compute::process::SERVER_LOG;
use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch, StorageNodeProcess};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Sparse image: scale 100 plus its copies, WAL archive and restores fit.
const SCRATCH_BYTES: u64 = 24 * GIB;
/// The database pgbench loads (`CREATE DATABASE … TEMPLATE` needs it free of connections).
const DB: &str = "bench";
const SMALL_SCALE: u32 = 10;
const LARGE_SCALE: u32 = 100;
/// Forks per measurement at latest.
const FORK_RUNS: usize = 5;
/// Forks at an LSN (each replays the whole WAL again).
const LSN_FORK_RUNS: usize = 3;
/// WAL a fork at an LSN must replay, at least.
const REPLAY_WAL_BYTES: u64 = 256 * MIB;
/// Give up generating WAL after this long.
const WAL_GEN_TIMEOUT: Duration = Duration::from_secs(300);
/// Baselines: at most this many runs, but no new run once this much time went into one.
const BASELINE_MAX_RUNS: usize = 3;
const BASELINE_BUDGET: Duration = Duration::from_secs(30);
/// Background load of section 4.
const LOAD_CLIENTS: &str = "8";
const LOAD_SECONDS: &str = "60";
const LOAD_WARMUP: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    ramify_testkit::bench::main("fork bench", async {
        run().await?;
        progress("done");
        Ok(())
    })
}

use ramify_testkit::bench::progress;

/// The `ramify-storage` binary Cargo built for this bench.
fn storage_binary() -> Result<PathBuf> {
    // Cargo sets CARGO_BIN_EXE_<name> for integration tests and benches of the package.
    if let Some(p) = option_env!("CARGO_BIN_EXE_ramify-storage") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    // Fallback: target/<profile>/deps/fork-<hash> → target/<profile>/ramify-storage.
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ramify-storage"));
    match candidate {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "ramify-storage binary not found (CARGO_BIN_EXE_ramify-storage unset, nothing next \
             to {}); build it with `cargo build --release -p ramify-storage` or run \
             `cargo bench -p ramify-storage --bench fork`",
            exe.display()
        ),
    }
}

/// A node on a reflink scratch filesystem. Field order is drop order: the node stops
/// before the filesystem is unmounted (computes are locals of `run`, dropped earlier).
struct Bench {
    node: StorageNodeProcess,
    client: StorageClient,
    pg: PgBin,
    user: PgUser,
    scratch: Scratch,
}

impl Bench {
    async fn new() -> Result<Bench> {
        let bin = storage_binary()?;
        let scratch = Scratch::reflink(SCRATCH_BYTES).context("scratch filesystem")?;
        let pg = PgBin::find(None).context("Postgres binaries")?;
        let user = PgUser::resolve(None).context("Postgres OS user")?;
        let pg_dir = pg.dir().to_str().context("Postgres bin dir is not UTF-8")?;
        // No periodic snapshots: they would add checkpoints and clones to the timings.
        let args = [
            "--pg-bin",
            pg_dir,
            "--snapshot-interval",
            "0",
            "--snapshot-wal-bytes",
            "0",
        ];
        let node = StorageNodeProcess::start(&bin, &scratch.path().join("data"), &args)
            .await
            .context("start ramify-storage")?;
        let client = node.client();
        Ok(Bench {
            node,
            client,
            pg,
            user,
            scratch,
        })
    }

    async fn start(&self, tl: &TimelineInfo) -> Result<Compute> {
        Compute::start(
            &self.pg,
            &self.user,
            Path::new(&tl.pgdata),
            Path::new(&tl.run_dir),
            &tl.archive_command,
            tl.state == TimelineState::Empty,
            &[],
        )
        .await
        .with_context(|| format!("compute on timeline {}", tl.id))
    }

    /// A new root with a running compute and pgbench data at `scale` in database `bench`,
    /// checkpointed.
    async fn loaded_root(&self, scale: u32) -> Result<(TimelineInfo, Compute)> {
        let tl = self
            .client
            .create_timeline(&CreateTimeline::default())
            .await
            .context("create root timeline")?
            .value;
        let c = self.start(&tl).await?;
        c.execute(&format!("CREATE DATABASE {DB}")).await?;
        progress(&format!("loading pgbench scale {scale}…"));
        let t = Instant::now();
        c.pgbench(&["-i", "-s", &scale.to_string(), "-q", DB])
            .await
            .with_context(|| format!("pgbench -i -s {scale}"))?;
        c.execute("CHECKPOINT").await?;
        progress(&format!(
            "scale {scale} loaded and checkpointed in {}",
            fmt_d(t.elapsed())
        ));
        Ok((tl, c))
    }

    /// Forks `parent` at `at`, starts a compute on the child and waits for `SELECT 1`;
    /// then stops the compute and deletes the child.
    async fn fork_once(&self, parent: TimelineId, at: &At) -> Result<Sample> {
        let t0 = Instant::now();
        let child = self
            .client
            .create_timeline(&CreateTimeline {
                id: None,
                parent: Some(parent),
                at: Some(at.clone()),
                follow: None,
                backup: None,
                from_backup: None,
            })
            .await
            .with_context(|| {
                format!(
                    "fork of {parent} at {at}; node log:\n{}",
                    self.node.log_tail()
                )
            })?
            .value;
        let api = t0.elapsed();
        let mut c = self.start(&child).await?;
        let one = c.query_i64("SELECT 1").await?;
        let total = t0.elapsed();
        ensure!(one == 1, "SELECT 1 returned {one}");
        let redo = std::fs::read_to_string(c.run_dir().join(SERVER_LOG))
            .ok()
            .and_then(|log| redo_elapsed(&log));
        if let At::Lsn(target) = at {
            ensure!(
                child.fork_lsn == Some(*target),
                "fork at {target} reports fork_lsn {:?}",
                child.fork_lsn
            );
        }
        c.stop().await?;
        self.client
            .delete_timeline(child.id, false)
            .await
            .with_context(|| format!("delete child {}", child.id))?;
        Ok(Sample {
            api,
            start: total - api,
            total,
            redo,
        })
    }

    async fn forks(&self, parent: TimelineId, at: &At, runs: usize, what: &str) -> Result<Runs> {
        let mut samples = Vec::with_capacity(runs);
        for i in 1..=runs {
            let s = self.fork_once(parent, at).await?;
            progress(&format!(
                "{what}: fork {i}/{runs}: {} (API {}, compute start {})",
                fmt_d(s.total),
                fmt_d(s.api),
                fmt_d(s.start)
            ));
            samples.push(s);
        }
        Ok(Runs(samples))
    }
}

/// One fork: POST /v1/timelines, then compute start until `SELECT 1` answers.
#[derive(Debug, Clone, Copy)]
struct Sample {
    api: Duration,
    start: Duration,
    total: Duration,
    /// WAL redo as the child's Postgres logs it (`redo done at … elapsed: X s`).
    redo: Option<Duration>,
}

struct Runs(Vec<Sample>);

impl Runs {
    fn total(&self) -> Summary {
        Summary::of(self.0.iter().map(|s| s.total).collect())
    }
    fn api(&self) -> Summary {
        Summary::of(self.0.iter().map(|s| s.api).collect())
    }
    fn start(&self) -> Summary {
        Summary::of(self.0.iter().map(|s| s.start).collect())
    }
    /// Median WAL redo time from the children's logs, when every child logged one.
    fn redo(&self) -> Option<Summary> {
        let v: Option<Vec<Duration>> = self.0.iter().map(|s| s.redo).collect();
        v.filter(|v| !v.is_empty()).map(Summary::of)
    }
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    median: Duration,
    min: Duration,
    max: Duration,
    n: usize,
}

impl Summary {
    fn of(mut v: Vec<Duration>) -> Summary {
        assert!(!v.is_empty(), "no samples");
        v.sort();
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// `median (n runs)`, or the single value with "1 run".
    fn cell(&self) -> String {
        if self.n == 1 {
            format!("{} (1 run)", fmt_d(self.median))
        } else {
            format!("{} (median of {})", fmt_d(self.median), self.n)
        }
    }
}

/// The `elapsed` of Postgres's `redo done at X system usage: CPU: …, elapsed: 1.23 s`.
fn redo_elapsed(log: &str) -> Option<Duration> {
    let line = log.lines().rev().find(|l| l.contains("redo done at"))?;
    let secs = line.rsplit_once("elapsed: ")?.1.trim().strip_suffix(" s")?;
    secs.parse::<f64>().ok().map(Duration::from_secs_f64)
}

fn fmt_d(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.2} s")
    } else {
        format!("{}m {:02.0}s", (s / 60.0) as u64, s % 60.0)
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= GIB {
        format!("{:.2} GiB", b as f64 / GIB as f64)
    } else if b >= MIB {
        format!("{:.0} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    let r = a.as_secs_f64() / b.as_secs_f64();
    if r >= 10.0 {
        format!("×{r:.0}")
    } else {
        format!("×{r:.2}")
    }
}

async fn current_lsn(c: &Compute) -> Result<Lsn> {
    let s: String = c
        .client()
        .await?
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("pg_current_wal_lsn()")?
        .get(0);
    s.parse().context("parse pg_current_wal_lsn()")
}

async fn db_size(c: &Compute) -> Result<u64> {
    Ok(c.query_i64(&format!("SELECT pg_database_size('{DB}')"))
        .await? as u64)
}

/// `pg_dump -Fc bench | pg_restore -d target`, both as the Postgres user over the
/// compute's socket; `target` must exist. Returns the pipeline's wall time.
fn dump_restore(pg: &PgBin, user: &PgUser, c: &Compute, target: &str) -> Result<Duration> {
    let pg_dump = pg.pg_dump().context("pg_dump is not installed")?;
    let pg_restore = pg.pg_restore().context("pg_restore is not installed")?;
    let conn = |cmd: &mut std::process::Command| {
        cmd.arg("-h")
            .arg(c.run_dir())
            .arg("-p")
            .arg(c.port().to_string())
            .args(["-U", "postgres"]);
    };
    let mut dump = std::process::Command::new(&pg_dump);
    conn(&mut dump);
    dump.args(["-Fc", DB])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    user.apply_std(&mut dump);
    let mut restore = std::process::Command::new(&pg_restore);
    conn(&mut restore);
    restore
        .args(["-d", target])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    user.apply_std(&mut restore);

    let t0 = Instant::now();
    let mut dump = dump.spawn().context("spawn pg_dump")?;
    let pipe = dump.stdout.take().context("pg_dump stdout")?;
    let restore = match restore.stdin(Stdio::from(pipe)).spawn() {
        Ok(r) => r,
        Err(e) => {
            let _ = dump.kill();
            let _ = dump.wait();
            return Err(e).context("spawn pg_restore");
        }
    };
    let r = restore.wait_with_output().context("wait for pg_restore")?;
    let d = dump.wait_with_output().context("wait for pg_dump")?;
    let elapsed = t0.elapsed();
    ensure!(
        d.status.success(),
        "pg_dump failed ({}): {}",
        d.status,
        String::from_utf8_lossy(&d.stderr)
    );
    ensure!(
        r.status.success(),
        "pg_restore failed ({}): {}",
        r.status,
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(elapsed)
}

/// Runs `one(i)` up to BASELINE_MAX_RUNS times, stopping early once BASELINE_BUDGET is spent.
async fn baseline<F, Fut>(what: &str, mut one: F) -> Result<Summary>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    let mut v = Vec::new();
    let mut spent = Duration::ZERO;
    for i in 1..=BASELINE_MAX_RUNS {
        if i > 1 && spent >= BASELINE_BUDGET {
            break;
        }
        let d = one(i).await?;
        progress(&format!("{what}: run {i}: {}", fmt_d(d)));
        spent += d;
        v.push(d);
    }
    Ok(Summary::of(v))
}

/// Results of sections 1 and 2 for one scale.
struct ScaleResult {
    scale: u32,
    db_bytes: u64,
    forks: Runs,
    dump_restore: Summary,
    template_wal_log: Summary,
    template_file_copy: Summary,
}

/// Sections 1 and 2 on a loaded, checkpointed, quiet parent.
async fn bench_scale(b: &Bench, scale: u32, tl: &TimelineInfo, c: &Compute) -> Result<ScaleResult> {
    let db_bytes = db_size(c).await?;
    progress(&format!(
        "scale {scale}: database {DB} is {}; forking at latest ×{FORK_RUNS}",
        fmt_bytes(db_bytes)
    ));
    let forks = b
        .forks(tl.id, &At::Latest, FORK_RUNS, &format!("scale {scale}"))
        .await?;

    let rows = i64::from(scale) * 100_000;
    let dump_restore = baseline(
        &format!("scale {scale}: pg_dump | pg_restore"),
        |i| async move {
            let target = format!("restore{i}");
            c.execute(&format!("CREATE DATABASE {target}")).await?;
            c.execute("CHECKPOINT").await?;
            let (pg, user) = (b.pg.clone(), b.user.clone());
            let d = tokio::task::block_in_place(|| dump_restore(&pg, &user, c, &target))?;
            let n = c
                .client_db(&target)
                .await?
                .query_one("SELECT count(*) FROM pgbench_accounts", &[])
                .await
                .context("count restored rows")?
                .get::<_, i64>(0);
            ensure!(n == rows, "restored {n} accounts, expected {rows}");
            c.execute(&format!("DROP DATABASE {target}")).await?;
            Ok(d)
        },
    )
    .await?;

    let mut template = Vec::new();
    for strategy in ["wal_log", "file_copy"] {
        let s = baseline(
            &format!("scale {scale}: CREATE DATABASE … TEMPLATE {DB} STRATEGY {strategy}"),
            |i| async move {
                let target = format!("copy_{strategy}_{i}");
                c.execute("CHECKPOINT").await?;
                let client = c.client().await?;
                let t0 = Instant::now();
                client
                    .batch_execute(&format!(
                        "CREATE DATABASE {target} TEMPLATE {DB} STRATEGY {strategy}"
                    ))
                    .await
                    .with_context(|| format!("CREATE DATABASE … STRATEGY {strategy}"))?;
                let d = t0.elapsed();
                client
                    .batch_execute(&format!("DROP DATABASE {target}"))
                    .await
                    .context("DROP DATABASE")?;
                Ok(d)
            },
        )
        .await?;
        template.push(s);
    }

    Ok(ScaleResult {
        scale,
        db_bytes,
        forks,
        dump_restore,
        template_wal_log: template[0],
        template_file_copy: template[1],
    })
}

fn print_scale_tables(results: &[ScaleResult]) {
    println!("## 1. Fork at latest → child accepts connections (parent running, quiet)\n");
    println!(
        "Each run: `POST /v1/timelines` (fork at latest) + compute start on the child \
         (recovery and promotion) until `SELECT 1` answers; parent idle after `pgbench -i` \
         and `CHECKPOINT`.\n"
    );
    println!(
        "| scale | db size | runs | total median | total min | total max | fork API median | compute start median |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (t, a, s) = (r.forks.total(), r.forks.api(), r.forks.start());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scale,
            fmt_bytes(r.db_bytes),
            t.n,
            fmt_d(t.median),
            fmt_d(t.min),
            fmt_d(t.max),
            fmt_d(a.median),
            fmt_d(s.median)
        );
    }
    if let [small, large] = results {
        println!(
            "\nScale {} / scale {}: database ×{:.1}, fork total median {}, fork API median {}, \
             compute start median {}.\n",
            large.scale,
            small.scale,
            large.db_bytes as f64 / small.db_bytes as f64,
            ratio(large.forks.total().median, small.forks.total().median),
            ratio(large.forks.api().median, small.forks.api().median),
            ratio(large.forks.start().median, small.forks.start().median),
        );
    }

    println!("## 2. Ramify fork vs copying the database inside Postgres\n");
    println!(
        "`pg_dump -Fc {DB} | pg_restore -d <new db>` (new database created before the clock \
         starts) and `CREATE DATABASE … TEMPLATE {DB}` with both Postgres 15 strategies \
         (`wal_log` is the default). Baselines repeat up to {BASELINE_MAX_RUNS} times while \
         under {}s in total; the run count is in each cell.\n",
        BASELINE_BUDGET.as_secs()
    );
    println!(
        "| scale | db size | Ramify fork median | pg_dump \\| pg_restore | CREATE DATABASE TEMPLATE (wal_log) | CREATE DATABASE TEMPLATE (file_copy) | speed-up vs dump/restore | speed-up vs TEMPLATE (wal_log) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let fork = r.forks.total().median;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scale,
            fmt_bytes(r.db_bytes),
            fmt_d(fork),
            r.dump_restore.cell(),
            r.template_wal_log.cell(),
            r.template_file_copy.cell(),
            ratio(r.dump_restore.median, fork),
            ratio(r.template_wal_log.median, fork),
        );
    }
    println!();
}

/// Section 3: fork at an LSN with ≥ 256 MiB of WAL after the base snapshot.
async fn bench_lsn_fork(b: &Bench, tl: &TimelineInfo, c: &Compute) -> Result<()> {
    let snap = b
        .client
        .create_snapshot(tl.id, "bench-replay-base")
        .await
        .context("create snapshot")?;
    progress(&format!(
        "snapshot taken (start {}, end {}); generating ≥ {} of WAL with UPDATEs…",
        snap.start_lsn,
        snap.end_lsn,
        fmt_bytes(REPLAY_WAL_BYTES)
    ));
    // pgbench's own transactions write too little WAL here once full-page images are
    // done (under 1 MiB/s on a 2-core machine), so update 1/8 of the accounts per statement.
    // pg_backup_stop switches to a new segment: count WAL from where writing resumed, so
    // the unused tail of the old segment does not count towards the 256 MiB.
    let resumed = current_lsn(c).await?.max(snap.end_lsn);
    let client = c.client_db(DB).await?;
    let t = Instant::now();
    let mut statements = 0u64;
    loop {
        let written = current_lsn(c).await?.bytes_since(resumed);
        if written >= REPLAY_WAL_BYTES {
            break;
        }
        if t.elapsed() > WAL_GEN_TIMEOUT {
            bail!(
                "only {} of WAL after {}; the UPDATEs are too slow here",
                fmt_bytes(written),
                fmt_d(t.elapsed())
            );
        }
        progress(&format!("  {} of WAL so far", fmt_bytes(written)));
        client
            .batch_execute(&format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 8 = {}",
                statements % 8
            ))
            .await
            .context("UPDATE pgbench_accounts (WAL generation)")?;
        statements += 1;
    }
    drop(client);
    let target = current_lsn(c).await?;
    let replay = target.bytes_since(snap.start_lsn);
    let written = target.bytes_since(resumed);
    progress(&format!(
        "{} of WAL generated by {statements} UPDATEs in {}; forking at {target} ×{LSN_FORK_RUNS}",
        fmt_bytes(written),
        fmt_d(t.elapsed())
    ));
    let at_lsn = b
        .forks(tl.id, &At::Lsn(target), LSN_FORK_RUNS, "fork at LSN")
        .await?;
    let at_snap = b
        .forks(
            tl.id,
            &At::Snapshot(snap.name.clone()),
            LSN_FORK_RUNS,
            "fork at the base snapshot",
        )
        .await?;

    println!("## 3. Fork at an LSN with WAL to replay\n");
    println!(
        "Parent at scale {SMALL_SCALE}, periodic snapshots off. Named snapshot `{}` (redo start {}, \
         consistent at {}), then {statements} statements `UPDATE pgbench_accounts SET abalance = \
         abalance + 1 WHERE aid % 8 = k` (each its own transaction) wrote {} of WAL ({} bytes, \
         from {resumed}, where writing resumed after the snapshot's segment switch); fork at \
         `pg_current_wal_lsn()` = {target}. The child starts from the snapshot's clone and \
         replays from the snapshot's redo start to the target: {} of LSN distance ({} bytes, \
         including the unused tail of the switched segment). For comparison, a fork at the \
         snapshot itself replays (almost) nothing. \"WAL redo\" is the `elapsed` Postgres \
         logs with `redo done`.\n",
        snap.name,
        snap.start_lsn,
        snap.end_lsn,
        fmt_bytes(written),
        written,
        fmt_bytes(replay),
        replay
    );
    println!(
        "| fork target | WAL to replay | runs | total median | total min | total max | fork API median | compute start median (replay + promotion) | of which WAL redo (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, wal, runs) in [
        (format!("LSN {target}"), fmt_bytes(replay), &at_lsn),
        (
            format!("snapshot `{}`", snap.name),
            fmt_bytes(snap.end_lsn.bytes_since(snap.start_lsn)),
            &at_snap,
        ),
    ] {
        let (t, a, s) = (runs.total(), runs.api(), runs.start());
        let redo = runs
            .redo()
            .map_or_else(|| "not logged".to_owned(), |r| fmt_d(r.median));
        println!(
            "| {name} | {wal} | {} | {} | {} | {} | {} | {} | {redo} |",
            t.n,
            fmt_d(t.median),
            fmt_d(t.min),
            fmt_d(t.max),
            fmt_d(a.median),
            fmt_d(s.median)
        );
    }
    let extra = at_lsn.start().median.saturating_sub(at_snap.start().median);
    if !extra.is_zero() {
        println!(
            "\nReplay cost (compute start at LSN − at snapshot, medians): {} for {} of WAL \
             written, ≈ {:.0} MiB/s.\n",
            fmt_d(extra),
            fmt_bytes(written),
            written as f64 / MIB as f64 / extra.as_secs_f64()
        );
    } else {
        println!();
    }
    Ok(())
}

/// Rows in `pgbench_history`: one per pgbench transaction.
async fn history_rows(c: &Compute) -> Result<i64> {
    let row = c
        .client_db(DB)
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .context("count pgbench_history")?;
    Ok(row.get(0))
}

/// Section 4: fork at latest with the parent quiet, then while pgbench writes.
async fn bench_busy_fork(b: &Bench, tl: &TimelineInfo, c: &Compute) -> Result<()> {
    c.execute("CHECKPOINT").await?;
    progress(&format!("quiet parent: forking at latest ×{FORK_RUNS}"));
    let quiet = b
        .forks(tl.id, &At::Latest, FORK_RUNS, "quiet parent")
        .await?;

    let pgbench = b.pg.pgbench().context("pgbench is not installed")?;
    let mut load = tokio::process::Command::new(pgbench);
    load.arg("-h")
        .arg(c.run_dir())
        .arg("-p")
        .arg(c.port().to_string())
        .args(["-U", "postgres"])
        .args(["-c", LOAD_CLIENTS, "-j", "2", "-T", LOAD_SECONDS, "-n", DB])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    b.user.apply_tokio(&mut load);
    progress(&format!(
        "starting pgbench -c {LOAD_CLIENTS} -j 2 -T {LOAD_SECONDS} -n; forking after {}",
        fmt_d(LOAD_WARMUP)
    ));
    let mut load = load.spawn().context("spawn pgbench load")?;
    tokio::time::sleep(LOAD_WARMUP).await;
    let before = history_rows(c).await?;
    let window = Instant::now();
    let mut samples = Vec::new();
    for i in 1..=FORK_RUNS {
        if let Some(status) = load.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = load.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("pgbench load ended ({status}) before fork {i}: {err}");
        }
        let s = b.fork_once(tl.id, &At::Latest).await?;
        progress(&format!(
            "busy parent: fork {i}/{FORK_RUNS}: {} (API {}, compute start {})",
            fmt_d(s.total),
            fmt_d(s.api),
            fmt_d(s.start)
        ));
        samples.push(s);
    }
    let still_running = load.try_wait()?.is_none();
    let after = history_rows(c).await?;
    let tps = (after - before) as f64 / window.elapsed().as_secs_f64();
    load.start_kill().ok();
    let _ = load.wait().await;
    progress("pgbench load stopped");
    let busy = Runs(samples);

    println!("## 4. Fork at latest while pgbench writes\n");
    println!(
        "Parent at scale {SMALL_SCALE}. Busy: `pgbench -c {LOAD_CLIENTS} -j 2 -T {LOAD_SECONDS} -n` \
         running, forks start {} after it; it committed {:.0} transactions/s on the parent \
         while the forks ran (children's compute start competing for the same {} cores){}. \
         Quiet: same parent after `CHECKPOINT`, no load. The node does not report phases, so \
         the split is fork API (backup start with fast checkpoint, clone, backup stop, WAL) \
         vs compute start (recovery + promotion + first connection).\n",
        fmt_d(LOAD_WARMUP),
        tps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if still_running {
            ""
        } else {
            "; note: pgbench had finished before the last fork ended"
        }
    );
    println!(
        "| parent | runs | total median | total min | total max | fork API median | fork API max | compute start median |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, runs) in [("quiet", &quiet), ("pgbench, 8 clients", &busy)] {
        let (t, a, s) = (runs.total(), runs.api(), runs.start());
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            t.n,
            fmt_d(t.median),
            fmt_d(t.min),
            fmt_d(t.max),
            fmt_d(a.median),
            fmt_d(a.max),
            fmt_d(s.median)
        );
    }
    println!();
    Ok(())
}

async fn run() -> Result<()> {
    progress("starting: mounting a 24 GiB sparse XFS scratch filesystem and ramify-storage");
    let b = Bench::new().await?;
    let status = b.client.status().await.context("GET /v1/status")?;
    let pg_version = std::process::Command::new(b.pg.postgres())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    if !b.scratch.is_reflink() {
        eprintln!(
            "WARNING: no reflink scratch filesystem (not root or no xfsprogs): every fork is a \
             full copy and the numbers below do not represent Ramify on XFS"
        );
    }

    println!("# Ramify storage-node fork benchmark\n");
    println!(
        "Machine: {} CPU cores; {pg_version}; data dir on {} (clone method `{}`, {} sparse \
         loop image); node started with `--snapshot-interval 0 --snapshot-wal-bytes 0`. \
         Postgres defaults plus Ramify's generated settings (archive_mode on, wal_compression \
         lz4).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        status.filesystem,
        status.clone_method,
        fmt_bytes(status.capacity_bytes),
    );

    // The scale-10 parent stays for sections 3 and 4; the scale-100 one is removed after
    // section 2 to free its memory and disk.
    let (small_tl, small) = b.loaded_root(SMALL_SCALE).await?;
    let mut results = vec![bench_scale(&b, SMALL_SCALE, &small_tl, &small).await?];
    {
        let (tl, mut c) = b.loaded_root(LARGE_SCALE).await?;
        results.push(bench_scale(&b, LARGE_SCALE, &tl, &c).await?);
        c.stop().await?;
        b.client
            .delete_timeline(tl.id, false)
            .await
            .context("delete the scale-100 parent")?;
    }
    print_scale_tables(&results);

    progress("section 3: fork at an LSN on the scale-10 parent");
    bench_lsn_fork(&b, &small_tl, &small).await?;
    progress("section 4: fork while pgbench writes");
    bench_busy_fork(&b, &small_tl, &small).await?;
    drop(small);
    progress("cleaning up (stopping computes and the node, unmounting the scratch filesystem)");
    Ok(())
}
