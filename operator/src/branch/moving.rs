//! Moving a branch to another storage node: `spec.storageNode` changed after creation.
//!
//! A copy-on-write clone cannot cross volumes, so the move goes through the backup
//! repository, under the branch's own timeline id, in steps that each survive an operator
//! restart (the branch's lock is held throughout):
//! 1. `status.moving` records the move (from, to); from then on a wake is refused;
//! 2. the compute stops, and the old node seals the timeline: every WAL record, the last
//!    unfinished segment included, in the repository (`POST …/seal`);
//! 3. the new node copies it through the sealed record (`from_backup.through`): every
//!    commit, nothing else;
//! 4. `status.timeline` names the new node (written at once): the branch is there, with
//!    the same name, Secret, Service and password, and wakes there on the next connection;
//! 5. the old node's copy is deleted and `status.moving` cleared.
//!
//! A move called off before step 4 (`spec.storageNode` set back, or removed) deletes the
//! new node's copy instead; the branch never left. Only a durable branch moves, and not a
//! following one (its compute must keep streaming from its source).

use ramify_api::FromBackup;
use ramify_crd::BranchMove;

use super::*;

/// How long the compute may take to stop before the move waits for it.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether a wake must wait: the branch is on its way to another node.
pub(crate) fn in_progress(b: &DatabaseBranch) -> Option<&BranchMove> {
    let st = b.status.as_ref()?;
    let m = st.moving.as_ref()?;
    let on = &st.timeline.as_ref()?.storage_node;
    (*on == m.from && b.spec.storage_node.as_deref() == Some(m.to.as_str())).then_some(m)
}

