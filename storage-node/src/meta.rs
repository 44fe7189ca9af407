//! Durable metadata: one record per timeline in an embedded `redb` database.
//!
//! redb commits are atomic and crash-safe (copy-on-write B-tree pages, fsync'd with a
//! checksummed commit slot), need no server, and are pure Rust. Every state change of a
//! timeline is one commit, so after a crash the node sees either the old or the new state.

use std::path::Path;

use chrono::{DateTime, Utc};
use ramify_api::{At, CreateTimeline, Lsn, SnapshotInfo, TimelineId};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::backup::BackupState;

const TIMELINES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("timelines");
/// Where each durable timeline's archiving and backups stand (`backup::BackupState`).
const BACKUP: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("backup");

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Store(#[source] Box<redb::Error>),
    #[error("corrupt metadata record for {id}: {source}")]
    Decode {
        id: TimelineId,
        #[source]
        source: serde_json::Error,
    },
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Store(Box::new(e.into())) }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Where a timeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Being built in a staging directory; removed at start-up if the node crashed.
    Creating,
    /// A root with an empty PGDATA.
    Empty,
    /// Usable.
    Ready,
    /// Being deleted: written before anything is removed, so a deletion interrupted at any
    /// point is finished by a retried DELETE or by the start-up scan, and never leaves a
    /// record whose directory is gone.
    Deleting,
}

/// A snapshot as stored: the public info plus where replay from it becomes consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub info: SnapshotInfo,
    /// Position at which recovery from this snapshot is consistent (`recovery_target =
    /// 'immediate'` stops here).
    pub consistent_lsn: Lsn,
    /// The compute's flushed position right after the snapshot finished: WAL the snapshot
    /// itself wrote (its checkpoint, backup end, segment switch) ends here, and only WAL
    /// beyond it makes a new periodic snapshot worth taking.
    #[serde(default)]
    pub after_lsn: Option<Lsn>,
    /// A clone of a stopped compute: starting it as it is (crash recovery at most)
    /// reproduces it exactly, with no archive recovery and no target.
    #[serde(default)]
    pub plain_start: bool,
}

impl SnapshotRecord {
    /// Where WAL that makes a newer snapshot worth taking starts counting: a fork at a
    /// later point starts from this snapshot and replays from here. For a backup, after
    /// the WAL the snapshot wrote itself (its checkpoint, backup end, segment switch),
    /// which no newer one would spare. For a fork's own starting state, where its replay
    /// began: the stretch it replayed to reach its fork point (a restore to an LSN, a time
    /// or a checkpoint) is replayed again by every fork of it until it has a base of its
    /// own, and more after each restore of a restore.
    pub fn replay_counted_from(&self) -> Lsn {
        match self.info.kind {
            ramify_api::SnapshotKind::Fork => self.info.start_lsn,
            _ => self.after_lsn.unwrap_or(self.info.end_lsn),
        }
    }
}

/// Everything the node keeps about a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRecord {
    pub id: TimelineId,
    pub parent: Option<TimelineId>,
    pub at: Option<At>,
    /// The create request, normalised, to answer retries idempotently.
    pub request: CreateTimeline,
    pub phase: Phase,
    pub fork_lsn: Option<Lsn>,
    pub fork_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotRecord>,
}

/// The metadata database.
pub struct Meta {
    db: Database,
}

impl Meta {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Meta, MetaError> {
        let db = Database::create(path)?;
        let w = db.begin_write()?;
        w.open_table(TIMELINES)?;
        w.open_table(BACKUP)?;
        w.commit()?;
        Ok(Meta { db })
    }

    /// Writes (inserts or replaces) a record in one durable commit.
    pub fn put(&self, rec: &TimelineRecord) -> Result<(), MetaError> {
        let bytes =
            serde_json::to_vec(rec).map_err(|source| MetaError::Decode { id: rec.id, source })?;
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(TIMELINES)?;
            t.insert(rec.id.as_bytes(), bytes.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Removes a record in one durable commit.
    pub fn remove(&self, id: TimelineId) -> Result<(), MetaError> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(TIMELINES)?;
            t.remove(id.as_bytes())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Reads one record.
    pub fn get(&self, id: TimelineId) -> Result<Option<TimelineRecord>, MetaError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TIMELINES)?;
        let Some(v) = t.get(id.as_bytes())? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| MetaError::Decode { id, source })
    }

    /// The backup state of timeline `id` (default when it has none yet).
    pub fn backup_state(&self, id: TimelineId) -> Result<BackupState, MetaError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(BACKUP)?;
        let Some(v) = t.get(id.as_bytes())? else {
            return Ok(BackupState::default());
        };
        serde_json::from_slice(v.value()).map_err(|source| MetaError::Decode { id, source })
    }

    /// Writes the backup state of timeline `id` in one durable commit.
    pub fn put_backup_state(&self, id: TimelineId, state: &BackupState) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(state).map_err(|source| MetaError::Decode { id, source })?;
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(BACKUP)?;
            t.insert(id.as_bytes(), bytes.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Every timeline's backup state (deleted timelines' included, until forgotten).
    pub fn backup_states(&self) -> Result<Vec<(TimelineId, BackupState)>, MetaError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(BACKUP)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let id = TimelineId::from_bytes(*k.value());
            let st = serde_json::from_slice(v.value())
                .map_err(|source| MetaError::Decode { id, source })?;
            out.push((id, st));
        }
        Ok(out)
    }

    /// Forgets the backup state of timeline `id`.
    pub fn remove_backup_state(&self, id: TimelineId) -> Result<(), MetaError> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(BACKUP)?;
            t.remove(id.as_bytes())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Reads every record, oldest first.
    pub fn all(&self) -> Result<Vec<TimelineRecord>, MetaError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TIMELINES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let id = TimelineId::from_bytes(*k.value());
            out.push(
                serde_json::from_slice::<TimelineRecord>(v.value())
                    .map_err(|source| MetaError::Decode { id, source })?,
            );
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: TimelineId) -> TimelineRecord {
        TimelineRecord {
            id,
            parent: None,
            at: None,
            request: CreateTimeline::default(),
            phase: Phase::Creating,
            fork_lsn: None,
            fork_time: None,
            created_at: Utc::now(),
            snapshots: vec![],
        }
    }

    #[test]
    fn records_survive_reopen() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("meta.redb");
        let a = TimelineId::new_v4();
        let b = TimelineId::new_v4();
        {
            let m = Meta::open(&path).unwrap();
            m.put(&rec(a)).unwrap();
            m.put(&rec(b)).unwrap();
            let mut r = rec(a);
            r.phase = Phase::Ready;
            m.put(&r).unwrap();
            m.remove(b).unwrap();
        }
        let m = Meta::open(&path).unwrap();
        let all = m.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].phase, Phase::Ready);
        assert!(m.get(b).unwrap().is_none());
    }
}
