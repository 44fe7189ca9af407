//! The BranchCheckpoint controller: writes a named restore point into the branch's WAL
//! through its storage node (waking the compute when it is suspended, and suspending it
//! again afterwards) and records its LSN, time and timeline. A checkpoint is recorded
//! once; its status never changes after that.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use ramify_api::{CreateRestorePoint, TimelineId};
use ramify_crd::{
    BranchCheckpoint, BranchCheckpointStatus, CheckpointPhase, DatabaseBranch, TimelineRef,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::branch::{publish, ready_plan, retry_with_event, storage_err, Error, PlanError};
use crate::compute;
use crate::conditions::{self, READY};
use crate::context::Context;

/// WAL since the newest storage snapshot above which a checkpoint also starts one, as in
/// local mode: restoring to a later checkpoint then replays at most about this much.
pub use ramify_lifecycle::checkpoints::CHECKPOINT_SNAPSHOT_WAL_BYTES;

/// Reconciles one checkpoint.
#[instrument(skip_all, fields(checkpoint = %cp.name_any(), namespace = %cp.namespace().unwrap_or_default()))]
pub async fn reconcile(cp: Arc<BranchCheckpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    if finished(&cp) {
        return Ok(Action::await_change());
    }
    let ns = cp.namespace().unwrap_or_default();
    let api: Api<BranchCheckpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let lock = ctx.branch_lock(&ns, &cp.spec.branch);
    let _guard = lock.lock().await;
    let Some(cp) = api.get_opt(&cp.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if finished(&cp) {
        return Ok(Action::await_change());
    }
    let old = cp.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let action = record(&cp, &ctx, &mut status).await;
    if action.is_ok() {
        ctx.backoff.reset(&cp.uid().unwrap_or_default());
    }
    if status != old {
        api.patch_status(
            &cp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        if status.phase != old.phase {
            let (type_, reason, message) = ready_of(&status);
            publish(&ctx, &cp, type_, &reason, message).await;
        }
    }
    action
}

fn finished(cp: &BranchCheckpoint) -> bool {
    matches!(
        cp.status.as_ref().and_then(|s| s.phase),
        Some(CheckpointPhase::Ready | CheckpointPhase::Failed)
    )
}

fn ready_of(status: &BranchCheckpointStatus) -> (EventType, String, String) {
    let c = status.conditions.iter().find(|c| c.type_ == READY);
    let type_ = match status.phase {
        Some(CheckpointPhase::Failed) => EventType::Warning,
        _ => EventType::Normal,
    };
    (
        type_,
        c.map(|c| c.reason.clone()).unwrap_or_default(),
        c.map(|c| c.message.clone()).unwrap_or_default(),
    )
}

fn pending(
    cp: &BranchCheckpoint,
    status: &mut BranchCheckpointStatus,
    reason: &str,
    message: String,
    after: Duration,
) -> Result<Action, Error> {
    status.phase = Some(CheckpointPhase::Pending);
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        reason,
        message,
        cp.metadata.generation,
    );
    Ok(Action::requeue(after))
}

/// Writes the restore point and fills `status`; what to do next.
async fn record(
    cp: &BranchCheckpoint,
    ctx: &Context,
    status: &mut BranchCheckpointStatus,
) -> Result<Action, Error> {
    let ns = cp.namespace().unwrap_or_default();
    let branches: Api<DatabaseBranch> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(b) = branches.get_opt(&cp.spec.branch).await? else {
        return pending(
            cp,
            status,
            "BranchNotFound",
            format!("branch {ns}/{} does not exist", cp.spec.branch),
            Duration::from_secs(5),
        );
    };
    own(cp, &b, ctx).await?;
    if b.external_source().is_some() {
        // A standby writes no WAL of its own: a point of its history is an LSN or a time
        // of its source's, which a fork's spec.at names directly.
        status.phase = Some(CheckpointPhase::Failed);
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "Following",
            crate::following::refusal(&b, "checkpointed"),
            cp.metadata.generation,
        );
        return Ok(Action::await_change());
    }
    let plan = match ready_plan(ctx, &b).await {
        Ok(p) => p,
        Err(PlanError::Storage { node, source }) => return Err(storage_err(&node)(source)),
        Err(e) => {
            return pending(
                cp,
                status,
                "BranchNotReady",
                format!(
                    "waiting for branch {ns}/{} to be Ready: {e}",
                    cp.spec.branch
                ),
                Duration::from_secs(2),
            )
        }
    };
    let id: TimelineId = plan
        .timeline_id
        .parse()
        .map_err(|_| Error::NoStorageNode(format!("bad timeline id {}", plan.timeline_id)))?;
    // A restore point is written by the branch's own Postgres.
    let was_running = matches!(
        compute::state(ctx, &plan.timeline_id).await?,
        Some(crate::build::PodState::Ready(_))
    );
    compute::wake_ready(ctx, &plan).await?;
    let node = &plan.storage_node;
    let written = ctx
        .storage(node)
        .create_restore_point(
            id,
            &CreateRestorePoint {
                name: cp.name_any(),
                snapshot_wal_bytes: Some(CHECKPOINT_SNAPSHOT_WAL_BYTES),
            },
        )
        .await;
    if !was_running {
        // Woken only for this: the proxy judges idleness only for computes its clients
        // woke, so put it back to sleep here.
        if let Err(e) = compute::suspend(ctx, &plan.timeline_id, Duration::from_secs(90)).await {
            warn!(error = %e, "cannot suspend the compute woken for a checkpoint");
        }
    }
    let point = match written {
        Ok(p) => p,
        // The compute's socket is not there yet (it just became ready): soon.
        Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => {
            return pending(
                cp,
                status,
                "ComputeStarting",
                format!("writing the restore point: {e}"),
                Duration::from_secs(1),
            )
        }
        Err(e) if e.status().map(|s| s.as_u16()) == Some(400) => {
            status.phase = Some(CheckpointPhase::Failed);
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "InvalidName",
                e.to_string(),
                cp.metadata.generation,
            );
            return Ok(Action::await_change());
        }
        Err(e) => return Err(storage_err(node)(e)),
    };
    info!(branch = %cp.spec.branch, lsn = %point.lsn, "checkpoint recorded");
    status.phase = Some(CheckpointPhase::Ready);
    status.lsn = Some(point.lsn.to_string());
    status.time = Some(point.time);
    status.timeline = Some(TimelineRef {
        id: plan.timeline_id.clone(),
        name: crate::build::timeline_name(&plan.timeline_id),
        storage_node: plan.storage_node.clone(),
    });
    status.storage_snapshot = point.snapshot.clone();
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Recorded",
        format!(
            "restore point at {} ({}) on timeline {}; restore to it with a BranchRestore whose source.checkpoint is {}",
            point.lsn,
            point.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            plan.timeline_id,
            cp.name_any()
        ),
        cp.metadata.generation,
    );
    Ok(Action::await_change())
}

/// Makes the branch the checkpoint's owner, so deleting the branch deletes its
/// checkpoints.
async fn own(cp: &BranchCheckpoint, b: &DatabaseBranch, ctx: &Context) -> Result<(), Error> {
    let Some(owner) = b.controller_owner_ref(&()) else {
        return Ok(());
    };
    let owned = cp.owner_references().iter().any(|o| o.uid == owner.uid);
    if owned {
        return Ok(());
    }
    let mut owner = owner;
    owner.controller = Some(false);
    let mut refs = cp.owner_references().to_vec();
    refs.push(owner);
    Api::<BranchCheckpoint>::namespaced(ctx.client.clone(), &cp.namespace().unwrap_or_default())
        .patch(
            &cp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "ownerReferences": refs } })),
        )
        .await?;
    Ok(())
}

/// Backs off a failed checkpoint (1 s … 5 min) with a Warning event.
pub fn error_policy(obj: Arc<BranchCheckpoint>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(err.kind());
    retry_with_event(obj, err, ctx)
}
