//! The control connection to a timeline's compute: over its Unix socket in `run/`, as the
//! bootstrap superuser, so no network credential is ever needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ramify_api::Lsn;
use tokio::net::UnixStream;
use tokio_postgres::{Client, NoTls};

/// Bootstrap superuser every Ramify compute is initialised with.
pub const SUPERUSER: &str = "postgres";

/// Errors talking to a compute.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("compute of {run_dir} is not accepting connections yet: {source}")]
    Connect {
        run_dir: PathBuf,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} failed on the compute: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("compute returned an unreadable {what}: {value:?}")]
    Value { what: &'static str, value: String },
}

impl ControlError {
    /// The compute refused the connection because it is shutting down (it refuses every
    /// new one until it has exited).
    pub fn is_shutting_down(&self) -> bool {
        matches!(self, ControlError::Connect { source, .. } if source.as_db_error().is_some_and(|d| {
            *d.code() == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                && d.message().contains("shutting down")
        }))
    }
}

/// Whether a postmaster listens on the socket in `run_dir`, and on which port.
pub async fn running_port(run_dir: &Path) -> Option<u16> {
    let rd = std::fs::read_dir(run_dir).ok()?;
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(port) = name.strip_prefix(".s.PGSQL.") else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let connect = UnixStream::connect(e.path());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return Some(port);
        }
    }
    None
}

/// Opens a control connection to the compute listening in `run_dir` on `port`.
pub async fn connect(run_dir: &Path, port: u16) -> Result<Client, ControlError> {
    connect_db(run_dir, port, "postgres").await
}

/// [`connect`] to database `database`.
pub async fn connect_db(run_dir: &Path, port: u16, database: &str) -> Result<Client, ControlError> {
    connect_as(run_dir, port, database, SUPERUSER).await
}

/// [`connect_db`] as role `user` (the socket is trusted: any role with LOGIN gets in).
pub async fn connect_as(
    run_dir: &Path,
    port: u16,
    database: &str,
    user: &str,
) -> Result<Client, ControlError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(run_dir)
        .port(port)
        .user(user)
        .dbname(database)
        .application_name("ramify-storage")
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|source| ControlError::Connect {
            run_dir: run_dir.to_path_buf(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control connection closed");
        }
    });
    Ok(client)
}

fn parse_lsn(what: &'static str, s: String) -> Result<Lsn, ControlError> {
    s.parse()
        .map_err(|_| ControlError::Value { what, value: s })
}

/// Runs a query returning one text value.
async fn one_text(c: &Client, what: &'static str, sql: &str) -> Result<String, ControlError> {
    let row = c
        .query_one(sql, &[])
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    row.try_get::<_, String>(0)
        .map_err(|source| ControlError::Query { what, source })
}

/// The compute's flushed WAL position.
pub async fn flush_lsn(c: &Client) -> Result<Lsn, ControlError> {
    let s = one_text(
        c,
        "pg_current_wal_flush_lsn",
        "SELECT pg_current_wal_flush_lsn()::text",
    )
    .await?;
    parse_lsn("flush LSN", s)
}

/// Where a hot standby has replayed to: what a fork at latest of it sees.
pub async fn replay_lsn(c: &Client) -> Result<Lsn, ControlError> {
    let s = one_text(
        c,
        "pg_last_wal_replay_lsn",
        "SELECT coalesce(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(), '0/0')::text",
    )
    .await?;
    parse_lsn("replay LSN", s)
}

/// A following root's replication state (`pg_stat_wal_receiver` and the replay
/// position); `problem` is left for the caller, who can read the log.
pub async fn follow_status(c: &Client) -> Result<ramify_api::FollowStatus, ControlError> {
    let what = "replication state";
    let q = |source| ControlError::Query { what, source };
    let row = c
        .query_one(
            "SELECT r.status = 'streaming', \
                    coalesce(r.flushed_lsn, pg_last_wal_receive_lsn())::text, \
                    pg_last_wal_replay_lsn()::text, r.latest_end_lsn::text, \
                    r.last_msg_receipt_time, \
                    CASE WHEN pg_last_wal_receive_lsn() IS NULL \
                              OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 \
                         ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) \
                    END::float8 \
             FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true",
            &[],
        )
        .await
        .map_err(q)?;
    let lsn = |i: usize| optional_lsn(&row, i, what);
    let streaming: Option<bool> = row.try_get(0).map_err(q)?;
    let (received, replayed, source) = (lsn(1)?, lsn(2)?, lsn(3)?);
    let lag_bytes = match (source.or(received), replayed) {
        (Some(s), Some(r)) => Some(s.bytes_since(r)),
        _ => None,
    };
    Ok(ramify_api::FollowStatus {
        streaming: streaming.unwrap_or(false),
        received_lsn: received,
        replayed_lsn: replayed,
        source_lsn: source,
        lag_bytes,
        lag_seconds: row
            .try_get::<_, Option<f64>>(5)
            .map_err(q)?
            .map(|s| s.max(0.0)),
        last_received_at: row.try_get(4).map_err(q)?,
        problem: None,
    })
}

