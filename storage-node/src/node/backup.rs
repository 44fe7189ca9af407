//! Off-node durability on the node: each durable timeline's archive pushed to the backup
//! repository through pgBackRest (a stanza per timeline), base backups of its snapshots,
//! Ramify's record of it beside them, and the way back: recovering every durable
//! timeline of a lost node from the bucket (see docs/architecture.md).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::OnceLock;

use super::*;
use crate::backup::{
    record_key, s3::Bucket, BackupError, BackupSet, BackupState, BucketRecord, PgBackRest, Repo,
    KEPT_LABEL, RECORD_FORMAT,
};

/// The node's repository and what it knows about each durable timeline's archiving.
pub struct Backups {
    pgbr: PgBackRest,
    bucket: Bucket,
    /// `<data>/backup`: pgBackRest's locks and spool, the clones it reads (mounted by no
    /// compute).
    work: PathBuf,
    /// A new base backup once this much WAL was written since the newest one.
    full_after_wal_bytes: u64,
    health: StdMutex<HashMap<TimelineId, Health>>,
    /// Timelines with a base backup under way.
    backing_up: StdMutex<HashSet<TimelineId>>,
    /// Serialises read-modify-write of backup states.
    state_write: StdMutex<()>,
}

/// How a durable timeline's archiving goes, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The last failure, while failing.
    pub error: Option<String>,
    pub failures: u32,
    /// No attempt before this (backing off after failures).
    pub next_try: Option<Instant>,
    /// Bytes in the timeline's archive not yet in the bucket.
    pub backlog_bytes: u64,
    /// The last base backup's failure, until one succeeds.
    pub backup_error: Option<String>,
}

/// Longest pause between two attempts while the repository fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The once-set repository of a node.
pub(super) type BackupSlot = OnceLock<Arc<Backups>>;

impl Backups {
    fn health_of(&self, id: TimelineId) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn update_health(&self, id: TimelineId, f: impl FnOnce(&mut Health)) {
        let mut m = self.health.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(id).or_default());
    }

    pub fn repo(&self) -> &Repo {
        self.pgbr.repo()
    }
}

/// Where a recovered timeline's base comes from.
struct Base {
    /// The stanza (timeline) holding the backup set.
    owner: TimelineId,
    set: BackupSet,
}

/// What a recovery from the bucket did.
#[derive(Debug, Default)]
pub struct Recovered {
    pub restored: Vec<TimelineId>,
    /// Durable forks whose own WAL did not reach past their fork point: made again as a
    /// fork of their recovered parent at that point.
    pub refork: Vec<TimelineId>,
    pub already_here: usize,
    pub deleted: usize,
    pub failed: Vec<(TimelineId, String)>,
}

impl Node {
    /// Gives the node a backup repository: every durable timeline is archived into it from
    /// now on (see [`Node::spawn_backups`]).
    pub fn set_backup(
        &self,
        repo: Repo,
        pgbackrest: PathBuf,
        full_after_wal_bytes: u64,
    ) -> Result<(), NodeError> {
        let work = self.layout.root().join("backup");
        std::fs::create_dir_all(&work).map_err(io_op(format!("create {}", work.display())))?;
        set_mode(&work, 0o700)?;
        let bucket = Bucket::new(&repo)?;
        let pgbr = PgBackRest::new(repo, &work, pgbackrest)?;
        let b = Backups {
            pgbr,
            bucket,
            work,
            full_after_wal_bytes,
            health: StdMutex::new(HashMap::new()),
            backing_up: StdMutex::new(HashSet::new()),
            state_write: StdMutex::new(()),
        };
        if self.backups.set(Arc::new(b)).is_err() {
            return Err(NodeError::Conflict(
                "the backup repository is already set".into(),
            ));
        }
        Ok(())
    }

    pub fn backups(&self) -> Option<&Arc<Backups>> {
        self.backups.get()
    }

    /// Whether `rec` is kept in the repository: when asked, else roots that follow no
    /// other Postgres.
    pub(super) fn is_durable(&self, rec: &TimelineRecord) -> bool {
        self.backups.get().is_some()
            && rec
                .request
                .backup
                .unwrap_or(rec.parent.is_none() && rec.request.follow.is_none())
    }

    /// For a durable timeline, what of its archive is in the repository (GC removes
    /// nothing else); `None` for a timeline that is not durable.
    pub(super) fn pushed_to_repository(
        &self,
        id: TimelineId,
    ) -> Result<Option<BackupState>, NodeError> {
        let rec = self.record(id)?;
        if !self.is_durable(&rec) {
            return Ok(None);
        }
        Ok(Some(self.meta.backup_state(id)?))
    }

    /// How a durable timeline's archiving stands; `None` for one that is not durable.
    pub(super) fn backup_status(&self, rec: &TimelineRecord) -> Option<ramify_api::BackupStatus> {
        let b = self.backups.get()?;
        if !self.is_durable(rec) {
            return None;
        }
        let st = self.meta.backup_state(rec.id).unwrap_or_default();
        let h = b.health_of(rec.id);
        Some(ramify_api::BackupStatus {
            repository: b.repo().describe(),
            healthy: h.error.is_none() && h.backup_error.is_none() && st.stanza_created,
            error: h
                .error
                .clone()
                .or_else(|| (!st.stanza_created).then(|| "not in the repository yet".to_string())),
            archived_to: st.pushed_to.clone(),
            archived_at: st.pushed_at,
            backlog_bytes: h.backlog_bytes,
            newest_backup: st.backups.last().map(|s| ramify_api::BackupInfo {
                set: s.set.clone(),
                snapshot: s.snapshot.clone(),
                lsn: s.end_lsn,
                time: s.time,
            }),
        })
    }

