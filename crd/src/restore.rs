//! `BranchRestore`: one reset or restore of a branch. The branch keeps its name,
//! Service, Secret, role and password and is moved onto a new timeline forked from its
//! parent's latest state (a reset) or from its own or another branch's history at a
//! point (a restore); its previous state can be kept as a backup branch. An applied
//! BranchRestore runs once; its status is the record of what happened.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which branch to move, onto what.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "ramify.dev",
    version = "v1alpha1",
    kind = "BranchRestore",
    plural = "branchrestores",
    singular = "branchrestore",
    shortname = "dbrestore",
    category = "ramify",
    // `helm uninstall ramify-crds` must not delete every record in the cluster.
    annotation("helm.sh/resource-policy", "keep"),
    namespaced,
    status = "BranchRestoreStatus",
    doc = "One reset (to the parent's latest state) or restore (to a point of this or another branch's history) of a DatabaseBranch. Runs once.",
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backupBranch"),
    printcolumn(name = "Started", type_ = "date", json_path = ".status.startTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a BranchRestore runs once; create another"))]
#[serde(rename_all = "camelCase")]
pub struct BranchRestoreSpec {
    /// The DatabaseBranch (same namespace) to reset or restore.
    #[schemars(length(min = 1, max = 63))]
    pub branch: String,
    /// What the branch becomes.
    pub source: RestoreSource,
    /// Keep the branch's state before the restore as a branch
    /// `<branch>-before-restore-<UTC time>` that expires after the storage node's restore
    /// window. Default: true for a restore, false for a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_backup: Option<bool>,
}

/// `parent: true` (reset), or a point (`lsn`, `time` or `checkpoint`) of the branch's
/// own history or of `branch`'s (whose latest state when no point is given).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("[has(self.lsn), has(self.time), has(self.checkpoint)].filter(x, x).size() <= 1").message("source takes at most one of lsn, time and checkpoint"))]
#[x_kube(validation = Rule::new("!(has(self.parent) && self.parent) || !(has(self.branch) || has(self.lsn) || has(self.time) || has(self.checkpoint))").message("source.parent (a reset to the parent's latest state) takes no other field"))]
#[x_kube(validation = Rule::new("(has(self.parent) && self.parent) || has(self.branch) || has(self.lsn) || has(self.time) || has(self.checkpoint)").message("source needs parent: true (reset), or a point: lsn, time or checkpoint (of the branch, or of source.branch), or another branch"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// Reset: the branch becomes its parent's latest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<bool>,
    /// Another DatabaseBranch (same namespace, same storage node) to take the state of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub branch: Option<String>,
    /// A WAL position `X/Y`: everything up to and including the record there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"))]
    pub lsn: Option<String>,
    /// A time with a zone: every transaction committed at or before it. As Postgres
    /// prints a `timestamptz` (`2026-12-04 14:45:02.954757+00`, `… 14:45:02-08`,
    /// `… 14:45:02+05:30`) or in RFC 3339 (`2026-12-04T14:45:02Z`); a time without a zone
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(ramify_api::timestamp::cel_zoneless_rule()).message(kube::core::Message::Expression(ramify_api::timestamp::cel_zoneless_message("spec.source.time"))))]
    #[x_kube(validation = Rule::new(ramify_api::timestamp::cel_timestamp_rule()).message(kube::core::Message::Message(ramify_api::timestamp::cel_timestamp_message("spec.source.time"))))]
    pub time: Option<String>,
    /// A BranchCheckpoint (same namespace) of the branch (or of `branch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub checkpoint: Option<String>,
}

/// What happened.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BranchRestoreStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// `Succeeded`: why not yet, or what was done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the restore began to change the branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// What the branch became, in words (`checkpoint step-3 of dev (0/5000028)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The timeline the branch left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_timeline: Option<String>,
    /// The timeline the branch is now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
    /// WAL position of the source's history the new timeline starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_lsn: Option<String>,
    /// The branch keeping the state before the restore (when `keepBackup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_branch: Option<String>,
}

/// Summary of a restore's state.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePhase {
    /// Waiting for the branch or the source to be ready, or for another restore of the
    /// same branch to finish.
    Pending,
    /// The branch is being moved onto its new timeline.
    Running,
    /// The branch is Ready on its new timeline.
    Succeeded,
    /// Nothing was changed; the `Succeeded` condition says why.
    Failed,
}
