//! Forks: at latest (a base backup of the running parent, or a copy of a stopped one),
//! and at an LSN, a time or a snapshot (a snapshot's copy and WAL replay to the point).

use super::*;
use ramify_compute::PgUser;

use super::fork_snapshot::ForkSnapshotJob;

impl Node {
    /// Builds and commits the fork `id` of `parent`. A fork from a snapshot comes with the
    /// job that finishes its `fork` snapshot, to be run once it is committed (see
    /// [`super::fork_snapshot`]).
    pub(super) async fn fork(
        &self,
        id: TimelineId,
        parent: TimelineId,
        req: &CreateTimeline,
    ) -> Result<(TimelineRecord, Option<ForkSnapshotJob>), NodeError> {
        let parent_guard = self.read_lock(parent).await;
        // Held until the copy is done: the snapshot and WAL the plan picks below stay.
        let history = self.history_of(parent).read_owned().await;
        let prec = self
            .record(parent)
            .map_err(|_| NodeError::NotFound(format!("parent timeline {parent} does not exist")))?;
        let pdir = self.dir(parent);
        let ppg = self.open_dir(&pdir.pgdata())?;
        if !ppg.has_file("PG_VERSION") {
            return Err(NodeError::Conflict(format!(
                "parent timeline {parent} has no data yet: start its compute once (it runs initdb) before forking it"
            )));
        }
        let at = req.at.clone().unwrap_or(At::Latest);
        let running = self.running(parent).await;
        let never_started = ppg.has_file("recovery.signal");
        drop(ppg);
        // Validate before doing any work, so a bad target costs nothing.
        let plan = self
            .plan(&prec, &at, running.as_ref(), never_started)
            .await?;
        let from_base = match &plan {
            Plan::FromSnapshot { base, .. } => Some(pdir.snapshot_pgdata(&base.info.name)),
            _ => None,
        };
        let mut rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        let t0 = Instant::now();
        // Where the fork left the parent's history, when its own state starts elsewhere
        // (a promoted warm standby: on a Postgres timeline of its own).
        let mut on_parent = None;
        let fork = match plan {
            // A backup of a hot standby ends at its replay position, which no record may
            // follow yet: the fork does not stop at a target but replays all the WAL it
            // was given, from the backup's label, and carries on the source's timeline
            // in an archive of its own.
            // Its warm standby, when one has caught up, replays none of that.
            Plan::Backup { port } if super::follow::is_standby(&prec) => {
                match self.fork_from_warm(parent, port, &dir).await {
                    Some((f, at)) => {
                        on_parent = Some(at);
                        f
                    }
                    None => {
                        let f = self.fork_backup(&pdir, port, &dir, id).await?;
                        Fork {
                            recovery: self
                                .through_the_end(&dir.pg_wal(), f.pg_timeline, f.start_lsn, f.lsn)
                                .await?,
                            plain_start: true,
                            ..f
                        }
                    }
                }
            }
            Plan::Backup { port } => self.fork_backup(&pdir, port, &dir, id).await?,
            Plan::Stopped => self.fork_stopped(parent, &pdir, &dir, id).await?,
            Plan::FromSnapshot { base, target } => {
                self.fork_from_snapshot(&prec, &pdir, base, target, &dir)
                    .await?
            }
        };
        if self.below_logical_follower(parent) {
            self.disable_apply_workers(&dir.pgdata())?;
        }
        let build_ms = t0.elapsed().as_millis() as u64;
        crate::failpoint::hit_async("fork.after_build").await;
        // The fork's starting state is also its first snapshot: its own history (and
        // its restore window) begins at the fork point. From a snapshot, only what the
        // build added is cloned now; the rest after the commit.
        let job = match from_base {
            Some(base) => Some(
                self.stage_fork_snapshot(id, &dir, base, history, parent_guard)
                    .await?,
            ),
            None => {
                self.clone_start_snapshot(&dir, "fork").await?;
                None
            }
        };
        let snapshot_ms = t0.elapsed().as_millis() as u64 - build_ms;
        crate::failpoint::hit_async("fork.after_fork_snapshot").await;
        pgdata::prepare_recovery(&dir.pgdata(), fork.recovery)
            .map_err(io_op("write recovery settings"))?;
        rec.fork_lsn = Some(on_parent.unwrap_or(fork.lsn));
        rec.fork_time = Some(fork.time);
        rec.snapshots.push(SnapshotRecord {
            info: SnapshotInfo {
                name: "fork".into(),
                kind: SnapshotKind::Fork,
                start_lsn: fork.start_lsn,
                end_lsn: fork.lsn,
                time: fork.time,
                pg_timeline: fork.pg_timeline,
            },
            consistent_lsn: fork.consistent_lsn,
            after_lsn: None,
            plain_start: fork.plain_start,
        });
        let t_commit = Instant::now();
        let rec = self.commit(rec)?;
        info!(
            timeline = %id, parent = %parent, at = %at, fork_lsn = %fork.lsn,
            clone_method = %self.clone_method, elapsed_ms = t0.elapsed().as_millis() as u64,
            build_ms, snapshot_ms, commit_ms = t_commit.elapsed().as_millis() as u64,
            "forked timeline"
        );
        if self.clone_method == CloneMethod::Copy {
            warn!(timeline = %id, "fork made by FULL COPY: this filesystem has no reflinks");
        }
        Ok((rec, job))
    }

