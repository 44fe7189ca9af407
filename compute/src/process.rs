//! Running Postgres: `initdb`, start (returning only once connections are accepted),
//! stop, and kill -9 for crash tests.
//!
//! The postmaster is spawned directly (not through `pg_ctl start`) in its own process
//! group, so this process is its parent and reaps it: some container inits never reap
//! orphans, and a zombie postmaster would look alive to the next start.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};
use tracing::{info, instrument, warn};

use crate::bin::PgBin;
use crate::promote::{Promoter, FIRST_START_ARGS};
use crate::settings::{ensure_include, ComputeSettings, SettingsError, RAMIFY_CONF};
use crate::tail::{file_tail, last_lines, TAIL_LINES};
use crate::user::{PgUser, UserError};

/// The server log's file name inside the run directory.
pub const SERVER_LOG: &str = "postgres.log";

/// How long `stop` lets Postgres finish its shutdown checkpoint.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `kill9` waits for the killed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Start-up is polled this often: a fork is ready tens of milliseconds after it starts, so
/// a coarse poll would dominate the time to first query.
const POLL: Duration = Duration::from_millis(5);

/// Errors running Postgres programs.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A program could not be spawned.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why spawning failed.
        #[source]
        source: std::io::Error,
    },
    /// A program exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stderr and stdout.
        output: String,
    },
    /// Preparing files or directories failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` was asked to use a data directory that already holds files.
    #[error("cannot initdb {}: the directory is not empty", pgdata.display())]
    NotEmpty {
        /// The data directory.
        pgdata: PathBuf,
    },
    /// A postmaster is already running on this data directory.
    #[error("Postgres is already running on {} (pid {pid})", pgdata.display())]
    AlreadyRunning {
        /// The data directory.
        pgdata: PathBuf,
        /// The running postmaster's pid.
        pid: i32,
    },
    /// The postmaster exited before accepting connections.
    #[error("Postgres on {} exited during start-up ({status}); last lines of {}:\n{log_tail}", pgdata.display(), log.display())]
    StartFailed {
        /// The data directory.
        pgdata: PathBuf,
        /// The postmaster's exit status.
        status: ExitStatus,
        /// The server log.
        log: PathBuf,
        /// Its last lines written during this start.
        log_tail: String,
    },
    /// The postmaster did not accept connections in time and was killed.
    #[error("Postgres on {} did not accept connections within {timeout:?} and was killed; last lines of {}:\n{log_tail}", pgdata.display(), log.display())]
    StartTimeout {
        /// The data directory.
        pgdata: PathBuf,
        /// The time allowed.
        timeout: Duration,
        /// The server log.
        log: PathBuf,
        /// Its last lines written during this start.
        log_tail: String,
    },
    /// `postmaster.pid` exists but cannot be understood.
    #[error("{} is malformed: {reason}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Sending a signal failed.
    #[error("could not send {signal} to Postgres pid {pid}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The target pid.
        pid: i32,
        /// Why it failed.
        #[source]
        source: nix::Error,
    },
    /// Killed processes were still alive after the grace period.
    #[error("Postgres processes of {} survived SIGKILL for {KILL_WAIT:?} (pids {pids:?})", pgdata.display())]
    Unkillable {
        /// The data directory.
        pgdata: PathBuf,
        /// The survivors.
        pids: Vec<i32>,
    },
    /// The settings could not be rendered or written.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Files could not be handed to the Postgres user.
    #[error(transparent)]
    User(#[from] UserError),
}

/// How `stop` shuts Postgres down (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, exit: the next start needs no recovery.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A postmaster started by [`start`] and accepting connections.
#[derive(Debug)]
pub struct RunningCompute {
    pid: i32,
    port: u16,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    // Kept so the postmaster is reaped (dropping it leaves tokio to reap in the background).
    child: tokio::process::Child,
}

