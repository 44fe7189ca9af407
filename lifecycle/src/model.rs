//! What a branch is, and the JSON the local daemon's API speaks about it.

use std::fmt;

use chrono::{DateTime, Utc};
use ramify_api::{
    At, CloneMethod, FollowInfo, FollowSource, Lsn, NodeStatus, SnapshotInfo, TimelineId,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The role every branch's connection string uses.
pub const BRANCH_ROLE: &str = "app";
/// The database every branch's connection string names.
pub const BRANCH_DATABASE: &str = "app";
/// Default idle time before a branch's compute is suspended.
pub const DEFAULT_SUSPEND_AFTER_SECS: u64 = 300;

/// A branch as the lifecycle stores it: a stable name with a port, a role and a password,
/// pointing at the timeline that currently holds its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// DNS-label name, unique.
    pub name: String,
    /// Parent branch name; `None` for a root.
    pub parent: Option<String>,
    /// The storage timeline holding its data.
    pub timeline: TimelineId,
    /// What the fork asked for.
    pub at: Option<At>,
    /// Client-facing port (the proxy's listener), stable for the branch's life.
    pub port: u16,
    /// Connection role.
    pub user: String,
    /// The role's password (fresh for every branch).
    pub password: String,
    /// Database in the connection string.
    pub database: String,
    /// Idle seconds before suspend; 0 = never.
    pub suspend_after_secs: u64,
    pub created_at: DateTime<Utc>,
    /// Refuses delete, reset, restore and expiry while set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// When the branch is deleted with its compute and storage; `None` = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Named points of its history, oldest first; each remembers the timeline it lives on,
    /// so a revert never loses the points written after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// Timelines this branch was on before restores that kept them (as backup branches),
    /// oldest first: its history before each restore, where a restore to an earlier point
    /// reads from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_timelines: Vec<FormerTimeline>,
    /// Set on a backup branch: the branch whose pre-restore state it keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_of: Option<String>,
    /// The role still has another branch's password (a backup branch keeps its source's
    /// role): the next start sets `password` before any client gets in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub password_pending: bool,
    /// Set on a root that follows another Postgres: the source, without its password.
    /// Such a branch never suspends and is never reset or restored. A physical one is a
    /// read-only hot standby whose roles are its source's (no credentials of its own:
    /// `user` is empty); a logical one's `user` is a read-only login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
}

impl Branch {
    /// `postgresql://` URI through the proxy. A physical following root's names no role:
    /// its logins are its source's.
    pub fn uri(&self, host: &str) -> String {
        if self.user.is_empty() {
            return format!("postgresql://{host}:{}/{}", self.port, self.database);
        }
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            self.user, self.password, host, self.port, self.database
        )
    }
}

/// A timeline a branch left in a restore that kept it: the branch's history until then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormerTimeline {
    pub timeline: TimelineId,
    /// When the branch left it: the branch's state at an earlier time is on it.
    pub left_at: DateTime<Utc>,
    /// Fork LSN of the timeline that replaced it, when that one was forked from it (a
    /// restore of the branch's own history): WAL positions before it are shared, so an
    /// earlier LSN of the branch is on it. `None` after `--from` another branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_fork_lsn: Option<Lsn>,
}

/// Body of `POST /v1/branches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    /// Name of the new branch.
    pub name: String,
    /// Branch to fork from; absent for a new, empty root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Point of the parent's history (a checkpoint of the parent too); default latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<HistoryPoint>,
    /// Idle seconds before suspend (default 300; 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_secs: Option<u64>,
    /// When the branch is deleted by itself (absent = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Create it protected (no delete, reset, restore or expiry until unprotected).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// A root that follows this Postgres (physical replication) instead of starting
    /// empty. Not with `parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowSource>,
    /// Keep the branch in the backup repository (`ramify local up --backup`): default on
    /// for roots that follow nothing, off for forks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
}

/// A point of a branch's history: what storage understands (`latest`, an LSN, a time, a
/// storage snapshot) or one of the branch's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryPoint {
    /// A point the storage node resolves.
    At(At),
    /// A checkpoint of the branch, by name.
    Checkpoint(String),
}

impl From<At> for HistoryPoint {
    fn from(at: At) -> Self {
        HistoryPoint::At(at)
    }
}

impl fmt::Display for HistoryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryPoint::At(at) => at.fmt(f),
            HistoryPoint::Checkpoint(name) => write!(f, "checkpoint {name}"),
        }
    }
}

