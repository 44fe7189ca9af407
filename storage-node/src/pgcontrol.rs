//! Reads the few fields of `global/pg_control` the node needs when no compute runs.
//!
//! Offsets are those of `ControlFileData` in PostgreSQL 10 and later (unchanged since):
//! `state` at 16, `time` at 24, `checkPoint` at 32, `checkPointCopy.redo` at 40 and
//! `checkPointCopy.ThisTimeLineID` at 48, all little-endian on the platforms we support.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ramify_api::Lsn;

/// Errors reading `pg_control`.
#[derive(Debug, thiserror::Error)]
pub enum PgControlError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is too short ({len} bytes) to be a pg_control file")]
    Short { path: PathBuf, len: usize },
}

/// The cluster state of `pg_control` (`DBState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Shut down cleanly (`DB_SHUTDOWNED`) or while in recovery.
    ShutDown,
    /// Anything else: running, or stopped without a clean shutdown.
    NotShutDown,
}

/// Facts from `pg_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgControl {
    pub state: ClusterState,
    /// Last time `pg_control` was written (a checkpoint or shutdown).
    pub time: DateTime<Utc>,
    /// Start of the latest checkpoint record: for a clean shutdown, the last record of WAL.
    pub checkpoint: Lsn,
    /// Redo position of the latest checkpoint.
    pub redo: Lsn,
    /// Postgres timeline the latest checkpoint is on.
    pub timeline: u32,
}

/// Parses the raw bytes of a `pg_control` file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<PgControl, PgControlError> {
    if bytes.len() < 52 {
        return Err(PgControlError::Short {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let state = match u32_at(16) {
        1 | 2 => ClusterState::ShutDown,
        _ => ClusterState::NotShutDown,
    };
    let time = DateTime::from_timestamp(u64_at(24) as i64, 0).unwrap_or_default();
    Ok(PgControl {
        state,
        time,
        checkpoint: Lsn(u64_at(32)),
        redo: Lsn(u64_at(40)),
        timeline: u32_at(48),
    })
}

/// Reads `<pgdata>/global/pg_control`.
pub fn read(pgdata: &Path) -> Result<PgControl, PgControlError> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path).map_err(|source| PgControlError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&bytes, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_offsets() {
        let mut b = vec![0u8; 296];
        b[16..20].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&1_700_000_000i64.to_le_bytes());
        b[32..40].copy_from_slice(&0x0100_0028u64.to_le_bytes());
        b[40..48].copy_from_slice(&0x0100_0000u64.to_le_bytes());
        b[48..52].copy_from_slice(&3u32.to_le_bytes());
        let c = parse(&b, Path::new("x")).unwrap();
        assert_eq!(c.state, ClusterState::ShutDown);
        assert_eq!(c.checkpoint.to_string(), "0/1000028");
        assert_eq!(c.redo.to_string(), "0/1000000");
        assert_eq!(c.timeline, 3);
        assert_eq!(c.time.timestamp(), 1_700_000_000);
        assert!(parse(&b[..20], Path::new("x")).is_err());
    }
}
