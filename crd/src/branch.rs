//! `DatabaseBranch`: the user-facing resource. One object is one branch: a Postgres with
//! its own data (a copy-on-write fork of its parent, or a new empty root), credentials,
//! connection Secret and Service, whose compute scales to zero when idle.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that lets a branch with children be deleted: its children are deleted first.
pub const DELETE_CHILDREN_ANNOTATION: &str = "ramify.dev/delete-children";
/// Annotation that lets a branch's deletion finish when its storage node cannot delete
/// its timeline (unreachable, or failing): for a node that is gone for good. The timeline
/// is left behind on that node; a node that answers still deletes it.
pub const FORGET_STORAGE_ANNOTATION: &str = "ramify.dev/forget-storage";
/// Annotation asking the operator to start the branch's compute now (`kubectl ramify
/// branch wake`); its value is the time of the request (RFC 3339). The operator removes
/// it once the compute runs.
pub const WAKE_REQUEST_ANNOTATION: &str = "ramify.dev/wake-request";
/// Annotation asking the operator to stop the branch's compute now (`kubectl ramify
/// branch suspend`); removed once it is stopped. The next connection wakes it again.
pub const SUSPEND_REQUEST_ANNOTATION: &str = "ramify.dev/suspend-request";

/// Desired state of a branch.
// kube-derive takes one `printcolumn(...)` per column; clippy mistakes them for repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "ramify.dev",
    version = "v1alpha1",
    kind = "DatabaseBranch",
    plural = "databasebranches",
    singular = "databasebranch",
    shortname = "dbbranch",
    shortname = "dbb",
    category = "ramify",
    // `helm uninstall ramify-crds` must not delete every branch in the cluster.
    annotation("helm.sh/resource-policy", "keep"),
    namespaced,
    status = "DatabaseBranchStatus",
    doc = "A copy-on-write Postgres branch: its own data, compute, credentials and connection Secret.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parent.name"),
    printcolumn(name = "Fork LSN", type_ = "string", json_path = ".status.forkLsn"),
    printcolumn(name = "Compute", type_ = "string", json_path = ".status.compute.state"),
    printcolumn(name = "Exclusive", type_ = "string", json_path = ".status.exclusiveSize"),
    printcolumn(name = "Protected", type_ = "boolean", json_path = ".spec.protected", priority = 1),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,52}[a-z0-9])?$')").message("metadata.name must be a DNS label of at most 54 characters starting with a letter: it names the branch's Service (<name>-postgres)")
)]
#[x_kube(validation = Rule::new("!has(self.at) || has(self.parent)").message("spec.at needs spec.parent: a root branch starts empty"))]
#[x_kube(validation = Rule::new("!has(self.postgresVersion) || !has(self.parent)").message("spec.postgresVersion is only for roots: a fork runs its parent's version"))]
#[x_kube(validation = Rule::new("has(self.parent) == has(oldSelf.parent) && (!has(self.parent) || self.parent == oldSelf.parent)").message("spec.parent is immutable: create a new branch instead"))]
#[x_kube(validation = Rule::new("has(self.at) == has(oldSelf.at) && (!has(self.at) || self.at == oldSelf.at)").message("spec.at is immutable: create a new branch instead"))]
#[x_kube(validation = Rule::new("!has(self.expiresAt) || !has(self.ttl)").message("spec.expiresAt and spec.ttl exclude each other: give an absolute time or a lifetime"))]
#[x_kube(validation = Rule::new("!has(self.source) || !has(self.parent)").message("spec.source and spec.parent exclude each other: a branch either follows an external Postgres or forks another branch"))]
#[x_kube(validation = Rule::new("has(self.source) == has(oldSelf.source) && (!has(self.source) || self.source == oldSelf.source)").message("spec.source is immutable: create a new branch instead"))]
#[x_kube(validation = Rule::new("!has(self.source) || !has(self.postgresVersion)").message("spec.postgresVersion is only for new empty roots: a following branch runs its source's version"))]
#[x_kube(validation = Rule::new("!has(self.source) || (!has(self.ttl) && !has(self.expiresAt))").message("a following branch does not expire (spec.ttl, spec.expiresAt): delete it when you stop following"))]
#[x_kube(validation = Rule::new("!has(self.source) || !has(self.connection) || !has(self.connection.user)").message("spec.connection.user is not for a following branch: its logins are its source's roles"))]
#[x_kube(validation = Rule::new("has(self.backup) == has(oldSelf.backup) && (!has(self.backup) || self.backup == oldSelf.backup)").message("spec.backup is decided when the branch is created: create a new branch (a fork) instead"))]
#[x_kube(validation = Rule::new("!has(self.source) || !has(self.backup) || !has(self.backup.enabled) || !self.backup.enabled").message("a following branch is not backed up (its source is the original): fork it with spec.backup.enabled"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBranchSpec {
    /// The branch to fork; absent for a new, empty root. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Where a root's data comes from instead of starting empty: an external Postgres it
    /// follows as a read-only hot standby. Not with `parent`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BranchSource>,
    /// The point of the parent's history to start from; absent means now. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<BranchPoint>,
    /// Postgres major version of a new root (must be the operator's compute version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 13, max = 18))]
    pub postgres_version: Option<i32>,
    /// How the branch's Postgres runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSpec>,
    /// The role and database of the connection Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSpec>,
    /// Which other namespaces may fork this branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<SharingSpec>,
    /// A protected branch is not deleted, reset, restored or expired: the API server
    /// refuses its deletion (the chart's ValidatingAdmissionPolicy) and so does the
    /// operator. Set it to false first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// When the operator deletes the branch (with its compute and storage), an RFC 3339
    /// time. Can be set, moved or removed at any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The branch's lifetime from its creation (`2h`, `30m`, `168h`): another way to
    /// write `expiresAt`; `status.expiresAt` shows the resulting time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub ttl: Option<String>,
    /// Whether the storage node keeps the branch in its backup repository (continuous WAL
    /// archiving and base backups in object storage), so it survives the loss of the
    /// node's volume. Decided when the branch is created. Default: on for roots and for
    /// branches created protected, off for other forks; only with a repository in the
    /// chart's `storage.backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// The storage node (a Pod of the storage StatefulSet, like `ramify-storage-1`) the
    /// branch lives on. Default: a root goes to the node with the most free space, a fork
    /// to its parent's node (a copy-on-write clone, instant). A fork placed on another
    /// node than its parent's is a copy made through the backup repository: the parent
    /// must be durable, the fork starts at the parent's last archived WAL (at most the
    /// computes' archive_timeout, 60 s, behind it), `at` cannot be set, and the copy takes
    /// its own space. Changed later, it moves the branch there (a durable branch only):
    /// its compute stops, its node seals its WAL into the repository, the other node
    /// copies it through the last commit, and the branch carries on there with the same
    /// name, Secret, Service and password (`status.moving` while it goes). Removing it
    /// leaves the branch where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub storage_node: Option<String>,
}