/// Column `i` of `row`: an LSN as text, or NULL.
fn optional_lsn(
    row: &tokio_postgres::Row,
    i: usize,
    what: &'static str,
) -> Result<Option<Lsn>, ControlError> {
    match row
        .try_get::<_, Option<String>>(i)
        .map_err(|source| ControlError::Query { what, source })?
    {
        Some(s) => parse_lsn("replication LSN", s).map(Some),
        None => Ok(None),
    }
}

/// The replication state of a logical follower's subscription `subscription`, in the
/// terms of [`follow_status`]: its apply worker applies each change as it arrives, so
/// what it received is what it applied; the source's position is the one its walsender
/// last reported.
pub async fn subscription_status(
    c: &Client,
    subscription: &str,
) -> Result<ramify_api::FollowStatus, ControlError> {
    let what = "subscription state";
    let q = |source| ControlError::Query { what, source };
    let row = c
        .query_one(
            "SELECT s.pid IS NOT NULL, s.received_lsn::text, s.latest_end_lsn::text, \
                    s.last_msg_receipt_time, \
                    extract(epoch FROM clock_timestamp() - s.last_msg_send_time)::float8 \
             FROM (SELECT 1) one LEFT JOIN pg_stat_subscription s \
               ON s.subname = $1 AND s.relid IS NULL",
            &[&subscription],
        )
        .await
        .map_err(q)?;
    let lsn = |i: usize| optional_lsn(&row, i, what);
    let streaming: Option<bool> = row.try_get(0).map_err(q)?;
    let (received, reported) = (lsn(1)?, lsn(2)?);
    let source = match (received, reported) {
        (Some(r), Some(s)) => Some(r.max(s)),
        (r, s) => r.or(s),
    };
    let lag_bytes = match (source, received) {
        (Some(s), Some(r)) => Some(s.bytes_since(r)),
        _ => None,
    };
    let lag_seconds = match lag_bytes {
        Some(0) => Some(0.0),
        _ => row
            .try_get::<_, Option<f64>>(4)
            .map_err(q)?
            .map(|s| s.max(0.0)),
    };
    Ok(ramify_api::FollowStatus {
        streaming: streaming.unwrap_or(false),
        received_lsn: received,
        replayed_lsn: received,
        source_lsn: source,
        lag_bytes,
        lag_seconds,
        last_received_at: row.try_get(3).map_err(q)?,
        problem: None,
    })
}

/// Writes a named restore point and commits a transaction with an xid after it, so the
/// WAL holds a record past every position up to now and is flushed through it. Forks at a
/// target near the end of WAL then always find their stopping record.
pub async fn mark_and_flush(c: &Client, label: &str) -> Result<Lsn, ControlError> {
    let what = "restore point";
    c.batch_execute("BEGIN")
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    c.query_one("SELECT pg_create_restore_point($1)::text", &[&label])
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    c.query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    c.batch_execute("COMMIT")
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    flush_lsn(c).await
}

/// Writes the restore point `label` and commits a transaction with an xid after it, so
/// the point is durably flushed (a crash cannot take it back and let later WAL reuse its
/// position) and a record follows it for recovery to stop after. Returns the restore
/// point's position and the compute's clock at that moment.
pub async fn restore_point(c: &Client, label: &str) -> Result<(Lsn, DateTime<Utc>), ControlError> {
    let what = "restore point";
    let q = |source| ControlError::Query { what, source };
    c.batch_execute("BEGIN").await.map_err(q)?;
    let row = c
        .query_one(
            "SELECT pg_create_restore_point($1)::text, clock_timestamp(), pg_current_xact_id()::text",
            &[&label],
        )
        .await
        .map_err(q)?;
    c.batch_execute("COMMIT").await.map_err(q)?;
    let lsn: String = row.try_get(0).map_err(q)?;
    let time: DateTime<Utc> = row.try_get(1).map_err(q)?;
    Ok((parse_lsn("restore point LSN", lsn)?, time))
}

