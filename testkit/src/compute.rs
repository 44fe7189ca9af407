//! A Postgres for one test, started through `ramify-compute` and stopped on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ramify_compute::process::{self, SERVER_LOG};
use ramify_compute::tail::{file_tail, last_lines, TAIL_LINES};
use ramify_compute::{ComputeSettings, PgBin, PgUser, ProcessError, RunningCompute, StopMode};
use tokio_postgres::{Client, NoTls};

use crate::port::free_port;

/// How long a test waits for Postgres to accept connections (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors driving a test Postgres.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// initdb, start, stop or kill failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Connecting failed.
    #[error("could not connect with `{conn_str}`: {source}")]
    Connect {
        /// The connection string.
        conn_str: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("`{sql}` failed: {source}")]
    Query {
        /// The statement.
        sql: String,
        /// The driver's error (with the server's message).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query did not return one integer.
    #[error("`{sql}` did not return a single integer: {reason}")]
    NotAnInteger {
        /// The statement.
        sql: String,
        /// What it returned instead.
        reason: String,
    },
    /// The handle's Postgres is stopped.
    #[error("Postgres on {} is not running (stopped or killed by this test)", pgdata.display())]
    NotRunning {
        /// The data directory.
        pgdata: PathBuf,
    },
    /// A client tool is not installed next to `postgres`.
    #[error("{name} is not installed in {}", dir.display())]
    MissingTool {
        /// The tool.
        name: &'static str,
        /// The bin directory searched.
        dir: PathBuf,
    },
    /// A client tool could not be run.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A client tool reported failure (for pg_amcheck: corruption).
    #[error("`{command}` failed ({status}):\n{output}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
}

/// A running test Postgres on `pgdata`, reached through its Unix socket in `run_dir`.
#[derive(Debug)]
pub struct Compute {
    bin: PgBin,
    user: PgUser,
    pgdata: PathBuf,
    settings: ComputeSettings,
    running: Option<RunningCompute>,
}

impl Compute {
    /// Runs `initdb` first when asked (a root timeline in state `Empty`: made by an older
    /// release or by a node without initdb), then starts Postgres on a free port listening on
    /// 127.0.0.1 with its socket in `run_dir`, archiving with `archive_command`, plus
    /// `extra_params`.
    pub async fn start(
        pg: &PgBin,
        user: &PgUser,
        pgdata: &Path,
        run_dir: &Path,
        archive_command: &str,
        initdb_first: bool,
        extra_params: &[(&str, &str)],
    ) -> Result<Self, ComputeError> {
        if initdb_first {
            process::initdb(pg, user, pgdata).await?;
        }
        let settings = ComputeSettings {
            port: free_port(),
            listen_addresses: "127.0.0.1".to_owned(),
            run_dir: run_dir.to_path_buf(),
            archive_command: archive_command.to_owned(),
            parameters: extra_params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            standby: None,
            archive_timeout_secs: None,
        };
        Self::start_settings(pg, user, pgdata, settings).await
    }

    /// Starts Postgres on `pgdata` with exactly `settings` (a hot standby, say).
    pub async fn start_settings(
        pg: &PgBin,
        user: &PgUser,
        pgdata: &Path,
        settings: ComputeSettings,
    ) -> Result<Self, ComputeError> {
        let running = process::start(pg, user, pgdata, &settings, START_TIMEOUT).await?;
        Ok(Self {
            bin: pg.clone(),
            user: user.clone(),
            pgdata: pgdata.to_path_buf(),
            settings,
            running: Some(running),
        })
    }

    /// Starts Postgres again after [`Compute::stop`] or [`Compute::kill9`], same settings
    /// and port (crash recovery runs if it was killed).
    pub async fn restart(&mut self) -> Result<(), ComputeError> {
        self.stop().await?;
        let running = process::start(
            &self.bin,
            &self.user,
            &self.pgdata,
            &self.settings,
            START_TIMEOUT,
        )
        .await?;
        self.running = Some(running);
        Ok(())
    }

    /// The TCP port (also the Unix socket's suffix).
    pub fn port(&self) -> u16 {
        self.settings.port
    }

    /// The data directory.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The Unix socket directory.
    pub fn run_dir(&self) -> &Path {
        &self.settings.run_dir
    }

    /// The settings Postgres was started with.
    pub fn settings(&self) -> &ComputeSettings {
        &self.settings
    }

    /// True while this handle's Postgres runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// A connection string for the bootstrap superuser over the Unix socket (TCP needs a
    /// SCRAM password, the socket is trusted).
    pub fn conn_str(&self) -> String {
        self.conn_str_db("postgres")
    }

