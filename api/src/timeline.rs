//! Timelines, snapshots and node status as the storage API serves them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::lsn::Lsn;

/// Identifier of a timeline: a UUID, chosen by the client for idempotent creation.
pub type TimelineId = Uuid;

/// The moment of the parent's history a fork starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The parent's state now.
    Latest,
    /// Everything up to and including the WAL record at this position.
    Lsn(Lsn),
    /// Every transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// The consistent state a named snapshot of the parent captured.
    Snapshot(String),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Latest => f.write_str("latest"),
            At::Lsn(l) => write!(f, "lsn {l}"),
            At::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            At::Snapshot(s) => write!(f, "snapshot {s}"),
        }
    }
}

impl Serialize for At {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for At {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        At::from_json(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl At {
    /// The wire form: `"latest"`, `{"lsn": "0/16B3748"}`, `{"time": "…"}`, `{"snapshot": "…"}`.
    pub fn to_json(&self) -> Value {
        match self {
            At::Latest => Value::String("latest".into()),
            At::Lsn(l) => serde_json::json!({ "lsn": l.to_string() }),
            At::Time(t) => serde_json::json!({ "time": t.to_rfc3339() }),
            At::Snapshot(s) => serde_json::json!({ "snapshot": s }),
        }
    }

    /// Parses the wire form, with a message that names the accepted shapes.
    pub fn from_json(v: &Value) -> Result<At, String> {
        const SHAPES: &str = r#"expected "latest", {"lsn": "0/16B3748"}, {"time": "2026-01-02T03:04:05Z"} or {"snapshot": "name"}"#;
        match v {
            Value::String(s) if s == "latest" => Ok(At::Latest),
            Value::Object(m) if m.len() == 1 => {
                let (k, val) = m.iter().next().ok_or_else(|| SHAPES.to_string())?;
                let s = val
                    .as_str()
                    .ok_or_else(|| format!("\"at\".{k} must be a string; {SHAPES}"))?;
                match k.as_str() {
                    "lsn" => s.parse().map(At::Lsn).map_err(|e| e.to_string()),
                    "time" => crate::timestamp::parse_timestamp(s)
                        .map(At::Time)
                        .map_err(|e| e.to_string()),
                    "snapshot" => {
                        crate::names::validate_snapshot_name(s)?;
                        Ok(At::Snapshot(s.to_string()))
                    }
                    other => Err(format!("unknown \"at\" key {other:?}; {SHAPES}")),
                }
            }
            other => Err(format!("invalid \"at\" {other}; {SHAPES}")),
        }
    }
}

/// Body of `POST /v1/timelines`: a root (no parent) or a fork of `parent` at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateTimeline {
    /// Client-chosen id; repeating a request with the same id and body is a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<TimelineId>,
    /// The timeline to fork; absent for a new, empty root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TimelineId>,
    /// Where in the parent's history to fork; defaults to `latest`. Only with `parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<At>,
    /// A root that follows an existing Postgres as a hot standby instead of starting
    /// empty. Not with `parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowSource>,
    /// Keep this timeline in the node's backup repository (continuous WAL archiving and
    /// base backups), so it survives the loss of the node's volume. Default, when the
    /// node has a repository: on for roots that follow nothing, off for forks and
    /// followers. A durable fork of a durable parent stores only its own WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
    /// A root that starts as a copy of a durable timeline another storage node keeps in
    /// the same backup repository (its prefix, this node's bucket and credentials), as of
    /// that timeline's last archived WAL: forking across nodes, and the first step of
    /// moving a branch. Not with `parent` or `follow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<FromBackup>,
}

/// Where a copy of another node's durable timeline comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromBackup {
    /// The other node's prefix in the bucket (`ramify/ramify-storage-0`, its
    /// `--backup-repo` path without the bucket).
    pub prefix: String,
    /// The timeline there.
    pub timeline: TimelineId,
    /// The timeline was sealed (`POST /v1/timelines/{id}/seal` on its node, its compute
    /// stopped) at this LSN, its last WAL record: the copy takes the unfinished last
    /// segment the seal put in the repository and must replay through this record, or
    /// is refused (409) — a move loses no commit. Without it the copy starts at the
    /// timeline's last archived WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<Lsn>,
}

/// `POST /v1/timelines/{id}/seal`: a durable timeline whose compute is stopped, with all
/// of its WAL in the node's backup repository — the last, unfinished segment as
/// `<segment>.partial` (Postgres's own name for a segment a timeline left unfinished, so
/// the full segment, should the compute start again here, never clashes with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The start of the timeline's last WAL record (after a clean stop, its compute's
    /// shutdown checkpoint): give it as `from_backup.through`.
    pub lsn: Lsn,
    /// The Postgres timeline the WAL ends on.
    pub pg_timeline: u32,
    /// The unfinished segment, archived as `<partial>.partial`.
    pub partial: String,
}

