//! `make bench`: space accounting and reads with many timelines on one node, printed as
//! Markdown.
//!
//! Starts a real `ramify-storage` on a loop-mounted reflink XFS scratch filesystem, loads
//! a root with pgbench data, stops it and forks it until the node holds 10, 100 and 1,000
//! timelines (`RAMIFY_BENCH_TIMELINES=10,100,1000` to change; real forks, each a reflink
//! clone of the root's PGDATA plus its fork snapshot). The root and a few forks then run a
//! compute (reads connect to each running one for its restore window). At each size it
//! measures:
//!
//! * `GET /v1/timelines/<id>` and `GET /v1/timelines` (what `branch list` uses): p50/p99;
//! * a full accounting pass: the first one after the forks were made (every new file is
//!   mapped) and one once the files have settled (maps answered from the cache);
//! * the node's resident memory (RSS) and its peak (VmHWM).
//!
//! `RAMIFY_STORAGE_BIN=path` benchmarks another build of `ramify-storage` (an older one
//! without background accounting answers `?sizes=fresh` with 400: its pass column then
//! says so). Everything is cleaned up by the testkit's `Drop` impls, on error and Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ramify_api::{At, CreateTimeline, StorageClient, TimelineId, TimelineInfo, TimelineState};
use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch, StorageNodeProcess};

const GIB: u64 = 1 << 30;
/// Sparse image: 1,000 forks cost metadata (two clones of ~1,000 files each), not data.
const SCRATCH_BYTES: u64 = 40 * GIB;
const SCALE: &str = "5";
const GET_SAMPLES: usize = 200;
const LIST_SAMPLES: usize = 20;
/// Forks that run a compute while reads are measured (the root runs one too).
const RUNNING_FORKS: usize = 4;
/// How long files must be left alone before their maps are cached (the node's
/// `accounting::SETTLED`), plus a margin.
const SETTLE: Duration = Duration::from_secs(65);

fn main() -> ExitCode {
    ramify_testkit::bench::main("accounting bench", async {
        run().await?;
        progress("done");
        Ok(())
    })
}

use ramify_testkit::bench::progress;

fn storage_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RAMIFY_STORAGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_ramify-storage") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("ramify-storage binary not found: run `cargo bench -p ramify-storage --bench accounting` or set RAMIFY_STORAGE_BIN")
}

