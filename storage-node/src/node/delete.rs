//! Deleting a timeline and stopping a compute that still runs on it.

use super::*;

impl Node {
    // ----- delete -------------------------------------------------------------------

    /// `DELETE /v1/timelines/{id}`: refused while its compute runs unless `force`, which
    /// stops the compute first. Space other timelines share stays; the rest is freed.
    #[instrument(skip(self))]
    pub async fn delete(&self, id: TimelineId, force: bool) -> Result<(), NodeError> {
        self.record(id)?;
        let dir = self.dir(id);
        if self.running(id).await.is_some() {
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
        self.record(id)?;
        if self.running(id).await.is_some() {
            return Err(NodeError::Conflict(format!(
                "the compute of timeline {id} started again while it was being deleted; stop it and retry"
            )));
        }
        let gone = self.layout.deleting(id);
        std::fs::rename(&dir.0, &gone).map_err(io_op(format!("retire timeline {id}")))?;
        self.meta.remove(id)?;
        let timelines = self.open_dir(&self.layout.timelines())?;
        tokio::task::spawn_blocking(move || remove_tree_in(&timelines, &gone)).await??;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        info!(timeline = %id, "deleted timeline");
        Ok(())
    }
}

pub(super) async fn stop_postmaster(pgdata: &Path, pgdata_dir: Dir) -> Result<(), NodeError> {
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
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
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