impl RunningCompute {
    /// The postmaster's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The TCP port, also the Unix socket's suffix.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The Unix socket directory (pass it as `host` to libpq or tokio-postgres).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops this postmaster with `mode` and reaps it.
    pub async fn stop(
        mut self,
        bin: &PgBin,
        user: &PgUser,
        mode: StopMode,
    ) -> Result<(), ProcessError> {
        stop(bin, user, &self.pgdata, mode).await?;
        // Already exited; this only collects the status.
        let _ = self.child.wait().await;
        Ok(())
    }

    /// [`RunningCompute::stop`] for places that cannot await, such as `Drop`.
    pub fn stop_blocking(
        mut self,
        bin: &PgBin,
        user: &PgUser,
        mode: StopMode,
    ) -> Result<(), ProcessError> {
        stop_blocking(bin, user, &self.pgdata, mode)?;
        self.reap();
        Ok(())
    }

    /// SIGKILLs this postmaster and its processes (see [`kill9`]) and reaps it.
    pub fn kill9(mut self) -> Result<(), ProcessError> {
        kill9(&self.pgdata)?;
        self.reap();
        Ok(())
    }

    /// Collects the exited postmaster's status so no zombie is left behind.
    fn reap(&mut self) {
        let deadline = Instant::now() + KILL_WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `initdb`'s arguments after `-D PGDATA`, the one definition every new cluster is made
/// with (the storage node's root timelines, this crate's [`initdb`], the operator's init
/// container for roots made before the node ran initdb): bootstrap superuser `postgres`
/// trusted only on the Unix socket (its directory is 0700), SCRAM over TCP, UTF-8, the
/// `C.UTF-8` locale built into glibc (no generated locale needed in any image), and data
/// checksums (so `pg_amcheck` and reads notice a torn or corrupted page).
pub const INITDB_ARGS: &[&str] = &[
    "-U",
    "postgres",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C.UTF-8",
    "--data-checksums",
    "--no-instructions",
];

/// The `pg_hba.conf` line appended after `initdb`: TCP from any address needs a SCRAM
/// password. In a cluster clients arrive from the proxy's Pod IP, which `initdb`'s
/// loopback-only host lines would refuse; on a loopback-only compute it changes nothing.
pub const PG_HBA_ANY_HOST: &str = "host all all all scram-sha-256";

/// The init container's shell script: [`INITDB_ARGS`] and [`PG_HBA_ANY_HOST`] on
/// `$PGDATA`, and nothing at all when it already holds a cluster (every root the storage
/// node initialised itself, and every fork).
pub fn initdb_shell_script() -> String {
    format!(
        "test -f \"$PGDATA/PG_VERSION\" && exit 0; initdb -D \"$PGDATA\" {} && echo '{}' >> \"$PGDATA/pg_hba.conf\"",
        INITDB_ARGS.join(" "),
        PG_HBA_ANY_HOST
    )
}

/// The compute container's shell script for every timeline the storage node put a
/// cluster in (the Pod's arguments follow it as `"$@"`): it starts nothing where there is
/// none (a timeline not there yet, such as one still being restored from a backup
/// repository onto a new volume, whose directories the kubelet would create empty),
/// instead of letting Postgres fail or anything run `initdb` on it; otherwise it becomes
/// `postgres` itself (`exec`, so Postgres is the container's first process and gets its
/// signals). Checked in the same container rather than an init container: the kubelet
/// starts the next container only once it noticed the previous one exited, which cost a
/// wake most of a second on the test cluster.
pub fn exec_postgres_if_cluster_shell_script() -> String {
    "test -f \"$PGDATA/PG_VERSION\" || { echo \"ramify: no Postgres cluster in $PGDATA: its storage node has not put this timeline there (yet); not starting\" >&2; exit 1; }; exec postgres \"$@\"".to_string()
}

/// Runs `initdb` on `pgdata` as `user` with [`INITDB_ARGS`] and appends
/// [`PG_HBA_ANY_HOST`] to its `pg_hba.conf`. `pgdata` may be missing or empty; when we
/// are root it is created 0700 and given to `user`.
#[instrument(skip(bin, user), fields(pgdata = %pgdata.display()))]
pub async fn initdb(bin: &PgBin, user: &PgUser, pgdata: &Path) -> Result<(), ProcessError> {
    initdb_with(&bin.initdb(), user, pgdata, true).await
}

/// [`initdb`] with an explicit `initdb` program. With `sync = false` it passes
/// `--no-sync`: for a caller that makes the result durable itself (the storage node runs
/// makes its staging tree durable once before it publishes a new timeline).
#[instrument(skip(initdb, user), fields(pgdata = %pgdata.display()))]
pub async fn initdb_with(
    initdb: &Path,
    user: &PgUser,
    pgdata: &Path,
    sync: bool,
) -> Result<(), ProcessError> {
    let pgdata = absolute(pgdata)?;
    match std::fs::read_dir(&pgdata) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ProcessError::NotEmpty { pgdata });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&pgdata)
                .map_err(io_err("create", &pgdata))?;
        }
        Err(source) => {
            return Err(ProcessError::Io {
                action: "read",
                path: pgdata,
                source,
            })
        }
    }
    set_mode(&pgdata, 0o700)?;
    user.chown(&pgdata)?;
    let mut cmd = tokio::process::Command::new(initdb);
    cmd.arg("-D").arg(&pgdata).args(INITDB_ARGS);
    if !sync {
        cmd.arg("--no-sync");
    }
    user.apply_tokio(&mut cmd);
    run(cmd).await?;
    let hba = pgdata.join("pg_hba.conf");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&hba)
        .map_err(io_err("open", &hba))?;
    std::io::Write::write_all(&mut f, format!("{PG_HBA_ANY_HOST}\n").as_bytes())
        .map_err(io_err("append to", &hba))?;
    if sync {
        f.sync_all().map_err(io_err("fsync", &hba))?;
    }
    info!("initdb done");
    Ok(())
}