/// Moves the branch's timeline (on `timeline.storage_node`) to `spec.storageNode` when
/// that names another node; deletes what an earlier move left behind. Returns where the
/// branch is now.
pub(super) async fn converge(
    b: &DatabaseBranch,
    ctx: &Context,
    spec: &ValidSpec,
    status: &mut DatabaseBranchStatus,
    timeline: TimelineRef,
    info: TimelineInfo,
) -> Result<(TimelineRef, TimelineInfo), Step> {
    let here = timeline.storage_node.clone();
    let wanted = b.spec.storage_node.clone().filter(|n| *n != here);
    if let Some(m) = status.moving.clone() {
        if wanted.as_deref() != Some(m.to.as_str()) || here == m.to {
            // Done (the old node's copy is left), or called off (the new node's is).
            let leftover = if here == m.to { &m.from } else { &m.to };
            delete_copy(ctx, leftover, &timeline.id).await?;
            info!(timeline = %timeline.id, node = %leftover, "deleted the copy a move left behind");
            done(b, ctx, status).await?;
        }
    }
    let Some(to) = wanted else {
        return Ok((timeline, info));
    };
    if spec.following {
        return Err(refused(format!(
            "a following branch is not moved (its compute must keep streaming from its source): delete it and create it again with spec.storageNode {to}"
        )));
    }
    let to = placement::known_node(ctx, &to).await?;
    if info.backup.is_none() {
        return Err(refused(format!(
            "only a durable branch moves to another storage node (it goes through the backup repository), and this one is not kept there (spec.backup.enabled is false, or {here} has no repository): fork it onto {to} instead (a new branch with spec.parent and spec.storageNode)"
        )));
    }
    let prefix = placement::shared_prefix(ctx, &here, &to).await?;
    let id: TimelineId = timeline.id.parse().map_err(|_| {
        refused(format!(
            "status.timeline.id {:?} is not a UUID",
            timeline.id
        ))
    })?;

    // 1. Recorded before anything stops: from here on a wake waits.
    let started = BranchMove {
        from: here.clone(),
        to: to.clone(),
        sealed_lsn: None,
    };
    if status.moving.as_ref().map(|m| (&m.from, &m.to)) != Some((&here, &to)) {
        let old = b.status.clone().unwrap_or_default();
        status.moving = Some(started);
        set_moving(
            status,
            b,
            format!("moving to storage node {to}: stopping the compute"),
        );
        write_status(b, ctx, &old, status).await?;
        publish(
            ctx,
            b,
            EventType::Normal,
            "Moving",
            format!("moving from storage node {here} to {to} through the backup repository"),
        )
        .await;
    }

    // 2. The compute stops; the old node puts every WAL record into the repository.
    compute::suspend(ctx, &timeline.id, STOP_TIMEOUT)
        .await
        .map_err(Error::from)?;
    let sealed = match ctx.storage(&here).seal_timeline(id).await {
        Ok(s) => s,
        // Restored or copied there and not run since: its WAL ends on a newer Postgres
        // timeline than its pg_control names. One start (recovery, promotion, checkpoint)
        // and stop, and the seal can read where it ends.
        Err(e) if e.code() == Some("not_started") => {
            start_once(b, ctx, spec, status, &timeline, &info).await?;
            return Err(wait(
                "Moving",
                format!("moving to storage node {to}: started the compute on {here} once (it had not run since it was restored or copied there); sealing it now"),
                Duration::from_secs(1),
            ));
        }
        Err(e) => {
            return Err(match e.status().map(|s| s.as_u16()) {
                // A compute still stopping, or the repository not answering: again soon.
                Some(409) | Some(502) | Some(503) => wait(
                    "Moving",
                    format!("moving to storage node {to}: sealing the timeline on {here}: {e}"),
                    Duration::from_secs(5),
                ),
                _ if e.code() == Some("backup_failed") => wait(
                    "Moving",
                    format!("moving to storage node {to}: sealing the timeline on {here}: {e}"),
                    Duration::from_secs(5),
                ),
                _ => Step::Fail(storage_err(&here)(e)),
            });
        }
    };
    if let Some(m) = status.moving.as_mut() {
        m.sealed_lsn = Some(sealed.lsn.to_string());
    }

    // 3. The new node copies it through the sealed record, under the same id.
    let req = CreateTimeline {
        id: Some(id),
        backup: Some(true),
        from_backup: Some(FromBackup {
            prefix,
            timeline: id,
            through: Some(sealed.lsn),
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    let copied = match ctx.storage(&to).create_timeline(&req).await {
        Ok(c) => c.value,
        Err(e) => return Err(copy_failed(ctx, &to, id, e).await),
    };

    // 4. The branch is on the new node from here on: written at once, before the old
    //    copy goes, so that a crash in between finds it there.
    let moved = TimelineRef {
        storage_node: to.clone(),
        ..timeline.clone()
    };
    let old = b.status.clone().unwrap_or_default();
    status.timeline = Some(moved.clone());
    write_status(b, ctx, &old, status).await?;
    info!(timeline = %id, from = %here, to = %to, lsn = %sealed.lsn, copy_ms = t0.elapsed().as_millis() as u64, "branch moved to another storage node");
    publish(
        ctx,
        b,
        EventType::Normal,
        "Moved",
        format!(
            "moved from storage node {here} to {to}, with every commit up to {} (sealed there); the next connection starts its compute on {to}",
            sealed.lsn
        ),
    )
    .await;

    // 5. The old node's copy goes.
    delete_copy(ctx, &here, &timeline.id).await?;
    done(b, ctx, status).await?;
    Ok((moved, copied))
}

/// Clears `status.moving`, written at once: the reconcile's own status write compares
/// with the status it began with, which may not have had it.
async fn done(
    b: &DatabaseBranch,
    ctx: &Context,
    status: &mut DatabaseBranchStatus,
) -> Result<(), Step> {
    status.moving = None;
    Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .patch_status(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "moving": null } })),
        )
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// Starts the branch's compute where it is, waits until Postgres serves, and stops it.
async fn start_once(
    b: &DatabaseBranch,
    ctx: &Context,
    spec: &ValidSpec,
    status: &DatabaseBranchStatus,
    timeline: &TimelineRef,
    info: &TimelineInfo,
) -> Result<(), Step> {
    let port = status
        .proxy_port
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| refused("the branch has no proxy port yet".into()))?;
    let (plan, _) = super::compute_plan(b, ctx, spec, timeline, port, info).await?;
    compute::wake_ready(ctx, &plan).await.map_err(Error::from)?;
    compute::suspend(ctx, &timeline.id, STOP_TIMEOUT)
        .await
        .map_err(Error::from)?;
    info!(timeline = %timeline.id, node = %timeline.storage_node, "started the compute once so that its node can seal the timeline");
    publish(
        ctx,
        b,
        EventType::Normal,
        "StartedForMove",
        format!(
            "started the compute on {} once and stopped it: the timeline had not run since it was restored or copied there, so its node could not yet read where its WAL ends",
            timeline.storage_node
        ),
    )
    .await;
    Ok(())
}