/// `spec.backup`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Keep this branch in the backup repository. A durable fork of a durable parent
    /// stores only its own WAL there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Reference to the parent branch.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Name of the parent DatabaseBranch.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Its namespace; default: the branch's own. Another namespace must be allowed by
    /// the parent's `spec.sharing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where a root's data comes from.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.external)").message("spec.source needs external: the Postgres to follow"))]
#[serde(rename_all = "camelCase")]
pub struct BranchSource {
    /// An existing Postgres outside Ramify: the branch is a copy of it that keeps
    /// following it (streaming or logical replication), forkable at any point since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSource>,
}

/// The external Postgres a following branch copies and keeps following.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("(has(self.mode) && self.mode == 'logical') == has(self.publication)").message("spec.source.external: mode logical needs publication (the source's publication to subscribe to); physical takes none"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalSource {
    /// The key of a Secret in the branch's namespace holding the source's libpq
    /// connection URI (`postgresql://replicator:password@db.prod.svc:5432/postgres`: one
    /// network host) for a role with the REPLICATION attribute. The operator passes the
    /// password to the storage node apart from the rest; it never shows it.
    pub connection_secret_ref: SecretKeyRef,
    /// How to follow: `physical` (the default: a copy of the whole cluster kept current
    /// by streaming replication; same Postgres major) or `logical` (the source's schema
    /// and a subscription to `publication`: for managed services without physical
    /// replication; DDL is not replicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ReplicationMode>,
    /// A replication slot on the source, so that it keeps the WAL the branch has not
    /// received yet. Physical: optional, made when missing; without one, a branch that
    /// falls behind by more than the source's `wal_keep_size` must be recreated, and
    /// deleting the branch leaves the slot on the source. Logical: the subscription always
    /// makes one (default `ramify_<timeline>`) and deleting the branch drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,63}$"))]
    pub slot: Option<String>,
    /// With `mode: logical`: the publication on the source to subscribe to (`CREATE
    /// PUBLICATION bank FOR ALL TABLES` there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub publication: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key whose value is the connection string.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// How a following branch replicates its source.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Streaming replication: the branch is a hot standby of the whole source cluster.
    #[default]
    Physical,
    /// Logical replication: the source's schema, then a subscription to a publication.
    Logical,
}

