//! Off-node durability on the node: each durable timeline's archive pushed to the backup
//! repository through pgBackRest (a stanza per timeline), base backups of its snapshots,
//! Ramify's record of it beside them, and the way back: recovering every durable
//! timeline of a lost node from the bucket (see docs/architecture.md).

use std::ffi::OsString;
use std::sync::OnceLock;

mod base;
mod heal;
mod import;
mod recover;
mod seal;
mod writer;
pub use recover::Recovered;
pub use writer::{host_name, HEARTBEAT_EVERY};

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
    /// One push pass at a time (the background loop's, a seal's): the watermark of what
    /// is in the bucket only moves forward.
    pass: tokio::sync::Mutex<()>,
    /// Serialises read-modify-write of backup states.
    state_write: StdMutex<()>,
    /// This node's claim on the prefix ([`Node::claim_backup_repo`]), and the name it is
    /// made under (kept to make it later when the bucket did not answer at start-up).
    writer: OnceLock<writer::Writer>,
    claim_as: OnceLock<(String, Duration)>,
    /// When the bucket was last checked for what the node put in it ([`heal`]).
    verified_at: StdMutex<Option<Instant>>,
    /// Why the last check of the bucket failed (every durable timeline shows it: an idle
    /// one pushes nothing that would fail).
    repo_error: StdMutex<Option<String>>,
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