/// Makes `user` the branch role (`ramify_compute::roles`) with `password` — creating it,
/// or resetting the role a fork inherited — and `database` a database it owns; takes
/// from every other non-superuser role what would reach the OS or other roles. The
/// password travels as a SCRAM verifier in a session that logs nothing.
/// With `reader`, a logical follower's read-only login instead, in its existing database.
/// The names must be validated identifiers (`ramify_api::names`): they are written into
/// the statements as they are.
pub async fn ensure_login(
    c: &Client,
    user: &str,
    password: &str,
    database: &str,
    disable_other_logins: bool,
    reader: bool,
) -> Result<(), ControlError> {
    use ramify_compute::roles;
    let what = "setting the branch's credentials";
    let q = |source| ControlError::Query { what, source };
    c.batch_execute(roles::QUIET_SESSION).await.map_err(q)?;
    let role_exists = !c
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .map_err(q)?
        .is_empty();
    let verifier = roles::scram_verifier(password);
    let mut tx = if reader {
        roles::reader_statements(user, &verifier, role_exists)
    } else {
        roles::login_statements(user, &verifier, role_exists)
    };
    tx.push(roles::revoke_escapes());
    if disable_other_logins {
        tx.push(roles::disable_other_logins(user));
    }
    c.batch_execute(&format!("BEGIN; {}; COMMIT", tx.join("; ")))
        .await
        .map_err(q)?;
    let db_exists = !c
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(q)?
        .is_empty();
    // A reader's database is the follower's own (the node checks it is), never made here.
    if !db_exists && !reader {
        // CREATE DATABASE cannot run inside a transaction block: its own statement.
        c.batch_execute(&roles::create_database(database, user))
            .await
            .map_err(q)?;
    }
    Ok(())
}

/// Runs [`ramify_compute::roles::adopt_objects`] for `user` in `database` of the compute
/// in `run_dir` on `port`.
pub async fn adopt_objects(
    run_dir: &Path,
    port: u16,
    database: &str,
    user: &str,
) -> Result<(), ControlError> {
    let c = connect_db(run_dir, port, database).await?;
    let what = "giving the branch role its database's objects";
    c.batch_execute(&ramify_compute::roles::adopt_objects(user))
        .await
        .map_err(|source| ControlError::Query { what, source })
}

/// Result of `pg_backup_stop`.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    pub label: String,
    pub tablespace_map: String,
}

/// `pg_backup_start(label, fast)`; returns the backup's start (redo) position and timeline.
pub async fn backup_start(c: &Client, label: &str, fast: bool) -> Result<(Lsn, u32), ControlError> {
    let what = "pg_backup_start";
    let row = c
        .query_one(
            "SELECT pg_backup_start($1, $2)::text, (SELECT timeline_id FROM pg_control_checkpoint())",
            &[&label, &fast],
        )
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    let lsn: String = row
        .try_get(0)
        .map_err(|source| ControlError::Query { what, source })?;
    let tli: i32 = row
        .try_get(1)
        .map_err(|source| ControlError::Query { what, source })?;
    Ok((parse_lsn("backup start LSN", lsn)?, tli as u32))
}

/// `pg_backup_stop(wait_for_archive => false)`: the WAL is taken from `pg_wal` directly.
pub async fn backup_stop(c: &Client) -> Result<BackupStop, ControlError> {
    let what = "pg_backup_stop";
    let row = c
        .query_one(
            "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    let get = |i| {
        row.try_get::<_, String>(i)
            .map_err(|source| ControlError::Query { what, source })
    };
    Ok(BackupStop {
        lsn: parse_lsn("backup stop LSN", get(0)?)?,
        label: get(1)?,
        tablespace_map: get(2)?,
    })
}

/// The compute's clock, so times recorded match the commit timestamps in its WAL.
pub async fn now(c: &Client) -> Result<DateTime<Utc>, ControlError> {
    let what = "clock_timestamp";
    let row = c
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(|source| ControlError::Query { what, source })?;
    row.try_get(0)
        .map_err(|source| ControlError::Query { what, source })
}