impl From<ReplicationMode> for ramify_api::FollowMode {
    fn from(m: ReplicationMode) -> Self {
        match m {
            ReplicationMode::Physical => ramify_api::FollowMode::Physical,
            ReplicationMode::Logical => ramify_api::FollowMode::Logical,
        }
    }
}

impl From<ramify_api::FollowMode> for ReplicationMode {
    fn from(m: ramify_api::FollowMode) -> Self {
        match m {
            ramify_api::FollowMode::Physical => ReplicationMode::Physical,
            ramify_api::FollowMode::Logical => ReplicationMode::Logical,
        }
    }
}

/// A point in the parent's history: at most one of the fields.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("[has(self.lsn), has(self.time), has(self.snapshot)].filter(x, x).size() <= 1").message("spec.at takes at most one of lsn, time and snapshot"))]
#[serde(rename_all = "camelCase")]
pub struct BranchPoint {
    /// A WAL position `X/Y` (hex): everything up to and including the record there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"))]
    pub lsn: Option<String>,
    /// A time with a zone: every transaction committed at or before it. As Postgres
    /// prints a `timestamptz` (`2026-12-04 14:45:02.954757+00`, `… 14:45:02-08`,
    /// `… 14:45:02+05:30`) or in RFC 3339 (`2026-12-04T14:45:02Z`); a time without a zone
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(ramify_api::timestamp::cel_zoneless_rule()).message(kube::core::Message::Expression(ramify_api::timestamp::cel_zoneless_message("spec.at.time"))))]
    #[x_kube(validation = Rule::new(ramify_api::timestamp::cel_timestamp_rule()).message(kube::core::Message::Message(ramify_api::timestamp::cel_timestamp_message("spec.at.time"))))]
    pub time: Option<String>,
    /// A named snapshot of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub snapshot: Option<String>,
}

/// How a branch's Postgres runs.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComputeSpec {
    /// Idle time before the compute is stopped (`30s`, `5m`, `1h30m`); `0s` = never.
    /// Default: the operator's `--default-suspend-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub suspend_after: Option<String>,
    /// Resources of the Postgres container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Postgres settings (`work_mem: 64MB`). Refused, by name: anything that runs a
    /// program, loads code, names a server file, changes recovery, replication or
    /// archiving, or that Ramify manages (one list, `ramify_api::parameters`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(ramify_api::parameters::cel_rule()).message(ramify_api::parameters::CEL_MESSAGE))]
    pub postgres_parameters: BTreeMap<String, String>,
}

/// The role and database a branch's connection Secret names.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSpec {
    /// Login role (default `app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub user: Option<String>,
    /// Database (default `app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub database: Option<String>,
}

/// Namespaces allowed to fork this branch (its own namespace always is).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SharingSpec {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Observed state of a branch.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBranchStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary: Pending, Creating, Ready, Failed, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Ready`, `StorageReady`, `ComputeReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The storage timeline holding the branch's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineRef>,
    /// WAL position the branch was forked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_lsn: Option<String>,
    /// Time of the last transaction the fork includes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_time: Option<DateTime<Utc>>,
    /// How to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// Whether the compute runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeStatus>,
    /// The proxy listener port of this branch, stable for its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<i32>,
    /// The timeline the branch's role and password were last set on (for a following
    /// branch, which has no role of its own: the timeline once its compute first served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_timeline: Option<String>,
    /// Size of the branch's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<i64>,
    /// Bytes only this branch holds (not shared with its parent or other branches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_bytes: Option<i64>,
    /// `exclusiveBytes` for people (`12Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_size: Option<String>,
    /// When the branch expires (`spec.expiresAt`, or creation + `spec.ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The part of the branch's history a restore, or a child `at` a time or LSN, can
    /// reach: from its creation (or the oldest point the restore window keeps) on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window: Option<RestoreWindowStatus>,
    /// A move to another storage node under way (`spec.storageNode` changed), or one
    /// whose leftover copy is still to be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<BranchMove>,
    /// For a branch with `spec.source.external`: its source and how far behind it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<FollowingStatus>,
}

/// A following branch's source and replication state.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FollowingStatus {
    /// The source's connection string, without its password.
    pub source: String,
    /// The replication slot it streams from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// `physical` (a hot standby) or `logical` (a subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ReplicationMode>,
    /// The publication a logical follower subscribes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// Whether WAL is streaming from the source now (absent while the compute starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// WAL received from the source and flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<String>,
    /// WAL replayed: what the branch shows, and what a child at its latest state gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Bytes of the source's WAL not replayed here yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Seconds since the last replayed commit while WAL waits for replay; 0 when
    /// everything received is replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// When the last message from the source arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_received_at: Option<DateTime<Utc>>,
    /// A physical follower's warm standby on its storage node, which serves its next fork
    /// at latest without replay: `ready`, `catching up`, `busy`, `failed` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_standby: Option<String>,
    /// When the operator read these figures (every 15 s or so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

