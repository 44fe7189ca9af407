//! `ramify local up|down|status`: starting, stopping and inspecting the local daemon.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use ramify_compute::{PgBin, PgUser};
use ramify_local::{files, DaemonClient, DaemonConfig, DaemonFile};
use serde::Serialize;

use super::Context;
use crate::args::UpArgs;
use crate::xfs_image::{self, Prepared};
use crate::{data_dir, privileges, render};

/// How long `up` waits for the daemon to answer and `down` for it to exit.
const WAIT: Duration = Duration::from_secs(30);
/// How long `local up --recover` waits: the daemon restores every durable branch from the
/// repository (downloads and WAL replay as long as the data) before it answers.
const RECOVER_WAIT: Duration = Duration::from_secs(2 * 3600);
/// Log lines shown when the daemon dies during start-up.
const LOG_TAIL_LINES: usize = 30;

/// The daemon the data directory's daemon file names, when its process still exists.
fn running_daemon(data_dir: &Path) -> anyhow::Result<Option<DaemonFile>> {
    let file = DaemonFile::read(data_dir)
        .with_context(|| format!("cannot read {}", DaemonFile::path(data_dir).display()))?;
    Ok(file.filter(DaemonFile::process_alive))
}

/// `ramify local up`.
pub fn up(ctx: &Context, args: UpArgs) -> anyhow::Result<()> {
    let dir = &ctx.data_dir;
    if let Some(f) = running_daemon(dir)? {
        bail!(
            "local mode is already running for {} (pid {})",
            dir.display(),
            f.pid
        );
    }
    let bin = PgBin::find(args.pg_bin.as_deref())?;
    let user = PgUser::resolve(args.pg_user.as_deref())?;
    if !args.detached {
        prepare_data_dir(dir, &args, &user)?;
    }
    if args.foreground {
        return run_foreground(dir, &args, bin, &user);
    }
    start_detached(ctx, &args, &bin, &user)
}

/// Mounts the XFS image when asked, creates `<data>/local` and, as root, hands the data
/// directory to the Postgres user.
fn prepare_data_dir(dir: &Path, args: &UpArgs, user: &PgUser) -> anyhow::Result<()> {
    if user.switches_user() {
        data_dir::check_reachable(dir, user.name(), user.uid(), user.gid())?;
    }
    if let Some(size) = args.xfs_image {
        match xfs_image::prepare(dir, size)? {
            Prepared::AlreadyMounted => eprintln!(
                "{} is already a mount point; using it as it is",
                dir.display()
            ),
            Prepared::Mounted { image, created } => eprintln!(
                "{} {} ({}, XFS with reflinks) on {}",
                if created {
                    "created and mounted"
                } else {
                    "mounted"
                },
                image.display(),
                render::human_bytes(size),
                dir.display()
            ),
        }
    }
    let local = files::local_dir(dir);
    std::fs::create_dir_all(&local)
        .with_context(|| format!("cannot create {}", local.display()))?;
    // The first start hands the whole directory over; later ones only what this command
    // itself (as root) may have created, so a large data directory is not walked again.
    let handed_over = std::fs::metadata(dir).is_ok_and(|m| m.uid() == user.uid());
    if handed_over {
        for p in [dir.to_path_buf(), local.clone(), local.join("mount.json")] {
            if p.exists() {
                user.chown(&p)?;
            }
        }
    } else {
        user.chown_recursive(dir)?;
    }
    Ok(())
}

