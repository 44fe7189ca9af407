//! `ramify-storage`: the storage node binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ramify_api::ApiToken;
use ramify_storage::metrics::Metrics;
use ramify_storage::node::{Node, NodeConfig, NodeError, Recovered, Reserve};
use tracing::{info, warn};

/// Ramify's storage node: keeps Postgres timelines (PGDATA + WAL archive + snapshots) on a
/// reflink filesystem and forks them copy-on-write at the latest state, an LSN, a time or
/// a snapshot. Serves a JSON API under /v1 (see the project's docs/storage-api.md).
///
/// Every call but /healthz needs `Authorization: Bearer <token>`; the token comes from
/// --token-file (preferred) or $RAMIFY_STORAGE_TOKEN, and the node does not start without
/// one. Prometheus metrics are served, without a credential, only on --metrics-listen.
///
/// Example:
///   head -c 32 /dev/urandom | base64 > token && chmod 600 token
///   ramify-storage --data-dir /var/lib/ramify --listen 127.0.0.1:7100 --token-file token \
///     --metrics-listen 127.0.0.1:7101 --restore-window 7d
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Data directory; put it on XFS (reflink=1) or btrfs, or every fork is a full copy.
    #[arg(long, env = "RAMIFY_STORAGE_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7100", env = "RAMIFY_STORAGE_LISTEN")]
    listen: SocketAddr,
    /// File holding the API's bearer token (at least 32 printable characters; one trailing
    /// newline is ignored). Must not be readable by its group or others (mode 0600/0400).
    /// Without it the token is read from the environment variable RAMIFY_STORAGE_TOKEN
    /// (for a Kubernetes Secret, whose files the Pod's fsGroup makes group-readable);
    /// there is no flag for the token itself, which `ps` would show.
    #[arg(long, env = "RAMIFY_STORAGE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Address of a second listener serving only /metrics (Prometheus text) and /healthz,
    /// without a credential, for monitoring. Default: none (metrics are not served).
    #[arg(long, env = "RAMIFY_STORAGE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How far back forks at an LSN or time can reach (e.g. 7d, 12h, 30m). Older
    /// snapshots and WAL are garbage-collected.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    restore_window: Duration,
    /// Take a snapshot of each timeline this often when it has new WAL (0 = never).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// ...or as soon as this much WAL was written since the last one (e.g. 256MiB, 1GiB; 0 = never).
    /// Bounds how much WAL a fork at an LSN or time replays.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    snapshot_wal_bytes: u64,
    /// How often periodic snapshots and restore-window GC are checked.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    housekeeping_interval: Duration,
    /// How often each timeline's archive inbox is moved into its archive (forks,
    /// snapshots and GC also do it first, so this only bounds how current `wal/` is).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    archive_drain_interval: Duration,
    /// Keep a warm standby beside each physical follower, so a fork of it at latest
    /// replays none of its source's WAL (one more Postgres per follower, replaying the
    /// same WAL; see docs/architecture.md). `--warm-standbys false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "RAMIFY_WARM_STANDBYS")]
    warm_standbys: bool,
    /// Longest pause between two passes of the space accounting (logical, exclusive and
    /// history bytes of every timeline), which runs in the background: reads answer with
    /// the last pass's figures and its time, `?sizes=fresh` waits for a new one. A pass
    /// is followed by a pause of at least twice its duration.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    accounting_interval: Duration,
    /// Directory with Postgres binaries (initdb makes new roots, so their history starts
    /// at creation; pg_waldump is needed for forks at a time); default: $PATH, then
    /// /usr/lib/postgresql/*/bin.
    #[arg(long, env = "RAMIFY_PG_BIN")]
    pg_bin: Option<PathBuf>,
    /// Free space kept for the WAL of running computes: a share of the volume (5%) or a
    /// size (2GiB, 512MiB; 0 turns it off). Default: 5% of the volume, at most 2GiB.
    /// Below it the node refuses forks, new roots and manual snapshots with 507
    /// insufficient_storage (after restore-window GC of every timeline), and skips
    /// periodic snapshots. The timeline that grew most while free space fell is made
    /// read-only (ALTER SYSTEM SET default_transaction_read_only = on, its sessions
    /// terminated); if its data keeps growing under half the reserve (a session turned the
    /// setting off) its compute is stopped. Restrictions are lifted once free space is
    /// back above the reserve plus a quarter. Make it larger than what your busiest
    /// branch can write in a few seconds.
    #[arg(long, default_value = "default", env = "RAMIFY_STORAGE_RESERVE", value_parser = parse_reserve)]
    reserve: Reserve,
    /// How often the space guard checks free space (and, under twice the reserve, what
    /// each timeline grew).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    space_check_interval: Duration,
    #[command(flatten)]
    backup: ramify_storage::backup::RepoArgs,
    /// How often archived WAL is pushed to the repository. Commits at most this plus the
    /// computes' archive_timeout (60 s) old are lost with the volume.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    backup_interval: Duration,
    /// Take a new base backup of a durable timeline (of its newest snapshot) once this
    /// much WAL was written since its last one: bounds how much WAL a recovery replays.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    backup_full_after: u64,
    /// Before serving, recover from --backup-repo every durable timeline this data
    /// directory does not have (a node whose volume was lost, or timelines moved here),
    /// parents first, under their own ids. Each is restored whole or not at all.
    #[arg(long, conflicts_with = "recover_if_empty")]
    recover: bool,
    /// Recover as --recover does, but only when this data directory holds no timeline at
    /// all (a new or replaced volume), and start empty when the repository holds no Ramify
    /// timelines yet (a first start). What a StatefulSet passes on every start: a node
    /// whose volume was lost comes back by itself, one whose volume is there starts as
    /// usual.
    #[arg(long)]
    recover_if_empty: bool,
    /// This node's name in its backup repository (default: the host name; the chart
    /// passes <Pod>.<namespace>). A prefix has one writer: a node whose name differs from
    /// the live writer's is refused; the same name on a new data directory replaces it.
    #[arg(long, env = "RAMIFY_NODE_NAME")]
    node_name: Option<String>,
    /// How often the node renews its claim on the repository prefix.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    backup_heartbeat: Duration,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_reserve(s: &str) -> Result<Reserve, String> {
    s.parse()
}

