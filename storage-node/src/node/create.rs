//! Creating timelines: roots (a new cluster with a base snapshot), and forks at latest,
//! an LSN, a time or a snapshot.

use super::*;
use ramify_compute::PgUser;

/// The name of a root's first snapshot: the cluster `initdb` made, before any commit.
pub(super) const BASE_SNAPSHOT: &str = "base";

impl Node {
    // ----- create -------------------------------------------------------------------

    /// `POST /v1/timelines`. Returns the timeline and whether it was created now.
    #[instrument(skip(self, req), fields(timeline))]
    pub async fn create(
        self: &Arc<Self>,
        mut req: CreateTimeline,
    ) -> Result<(TimelineInfo, bool), NodeError> {
        if req.at.is_some() && req.parent.is_none() {
            return Err(NodeError::Invalid(
                "\"at\" is only valid with \"parent\": a root timeline starts as a new, empty cluster".into(),
            ));
        }
        if req.from_backup.is_some() && (req.parent.is_some() || req.follow.is_some()) {
            return Err(NodeError::Invalid(
                "\"from_backup\" makes a root that copies another node's timeline: not with \"parent\" or \"follow\"".into(),
            ));
        }
        if req.parent.is_some() && req.at.is_none() {
            req.at = Some(At::Latest);
        }
        // The password reaches the follower's password file only: the request kept in
        // metadata (and compared on a retry) has none.
        let source = req.follow.clone();
        if let Some(f) = &mut req.follow {
            if req.parent.is_some() {
                return Err(NodeError::Invalid(
                    "\"follow\" is only valid without \"parent\": a following root copies its source, a fork copies its parent".into(),
                ));
            }
            super::follow::validate(f)?;
            f.password = None;
        }
        let id = *req.id.get_or_insert_with(TimelineId::new_v4);
        tracing::Span::current().record("timeline", tracing::field::display(id));
        let id_lock = {
            let mut m = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id).or_default().clone()
        };
        let _guard = id_lock.lock().await;
        // Under the id's lock no other attempt is running, so a record still Creating was
        // left by one that died half-way (its task panicked, or an older node dropped it
        // with its client's connection): it is no timeline, and is made anew, never
        // reported as created.
        if let Some(stale) = self.meta.get(id)?.filter(|r| r.phase == Phase::Creating) {
            warn!(timeline = %id, created_at = %stale.created_at, "an earlier attempt to create this timeline stopped half-way: removing what it left and creating it again");
            self.remove_tree(&self.layout.creating(id))?;
            self.meta.remove(id)?;
        }
        if let Some(existing) = self.meta.get(id)? {
            if existing.phase == Phase::Deleting {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} is being deleted; create it again once DELETE /v1/timelines/{id} has finished"
                )));
            }
            if existing.request != req {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} already exists with a different request (parent {:?}, at {})",
                    existing.parent.map(|p| p.to_string()),
                    existing
                        .at
                        .as_ref()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into())
                )));
            }
            return Ok((self.info(&existing).await?, false));
        }
        self.ensure_reserve(if req.parent.is_some() {
            "a fork"
        } else {
            "a new root timeline"
        })
        .await?;
        let started = Instant::now();
        let result = match req.parent {
            None => match &source {
                Some(s) if s.mode.is_physical() => self.create_follower(id, &req, s).await,
                Some(s) => self.create_logical_follower(id, &req, s).await,
                None => match req.from_backup.clone() {
                    Some(from) => self.import_from_backup(id, &req, &from).await,
                    None => self.create_root(id, &req).await,
                },
            },
            Some(parent) => self.fork(id, parent, &req).await.map(|(rec, job)| {
                if let Some(job) = job {
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        if node.finish_fork_snapshot(job).await {
                            node.make_spare(id).await;
                        }
                    });
                }
                rec
            }),
        }
        .map_err(NodeError::refusal_is_conflict);
        match &result {
            Ok(_) => self.metrics.fork_ok(req.at.as_ref(), started.elapsed()),
            Err(e) => {
                self.metrics.fork_failed(e.code());
                // Leave nothing half-made behind a failed create.
                let _ = self.remove_tree(&self.layout.creating(id));
                if matches!(self.meta.get(id), Ok(Some(r)) if r.phase == Phase::Creating) {
                    let _ = self.meta.remove(id);
                }
            }
        }
        let rec = result?;
        Ok((self.info(&rec).await?, true))
    }

    pub(super) fn begin(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
    ) -> Result<TimelineRecord, NodeError> {
        let rec = TimelineRecord {
            id,
            parent: req.parent,
            at: req.at.clone(),
            request: req.clone(),
            phase: Phase::Creating,
            fork_lsn: None,
            fork_time: None,
            created_at: Utc::now(),
            snapshots: vec![],
        };
        self.meta.put(&rec)?;
        let staging = self.layout.creating(id);
        self.remove_tree(&staging)?;
        let dir = TimelineDir(staging);
        for d in [
            dir.0.clone(),
            dir.archive(),
            dir.inbox(),
            dir.snapshots(),
            dir.run(),
        ] {
            std::fs::create_dir(&d).map_err(io_op(format!("create {}", d.display())))?;
        }
        set_mode(&dir.run(), 0o700)?;
        set_mode(&dir.inbox(), 0o700)?;
        crate::failpoint::hit("create.after_begin");
        Ok(rec)
    }

    /// Makes the staging directory the timeline: durable first, then one rename, then one
    /// metadata commit. A crash before the commit is cleaned up at start-up.
    pub(super) fn commit(&self, mut rec: TimelineRecord) -> Result<TimelineRecord, NodeError> {
        let staging = self.layout.creating(rec.id);
        // This tree only (a filesystem-wide syncfs would make a fork wait for every other
        // branch's dirty pages: seconds under load). On XFS the fsync of the timelines
        // directory after the rename is what makes it durable (see `sync_tree`).
        self.open_dir(&staging)?
            .sync_tree(self.durability)
            .map_err(CloneError::from)?;
        crate::failpoint::hit("create.before_publish");
        let target = self.layout.timeline(rec.id);
        // Directories a kubelet made for a compute Pod's subPath mounts before the
        // timeline existed (a Pod scheduled onto a volume being rebuilt from its backup
        // repository) are empty: they give way. Anything holding a file does not.
        if target.exists() {
            if only_empty_dirs(&target) {
                warn!(timeline = %rec.id, dir = %target.display(), "replacing empty directories left where the timeline goes (a compute Pod's mounts made before it existed)");
                std::fs::remove_dir_all(&target).map_err(io_op(format!(
                    "remove empty directories at {}",
                    target.display()
                )))?;
            } else {
                return Err(NodeError::Conflict(format!(
                    "{} already exists and holds files: not replaced",
                    target.display()
                )));
            }
        }
        std::fs::rename(&staging, &target)
            .map_err(io_op(format!("publish timeline {}", rec.id)))?;
        fsync_dir(&self.layout.timelines())?;
        crate::failpoint::hit("create.after_publish");
        rec.phase = Phase::Ready;
        self.meta.put(&rec)?;
        Ok(rec)
    }

    /// A root is born a Postgres cluster with a base snapshot, as a fork is born with its
    /// "fork" snapshot: its history, and its restore window, start at its creation.
    pub(super) async fn create_root(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
    ) -> Result<TimelineRecord, NodeError> {
        let mut rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        let Some(initdb) = self.cfg.initdb.clone() else {
            std::fs::create_dir(dir.pgdata()).map_err(io_op("create pgdata"))?;
            set_mode(&dir.pgdata(), 0o700)?;
            warn!(
                timeline = %id,
                "created an EMPTY root timeline: this node has no initdb (start it with --pg-bin DIR or RAMIFY_PG_BIN), so its first compute runs initdb and its history starts only at its first snapshot"
            );
            return self.commit(rec);
        };
        let t0 = Instant::now();
        let (lsn, initdb_ms) = self.init_root(&mut rec, &dir, &initdb).await?;
        let rec = self.commit(rec)?;
        info!(
            timeline = %id, %lsn, initdb_ms,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "created root timeline (initdb and base snapshot)"
        );
        Ok(rec)
    }

    /// `initdb` into the staging `dir` of a new root and its base snapshot (recorded in
    /// `rec`). Returns the snapshot's LSN and how long initdb took.
    pub(super) async fn init_root(
        &self,
        rec: &mut TimelineRecord,
        dir: &TimelineDir,
        initdb: &Path,
    ) -> Result<(Lsn, u64), NodeError> {
        let t0 = Instant::now();
        // The node runs as the Postgres OS user; as root (unsupported, warned at start-up)
        // initdb runs as that user instead.
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        // No sync here: `commit` makes the whole staging directory durable once.
        ramify_compute::process::initdb_with(initdb, &user, &dir.pgdata(), false).await?;
        let initdb_ms = t0.elapsed().as_millis() as u64;
        crate::failpoint::hit_async("root.after_initdb").await;
        self.clone_start_snapshot(dir, BASE_SNAPSHOT).await?;
        let c = self.read_pg_control(&dir.pgdata())?;
        // A shut-down cluster with no transaction of anyone's in it: its state is the
        // root's at every moment from its creation to its first commit. pg_control keeps
        // whole seconds, so the earlier of the two keeps the window's start at or before
        // the creation time the API shows.
        let time = rec.created_at.min(c.time);
        rec.snapshots.push(SnapshotRecord {
            info: SnapshotInfo {
                name: BASE_SNAPSHOT.into(),
                kind: SnapshotKind::Base,
                start_lsn: c.redo,
                end_lsn: c.checkpoint,
                time,
                pg_timeline: c.timeline,
            },
            consistent_lsn: c.checkpoint,
            after_lsn: Some(c.checkpoint),
            plain_start: true,
        });
        Ok((c.checkpoint, initdb_ms))
    }
}

/// Whether `dir` holds nothing but (nested) empty directories; symlinks and files count
/// as content, and so does anything unreadable.
fn only_empty_dirs(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir()) && only_empty_dirs(&e.path()))
    })
}

#[cfg(test)]
mod tests {
    use super::only_empty_dirs;

    #[test]
    fn only_empty_directories_give_way() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tl");
        for sub in ["pgdata", "archive-inbox", "run/deep"] {
            std::fs::create_dir_all(t.join(sub)).unwrap();
        }
        assert!(only_empty_dirs(&t));
        std::os::unix::fs::symlink("/etc", t.join("run/deep/link")).unwrap();
        assert!(!only_empty_dirs(&t), "a symlink is content");
        std::fs::remove_file(t.join("run/deep/link")).unwrap();
        std::fs::write(t.join("pgdata/PG_VERSION"), "15\n").unwrap();
        assert!(!only_empty_dirs(&t), "a file is content");
        assert!(!only_empty_dirs(&d.path().join("missing")));
    }
}
