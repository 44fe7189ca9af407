//! Restore points and snapshots: taking, listing and deleting them.

use super::*;

impl Node {
    // ----- restore points -----------------------------------------------------------

    /// `POST /v1/timelines/{id}/restore-points`: a named restore point in the running
    /// compute's WAL, durably flushed, in one short transaction (the compute keeps
    /// serving). When a fork at the point would replay `snapshot_wal_bytes` of WAL or
    /// more from the newest snapshot, a snapshot is started in the background (unless one
    /// is already being taken), so a fork at a later point never has much WAL to replay.
    /// A timeline without any snapshot first gets one, so that the point can be forked at
    /// all.
    #[instrument(skip(self, req), fields(name = %req.name))]
    pub async fn create_restore_point(
        self: &Arc<Self>,
        id: TimelineId,
        req: &CreateRestorePoint,
    ) -> Result<RestorePointInfo, NodeError> {
        ramify_api::names::validate_snapshot_name(&req.name)
            .map_err(|e| NodeError::Invalid(e.replace("snapshot name", "restore point name")))?;
        // A point no snapshot precedes could never be forked: a timeline that has none yet
        // (a root before its first periodic one) gets one now, once.
        if self.record(id)?.snapshots.is_empty() && self.running(id).await.is_some() {
            let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
            self.snapshot(id, &name, SnapshotKind::Periodic, true)
                .await?;
        }
        let (lsn, time, rec) = {
            let _g = self.read_lock(id).await;
            let rec = self.record(id)?;
            let Some(running) = self.running(id).await else {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} has no running compute; a restore point is written by its Postgres, so start it first"
                )));
            };
            if super::follow::is_standby(&rec) {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} follows another Postgres and writes no WAL of its own: fork it at an LSN or a time of what it followed, or take a snapshot"
                )));
            }
            let c = self.connect_compute(id, running.port).await?;
            let (lsn, time) = control::restore_point(&c, &req.name).await?;
            (lsn, time, rec)
        };
        let wal_since_snapshot = rec
            .snapshots
            .iter()
            .max_by_key(|s| s.info.end_lsn)
            .map_or(lsn.0, |s| lsn.bytes_since(s.replay_counted_from()));
        let snapshot = match req.snapshot_wal_bytes {
            Some(limit) if limit > 0 && wal_since_snapshot >= limit => {
                self.snapshot_in_background(id)
            }
            _ => None,
        };
        info!(timeline = %id, %lsn, wal_since_snapshot, snapshot = ?snapshot, "restore point written");
        Ok(RestorePointInfo {
            name: req.name.clone(),
            lsn,
            time,
            wal_since_snapshot,
            snapshot,
        })
    }

    /// Marks `id` as having a snapshot in flight; false when it already had one.
    pub(super) fn claim_snapshotting(&self, id: TimelineId) -> bool {
        self.snapshotting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    /// Ends what [`Node::claim_snapshotting`] claimed.
    pub(super) fn release_snapshotting(&self, id: TimelineId) {
        self.snapshotting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Starts a snapshot of `id` in a task of its own, with a fast checkpoint (whoever asked
    /// wants the next fork to be quick); `None` when one is already being taken.
    pub(super) fn snapshot_in_background(self: &Arc<Self>, id: TimelineId) -> Option<String> {
        if !self.claim_snapshotting(id) {
            return None;
        }
        let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
        let node = Arc::clone(self);
        let task_name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = node
                .snapshot(id, &task_name, SnapshotKind::Periodic, true)
                .await
            {
                warn!(timeline = %id, error = %e, "snapshot after a restore point failed");
            }
            node.release_snapshotting(id);
        });
        Some(name)
    }

    // ----- snapshots ----------------------------------------------------------------

    /// `POST /v1/timelines/{id}/snapshots`: a named snapshot, taken now.
    pub async fn create_snapshot(
        &self,
        id: TimelineId,
        name: &str,
    ) -> Result<SnapshotInfo, NodeError> {
        ramify_api::names::validate_snapshot_name(name).map_err(NodeError::Invalid)?;
        if name == "fork" {
            return Err(NodeError::Invalid(
                "snapshot name \"fork\" is reserved for the fork point".into(),
            ));
        }
        self.ensure_reserve("a snapshot").await?;
        self.snapshot(id, name, SnapshotKind::Manual, true)
            .await
            .map_err(NodeError::refusal_is_conflict)
    }

    pub(super) async fn snapshot(
        &self,
        id: TimelineId,
        name: &str,
        kind: SnapshotKind,
        fast: bool,
    ) -> Result<SnapshotInfo, NodeError> {
        let _g = self.read_lock(id).await;
        // Two takes of one name would share (and remove) one staging directory.
        let _taking = Taking::claim(self, id, name)?;
        let rec = self.record(id)?;
        if rec.snapshots.iter().any(|s| s.info.name == name) {
            return Err(NodeError::Conflict(format!(
                "timeline {id} already has a snapshot {name:?}"
            )));
        }
        let dir = self.dir(id);
        if !self.pg_has(id, "PG_VERSION") || self.pg_has(id, "recovery.signal") {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has not been started yet; its fork snapshot already holds its only state"
            )));
        }
        let staging = dir.snapshot_staging(name);
        let snaps = self.open_dir(&dir.snapshots())?;
        let staging_name = format!(".creating-{name}");
        snaps.remove_tree(&staging_name).map_err(CloneError::from)?;
        let staging_dir = snaps
            .create_dir(&staging_name, 0o700)
            .map_err(CloneError::from)?;
        crate::failpoint::hit_async("snapshot.after_staging").await;
        let pg = staging.join("pgdata");
        let running = self.running(id).await;
        let mut stopped = running.is_none();
        let taken = async {
            match running {
                Some(r) => {
                    let b = self
                        .backup_into(&dir, r.port, &pg, &format!("ramify snapshot {name}"), fast)
                        .await?;
                    let after = match self.connect_compute(id, r.port).await {
                        Ok(c) => self.position_of(id, &c).await,
                        Err(_) => None,
                    };
                    Ok::<_, NodeError>((b.start_lsn, b.stop_lsn, b.time, b.pg_timeline, after))
                }
                None => {
                    // Cloned into by path, safely against a wake (see `super::stopped`).
                    drop(staging_dir);
                    let label = format!("ramify snapshot {name}");
                    match self.latest_of_stopped(id, &dir, &pg, &label, fast).await? {
                        stopped::Latest::Stopped(c) => {
                            Ok((c.redo, c.checkpoint, c.time, c.timeline, Some(c.checkpoint)))
                        }
                        stopped::Latest::Backup { backup: b, port } => {
                            stopped = false;
                            let after = match self.connect_compute(id, port).await {
                                Ok(c) => self.position_of(id, &c).await,
                                Err(_) => None,
                            };
                            Ok((b.start_lsn, b.stop_lsn, b.time, b.pg_timeline, after))
                        }
                    }
                }
            }
        }
        .await;
        let (start, end, time, tli, after) = match taken {
            Ok(v) => v,
            Err(e) => {
                let _ = snaps.remove_tree(&staging_name);
                return Err(e);
            }
        };
        if let Err(e) = snaps
            .open_dir(Path::new(&staging_name))
            .and_then(|d| d.sync_tree(self.durability))
        {
            let _ = snaps.remove_tree(&staging_name);
            return Err(CloneError::from(e).into());
        }
        crate::failpoint::hit_async("snapshot.before_publish").await;
        let info = SnapshotInfo {
            name: name.to_string(),
            kind,
            start_lsn: start,
            end_lsn: end,
            time,
            pg_timeline: tli,
        };
        // Published and recorded under the metadata lock, so no snapshot delete or GC
        // (which rename what they drop out of the way under the same lock) sees it half.
        let _m = self.meta_write.lock().await;
        let mut rec = match self.record(id) {
            Ok(r) if !r.snapshots.iter().any(|s| s.info.name == name) => r,
            Ok(_) => {
                let _ = snaps.remove_tree(&staging_name);
                return Err(NodeError::Conflict(format!(
                    "timeline {id} already has a snapshot {name:?}"
                )));
            }
            Err(e) => {
                let _ = snaps.remove_tree(&staging_name);
                return Err(e);
            }
        };
        // A directory of this name that no record references was left by a node that
        // stopped between publishing or deleting a snapshot and its record: no snapshot.
        if snaps.lstat(name).map_err(CloneError::from)?.is_some() {
            warn!(timeline = %id, snapshot = name, "replacing a snapshot directory no record references");
            snaps.remove_tree(name).map_err(CloneError::from)?;
        }
        snaps
            .rename(&staging_name, &snaps, name)
            .map_err(CloneError::from)?;
        // Durable from here on (on XFS this fsync is what makes the tree durable too).
        snaps.fsync().map_err(CloneError::from)?;
        crate::failpoint::hit_async("snapshot.after_publish").await;
        rec.snapshots.push(SnapshotRecord {
            info: info.clone(),
            consistent_lsn: end,
            after_lsn: after,
            plain_start: stopped,
        });
        rec.snapshots.sort_by_key(|s| s.info.end_lsn);
        self.meta.put(&rec)?;
        self.metrics.snapshot_taken();
        info!(timeline = %id, snapshot = name, kind = ?kind, start_lsn = %start, end_lsn = %end, "snapshot taken");
        Ok(info)
    }

    /// `GET /v1/timelines/{id}/snapshots`.
    pub fn list_snapshots(&self, id: TimelineId) -> Result<Vec<SnapshotInfo>, NodeError> {
        Ok(self
            .record(id)?
            .snapshots
            .into_iter()
            .map(|s| s.info)
            .collect())
    }

    /// `DELETE /v1/timelines/{id}/snapshots/{name}`. Waits for forks reading this
    /// timeline's history to finish their copy (see [`Node::history_of`]); forks that
    /// start meanwhile no longer see the snapshot.
    pub async fn delete_snapshot(&self, id: TimelineId, name: &str) -> Result<(), NodeError> {
        ramify_api::names::validate_snapshot_name(name).map_err(NodeError::Invalid)?;
        let _g = self.read_lock(id).await;
        let _h = self.history_of(id).write_owned().await;
        let snaps = self.open_dir(&self.dir(id).snapshots())?;
        let retired = format!(".deleting-{name}");
        {
            let _m = self.meta_write.lock().await;
            let mut rec = self.record(id)?;
            self.snapshot_named(&rec, name)?;
            rec.snapshots.retain(|s| s.info.name != name);
            self.meta.put(&rec)?;
            crate::failpoint::hit_async("snapshot_delete.after_record").await;
            // Out of the name's way at once: a new snapshot of the same name may follow.
            snaps.remove_tree(&retired).map_err(CloneError::from)?;
            match snaps.rename(name, &snaps, &retired) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(CloneError::from(e).into()),
            }
        }
        tokio::task::spawn_blocking(move || snaps.remove_tree(&retired).map_err(CloneError::from))
            .await??;
        Ok(())
    }
}

/// The claim of a snapshot name on a timeline while it is being taken, so a second take
/// of the same name is refused instead of sharing its staging directory. Released when
/// dropped, also when the request is dropped half-way.
struct Taking<'a> {
    node: &'a Node,
    key: (TimelineId, String),
}

impl<'a> Taking<'a> {
    fn claim(node: &'a Node, id: TimelineId, name: &str) -> Result<Taking<'a>, NodeError> {
        let key = (id, name.to_string());
        let claimed = node
            .taking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        if !claimed {
            return Err(NodeError::Conflict(format!(
                "snapshot {name:?} of timeline {id} is being taken by another request; wait for it (GET /v1/timelines/{id}/snapshots lists it once taken) or choose another name"
            )));
        }
        Ok(Taking { node, key })
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.node
            .taking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
