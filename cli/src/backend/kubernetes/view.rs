//! What the CLI prints about Ramify's Kubernetes objects, as pure functions of them: rows
//! of the branch tree, `branch get`, progress lines, conditions and events, restores,
//! checkpoints and `status`. Shaped like local mode's output (`render`).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use ramify_crd::{
    BranchCheckpoint, BranchRestore, CheckpointPhase, ComputeState, DatabaseBranch, Phase,
    RestorePhase,
};
use serde::Serialize;

use crate::backend::BranchRow;
use crate::render::{age, fields, human_bytes, restorable, table, timestamp, timestamp_secs};

/// A Kubernetes time as chrono's.
pub fn time(t: &Time) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// An object's creation time (now for one not created yet).
pub fn created(b: &impl ResourceExt) -> DateTime<Utc> {
    b.meta()
        .creation_timestamp
        .as_ref()
        .map_or_else(Utc::now, time)
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "pending",
        Phase::Creating => "creating",
        Phase::Ready => "ready",
        Phase::Failed => "failed",
        Phase::Deleting => "deleting",
    }
}

fn compute_word(s: ComputeState) -> &'static str {
    match s {
        ComputeState::Running => "running",
        ComputeState::Starting => "starting",
        ComputeState::Suspended => "suspended",
    }
}

/// The STATE column: the compute's state once the branch is Ready, else its phase
/// (`pending` before the operator saw it).
pub fn state(b: &DatabaseBranch) -> String {
    let st = b.status.as_ref();
    if b.metadata.deletion_timestamp.is_some() {
        return "deleting".to_string();
    }
    match st.and_then(|s| s.phase) {
        Some(Phase::Ready) => compute_word(
            st.and_then(|s| s.compute.as_ref())
                .map_or(ComputeState::Suspended, |c| c.state),
        )
        .to_string(),
        Some(p) => phase_word(p).to_string(),
        None => "pending".to_string(),
    }
}

/// A branch as a row of the tree.
pub fn row(b: &DatabaseBranch, with_namespace: bool) -> BranchRow {
    let st = b.status.as_ref();
    let ns = b.namespace();
    BranchRow {
        namespace: if with_namespace { ns.clone() } else { None },
        name: b.name_any(),
        parent: b.spec.parent.as_ref().map(|p| {
            let pns = p.namespace.clone().or(ns.clone());
            (if with_namespace { pns } else { None }, p.name.clone())
        }),
        state: state(b),
        fork_lsn: st.and_then(|s| s.fork_lsn.clone()),
        exclusive_bytes: st
            .and_then(|s| s.exclusive_bytes)
            .and_then(|b| u64::try_from(b).ok()),
        port: st
            .and_then(|s| s.proxy_port)
            .and_then(|p| u16::try_from(p).ok()),
        created_at: created(b),
        protected: b.is_protected(),
        expires_at: st.and_then(|s| s.expires_at).or(b.spec.expires_at),
        restorable_from: st
            .and_then(|s| s.restore_window.as_ref())
            .and_then(|w| w.from_time),
        restorable_from_lsn: st
            .and_then(|s| s.restore_window.as_ref())
            .and_then(|w| w.from_lsn.clone()),
    }
}

