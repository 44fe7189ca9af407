//! `BranchCheckpoint`: a named point of a branch's history, recorded without stopping its
//! compute (a Postgres restore point, its LSN and time), to restore to later with a
//! `BranchRestore`. The same thing as `ramify checkpoint create` in local mode.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::TimelineRef;

/// Which branch to checkpoint (the object's name is the checkpoint's name).
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "ramify.dev",
    version = "v1alpha1",
    kind = "BranchCheckpoint",
    plural = "branchcheckpoints",
    singular = "branchcheckpoint",
    shortname = "dbcheckpoint",
    shortname = "dbcp",
    category = "ramify",
    // `helm uninstall ramify-crds` must not delete every record in the cluster.
    annotation("helm.sh/resource-policy", "keep"),
    namespaced,
    status = "BranchCheckpointStatus",
    doc = "A named point of a branch's history (a Postgres restore point), to restore the branch to with a BranchRestore.",
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "LSN", type_ = "string", json_path = ".status.lsn"),
    printcolumn(name = "Time", type_ = "date", json_path = ".status.time"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$')").message("metadata.name must be at most 63 characters of a-z, 0-9, '-' and '.': it labels the restore point in the branch's WAL")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a checkpoint records one moment; create another"))]
#[serde(rename_all = "camelCase")]
pub struct BranchCheckpointSpec {
    /// The DatabaseBranch (same namespace) to checkpoint.
    #[schemars(length(min = 1, max = 63))]
    pub branch: String,
}

/// What was recorded.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BranchCheckpointStatus {
    /// Pending, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CheckpointPhase>,
    /// `Ready`: why not, or where the point is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// WAL position of the restore point: restoring to it gives the branch exactly as
    /// it was when the checkpoint was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// The compute's clock when the point was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// The timeline whose history holds the point. After the branch is restored, this is
    /// the timeline its backup branch keeps, so the checkpoint stays usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineRef>,
    /// A storage snapshot started with the checkpoint (much WAL since the last one), so
    /// restoring here replays little WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_snapshot: Option<String>,
}

/// Summary of a checkpoint's state.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPhase {
    /// Waiting for the branch (to exist, to be Ready, its compute to start).
    Pending,
    /// Recorded: `lsn` and `time` are set.
    Ready,
    /// Cannot be recorded; the `Ready` condition says why.
    Failed,
}
