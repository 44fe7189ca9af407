//! The builders' input (`BranchPlan`) of a branch: from its validated spec and its
//! timeline, and for callers outside the reconcile loop once the branch is Ready.

use super::*;

/// The builders' input from the validated spec and the resolved timeline.
pub fn plan(
    b: &DatabaseBranch,
    spec: &ValidSpec,
    timeline: &TimelineRef,
    proxy_port: u16,
    facts: &ComputeFacts,
    parent_timeline: Option<String>,
) -> BranchPlan {
    BranchPlan {
        name: b.name_any(),
        namespace: b.namespace().unwrap_or_default(),
        uid: b.uid().unwrap_or_default(),
        timeline_id: timeline.id.clone(),
        storage_node: timeline.storage_node.clone(),
        parent_timeline,
        user: spec.user.clone(),
        database: spec.database.clone(),
        proxy_port,
        postgres_parameters: spec.postgres_parameters.clone(),
        archive_command: facts.archive_command.clone(),
        resources: spec.resources.clone(),
        standby: facts.standby.clone(),
        archive_timeout_secs: facts.archive_timeout_secs,
        initdb: facts.initdb,
        following: spec.following,
        source_logins: spec.source_logins,
    }
}

/// Why a branch's compute cannot be started yet.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("branch {0} is still being created")]
    NotReady(String),
    #[error("branch {0}: it starts there once the move is done (seconds to minutes, with the size of its WAL since its last base backup)")]
    Moving(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("storage node {node}: {source}")]
    Storage {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// The plan for starting the compute of a created branch (on its timeline, with its
/// credentials set): what a wake, a suspend and a checkpoint act on.
pub async fn ready_plan(ctx: &Context, b: &DatabaseBranch) -> Result<BranchPlan, PlanError> {
    let not_ready = || {
        PlanError::NotReady(format!(
            "{}/{}",
            b.namespace().unwrap_or_default(),
            b.name_any()
        ))
    };
    let st = b.status.as_ref().ok_or_else(not_ready)?;
    let tl = st.timeline.clone().ok_or_else(not_ready)?;
    // Stopped and sealed for a move: it starts again on its new node once there.
    if let Some(m) = super::moving(b) {
        return Err(PlanError::Moving(format!(
            "{}/{} is moving from storage node {} to {}",
            b.namespace().unwrap_or_default(),
            b.name_any(),
            m.from,
            m.to
        )));
    }
    if st.credentials_timeline.as_deref() != Some(tl.id.as_str()) {
        return Err(not_ready());
    }
    let port = st
        .proxy_port
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(not_ready)?;
    let spec = validate_spec(b, &ctx.config).map_err(|p| PlanError::InvalidSpec(p.message))?;
    let facts = match ctx.compute_facts(&tl.id) {
        Some(f) => f,
        None => {
            let id = tl.id.parse().map_err(|_| not_ready())?;
            let info = ctx
                .storage(&tl.storage_node)
                .get_timeline(id)
                .await
                .map_err(|source| PlanError::Storage {
                    node: tl.storage_node.clone(),
                    source,
                })?;
            let facts = ComputeFacts::of(&info);
            ctx.remember_compute_facts(&tl.id, &facts);
            facts
        }
    };
    Ok(plan(b, &spec, &tl, port, &facts, None))
}