fn sizes() -> Result<Vec<usize>> {
    let spec = std::env::var("RAMIFY_BENCH_TIMELINES").unwrap_or_else(|_| "10,100,1000".into());
    let mut v = spec
        .split(',')
        .map(|s| {
            s.trim().parse::<usize>().with_context(|| {
                format!("RAMIFY_BENCH_TIMELINES={spec:?}: expected counts like 10,100,1000")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    if v.first().is_some_and(|&n| n < 2 + RUNNING_FORKS) {
        bail!(
            "RAMIFY_BENCH_TIMELINES={spec:?}: each count must be at least {}",
            2 + RUNNING_FORKS
        );
    }
    Ok(v)
}

/// Resident and peak resident memory of process `pid`, from /proc.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// `s` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn fmt_d(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 0.01 {
        format!("{:.2} ms", s * 1000.0)
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

fn fmt_mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

struct Row {
    timelines: usize,
    files: usize,
    get: (Duration, Duration),
    list: (Duration, Duration),
    pass_cold: Option<Duration>,
    pass_settled: Option<Duration>,
    rss: u64,
    peak: u64,
}

/// One fresh read: waits for a pass started after the call. `None` when the node does
/// not know `?sizes=fresh` (a build before background accounting).
async fn fresh_pass(client: &StorageClient, id: TimelineId) -> Result<Option<Duration>> {
    let t = Instant::now();
    match client.get_timeline_fresh(id).await {
        Ok(_) => Ok(Some(t.elapsed())),
        Err(e) if e.to_string().contains("sizes") => Ok(None),
        Err(e) => Err(e).context("GET ?sizes=fresh"),
    }
}

/// Regular files below `dir`.
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

async fn run() -> Result<()> {
    let sizes = sizes()?;
    let bin = storage_binary()?;
    let scratch = Scratch::reflink(SCRATCH_BYTES).context("scratch filesystem")?;
    if !scratch.is_reflink() {
        bail!("no reflink scratch filesystem here (needs root and xfsprogs)");
    }
    let pg = PgBin::find(None).context("Postgres binaries")?;
    let user = PgUser::resolve(None).context("Postgres OS user")?;
    let pg_dir = pg.dir().to_str().context("Postgres bin dir is not UTF-8")?;
    // Accounting passes only when asked (a new timeline, `?sizes=fresh`), so that the
    // pass timed is the one the bench asks for; no periodic snapshots.
    let mut args = vec![
        "--pg-bin",
        pg_dir,
        "--snapshot-interval",
        "0",
        "--snapshot-wal-bytes",
        "0",
    ];
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .with_context(|| format!("{} --help", bin.display()))?;
    if String::from_utf8_lossy(&help.stdout).contains("--accounting-interval") {
        args.extend(["--accounting-interval", "1h"]);
    }
    let data = scratch.path().join("data");
    // The accountant logs what each pass did (files, maps made, ranges swept) at debug.
    let node = StorageNodeProcess::start_with_env(
        &bin,
        &data,
        &args,
        &[("RUST_LOG", "info,ramify_storage::accounting=debug")],
    )
    .await
    .context("start ramify-storage")?;
    let last_pass_log = |node: &StorageNodeProcess| {
        node.log()
            .lines()
            .rev()
            .find(|l| l.contains("space accounting"))
            .map(|l| {
                let l = strip_ansi(l);
                l.split_once("space accounting")
                    .map_or(l.as_str(), |(_, r)| r)
                    .trim_start_matches(':')
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let client = node.client();
    let pid = node.pid().context("node pid")?;
    let start = |tl: &TimelineInfo| {
        let (pg, user, tl) = (&pg, &user, tl.clone());
        async move {
            Compute::start(
                pg,
                user,
                Path::new(&tl.pgdata),
                Path::new(&tl.run_dir),
                &tl.archive_command,
                tl.state == TimelineState::Empty,
                &[],
            )
            .await
            .with_context(|| format!("compute on timeline {}", tl.id))
        }
    };

    let root = client
        .create_timeline(&CreateTimeline::default())
        .await
        .context("create root")?
        .value;
    {
        let c = start(&root).await?;
        progress(&format!("loading pgbench scale {SCALE} into the root…"));
        c.pgbench(&["-i", "-s", SCALE, "-q", "postgres"]).await?;
        c.execute("CHECKPOINT").await?;
        let mut c = c;
        c.stop().await?;
    }
    let mut ids = vec![root.id];
    let mut forks: Vec<TimelineInfo> = Vec::new();
    let mut rows = Vec::new();
    for &target in &sizes {
        let t = Instant::now();
        let before = ids.len();
        while ids.len() < target {
            let f = client
                .create_timeline(&CreateTimeline {
                    id: None,
                    parent: Some(root.id),
                    at: Some(At::Latest),
                    follow: None,
                    backup: None,
                    from_backup: None,
                })
                .await
                .with_context(|| format!("fork {}; node log:\n{}", ids.len(), node.log_tail()))?
                .value;
            ids.push(f.id);
            forks.push(f);
            if ids.len() % 100 == 0 {
                progress(&format!("{} timelines", ids.len()));
            }
        }
        progress(&format!(
            "{} forks made in {:.1} s ({:.0} ms each)",
            ids.len() - before,
            t.elapsed().as_secs_f64(),
            t.elapsed().as_secs_f64() * 1000.0 / (ids.len() - before).max(1) as f64
        ));
        let files = count_files(&data.join("timelines"));
        // The first pass after the forks: their files are new, so every one is mapped.
        // (One pass may already be running for the new timelines: the fresh read waits
        // for it and then for its own, so read twice and keep the second.)
        fresh_pass(&client, root.id).await?;
        let pass_cold = fresh_pass(&client, root.id).await?;
        progress(&format!(
            "pass over new files: {:?} ({})",
            pass_cold,
            last_pass_log(&node)
        ));
        progress(&format!(
            "waiting {} s for the files to settle…",
            SETTLE.as_secs()
        ));
        tokio::time::sleep(SETTLE).await;
        // This pass writes back and caches the settled maps; the next reuses them.
        fresh_pass(&client, root.id).await?;
        let pass_settled = fresh_pass(&client, root.id).await?;
        progress(&format!(
            "pass over settled files: {:?} ({})",
            pass_settled,
            last_pass_log(&node)
        ));

        // Computes on the root and a few forks: reads connect to each for its window.
        // The root as it is now (a root made empty by an older node was initdb'd above).
        let root_now = client
            .get_timeline_without_sizes(root.id)
            .await
            .context("GET root")?;
        let mut computes = vec![start(&root_now).await?];
        for f in forks.iter().take(RUNNING_FORKS) {
            computes.push(start(f).await?);
        }
        let mut gets = Vec::with_capacity(GET_SAMPLES);
        for i in 0..GET_SAMPLES {
            let id = ids[(i * 7919) % ids.len()];
            let t = Instant::now();
            let tl = client.get_timeline(id).await.context("GET")?;
            gets.push(t.elapsed());
            if tl.id != id {
                bail!("GET {id} answered {}", tl.id);
            }
        }
        let mut lists = Vec::with_capacity(LIST_SAMPLES);
        for _ in 0..LIST_SAMPLES {
            let t = Instant::now();
            let all = client.list_timelines().await.context("list")?;
            lists.push(t.elapsed());
            if all.len() != ids.len() {
                bail!("list returned {} of {} timelines", all.len(), ids.len());
            }
        }
        let (rss, peak) = memory(pid);
        for mut c in computes {
            c.stop().await?;
        }
        let row = Row {
            timelines: ids.len(),
            files,
            get: (percentile(&mut gets, 0.5), percentile(&mut gets, 0.99)),
            list: (percentile(&mut lists, 0.5), percentile(&mut lists, 0.99)),
            pass_cold,
            pass_settled,
            rss,
            peak,
        };
        progress(&format!(
            "{} timelines: GET p50 {} p99 {}, list p50 {} p99 {}, RSS {}",
            row.timelines,
            fmt_d(row.get.0),
            fmt_d(row.get.1),
            fmt_d(row.list.0),
            fmt_d(row.list.1),
            fmt_mib(row.rss)
        ));
        rows.push(row);
    }

    println!();
    println!(
        "### Reads and space accounting with many timelines (root: pgbench scale {SCALE}, forks at latest; {} computes running during reads)",
        RUNNING_FORKS + 1
    );
    println!();
    println!("| timelines | files | GET p50 | GET p99 | list p50 | list p99 | pass, new files | pass, settled files | node RSS | node peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let pass = |p: Option<Duration>| p.map_or_else(|| "n/a (no background pass)".into(), fmt_d);
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.timelines,
            r.files,
            fmt_d(r.get.0),
            fmt_d(r.get.1),
            fmt_d(r.list.0),
            fmt_d(r.list.1),
            pass(r.pass_cold),
            pass(r.pass_settled),
            fmt_mib(r.rss),
            fmt_mib(r.peak),
        );
    }
    println!();
    println!("GET: {GET_SAMPLES} reads of timelines spread over the node; list: {LIST_SAMPLES} reads of every timeline; a pass is timed as a `?sizes=fresh` read (it waits for one pass started after the call).");
    drop(node);
    drop(scratch);
    Ok(())
}
