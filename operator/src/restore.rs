//! The BranchRestore controller: resets a branch to its parent's latest state, or
//! restores it to a point of its own or another branch's history, the way local mode
//! does. History is never rewritten: the branch is moved onto a new timeline, forked on
//! its storage node, and keeps its name, Service, Secret, role and password. The timeline
//! it leaves is deleted, or handed to a backup branch `<name>-before-restore-<time>`.
//!
//! A restore runs once, in three steps that each survive an operator restart:
//! 1. resolve the source and fork the new timeline (its id is the BranchRestore's uid,
//!    so a repeated fork finds the first) and record it: phase `Running`;
//! 2. under the branch's lock, stop the branch's compute (its sessions end), point the
//!    branch's status at the new timeline, and delete or hand over the old one;
//! 3. once the branch reconciler has the branch Ready on the new timeline (its compute
//!    started, its password set): phase `Succeeded`.
//!
//! Anything refused before step 2 (an unknown source, a point outside the restore window,
//! a protected branch) is phase `Failed` with the branch unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use ramify_api::{At, CreateTimeline, TimelineId};
use ramify_crd::{
    BranchCheckpoint, BranchRestore, BranchRestoreStatus, CheckpointPhase, DatabaseBranch,
    DatabaseBranchSpec, RestorePhase, Timeline, TimelineRef,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::branch::{
    self, publish, retry_with_event, storage_err, Error, ADOPT_CREDENTIALS_ANNOTATION,
    ADOPT_TIMELINE_ANNOTATION,
};
use crate::build::{self, FIELD_MANAGER};
use crate::cleanup::delete_if_exists;
use crate::compute;
use crate::conditions::{self, READY};
use crate::context::Context;
use crate::validate::validate_spec;

/// The restore's condition.
pub const SUCCEEDED: &str = "Succeeded";
/// Annotation (and label) of a backup branch: the branch whose earlier state it keeps.
pub const BACKUP_OF: &str = "ramify.dev/backup-of";
/// Annotation of a backup branch: the BranchRestore that made it.
pub const RESTORED_BY: &str = "ramify.dev/restored-by";
/// Kubernetes branch names are DNS labels of at most 54 characters (their Service
/// appends `-postgres`).
const BRANCH_NAME_MAX: usize = 54;
/// Condition reason once the branch is on its new timeline and the old one is dealt with.
const WAITING_FOR_BRANCH: &str = "WaitingForBranch";

/// Why a step stopped.
enum Halt {
    /// Refused: phase Failed, nothing changed.
    Failed(&'static str, String),
    /// Not yet possible: phase Pending, tried again.
    Pending(&'static str, String),
    /// A real error: retried with backoff.
    Error(Error),
}

impl<E: Into<Error>> From<E> for Halt {
    fn from(e: E) -> Halt {
        Halt::Error(e.into())
    }
}

/// The point of history the branch becomes.
struct Source {
    timeline: TimelineRef,
    at: At,
    describe: String,
}

/// Reconciles one restore.
#[instrument(skip_all, fields(restore = %r.name_any(), namespace = %r.namespace().unwrap_or_default()))]
pub async fn reconcile(r: Arc<BranchRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    if finished(&r) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let api: Api<BranchRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let lock = ctx.branch_lock(&ns, &r.spec.branch);
    let _guard = lock.lock().await;
    let Some(r) = api.get_opt(&r.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if finished(&r) {
        return Ok(Action::await_change());
    }
    let old = r.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let result = run(&r, &ctx, &mut status).await;
    let action = match result {
        Ok(action) => Ok(action),
        Err(Halt::Failed(reason, message)) => {
            status.phase = Some(RestorePhase::Failed);
            status.completion_time = Some(Utc::now());
            set(&r, &mut status, false, reason, message);
            Ok(Action::await_change())
        }
        Err(Halt::Pending(reason, message)) => {
            if status.phase.is_none() {
                status.phase = Some(RestorePhase::Pending);
            }
            set(&r, &mut status, false, reason, message);
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Err(Halt::Error(e)) => Err(e),
    };
    save(&api, &r, &old, &status, &ctx).await?;
    if action.is_ok() {
        ctx.backoff.reset(&r.uid().unwrap_or_default());
    }
    action
}

fn finished(r: &BranchRestore) -> bool {
    matches!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    )
}

fn set(
    r: &BranchRestore,
    status: &mut BranchRestoreStatus,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
) {
    conditions::set(
        &mut status.conditions,
        SUCCEEDED,
        ok,
        reason,
        message,
        r.metadata.generation,
    );
}

/// Writes the status when it changed, with an Event when the phase did.
async fn save(
    api: &Api<BranchRestore>,
    r: &BranchRestore,
    old: &BranchRestoreStatus,
    new: &BranchRestoreStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    api.patch_status(
        &r.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await?;
    if old.phase != new.phase {
        if let Some(c) = new.conditions.iter().find(|c| c.type_ == SUCCEEDED) {
            let type_ = if new.phase == Some(RestorePhase::Failed) {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(ctx, r, type_, &c.reason, c.message.clone()).await;
        }
    }
    Ok(())
}

/// The branch's timeline, if it is Ready on it (its credentials set there).
fn ready_timeline(b: &DatabaseBranch) -> Option<TimelineRef> {
    let st = b.status.as_ref()?;
    let tl = st.timeline.clone()?;
    (st.credentials_timeline.as_deref() == Some(tl.id.as_str())).then_some(tl)
}

fn is_reset(r: &BranchRestore) -> bool {
    r.spec.source.parent == Some(true)
}

async fn run(
    r: &BranchRestore,
    ctx: &Context,
    status: &mut BranchRestoreStatus,
) -> Result<Action, Halt> {
    let ns = r.namespace().unwrap_or_default();
    let name = &r.spec.branch;
    let branches: Api<DatabaseBranch> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(b) = branches.get_opt(name).await? else {
        let message = if status.phase == Some(RestorePhase::Running) {
            format!("branch {ns}/{name} was deleted while being restored")
        } else {
            format!("branch {ns}/{name} does not exist")
        };
        return Err(Halt::Failed("BranchNotFound", message));
    };
    if status.timeline.is_none() {
        fork(r, ctx, &b, status).await?;
        // The commit point: from here on the restore is finished, not abandoned.
        let api: Api<BranchRestore> = Api::namespaced(ctx.client.clone(), &ns);
        let old = r.status.clone().unwrap_or_default();
        save(&api, r, &old, status, ctx).await?;
    }
    switch(r, ctx, &b, status).await
}

/// Step 1: checks, resolves the source and forks the new timeline.
async fn fork(
    r: &BranchRestore,
    ctx: &Context,
    b: &DatabaseBranch,
    status: &mut BranchRestoreStatus,
) -> Result<(), Halt> {
    let ns = r.namespace().unwrap_or_default();
    let name = b.name_any();
    let what = if is_reset(r) { "reset" } else { "restored" };
    if b.is_protected() {
        return Err(Halt::Failed(
            "Protected",
            format!("branch {ns}/{name} is protected (spec.protected: true) and is not {what}; set spec.protected to false first"),
        ));
    }
    if b.external_source().is_some() {
        return Err(Halt::Failed(
            "Following",
            crate::following::refusal(b, what),
        ));
    }
    if b.metadata.deletion_timestamp.is_some() {
        return Err(Halt::Failed(
            "BranchDeleting",
            format!("branch {ns}/{name} is being deleted"),
        ));
    }
    let Some(current) = ready_timeline(b) else {
        return Err(Halt::Pending(
            "BranchNotReady",
            format!("waiting for branch {ns}/{name} to be Ready"),
        ));
    };
    let others = Api::<BranchRestore>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await?;
    if let Some(other) = others.items.iter().find(|o| {
        o.spec.branch == name
            && o.name_any() != r.name_any()
            && o.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Running)
    }) {
        return Err(Halt::Pending(
            "AnotherRestoreRunning",
            format!(
                "waiting for BranchRestore {} of the same branch to finish",
                other.name_any()
            ),
        ));
    }
    let source = resolve(r, ctx, b, &current).await?;
    if source.timeline.storage_node != current.storage_node {
        return Err(Halt::Failed(
            "DifferentStorageNode",
            format!(
                "{} is on storage node {} and branch {name} on {}: a branch can only be moved onto history of its own storage node",
                source.describe, source.timeline.storage_node, current.storage_node
            ),
        ));
    }
    let id: TimelineId = r
        .uid()
        .unwrap_or_default()
        .parse()
        .map_err(|_| Halt::Failed("InvalidRestore", "metadata.uid is not a UUID".into()))?;
    let parent: TimelineId = source.timeline.id.parse().map_err(|_| {
        Halt::Failed(
            "InvalidSource",
            format!("timeline id {:?} is not a UUID", source.timeline.id),
        )
    })?;
    let node = &current.storage_node;
    // The branch stays as durable as it was: a branch kept in the backup repository is
    // still kept there after a reset or restore (its new timeline is a fork, which the
    // node would not keep by default).
    let durable = match current.id.parse::<TimelineId>() {
        Ok(cid) => match ctx.storage(node).get_timeline(cid).await {
            Ok(info) => info.backup.is_some().then_some(true),
            Err(e) => {
                return Err(Halt::Pending(
                    "StorageUnavailable",
                    format!("storage node {node}: {e}"),
                ))
            }
        },
        Err(_) => None,
    };
    let req = CreateTimeline {
        id: Some(id),
        parent: Some(parent),
        at: Some(source.at.clone()),
        follow: None,
        backup: durable,
        from_backup: None,
    };
    let info = match ctx.storage(node).create_timeline(&req).await {
        Ok(created) => created.value,
        Err(e) => {
            return Err(match e.status().map(|s| s.as_u16()) {
                Some(400 | 422) => Halt::Failed(
                    "InvalidPoint",
                    format!("{}: {e}; branch {name} is unchanged", source.describe),
                ),
                Some(404) => Halt::Failed(
                    "SourceGone",
                    format!(
                        "the history of {} is gone from storage node {node} (the branch holding it was deleted): {e}",
                        source.describe
                    ),
                ),
                Some(409) => Halt::Pending("SourceNotReady", e.to_string()),
                _ => Halt::Error(storage_err(node)(e)),
            })
        }
    };
    let keep = r.spec.keep_backup.unwrap_or(!is_reset(r));
    let now = Utc::now();
    info!(branch = %name, timeline = %id, source = %source.describe, "forked the restore's timeline");
    status.phase = Some(RestorePhase::Running);
    status.start_time = Some(now);
    status.source = Some(source.describe.clone());
    status.previous_timeline = Some(current.id.clone());
    status.timeline = Some(id.to_string());
    status.fork_lsn = info.fork_lsn.map(|l| l.to_string());
    status.backup_branch = keep.then(|| {
        ramify_lifecycle::restore::backup_name_within(&name, now, BRANCH_NAME_MAX, |n| {
            ctx.branch(&ns, n).is_some()
        })
    });
    set(
        r,
        status,
        false,
        "Switching",
        format!(
            "moving branch {name} onto timeline {id}: {}",
            source.describe
        ),
    );
    Ok(())
}

/// What `r`'s source means: a timeline of the branch's storage node and a point on it.
async fn resolve(
    r: &BranchRestore,
    ctx: &Context,
    b: &DatabaseBranch,
    current: &TimelineRef,
) -> Result<Source, Halt> {
    let ns = r.namespace().unwrap_or_default();
    let name = b.name_any();
    let src = &r.spec.source;
    if is_reset(r) {
        let Some(p) = &b.spec.parent else {
            return Err(Halt::Failed(
                "IsRoot",
                format!("branch {name} is a root: it has no parent to reset to; restore it to a point of its own history instead (source.lsn, source.time or source.checkpoint)"),
            ));
        };
        let pns = b.parent_namespace().unwrap_or_else(|| ns.clone());
        let parent = Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &pns)
            .get_opt(&p.name)
            .await?
            .ok_or_else(|| {
                Halt::Failed(
                    "ParentNotFound",
                    format!("the parent of {name}, {pns}/{}, no longer exists", p.name),
                )
            })?;
        // Sharing is checked now, not only when the branch was made: a parent that
        // stopped sharing with this namespace no longer hands it its data.
        if !crate::sharing::shares_with(&ctx.client, &parent, &ns).await? {
            return Err(Halt::Failed(
                "ParentNotShared",
                crate::sharing::not_shared(&pns, &p.name, &ns),
            ));
        }
        let timeline = ready_timeline(&parent).ok_or_else(|| {
            Halt::Pending(
                "ParentNotReady",
                format!("waiting for the parent {pns}/{} to be Ready", p.name),
            )
        })?;
        return Ok(Source {
            timeline,
            at: At::Latest,
            describe: format!("the latest state of its parent {pns}/{}", p.name),
        });
    }
    let owner = src.branch.clone().unwrap_or_else(|| name.clone());
    if let Some(cp_name) = &src.checkpoint {
        let cps: Api<BranchCheckpoint> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(cp) = cps.get_opt(cp_name).await? else {
            let known: Vec<String> = cps
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|c| c.spec.branch == owner)
                .map(|c| c.name_any())
                .collect();
            return Err(Halt::Failed(
                "CheckpointNotFound",
                format!(
                    "no BranchCheckpoint {ns}/{cp_name} (checkpoints of {owner}: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if cp.spec.branch != owner {
            return Err(Halt::Failed(
                "CheckpointNotFound",
                format!(
                    "BranchCheckpoint {cp_name} is a checkpoint of {}, not of {owner}",
                    cp.spec.branch
                ),
            ));
        }
        let st = cp.status.clone().unwrap_or_default();
        match st.phase {
            Some(CheckpointPhase::Ready) => {}
            Some(CheckpointPhase::Failed) => {
                return Err(Halt::Failed(
                    "CheckpointFailed",
                    format!("BranchCheckpoint {cp_name} failed; it records no point"),
                ))
            }
            _ => {
                return Err(Halt::Pending(
                    "CheckpointNotReady",
                    format!("waiting for BranchCheckpoint {cp_name} to be Ready"),
                ))
            }
        }
        let (Some(timeline), Some(lsn)) = (st.timeline, st.lsn) else {
            return Err(Halt::Failed(
                "CheckpointFailed",
                format!("BranchCheckpoint {cp_name} records no timeline or LSN"),
            ));
        };
        let lsn = lsn.parse().map_err(|_| {
            Halt::Failed(
                "CheckpointFailed",
                format!("BranchCheckpoint {cp_name} has an invalid LSN {lsn:?}"),
            )
        })?;
        return Ok(Source {
            timeline,
            at: At::Lsn(lsn),
            describe: format!("checkpoint {cp_name} of {owner} ({lsn})"),
        });
    }
    let timeline = if owner == name {
        current.clone()
    } else {
        let other = Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&owner)
            .await?
            .ok_or_else(|| {
                Halt::Failed(
                    "SourceNotFound",
                    format!("branch {ns}/{owner} to restore {name} from does not exist"),
                )
            })?;
        ready_timeline(&other).ok_or_else(|| {
            Halt::Pending(
                "SourceNotReady",
                format!("waiting for branch {ns}/{owner} to be Ready"),
            )
        })?
    };
    let (at, point) = match (&src.lsn, &src.time) {
        (Some(lsn), _) => (
            At::Lsn(lsn.parse().map_err(|e| {
                Halt::Failed("InvalidPoint", format!("source.lsn {lsn:?}: {e}"))
            })?),
            format!("at {lsn}"),
        ),
        (None, Some(t)) => {
            let t = ramify_api::parse_timestamp(t).map_err(|e| {
                Halt::Failed("InvalidPoint", format!("source.time: {e}"))
            })?;
            (
                At::Time(t),
                format!(
                    "at {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
        }
        (None, None) if owner == name => {
            return Err(Halt::Failed(
                "InvalidPoint",
                format!("restoring {name} to its own latest state changes nothing; give source.lsn, source.time or source.checkpoint"),
            ))
        }
        (None, None) => (At::Latest, "latest".to_string()),
    };
    Ok(Source {
        timeline,
        at,
        describe: format!("{owner} {point}"),
    })
}

/// Steps 2 and 3: moves the branch onto the new timeline (once), deals with the old one
/// (once), and finishes when the branch is Ready there.
async fn switch(
    r: &BranchRestore,
    ctx: &Context,
    b: &DatabaseBranch,
    status: &mut BranchRestoreStatus,
) -> Result<Action, Halt> {
    let ns = r.namespace().unwrap_or_default();
    let name = b.name_any();
    let (Some(new), Some(prev)) = (status.timeline.clone(), status.previous_timeline.clone())
    else {
        return Err(Halt::Failed(
            "InvalidRestore",
            "status lost its timelines".into(),
        ));
    };
    let on = b.status.as_ref().and_then(|s| s.timeline.clone());
    let Some(on) = on else {
        return Err(Halt::Failed(
            "BranchNotReady",
            format!("branch {name} has no timeline"),
        ));
    };
    let node = on.storage_node.clone();
    if on.id == prev {
        // The old compute stops (its sessions end) while the new one starts: the branch
        // reconciler would only create the new Pod after the switch below.
        let new_ref = TimelineRef {
            id: new.clone(),
            name: build::timeline_name(&new),
            storage_node: node.clone(),
        };
        let (stopped, ()) = tokio::join!(
            compute::suspend(ctx, &prev, Duration::from_secs(90)),
            start_early(ctx, b, &new_ref)
        );
        stopped?;
        let now = Utc::now();
        Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "timeline": TimelineRef {
                        id: new.clone(),
                        name: build::timeline_name(&new),
                        storage_node: node.clone(),
                    },
                    "compute": {"state": "Suspended", "pod": null, "lastTransition": now},
                }})),
            )
            .await?;
        info!(branch = %name, from = %prev, to = %new, "branch moved onto the restore's timeline");
        publish(
            ctx,
            b,
            EventType::Normal,
            if is_reset(r) {
                "Resetting"
            } else {
                "Restoring"
            },
            format!(
                "BranchRestore {}: open sessions ended; moving onto timeline {new} ({})",
                r.name_any(),
                status.source.clone().unwrap_or_default()
            ),
        )
        .await;
    } else if on.id != new {
        // Something else moved the branch meanwhile: this restore's fork is not used.
        if let Ok(id) = new.parse::<TimelineId>() {
            let _ = ctx.storage(&node).delete_timeline(id, true).await;
        }
        return Err(Halt::Failed(
            "Superseded",
            format!("branch {name} was moved to timeline {} by something else meanwhile; nothing changed", on.id),
        ));
    }
    let handled = status
        .conditions
        .iter()
        .any(|c| c.type_ == SUCCEEDED && c.reason == WAITING_FOR_BRANCH);
    if !handled {
        let prev_ref = TimelineRef {
            id: prev.clone(),
            name: build::timeline_name(&prev),
            storage_node: node.clone(),
        };
        match status.backup_branch.clone() {
            Some(backup) => keep_as_backup(ctx, r, b, &prev_ref, &backup).await?,
            None => retire(ctx, &prev_ref).await?,
        }
        set(
            r,
            status,
            false,
            WAITING_FOR_BRANCH,
            format!("waiting for branch {name} to be Ready on timeline {new}"),
        );
    }
    // Step 3, from a fresh read: the branch reconciler starts the compute and sets the
    // password on the new timeline.
    let b = Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?;
    let ready = b.as_ref().is_some_and(|b| {
        ready_timeline(b).is_some_and(|t| t.id == new)
            && b.status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    });
    if !ready {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let now = Utc::now();
    let took = status
        .start_time
        .map(|s| (now - s).num_milliseconds() as f64 / 1000.0)
        .unwrap_or_default();
    status.phase = Some(RestorePhase::Succeeded);
    status.completion_time = Some(now);
    let kept = match &status.backup_branch {
        Some(backup) => format!("its previous state is branch {backup}"),
        None => format!("its previous timeline {prev} was deleted"),
    };
    let message = format!(
        "branch {name} is {} ({}) on timeline {new} in {took:.1} s; {kept}",
        if is_reset(r) { "reset" } else { "restored" },
        status.source.clone().unwrap_or_default(),
    );
    set(
        r,
        status,
        true,
        if is_reset(r) { "Reset" } else { "Restored" },
        &message,
    );
    if let Some(b) = &b {
        publish(
            ctx,
            b,
            EventType::Normal,
            if is_reset(r) { "Reset" } else { "Restored" },
            message,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Creates the compute Pod of the branch on `timeline` ahead of the switch. Best effort:
/// the branch reconciler creates it anyway once the branch points there.
async fn start_early(ctx: &Context, b: &DatabaseBranch, timeline: &TimelineRef) {
    let started = async {
        let spec = validate_spec(b, &ctx.config).map_err(|p| p.message)?;
        let id: TimelineId = timeline
            .id
            .parse()
            .map_err(|_| "bad timeline id".to_string())?;
        let info = ctx
            .storage(&timeline.storage_node)
            .get_timeline(id)
            .await
            .map_err(|e| e.to_string())?;
        let port = b
            .status
            .as_ref()
            .and_then(|s| s.proxy_port)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("no proxy port")?;
        let facts = build::ComputeFacts::of(&info);
        let plan = branch::plan(b, &spec, timeline, port, &facts, None);
        compute::ensure(ctx, &plan).await.map_err(|e| e.to_string())
    };
    if let Err(e) = started.await {
        warn!(error = %e, "cannot start the new compute early; the branch reconciler will");
    }
}

/// Deletes a timeline nothing needs any more (its compute is stopped) and its object.
async fn retire(ctx: &Context, tl: &TimelineRef) -> Result<(), Error> {
    if let Ok(id) = tl.id.parse::<TimelineId>() {
        match ctx
            .storage(&tl.storage_node)
            .delete_timeline(id, true)
            .await
        {
            Ok(()) => info!(timeline = %id, "deleted the timeline a restore left"),
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
            Err(e) => return Err(storage_err(&tl.storage_node)(e)),
        }
    }
    delete_if_exists(
        &Api::<Timeline>::namespaced(ctx.client.clone(), &ctx.config.namespace),
        &tl.name,
    )
    .await?;
    Ok(())
}

/// Publishes the timeline `b` left as branch `backup`: suspended, with `b`'s role and
/// password (they are what that timeline holds), expiring after the storage node's
/// restore window. The new branch adopts the timeline once its `Timeline` object names
/// it as owner (see [`ADOPT_TIMELINE_ANNOTATION`]).
async fn keep_as_backup(
    ctx: &Context,
    r: &BranchRestore,
    b: &DatabaseBranch,
    prev: &TimelineRef,
    backup: &str,
) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let password = secrets
        .get_opt(&build::connection_name(&name))
        .await?
        .filter(|s| crate::ownership::owned_by(&s.metadata, &b.uid().unwrap_or_default()))
        .and_then(|s| s.data?.get("password").cloned())
        .and_then(|p| String::from_utf8(p.0).ok());
    let window = ctx
        .storage(&prev.storage_node)
        .status()
        .await
        .map_err(storage_err(&prev.storage_node))?
        .restore_window_seconds;
    let expires = Utc::now() + chrono::Duration::seconds(window.min(i64::MAX as u64) as i64);
    let mut annotations = BTreeMap::from([
        (ADOPT_TIMELINE_ANNOTATION.to_string(), prev.id.clone()),
        (BACKUP_OF.to_string(), name.clone()),
        (RESTORED_BY.to_string(), r.name_any()),
    ]);
    if password.is_some() {
        annotations.insert(ADOPT_CREDENTIALS_ANNOTATION.to_string(), "true".into());
    }
    let mut obj = DatabaseBranch::new(
        backup,
        DatabaseBranchSpec {
            parent: b.spec.parent.clone(),
            compute: b.spec.compute.clone(),
            connection: b.spec.connection.clone(),
            expires_at: Some(expires),
            ..Default::default()
        },
    );
    obj.metadata.namespace = Some(ns.clone());
    obj.metadata.annotations = Some(annotations);
    obj.metadata.labels = Some(BTreeMap::from([(BACKUP_OF.to_string(), name.clone())]));
    let api: Api<DatabaseBranch> = Api::namespaced(ctx.client.clone(), &ns);
    let created = match api.create(&PostParams::default(), &obj).await {
        Ok(c) => c,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(backup).await?;
            if existing.annotations().get(RESTORED_BY) != Some(&r.name_any()) {
                warn!(backup, "the backup branch's name was taken meanwhile");
                return Err(Error::Conflict(format!(
                    "cannot create backup branch {ns}/{backup}: a branch of that name exists"
                )));
            }
            existing
        }
        Err(e) => return Err(e.into()),
    };
    // The backup's Secret, owned by the backup branch (the operator writes only Secrets
    // its branches own), before the timeline is handed over: the backup's first
    // reconcile waits for the handover, so it finds its password there.
    if let Some(password) = &password {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": build::connection_name(backup), "namespace": ns,
                "ownerReferences": [created.controller_owner_ref(&())],
            },
            "type": "Opaque",
            "stringData": {"password": password},
        });
        secrets
            .patch(
                &build::connection_name(backup),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(secret),
            )
            .await?;
    }
    Api::<Timeline>::namespaced(ctx.client.clone(), &ctx.config.namespace)
        .patch(
            &prev.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"branch": {
                "namespace": ns,
                "name": backup,
                "uid": created.uid().unwrap_or_default(),
            }}})),
        )
        .await?;
    info!(branch = %name, backup, timeline = %prev.id, "kept the previous state as a backup branch");
    Ok(())
}

/// Backs off a failed restore (1 s … 5 min) with a Warning event.
pub fn error_policy(obj: Arc<BranchRestore>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(err.kind());
    retry_with_event(obj, err, ctx)
}
