//! Deleting a timeline and stopping a compute that still runs on it.

use super::*;

impl Node {
    // ----- delete -------------------------------------------------------------------

    /// `DELETE /v1/timelines/{id}`: refused while its compute runs unless `force`, which
    /// stops the compute first. Space other timelines share stays; the rest is freed.
    ///
    /// The record says `Deleting` before anything is removed, and is removed last: a
    /// deletion interrupted anywhere (a crash, a full disk, an I/O error) is finished by
    /// the start-up scan or by DELETE again, which also accepts a timeline whose directory
    /// is already gone.
    #[instrument(skip(self))]
    pub async fn delete(&self, id: TimelineId, force: bool) -> Result<(), NodeError> {
        let resuming = self.deleting_or_record(id)?;
        let dir = self.dir(id);
        if !resuming && self.running(id).await.is_some() {
            if !force {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} has a running compute; stop it first or delete with ?force=true"
                )));
            }
            // Stopped before taking the lock: a snapshot waiting on this compute's
            // checkpoint then fails at once and lets go of the timeline.
            stop_postmaster(&dir.pgdata(), self.open_dir(&dir.pgdata())?).await?;
        }
        let lock = self.lock_of(id);
        let _w = lock.write().await;
        if !self.deleting_or_record(id)? {
            if self.running(id).await.is_some() {
                return Err(NodeError::Conflict(format!(
                    "the compute of timeline {id} started again while it was being deleted; stop it and retry"
                )));
            }
            // Its compute is stopped: a logical follower's slot on its source goes first,
            // while its password file is still there.
            self.release_source_slot(&self.record(id)?).await;
            let _m = self.meta_write.lock().await;
            let mut rec = self.record(id)?;
            rec.phase = Phase::Deleting;
            self.meta.put(&rec)?;
        }
        crate::failpoint::hit_async("delete.after_mark").await;
        let gone = self.layout.deleting(id);
        match std::fs::rename(&dir.0, &gone) {
            Ok(()) => {}
            // Retired by an earlier attempt, or lost: what is left is removed below.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_op(format!("retire timeline {id}"))(e)),
        }
        crate::failpoint::hit_async("delete.after_retire").await;
        let timelines = self.open_dir(&self.layout.timelines())?;
        // Nothing there (removed by an earlier attempt) is fine.
        tokio::task::spawn_blocking(move || remove_tree_in(&timelines, &gone)).await??;
        crate::failpoint::hit_async("delete.after_remove").await;
        self.note_deleted(id)?;
        self.meta.remove(id)?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        info!(timeline = %id, "deleted timeline");
        Ok(())
    }

    /// Whether `id`'s deletion was started already (`true`) or it is a timeline to
    /// delete (`false`); not found when it is neither.
    fn deleting_or_record(&self, id: TimelineId) -> Result<bool, NodeError> {
        match self.meta.get(id)? {
            Some(r) if r.phase == Phase::Deleting => Ok(true),
            Some(r) if r.phase != Phase::Creating => Ok(false),
            _ => Err(NodeError::NotFound(format!("timeline {id} does not exist"))),
        }
    }
}

/// The postmaster running in `pgdata`, as a process of this PID namespace: the pid its
/// `postmaster.pid` names, if that process's working directory is this very data
/// directory. Else why not.
pub(super) fn local_postmaster(
    pgdata: &Path,
    pgdata_dir: &Dir,
) -> Result<nix::unistd::Pid, NodeError> {
    let Some(pid) = pgdata_dir
        .read("postmaster.pid")
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return Err(NodeError::Conflict(
            "the compute runs but its postmaster.pid is unreadable from here; stop the compute first".into(),
        ));
    };
    // The pid is only meaningful in the compute's own PID namespace. In Kubernetes the
    // compute is another Pod, and its pid may name an unrelated process here (even this
    // node itself): signal it only if that process runs in this very data directory.
    let same_dir = match (
        std::fs::canonicalize(format!("/proc/{pid}/cwd")),
        std::fs::canonicalize(pgdata),
    ) {
        (Ok(cwd), Ok(dir)) => cwd == dir,
        _ => false,
    };
    if !same_dir {
        return Err(NodeError::Conflict(
            "the compute runs in another process namespace (e.g. its own Pod); stop it first, then delete".into(),
        ));
    }
    Ok(nix::unistd::Pid::from_raw(pid))
}

pub(super) async fn stop_postmaster(pgdata: &Path, pgdata_dir: Dir) -> Result<(), NodeError> {
    use nix::sys::signal::{kill, Signal};
    let pid = local_postmaster(pgdata, &pgdata_dir)?;
    // SIGINT = fast shutdown.
    if kill(pid, Signal::SIGINT).is_err() {
        return Err(NodeError::Conflict(
            "the compute runs in another process namespace; stop it first, then delete".into(),
        ));
    }
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