/// Writes `ramify.conf`, makes `postgresql.conf` include it, and starts Postgres on
/// `pgdata` as `user`, logging to `<run_dir>/postgres.log`. Returns once Postgres accepts
/// connections; on failure the error carries the log lines this start wrote (a recovery
/// ending in FATAL included), and on timeout the postmaster is killed first.
pub async fn start(
    bin: &PgBin,
    user: &PgUser,
    pgdata: &Path,
    settings: &ComputeSettings,
    timeout: Duration,
) -> Result<RunningCompute, ProcessError> {
    start_with(bin, user, pgdata, settings, timeout, |_| {}).await
}

/// [`start`], with `prepare` applied to the postmaster's command before it is spawned
/// (e.g. a `pre_exec` hook confining what it may write).
#[instrument(skip(bin, user, settings, prepare), fields(pgdata = %pgdata.display(), port = settings.port))]
pub async fn start_with(
    bin: &PgBin,
    user: &PgUser,
    pgdata: &Path,
    settings: &ComputeSettings,
    timeout: Duration,
    prepare: impl FnOnce(&mut std::process::Command),
) -> Result<RunningCompute, ProcessError> {
    let pgdata = absolute(pgdata)?;
    if let Some(pid) = running_pid(&pgdata)? {
        return Err(ProcessError::AlreadyRunning { pgdata, pid });
    }
    let conf = settings.render()?;
    prepare_run_dir(user, &settings.run_dir)?;
    write_owned(user, &pgdata.join(RAMIFY_CONF), conf.as_bytes())?;
    ensure_include(&pgdata, RAMIFY_CONF)?;

    let log = settings.run_dir.join(SERVER_LOG);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(io_err("open", &log))?;
    user.chown(&log)?;
    let log_offset = log_file.metadata().map_err(io_err("stat", &log))?.len();
    let log_err = log_file.try_clone().map_err(io_err("open", &log))?;

    // A fork's first start recovers and then promotes. While it replays, the postmaster
    // reports `standby` (hot_standby = off) or even `ready` (hot_standby = on, read-only),
    // so a start that began with recovery.signal is up only once Postgres removed it, i.e.
    // promoted and writable. Only a real standby (standby.signal) is up while in recovery.
    let standby = pgdata.join("standby.signal").exists();
    let signal = pgdata.join("recovery.signal");
    let promoting = signal.exists();
    // A real standby stays one; only a fork's archive recovery is promoted fast.
    let promote_fast = promoting && !standby;

    let mut cmd = tokio::process::Command::new(bin.postgres());
    cmd.arg("-D").arg(&pgdata);
    if promote_fast {
        // Pause at the target and promote fast (see `promote`), for this start only.
        cmd.args(FIRST_START_ARGS);
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Own process group: a terminal's ^C does not reach it and kill9 can signal it whole.
        .process_group(0);
    user.apply_tokio(&mut cmd);
    prepare(cmd.as_std_mut());
    let command = format!("{} -D {}", bin.postgres().display(), pgdata.display());
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        command: command.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| ProcessError::Spawn {
            command,
            source: std::io::Error::other("postgres exited before its pid was read"),
        })?;

    let mut promoter = promote_fast
        .then(|| Promoter::new(pgdata.clone(), pid, settings.run_dir.clone(), settings.port));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("wait for", &bin.postgres()))?
        {
            if let Some(p) = &promoter {
                p.clean_up();
            }
            return Err(ProcessError::StartFailed {
                pgdata,
                status,
                log_tail: file_tail(&log, log_offset, TAIL_LINES),
                log,
            });
        }
        let pid_file = read_pid_file(&pgdata)?.filter(|f| f.pid == pid);
        let up = pid_file.as_ref().is_some_and(|f| f.is_up(standby));
        let recovering = promoting && signal.exists();
        if let Some(p) = promoter.as_mut() {
            // Once the postmaster reports a status, stale promote files are gone.
            if recovering && pid_file.as_ref().is_some_and(|f| f.status.is_some()) {
                if let Err(e) = p.request() {
                    warn!(pid, error = %e, "cannot request promotion; Postgres promotes after a checkpoint instead");
                    p.clean_up();
                    promoter = None;
                }
            }
        }
        // Under hot standby the postmaster is `ready` before promotion, and
        // recovery.signal goes a moment before writes are allowed: ask the server.
        let writable = match promoter.as_mut() {
            Some(p) if up && !recovering => p.writable().await,
            _ => true,
        };
        if up && !recovering && writable {
            if let Some(p) = &promoter {
                p.clean_up();
            }
            info!(pid, "Postgres accepts connections");
            return Ok(RunningCompute {
                pid,
                port: settings.port,
                pgdata,
                socket_dir: settings.run_dir.clone(),
                log,
                child,
            });
        }
        if Instant::now() >= deadline {
            warn!(pid, "start-up timed out; killing Postgres");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait().await;
            let _ = remove_stale_pid_file(&pgdata, pid);
            if let Some(p) = &promoter {
                p.clean_up();
            }
            return Err(ProcessError::StartTimeout {
                pgdata,
                timeout,
                log_tail: file_tail(&log, log_offset, TAIL_LINES),
                log,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops Postgres on `pgdata` (`pg_ctl stop -m MODE -w`) as `user`; a no-op when it is
/// not running.
#[instrument(skip(bin, user), fields(pgdata = %pgdata.display()))]
pub async fn stop(
    bin: &PgBin,
    user: &PgUser,
    pgdata: &Path,
    mode: StopMode,
) -> Result<(), ProcessError> {
    if running_pid(pgdata)?.is_none() {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new(bin.pg_ctl());
    cmd.args(stop_args(pgdata, mode));
    user.apply_tokio(&mut cmd);
    run(cmd).await?;
    info!("Postgres stopped");
    Ok(())
}

/// [`stop`] for places that cannot await, such as `Drop`.
pub fn stop_blocking(
    bin: &PgBin,
    user: &PgUser,
    pgdata: &Path,
    mode: StopMode,
) -> Result<(), ProcessError> {
    if running_pid(pgdata)?.is_none() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(bin.pg_ctl());
    cmd.args(stop_args(pgdata, mode));
    user.apply_std(&mut cmd);
    let command = describe_std(&cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProcessError::Spawn {
            command: command.clone(),
            source,
        })?;
    check_output(command, output)
}

fn stop_args(pgdata: &Path, mode: StopMode) -> Vec<std::ffi::OsString> {
    vec![
        "stop".into(),
        "-D".into(),
        pgdata.into(),
        "-m".into(),
        mode.as_arg().into(),
        "-w".into(),
        "-t".into(),
        STOP_TIMEOUT.as_secs().to_string().into(),
    ]
}

/// SIGKILLs the postmaster named in `<pgdata>/postmaster.pid` and its process group,
/// waits until they are gone, and removes the then-stale pid file (a zombie left by an
/// init that never reaps would otherwise block the next start). Leaves the data
/// directory exactly as a crash would; a no-op when nothing runs. Blocks briefly.
pub fn kill9(pgdata: &Path) -> Result<(), ProcessError> {
    let Some(pid) = running_pid(pgdata)? else {
        return Ok(());
    };
    let target = Pid::from_raw(pid);
    let shm = shm_id(pgdata);
    let group_leader = getpgid(Some(target)).is_ok_and(|g| g == target);
    let result = if group_leader {
        killpg(target, Signal::SIGKILL)
    } else {
        kill(target, Signal::SIGKILL)
    };
    match result {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(source) => {
            return Err(ProcessError::Signal {
                signal: Signal::SIGKILL,
                pid,
                source,
            })
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let mut alive: Vec<i32> = Vec::new();
        if is_alive(pid) {
            alive.push(pid);
        }
        if group_leader {
            alive.extend(group_members(pid).into_iter().filter(|&p| p != pid));
        }
        // A process that is gone from the group may still be detaching the shared memory
        // as it exits; the next start refuses a segment still in use ("pre-existing
        // shared memory block is still in use"), so wait for that too.
        if alive.is_empty() && shm.is_none_or(|id| shm_attached(id).unwrap_or(0) == 0) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ProcessError::Unkillable {
                pgdata: pgdata.to_path_buf(),
                pids: alive,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    remove_stale_pid_file(pgdata, pid)?;
    warn!(pid, pgdata = %pgdata.display(), "Postgres killed with SIGKILL");
    Ok(())
}

/// The SysV shared memory id the postmaster recorded in `postmaster.pid` (line 7: key and
/// id), if any.
fn shm_id(pgdata: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
}

/// How many processes have SysV segment `id` attached (`/proc/sysvipc/shm`); `None` when
/// the segment is gone or the table cannot be read.
fn shm_attached(id: i64) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1)?.parse::<i64>().ok()? == id).then(|| f.get(6)?.parse().ok())?
    })
}

/// True when a live postmaster owns `pgdata`.
pub fn is_running(pgdata: &Path) -> Result<bool, ProcessError> {
    Ok(running_pid(pgdata)?.is_some())
}

/// The pid of the live postmaster owning `pgdata`, if any (a stale pid file or a
/// zombie counts as not running).
pub fn running_pid(pgdata: &Path) -> Result<Option<i32>, ProcessError> {
    Ok(read_pid_file(pgdata)?
        .map(|f| f.pid)
        .filter(|&pid| is_alive(pid)))
}

/// The parts of `postmaster.pid` Ramify reads.
struct PidFile {
    pid: i32,
    /// Line 8, `PM_STATUS`: `starting`, `stopping`, `ready` or `standby`.
    status: Option<String>,
}

impl PidFile {
    /// `ready` (accepting read-write connections), or for a standby also `standby`.
    fn is_up(&self, standby: bool) -> bool {
        match self.status.as_deref() {
            Some("ready") => true,
            Some("standby") => standby,
            _ => false,
        }
    }
}

fn read_pid_file(pgdata: &Path) -> Result<Option<PidFile>, ProcessError> {
    let path = pgdata.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProcessError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    // Postgres writes the file in steps; an empty or partial first line means "starting".
    let Some(first) = text.lines().next().filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let pid = first
        .trim()
        .parse::<i32>()
        .map_err(|_| ProcessError::PidFile {
            path: path.clone(),
            reason: format!("first line {first:?} is not a pid"),
        })?;
    // A standalone backend writes its pid negated.
    let pid = pid.abs();
    let status = text.lines().nth(7).map(|l| l.trim().to_owned());
    Ok(Some(PidFile { pid, status }))
}

fn remove_stale_pid_file(pgdata: &Path, pid: i32) -> Result<(), ProcessError> {
    let path = pgdata.join("postmaster.pid");
    match read_pid_file(pgdata)? {
        Some(f) if f.pid == pid && !is_alive(pid) => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ProcessError::Io {
                action: "remove stale",
                path,
                source,
            }),
        },
        _ => Ok(()),
    }
}