/// Wire form: [`At`]'s (`"latest"`, `{"lsn": …}`, `{"time": …}`, `{"snapshot": …}`) plus
/// `{"checkpoint": "name"}`.
impl Serialize for HistoryPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HistoryPoint::At(at) => at.serialize(s),
            HistoryPoint::Checkpoint(name) => {
                serde_json::json!({ "checkpoint": name }).serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for HistoryPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if let Some(name) = v.as_object().and_then(|m| m.get("checkpoint")) {
            if v.as_object().is_some_and(|m| m.len() == 1) {
                let name = name.as_str().ok_or_else(|| {
                    serde::de::Error::custom("\"at\".checkpoint must be a string")
                })?;
                return Ok(HistoryPoint::Checkpoint(name.to_string()));
            }
        }
        At::from_json(&v)
            .map(HistoryPoint::At)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or {{\"checkpoint\": \"name\"}}")))
    }
}

/// A named point of a branch's history: a Postgres restore point's LSN and time, and the
/// timeline that holds it (the branch's own, or after a revert the backup branch's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Unique within its branch.
    pub name: String,
    /// Position of the restore point: reverting forks the timeline here.
    pub lsn: Lsn,
    /// When it was written (the compute's clock).
    pub time: DateTime<Utc>,
    /// The timeline whose history holds it.
    pub timeline: TimelineId,
    /// Storage snapshot started with it (much WAL since the previous one), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Body of `POST /v1/branches/{name}/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckpoint {
    /// Its name; default `cp-N`, N one more than the highest so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A checkpoint as `GET /v1/branches/{name}/checkpoints` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// The branch whose timeline holds it now: the branch itself, or a backup branch
    /// (after a revert to an earlier point).
    pub held_by: String,
    /// Milliseconds the create took (only in the answer to a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_ms: Option<u64>,
}

/// Body of `POST /v1/branches/{name}/restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBranch {
    /// The point to go back to; required unless `from` is given (then default latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<HistoryPoint>,
    /// Take the state of this branch instead of the branch's own history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Keep the state before the restore as a suspended backup branch (default true).
    #[serde(default = "yes")]
    pub backup: bool,
}

fn yes() -> bool {
    true
}

/// What a reset or restore did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The branch as it is now (same port, role and password; new timeline).
    pub branch: BranchView,
    /// Where its data came from: the branch (itself, its parent or `--from`) and the point.
    pub source: String,
    pub point: HistoryPoint,
    /// The timeline the branch left.
    pub previous_timeline: TimelineId,
    /// The backup branch keeping the state before, if one was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Milliseconds until the branch answered again on its new timeline.
    pub elapsed_ms: u64,
}

/// Body of `PATCH /v1/branches/{name}`: the settings that change without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateBranch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Expiry>,
}

/// A new expiry: at a moment, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    At(DateTime<Utc>),
    Never,
}

/// Whether a branch's compute runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeStatus {
    Running,
    Suspended,
}

/// A branch as the API and the CLI show it: the branch plus its storage facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchView {
    pub name: String,
    pub parent: Option<String>,
    pub timeline_id: TimelineId,
    pub compute: ComputeStatus,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Connection URI (through the proxy: connecting wakes a suspended branch).
    pub uri: String,
    pub at: Option<At>,
    pub fork_lsn: Option<Lsn>,
    pub fork_time: Option<DateTime<Utc>>,
    pub logical_bytes: u64,
    pub exclusive_bytes: u64,
    pub history_bytes: u64,
    pub suspend_after_secs: u64,
    pub created_at: DateTime<Utc>,
    /// Refuses delete, reset, restore and expiry.
    #[serde(default)]
    pub protected: bool,
    /// When the daemon deletes it; `None` = never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The branch whose pre-restore state this backup branch keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_of: Option<String>,
    /// Number of checkpoints (`GET …/checkpoints` lists them).
    #[serde(default)]
    pub checkpoints: usize,
    pub snapshots: Vec<SnapshotInfo>,
    /// The part of its history a restore or a fork `--at` can reach (from its creation,
    /// or the oldest point the restore window keeps, to its last flushed change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window: Option<ramify_api::RestoreWindow>,
    /// How the branch's storage was cloned on this node.
    pub clone_method: CloneMethod,
    /// Milliseconds the create took (only in the answer to a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_ms: Option<u64>,
    /// For a root that follows another Postgres: its source and replication state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<FollowInfo>,
    /// For a branch kept in the backup repository: how its archiving stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_in: Option<ramify_api::BackupStatus>,
}

/// `GET /v1/status` of the local daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub data_dir: String,
    pub pid: u32,
    pub storage_url: String,
    pub storage: NodeStatus,
    pub branches: usize,
    pub running_computes: usize,
    pub postgres_version: String,
    pub pg_user: String,
    /// Initial copies of following roots' sources under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<ramify_api::CopyProgress>,
    /// Following roots and how each follows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub following: Vec<FollowingRoot>,
}

/// A following root in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowingRoot {
    pub branch: String,
    pub follow: FollowInfo,
}

/// Body of `POST /v1/branches/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotReq {
    pub name: String,
}