/// The Postgres a following root streams from (physical replication).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FollowSource {
    /// The source as a libpq URI (`postgresql://replicator@db:5432/postgres`) naming one
    /// network host, without a password (the node refuses one written in it, a socket
    /// directory as host, and parameters that name files of the node).
    pub conninfo: String,
    /// The replication role's password. The node writes it only into a 0600 password
    /// file beside the timeline's socket; it is never stored in metadata or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A replication slot on the source, so it keeps the WAL the follower has not
    /// received yet: physical, made by the node when missing; logical, always made by
    /// the subscription (named `ramify_<timeline>` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Physical (a hot standby, the default) or logical (a subscription).
    #[serde(default, skip_serializing_if = "FollowMode::is_physical")]
    pub mode: FollowMode,
    /// The source's publication a logical follower subscribes to (required there, not
    /// valid for a physical one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
}

/// How a following root follows its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FollowMode {
    /// `pg_basebackup`, then a hot standby streaming the source's WAL: every byte, same
    /// Postgres major, read-only.
    #[default]
    Physical,
    /// `pg_dump --schema-only`, then `CREATE SUBSCRIPTION` to a publication: for sources
    /// that allow no replication connection (managed services) or run another major.
    /// DDL and sequences are not replicated.
    Logical,
}

impl FollowMode {
    pub fn is_physical(&self) -> bool {
        *self == FollowMode::Physical
    }
}

impl fmt::Display for FollowMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FollowMode::Physical => "physical",
            FollowMode::Logical => "logical",
        })
    }
}

impl std::str::FromStr for FollowMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "physical" => Ok(FollowMode::Physical),
            "logical" => Ok(FollowMode::Logical),
            _ => Err(format!("mode {s:?} is neither physical nor logical")),
        }
    }
}

impl fmt::Debug for FollowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FollowSource")
            .field("conninfo", &self.conninfo)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("slot", &self.slot)
            .field("mode", &self.mode)
            .field("publication", &self.publication)
            .finish()
    }
}

/// How a following root follows, as `GET /v1/timelines/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowInfo {
    /// The source, without its password.
    pub conninfo: String,
    /// The replication slot it streams from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Physical (a hot standby) or logical (a subscription).
    #[serde(default)]
    pub mode: FollowMode,
    /// The publication a logical follower subscribes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// The password file the compute's `primary_conninfo` (physical) or subscription
    /// (logical) names, relative to `run_dir`.
    pub passfile: String,
    /// Replication state, read from the running compute; `None` when it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FollowStatus>,
    /// A physical follower's warm standby, which serves its next fork at latest without
    /// replay: `ready`, `catching up`, `busy` (being built or serving a fork), `failed`
    /// (retried) or `none`; absent when the node keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_standby: Option<String>,
}

/// A following root's replication state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowStatus {
    /// Whether a WAL receiver is streaming from the source now.
    pub streaming: bool,
    /// WAL received and flushed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<Lsn>,
    /// WAL replayed (what a fork at latest sees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<Lsn>,
    /// The source's end of WAL as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lsn: Option<Lsn>,
    /// Bytes between the source's reported end of WAL and what is replayed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Seconds since the last replayed commit's time when WAL is still waiting for
    /// replay, 0 when everything received is replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// When the last message from the source arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_received_at: Option<DateTime<Utc>>,
    /// Why it is not streaming, from the compute's log (e.g. the source refused the
    /// password, or the slot is gone), with what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Lifecycle state of a timeline in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimelineState {
    /// A root whose PGDATA is still empty (made by an older release, or by a node without
    /// `initdb`): the first compute start runs `initdb`.
    Empty,
    /// PGDATA is in place and can be started.
    Ready,
}

/// Whether a Postgres compute is serving the timeline (seen through its Unix socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeState {
    /// Postgres accepts connections on the timeline's socket.
    Running,
    /// No Postgres answers on the timeline's socket.
    Stopped,
}

/// The range of history a fork of this timeline may target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreWindow {
    /// Oldest position a fork can reach (the base snapshot still kept).
    pub from_lsn: Option<Lsn>,
    /// Time of `from_lsn`.
    pub from_time: Option<DateTime<Utc>>,
    /// Newest flushed position (now, for a running compute).
    pub to_lsn: Option<Lsn>,
    /// Time of `to_lsn`.
    pub to_time: Option<DateTime<Utc>>,
}

/// How a snapshot came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// The state a fork started from, kept so the fork's own history begins at its fork point.
    Fork,
    /// The cluster a root started as (`initdb`'s, before any commit), kept so the root's
    /// history begins at its creation.
    Base,
    /// Taken by the node every `snapshot_interval` or `snapshot_wal_bytes`.
    Periodic,
    /// Asked for by name through the API.
    Manual,
}

