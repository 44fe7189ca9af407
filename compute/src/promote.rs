//! Fast promotion of a fork's first start.
//!
//! A fork's PGDATA asks Postgres to recover to its target and then promote
//! (`recovery_target_action = 'promote'`, written by the storage node). Promoting that way,
//! Postgres 15 ends recovery with a full checkpoint (`end-of-recovery immediate wait`)
//! before it accepts a single connection: every page replay dirtied is written and
//! fsynced first, which on copy-on-write storage costs as much as the replay itself.
//! Promotion requested (`pg_ctl promote`, `pg_promote()`) is a *fast* promotion: an
//! end-of-recovery WAL record, connections at once, and the checkpoint requested
//! afterwards as an ordinary spread one.
//!
//! So a start run by this crate overrides two settings for the first start only (as
//! command-line arguments, which nothing persists): recovery pauses at the target
//! (`recovery_target_action = 'pause'`, which needs `hot_standby = on`), and [`Promoter`]
//! requests promotion the way `pg_ctl promote` does (a `promote` file in PGDATA and
//! SIGUSR1 to the postmaster) as soon as the startup process runs. Archive recovery
//! (unlike a standby) looks at that request only when it pauses, i.e. at the target,
//! and then promotes at once. (Asked only after the pause began, e.g. with
//! `pg_promote()`, Postgres would notice within its 1 s pause poll.) Nothing else
//! changes: the same WAL is replayed to the same target, and the start still counts as
//! done only once `recovery.signal` is gone and the server says it left recovery, so no
//! client ever sees the read-only, paused server. Should hot standby not be reached
//! before the target (no usable snapshot of running transactions), Postgres does not
//! pause and promotes as before; the unused request is then removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::{Client, NoTls};
use tracing::debug;

/// `postgres` arguments for a start that recovers a fork: pause at the target instead of
/// promoting with a checkpoint. They last for this postmaster only.
pub const FIRST_START_ARGS: [&str; 4] =
    ["-c", "hot_standby=on", "-c", "recovery_target_action=pause"];

/// The file `pg_ctl promote` writes; Postgres removes it when it acts on it.
const PROMOTE_FILE: &str = "promote";

/// How often the postmaster is signalled while recovery runs (every poll would be
/// noise; one signal after the startup process started is all it needs).
const SIGNAL_EVERY: Duration = Duration::from_millis(50);

/// The bootstrap superuser (`initdb -U postgres`), trusted on the 0700 socket directory.
const SUPERUSER: &str = "postgres";

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests a recovering fork's promotion and confirms it.
#[derive(Debug)]
pub struct Promoter {
    pgdata: PathBuf,
    pid: i32,
    socket_dir: PathBuf,
    port: u16,
    client: Option<Client>,
    file_written: bool,
    last_signal: Option<Instant>,
}

impl Promoter {
    /// A promoter for the postmaster `pid` on `pgdata`, listening in `socket_dir` on
    /// `port`.
    pub fn new(pgdata: PathBuf, pid: i32, socket_dir: PathBuf, port: u16) -> Promoter {
        Promoter {
            pgdata,
            pid,
            socket_dir,
            port,
            client: None,
            file_written: false,
            last_signal: None,
        }
    }

    /// One step while recovery runs, once the postmaster has written its status (it
    /// removes stale promote files before that): writes the promote file once and
    /// signals the postmaster, again every [`SIGNAL_EVERY`] (a signal that came before
    /// the startup process existed is ignored). Never writes the file a second time, so
    /// none is left behind once Postgres consumed it.
    pub fn request(&mut self) -> std::io::Result<()> {
        if !self.file_written {
            std::fs::write(self.pgdata.join(PROMOTE_FILE), b"")?;
            self.file_written = true;
        }
        if self.last_signal.is_some_and(|t| t.elapsed() < SIGNAL_EVERY) {
            return Ok(());
        }
        self.last_signal = Some(Instant::now());
        match kill(Pid::from_raw(self.pid), Signal::SIGUSR1) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(std::io::Error::from(e)),
        }
    }

    /// Removes a promote file Postgres did not consume (it promoted without pausing,
    /// or the start failed), so no later recovery of this PGDATA finds it.
    pub fn clean_up(&self) {
        if self.file_written {
            match std::fs::remove_file(self.pgdata.join(PROMOTE_FILE)) {
                Ok(()) => debug!("removed an unused promote request"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => debug!(error = %e, "cannot remove the promote file"),
            }
        }
    }

    /// Whether the server has left recovery and accepts writes; `false` while it has
    /// not (or cannot be asked yet).
    pub async fn writable(&mut self) -> bool {
        if self.client.is_none() {
            match self.connect().await {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    debug!(error = %e, "cannot connect to the promoted fork yet");
                    return false;
                }
            }
        }
        let Some(client) = self.client.as_ref() else {
            return false;
        };
        match client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .and_then(|row| row.try_get::<_, bool>(0))
        {
            Ok(in_recovery) => !in_recovery,
            Err(e) => {
                debug!(error = %e, "cannot ask whether recovery ended; reconnecting");
                self.client = None;
                false
            }
        }
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("ramify-promote")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "promotion connection closed");
            }
        });
        Ok(client)
    }
}