    /// Clones the staging `dir`'s PGDATA, as it is before its first start, into its
    /// `snapshots/<name>/`: the starting state of a root (`base`), a fork or a recovered
    /// timeline (`fork`).
    pub(super) async fn clone_start_snapshot(
        &self,
        dir: &TimelineDir,
        name: &str,
    ) -> Result<(), NodeError> {
        let snap_dir = self
            .open_dir(&dir.snapshots())?
            .create_dir(name, 0o700)
            .map_err(CloneError::from)?;
        let method = self.clone_method;
        let src = self.open_dir(&dir.pgdata())?;
        tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &snap_dir, "pgdata", method, &|_: &Path, _| false)
        })
        .await??;
        Ok(())
    }

    /// Keeps a fork of a logical follower from ever running the subscription its
    /// catalog carries (see `follow::logical`): `postgresql.auto.conf`, read after every
    /// other settings file and writable only by superusers, says so. Written anew (the
    /// parent's file is read, never written through, whatever a tenant left there).
    fn disable_apply_workers(&self, pgdata: &Path) -> Result<(), NodeError> {
        const AUTO: &str = "postgresql.auto.conf";
        let pg = self.open_dir(pgdata)?;
        let mut conf = pg.read(AUTO).unwrap_or_default();
        if !String::from_utf8_lossy(&conf).contains(super::follow::logical::NO_APPLY_WORKERS) {
            if !conf.is_empty() && !conf.ends_with(b"\n") {
                conf.push(b'\n');
            }
            conf.extend_from_slice(super::follow::logical::NO_APPLY_WORKERS.as_bytes());
        }
        pg.write(AUTO, &conf, false).map_err(CloneError::from)?;
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        user.chown(&pgdata.join(AUTO))
            .map_err(ramify_compute::ProcessError::from)?;
        Ok(())
    }

    /// Decides how to serve a fork of `prec` at `at`, or says why the target is invalid.
    pub(super) async fn plan(
        &self,
        prec: &TimelineRecord,
        at: &At,
        running: Option<&Running>,
        never_started: bool,
    ) -> Result<Plan, NodeError> {
        let wkf = self.wal_kept_from(prec);
        let window = self.window(prec, running).await?;
        let range = || describe_window(&window);
        match at {
            At::Latest if never_started => {
                // Its PGDATA still awaits recovery; the same state is its fork snapshot.
                let base = self.snapshot_named(prec, "fork")?;
                Ok(Plan::FromSnapshot {
                    target: Target::Lsn(base.info.end_lsn),
                    base,
                })
            }
            At::Latest => Ok(match running {
                Some(r) => Plan::Backup { port: r.port },
                None => Plan::Stopped,
            }),
            At::Snapshot(name) => {
                let base = self.snapshot_named(prec, name)?;
                Ok(Plan::FromSnapshot {
                    target: Target::Lsn(base.info.end_lsn),
                    base,
                })
            }
            At::Lsn(lsn) => {
                let (Some(from), Some(to)) = (window.from_lsn, window.to_lsn) else {
                    return Err(no_snapshot_yet(prec.id));
                };
                if *lsn < from {
                    return Err(NodeError::OutOfRange(format!(
                        "lsn {lsn} is before the restore window of timeline {} ({})",
                        prec.id,
                        range()
                    )));
                }
                if *lsn > to {
                    return Err(NodeError::OutOfRange(format!(
                        "lsn {lsn} is after the last flushed LSN {to} of timeline {} ({})",
                        prec.id,
                        range()
                    )));
                }
                let base = window::base_for_lsn(&prec.snapshots, wkf, *lsn)
                    .cloned()
                    .ok_or_else(|| {
                        NodeError::OutOfRange(format!("lsn {lsn} is outside {}", range()))
                    })?;
                Ok(Plan::FromSnapshot {
                    base,
                    target: Target::Lsn(*lsn),
                })
            }
            At::Time(t) => {
                if self.cfg.waldump.is_none() {
                    return Err(NodeError::Conflict(
                        "forks at a time need pg_waldump, which this node could not find; start it with --pg-bin".into(),
                    ));
                }
                let Some(from) = window.from_time else {
                    return Err(no_snapshot_yet(prec.id));
                };
                let now = Utc::now();
                if *t < from {
                    return Err(NodeError::OutOfRange(format!(
                        "time {} is before the restore window of timeline {} ({})",
                        t.to_rfc3339(),
                        prec.id,
                        range()
                    )));
                }
                if *t > now {
                    return Err(NodeError::OutOfRange(format!(
                        "time {} is in the future (now is {}); the restore window of timeline {} is {}",
                        t.to_rfc3339(),
                        now.to_rfc3339(),
                        prec.id,
                        range()
                    )));
                }
                let base = window::base_for_time(&prec.snapshots, wkf, *t)
                    .cloned()
                    .ok_or_else(|| {
                        NodeError::OutOfRange(format!("time {t} is outside {}", range()))
                    })?;
                Ok(Plan::FromSnapshot {
                    base,
                    target: Target::Time(*t),
                })
            }
        }
    }

    pub(super) fn snapshot_named(
        &self,
        rec: &TimelineRecord,
        name: &str,
    ) -> Result<SnapshotRecord, NodeError> {
        rec.snapshots
            .iter()
            .find(|s| s.info.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<_> = rec.snapshots.iter().map(|s| s.info.name.as_str()).collect();
                NodeError::NotFound(format!(
                    "timeline {} has no snapshot {name:?} (it has: {})",
                    rec.id,
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ))
            })
    }

    /// Fork at latest of a running compute: Postgres's backup protocol around a clone.
    pub(super) async fn fork_backup(
        &self,
        pdir: &TimelineDir,
        port: u16,
        dir: &TimelineDir,
        id: TimelineId,
    ) -> Result<Fork, NodeError> {
        let b = self
            .backup_into(
                pdir,
                port,
                &dir.pgdata(),
                &format!("ramify fork {id}"),
                true,
            )
            .await?;
        Ok(Fork::of_backup(b))
    }

    /// Takes a base backup of the compute in `pdir` into `dest` (a new directory).
    pub(super) async fn backup_into(
        &self,
        pdir: &TimelineDir,
        port: u16,
        dest: &Path,
        label: &str,
        fast: bool,
    ) -> Result<Backup, NodeError> {
        let run = pdir.run();
        let client = control::connect(&run, port).await?;
        let (start_lsn, pg_timeline) = control::backup_start(&client, label, fast).await?;
        crate::failpoint::hit_async("backup.after_start").await;
        let method = self.clone_method;
        let (parent, name) = self.open_parent(dest)?;
        let src = self.open_dir(&pdir.pgdata());
        let cloned = tokio::task::spawn_blocking(move || {
            let dest = clone::clone_tree(&src?, &parent, &name, method, &pgdata::backup_exclude)?;
            Ok::<_, NodeError>((dest, parent.open_dir(&name).map_err(CloneError::from)?))
        })
        .await;
        // Any failure above drops `client`, which makes Postgres abort the backup.
        let (cloned, dest_dir) = cloned??;
        crate::failpoint::hit_async("backup.after_clone").await;
        let stop = control::backup_stop(&client).await?;
        crate::failpoint::hit_async("backup.after_stop").await;
        let time = control::now(&client).await?;
        drop(client);
        pgdata::write_backup_files(&dest_dir, &stop.label, &stop.tablespace_map)
            .map_err(CloneError::from)?;
        // The backup ends where its last record ends. A standby's backup ends at its replay
        // position, which can be the first byte of a segment nobody has written yet: the
        // segment before it then holds the last record.
        let last = if stop.lsn.0 % SEGMENT_SIZE == 0 && stop.lsn > start_lsn {
            Lsn(stop.lsn.0 - 1)
        } else {
            stop.lsn
        };
        let range = start_lsn.segment(SEGMENT_SIZE)..=last.segment(SEGMENT_SIZE);
        let pg_wal = dest_dir
            .ensure_dir("pg_wal", 0o700)
            .map_err(CloneError::from)?;
        // Everything the compute archived so far is moved into the archive first; its
        // inbox comes last, for a segment archived (and recycled from pg_wal) since.
        self.drain_archive_of(pdir).await?;
        let sources = self.wal_sources(&[pdir.pg_wal(), pdir.archive(), pdir.inbox()])?;
        let pg_wal = tokio::task::spawn_blocking(move || {
            let sources: Vec<&Dir> = sources.iter().collect();
            wal::gather(&pg_wal, &sources, range, method).map(|_| pg_wal)
        })
        .await??;
        wal::check_complete(&pg_wal, start_lsn, last, pg_timeline)?;
        tracing::debug!(files = cloned.files, bytes = cloned.bytes, %start_lsn, stop_lsn = %stop.lsn, "backup clone done");
        Ok(Backup {
            start_lsn,
            stop_lsn: stop.lsn,
            time,
            pg_timeline,
        })
    }

    /// Fork at latest of a stopped compute: a plain clone that starts as it is (crash
    /// recovery covers an unclean stop) and continues the parent's Postgres timeline in
    /// an archive of its own. A compute woken during the clone is backed up instead
    /// (see [`super::stopped`]).
    pub(super) async fn fork_stopped(
        &self,
        parent: TimelineId,
        pdir: &TimelineDir,
        dir: &TimelineDir,
        id: TimelineId,
    ) -> Result<Fork, NodeError> {
        let label = format!("ramify fork {id}");
        let c = match self
            .latest_of_stopped(parent, pdir, &dir.pgdata(), &label, true)
            .await?
        {
            stopped::Latest::Stopped(c) => c,
            stopped::Latest::Backup { backup, .. } => return Ok(Fork::of_backup(backup)),
        };
        crate::failpoint::hit_async("fork.stopped.after_clone").await;
        let (mut lsn, mut time) = (c.checkpoint, c.time);
        if c.state != pgcontrol::ClusterState::ShutDown {
            // Unclean stop: the clone holds commits after its last checkpoint, which crash
            // recovery will replay; report the last of them.
            if let Some(waldump) = self.cfg.waldump.clone() {
                let pw = dir.pg_wal();
                let commits = tokio::task::spawn_blocking(move || {
                    wal::commits(&waldump, &pw, c.timeline, c.redo, None)
                })
                .await??;
                if let Some(last) = commits.last().filter(|l| l.lsn > lsn) {
                    (lsn, time) = (last.lsn, last.time);
                }
            }
        }
        Ok(Fork {
            start_lsn: c.redo,
            lsn,
            consistent_lsn: c.checkpoint,
            time,
            pg_timeline: c.timeline,
            recovery: RecoveryTarget::None,
            plain_start: true,
        })
    }

    /// Fork at a point of history: the newest snapshot before it plus archived WAL (and the
    /// parent's unarchived tail) replayed to the target.
    pub(super) async fn fork_from_snapshot(
        &self,
        prec: &TimelineRecord,
        pdir: &TimelineDir,
        base: SnapshotRecord,
        target: Target,
        dir: &TimelineDir,
    ) -> Result<Fork, NodeError> {
        // A running parent writes a record past the target and flushes it, so recovery
        // always finds the record it stops after. One shutting down is waited for: its
        // shutdown checkpoint is that record.
        // A following root is a hot standby: it writes nothing; its source's WAL goes on.
        let writes = !super::follow::is_standby(prec);
        if let Some(c) = self
            .connect_unless_stopping(prec.id)
            .await?
            .filter(|_| writes)
        {
            control::mark_and_flush(
                &c,
                &format!("ramify-fork-{}", Utc::now().timestamp_millis()),
            )
            .await?;
        }
        let method = self.clone_method;
        let dst = self.open_dir(&dir.0)?;
        // The first fork after a restore finds the spare clone of its base made for it.
        if self.take_spare(&pdir.snapshots().join(&base.info.name), &dst)? {
            info!(parent = %prec.id, snapshot = %base.info.name, "took the snapshot's spare clone");
        } else {
            let src = self.open_dir(&pdir.snapshot_pgdata(&base.info.name))?;
            tokio::task::spawn_blocking(move || {
                // Each entry is a step, so a test can stall the walk half-way.
                let step = |_: &Path, _| {
                    crate::failpoint::hit("fork.snapshot.clone_entry");
                    false
                };
                clone::clone_tree_whole(&src, &dst, "pgdata", method, &step)
            })
            .await??;
        }
        crate::failpoint::hit_async("fork.snapshot.after_clone").await;
        let last_seg = match target {
            Target::Lsn(l) => l.segment(SEGMENT_SIZE),
            Target::Time(_) => u64::MAX,
        };
        let range = base.info.start_lsn.segment(SEGMENT_SIZE)..=last_seg;
        let pg_wal = dir.pg_wal();
        let pw = self
            .open_dir(&dir.pgdata())?
            .ensure_dir("pg_wal", 0o700)
            .map_err(CloneError::from)?;
        self.drain_archive_of(pdir).await?;
        let sources = self.wal_sources(&[pdir.archive(), pdir.pg_wal(), pdir.inbox()])?;
        let pw = tokio::task::spawn_blocking(move || {
            let sources: Vec<&Dir> = sources.iter().collect();
            wal::gather(&pw, &sources, range, method).map(|_| pw)
        })
        .await??;
        let tli = wal::newest_timeline(&pw);
        let scan_from = base.info.end_lsn.max(prec.fork_lsn.unwrap_or_default());
        let (lsn, time) = match target {
            Target::Lsn(l) => {
                wal::check_complete(&pw, base.info.start_lsn, l, tli)?;
                let t = self.commit_time_before(&pg_wal, tli, scan_from, l).await?;
                (l, t.unwrap_or(base.info.time))
            }
            Target::Time(t) => {
                let waldump = self.cfg.waldump.clone().unwrap_or_default();
                let pw = pg_wal.clone();
                let commits = tokio::task::spawn_blocking(move || {
                    wal::commits(&waldump, &pw, tli, scan_from, None)
                })
                .await??;
                match commits
                    .iter()
                    .rfind(|c| c.time <= t && c.lsn >= base.info.end_lsn)
                {
                    Some(c) => (c.lsn, c.time),
                    None => (base.info.end_lsn, base.info.time),
                }
            }
        };
        let (recovery, plain_start) = if lsn == base.info.end_lsn && base.plain_start {
            (RecoveryTarget::None, true)
        } else if !writes && !self.record_follows(&pg_wal, tli, lsn).await? {
            // A follower's WAL may end exactly at the target when its source has been
            // idle since: no record follows for recovery to stop before, and replaying
            // all of it from the base's label is the same state.
            let start = base.info.start_lsn;
            (self.through_the_end(&pg_wal, tli, start, lsn).await?, true)
        } else if lsn == base.consistent_lsn {
            (RecoveryTarget::Immediate, false)
        } else {
            (RecoveryTarget::Lsn(lsn), false)
        };
        Ok(Fork {
            start_lsn: base.info.start_lsn,
            lsn,
            consistent_lsn: base.consistent_lsn,
            time,
            pg_timeline: tli,
            recovery,
            plain_start,
        })
    }

    /// How a fork replays *all* the WAL gathered into `pg_wal`, whose last record ends at
    /// or after `end` (a follower's: no record need follow its replay position). A plain
    /// start would do it as crash recovery from the label, which Postgres ends with a
    /// synchronous checkpoint writing every page replay dirtied before the first
    /// connection. A target at the last complete record (inclusive) replays the same WAL
    /// to the same state and lets the first start pause there and promote fast
    /// ([`ramify_compute::promote`]). Plain when that record cannot be found (no
    /// `pg_waldump`, an error of it, or a record longer than the two segments scanned).
    pub(super) async fn through_the_end(
        &self,
        pg_wal: &Path,
        tli: u32,
        start: Lsn,
        end: Lsn,
    ) -> Result<RecoveryTarget, NodeError> {
        let Some(waldump) = self.cfg.waldump.clone() else {
            return Ok(RecoveryTarget::None);
        };
        if end <= start {
            return Ok(RecoveryTarget::None);
        }
        // Its WAL must end on timeline `tli` (where `end` is): the last record of an older
        // timeline could lie before the point recovery counts as consistent (a follower
        // that followed its source's failover during the backup), and stopping there is
        // refused. Such a fork starts plainly.
        if wal::newest_timeline(&self.open_dir(pg_wal)?) != tli {
            return Ok(RecoveryTarget::None);
        }
        // The segment the last record ends in, and the one before: the last record
        // starts in one of them unless it is longer than a segment.
        let from = Lsn(((end.0 - 1) / SEGMENT_SIZE)
            .saturating_sub(1)
            .saturating_mul(SEGMENT_SIZE)
            .max(start.0));
        let p = pg_wal.to_path_buf();
        let last =
            tokio::task::spawn_blocking(move || wal::last_record(&waldump, &p, tli, from)).await?;
        Ok(match last {
            Ok(Some(l)) => RecoveryTarget::Lsn(l),
            Ok(None) => RecoveryTarget::None,
            // The plain start is always right, only slower: no fork fails for this.
            Err(e) => {
                warn!(error = %e, "cannot find the last WAL record of a fork; it starts plainly");
                RecoveryTarget::None
            }
        })
    }

    /// Whether the WAL gathered into `pg_wal` has a record at or after `lsn`.
    async fn record_follows(&self, pg_wal: &Path, tli: u32, lsn: Lsn) -> Result<bool, NodeError> {
        let Some(waldump) = self.cfg.waldump.clone() else {
            return Ok(true);
        };
        let p = pg_wal.to_path_buf();
        Ok(
            tokio::task::spawn_blocking(move || wal::record_at_or_after(&waldump, &p, tli, lsn))
                .await??,
        )
    }

    /// Commit time of the last transaction before `lsn`, reading as little WAL as it can.
    pub(super) async fn commit_time_before(
        &self,
        pg_wal: &Path,
        tli: u32,
        floor: Lsn,
        lsn: Lsn,
    ) -> Result<Option<DateTime<Utc>>, NodeError> {
        let Some(waldump) = self.cfg.waldump.clone() else {
            return Ok(None);
        };
        if lsn <= floor {
            return Ok(None);
        }
        let mut span = 2 * SEGMENT_SIZE;
        loop {
            let start = Lsn(lsn.0.saturating_sub(span).max(floor.0));
            let (w, p) = (waldump.clone(), pg_wal.to_path_buf());
            let commits =
                tokio::task::spawn_blocking(move || wal::commits(&w, &p, tli, start, Some(lsn)))
                    .await??;
            if let Some(c) = commits.iter().rfind(|c| c.lsn < lsn) {
                return Ok(Some(c.time));
            }
            if start <= floor {
                return Ok(None);
            }
            span *= 8;
        }
    }
}