/// WAL files of one timeline pushed at once.
const PUSH_PARALLEL: usize = 4;

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

    /// A repository at `repo`, with pgBackRest's working directory `work` (made).
    fn new(
        repo: Repo,
        pgbackrest: PathBuf,
        work: PathBuf,
        full_after_wal_bytes: u64,
    ) -> Result<Backups, NodeError> {
        std::fs::create_dir_all(&work).map_err(io_op(format!("create {}", work.display())))?;
        set_mode(&work, 0o700)?;
        Ok(Backups {
            bucket: Bucket::new(&repo)?,
            pgbr: PgBackRest::new(repo, &work, pgbackrest)?,
            work,
            full_after_wal_bytes,
            health: StdMutex::new(HashMap::new()),
            backing_up: StdMutex::new(HashSet::new()),
            pass: tokio::sync::Mutex::new(()),
            state_write: StdMutex::new(()),
            writer: OnceLock::new(),
            claim_as: OnceLock::new(),
            verified_at: StdMutex::new(None),
            repo_error: StdMutex::new(None),
        })
    }

    /// Removes what is left of `stanza` in the repository (`stanza-delete --force`,
    /// between pgBackRest's `stop` and `start` for it).
    async fn delete_stanza(&self, stanza: &str) -> Result<(), BackupError> {
        self.pgbr.run(Some(stanza), "stop", &[]).await?;
        let r = self
            .pgbr
            .run(Some(stanza), "stanza-delete", &["--force".into()])
            .await;
        self.pgbr.run(Some(stanza), "start", &[]).await?;
        r.map(|_| ())
    }
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
        let b = Backups::new(repo, pgbackrest, work, full_after_wal_bytes)?;
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
        let st = self.meta.backup_state(id)?;
        // One that was durable keeps its unpushed WAL also while the node runs without
        // its repository (restarted without --backup-repo): turning it back on must not
        // find a hole.
        if !self.is_durable(&rec) && st == BackupState::default() {
            return Ok(None);
        }
        Ok(Some(st))
    }

    /// How a durable timeline's archiving stands; `None` for one that is not durable.
    pub(super) fn backup_status(&self, rec: &TimelineRecord) -> Option<ramify_api::BackupStatus> {
        let b = self.backups.get()?;
        if !self.is_durable(rec) {
            return None;
        }
        let st = self.meta.backup_state(rec.id).unwrap_or_default();
        let mut h = b.health_of(rec.id);
        if h.error.is_none() {
            h.error = b
                .repo_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        Some(ramify_api::BackupStatus {
            repository: b.repo().describe(),
            healthy: h.error.is_none()
                && h.backup_error.is_none()
                && st.stanza_created
                && st.lost_at.is_none(),
            error: h.error.clone().or_else(|| match st.lost_at {
                Some(at) => Some(format!(
                    "the repository lost this timeline at {} (bucket emptied or made again); archived anew from the node, not recoverable until its new base backup is there",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
                None => (!st.stanza_created).then(|| "not in the repository yet".to_string()),
            }),
            archived_to: st.pushed_to.clone(),
            archived_at: st.pushed_at,
            backlog_bytes: h.backlog_bytes,
            newest_backup: st.backups.last().map(backup_info),
            backups: st.backups.iter().map(backup_info).collect(),
        })
    }

    /// Writes an object of Ramify's own under the repository's `ramify/` (sealed when
    /// the repository is encrypted).
    pub async fn put_repo_object(&self, name: &str, body: &[u8]) -> Result<(), NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| NodeError::Conflict("this node has no backup repository".into()))?;
        let body = match &b.repo().cipher_pass {
            Some(pass) => crate::backup::seal(pass, body)?,
            None => body.to_vec(),
        };
        Ok(b.bucket.put(&format!("ramify/{name}"), body).await?)
    }

    /// Reads an object [`Node::put_repo_object`] wrote; `None` when there is none.
    pub async fn get_repo_object(&self, name: &str) -> Result<Option<Vec<u8>>, NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| NodeError::Conflict("this node has no backup repository".into()))?;
        let Some(data) = b.bucket.get(&format!("ramify/{name}")).await? else {
            return Ok(None);
        };
        match &b.repo().cipher_pass {
            Some(pass) => match crate::backup::unseal(pass, &data)? {
                Some(plain) => Ok(Some(plain)),
                None => Err(BackupError::Config(format!(
                    "ramify/{name} in the repository is not encrypted, but this node's repository is: refusing to read it"
                ))
                .into()),
            },
            None if data.starts_with(b"RAMIFY-SEALED") => Err(BackupError::Config(format!(
                "ramify/{name} in the repository is encrypted: pass --backup-cipher-pass-file"
            ))
            .into()),
            None => Ok(Some(data)),
        }
    }

    /// Every durable timeline's backup status, for `/metrics`.
    pub fn backup_samples(&self) -> Result<Vec<(String, ramify_api::BackupStatus)>, NodeError> {
        Ok(self
            .meta
            .all()?
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .filter_map(|r| Some((r.id.to_string(), self.backup_status(r)?)))
            .collect())
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
        // Nothing is written before the prefix is this node's, and nothing once another
        // incarnation took it over.
        let unclaimed = match (b.writer.get(), b.claim_name()) {
            (None, Some((name, every))) => self
                .claim_backup_repo(&name, every)
                .await
                .err()
                .map(|e| format!("not archiving: {e}")),
            _ => b.may_write().err().map(|e| e.to_string()),
        };
        if let Some(why) = unclaimed {
            for rec in self.meta.all().unwrap_or_default() {
                if self.is_durable(&rec) {
                    b.update_health(rec.id, |h| h.error = Some(why.clone()));
                }
            }
            return;
        }
        self.verify_repository(b).await;
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
                // Deleted while its pass ran: nothing to report.
                Err(_) if self.record(rec.id).is_err() => {}
                Err(e) => {
                    let mut message = e.to_string();
                    // The bucket may have lost the timeline (it is then archived anew at
                    // the next pass) or be gone, which says more than the tool's error.
                    if let Some(why) = self.check_after_failure(b, rec.id).await {
                        if why.contains("does not exist") {
                            message = why;
                        }
                    }
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
        let _pass = b.pass.lock().await;
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
        // The watermark must never pass a segment the archive does not have yet (the
        // inbox keeps one whose move failed, and moves it later): segments go up to the
        // first gap — each must follow the one before on its Postgres timeline, or start
        // a newer one — and the rest wait. History and partial files are not held back.
        let gap = segment_gap(
            st.pushed_to.as_deref(),
            todo.iter().map(|(n, _)| n.as_str()),
        );
        if let Some(missing) = &gap {
            todo.retain(|(n, _)| {
                n.ends_with(".history") || n.ends_with(".partial") || n.as_str() < missing.as_str()
            });
        }
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
        // A spool of the timeline's own: pgBackRest reads clones in a directory only the
        // node has, never the timeline's files, which a compute's mount reaches.
        let spool = b.work.join("push").join(&stanza);
        std::fs::create_dir_all(&spool).map_err(io_op("create the push directory"))?;
        let spool_dir = self.open_dir(&spool)?;
        // Several pushes at once (a busy compute fills segments faster than one
        // pgBackRest process uploads them), recorded strictly in name order: the
        // watermark only ever covers files that are all in the bucket.
        let push = |name: String, size: u64| {
            let (archive, spool_dir, spool, b, stanza, ctl) =
                (&archive, &spool_dir, &spool, &b, &stanza, &ctl);
            async move {
                // Fenced meanwhile (a newer claim took the prefix): not one more file.
                b.may_write()?;
                spool_dir
                    .remove_file_if_exists(&name)
                    .map_err(CloneError::from)?;
                {
                    let _g = self.read_lock(id).await;
                    if self.record(id).is_err() {
                        return Ok(None); // deleted meanwhile
                    }
                    clone::clone_file(
                        archive,
                        name.as_ref(),
                        spool_dir,
                        name.as_ref(),
                        self.clone_method,
                    )?;
                }
                let pushed = b
                    .pgbr
                    .run(
                        Some(stanza),
                        "archive-push",
                        &[pg1(ctl), spool.join(&name).into_os_string()],
                    )
                    .await;
                spool_dir
                    .remove_file_if_exists(&name)
                    .map_err(CloneError::from)?;
                pushed?;
                Ok::<_, NodeError>(Some((name, size)))
            }
        };
        use futures::StreamExt;
        let mut pushes = futures::stream::iter(todo)
            .map(|(name, size)| push(name, size))
            .buffered(PUSH_PARALLEL);
        while let Some(done) = pushes.next().await {
            let Some((name, size)) = done? else {
                return Ok(());
            };
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
        if st.lost_at.is_some() {
            let st = self.meta.backup_state(id)?;
            if st.lost_at.is_some() && self.based_again(&st) {
                self.update_backup_state(id, |s| s.lost_at = None)?;
                info!(timeline = %id, "the timeline is in the backup repository again, with a base to recover from");
            }
        }
        if let Some(missing) = gap {
            return Err(NodeError::Conflict(format!(
                "the archive of timeline {id} has a gap before {missing}: later segments wait until it is filled"
            )));
        }

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
        // A timeline deleted meanwhile (its tombstone written, its state forgotten) gets
        // no state again: a base backup finishing after the delete must not revive it.
        if self.meta.get(id)?.is_none() {
            return Err(NodeError::NotFound(format!("timeline {id} was deleted")));
        }
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
        if !matches!(self.meta.get(rec.id)?, Some(r) if r.phase == Phase::Ready)
            || st.deleted_at.is_some()
        {
            return Ok(()); // deleted meanwhile: its tombstone goes in, not this
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
            // A base backup still running would write its record after the tombstone.
            if b.backing_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
            {
                continue;
            }
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
}

/// The first segment among `names` (sorted) that does not follow the one before it —
/// on its Postgres timeline, or as the start of a newer one — counting from `pushed`.
fn segment_gap<'a>(pushed: Option<&str>, names: impl Iterator<Item = &'a str>) -> Option<String> {
    let segment = |n: &str| match n.get(..24).and_then(wal::parse_name) {
        Some(wal::WalFile::Segment { tli, segno }) => Some((tli, segno)),
        _ => None,
    };
    let mut prev = pushed.and_then(segment);
    for n in names {
        if n.len() != 24 {
            continue; // history, partial and backup files
        }
        let Some((tli, segno)) = segment(n) else {
            continue;
        };
        if let Some((pt, ps)) = prev {
            if !(tli > pt || (tli == pt && segno == ps + 1)) {
                return Some(n.to_string());
            }
        }
        prev = Some((tli, segno));
    }
    None
}

/// A backup set as the API shows it.
fn backup_info(s: &crate::backup::BackupSet) -> ramify_api::BackupInfo {
    ramify_api::BackupInfo {
        set: s.set.clone(),
        snapshot: s.snapshot.clone(),
        lsn: s.end_lsn,
        time: s.time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_pushed_up_to_the_first_gap() {
        let seg = |tli, n| wal::segment_name(tli, n);
        let (a, b, c, d) = (seg(1, 3), seg(1, 4), seg(1, 6), seg(2, 6));
        assert_eq!(
            segment_gap(Some(&a), [b.as_str(), c.as_str()].into_iter()),
            Some(c.clone())
        );
        assert_eq!(segment_gap(Some(&a), [b.as_str()].into_iter()), None);
        // A newer Postgres timeline may start anywhere; a .backup name is no segment.
        let backup = format!("{b}.00000028.backup");
        assert_eq!(
            segment_gap(
                Some(&a),
                [b.as_str(), backup.as_str(), d.as_str()].into_iter()
            ),
            None
        );
        // The watermark may be a .backup file: its segment counts.
        assert_eq!(
            segment_gap(Some(&backup), [c.as_str()].into_iter()),
            Some(c.clone())
        );
        assert_eq!(segment_gap(None, [c.as_str()].into_iter()), None);
    }
}
