//! What a branch is, and the JSON the local daemon's API speaks about it.

use chrono::{DateTime, Utc};
use ramify_api::{At, CloneMethod, Lsn, NodeStatus, SnapshotInfo, TimelineId};
use serde::{Deserialize, Serialize};

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
}

impl Branch {
    /// `postgresql://` URI through the proxy.
    pub fn uri(&self, host: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            self.user, self.password, host, self.port, self.database
        )
    }
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
    /// Point of the parent's history; default latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<At>,
    /// Idle seconds before suspend (default 300; 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_secs: Option<u64>,
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
    pub snapshots: Vec<SnapshotInfo>,
    /// How the branch's storage was cloned on this node.
    pub clone_method: CloneMethod,
    /// Milliseconds the create took (only in the answer to a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_ms: Option<u64>,
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
}

/// Body of `POST /v1/branches/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotReq {
    pub name: String,
}