/// How a fork is served.
pub(super) enum Plan {
    Backup {
        port: u16,
    },
    Stopped,
    FromSnapshot {
        base: SnapshotRecord,
        target: Target,
    },
}

#[derive(Clone, Copy)]
pub(super) enum Target {
    Lsn(Lsn),
    Time(DateTime<Utc>),
}

pub(super) struct Fork {
    pub(super) start_lsn: Lsn,
    pub(super) lsn: Lsn,
    pub(super) consistent_lsn: Lsn,
    pub(super) time: DateTime<Utc>,
    pub(super) pg_timeline: u32,
    /// How the fork's first start recovers.
    pub(super) recovery: RecoveryTarget,
    /// Whether a plain start of the fork's snapshot (no recovery target: crash recovery
    /// from its label, or from its last checkpoint) reaches `lsn`.
    pub(super) plain_start: bool,
}

impl Fork {
    /// A fork of a base backup: archive recovery to its consistent point.
    fn of_backup(b: Backup) -> Fork {
        Fork {
            start_lsn: b.start_lsn,
            lsn: b.stop_lsn,
            consistent_lsn: b.stop_lsn,
            time: b.time,
            pg_timeline: b.pg_timeline,
            recovery: RecoveryTarget::Immediate,
            plain_start: false,
        }
    }
}

pub(super) struct Backup {
    pub(super) start_lsn: Lsn,
    pub(super) stop_lsn: Lsn,
    pub(super) time: DateTime<Utc>,
    pub(super) pg_timeline: u32,
}

/// The refusal of a fork at an LSN or a time of a timeline without a snapshot, whose
/// history therefore has no point to start from.
fn no_snapshot_yet(id: TimelineId) -> NodeError {
    NodeError::OutOfRange(format!(
        "timeline {id} has no snapshot yet (a root created empty, by an older release or a node without initdb), so no point of its history can be forked; take one with POST /v1/timelines/{id}/snapshots or fork at latest"
    ))
}

pub(super) fn describe_window(w: &RestoreWindow) -> String {
    let l = |x: Option<Lsn>| x.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
    let t = |x: Option<DateTime<Utc>>| x.map(|t| t.to_rfc3339()).unwrap_or_else(|| "?".into());
    format!(
        "valid range: lsn {} to {}, time {} to {}",
        l(w.from_lsn),
        l(w.to_lsn),
        t(w.from_time),
        t(w.to_time)
    )
}
