//! A fork from a snapshot keeps its starting state as its `fork` snapshot, taken after
//! the fork is created instead of before it.
//!
//! Such a fork's PGDATA before its first start is its parent's snapshot, cloned, plus the
//! WAL gathered into `pg_wal` (and, below a logical follower, its own
//! `postgresql.auto.conf`). Cloning costs one reference-count update per extent, and a
//! branch that takes scattered writes has many: at scale 100 after a few minutes of
//! pgbench, 1–2 s per clone. Making the snapshot a clone of the fresh PGDATA, as a fork
//! at latest does, doubled that on every restore and revert. Here the few files the build
//! added are cloned from the PGDATA into the snapshot's staging directory before the fork
//! is committed (they change once the compute runs), and the rest is cloned from the
//! parent's snapshot — which nothing changes — in the background, while the compute
//! starts.
//!
//! The `fork` snapshot is in the timeline's record from the commit, so its restore window
//! and its snapshot list are what they always were. Its directory appears when the clone
//! is done. Until then the job holds the timeline's history exclusively, so everything
//! that reads a snapshot's directory (a fork of the fork, a backup to the repository,
//! snapshot deletion, GC) waits for it, holds the parent's history and lock so the
//! parent's snapshot stays, and the timeline's lock so it is not deleted under it; no
//! periodic snapshot is started meanwhile. A job that fails, or a node that stops before
//! it is done, leaves a record without its directory: the job removes it, the next
//! start-up scan does (`reconcile_snapshots`), and the timeline's restore window then
//! begins at its next periodic snapshot — no data is lost, only that stretch of history.

use tokio::sync::OwnedRwLockWriteGuard;

use super::*;

/// Files of a fork's PGDATA that are not its parent snapshot's: cloned into its `fork`
/// snapshot before the compute may change them.
fn forks_own(rel: &Path) -> bool {
    rel.starts_with("pg_wal") || rel == Path::new("postgresql.auto.conf")
}

/// The rest of a fork snapshot, to be cloned from the parent's snapshot.
pub(super) struct ForkSnapshotJob {
    id: TimelineId,
    /// The parent's snapshot (its `snapshots/<name>/pgdata`).
    base: PathBuf,
    _history: OwnedRwLockWriteGuard<()>,
    _lock: OwnedRwLockReadGuard<()>,
    _parent_history: OwnedRwLockReadGuard<()>,
    _parent_lock: OwnedRwLockReadGuard<()>,
}

impl Node {
    /// Stages the fork snapshot of the fork being built in `dir` (not yet committed), from
    /// the parent's snapshot `base`: the fork's own files now, the rest by the returned
    /// job once the fork is committed. The parent's guards are the fork's own, kept.
    pub(super) async fn stage_fork_snapshot(
        &self,
        id: TimelineId,
        dir: &TimelineDir,
        base: PathBuf,
        parent_history: OwnedRwLockReadGuard<()>,
        parent_lock: OwnedRwLockReadGuard<()>,
    ) -> Result<ForkSnapshotJob, NodeError> {
        let staging = self
            .open_dir(&dir.snapshots())?
            .create_dir(".creating-fork", 0o700)
            .map_err(CloneError::from)?;
        let (method, src) = (self.clone_method, self.open_dir(&dir.pgdata())?);
        tokio::task::spawn_blocking(move || {
            clone::clone_tree_whole(&src, &staging, "pgdata", method, &|rel: &Path, _| {
                !forks_own(rel)
            })
        })
        .await??;
        // Nobody else can know the timeline before it is committed: these never wait.
        let history = self.history_of(id).write_owned().await;
        let lock = self.lock_of(id).read_owned().await;
        Ok(ForkSnapshotJob {
            id,
            base,
            _history: history,
            _lock: lock,
            _parent_history: parent_history,
            _parent_lock: parent_lock,
        })
    }

    /// Finishes `job`: clones the parent's snapshot into the staging directory, makes it
    /// durable and publishes it as `snapshots/fork`. On failure the record's `fork`
    /// snapshot is dropped (the timeline itself is sound). Returns whether it was taken.
    pub(super) async fn finish_fork_snapshot(&self, job: ForkSnapshotJob) -> bool {
        let id = job.id;
        let t0 = Instant::now();
        // No periodic snapshot of it starts meanwhile (a fork's first start can make one
        // due at once).
        let ours = self.claim_snapshotting(id);
        let done = self.publish_fork_snapshot(&job).await;
        if ours {
            self.release_snapshotting(id);
        }
        let taken = done.is_ok();
        match done {
            Ok(()) => {
                info!(timeline = %id, elapsed_ms = t0.elapsed().as_millis() as u64, "fork snapshot taken")
            }
            Err(e) => {
                warn!(timeline = %id, error = %e, "cannot take the fork snapshot: the timeline's restore window begins at its next snapshot");
                if let Ok(snaps) = self.open_dir(&self.dir(id).snapshots()) {
                    let _ = snaps.remove_tree(".creating-fork");
                }
                let _m = self.meta_write.lock().await;
                if let Ok(mut rec) = self.record(id) {
                    rec.snapshots.retain(|s| s.info.name != "fork");
                    if let Err(e) = self.meta.put(&rec) {
                        warn!(timeline = %id, error = %e, "cannot drop the record of the missing fork snapshot (the next start does)");
                    }
                }
            }
        }
        drop(job);
        taken
    }

    async fn publish_fork_snapshot(&self, job: &ForkSnapshotJob) -> Result<(), NodeError> {
        let snaps = self.open_dir(&self.dir(job.id).snapshots())?;
        let staging = snaps
            .open_dir(Path::new(".creating-fork/pgdata"))
            .map_err(CloneError::from)?;
        let (method, src) = (self.clone_method, self.open_dir(&job.base)?);
        tokio::task::spawn_blocking(move || {
            clone::clone_tree_whole_into(&src, &staging, method, &|rel: &Path, _| forks_own(rel))
        })
        .await??;
        crate::failpoint::hit_async("fork_snapshot.before_publish").await;
        snaps
            .open_dir(Path::new(".creating-fork"))
            .and_then(|d| d.sync_tree(self.durability))
            .map_err(CloneError::from)?;
        snaps
            .rename(".creating-fork", &snaps, "fork")
            .map_err(CloneError::from)?;
        snaps.fsync().map_err(CloneError::from)?;
        Ok(())
    }
}