/// A backup-mode clone of a timeline's PGDATA, the base every time-travel fork starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Unique within its timeline.
    pub name: String,
    /// Why it exists.
    pub kind: SnapshotKind,
    /// Where WAL replay from this snapshot starts (the checkpoint's redo position).
    pub start_lsn: Lsn,
    /// First position at which the snapshot is consistent; forks can target it or later.
    pub end_lsn: Lsn,
    /// When the snapshot became consistent.
    pub time: DateTime<Utc>,
    /// Postgres timeline id (TLI) the snapshot's WAL is on.
    pub pg_timeline: u32,
}

/// Body of `POST /v1/timelines/{id}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Name of the snapshot (1–63 of `a-z0-9-_.`).
    pub name: String,
}

/// Body of `POST /v1/timelines/{id}/restore-points`: write a named restore point into
/// the running compute's WAL (a checkpoint of the branch, in Ramify's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRestorePoint {
    /// Label of the restore point (same rules as a snapshot name).
    pub name: String,
    /// Also start a snapshot (in the background) when at least this much WAL was written
    /// since the newest snapshot, so forks at this point replay little WAL. Absent or 0:
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_wal_bytes: Option<u64>,
}

/// A restore point written by `POST /v1/timelines/{id}/restore-points`: fork at `lsn` to
/// get the timeline exactly as it was when the point was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointInfo {
    /// Its label.
    pub name: String,
    /// Position of the restore point record (durably flushed when this answer is sent).
    pub lsn: Lsn,
    /// The compute's clock when the point was written.
    pub time: DateTime<Utc>,
    /// WAL written since the newest snapshot's end.
    pub wal_since_snapshot: u64,
    /// Name of the snapshot started in the background because of `snapshot_wal_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Body of `PUT /v1/timelines/{id}/credentials`: the login role and database a branch's
/// connection string names. The node creates the role (or resets its password: a fork
/// inherits its parent's role) and the database when missing, so the call is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Login role (see [`crate::names::validate_sql_identifier`]).
    pub user: String,
    /// The role's new password (see [`crate::names::validate_password`]).
    pub password: String,
    /// Database owned by the role.
    pub database: String,
    /// Make every other non-superuser role unable to log in: a fork into another
    /// namespace must not open with logins (and passwords) its parent's tenant made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_other_logins: bool,
    /// The timeline descends from a following root: the database holds another
    /// Postgres's objects, owned by its roles. The role is made a member of every other
    /// non-superuser role and the owner of what superusers own in the database (see
    /// `ramify_compute::roles::adopt_objects`), so the branch can use and migrate it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_objects: bool,
}

/// A timeline as `GET /v1/timelines/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineInfo {
    /// Its id.
    pub id: TimelineId,
    /// The timeline it was forked from; `None` for a root.
    pub parent: Option<TimelineId>,
    /// What the fork asked for.
    pub at: Option<At>,
    /// Exact WAL position of the parent's history this timeline starts from.
    pub fork_lsn: Option<Lsn>,
    /// Commit time of the last transaction the fork includes (or the fork's moment for `latest`).
    pub fork_time: Option<DateTime<Utc>>,
    /// Storage state.
    pub state: TimelineState,
    /// Compute state, as seen through the socket in `run_dir`.
    pub compute: ComputeState,
    /// When the timeline was created.
    pub created_at: DateTime<Utc>,
    /// Directory a compute runs Postgres on.
    pub pgdata: String,
    /// This timeline's WAL archive.
    pub archive: String,
    /// Socket directory of this timeline's compute.
    pub run_dir: String,
    /// `archive_command` the compute must use (relative to PGDATA, so it works wherever the
    /// timeline directory is mounted).
    pub archive_command: String,
    /// Sum of file sizes in PGDATA.
    pub logical_bytes: u64,
    /// Bytes in extents no other file shares: what deleting this timeline frees.
    pub exclusive_bytes: u64,
    /// Bytes of WAL archive and snapshots (its history).
    pub history_bytes: u64,
    /// When the node measured the three figures above: its accounting runs in the
    /// background, and `GET …?sizes=fresh` waits for a measurement started after the
    /// call. `None`: not measured yet (a new timeline; the figures are 0) or not asked
    /// for (`?sizes=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes_measured_at: Option<DateTime<Utc>>,
    /// Range a fork of this timeline can target.
    pub restore_window: RestoreWindow,
    /// Snapshots kept, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Set for a root that follows an external Postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowInfo>,
    /// Set for a durable timeline: how its archiving to the backup repository stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// A durable timeline's place in the node's backup repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// `s3://bucket/prefix at host:port`.
    pub repository: String,
    /// False while archiving fails (`error` says why; WAL stays on the node meanwhile).
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The newest WAL file in the repository, and when it got there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
    /// Bytes of archived WAL on the node not yet in the repository.
    pub backlog_bytes: u64,
    /// The newest base backup: this timeline's own, or none (a fork recovered from an
    /// ancestor's backup and its own WAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_backup: Option<BackupInfo>,
    /// Every base backup of its own in the repository, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupInfo>,
}