/// `local up --foreground`: the daemon in this process, as the Postgres user.
fn run_foreground(dir: &Path, args: &UpArgs, bin: PgBin, user: &PgUser) -> anyhow::Result<()> {
    // Before any thread exists: switching users and setting the environment are
    // process-wide.
    privileges::become_user(user)?;
    init_tracing();
    let backup = local_backup(dir, args)?;
    // The repository's credentials are read: the daemon's computes (tenants' Postgres,
    // children of this process) must not inherit them. Still one thread here.
    for var in ramify_storage::backup::SECRET_ENV {
        std::env::remove_var(var);
    }
    let cfg = DaemonConfig {
        data_dir: dir.to_path_buf(),
        pg_bin: Some(bin.dir().to_path_buf()),
        pg_user: args.pg_user.clone(),
        tls_required: args.tls_required,
        backup,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(ramify_local::run(cfg))
}

/// The daemon's backup repository: the one given, remembered in
/// `<data>/local/backup.json` (no secrets: credentials come from the environment or the
/// files it names), else the one remembered from an earlier start.
fn local_backup(dir: &Path, args: &UpArgs) -> anyhow::Result<Option<ramify_local::LocalBackup>> {
    let remembered = files::local_dir(dir).join("backup.json");
    let repo_args = if args.backup.backup_repo.is_some() {
        let json = serde_json::to_vec_pretty(&args.backup)?;
        std::fs::write(&remembered, json)
            .with_context(|| format!("cannot write {}", remembered.display()))?;
        args.backup.clone()
    } else {
        match std::fs::read(&remembered) {
            Ok(json) => serde_json::from_slice(&json)
                .with_context(|| format!("{} is not valid", remembered.display()))?,
            Err(_) if args.recover => {
                anyhow::bail!(
                    "--recover needs --backup s3://BUCKET/PREFIX: the repository to recover from"
                )
            }
            Err(_) => return Ok(None),
        }
    };
    let repo = repo_args.repo()?.expect("a repository is named");
    Ok(Some(ramify_local::LocalBackup {
        repo,
        recover: args.recover,
    }))
}

/// Logs to stderr (the daemon log when detached); `RAMIFY_LOG` or `RUST_LOG` filter,
/// `RAMIFY_LOG_FORMAT=json` for structured lines.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RAMIFY_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A subscriber may already be installed (the daemon's own); keep it.
    let _ = if std::env::var("RAMIFY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Starts `ramify local up --foreground --detached …` in its own process group with its
/// output in the daemon log, and waits until it answers.
fn start_detached(ctx: &Context, args: &UpArgs, bin: &PgBin, user: &PgUser) -> anyhow::Result<()> {
    let dir = &ctx.data_dir;
    let log_path = files::log_path(dir);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    user.chown(&log_path)?;
    let start_offset = log.seek(SeekFrom::End(0)).unwrap_or(0);
    writeln!(
        log,
        "---- ramify local up at {} ----",
        chrono::Utc::now().to_rfc3339()
    )
    .with_context(|| format!("cannot write the daemon log {}", log_path.display()))?;

    let exe = std::env::current_exe().context("cannot find the ramify executable to start")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["local", "up", "--foreground", "--detached", "--data-dir"])
        .arg(dir)
        .arg("--pg-bin")
        .arg(bin.dir());
    if let Some(u) = &args.pg_user {
        cmd.arg("--pg-user").arg(u);
    }
    if args.tls_required {
        cmd.arg("--tls-required");
    }
    cmd.args(args.backup.to_args());
    if args.recover {
        cmd.arg("--recover");
    }
    let out = log.try_clone().context("cannot share the daemon log")?;
    let child = cmd
        .env_remove("RAMIFY_DATA_DIR")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(log))
        // Its own process group: Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let wait = if args.recover {
        eprintln!(
            "recovering from the backup repository before serving (progress in {})",
            log_path.display()
        );
        RECOVER_WAIT
    } else {
        WAIT
    };
    let status = rt.block_on(wait_ready(dir, child, &log_path, start_offset, wait))?;
    ctx.print(&status, || render::local_status(&status, &log_path))
}

async fn wait_ready(
    dir: &Path,
    mut child: Child,
    log_path: &Path,
    start_offset: u64,
    wait: Duration,
) -> anyhow::Result<ramify_lifecycle::LocalStatus> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(exit) = child
            .try_wait()
            .context("cannot watch the daemon process")?
        {
            let tail = ramify_compute::tail::file_tail(log_path, start_offset, LOG_TAIL_LINES);
            if !tail.is_empty() {
                eprintln!("{tail}");
            }
            bail!(
                "local mode exited during start-up ({exit}); the end of its log {} is above",
                log_path.display()
            );
        }
        if let Ok(client) = DaemonClient::for_data_dir(dir) {
            if client.file().pid == child.id() {
                if let Ok(status) = client.status().await {
                    return Ok(status);
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "local mode did not answer within {} s (pid {} is still running); see its log {}",
                wait.as_secs(),
                child.id(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// What `local down` did, for `-o json|yaml`.
#[derive(Debug, Serialize)]
struct DownReport {
    was_running: bool,
    pid: Option<u32>,
    unmounted_image: Option<PathBuf>,
}

/// `ramify local down`.
pub async fn down(ctx: &Context) -> anyhow::Result<()> {
    let dir = &ctx.data_dir;
    let mut lines = Vec::new();
    let pid = match running_daemon(dir)? {
        None => {
            lines.push(format!("local mode is not running for {}", dir.display()));
            None
        }
        Some(file) => {
            let pid = file.pid;
            let client = DaemonClient::new(file.clone());
            if let Err(e) = client.shutdown().await {
                // It may have exited between our look and the request.
                if file.process_alive() {
                    return Err(anyhow!(e).context(format!("cannot stop local mode (pid {pid})")));
                }
            }
            let deadline = Instant::now() + WAIT;
            while file.process_alive() {
                if Instant::now() >= deadline {
                    bail!(
                        "local mode (pid {pid}) did not stop within {} s; see its log {}",
                        WAIT.as_secs(),
                        files::log_path(dir).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lines.push(format!("local mode stopped (pid {pid})"));
            Some(pid)
        }
    };
    let unmounted = xfs_image::unmount(dir)?;
    if let Some(image) = &unmounted {
        lines.push(format!(
            "unmounted {} from {}",
            image.display(),
            dir.display()
        ));
    }
    let report = DownReport {
        was_running: pid.is_some(),
        pid,
        unmounted_image: unmounted,
    };
    ctx.print(&report, || lines.iter().map(|l| format!("{l}\n")).collect())
}

/// `ramify local status`.
pub async fn status(ctx: &Context) -> anyhow::Result<()> {
    let status = ctx.client()?.status().await?;
    let log = files::log_path(&ctx.data_dir);
    ctx.print(&status, || render::local_status(&status, &log))
}