/// Alive = exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_field(&stat, 0), Some("Z" | "X")),
        Err(_) => false,
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !matches!(stat_field(&stat, 0), Some("Z" | "X"))
                    && stat_field(&stat, 2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// Field `n` after the `(comm)` of a `/proc/<pid>/stat` line: 0 = state, 1 = ppid, 2 = pgrp.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(n)
}

fn prepare_run_dir(user: &PgUser, run_dir: &Path) -> Result<(), ProcessError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(io_err("create", run_dir))?;
    set_mode(run_dir, 0o700)?;
    user.chown(run_dir)?;
    Ok(())
}

/// Atomically writes `path` with mode 0600, owned by `user`.
fn write_owned(user: &PgUser, path: &Path, contents: &[u8]) -> Result<(), ProcessError> {
    let tmp = path.with_extension("ramify-tmp");
    std::fs::write(&tmp, contents).map_err(io_err("write", &tmp))?;
    set_mode(&tmp, 0o600)?;
    user.chown(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io_err("replace", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ProcessError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set permissions of", path))
}

fn absolute(path: &Path) -> Result<PathBuf, ProcessError> {
    std::path::absolute(path).map_err(io_err("resolve", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProcessError {
    let path = path.to_path_buf();
    move |source| ProcessError::Io {
        action,
        path,
        source,
    }
}

async fn run(mut cmd: tokio::process::Command) -> Result<(), ProcessError> {
    let command = describe_std(cmd.as_std());
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| ProcessError::Spawn {
            command: command.clone(),
            source,
        })?;
    check_output(command, output)
}

fn check_output(command: String, output: std::process::Output) -> Result<(), ProcessError> {
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Err(ProcessError::Failed {
        command,
        status: output.status,
        output: last_lines(&text, TAIL_LINES),
    })
}

fn describe_std(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_memory_id_comes_from_line_7_of_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            "4242\n/data\n1795898054\n5432\n/run\nlocalhost\n       131   3670035\nready   \n",
        )
        .unwrap();
        assert_eq!(shm_id(dir.path()), Some(3670035));
        assert_eq!(shm_id(&dir.path().join("none")), None);
        // No segment has a negative id: gone.
        assert_eq!(shm_attached(-1), None);
    }

    #[test]
    fn stat_fields_skip_the_command_name() {
        let stat = "1234 (postgres: a) b) S 1 1234 1234 0 -1";
        assert_eq!(stat_field(stat, 0), Some("S"));
        assert_eq!(stat_field(stat, 1), Some("1"));
        assert_eq!(stat_field(stat, 2), Some("1234"));
    }

    #[test]
    fn pid_file_status() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_pid_file(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("postmaster.pid"),
            "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  5432001  0\nready   \n",
        )
        .unwrap();
        let f = read_pid_file(dir.path()).unwrap().unwrap();
        assert_eq!(f.pid, 4242);
        assert!(f.is_up(false));
        let standby = "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  5432001  0\nstandby \n";
        std::fs::write(dir.path().join("postmaster.pid"), standby).unwrap();
        let f = read_pid_file(dir.path()).unwrap().unwrap();
        assert!(
            !f.is_up(false),
            "a promoting fork is not up while it replays"
        );
        assert!(
            f.is_up(true),
            "a real standby is up once it accepts connections"
        );
        std::fs::write(dir.path().join("postmaster.pid"), "4242\n/data\n").unwrap();
        assert!(!read_pid_file(dir.path()).unwrap().unwrap().is_up(true));
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert!(read_pid_file(dir.path()).is_err());
    }

    #[test]
    fn own_process_is_alive_and_nonsense_is_not() {
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(0));
        assert!(!is_alive(i32::MAX));
    }
}
