//! What a crash of the process running the lifecycle leaves, put right at its next start.
//!
//! Every operation makes its new timeline (and starts its compute) before the branch
//! record that points at it is written, so that a branch never points at something
//! half-made. A crash between the two leaves a timeline no branch knows — with a
//! Postgres still running on it, as its compute outlives the process — and nothing else:
//! the operation did not happen. [`Lifecycle::recover`] runs before anything is served,
//! stops such computes and deletes such timelines. A timeline is kept when a branch is on
//! it, had it before a restore (`former_timelines`) or has a checkpoint on it.

use std::collections::HashSet;

use ramify_api::TimelineId;
use tracing::{info, warn};

use crate::core::{Lifecycle, LifecycleError, Runtime};
use crate::model::Branch;

/// What [`Lifecycle::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Timelines no branch needed, deleted (with the compute left running on them).
    pub deleted_timelines: Vec<TimelineId>,
    /// Of those, the ones a Postgres was still running on.
    pub stopped_computes: Vec<TimelineId>,
    /// Timelines that should have gone but could not be deleted (retried next start).
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
    /// Deletes every timeline no branch needs (see the module documentation), stopping
    /// the compute a crash left running on it first. Call it once at start, before any
    /// request is served: an operation in flight would look like a crash's leftover.
    pub async fn recover(&self) -> Result<Recovery, LifecycleError> {
        let branches = self.branches()?;
        let timelines = self.storage().list_timelines().await?;
        let keep = needed_timelines(&branches);
        let mut done = Recovery::default();
        for tl in timelines.iter().filter(|t| !keep.contains(&t.id)) {
            match self.runtime().stop_stray(tl).await {
                Ok(true) => {
                    warn!(timeline = %tl.id, pgdata = %tl.pgdata, "stopped a compute left running on a timeline no branch has (an operation cut short by a crash)");
                    done.stopped_computes.push(tl.id);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(timeline = %tl.id, error = %e, "cannot stop the compute on a timeline no branch has; not deleting it");
                    done.failed.push((tl.id, e));
                    continue;
                }
            }
            match self.storage().delete_timeline(tl.id, true).await {
                Ok(()) => {
                    info!(timeline = %tl.id, created_at = %tl.created_at, "deleted a timeline no branch has (an operation cut short by a crash)");
                    done.deleted_timelines.push(tl.id);
                }
                Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
                Err(e) => {
                    warn!(timeline = %tl.id, error = %e, "cannot delete a timeline no branch has");
                    done.failed.push((tl.id, e.to_string()));
                }
            }
        }
        if done.deleted_timelines.is_empty() && done.failed.is_empty() {
            info!(
                timelines = timelines.len(),
                branches = branches.len(),
                "recovery: every timeline belongs to a branch"
            );
        }
        Ok(done)
    }
}
