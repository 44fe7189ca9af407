//! `Timeline`: the Kubernetes mirror of one storage-node timeline, written only by the
//! operator, so `kubectl get timelines -n ramify-system` shows every line of history,
//! where it lives and what it costs.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A timeline on a storage node.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "ramify.dev",
    version = "v1alpha1",
    kind = "Timeline",
    plural = "timelines",
    singular = "timeline",
    shortname = "rtl",
    category = "ramify",
    // `helm uninstall ramify-crds` must not delete every branch in the cluster.
    annotation("helm.sh/resource-policy", "keep"),
    namespaced,
    status = "TimelineStatus",
    doc = "One line of Postgres history on a storage node (written by the operator).",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.storageNode"),
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch.name"),
    printcolumn(
        name = "Branch NS",
        type_ = "string",
        json_path = ".spec.branch.namespace"
    ),
    printcolumn(name = "Fork LSN", type_ = "string", json_path = ".status.forkLsn"),
    printcolumn(
        name = "Exclusive",
        type_ = "integer",
        json_path = ".status.exclusiveBytes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TimelineSpec {
    /// Timeline id on the storage node (a UUID).
    pub id: String,
    /// Storage node (Pod of the storage StatefulSet) holding it.
    pub storage_node: String,
    /// The `Timeline` it was forked from; absent for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The branch it belongs to.
    pub branch: BranchOwner,
}

/// The branch a timeline belongs to (in another namespace, so not an owner reference).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BranchOwner {
    /// Namespace of the DatabaseBranch.
    pub namespace: String,
    /// Name of the DatabaseBranch.
    pub name: String,
    /// UID of the DatabaseBranch.
    pub uid: String,
}

/// What the storage node reports about a timeline.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TimelineStatus {
    /// WAL position of the fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_lsn: Option<String>,
    /// Time of the last transaction the fork includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_time: Option<DateTime<Utc>>,
    /// Size of its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<i64>,
    /// Bytes only it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_bytes: Option<i64>,
    /// WAL archive and snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_bytes: Option<i64>,
    /// Snapshots kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<i32>,
    /// The part of its history a fork or restore can reach (as on its DatabaseBranch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window: Option<crate::RestoreWindowStatus>,
}