/// Parses `123`, `64KiB`, `256MiB`, `1GiB`, `10MB`, `1GB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit, like 256MiB")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `name` (a Postgres program) in `explicit`, else in $PATH, else in the newest
/// /usr/lib/postgresql/*/bin.
fn find_pg_program(explicit: Option<&PathBuf>, name: &str) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        let p = dir.join(name);
        return p.exists().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    dirs.extend(versions);
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// Environment variable holding the API token when no --token-file is given.
const TOKEN_ENV: &str = "RAMIFY_STORAGE_TOKEN";

/// The API token and, for refused callers, a phrase saying where it is kept.
fn api_token(args: &Args) -> anyhow::Result<(ApiToken, String)> {
    if let Some(path) = &args.token_file {
        let token = ApiToken::from_file(path)?;
        return Ok((
            token,
            format!("in the node's --token-file ({})", path.display()),
        ));
    }
    if let Ok(value) = std::env::var(TOKEN_ENV) {
        let token = ApiToken::new(&value, TOKEN_ENV)?;
        return Ok((token, "the node's RAMIFY_STORAGE_TOKEN".to_string()));
    }
    anyhow::bail!(
        "no API token: pass --token-file PATH (a file of mode 0600 holding at least 32 printable characters) or set RAMIFY_STORAGE_TOKEN; every caller then sends it as `Authorization: Bearer <token>`"
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before anything else: a node that would serve without a credential must not start.
    let (token, token_source) = api_token(&args)?;
    let repo = args.backup.repo()?;
    // Read once, before any thread or child process exists: the Postgres processes the
    // node starts (warm standbys, pg_basebackup) never see them.
    for var in std::iter::once(TOKEN_ENV).chain(ramify_storage::backup::SECRET_ENV) {
        std::env::remove_var(var);
    }
    // The environment block the process started with stays in /proc/<pid>/environ:
    // readable only by root once the process is not dumpable (no core dumps either).
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        anyhow::bail!(
            "cannot make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(serve(args, token, token_source, repo))
}

async fn serve(
    args: Args,
    token: ApiToken,
    token_source: String,
    repo: Option<ramify_storage::backup::Repo>,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    ramify_storage::failpoint::init_from_env().map_err(anyhow::Error::msg)?;
    if nix::unistd::geteuid().is_root() {
        warn!("running as root: files will be owned by root and Postgres (which refuses root) cannot use them; run as the Postgres OS user");
    }
    let waldump = find_pg_program(args.pg_bin.as_ref(), "pg_waldump");
    if waldump.is_none() {
        warn!("pg_waldump not found: forks at a time are refused and fork times are approximate; pass --pg-bin");
    }
    let initdb = find_pg_program(args.pg_bin.as_ref(), "initdb");
    if initdb.is_none() {
        warn!("initdb not found: NEW ROOT TIMELINES ARE CREATED EMPTY and cannot be restored to any point before their first snapshot; pass --pg-bin DIR (or set RAMIFY_PG_BIN) naming the directory that holds initdb");
    }
    let cfg = NodeConfig {
        data_dir: args.data_dir.clone(),
        restore_window: args.restore_window,
        snapshot_interval: args.snapshot_interval,
        snapshot_wal_bytes: args.snapshot_wal_bytes,
        waldump,
        initdb,
    };
    let node = Arc::new(
        Node::open(cfg, Arc::new(Metrics::default()))
            .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?,
    );
    node.set_reserve(args.reserve);
    anyhow::ensure!(
        !(args.recover || args.recover_if_empty) || args.backup.backup_repo.is_some(),
        "--recover and --recover-if-empty need --backup-repo: the repository to recover from"
    );
    // A fresh volume (no timeline, not even one being created or deleted), or one whose
    // recovery did not finish (killed half-way, or timelines that failed: retried).
    let recover = args.recover
        || (args.recover_if_empty && (node.holds_no_timeline()? || node.recovery_unfinished()));
    if let Some(repo) = repo {
        let pgbackrest = ramify_storage::backup::find_pgbackrest()?;
        let described = repo.describe();
        node.set_backup(repo, pgbackrest, args.backup_full_after)?;
        match node.check_backup_repo().await {
            Ok(()) => info!(repository = %described, "backup repository reachable"),
            // The node serves anyway; archiving backs off and keeps WAL until it works.
            Err(e) if !recover => {
                warn!(error = %e, "the backup repository does not answer; durable timelines keep their WAL on this node until it does")
            }
            Err(e) => {
                return Err(e).context("cannot recover: the backup repository does not answer")
            }
        }
        let name = match &args.node_name {
            Some(n) => n.clone(),
            None => ramify_storage::node::host_name()
                .context("cannot read the host name: pass --node-name")?,
        };
        node.claim_backup_repo_at_start(&name, args.backup_heartbeat, recover)
            .await
            .context("cannot use the backup repository")?;
    }
    if recover {
        let t0 = std::time::Instant::now();
        let r = match node.recover_from_backup().await {
            Err(NodeError::NotFound(why)) if !args.recover => {
                info!(%why, "nothing to recover: a first start on this repository");
                Recovered::default()
            }
            r => r.context("recovery from the backup repository failed")?,
        };
        info!(
            restored = r.restored.len(),
            forked_again = r.refork.len(),
            already_here = r.already_here,
            deleted = r.deleted,
            failed = r.failed.len(),
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "recovery from the backup repository finished"
        );
        for (id, why) in &r.failed {
            warn!(timeline = %id, error = %why, "NOT RECOVERED");
        }
    }
    node.spawn_release_leftover_slots();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(
        listen = %args.listen, data_dir = %args.data_dir.display(), clone_method = %node.clone_method(),
        restore_window = %humantime::format_duration(args.restore_window),
        reserve = %args.reserve,
        "ramify-storage ready"
    );
    let bg = node.clone();
    let every = args.housekeeping_interval.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if let Err(e) = bg.tick().await {
                warn!(error = %e, "housekeeping failed");
            }
        }
    });
    node.spawn_archive_drain(args.archive_drain_interval);
    node.spawn_backups(args.backup_interval);
    if args.warm_standbys {
        node.spawn_warm_standbys();
    }
    node.spawn_accounting(args.accounting_interval);
    node.spawn_space_guard(args.space_check_interval);
    if let Some(addr) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        info!(metrics_listen = %addr, "serving /metrics");
        let metrics_app = ramify_storage::api::metrics_router(node.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, metrics_app).await {
                warn!(error = %e, "metrics listener failed");
            }
        });
    }
    let app = ramify_storage::api::router(node.clone(), token, &token_source).layer(
        axum::middleware::from_fn_with_state(
            node,
            |axum::extract::State(n): axum::extract::State<Arc<Node>>,
             req: axum::extract::Request,
             next: axum::middleware::Next| async move {
                n.metrics().request();
                next.run(req).await
            },
        ),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            info!("shutting down");
        })
        .await
        .context("HTTP server failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