/// `Ready=False (Creating: storage timeline being forked), StorageReady=True`.
pub fn conditions(cs: &[Condition]) -> String {
    if cs.is_empty() {
        return "no conditions yet (the operator has not seen it)".to_string();
    }
    cs.iter()
        .map(|c| {
            let mut s = format!("{}={}", c.type_, c.status);
            match (
                c.reason.is_empty(),
                c.message.is_empty() || c.status == "True",
            ) {
                (true, true) => {}
                (false, true) => {
                    let _ = write!(s, " ({})", c.reason);
                }
                (true, false) => {
                    let _ = write!(s, " ({})", c.message);
                }
                (false, false) => {
                    let _ = write!(s, " ({}: {})", c.reason, c.message);
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The progress line of `--wait`: `team-a/dev: creating; Ready=False (…), StorageReady=True`.
pub fn progress(b: &DatabaseBranch) -> String {
    let cs = b.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    format!(
        "{}/{}: {}; {}",
        b.namespace().unwrap_or_default(),
        b.name_any(),
        state(b),
        conditions(cs)
    )
}

/// Why a branch is not (yet) what was waited for: its state, conditions and the last
/// Warning events, on one line.
pub fn stuck(b: &DatabaseBranch, warnings: &[String]) -> String {
    let mut s = progress(b);
    if !warnings.is_empty() {
        let _ = write!(s, "; last Warning events: {}", warnings.join("; "));
    }
    s
}

/// `Reason: message` of a Warning event.
pub fn event_line(reason: Option<&str>, message: Option<&str>) -> String {
    match (reason, message) {
        (Some(r), Some(m)) => format!("{r}: {}", m.trim()),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.trim().to_string(),
        (None, None) => "(empty event)".to_string(),
    }
}

/// How a branch is asked for: `lsn 0/16B3748`, `time …`, `snapshot NAME`, `latest`.
fn asked_for(b: &DatabaseBranch) -> String {
    match &b.spec.at {
        None if b.spec.parent.is_some() => "latest".to_string(),
        None => "-".to_string(),
        Some(at) => match (&at.lsn, &at.time, &at.snapshot) {
            (Some(l), _, _) => l.clone(),
            (_, Some(t), _) => ramify_api::parse_timestamp(t).map_or_else(|_| t.clone(), timestamp),
            (_, _, Some(s)) => format!("snapshot:{s}"),
            _ => "latest".to_string(),
        },
    }
}

fn parent_label(b: &DatabaseBranch) -> Option<String> {
    let p = b.spec.parent.as_ref()?;
    Some(match &p.namespace {
        Some(ns) if Some(ns) != b.namespace().as_ref() => format!("{ns}/{}", p.name),
        _ => p.name.clone(),
    })
}

fn fork_point(b: &DatabaseBranch) -> String {
    let st = b.status.as_ref();
    match (
        st.and_then(|s| s.fork_lsn.as_ref()),
        st.and_then(|s| s.fork_time),
    ) {
        (Some(l), Some(t)) => format!("{l} ({})", timestamp(t)),
        (Some(l), None) => l.clone(),
        (None, Some(t)) => timestamp(t),
        (None, None) => "-".to_string(),
    }
}

fn suspends(b: &DatabaseBranch) -> String {
    match b
        .spec
        .compute
        .as_ref()
        .and_then(|c| c.suspend_after.as_deref())
    {
        None => "the operator's default".to_string(),
        Some("0s") | Some("0") => "never".to_string(),
        Some(d) => format!("{d} idle"),
    }
}

fn bytes(v: Option<i64>) -> String {
    v.and_then(|b| u64::try_from(b).ok())
        .map_or_else(|| "-".to_string(), human_bytes)
}

/// `branch create`: what was created and, once Ready, how to connect.
pub fn created_branch(
    b: &DatabaseBranch,
    uri: Option<&str>,
    waited: Option<std::time::Duration>,
    program: &str,
) -> String {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let mut out = match (parent_label(b), waited) {
        (Some(p), Some(w)) => format!(
            "created branch {name} from {p} in namespace {ns}; Ready after {:.1} s\n",
            w.as_secs_f64()
        ),
        (None, Some(w)) => format!(
            "created empty root branch {name} in namespace {ns}; Ready after {:.1} s\n",
            w.as_secs_f64()
        ),
        (Some(p), None) => format!("created branch {name} from {p} in namespace {ns}\n"),
        (None, None) => format!("created empty root branch {name} in namespace {ns}\n"),
    };
    if waited.is_none() {
        let _ = writeln!(
            out,
            "  the operator is creating it: wait with `{program} branch get {name} -n {ns}` (or create with --wait)"
        );
        return out;
    }
    let mut pairs = Vec::new();
    if b.spec.parent.is_some() {
        pairs.push(("fork point", fork_point(b)));
    }
    pairs.push((
        "exclusive",
        bytes(b.status.as_ref().and_then(|s| s.exclusive_bytes)),
    ));
    pairs.push(("suspends", suspends(b)));
    pairs.push((
        "uri",
        uri.map_or_else(
            || format!("in Secret {name}-postgres (key uri)"),
            str::to_string,
        ),
    ));
    pairs.push((
        "from here",
        format!(
            "{program} psql {name} -n {ns}   or   {program} branch connect {name} -n {ns} --port-forward"
        ),
    ));
    out.push_str(&fields(&pairs));
    out
}

/// `branch get`: every fact about one branch.
pub fn branch_details(b: &DatabaseBranch, now: DateTime<Utc>) -> String {
    let st = b.status.as_ref();
    let mut out = format!("{}/{}\n", b.namespace().unwrap_or_default(), b.name_any());
    let compute = st.and_then(|s| s.compute.as_ref());
    let mut pairs = vec![
        ("parent", parent_label(b).unwrap_or_else(|| "-".to_string())),
        (
            "phase",
            st.and_then(|s| s.phase)
                .map_or_else(|| "-".to_string(), |p| format!("{p:?}")),
        ),
        (
            "state",
            match compute {
                Some(c) => match &c.pod {
                    Some(pod) => format!("{} (pod {pod})", compute_word(c.state)),
                    None => compute_word(c.state).to_string(),
                },
                None => state(b),
            },
        ),
        (
            "conditions",
            conditions(st.map_or(&[][..], |s| &s.conditions[..])),
        ),
    ];
    if let Some(c) = st.and_then(|s| s.connection.as_ref()) {
        pairs.push(("service", format!("{}:{}", c.host, c.port)));
        pairs.push(("database", c.database.clone()));
        pairs.push(("user", c.user.clone()));
        pairs.push(("secret", c.secret_name.clone()));
    }
    pairs.extend([
        (
            "proxy port",
            st.and_then(|s| s.proxy_port)
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
        ),
        ("asked for", asked_for(b)),
        ("fork point", fork_point(b)),
        (
            "restorable",
            match st.and_then(|s| s.restore_window.as_ref()) {
                // Older operators did not report it.
                None => "-".to_string(),
                Some(w) => restorable(
                    (w.from_time, w.from_lsn.clone()),
                    Some((w.to_time, w.to_lsn.clone())),
                ),
            },
        ),
        ("logical", bytes(st.and_then(|s| s.logical_bytes))),
        ("exclusive", bytes(st.and_then(|s| s.exclusive_bytes))),
        ("suspends", suspends(b)),
        (
            "timeline",
            st.and_then(|s| s.timeline.as_ref()).map_or_else(
                || "-".to_string(),
                |t| format!("{} on {}", t.id, t.storage_node),
            ),
        ),
        (
            "created",
            format!(
                "{} ({} ago)",
                timestamp_secs(created(b)),
                age(created(b), now)
            ),
        ),
        (
            "protected",
            if b.is_protected() { "yes" } else { "no" }.to_string(),
        ),
        (
            "expires",
            match st.and_then(|s| s.expires_at).or(b.spec.expires_at) {
                None => "never".to_string(),
                Some(t) if t <= now => format!("{} (due)", timestamp_secs(t)),
                Some(t) => format!("{} (in {})", timestamp_secs(t), age(now, t)),
            },
        ),
    ]);
    out.push_str(&fields(&pairs));
    out
}

/// `branch wake|suspend` once the operator is done.
pub fn state_line(b: &DatabaseBranch) -> String {
    let st = b.status.as_ref();
    match st.and_then(|s| s.compute.as_ref()) {
        Some(c) if c.state == ComputeState::Running => format!(
            "branch {} is running{}\n",
            b.name_any(),
            c.pod
                .as_ref()
                .map(|p| format!(" (pod {p})"))
                .unwrap_or_default()
        ),
        Some(c) => format!(
            "branch {} is {}; connecting to it wakes it\n",
            b.name_any(),
            compute_word(c.state)
        ),
        None => format!("branch {} has no compute yet\n", b.name_any()),
    }
}

/// `branch reset|restore` once the BranchRestore has succeeded.
pub fn restore_done(r: &BranchRestore, reset: bool, uri: Option<&str>) -> String {
    let st = r.status.clone().unwrap_or_default();
    let elapsed = match (st.start_time, st.completion_time) {
        (Some(a), Some(b)) => format!(" in {} ms", (b - a).num_milliseconds().max(0)),
        _ => String::new(),
    };
    let source = st.source.clone().unwrap_or_else(|| "-".to_string());
    let mut out = if reset {
        format!(
            "reset branch {} to {source}{elapsed}; open sessions were ended\n",
            r.spec.branch
        )
    } else {
        format!(
            "restored branch {} to {source}{elapsed}; open sessions were ended\n",
            r.spec.branch
        )
    };
    let mut pairs = vec![(
        "fork lsn",
        st.fork_lsn.clone().unwrap_or_else(|| "-".to_string()),
    )];
    pairs.push((
        "timeline",
        match (&st.timeline, &st.previous_timeline, &st.backup_branch) {
            (Some(t), Some(p), Some(_)) => format!("{t} (was {p})"),
            (Some(t), Some(p), None) => format!("{t} (was {p}, deleted)"),
            (Some(t), None, _) => t.clone(),
            (None, _, _) => "-".to_string(),
        },
    ));
    if let Some(backup) = &st.backup_branch {
        pairs.push((
            "backup",
            format!("{backup} (the state before; expires after the restore window)"),
        ));
    }
    pairs.push(("restore", format!("BranchRestore {}", r.name_any())));
    if let Some(u) = uri {
        pairs.push(("uri", format!("{u} (unchanged)")));
    }
    out.push_str(&fields(&pairs));
    out
}

/// The progress line of a BranchRestore.
pub fn restore_progress(r: &BranchRestore) -> String {
    let st = r.status.as_ref();
    format!(
        "{}: {}; {}",
        r.name_any(),
        st.and_then(|s| s.phase)
            .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
        conditions(st.map_or(&[][..], |s| &s.conditions[..]))
    )
}

/// Whether a BranchRestore is done, and how.
pub fn restore_finished(r: &BranchRestore) -> Option<bool> {
    match r.status.as_ref()?.phase? {
        RestorePhase::Succeeded => Some(true),
        RestorePhase::Failed => Some(false),
        RestorePhase::Pending | RestorePhase::Running => None,
    }
}

/// Whether a checkpoint is done, and how.
pub fn checkpoint_finished(c: &BranchCheckpoint) -> Option<bool> {
    match c.status.as_ref()?.phase? {
        CheckpointPhase::Ready => Some(true),
        CheckpointPhase::Failed => Some(false),
        CheckpointPhase::Pending => None,
    }
}

/// `cp-N`, N one more than the highest `cp-N` in the namespace (a BranchCheckpoint's name
/// is unique in its namespace, not per branch).
pub fn next_checkpoint_name<'a>(existing: impl IntoIterator<Item = &'a str>) -> String {
    let highest = existing
        .into_iter()
        .filter_map(|n| n.strip_prefix("cp-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("cp-{}", highest + 1)
}

/// `checkpoint create` once Ready.
pub fn created_checkpoint(c: &BranchCheckpoint, program: &str) -> String {
    let st = c.status.clone().unwrap_or_default();
    let branch = &c.spec.branch;
    let name = c.name_any();
    format!(
        "checkpoint {name} of {branch} at {} ({}); revert with: {program} branch restore {branch} --at checkpoint:{name}\n",
        st.lsn.unwrap_or_else(|| "-".to_string()),
        st.time.map_or_else(|| "-".to_string(), timestamp),
    )
}

/// `checkpoint list`: oldest first, with the timeline holding each one's history.
pub fn checkpoint_list(
    branch: &str,
    list: &[BranchCheckpoint],
    branch_timeline: Option<&str>,
    now: DateTime<Utc>,
    program: &str,
) -> String {
    if list.is_empty() {
        return format!(
            "no checkpoints: create one with `{program} checkpoint create {branch} NAME`\n"
        );
    }
    let mut sorted: Vec<&BranchCheckpoint> = list.iter().collect();
    sorted.sort_by_key(|c| (created(*c), c.name_any()));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|c| {
            let st = c.status.as_ref();
            let tl = st.and_then(|s| s.timeline.as_ref());
            vec![
                c.name_any(),
                st.and_then(|s| s.phase)
                    .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
                st.and_then(|s| s.lsn.clone())
                    .unwrap_or_else(|| "-".to_string()),
                st.and_then(|s| s.time)
                    .map_or_else(|| "-".to_string(), timestamp_secs),
                age(created(c), now),
                match tl {
                    Some(t) if Some(t.id.as_str()) == branch_timeline => "this branch".to_string(),
                    Some(t) => t.name.clone(),
                    None => "-".to_string(),
                },
            ]
        })
        .collect();
    table(
        &["NAME", "PHASE", "LSN", "TIME", "AGE", "HISTORY ON"],
        &rows,
    )
}

/// One component of `status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    /// `2/2 ready`.
    pub summary: String,
    pub healthy: bool,
}

/// One storage node of `status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeStatus {
    pub pod: String,
    pub ready: bool,
    pub clone_method: Option<String>,
    pub filesystem: Option<String>,
    pub capacity_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    /// Why the node's own status could not be read, if it could not.
    pub error: Option<String>,
}

/// `status` on a cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub storage_namespace: String,
    pub operator: ComponentStatus,
    pub proxy: ComponentStatus,
    pub storage: Vec<StorageNodeStatus>,
    /// `12 (10 ready)` when branches could be listed.
    pub branches: Option<String>,
    /// What is unhealthy, and why: one line each.
    pub problems: Vec<String>,
}

/// `status` on a cluster, for people.
pub fn cluster_status(s: &ClusterStatus) -> String {
    let mut out = if s.problems.is_empty() {
        format!("Ramify in namespace {} is healthy\n", s.storage_namespace)
    } else {
        format!(
            "Ramify in namespace {} is NOT healthy ({} problem{})\n",
            s.storage_namespace,
            s.problems.len(),
            if s.problems.len() == 1 { "" } else { "s" }
        )
    };
    let mut pairs = vec![
        ("operator", s.operator.summary.clone()),
        ("proxy", s.proxy.summary.clone()),
    ];
    if s.storage.is_empty() {
        pairs.push(("storage", "no storage node Pods".to_string()));
    }
    for n in &s.storage {
        let detail = match (&n.clone_method, n.used_bytes, n.capacity_bytes) {
            (Some(m), Some(u), Some(c)) => format!(
                "{}, clone method {m}{}, {} used of {}",
                if n.ready { "ready" } else { "NOT ready" },
                n.filesystem
                    .as_ref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default(),
                human_bytes(u),
                human_bytes(c)
            ),
            _ => format!(
                "{}, {}",
                if n.ready { "ready" } else { "NOT ready" },
                n.error.as_deref().unwrap_or("status unknown")
            ),
        };
        pairs.push(("storage", format!("{}: {detail}", n.pod)));
    }
    if let Some(b) = &s.branches {
        pairs.push(("branches", b.clone()));
    }
    out.push_str(&fields(&pairs));
    for p in &s.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn branch(v: serde_json::Value) -> DatabaseBranch {
        serde_json::from_value(v).unwrap()
    }

    fn ready_dev() -> DatabaseBranch {
        branch(json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "dev", "namespace": "team-a", "creationTimestamp": "2026-03-01T10:00:00Z"},
            "spec": {"parent": {"name": "main", "namespace": "prod"}, "compute": {"suspendAfter": "5m"}},
            "status": {
                "phase": "Ready",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-03-01T10:00:01Z"},
                    {"type": "ComputeReady", "status": "True", "reason": "Running", "message": "", "lastTransitionTime": "2026-03-01T10:00:01Z"}
                ],
                "forkLsn": "0/16B3748", "forkTime": "2026-03-01T09:59:59Z",
                "timeline": {"id": "9c1e", "name": "tl-9c1e", "storageNode": "ramify-storage-0"},
                "connection": {"host": "dev-postgres.team-a.svc.cluster.local", "port": 5432, "database": "app", "user": "app", "secretName": "dev-postgres"},
                "compute": {"state": "Suspended"},
                "proxyPort": 20001, "logicalBytes": 41943040, "exclusiveBytes": 1258291,
                "restoreWindow": {"fromTime": "2026-03-01T09:59:59Z", "fromLsn": "0/16B3748", "toTime": "2026-03-01T11:00:00Z", "toLsn": "0/3000000"}
            }
        }))
    }

    #[test]
    fn rows_carry_namespaces_only_with_all_namespaces() {
        let b = ready_dev();
        let r = row(&b, true);
        assert_eq!(r.namespace.as_deref(), Some("team-a"));
        assert_eq!(r.parent, Some((Some("prod".into()), "main".into())));
        assert_eq!(r.state, "suspended");
        assert_eq!(r.port, Some(20001));
        assert_eq!(r.exclusive_bytes, Some(1258291));
        assert_eq!(r.restorable_from_lsn.as_deref(), Some("0/16B3748"));
        assert!(r.restorable_from.is_some());
        let r = row(&b, false);
        assert_eq!((r.namespace, r.parent), (None, Some((None, "main".into()))));
    }

    #[test]
    fn state_is_the_phase_until_ready() {
        let b = branch(json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {}}));
        assert_eq!(state(&b), "pending");
        let b = branch(
            json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {}, "status": {"phase": "Creating"}}),
        );
        assert_eq!(state(&b), "creating");
    }

    #[test]
    fn progress_and_stuck_lines_show_conditions_and_warnings() {
        let b = branch(json!({
            "metadata": {"name": "dev", "namespace": "team-a"}, "spec": {},
            "status": {"phase": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "ParentNotFound", "message": "parent team-a/main does not exist", "lastTransitionTime": "2026-03-01T10:00:01Z"},
                {"type": "StorageReady", "status": "True", "reason": "Forked", "message": "ok", "lastTransitionTime": "2026-03-01T10:00:01Z"}
            ]}
        }));
        assert_eq!(
            progress(&b),
            "team-a/dev: pending; Ready=False (ParentNotFound: parent team-a/main does not exist), StorageReady=True (Forked)"
        );
        assert_eq!(
            stuck(&b, &["StorageError: disk full".to_string()]),
            "team-a/dev: pending; Ready=False (ParentNotFound: parent team-a/main does not exist), StorageReady=True (Forked); last Warning events: StorageError: disk full"
        );
        let fresh = branch(json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {}}));
        assert!(progress(&fresh).contains("no conditions yet"));
    }

    #[test]
    fn created_branch_golden() {
        let out = created_branch(
            &ready_dev(),
            Some("postgresql://app:pw@dev-postgres.team-a.svc.cluster.local:5432/app"),
            Some(std::time::Duration::from_millis(3240)),
            "kubectl ramify",
        );
        assert_eq!(
            out,
            "\
created branch dev from prod/main in namespace team-a; Ready after 3.2 s
  fork point:  0/16B3748 (2026-03-01T09:59:59.000Z)
  exclusive:   1.2 MiB
  suspends:    5m idle
  uri:         postgresql://app:pw@dev-postgres.team-a.svc.cluster.local:5432/app
  from here:   kubectl ramify psql dev -n team-a   or   kubectl ramify branch connect dev -n team-a --port-forward
"
        );
        let not_waited = created_branch(&ready_dev(), None, None, "ramify --kube");
        assert!(
            not_waited.contains("ramify --kube branch get dev -n team-a"),
            "{not_waited}"
        );
    }

    #[test]
    fn branch_details_golden() {
        assert_eq!(
            branch_details(&ready_dev(), now()),
            "\
team-a/dev
  parent:      prod/main
  phase:       Ready
  state:       suspended
  conditions:  Ready=True (Ready), ComputeReady=True (Running)
  service:     dev-postgres.team-a.svc.cluster.local:5432
  database:    app
  user:        app
  secret:      dev-postgres
  proxy port:  20001
  asked for:   latest
  fork point:  0/16B3748 (2026-03-01T09:59:59.000Z)
  restorable:  2026-03-01T09:59:59.000Z (lsn 0/16B3748) to 2026-03-01T11:00:00.000Z (lsn 0/3000000)
  logical:     40.0 MiB
  exclusive:   1.2 MiB
  suspends:    5m idle
  timeline:    9c1e on ramify-storage-0
  created:     2026-03-01T10:00:00Z (2h ago)
  protected:   no
  expires:     never
"
        );
    }

    #[test]
    fn checkpoint_names_count_over_the_namespace() {
        assert_eq!(next_checkpoint_name([]), "cp-1");
        assert_eq!(
            next_checkpoint_name(["cp-2", "step-3", "cp-10", "cp-x"]),
            "cp-11"
        );
    }

    #[test]
    fn restore_golden() {
        let r: BranchRestore = serde_json::from_value(json!({
            "metadata": {"name": "dev-restore-20260301t120000z", "namespace": "team-a"},
            "spec": {"branch": "dev", "source": {"checkpoint": "step-3"}},
            "status": {"phase": "Succeeded", "source": "checkpoint step-3 of dev (0/5000128)",
                "startTime": "2026-03-01T12:00:00Z", "completionTime": "2026-03-01T12:00:01.250Z",
                "previousTimeline": "aaa", "timeline": "bbb", "forkLsn": "0/5000128",
                "backupBranch": "dev-before-restore-20260301t120000z"}
        }))
        .unwrap();
        assert_eq!(restore_finished(&r), Some(true));
        assert_eq!(
            restore_done(&r, false, None),
            "\
restored branch dev to checkpoint step-3 of dev (0/5000128) in 1250 ms; open sessions were ended
  fork lsn:  0/5000128
  timeline:  bbb (was aaa)
  backup:    dev-before-restore-20260301t120000z (the state before; expires after the restore window)
  restore:   BranchRestore dev-restore-20260301t120000z
"
        );
    }

    #[test]
    fn status_golden() {
        let s = ClusterStatus {
            storage_namespace: "ramify-system".into(),
            operator: ComponentStatus {
                name: "operator".into(),
                summary: "1/1 ready".into(),
                healthy: true,
            },
            proxy: ComponentStatus {
                name: "proxy".into(),
                summary: "0/1 ready".into(),
                healthy: false,
            },
            storage: vec![StorageNodeStatus {
                pod: "ramify-storage-0".into(),
                ready: true,
                clone_method: Some("reflink".into()),
                filesystem: Some("xfs".into()),
                capacity_bytes: Some(8 << 30),
                used_bytes: Some(1 << 30),
                error: None,
            }],
            branches: Some("3 (2 ready)".into()),
            problems: vec![
                "proxy Pod ramify-proxy-7d9: not ready: container proxy waiting: CrashLoopBackOff"
                    .into(),
            ],
        };
        assert_eq!(
            cluster_status(&s),
            "\
Ramify in namespace ramify-system is NOT healthy (1 problem)
  operator:  1/1 ready
  proxy:     0/1 ready
  storage:   ramify-storage-0: ready, clone method reflink (xfs), 1.0 GiB used of 8.0 GiB
  branches:  3 (2 ready)
problem: proxy Pod ramify-proxy-7d9: not ready: container proxy waiting: CrashLoopBackOff
"
        );
    }
}
