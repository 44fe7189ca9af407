//! What a crash of the process running the lifecycle leaves, put right at its next start.
//!
//! Every operation makes its new timeline (and starts its compute) before the branch
//! record that points at it is written, so that a branch never points at something
//! half-made; and a reset or a restore without backup deletes the timeline the branch
//! left only after the record points elsewhere. Each such timeline is recorded as
//! *pending* in the store before the first step and cleared after the last, so a crash in
//! between leaves a pending timeline — possibly with a Postgres still running on it, as
//! computes outlive the process. [`Lifecycle::recover`] runs before anything is served:
//! a pending timeline a branch points at (or keeps: former timelines, checkpoints) is
//! kept, every other one is deleted with its compute. Timelines that were never pending
//! are never touched, whoever made them, and so is everything when the store is lost.

use std::collections::HashSet;

use ramify_api::TimelineId;
use tracing::{info, warn};

use crate::core::{Lifecycle, LifecycleError, Runtime};
use crate::model::Branch;

/// What [`Lifecycle::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Pending timelines no branch needed, deleted (the node stops a compute on them).
    pub deleted_timelines: Vec<TimelineId>,
    /// Pending timelines a branch needs: the operation had finished; only the mark went.
    pub kept_timelines: Vec<TimelineId>,
    /// Pending timelines that could not be deleted (they stay pending for the next start).
    pub failed: Vec<(TimelineId, String)>,
}

/// The timelines the branches need: their own, the ones they were on before a restore
/// (backups, and where earlier points of their history are read), and their
/// checkpoints'. An ancestor is not needed: a fork owns every file it reads.
pub fn needed_timelines(branches: &[Branch]) -> HashSet<TimelineId> {
    branches
        .iter()
        .flat_map(|b| {
            std::iter::once(b.timeline)
                .chain(b.former_timelines.iter().map(|f| f.timeline))
                .chain(b.checkpoints.iter().map(|c| c.timeline))
        })
        .collect()
}

impl<R: Runtime> Lifecycle<R> {
    /// Finishes what a crash interrupted (see the module documentation). Call it once at
    /// start, before any request is served: an operation in flight has pending timelines
    /// too.
    pub async fn recover(&self) -> Result<Recovery, LifecycleError> {
        let pending = self.store.pending()?;
        let mut done = Recovery::default();
        if pending.is_empty() {
            return Ok(done);
        }
        let keep = needed_timelines(&self.branches()?);
        for id in pending {
            if keep.contains(&id) {
                self.settle(id);
                done.kept_timelines.push(id);
                continue;
            }
            match self.delete_timeline(id).await {
                Ok(true) => {
                    info!(timeline = %id, "deleted a timeline an operation cut short by a crash had made or was retiring");
                    done.deleted_timelines.push(id);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(timeline = %id, error = %e, "cannot delete a timeline an interrupted operation left; retried at the next start");
                    done.failed.push((id, e.to_string()));
                    continue;
                }
            }
            self.settle(id);
        }
        info!(
            deleted = done.deleted_timelines.len(),
            kept = done.kept_timelines.len(),
            failed = done.failed.len(),
            "recovered what an interrupted operation left"
        );
        Ok(done)
    }
}