/// One base backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// pgBackRest's backup set label.
    pub set: String,
    /// The snapshot it is a backup of.
    pub snapshot: String,
    pub lsn: Lsn,
    pub time: DateTime<Utc>,
}

/// `GET /v1/copies`: an initial copy of a following root's source under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The timeline being made.
    pub timeline: TimelineId,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// When the copy started.
    pub started_at: DateTime<Utc>,
}

/// Clone method of the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneMethod {
    /// `FICLONE` works: clones share extents, O(metadata).
    Reflink,
    /// No reflinks: every clone is a full copy, O(size).
    Copy,
}

impl fmt::Display for CloneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloneMethod::Reflink => "reflink",
            CloneMethod::Copy => "copy",
        })
    }
}

/// `GET /v1/status`: what this node runs on and how full it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Version of `ramify-storage`.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// How timelines are cloned here.
    pub clone_method: CloneMethod,
    /// Filesystem type of the data directory (`xfs`, `btrfs`, `ext4`, …).
    pub filesystem: String,
    /// Size of the filesystem.
    pub capacity_bytes: u64,
    /// Bytes in use on the filesystem.
    pub used_bytes: u64,
    /// Bytes still free for this node.
    pub available_bytes: u64,
    /// Number of timelines.
    pub timelines: usize,
    /// Restore window in seconds.
    pub restore_window_seconds: u64,
    /// Periodic snapshot interval in seconds (0 = off).
    pub snapshot_interval_seconds: u64,
    /// WAL bytes after which a periodic snapshot is taken (0 = off).
    pub snapshot_wal_bytes: u64,
    /// The free space the node keeps for running computes' WAL (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<SpaceReserve>,
    /// The node's backup repository, when it has one: where its durable timelines are,
    /// for another node to copy them from (`from_backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<NodeBackupRepo>,
}

/// Where a storage node keeps its durable timelines (no credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBackupRepo {
    /// `host:port` of the S3 endpoint.
    pub endpoint: String,
    pub bucket: String,
    /// The node's prefix in the bucket.
    pub prefix: String,
}

/// The storage node's space reserve: below it forks, new roots and snapshots are refused
/// (507) and the timeline filling the volume is made read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceReserve {
    /// The reserve as configured (`5%`, `2 GiB`, or the default's description).
    pub configured: String,
    /// The reserve in bytes on this volume.
    pub reserve_bytes: u64,
    /// Whether the node is short of space now: free space below the reserve or, while
    /// timelines are read-only for lack of it, not yet back above the reserve plus a
    /// quarter. Forks, new roots and snapshots are refused meanwhile.
    pub below_reserve: bool,
    /// Timelines the node made read-only because they were filling the volume.
    #[serde(default)]
    pub read_only_timelines: Vec<TimelineId>,
}

/// Every error the API returns: a stable machine code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable, snake_case code (`not_found`, `conflict`, `out_of_range`, …).
    pub code: String,
    /// What went wrong and what is valid.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_wire_forms() {
        let cases = [
            (r#""latest""#, At::Latest),
            (r#"{"lsn":"0/16B3748"}"#, At::Lsn(Lsn(0x16B3748))),
            (r#"{"snapshot":"nightly"}"#, At::Snapshot("nightly".into())),
        ];
        for (json, at) in cases {
            let parsed: At = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, at);
            let back: At = serde_json::from_value(parsed.to_json()).unwrap();
            assert_eq!(back, at);
        }
        let t: At = serde_json::from_str(r#"{"time":"2026-01-02T03:04:05+01:00"}"#).unwrap();
        assert_eq!(t.to_json()["time"], "2026-01-02T02:04:05+00:00");
    }

    #[test]
    fn at_errors_name_the_valid_shapes() {
        for bad in [
            r#""earliest""#,
            r#"{"lsn":"0/ZZ"}"#,
            r#"{"lsn":5}"#,
            r#"{"time":"yesterday"}"#,
            r#"{"lsn":"0/1","time":"x"}"#,
            r#"{"commit":"x"}"#,
            r#"{"snapshot":"../etc"}"#,
            "7",
        ] {
            let e = serde_json::from_str::<At>(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected") || e.contains("invalid") || e.contains("use 1-63"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn create_rejects_unknown_fields() {
        let e = serde_json::from_str::<CreateTimeline>(r#"{"parnet":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"));
        let c: CreateTimeline = serde_json::from_str("{}").unwrap();
        assert_eq!(c, CreateTimeline::default());
    }
}
