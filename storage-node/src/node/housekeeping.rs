//! Background work: draining archive inboxes, periodic snapshots and restore-window GC.

use super::*;

impl Node {
    // ----- archive inbox ----------------------------------------------------------

    /// Moves what the compute of `dir` archived into its inbox into its archive (see
    /// [`crate::inbox`]). Callers hold the timeline's lock (read or write).
    pub(super) async fn drain_archive_of(&self, dir: &TimelineDir) -> Result<Drained, NodeError> {
        let _one = self.draining.lock().await;
        let timeline = self.open_dir(&dir.0)?;
        let method = self.clone_method;
        let drained =
            tokio::task::spawn_blocking(move || inbox::drain(&timeline, method)).await??;
        if drained.any() {
            tracing::debug!(timeline = %dir.0.display(), ?drained, "archive inbox drained");
        }
        Ok(drained)
    }

    /// Drains every timeline's archive inbox: the background pass that keeps the
    /// archive current between forks (run every second or so).
    pub async fn drain_archives(&self) -> Result<Drained, NodeError> {
        let mut total = Drained::default();
        for rec in self.meta.all()? {
            if rec.phase != Phase::Ready {
                continue;
            }
            let _g = self.read_lock(rec.id).await;
            // Deleted while waiting for the lock.
            if self.record(rec.id).is_err() {
                continue;
            }
            match self.drain_archive_of(&self.dir(rec.id)).await {
                Ok(d) => {
                    total.moved += d.moved;
                    total.duplicates += d.duplicates;
                    total.rejected += d.rejected;
                    total.failed += d.failed;
                }
                Err(e) => {
                    warn!(timeline = %rec.id, error = %e, "cannot drain the archive inbox");
                    total.failed += 1;
                }
            }
        }
        Ok(total)
    }