    /// Checks that the bucket is there and these credentials may use it.
    pub async fn check_backup_repo(&self) -> Result<(), NodeError> {
        let Some(b) = self.backups.get() else {
            return Ok(());
        };
        Ok(b.bucket.check().await?)
    }

    /// Runs a backup pass over every durable timeline every `every`, for the life of the
    /// process. A timeline whose pass fails is tried again after a growing pause (up to a
    /// minute); its WAL stays on the node meanwhile (GC keeps it).
    pub fn spawn_backups(self: &Arc<Self>, every: Duration) {
        if self.backups.get().is_none() {
            return;
        }
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every.max(Duration::from_millis(100)));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                node.backup_all().await;
            }
        });
    }

    /// One backup pass over every durable timeline (those backing off are skipped).
    pub async fn backup_all(self: &Arc<Self>) {
        let Some(b) = self.backups.get() else {
            return;
        };
        if let Err(e) = self.write_tombstones(b).await {
            warn!(error = %e, "cannot mark deleted timelines in the backup repository; retrying");
        }
        let Ok(all) = self.meta.all() else {
            return;
        };
        for rec in all {
            if rec.phase != Phase::Ready || !self.is_durable(&rec) {
                continue;
            }
            let h = b.health_of(rec.id);
            if h.next_try.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let pass = match self.backup_pass(rec.id).await {
                Ok(()) => self.spawn_backup_if_due(b, rec.id),
                Err(e) => Err(e),
            };
            match pass {
                Ok(()) => b.update_health(rec.id, |h| {
                    if h.error.is_some() {
                        info!(timeline = %rec.id, "archiving to the backup repository works again");
                    }
                    h.error = None;
                    h.failures = 0;
                    h.next_try = None;
                }),
                Err(e) => {
                    let message = e.to_string();
                    b.update_health(rec.id, |h| {
                        if h.error.as_deref() != Some(message.as_str()) {
                            warn!(timeline = %rec.id, error = %message, "archiving to the backup repository failed; WAL stays on the node until it is uploaded");
                        }
                        h.failures += 1;
                        let pause = Duration::from_secs(1 << h.failures.min(6)).min(MAX_BACKOFF);
                        h.next_try = Some(Instant::now() + pause);
                        h.error = Some(message);
                    });
                }
            }
        }
    }

    /// Makes the repository current for one durable timeline: its stanza, its record,
    /// every archived WAL file not yet pushed, and a base backup when one is due.
    pub async fn backup_pass(&self, id: TimelineId) -> Result<(), NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| NodeError::Conflict("this node has no backup repository".into()))?
            .clone();
        // The timeline's lock is held to read it, never across a call to the bucket (a
        // delete would wait for it).
        let g = self.read_lock(id).await;
        let rec = self.record(id)?;
        let stanza = id.to_string();
        let mut st = self.meta.backup_state(id)?;
        if st.deleted_at.is_some() {
            // Made again under an id deleted before (a retried create).
            st = self.update_backup_state(id, |s| s.deleted_at = None)?;
        }
        let ctl = b.work.join("control").join(&stanza);
        if !st.stanza_created || !ctl.join("global/pg_control").exists() {
            self.control_dir(&rec, &ctl)?;
        }
        // WAL, in name order: segments (and `.backup` files) up to a watermark; history
        // and partial files, which can arrive after a later segment, by name.
        self.drain_archive_of(&self.dir(id)).await?;
        let archive = self.open_dir(&self.dir(id).archive())?;
        let mut todo = Vec::new();
        let mut backlog = 0u64;
        for e in archive.entries().map_err(CloneError::from)? {
            let Some(name) = e.name.to_str() else {
                continue;
            };
            if crate::inbox::is_archive_name(name) && !st.has(name) {
                let size = archive
                    .lstat(name)
                    .ok()
                    .flatten()
                    .map_or(0, |s| s.st_size as u64);
                backlog += size;
                todo.push((name.to_string(), size));
            }
        }
        drop(g);
        todo.sort();
        b.update_health(id, |h| h.backlog_bytes = backlog);
        let pg1 = |p: &Path| OsString::from(format!("--pg1-path={}", p.display()));
        if !st.stanza_created {
            b.pgbr
                .run(
                    Some(&stanza),
                    "stanza-create",
                    &[pg1(&ctl), "--no-online".into()],
                )
                .await?;
            st = self.update_backup_state(id, |s| s.stanza_created = true)?;
        }
        self.write_record(&b, &rec, &mut st).await?;
        let spool = b.work.join("push");
        std::fs::create_dir_all(&spool).map_err(io_op("create the push directory"))?;
        let spool_dir = self.open_dir(&spool)?;
        for (name, size) in todo {
            // pgBackRest reads a clone in a directory only the node has: never the
            // timeline's own files, which a compute's mount reaches.
            spool_dir
                .remove_file_if_exists(&name)
                .map_err(CloneError::from)?;
            {
                let _g = self.read_lock(id).await;
                if self.record(id).is_err() {
                    return Ok(()); // deleted meanwhile
                }
                clone::clone_file(
                    &archive,
                    name.as_ref(),
                    &spool_dir,
                    name.as_ref(),
                    self.clone_method,
                )?;
            }
            let pushed = b
                .pgbr
                .run(
                    Some(&stanza),
                    "archive-push",
                    &[pg1(&ctl), spool.join(&name).into_os_string()],
                )
                .await;
            spool_dir
                .remove_file_if_exists(&name)
                .map_err(CloneError::from)?;
            pushed?;
            self.update_backup_state(id, |s| {
                if name.ends_with(".history") || name.ends_with(".partial") {
                    s.pushed_other.push(name.clone());
                } else {
                    s.pushed_to = Some(name.clone());
                }
                s.pushed_at = Some(Utc::now());
            })?;
            b.update_health(id, |h| {
                h.backlog_bytes = h.backlog_bytes.saturating_sub(size)
            });
        }
        Ok(())
    }

    /// Takes a base backup of timeline `id` if one is due, unless one is under way.
    /// A backup runs for minutes on a large database: in a task of its own, so the WAL
    /// pushes that bound what a lost volume loses go on meanwhile.
    fn spawn_backup_if_due(
        self: &Arc<Self>,
        b: &Arc<Backups>,
        id: TimelineId,
    ) -> Result<(), NodeError> {
        let rec = self.record(id)?;
        let st = self.meta.backup_state(id)?;
        let Some(snap) = self.backup_due(b, &rec, &st)? else {
            return Ok(());
        };
        if !b
            .backing_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            return Ok(());
        }
        let (node, b) = (Arc::clone(self), Arc::clone(b));
        tokio::spawn(async move {
            let result = async {
                let mut st = node.meta.backup_state(id)?;
                node.take_backup(&b, &rec, &snap, &mut st).await?;
                node.write_record(&b, &rec, &mut st).await
            }
            .await;
            if let Err(e) = result {
                let message = e.to_string();
                warn!(timeline = %id, error = %message, "base backup failed; it is tried again later");
                b.update_health(id, |h| h.backup_error = Some(message));
            } else {
                b.update_health(id, |h| h.backup_error = None);
            }
            b.backing_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        Ok(())
    }

    /// Changes a timeline's backup state as it is now in metadata (the push pass and a
    /// base backup running beside it both write it) and returns the new state.
    fn update_backup_state(
        &self,
        id: TimelineId,
        f: impl FnOnce(&mut BackupState),
    ) -> Result<BackupState, NodeError> {
        let b = self.backups.get().expect("only called with a repository");
        let _one = b.state_write.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.meta.backup_state(id)?;
        f(&mut st);
        self.meta.put_backup_state(id, &st)?;
        Ok(st)
    }

    /// `global/pg_control` and `PG_VERSION` of the timeline's first snapshot, in a
    /// directory of the node's own: what pgBackRest reads as the stanza's database.
    fn control_dir(&self, rec: &TimelineRecord, ctl: &Path) -> Result<(), NodeError> {
        let first = rec.snapshots.first().ok_or_else(|| {
            NodeError::Conflict(format!(
                "timeline {} has no snapshot yet to take its system identifier from",
                rec.id
            ))
        })?;
        let src = self.open_dir(&self.dir(rec.id).snapshot_pgdata(&first.info.name))?;
        let _ = std::fs::remove_dir_all(ctl);
        std::fs::create_dir_all(ctl.join("global"))
            .map_err(io_op("create the control directory"))?;
        set_mode(ctl, 0o700)?;
        let control = src
            .open_dir("global")
            .map_err(CloneError::from)?
            .read("pg_control")
            .map_err(CloneError::from)?;
        std::fs::write(ctl.join("global/pg_control"), control)
            .map_err(io_op("write pg_control"))?;
        let version = src.read("PG_VERSION").map_err(CloneError::from)?;
        std::fs::write(ctl.join("PG_VERSION"), version).map_err(io_op("write PG_VERSION"))?;
        Ok(())
    }

    /// Writes the timeline's record to the bucket when it changed.
    async fn write_record(
        &self,
        b: &Backups,
        rec: &TimelineRecord,
        st: &mut BackupState,
    ) -> Result<(), NodeError> {
        let record = BucketRecord {
            format: RECORD_FORMAT,
            id: rec.id,
            parent: rec.parent,
            request: rec.request.clone(),
            fork_lsn: rec.fork_lsn,
            fork_time: rec.fork_time,
            created_at: rec.created_at,
            backups: st.backups.clone(),
            deleted_at: None,
        };
        if st.record.as_ref() == Some(&record) {
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(&record).expect("records serialise");
        b.bucket.put(&record_key(rec.id), body).await?;
        *st = self.update_backup_state(rec.id, |s| s.record = Some(record))?;
        Ok(())
    }

    /// Notes that a durable timeline was deleted: the backup loop marks its record in
    /// the bucket (so a recovery does not bring it back) and then forgets it. No call to
    /// the bucket here: a delete never waits for one.
    pub(super) fn note_deleted(&self, id: TimelineId) -> Result<(), NodeError> {
        if self.backups.get().is_none() {
            return Ok(());
        }
        self.update_backup_state(id, |s| s.deleted_at = Some(Utc::now()))?;
        Ok(())
    }

    /// Writes the records of deleted timelines, marked deleted, to the bucket, and
    /// forgets their state. Their stanzas stay (no retention of the bucket's own yet).
    async fn write_tombstones(&self, b: &Backups) -> Result<(), NodeError> {
        for (id, st) in self.meta.backup_states()? {
            let Some(deleted_at) = st.deleted_at else {
                continue;
            };
            if matches!(self.meta.get(id)?, Some(r) if r.phase != Phase::Deleting) {
                continue; // made again meanwhile; its pass clears the mark
            }
            if let Some(mut record) = st.record.clone() {
                record.deleted_at = Some(deleted_at);
                let body = serde_json::to_vec_pretty(&record).expect("records serialise");
                b.bucket.put(&record_key(id), body).await?;
            }
            self.meta.remove_backup_state(id)?;
            b.health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        Ok(())
    }

    /// The snapshot to back up now, if one is due: the timeline has no base in the
    /// repository (neither its own nor an ancestor's before its fork point), or its
    /// newest snapshot is `full_after_wal_bytes` past its newest backup.
    fn backup_due(
        &self,
        b: &Backups,
        rec: &TimelineRecord,
        st: &BackupState,
    ) -> Result<Option<SnapshotRecord>, NodeError> {
        let newest = rec.snapshots.iter().max_by_key(|s| s.info.end_lsn).cloned();
        let Some(newest) = newest else {
            return Ok(None);
        };
        // A snapshot's WAL must be in the bucket before its backup is any use.
        let wal_pushed = st
            .pushed_to
            .as_deref()
            // A segment, or a `.backup` file named after one.
            .and_then(|n| n.get(..24))
            .and_then(wal::parse_name)
            .is_some_and(|f| matches!(f, wal::WalFile::Segment { segno, .. } if (segno + 1) * SEGMENT_SIZE >= newest.info.end_lsn.0));
        match st.backups.last() {
            None if self.covered_by_ancestor(rec)? => Ok(None),
            None => Ok(Some(newest)),
            Some(last)
                if wal_pushed
                    && newest.info.end_lsn > last.end_lsn
                    && newest.info.end_lsn.bytes_since(last.end_lsn) >= b.full_after_wal_bytes =>
            {
                Ok(Some(newest))
            }
            Some(_) => Ok(None),
        }
    }

    /// Whether a durable ancestor's backup, taken before this fork's fork point, is a
    /// base from which the fork can be recovered.
    fn covered_by_ancestor(&self, rec: &TimelineRecord) -> Result<bool, NodeError> {
        let (Some(parent), Some(fork_lsn)) = (rec.parent, rec.fork_lsn) else {
            return Ok(false);
        };
        let Ok(prec) = self.record(parent) else {
            return Ok(false);
        };
        if !self.is_durable(&prec) {
            return Ok(false);
        }
        let pst = self.meta.backup_state(parent)?;
        if pst.backups.iter().any(|s| s.consistent_lsn <= fork_lsn) {
            return Ok(true);
        }
        self.covered_by_ancestor(&prec)
    }

    /// An offline pgBackRest backup of snapshot `snap`: of a clone of it in the node's
    /// own directory, its `backup_label` renamed (pgBackRest would leave it out).
    async fn take_backup(
        &self,
        b: &Backups,
        rec: &TimelineRecord,
        snap: &SnapshotRecord,
        st: &mut BackupState,
    ) -> Result<(), NodeError> {
        let t0 = Instant::now();
        let stanza = rec.id.to_string();
        let stage = b.work.join("stage").join(&stanza);
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).map_err(io_op("create the backup staging directory"))?;
        {
            // The snapshot stays while it is cloned (GC and snapshot delete wait).
            let _h = self.history_of(rec.id).read_owned().await;
            let src = self.open_dir(&self.dir(rec.id).snapshot_pgdata(&snap.info.name))?;
            let dst = self.open_dir(&stage)?;
            let method = self.clone_method;
            tokio::task::spawn_blocking(move || {
                clone::clone_tree_whole(
                    &src,
                    &dst,
                    "pgdata",
                    method,
                    &|rel: &Path, is_dir: bool| !is_dir && rel == Path::new("postmaster.pid"),
                )
            })
            .await??;
        }
        let pgdata = stage.join("pgdata");
        if pgdata.join("backup_label").exists() {
            std::fs::rename(pgdata.join("backup_label"), pgdata.join(KEPT_LABEL))
                .map_err(io_op("rename the backup label"))?;
        }
        let result = b
            .pgbr
            .run(
                Some(&stanza),
                "backup",
                &[
                    format!("--pg1-path={}", pgdata.display()).into(),
                    "--no-online".into(),
                    "--type=full".into(),
                    "--process-max=2".into(),
                    format!("--annotation=ramify-snapshot={}", snap.info.name).into(),
                ],
            )
            .await;
        let _ = std::fs::remove_dir_all(&stage);
        result?;
        let label = newest_set(
            &b.pgbr
                .run(Some(&stanza), "info", &["--output=json".into()])
                .await?,
        )
        .ok_or_else(|| {
            NodeError::from(BackupError::Tool {
                command: "info".into(),
                message: format!("no backup set listed for stanza {stanza} right after a backup"),
            })
        })?;
        let set = BackupSet {
            set: label.clone(),
            snapshot: snap.info.name.clone(),
            start_lsn: snap.info.start_lsn,
            consistent_lsn: snap.consistent_lsn,
            end_lsn: snap.info.end_lsn,
            pg_timeline: snap.info.pg_timeline,
            time: snap.info.time,
        };
        *st = self.update_backup_state(rec.id, |s| s.backups.push(set.clone()))?;
        info!(timeline = %rec.id, snapshot = %snap.info.name, set = %label, elapsed_ms = t0.elapsed().as_millis() as u64, "base backup in the repository");
        Ok(())
    }

    // ----- recovery from the bucket ---------------------------------------------------

    /// Rebuilds, from the repository, every durable timeline this node does not have,
    /// parents first, under their own ids: a node whose volume was lost, or a timeline
    /// moved here from another node. Each is made like a fork (staging directory, one
    /// rename, one metadata commit), so a failure leaves nothing half-restored; failures
    /// are reported per timeline and do not stop the others (except their descendants).
    pub async fn recover_from_backup(&self) -> Result<Recovered, NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| {
                NodeError::Invalid("recovery needs a backup repository (--backup-repo)".into())
            })?
            .clone();
        let mut records = BTreeMap::new();
        for key in b.bucket.list("ramify/timelines/").await? {
            let Some(id) = key
                .strip_suffix(".json")
                .and_then(|k| k.parse::<TimelineId>().ok())
            else {
                continue;
            };
            let Some(body) = b.bucket.get(&record_key(id)).await? else {
                continue;
            };
            let r: BucketRecord = serde_json::from_slice(&body).map_err(|e| {
                BackupError::Bucket(format!(
                    "the record of timeline {id} in the repository is not valid: {e}"
                ))
            })?;
            if r.format != RECORD_FORMAT || r.id != id {
                return Err(BackupError::Bucket(format!(
                    "the record of timeline {id} in the repository has format {} (this node reads {RECORD_FORMAT}) or another id",
                    r.format
                ))
                .into());
            }
            records.insert(id, r);
        }
        let mut out = Recovered::default();
        if records.is_empty() {
            return Err(NodeError::NotFound(format!(
                "the backup repository {} holds no Ramify timelines",
                b.repo().describe()
            )));
        }
        // Parents first: by depth in the forest the records make.
        let depth = |mut id: TimelineId| {
            let mut d = 0;
            while let Some(p) = records.get(&id).and_then(|r| r.parent) {
                d += 1;
                id = p;
                if d > records.len() {
                    break;
                }
            }
            d
        };
        let mut order: Vec<TimelineId> = records.keys().copied().collect();
        order.sort_by_key(|id| (depth(*id), records[id].created_at));
        let mut failed: HashSet<TimelineId> = HashSet::new();
        // Timelines recovered in this run, by the backup set they started from.
        let mut restored: HashMap<TimelineId, (TimelineId, String)> = HashMap::new();
        for id in order {
            let r = &records[&id];
            if r.deleted_at.is_some() {
                out.deleted += 1;
                continue;
            }
            if self.meta.get(id)?.is_some() {
                out.already_here += 1;
                continue;
            }
            if let Some(p) = r.parent.filter(|p| failed.contains(p)) {
                failed.insert(id);
                out.failed
                    .push((id, format!("its parent {p} could not be recovered")));
                continue;
            }
            let t0 = Instant::now();
            let mut base_used = None;
            match self
                .recover_one(&b, r, &records, &restored, &mut base_used)
                .await
            {
                Ok(refork) => {
                    if let (false, Some(k)) = (refork, base_used) {
                        restored.insert(id, k);
                    }
                    info!(timeline = %id, parent = ?r.parent, refork, elapsed_ms = t0.elapsed().as_millis() as u64, "recovered timeline from the backup repository");
                    if refork {
                        out.refork.push(id);
                    } else {
                        out.restored.push(id);
                    }
                }
                Err(e) => {
                    warn!(timeline = %id, error = %e, "cannot recover timeline from the backup repository");
                    let _ = self.remove_tree(&self.layout.creating(id));
                    if matches!(self.meta.get(id), Ok(Some(r)) if r.phase == Phase::Creating) {
                        let _ = self.meta.remove(id);
                    }
                    failed.insert(id);
                    out.failed.push((id, e.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Recovers one timeline. Returns whether it was made again as a fork of its
    /// (recovered) parent because none of its own WAL after the fork point was archived.
    async fn recover_one(
        &self,
        b: &Backups,
        r: &BucketRecord,
        records: &BTreeMap<TimelineId, BucketRecord>,
        restored: &HashMap<TimelineId, (TimelineId, String)>,
        base_used: &mut Option<(TimelineId, String)>,
    ) -> Result<bool, NodeError> {
        let id = r.id;
        let stanza = id.to_string();
        let base = find_base(r, records).ok_or_else(|| {
            NodeError::NotFound(format!(
                "no base backup for timeline {id} in the repository (neither its own nor an ancestor's before its fork point)"
            ))
        })?;
        let mut rec = self.begin(id, &r.request)?;
        rec.parent = r.parent;
        rec.at = r.request.at.clone();
        rec.fork_lsn = r.fork_lsn;
        rec.fork_time = r.fork_time;
        rec.created_at = r.created_at;
        let dir = TimelineDir(self.layout.creating(id));
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        let t_restore = Instant::now();
        let pg1 = OsString::from(format!("--pg1-path={}", dir.pgdata().display()));
        // An ancestor recovered in this run from the same backup set: its starting state
        // (its `fork` snapshot, before recovery) is that backup restored, so it is
        // cloned — shared blocks and no download — with an empty pg_wal.
        let key = (base.owner, base.set.set.clone());
        let mut same_base = None;
        let mut cur = r.parent;
        while let Some(a) = cur {
            if restored.get(&a) == Some(&key) {
                same_base = Some(a);
                break;
            }
            cur = records.get(&a).and_then(|x| x.parent);
        }
        if let Some(a) = same_base {
            let src = self.open_dir(&self.dir(a).snapshot_pgdata("fork"))?;
            let dst = self.open_dir(&dir.0)?;
            let method = self.clone_method;
            tokio::task::spawn_blocking(move || {
                clone::clone_tree(&src, &dst, "pgdata", method, &|rel: &Path, is_dir: bool| {
                    rel.starts_with("pg_wal")
                        && rel != Path::new("pg_wal")
                        && !(is_dir && rel == Path::new("pg_wal/archive_status"))
                })
            })
            .await??;
        } else {
            std::fs::create_dir(dir.pgdata()).map_err(io_op("create pgdata"))?;
            set_mode(&dir.pgdata(), 0o700)?;
            b.pgbr
                .run(
                    Some(&base.owner.to_string()),
                    "restore",
                    &[
                        pg1.clone(),
                        format!("--set={}", base.set.set).into(),
                        "--type=preserve".into(),
                    ],
                )
                .await?;
        }
        *base_used = Some(key);
        if dir.pgdata().join(KEPT_LABEL).exists() {
            std::fs::rename(
                dir.pgdata().join(KEPT_LABEL),
                dir.pgdata().join("backup_label"),
            )
            .map_err(io_op("restore the backup label"))?;
        }
        std::fs::create_dir_all(dir.pg_wal().join("archive_status"))
            .map_err(io_op("create pg_wal"))?;
        steps.push(("restore", t_restore.elapsed()));
        // The timeline's own archive, from its stanza.
        let t_fetch = Instant::now();
        let own = self.fetch_archive(b, &stanza, &pg1, &dir.archive()).await?;
        steps.push(("fetch_wal", t_fetch.elapsed()));
        // Its history: the newest history file it archived (a root that never switched
        // Postgres timelines has none).
        let archive = self.open_dir(&dir.archive())?;
        let newest_history = own
            .iter()
            .filter_map(|(n, f)| match f {
                wal::WalFile::History { tli } => Some((*tli, n.clone())),
                _ => None,
            })
            .max();
        let history = match &newest_history {
            Some((_, name)) => parse_history(&String::from_utf8_lossy(
                &archive.read(name).map_err(CloneError::from)?,
            )),
            None => vec![],
        };
        let newest_tli = newest_history
            .as_ref()
            .map_or(base.set.pg_timeline, |(t, _)| *t);
        // A fork whose own first segment never reached the bucket: nothing of its own is
        // there to replay, and the parent's segment past the fork point must not be
        // replayed in its place. It is forked again from its recovered parent at its fork
        // point (what it lost is within the RPO).
        if let (Some(&(t_last, end_last)), Some(parent)) = (history.last(), r.parent) {
            let first_own = wal::segment_name(t_last + 1, end_last.0 / SEGMENT_SIZE);
            if !own.contains_key(&first_own) {
                drop(archive);
                self.remove_tree(&dir.0)?;
                self.meta.remove(id)?;
                let mut req = r.request.clone();
                req.at = Some(At::Lsn(r.fork_lsn.unwrap_or(end_last)));
                req.id = Some(id);
                let rec = self.fork(id, parent, &req).await?;
                let mut rec = rec;
                rec.created_at = r.created_at;
                self.meta.put(&rec)?;
                return Ok(true);
            }
        }
        // Every segment the lineage needs into pg_wal: each older Postgres timeline's
        // segments from the base up to (not including) the segment its successor starts
        // in, from this timeline's own archive or the nearest recovered ancestor's; then
        // all of its own files.
        let pg_wal = self.open_dir(&dir.pg_wal())?;
        let mut ancestors = Vec::new();
        let mut cur = r.parent;
        while let Some(a) = cur {
            ancestors.push(self.open_dir(&self.dir(a).archive())?);
            cur = records.get(&a).and_then(|x| x.parent);
        }
        let base_seg = base.set.start_lsn.0 / SEGMENT_SIZE;
        let mut begin = 0u64;
        let mut placed = 0u64;
        for &(tli, end) in &history {
            let (from, to) = (base_seg.max(begin / SEGMENT_SIZE), end.0 / SEGMENT_SIZE);
            begin = end.0;
            for segno in from..to {
                let name = wal::segment_name(tli, segno);
                let src = if own.contains_key(&name) {
                    &archive
                } else {
                    ancestors.iter().find(|a| a.has_file(&name)).ok_or_else(|| {
                        NodeError::NotFound(format!(
                            "WAL segment {name} (Postgres timeline {tli}) that timeline {id} replays is in neither its own archive nor an ancestor's"
                        ))
                    })?
                };
                place(src, &pg_wal, &name, self.clone_method)?;
                placed += 1;
            }
        }
        // The history file of every Postgres timeline of the lineage: recovery follows
        // timeline ids one by one, from its own up to the newest.
        for &(tli, _) in history.iter().skip(1) {
            let name = format!("{tli:08X}.history");
            if !own.contains_key(&name) {
                if let Some(src) = ancestors.iter().find(|a| a.has_file(&name)) {
                    place(src, &pg_wal, &name, self.clone_method)?;
                }
            }
        }
        let mut last_on_newest = None;
        for (name, f) in &own {
            place(&archive, &pg_wal, name, self.clone_method)?;
            if let wal::WalFile::Segment { tli, segno } = f {
                if *tli == newest_tli {
                    last_on_newest = Some(last_on_newest.map_or(*segno, |s: u64| s.max(*segno)));
                }
            }
        }
        // Recovery replays to the last record on the newest Postgres timeline (which
        // begins at its history's last switch point, or at the base).
        let end = Lsn((last_on_newest.map_or(base_seg, |s| s) + 1) * SEGMENT_SIZE);
        let newest_begins = history
            .last()
            .map_or(base.set.start_lsn, |&(_, e)| e.max(base.set.start_lsn));
        let t_end = Instant::now();
        let waldump = self.cfg.waldump.clone().ok_or_else(|| {
            NodeError::Conflict(
                "recovery needs pg_waldump to find where the recovered WAL ends (--pg-bin)".into(),
            )
        })?;
        let p = dir.pg_wal();
        let from = Lsn(newest_begins.0 / SEGMENT_SIZE * SEGMENT_SIZE).max(base.set.start_lsn);
        let last = tokio::task::spawn_blocking(move || {
            wal::last_record_before(&waldump, &p, newest_tli, from, end)
        })
        .await??;
        let Some(end_lsn) = last else {
            return Err(NodeError::Conflict(format!(
                "no WAL record of timeline {id} (Postgres timeline {newest_tli}) found in what was recovered"
            )));
        };
        let target = RecoveryTarget::Lsn(end_lsn);
        steps.push(("find_end", t_end.elapsed()));
        // Its starting state is its first snapshot, as a fork's is.
        let snap_dir = self
            .open_dir(&dir.snapshots())?
            .create_dir("fork", 0o700)
            .map_err(CloneError::from)?;
        let method = self.clone_method;
        let src = self.open_dir(&dir.pgdata())?;
        tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &snap_dir, "pgdata", method, &|_: &Path, _| false)
        })
        .await??;
        pgdata::prepare_recovery(&dir.pgdata(), target)
            .map_err(io_op("write recovery settings"))?;
        rec.snapshots.push(SnapshotRecord {
            info: SnapshotInfo {
                name: "fork".into(),
                kind: SnapshotKind::Fork,
                start_lsn: base.set.start_lsn,
                end_lsn,
                time: Utc::now(),
                pg_timeline: newest_tli,
            },
            consistent_lsn: base.set.consistent_lsn,
            after_lsn: None,
            plain_start: false,
        });
        let st = BackupState {
            stanza_created: true,
            pushed_to: own
                .iter()
                .filter(|(n, _)| !n.ends_with(".history"))
                .map(|(n, _)| n.clone())
                .max(),
            pushed_other: own
                .keys()
                .filter(|n| n.ends_with(".history"))
                .cloned()
                .collect(),
            pushed_at: None,
            backups: r.backups.clone(),
            record: None,
            deleted_at: None,
        };
        drop(archive);
        drop(pg_wal);
        let rec = self.commit(rec)?;
        self.meta.put_backup_state(id, &st)?;
        let steps: Vec<String> = steps
            .iter()
            .map(|(n, d)| format!("{n}={}ms", d.as_millis()))
            .collect();
        info!(timeline = %rec.id, base = %base.set.set, base_owner = %base.owner, base_cloned_from = ?same_base, lineage_segments = placed, own_files = own.len(), %end_lsn, steps = %steps.join(" "), "restored timeline");
        Ok(false)
    }

    /// Downloads every segment and history file of `stanza`'s archive into `dest`.
    async fn fetch_archive(
        &self,
        b: &Backups,
        stanza: &str,
        pg1: &OsString,
        dest: &Path,
    ) -> Result<BTreeMap<String, wal::WalFile>, NodeError> {
        let listing = b
            .pgbr
            .run(
                None,
                "repo-ls",
                &["--recurse".into(), format!("archive/{stanza}").into()],
            )
            .await?;
        let names: Vec<String> = listing
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(archive_entry_name)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        use futures::StreamExt;
        let results: Vec<Result<(), NodeError>> = futures::stream::iter(names.iter())
            .map(|name| async move {
                b.pgbr
                    .run(
                        Some(stanza),
                        "archive-get",
                        &[pg1.clone(), name.into(), dest.join(name).into_os_string()],
                    )
                    .await
                    .map(|_| ())
                    .map_err(NodeError::from)
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for r in results {
            r?;
        }
        let dir = self.open_dir(dest)?;
        Ok(wal::list(&dir)?)
    }
}

/// Clones `name` from `src` into `pg_wal`, marked archived (`.done`), so the recovered
/// compute does not archive it again.
fn place(src: &Dir, pg_wal: &Dir, name: &str, method: CloneMethod) -> Result<(), NodeError> {
    pg_wal
        .remove_file_if_exists(name)
        .map_err(CloneError::from)?;
    clone::clone_file(src, name.as_ref(), pg_wal, name.as_ref(), method)?;
    let status = pg_wal
        .open_dir("archive_status")
        .map_err(CloneError::from)?;
    let done = format!("{name}.done");
    status
        .remove_file_if_exists(&done)
        .map_err(CloneError::from)?;
    status.write(&done, b"", false).map_err(CloneError::from)?;
    Ok(())
}

/// The WAL name of an entry of a pgBackRest archive: `<segment>-<sha1>[.ext]` is a
/// segment, `<tli>.history` a history file; other entries (`archive.info`, partial and
/// backup files) are not needed to recover.
fn archive_entry_name(entry: &str) -> Option<String> {
    if let Some(f) = wal::parse_name(entry) {
        return matches!(f, wal::WalFile::History { .. }).then(|| entry.to_string());
    }
    let (seg, rest) = entry.split_at_checked(24)?;
    (rest.starts_with('-') && matches!(wal::parse_name(seg), Some(wal::WalFile::Segment { .. })))
        .then(|| seg.to_string())
}

/// The entries of a timeline history file: `(parent tli, switch point)` in order.
fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = f.next()?.parse().ok()?;
            Some((tli, lsn))
        })
        .collect()
}

/// The base a recovery of `r` starts from: its own newest backup, else the newest backup
/// of the nearest ancestor taken at or before the fork point that leads to `r`.
fn find_base(r: &BucketRecord, records: &BTreeMap<TimelineId, BucketRecord>) -> Option<Base> {
    if let Some(set) = r.backups.last() {
        return Some(Base {
            owner: r.id,
            set: set.clone(),
        });
    }
    let mut limit = r.fork_lsn?;
    let mut cur = r.parent;
    while let Some(a) = cur {
        let ar = records.get(&a)?;
        if let Some(set) = ar.backups.iter().rev().find(|s| s.consistent_lsn <= limit) {
            return Some(Base {
                owner: a,
                set: set.clone(),
            });
        }
        limit = ar.fork_lsn?;
        cur = ar.parent;
    }
    None
}

/// The label of the newest backup set in `pgbackrest info --output=json`.
fn newest_set(info: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v.as_array()?
        .first()?
        .get("backup")?
        .as_array()?
        .iter()
        .max_by_key(|b| {
            b.pointer("/timestamp/stop")
                .and_then(|t| t.as_i64())
                .unwrap_or(0)
        })?
        .get("label")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_archive_entries_and_history() {
        assert_eq!(
            archive_entry_name(
                "000000010000000000000003-4c2ab8b4c3cbd1bd4bd3a9a74b4b5dc4f0e0c0aa.lz4"
            )
            .as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(
            archive_entry_name("00000002.history").as_deref(),
            Some("00000002.history")
        );
        assert_eq!(archive_entry_name("archive.info"), None);
        assert_eq!(
            archive_entry_name("000000010000000000000003.partial-4c2a.lz4"),
            None
        );
        assert_eq!(
            parse_history(
                "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tat restore point\n"
            ),
            vec![(1, Lsn(0x3000148)), (2, Lsn(0x5000000))]
        );
    }

    #[test]
    fn base_is_own_or_nearest_ancestors_before_the_fork() {
        let set = |lsn: u64, name: &str| BackupSet {
            set: name.into(),
            snapshot: name.into(),
            start_lsn: Lsn(lsn),
            consistent_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn),
            pg_timeline: 1,
            time: Utc::now(),
        };
        let rec = |id, parent, fork: Option<u64>, backups| BucketRecord {
            format: RECORD_FORMAT,
            id,
            parent,
            request: CreateTimeline::default(),
            fork_lsn: fork.map(Lsn),
            fork_time: None,
            created_at: Utc::now(),
            backups,
            deleted_at: None,
        };
        let (root, mid, leaf) = (
            TimelineId::new_v4(),
            TimelineId::new_v4(),
            TimelineId::new_v4(),
        );
        let mut all = BTreeMap::new();
        all.insert(
            root,
            rec(root, None, None, vec![set(100, "r1"), set(900, "r2")]),
        );
        all.insert(mid, rec(mid, Some(root), Some(500), vec![]));
        all.insert(leaf, rec(leaf, Some(mid), Some(700), vec![]));
        // The leaf forked the middle at 700, the middle the root at 500: the root's backup
        // at 900 is after that fork, so the one at 100 is the base.
        let b = find_base(&all[&leaf], &all).unwrap();
        assert_eq!((b.owner, b.set.set.as_str()), (root, "r1"));
        let b = find_base(&all[&root], &all).unwrap();
        assert_eq!(b.set.set, "r2");
        all.insert(mid, rec(mid, Some(root), Some(50), vec![]));
        assert!(find_base(&all[&leaf], &all).is_none());
    }

    #[test]
    fn newest_set_from_info() {
        let info = r#"[{"name":"x","backup":[
            {"label":"20261206-010101F","timestamp":{"start":1,"stop":2}},
            {"label":"20261206-020202F","timestamp":{"start":3,"stop":4}}]}]"#;
        assert_eq!(newest_set(info).as_deref(), Some("20261206-020202F"));
        assert_eq!(newest_set("[]"), None);
    }
}