/// Deletes timeline `id` on `node` (its compute stopped first); gone already is fine.
async fn delete_copy(ctx: &Context, node: &str, id: &str) -> Result<(), Step> {
    let tid: TimelineId = id
        .parse()
        .map_err(|_| refused(format!("timeline id {id:?} is not a UUID")))?;
    match ctx.storage(node).delete_timeline(tid, true).await {
        Ok(()) => Ok(()),
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => Ok(()),
        Err(e) => Err(Step::Fail(storage_err(node)(e))),
    }
}

/// What a failed copy on the new node means. A copy already there from an earlier seal
/// (the move was called off, the branch ran again on its node and was sealed anew) is
/// refused as a different request: it is deleted, and the next attempt copies afresh.
async fn copy_failed(ctx: &Context, to: &str, id: TimelineId, e: ClientError) -> Step {
    match e.status().map(|s| s.as_u16()) {
        Some(409) if ctx.storage(to).get_timeline_without_sizes(id).await.is_ok() => {
            match delete_copy(ctx, to, &id.to_string()).await {
                Ok(()) => wait(
                    "Moving",
                    format!("moving to storage node {to}: removed a copy of an earlier seal; copying again"),
                    Duration::from_secs(1),
                ),
                Err(s) => s,
            }
        }
        Some(409) => wait(
            "Moving",
            format!("moving to storage node {to}: {e}"),
            Duration::from_secs(5),
        ),
        Some(507) => wait(
            "InsufficientStorage",
            format!("moving to storage node {to}: {e}; set spec.storageNode back to stay where it is"),
            Duration::from_secs(30),
        ),
        _ => placement::copy_failed(to, e),
    }
}

fn set_moving(status: &mut DatabaseBranchStatus, b: &DatabaseBranch, message: String) {
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        "Moving",
        message,
        b.metadata.generation,
    );
}

/// A move the spec asks for that cannot be done: shown as the Ready condition; the branch
/// stays where it is.
fn refused(message: String) -> Step {
    Step::Problem(Problem {
        reason: "MoveRefused",
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(wanted: Option<&str>, on: &str, moving: Option<(&str, &str)>) -> DatabaseBranch {
        serde_json::from_value(json!({
            "apiVersion": "ramify.dev/v1alpha1",
            "kind": "DatabaseBranch",
            "metadata": {"name": "b", "namespace": "ns"},
            "spec": {"storageNode": wanted},
            "status": {
                "timeline": {"id": "t", "name": "tl-t", "storageNode": on},
                "moving": moving.map(|(from, to)| json!({"from": from, "to": to})),
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_wake_waits_only_while_the_branch_is_on_its_way() {
        let (a, b) = ("ramify-storage-0", "ramify-storage-1");
        assert!(in_progress(&branch(Some(b), a, Some((a, b)))).is_some());
        // Arrived: only the old copy is left to delete.
        assert!(in_progress(&branch(Some(b), b, Some((a, b)))).is_none());
        // Called off (set back, or removed): it never left.
        assert!(in_progress(&branch(Some(a), a, Some((a, b)))).is_none());
        assert!(in_progress(&branch(None, a, Some((a, b)))).is_none());
        // Asked for, not started (or refused): it runs where it is.
        assert!(in_progress(&branch(Some(b), a, None)).is_none());
    }
}