    /// Runs [`Node::drain_archives`] every `every` (at least 100 ms) in a task of its own,
    /// for the life of the process.
    pub fn spawn_archive_drain(self: &Arc<Self>, every: Duration) {
        let node = Arc::clone(self);
        let every = every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                if let Err(e) = node.drain_archives().await {
                    warn!(error = %e, "draining archive inboxes failed");
                }
            }
        });
    }

    // ----- background: periodic snapshots and GC ------------------------------------

    /// One pass of the background work: restore-window GC, and periodic snapshots where
    /// due. A snapshot waits for a spread checkpoint (possibly minutes), so each runs in a
    /// task of its own and one slow compute never holds up the others or GC.
    pub async fn tick(self: &Arc<Self>) -> Result<(), NodeError> {
        for rec in self.meta.all()? {
            if rec.phase != Phase::Ready {
                continue;
            }
            if let Err(e) = self.gc(rec.id).await {
                warn!(timeline = %rec.id, error = %e, "restore-window GC failed");
            }
            if !self.claim_snapshotting(rec.id) {
                continue;
            }
            let node = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = node.maybe_snapshot(&rec).await {
                    warn!(timeline = %rec.id, error = %e, "periodic snapshot failed");
                }
                node.release_snapshotting(rec.id);
            });
        }
        Ok(())
    }

    pub(super) async fn maybe_snapshot(&self, rec: &TimelineRecord) -> Result<(), NodeError> {
        let (interval, wal_bytes) = (self.cfg.snapshot_interval, self.cfg.snapshot_wal_bytes);
        if interval.is_zero() && wal_bytes == 0 {
            return Ok(());
        }
        let dir = self.dir(rec.id);
        if !self.pg_has(rec.id, "PG_VERSION") || self.pg_has(rec.id, "recovery.signal") {
            return Ok(());
        }
        let newest = rec.snapshots.iter().max_by_key(|s| s.info.end_lsn);
        let current = match self.running(rec.id).await {
            Some(r) => match self.connect_compute(rec.id, r.port).await {
                Ok(c) => self.position(rec, &c).await?,
                Err(_) => return Ok(()), // starting up; next tick
            },
            None => self.read_pg_control(&dir.pgdata())?.checkpoint,
        };
        // A fork that replayed a long stretch to reach its point gets a base of its own
        // once it runs, with an immediate checkpoint (a spread one would leave every fork
        // of it replaying that stretch again for minutes).
        let own_base = newest.is_some_and(|s| {
            s.info.kind == SnapshotKind::Fork
                && s.info.end_lsn.bytes_since(s.info.start_lsn) >= FORK_REPLAY_FOR_OWN_BASE
        });
        let due = own_base
            || match newest {
                None => true,
                Some(s) => {
                    let new_wal = current.bytes_since(s.replay_counted_from());
                    let age = (Utc::now() - s.info.time).to_std().unwrap_or_default();
                    // An idle compute still writes a little WAL (a timed checkpoint after the
                    // snapshot's own): that alone must not cause snapshot after snapshot.
                    new_wal >= MIN_NEW_WAL
                        && ((!interval.is_zero() && age >= interval)
                            || (wal_bytes > 0 && new_wal >= wal_bytes))
                }
            };
        if due && !self.skip_snapshot_below_reserve(rec.id) {
            let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
            // A periodic snapshot forces no immediate checkpoint on the compute, except
            // a restored fork's first.
            self.snapshot(rec.id, &name, SnapshotKind::Periodic, own_base)
                .await?;
        }
        Ok(())
    }

    /// Deletes snapshots and archived WAL no fork inside the restore window needs.
    ///
    /// Removing waits for forks copying from this timeline's history (see
    /// [`Node::history_of`]), but only [`GC_HISTORY_WAIT`]: forks that arrive meanwhile
    /// queue behind GC, so GC rather tries again next pass than keep them waiting.
    pub async fn gc(&self, id: TimelineId) -> Result<(), NodeError> {
        let window =
            chrono::Duration::from_std(self.cfg.restore_window).unwrap_or(chrono::Duration::MAX);
        let window_start = Utc::now() - window;
        let _g = self.read_lock(id).await;
        let dir = self.dir(id);
        // Segments still in the inbox are judged against the window like the rest.
        self.drain_archive_of(&dir).await?;
        let history = self.history_of(id);
        let Ok(_h) = tokio::time::timeout(GC_HISTORY_WAIT, history.write_owned()).await else {
            tracing::debug!(timeline = %id, "restore-window GC deferred: forks are copying from this timeline's history");
            return Ok(());
        };
        let snaps = self.open_dir(&dir.snapshots())?;
        let archive = self.open_dir(&dir.archive())?;
        let (plan, retired) = {
            let _m = self.meta_write.lock().await;
            let mut rec = self.record(id)?;
            let kept = self.wal_kept_from(&rec);
            let plan = window::plan_gc(&rec.snapshots, kept, window_start);
            let mut retired = Vec::new();
            if !plan.snapshots.is_empty() || plan.wal_kept_from != kept {
                // Record first: from now on nothing will use what is deleted below.
                if let Some(k) = plan.wal_kept_from {
                    write_wal_kept_from(&archive, k)?;
                }
                rec.snapshots
                    .retain(|s| !plan.snapshots.contains(&s.info.name));
                self.meta.put(&rec)?;
                crate::failpoint::hit_async("gc.after_record").await;
                // Out of their names' way at once, as a snapshot delete does.
                for name in &plan.snapshots {
                    let r = format!(".deleting-{name}");
                    snaps.remove_tree(&r).map_err(CloneError::from)?;
                    match snaps.rename(name, &snaps, &r) {
                        Ok(()) => retired.push(r),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(CloneError::from(e).into()),
                    }
                }
            }
            (plan, retired)
        };
        // Removing goes through descriptors: a link planted in place of a snapshot or a
        // segment is removed itself, never what it points to.
        for name in &retired {
            snaps.remove_tree(name).map_err(CloneError::from)?;
        }
        if !retired.is_empty() {
            crate::failpoint::hit_async("gc.after_snapshots").await;
        }
        // Every pass sweeps the archive below wal-kept-from, so segments a pass recorded
        // but did not get to remove (the node stopped) are removed by the next.
        let mut freed_files = 0;
        // What a durable timeline has not pushed to the backup repository yet stays.
        let pushed = self.pushed_to_repository(id)?;
        if let Some(first) = plan.first_needed_segment() {
            for (name, f) in wal::list(&archive)? {
                if let wal::WalFile::Segment { segno, .. } = f {
                    if segno < first && pushed.as_ref().is_none_or(|p| p.has(&name)) {
                        archive
                            .remove_file_if_exists(&name)
                            .map_err(CloneError::from)?;
                        freed_files += 1;
                    }
                }
            }
            // Old timelines' partial segments are never needed once their range is gone.
            for e in archive.entries().map_err(CloneError::from)? {
                let n = e.name.to_string_lossy().into_owned();
                if let Some(seg) = n.strip_suffix(".partial").and_then(wal::parse_name) {
                    if matches!(seg, wal::WalFile::Segment { segno, .. } if segno < first)
                        && pushed.as_ref().is_none_or(|p| p.has(&n))
                    {
                        let _ = archive.remove_file_if_exists(&e.name);
                    }
                }
            }
        }
        if !plan.snapshots.is_empty() || freed_files > 0 {
            info!(timeline = %id, snapshots = plan.snapshots.len(), wal_segments = freed_files, "restore-window GC");
        }
        Ok(())
    }
}

/// How long GC waits for forks copying from a timeline's history before it leaves that
/// timeline to its next pass.
const GC_HISTORY_WAIT: Duration = Duration::from_secs(1);

/// WAL that must be written since the last snapshot before another periodic one is due.
pub(super) const MIN_NEW_WAL: u64 = 64 * 1024;

/// A fork whose first start replayed this much WAL or more (from its parent's snapshot to
/// its fork point) is given a snapshot of its own once it has started.
const FORK_REPLAY_FOR_OWN_BASE: u64 = 16 << 20;

pub(super) const WAL_KEPT_FROM: &str = "wal-kept-from";

pub(super) fn read_wal_kept_from(archive: &Dir) -> Option<Lsn> {
    let bytes = archive.read(WAL_KEPT_FROM).ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// Written before any WAL is deleted, durably, so forks never pick a base whose WAL is gone.
/// The temporary file is created new (`O_EXCL | O_NOFOLLOW`): a link planted under its
/// name is replaced, never written through.
pub(super) fn write_wal_kept_from(archive: &Dir, lsn: Lsn) -> Result<(), NodeError> {
    let tmp = format!("{WAL_KEPT_FROM}.tmp");
    archive
        .write(&tmp, lsn.to_string().as_bytes(), true)
        .map_err(CloneError::from)?;
    archive
        .rename(&tmp, archive, WAL_KEPT_FROM)
        .map_err(CloneError::from)?;
    archive.fsync().map_err(CloneError::from)?;
    Ok(())
}