    /// [`Compute::conn_str`] for database `dbname`.
    pub fn conn_str_db(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.settings.run_dir.display(),
            self.settings.port
        )
    }

    /// The last lines of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.settings.run_dir.join(SERVER_LOG), 0, TAIL_LINES)
    }

    /// The whole server log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(self.settings.run_dir.join(SERVER_LOG))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A connected client to database `postgres`.
    pub async fn client(&self) -> Result<Client, ComputeError> {
        self.client_db("postgres").await
    }

    /// A connected client to database `dbname`.
    pub async fn client_db(&self, dbname: &str) -> Result<Client, ComputeError> {
        if self.running.is_none() {
            return Err(ComputeError::NotRunning {
                pgdata: self.pgdata.clone(),
            });
        }
        let conn_str = self.conn_str_db(dbname);
        let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
            .await
            .map_err(|source| ComputeError::Connect { conn_str, source })?;
        tokio::spawn(async move {
            // Errors surface on the client's next call; a closed connection is normal.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs a query returning one integer (int2/int4/int8), e.g. `SELECT count(*) FROM t`.
    pub async fn query_i64(&self, sql: &str) -> Result<i64, ComputeError> {
        let client = self.client().await?;
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|source| ComputeError::Query {
                sql: sql.to_owned(),
                source,
            })?;
        row.try_get::<_, i64>(0)
            .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
            .or_else(|_| row.try_get::<_, i16>(0).map(i64::from))
            .map_err(|e| ComputeError::NotAnInteger {
                sql: sql.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Runs one or more statements separated by `;` (simple query protocol).
    pub async fn execute(&self, sql: &str) -> Result<(), ComputeError> {
        self.client()
            .await?
            .batch_execute(sql)
            .await
            .map_err(|source| ComputeError::Query {
                sql: sql.to_owned(),
                source,
            })
    }

    /// Fast shutdown (a checkpoint, so the next start needs no recovery); a no-op when stopped.
    pub async fn stop(&mut self) -> Result<(), ComputeError> {
        if let Some(running) = self.running.take() {
            running.stop(&self.bin, &self.user, StopMode::Fast).await?;
        }
        Ok(())
    }

    /// SIGKILLs Postgres and all its processes, leaving the data directory as a crash would.
    pub fn kill9(&mut self) -> Result<(), ComputeError> {
        match self.running.take() {
            Some(running) => running.kill9()?,
            None => process::kill9(&self.pgdata)?,
        }
        Ok(())
    }

    /// Installs `amcheck` in every database that accepts connections and runs
    /// `pg_amcheck --all --heapallindexed`; any corruption fails with its report.
    pub async fn pg_amcheck(&self) -> Result<(), ComputeError> {
        let client = self.client().await?;
        let sql = "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname";
        let dbs: Vec<String> = client
            .query(sql, &[])
            .await
            .map_err(|source| ComputeError::Query {
                sql: sql.to_owned(),
                source,
            })?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for db in dbs {
            self.client_db(&db)
                .await?
                .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                .await
                .map_err(|source| ComputeError::Query {
                    sql: format!("CREATE EXTENSION IF NOT EXISTS amcheck (in {db})"),
                    source,
                })?;
        }
        let tool = self.tool("pg_amcheck", self.bin.pg_amcheck())?;
        self.run_tool(tool, &["--all", "--heapallindexed"])
            .await
            .map(drop)
    }

    /// Runs `pgbench ARGS` against this Postgres as the Postgres user; returns its stdout.
    pub async fn pgbench(&self, args: &[&str]) -> Result<String, ComputeError> {
        let tool = self.tool("pgbench", self.bin.pgbench())?;
        self.run_tool(tool, args).await
    }

    fn tool(&self, name: &'static str, path: Option<PathBuf>) -> Result<PathBuf, ComputeError> {
        path.ok_or_else(|| ComputeError::MissingTool {
            name,
            dir: self.bin.dir().to_path_buf(),
        })
    }

    /// Runs a libpq client tool as the Postgres user against the socket.
    async fn run_tool(&self, tool: PathBuf, args: &[&str]) -> Result<String, ComputeError> {
        if self.running.is_none() {
            return Err(ComputeError::NotRunning {
                pgdata: self.pgdata.clone(),
            });
        }
        let mut cmd = tokio::process::Command::new(&tool);
        cmd.arg("-h")
            .arg(&self.settings.run_dir)
            .arg("-p")
            .arg(self.settings.port.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .stdin(Stdio::null());
        self.user.apply_tokio(&mut cmd);
        let command = format!(
            "{} -h {} -p {} -U postgres {}",
            tool.display(),
            self.settings.run_dir.display(),
            self.settings.port,
            args.join(" ")
        );
        let out = cmd.output().await.map_err(|source| ComputeError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(ComputeError::ToolFailed {
            command,
            status: out.status,
            output: last_lines(
                &format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
                200,
            ),
        })
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        if let Err(e) = running.stop_blocking(&self.bin, &self.user, StopMode::Fast) {
            eprintln!("ramify-testkit: fast shutdown failed ({e}); killing Postgres");
            if let Err(e) = process::kill9(&self.pgdata) {
                eprintln!("ramify-testkit: {e}");
            }
        }
    }
}
