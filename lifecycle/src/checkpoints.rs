//! Checkpoints: named points of a branch's history, written in well under a second without
//! stopping its compute (a Postgres restore point, its LSN and time recorded with the
//! branch), and reverted to with `restore --at checkpoint:NAME`.

use std::time::Instant;

use ramify_api::CreateRestorePoint;
use tracing::info;

use crate::core::{Lifecycle, LifecycleError, Runtime};
use crate::model::*;

/// WAL since the newest snapshot above which a checkpoint also starts a storage snapshot
/// (in the background), so that reverting to a later checkpoint replays at most about
/// this much WAL.
pub const CHECKPOINT_SNAPSHOT_WAL_BYTES: u64 = 64 << 20;

impl<R: Runtime> Lifecycle<R> {
    /// Records a checkpoint of the branch now (waking it if suspended).
    pub async fn create_checkpoint(
        &self,
        name: &str,
        req: CreateCheckpoint,
    ) -> Result<CheckpointView, LifecycleError> {
        let started = Instant::now();
        if let Some(n) = &req.name {
            validate_checkpoint_name(n).map_err(LifecycleError::Invalid)?;
        }
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        let mut branch = self.branch(name)?;
        let cp_name = match req.name {
            Some(n) => n,
            None => next_checkpoint_name(&branch.checkpoints),
        };
        if let Some(c) = branch.checkpoints.iter().find(|c| c.name == cp_name) {
            return Err(LifecycleError::Conflict(format!(
                "branch {name:?} already has a checkpoint {cp_name:?} (at {}); choose another name",
                c.lsn
            )));
        }
        self.ensure_running(&mut branch).await?;
        let point = self
            .storage
            .create_restore_point(
                branch.timeline,
                &CreateRestorePoint {
                    name: cp_name.clone(),
                    snapshot_wal_bytes: Some(CHECKPOINT_SNAPSHOT_WAL_BYTES),
                },
            )
            .await?;
        let checkpoint = Checkpoint {
            name: cp_name,
            lsn: point.lsn,
            time: point.time,
            timeline: branch.timeline,
            snapshot: point.snapshot,
        };
        branch.checkpoints.push(checkpoint.clone());
        self.store.put(&branch)?;
        info!(branch = name, checkpoint = %checkpoint.name, lsn = %checkpoint.lsn, "checkpoint created");
        Ok(CheckpointView {
            checkpoint,
            held_by: branch.name,
            create_ms: Some(started.elapsed().as_millis() as u64),
        })
    }

    /// The branch's checkpoints, oldest first, each with the branch holding its history.
    pub fn checkpoints(&self, name: &str) -> Result<Vec<CheckpointView>, LifecycleError> {
        let branch = self.branch(name)?;
        let all = self.store.all()?;
        Ok(branch
            .checkpoints
            .into_iter()
            .map(|c| CheckpointView {
                held_by: all
                    .iter()
                    .find(|b| b.timeline == c.timeline)
                    .map_or_else(|| "-".to_string(), |b| b.name.clone()),
                checkpoint: c,
                create_ms: None,
            })
            .collect())
    }

    /// Forgets a checkpoint (its history stays as long as its timeline does).
    pub async fn delete_checkpoint(&self, name: &str, cp: &str) -> Result<(), LifecycleError> {
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        let mut branch = self.branch(name)?;
        let before = branch.checkpoints.len();
        branch.checkpoints.retain(|c| c.name != cp);
        if branch.checkpoints.len() == before {
            return Err(LifecycleError::NotFound(format!(
                "branch {name:?} has no checkpoint {cp:?}"
            )));
        }
        self.store.put(&branch)?;
        Ok(())
    }
}

/// Checks a checkpoint name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting
/// with a letter or digit (it is also the restore point's label).
pub fn validate_checkpoint_name(name: &str) -> Result<(), String> {
    ramify_api::names::validate_snapshot_name(name)
        .map_err(|_| format!("invalid checkpoint name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit (like step-3)"))
}

/// `cp-N`, N one more than the highest `cp-N` so far.
pub fn next_checkpoint_name(existing: &[Checkpoint]) -> String {
    let highest = existing
        .iter()
        .filter_map(|c| c.name.strip_prefix("cp-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("cp-{}", highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(name: &str) -> Checkpoint {
        Checkpoint {
            name: name.into(),
            lsn: ramify_api::Lsn(1),
            time: chrono::Utc::now(),
            timeline: uuid::Uuid::nil(),
            snapshot: None,
        }
    }

    #[test]
    fn automatic_names_count_up() {
        assert_eq!(next_checkpoint_name(&[]), "cp-1");
        assert_eq!(
            next_checkpoint_name(&[cp("cp-1"), cp("before-migration"), cp("cp-7")]),
            "cp-8"
        );
        assert_eq!(next_checkpoint_name(&[cp("cp-x")]), "cp-1");
    }

    #[test]
    fn checkpoint_names() {
        validate_checkpoint_name("step-3").unwrap();
        validate_checkpoint_name("agent.action_12").unwrap();
        for bad in ["", "Step", "-a", "a b", "a/b"] {
            let e = validate_checkpoint_name(bad).unwrap_err();
            assert!(e.contains("invalid checkpoint name"), "{bad}: {e}");
        }
    }
}