/// The range of a branch's history that can be restored or forked.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreWindowStatus {
    /// The oldest time that can be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_time: Option<DateTime<Utc>>,
    /// The oldest WAL position that can be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_lsn: Option<String>,
    /// The newest time, while the compute is suspended (its last checkpoint); absent
    /// while it runs: the window then reaches the present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_time: Option<DateTime<Utc>>,
    /// The newest WAL position, while the compute is suspended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_lsn: Option<String>,
}

/// Summary of a branch's state.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for something outside the branch (its parent, a storage node).
    Pending,
    /// Storage or compute being set up.
    Creating,
    /// Connectable (the compute may be suspended: connecting wakes it).
    Ready,
    /// The spec cannot be satisfied; the `Ready` condition says why.
    Failed,
    /// Being deleted.
    Deleting,
}

/// `status.moving`: the branch's timeline going from one storage node to another.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BranchMove {
    /// The node it leaves.
    pub from: String,
    /// The node it goes to.
    pub to: String,
    /// Where its node sealed its WAL: the copy holds every record up to here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_lsn: Option<String>,
}

/// Which timeline holds a branch's data, and where.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TimelineRef {
    /// Timeline id (a UUID).
    pub id: String,
    /// Name of the `Timeline` object in the storage namespace.
    pub name: String,
    /// Storage node (Pod of the storage StatefulSet) holding it.
    pub storage_node: String,
}

/// Connection facts (the password is only in the Secret).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// Host name of the branch's Service.
    pub host: String,
    /// Port of the branch's Service.
    pub port: i32,
    /// Database name.
    pub database: String,
    /// Login role.
    pub user: String,
    /// Secret (same namespace) with host, port, database, user, password and uri.
    pub secret_name: String,
}

/// Compute state.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComputeStatus {
    /// Running, Starting or Suspended.
    pub state: ComputeState,
    /// The compute Pod (storage namespace) while one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// When the compute was last started or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<DateTime<Utc>>,
    /// When the compute was last started on request (`ramify.dev/wake-request`) rather
    /// than by a client through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woken_on_request: Option<DateTime<Utc>>,
}

/// Whether a branch's Postgres runs.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeState {
    /// Accepting connections.
    Running,
    /// Pod created, Postgres not ready yet.
    Starting,
    /// No compute; the next connection wakes it.
    #[default]
    Suspended,
}

impl DatabaseBranch {
    /// The parent's namespace (the branch's own when not given).
    pub fn parent_namespace(&self) -> Option<String> {
        let p = self.spec.parent.as_ref()?;
        p.namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())
    }

    /// The external Postgres the branch follows (`spec.source.external`), if any.
    pub fn external_source(&self) -> Option<&ExternalSource> {
        self.spec.source.as_ref()?.external.as_ref()
    }

    /// Whether `spec.protected` is true.
    pub fn is_protected(&self) -> bool {
        self.spec.protected == Some(true)
    }

    /// When the branch expires: `spec.expiresAt`, or its creation plus `spec.ttl`
    /// (`Err` for a ttl that does not parse; `None` when neither is set or the object
    /// has no creation time yet).
    pub fn expires_at(&self) -> Result<Option<DateTime<Utc>>, String> {
        if let Some(at) = self.spec.expires_at {
            return Ok(Some(at));
        }
        let Some(ttl) = self.spec.ttl.as_deref() else {
            return Ok(None);
        };
        let ttl = crate::duration::parse(ttl)?;
        let Some(created) = self.metadata.creation_timestamp.as_ref() else {
            return Ok(None);
        };
        let created = DateTime::<Utc>::from_timestamp(
            created.0.as_second(),
            created.0.subsec_nanosecond().max(0) as u32,
        )
        .ok_or_else(|| "creationTimestamp out of range".to_string())?;
        let ttl = chrono::Duration::from_std(ttl).map_err(|e| e.to_string())?;
        Ok(created.checked_add_signed(ttl))
    }

    /// Whether an admin let the deletion go on without the storage node
    /// (`ramify.dev/forget-storage: "true"`).
    pub fn forgets_storage(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(FORGET_STORAGE_ANNOTATION))
            .is_some_and(|v| v == "true")
    }

    /// Whether the user asked that deleting this branch deletes its children first.
    pub fn deletes_children(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETE_CHILDREN_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}
