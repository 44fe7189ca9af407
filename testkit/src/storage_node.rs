//! A `ramify-storage` process for a test: spawned as the Postgres user with its own random
//! API token and a metrics listener, health-checked, killable with SIGKILL, restartable
//! with the same arguments, stopped on drop.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ramify_api::{ApiToken, StorageClient};
use ramify_compute::tail::{file_tail, TAIL_LINES};
use ramify_compute::PgUser;

use crate::port::free_port;

/// How long the node may take to answer `/healthz` (with `--recover` it restores
/// timelines from its backup repository first).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a SIGTERM'd node may take to exit before it is SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Errors running a storage node.
#[derive(Debug, thiserror::Error)]
pub enum StorageNodeError {
    /// The Postgres user could not be resolved or given the data dir.
    #[error(transparent)]
    User(#[from] ramify_compute::UserError),
    /// Preparing the data dir or log file failed.
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
    /// The binary could not be spawned.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node exited before it was healthy.
    #[error("`{command}` exited during start-up ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// `/healthz` did not answer 200 in time.
    #[error("`{command}` did not answer GET {url}/healthz with 200 within {READY_TIMEOUT:?} (last: {last}); last lines of its log:\n{log_tail}")]
    NotHealthy {
        /// The command line.
        command: String,
        /// The node's base URL.
        url: String,
        /// The last probe's result.
        last: String,
        /// The end of its log.
        log_tail: String,
    },
    /// No random token could be made.
    #[error(transparent)]
    Token(#[from] ramify_api::TokenError),
    /// Signalling or waiting for the process failed.
    #[error("could not {action} storage node pid {pid}: {source}")]
    Signal {
        /// What was being done.
        action: &'static str,
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running `ramify-storage` listening on 127.0.0.1.
#[derive(Debug)]
pub struct StorageNodeProcess {
    bin: PathBuf,
    args: Vec<OsString>,
    /// Extra environment of the process (e.g. `RAMIFY_FAILPOINTS`), kept for restarts.
    envs: Vec<(OsString, OsString)>,
    port: u16,
    metrics_port: u16,
    token: ApiToken,
    user: PgUser,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    child: Option<Child>,
}

impl StorageNodeProcess {
    /// Spawns `bin --data-dir DATA_DIR --listen 127.0.0.1:PORT --token-file FILE
    /// --metrics-listen 127.0.0.1:PORT2 EXTRA_ARGS…` as the Postgres user (creating
    /// `data_dir` for it when missing; FILE holds a fresh random token, mode 0600) and
    /// waits until `/healthz` answers 200.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Self, StorageNodeError> {
        Self::start_with_env(bin, data_dir, extra_args, &[]).await
    }

    /// [`StorageNodeProcess::start`] with extra environment variables (for example
    /// `RAMIFY_FAILPOINTS`), which restarts keep unless [`StorageNodeProcess::set_env`]
    /// changes them.
    pub async fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Self, StorageNodeError> {
        let user = PgUser::resolve(None)?;
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir).map_err(|source| StorageNodeError::Io {
                action: "create",
                path: data_dir.to_path_buf(),
                source,
            })?;
            user.chown(data_dir)?;
        }
        let log_dir = tempfile::Builder::new()
            .prefix("ramify-storage-log-")
            .tempdir()
            .map_err(|source| StorageNodeError::Io {
                action: "create a temp dir for",
                path: PathBuf::from("the storage node log"),
                source,
            })?;
        let token = ApiToken::generate()?;
        let token_file = log_dir.path().join("token");
        write_private(&token_file, token.expose()).map_err(|source| StorageNodeError::Io {
            action: "write",
            path: token_file.clone(),
            source,
        })?;
        // The node runs as the Postgres user: it must be able to reach and read the file.
        user.chown(log_dir.path())?;
        user.chown(&token_file)?;
        let port = free_port();
        let metrics_port = free_port();
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            data_dir.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--token-file".into(),
            token_file.into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}").into(),
        ];
        args.extend(extra_args.iter().map(OsString::from));
        let log = log_dir.path().join("storage.log");
        let mut node = Self {
            bin: bin.to_path_buf(),
            args,
            envs: envs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            port,
            metrics_port,
            token,
            user,
            log,
            _log_dir: log_dir,
            child: None,
        };
        node.spawn_and_wait().await?;
        Ok(node)
    }

    /// Replaces the extra environment the next (re)start gives the process; an empty
    /// list starts it with none (e.g. restarting without the failpoints that killed it).
    pub fn set_env(&mut self, envs: &[(&str, &str)]) {
        self.envs = envs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
    }

    /// Adds flags to every later (re)start, e.g. `--recover`.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(OsString::from));
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL of the metrics listener (`/metrics`, `/healthz`).
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    /// The node's API token.
    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    /// A client of the node's API that sends its token.
    pub fn client(&self) -> StorageClient {
        StorageClient::new(self.url()).with_token(self.token.clone())
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the node's stdout and stderr.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 0, TAIL_LINES * 2)
    }

    /// Everything the node wrote to stdout and stderr so far, across restarts (empty if
    /// the log cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILLs the node and reaps it (its Postgres computes keep running, as in a crash).
    pub fn kill9(&mut self) -> Result<(), StorageNodeError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        child.kill().map_err(|source| StorageNodeError::Signal {
            action: "SIGKILL",
            pid,
            source,
        })?;
        child.wait().map_err(|source| StorageNodeError::Signal {
            action: "wait for",
            pid,
            source,
        })?;
        Ok(())
    }

    /// Stops the node if running (SIGTERM, SIGKILL after 5 s) and starts it again with
    /// the same arguments and port.
    pub async fn restart(&mut self) -> Result<(), StorageNodeError> {
        self.terminate()?;
        self.spawn_and_wait().await
    }

    /// SIGTERM, then SIGKILL after the grace period; reaps the process.
    pub fn terminate(&mut self) -> Result<(), StorageNodeError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break,
            }
        }
        self.child = Some(child);
        self.kill9()
    }

    fn command_line(&self) -> String {
        std::iter::once(self.bin.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StorageNodeError> {
        let command = self.command_line();
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageNodeError::Io {
                action,
                path,
                source,
            }
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("open", &self.log))?;
        let err = out.try_clone().map_err(io("open", &self.log))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.user.apply_std(&mut cmd);
        let child = cmd.spawn().map_err(|source| StorageNodeError::Spawn {
            command: command.clone(),
            source,
        })?;
        self.child = Some(child);

        let url = self.url();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| StorageNodeError::Spawn {
                command: command.clone(),
                source: std::io::Error::other(e),
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(StorageNodeError::Exited {
                        command,
                        status,
                        log_tail: self.log_tail(),
                    });
                }
            }
            let last = match client.get(format!("{url}/healthz")).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let log_tail = self.log_tail();
                let _ = self.kill9();
                return Err(StorageNodeError::NotHealthy {
                    command,
                    url,
                    last,
                    log_tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Creates `path` with mode 0600 from the start (never briefly readable by others).
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

impl Drop for StorageNodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "ramify-testkit: storage node log ({}):\n{}",
                self.command_line(),
                self.log_tail()
            );
        }
        if let Err(e) = self.terminate() {
            eprintln!("ramify-testkit: {e}");
        }
    }
}
