//! Recovery from the bucket: every durable timeline a node lacks rebuilt under its own
//! id, parents first, each like a fork (staging directory, one rename, one commit).

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::super::*;
use super::Backups;
use crate::backup::{record_key, BackupSet, BackupState, BucketRecord, KEPT_LABEL, RECORD_FORMAT};

/// Where a copy keeps its ancestors' WAL while it is made (inside its staging directory,
/// removed before it is published).
const LINEAGE: &str = "lineage";

/// What [`Node::recover_one`] makes of a timeline in a repository.
#[derive(Clone, Copy)]
pub(super) enum Mode<'a> {
    /// The same timeline, on the node that lost it, after its recovered ancestors.
    Recover,
    /// A root `id` of this node, a copy of it: its lineage's WAL fetched from the
    /// repository.
    Import {
        id: TimelineId,
        req: &'a CreateTimeline,
    },
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
    // ----- recovery from the bucket ---------------------------------------------------

    /// Rebuilds, from the repository, every durable timeline this node does not have,
    /// parents first, under their own ids: a node whose volume was lost, or a timeline
    /// moved here from another node. Each is made like a fork (staging directory, one
    /// rename, one metadata commit), so a failure leaves nothing half-restored; failures
    /// are reported per timeline and do not stop the others (except their descendants).
    ///
    /// Until it has recovered every timeline, a marker in the data directory says a
    /// recovery is unfinished ([`Node::recovery_unfinished`]): a node killed half-way (a
    /// startup probe, a reboot) or left with timelines that failed goes on at its next
    /// start, though its volume is no longer empty.
    pub async fn recover_from_backup(&self) -> Result<Recovered, NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| {
                NodeError::Invalid("recovery needs a backup repository (--backup-repo)".into())
            })?
            .clone();
        let marker = self.recovery_marker();
        std::fs::write(&marker, b"").map_err(io_op(format!("write {}", marker.display())))?;
        fsync_dir(&self.layout.root().join("backup"))?;
        let out = self.recover_all(&b).await;
        // Done (or nothing there to recover): no marker. A failure keeps it.
        if matches!(&out, Ok(r) if r.failed.is_empty())
            || matches!(&out, Err(NodeError::NotFound(_)))
        {
            std::fs::remove_file(&marker).map_err(io_op(format!("remove {}", marker.display())))?;
            fsync_dir(&self.layout.root().join("backup"))?;
        }
        out
    }

    /// Whether a recovery from the repository started in this data directory and did not
    /// bring every timeline back.
    pub fn recovery_unfinished(&self) -> bool {
        self.recovery_marker().exists()
    }

    /// Whether this data directory holds no timeline at all, in any phase.
    pub fn holds_no_timeline(&self) -> Result<bool, NodeError> {
        Ok(self.meta.all()?.is_empty())
    }

    fn recovery_marker(&self) -> PathBuf {
        self.layout.root().join("backup").join("recovering")
    }

    async fn recover_all(&self, b: &Arc<Backups>) -> Result<Recovered, NodeError> {
        let mut records = BTreeMap::new();
        let mut unreadable = Vec::new();
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
            // A record this node cannot read is that timeline's failure, not the
            // others'.
            match serde_json::from_slice::<BucketRecord>(&body) {
                Ok(r) if r.format == RECORD_FORMAT && r.id == id => {
                    records.insert(id, r);
                }
                Ok(r) => unreadable.push((id, format!(
                    "its record in the repository has format {} (this node reads {RECORD_FORMAT}) or another id",
                    r.format
                ))),
                Err(e) => unreadable.push((id, format!("its record in the repository is not valid: {e}"))),
            }
        }
        let mut out = Recovered {
            failed: unreadable,
            ..Recovered::default()
        };
        if records.is_empty() && out.failed.is_empty() {
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
                .recover_one(b, r, &records, &restored, &mut base_used, Mode::Recover)
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
    pub(super) async fn recover_one(
        &self,
        b: &Backups,
        r: &BucketRecord,
        records: &BTreeMap<TimelineId, BucketRecord>,
        restored: &HashMap<TimelineId, (TimelineId, String)>,
        base_used: &mut Option<(TimelineId, String)>,
        mode: Mode<'_>,
    ) -> Result<bool, NodeError> {
        let stanza = r.id.to_string();
        let base = find_base(r, records).ok_or_else(|| {
            NodeError::NotFound(format!(
                "no base backup for timeline {} in the repository (neither its own nor an ancestor's before its fork point)",
                r.id
            ))
        })?;
        let (id, mut rec) = match mode {
            Mode::Recover => {
                let mut rec = self.begin(r.id, &r.request)?;
                // A parent that was not durable is not on this node: the timeline comes
                // back as a root of its own history (from its own backup), its fork point
                // kept.
                rec.parent = r.parent.filter(
                    |p| matches!(self.meta.get(*p), Ok(Some(x)) if x.phase == Phase::Ready),
                );
                rec.at = r.request.at.clone();
                rec.fork_lsn = r.fork_lsn;
                rec.fork_time = r.fork_time;
                rec.created_at = r.created_at;
                (r.id, rec)
            }
            // A copy is a root of this node: its history here starts with it.
            Mode::Import { id, req } => (id, self.begin(id, req)?),
        };
        // A copy that could not replay past its base is refused before anything is
        // downloaded (the operator asks again until it can).
        if let Mode::Import { .. } = mode {
            let names = archive_names(b, &stanza).await?;
            let files: Vec<wal::WalFile> =
                names.iter().filter_map(|n| wal::parse_name(n)).collect();
            let newest_tli = newest_tli_of(files.iter(), base.set.pg_timeline);
            let on_newest = files
                .iter()
                .any(|f| matches!(f, wal::WalFile::Segment { tli, .. } if *tli == newest_tli))
                || names.iter().any(|n| {
                    matches!(partial_segment(n), Some(wal::WalFile::Segment { tli, .. }) if tli == newest_tli)
                });
            if let (Some(parent), false, false) = (r.parent, base.owner == r.id, on_newest) {
                return Err(no_own_wal(r.id, parent));
            }
            if !on_newest && newest_tli > base.set.pg_timeline {
                return Err(promotion_not_archived(r.id, newest_tli));
            }
        }
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
        let own = match mode {
            Mode::Recover => self.fetch_archive(b, &stanza, &pg1, &dir.archive()).await?,
            Mode::Import { .. } => {
                let from = base.set.start_lsn.0 / SEGMENT_SIZE;
                self.fetch_archive_from(b, &stanza, &pg1, &dir.archive(), from..=u64::MAX)
                    .await?
            }
        };
        steps.push(("fetch_wal", t_fetch.elapsed()));
        let archive = self.open_dir(&dir.archive())?;
        // Ancestors recovered here, nearest first (one that was not durable is not here;
        // what the lineage needs from it is then missing, and said so below). A copy
        // fetches theirs from the repository, from its base on, beside its own.
        let mut ancestors = Vec::new();
        let mut cur = r.parent;
        // A copy needs of each ancestor's WAL only the stretch from the base to where
        // the next timeline on the path forked from it.
        let mut fork_seg = r.fork_lsn.map_or(u64::MAX, |l| l.0 / SEGMENT_SIZE);
        while let Some(a) = cur {
            match mode {
                Mode::Recover => {
                    if let Ok(d) = self.open_dir(&self.dir(a).archive()) {
                        ancestors.push(d);
                    }
                }
                Mode::Import { .. } => {
                    let dest = dir.0.join(LINEAGE).join(a.to_string());
                    std::fs::create_dir_all(&dest)
                        .map_err(io_op("create the lineage directory"))?;
                    let from = base.set.start_lsn.0 / SEGMENT_SIZE;
                    self.fetch_archive_from(b, &a.to_string(), &pg1, &dest, from..=fork_seg)
                        .await?;
                    ancestors.push(self.open_dir(&dest)?);
                }
            }
            fork_seg = records
                .get(&a)
                .and_then(|x| x.fork_lsn)
                .map_or(u64::MAX, |l| l.0 / SEGMENT_SIZE);
            cur = records.get(&a).and_then(|x| x.parent);
        }
        // The Postgres timeline it is on: the newest of its own files. A fork of a
        // stopped parent carries on its parent's, so its history file (if any) is an
        // ancestor's.
        let newest_tli = newest_tli_of(own.values(), base.set.pg_timeline);
        let history = if newest_tli > 1 {
            let name = format!("{newest_tli:08X}.history");
            let src = if own.contains_key(&name) {
                &archive
            } else {
                ancestors.iter().find(|a| a.has_file(&name)).ok_or_else(|| {
                    NodeError::NotFound(format!(
                        "history file {name} of timeline {id} is in neither its own archive nor an ancestor's"
                    ))
                })?
            };
            parse_history(&String::from_utf8_lossy(
                &src.read(&name).map_err(CloneError::from)?,
            ))
        } else {
            vec![]
        };
        let newest_begins = history.last().map_or(Lsn(0), |&(_, e)| e);
        let mut own_on_newest: Vec<u64> = own
            .values()
            .filter_map(|f| match f {
                wal::WalFile::Segment { tli, segno } if *tli == newest_tli => Some(*segno),
                _ => None,
            })
            .collect();
        // The unfinished last segment a seal archived (`POST …/seal`): replayed as that
        // segment, after the whole ones.
        let sealed_tail = sealed_tail(&archive, newest_tli, own_on_newest.iter().max().copied())?;
        own_on_newest.extend(sealed_tail);
        // A fork whose own first segment never reached the bucket: nothing of its own is
        // there to replay, and the parent's segment past the fork point must not be
        // replayed in its place. It is forked again from its recovered parent at its fork
        // point (what it lost is within the RPO).
        if let (Some(parent), false, true) =
            (r.parent, base.owner == r.id, own_on_newest.is_empty())
        {
            if let Mode::Import { .. } = mode {
                return Err(no_own_wal(r.id, parent));
            }
            drop(archive);
            drop(ancestors);
            self.remove_tree(&dir.0)?;
            self.meta.remove(id)?;
            let mut req = r.request.clone();
            req.at = Some(At::Lsn(r.fork_lsn.unwrap_or(newest_begins)));
            req.id = Some(id);
            let (_, job) = self.fork(id, parent, &req).await?;
            if let Some(job) = job {
                self.finish_fork_snapshot(job).await;
            }
            let mut rec = self.record(id)?;
            rec.created_at = r.created_at;
            self.meta.put(&rec)?;
            self.fresh_stanza(b, id).await;
            return Ok(true);
        }
        // A promotion (after a restore or a recovery) whose first segment on the new
        // Postgres timeline is not archived yet: nothing after the switch can be replayed.
        if own_on_newest.is_empty() && newest_tli > base.set.pg_timeline {
            return Err(promotion_not_archived(r.id, newest_tli));
        }
        let own_first = own_on_newest.iter().min().copied().unwrap_or(u64::MAX);
        let own_last = own_on_newest.iter().max().copied().unwrap_or(0);
        // Its own segments must be whole from the first to the last: a hole would end
        // recovery early and silently.
        if let Some(missing) = (own_first..=own_last).find(|s| !own_on_newest.contains(s)) {
            return Err(NodeError::NotFound(format!(
                "WAL segment {} of timeline {id} is missing from the repository between {} and {}: refusing to recover it short",
                wal::segment_name(newest_tli, missing),
                wal::segment_name(newest_tli, own_first),
                wal::segment_name(newest_tli, own_last)
            )));
        }
        // Its first own segment must hold its fork point: the parent's copy of that
        // segment goes on past it with the parent's own changes.
        if let (Some(_), false) = (r.parent, base.owner == r.id) {
            let fork_seg = r.fork_lsn.unwrap_or(newest_begins).0 / SEGMENT_SIZE;
            if own_first > fork_seg.max(newest_begins.0 / SEGMENT_SIZE) {
                return Err(NodeError::NotFound(format!(
                    "WAL segment {} of timeline {id}, which holds its fork point, is missing from the repository",
                    wal::segment_name(newest_tli, fork_seg.max(newest_begins.0 / SEGMENT_SIZE))
                )));
            }
        }
        let pg_wal = self.open_dir(&dir.pg_wal())?;
        let base_seg = base.set.start_lsn.0 / SEGMENT_SIZE;
        let mut begin = 0u64;
        let mut placed = 0u64;
        // Each older Postgres timeline up to its successor's first segment, and the
        // newest one up to its own first segment (a fork that carried on its parent's).
        let ranges: Vec<(u32, Lsn)> = history
            .iter()
            .copied()
            .chain(std::iter::once((
                newest_tli,
                Lsn(own_first.saturating_mul(SEGMENT_SIZE)),
            )))
            .collect();
        for &(tli, end) in &ranges {
            let (from, to) = (base_seg.max(begin / SEGMENT_SIZE), end.0 / SEGMENT_SIZE);
            begin = end.0.max(begin);
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
                self.keep_for_copy(mode, src, &archive, &name)?;
                placed += 1;
            }
        }
        // The history file of every Postgres timeline of the lineage: recovery follows
        // timeline ids one by one, from its own up to the newest.
        let lineage_tlis: Vec<u32> = history
            .iter()
            .map(|&(t, _)| t)
            .chain(std::iter::once(newest_tli))
            .filter(|t| *t > 1)
            .collect();
        for tli in lineage_tlis {
            let name = format!("{tli:08X}.history");
            if !own.contains_key(&name) {
                if let Some(src) = ancestors.iter().find(|a| a.has_file(&name)) {
                    place(src, &pg_wal, &name, self.clone_method)?;
                    self.keep_for_copy(mode, src, &archive, &name)?;
                }
            }
        }
        for name in own.keys() {
            place(&archive, &pg_wal, name, self.clone_method)?;
        }
        if let Some(segno) = sealed_tail {
            let name = wal::segment_name(newest_tli, segno);
            place_as(
                &archive,
                &format!("{name}.partial"),
                &pg_wal,
                &name,
                self.clone_method,
            )?;
        }
        // Recovery replays to the last record on the newest Postgres timeline (which
        // begins at its history's last switch point, or at the base).
        let last_seg = if own_on_newest.is_empty() {
            base_seg
        } else {
            own_last
        };
        let end = Lsn((last_seg + 1) * SEGMENT_SIZE);
        let newest_begins = newest_begins.max(base.set.start_lsn);
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
        // WAL that ends before its last segment began has a hole pg_waldump stopped at.
        if end_lsn.0 < last_seg * SEGMENT_SIZE {
            return Err(NodeError::NotFound(format!(
                "the WAL of timeline {id} recovered from the repository ends at {end_lsn}, before its last archived segment {}: a segment is missing; refusing to recover it short",
                wal::segment_name(newest_tli, last_seg)
            )));
        }
        // A copy of a sealed timeline replays exactly through the sealed record: every
        // commit, and nothing its node wrote after (its compute started again).
        let through = match mode {
            Mode::Import { req, .. } => req.from_backup.as_ref().and_then(|f| f.through),
            Mode::Recover => None,
        };
        let end_lsn = match through {
            Some(t) if end_lsn < t => {
                return Err(NodeError::Conflict(format!(
                    "the WAL of timeline {id} in the repository ends at {end_lsn}, before {t} where it was sealed: seal it again (POST /v1/timelines/{}/seal on its node) and copy again",
                    r.id
                )))
            }
            Some(t) => t,
            None => end_lsn,
        };
        let target = RecoveryTarget::Lsn(end_lsn);
        steps.push(("find_end", t_end.elapsed()));
        // Its starting state is its first snapshot, as a fork's is.
        self.clone_start_snapshot(&dir, "fork").await?;
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
            ..Default::default()
        };
        drop(archive);
        drop(pg_wal);
        drop(ancestors);
        if let Mode::Import { .. } = mode {
            self.remove_tree(&dir.0.join(LINEAGE))?;
        }
        let rec = self.commit(rec)?;
        // A copy is archived anew into this node's own repository prefix (a stanza and a
        // base backup of its own); a recovered timeline is where it was there.
        if let Mode::Recover = mode {
            self.meta.put_backup_state(id, &st)?;
        }
        let steps: Vec<String> = steps
            .iter()
            .map(|(n, d)| format!("{n}={}ms", d.as_millis()))
            .collect();
        info!(timeline = %rec.id, base = %base.set.set, base_owner = %base.owner, base_cloned_from = ?same_base, lineage_segments = placed, own_files = own.len(), %end_lsn, steps = %steps.join(" "), "restored timeline");
        Ok(false)
    }

    /// A copy's lineage WAL also goes into its own archive: its node's repository then
    /// holds everything a replay of its first snapshot (its first base backup there)
    /// needs, with no reference to another node's prefix.
    fn keep_for_copy(
        &self,
        mode: Mode<'_>,
        src: &Dir,
        archive: &Dir,
        name: &str,
    ) -> Result<(), NodeError> {
        if let Mode::Import { .. } = mode {
            if !archive.has_file(name) {
                clone::clone_file(
                    src,
                    name.as_ref(),
                    archive,
                    name.as_ref(),
                    self.clone_method,
                )?;
            }
        }
        Ok(())
    }

    /// Empties a re-forked timeline's stanza: what its lost predecessor archived there
    /// (later segments without their first) can never be replayed, and the new
    /// timeline's segments of the same names would be refused beside them.
    async fn fresh_stanza(&self, b: &Backups, id: TimelineId) {
        match b.delete_stanza(&id.to_string()).await {
            Ok(_) => {
                let _ = self.update_backup_state(id, |s| *s = BackupState::default());
            }
            Err(e) => {
                warn!(timeline = %id, error = %e, "cannot empty the stanza of a re-forked timeline; its new WAL may be refused there")
            }
        }
    }

    /// Downloads every segment and history file of `stanza`'s archive into `dest`.
    async fn fetch_archive(
        &self,
        b: &Backups,
        stanza: &str,
        pg1: &OsString,
        dest: &Path,
    ) -> Result<BTreeMap<String, wal::WalFile>, NodeError> {
        self.fetch_archive_from(b, stanza, pg1, dest, 0..=u64::MAX)
            .await
    }

    /// [`Node::fetch_archive`] of the segments numbered in `segnos` (and every history
    /// file).
    async fn fetch_archive_from(
        &self,
        b: &Backups,
        stanza: &str,
        pg1: &OsString,
        dest: &Path,
        segnos: std::ops::RangeInclusive<u64>,
    ) -> Result<BTreeMap<String, wal::WalFile>, NodeError> {
        let names: Vec<String> = archive_names(b, stanza)
            .await?
            .into_iter()
            .filter(
                |n| match wal::parse_name(n).or_else(|| partial_segment(n)) {
                    Some(wal::WalFile::Segment { segno, .. }) => segnos.contains(&segno),
                    _ => true,
                },
            )
            .collect();
        use futures::StreamExt;
        // Futures made in a loop, not by a closure over borrowed values: a copy runs
        // this inside a spawned create, whose future must be Send for every lifetime.
        let mut gets = Vec::with_capacity(names.len());
        for name in &names {
            let args = [pg1.clone(), name.into(), dest.join(name).into_os_string()];
            gets.push(async move { b.pgbr.run(Some(stanza), "archive-get", &args).await });
        }
        let results: Vec<Result<String, crate::backup::BackupError>> = futures::stream::iter(gets)
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

/// The Postgres timeline a timeline's archive reaches: the newest of its files, never
/// before its base's.
fn newest_tli_of<'a>(files: impl Iterator<Item = &'a wal::WalFile>, base_tli: u32) -> u32 {
    files
        .map(|f| match f {
            wal::WalFile::Segment { tli, .. } | wal::WalFile::History { tli } => *tli,
        })
        .max()
        .unwrap_or(base_tli)
        .max(base_tli)
}

/// A copy of a fork none of whose own WAL is archived: nothing to replay past its fork
/// point.
fn no_own_wal(id: TimelineId, parent: TimelineId) -> NodeError {
    NodeError::Conflict(format!(
        "timeline {id} has no WAL of its own in the repository yet (nothing archived since it forked from {parent}): copy its parent, or again once its first segment is archived"
    ))
}

/// A timeline that promoted (after a restore or a recovery) with none of its WAL on the
/// new Postgres timeline archived yet.
fn promotion_not_archived(id: TimelineId, tli: u32) -> NodeError {
    NodeError::NotFound(format!(
        "timeline {id} moved to Postgres timeline {tli} (a promotion after a restore or recovery) and none of its WAL there is archived yet; it is within the computes' archive_timeout"
    ))
}

/// The WAL names (segments and history files) in `stanza`'s archive, sorted, without
/// downloading anything.
async fn archive_names(b: &Backups, stanza: &str) -> Result<Vec<String>, NodeError> {
    let listing = b
        .pgbr
        .run(
            None,
            "repo-ls",
            &["--recurse".into(), format!("archive/{stanza}").into()],
        )
        .await?;
    Ok(listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(archive_entry_name)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// Clones `name` from `src` into `pg_wal`, marked archived (`.done`), so the recovered
/// compute does not archive it again.
fn place(src: &Dir, pg_wal: &Dir, name: &str, method: CloneMethod) -> Result<(), NodeError> {
    place_as(src, name, pg_wal, name, method)
}

/// [`place`] of `from` under the name `name`.
fn place_as(
    src: &Dir,
    from: &str,
    pg_wal: &Dir,
    name: &str,
    method: CloneMethod,
) -> Result<(), NodeError> {
    pg_wal
        .remove_file_if_exists(name)
        .map_err(CloneError::from)?;
    clone::clone_file(src, from.as_ref(), pg_wal, name.as_ref(), method)?;
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
/// segment, `<segment>.partial-<sha1>[.ext]` a partial one (a seal's tail, or an old
/// timeline's last at promotion), `<tli>.history` a history file; other entries
/// (`archive.info`, backup files) are not needed to recover.
fn archive_entry_name(entry: &str) -> Option<String> {
    if let Some(f) = wal::parse_name(entry) {
        return matches!(f, wal::WalFile::History { .. }).then(|| entry.to_string());
    }
    let (seg, rest) = entry.split_at_checked(24)?;
    if !matches!(wal::parse_name(seg), Some(wal::WalFile::Segment { .. })) {
        return None;
    }
    if rest.starts_with('-') {
        return Some(seg.to_string());
    }
    rest.strip_prefix(".partial-")
        .map(|_| format!("{seg}.partial"))
}

/// The segment a `<segment>.partial` name stands for.
fn partial_segment(name: &str) -> Option<wal::WalFile> {
    wal::parse_name(name.strip_suffix(".partial")?)
}

/// The sealed tail of an archive: a `.partial` segment on Postgres timeline `tli` right
/// after its last whole segment `last` (the newest one when there is none).
fn sealed_tail(archive: &Dir, tli: u32, last: Option<u64>) -> Result<Option<u64>, NodeError> {
    let mut partials = Vec::new();
    for e in archive.entries().map_err(CloneError::from)? {
        if let Some(wal::WalFile::Segment { tli: t, segno }) =
            e.name.to_str().and_then(partial_segment)
        {
            if t == tli {
                partials.push(segno);
            }
        }
    }
    Ok(match last {
        Some(l) => partials.contains(&(l + 1)).then_some(l + 1),
        None => partials.into_iter().max(),
    })
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
            archive_entry_name("000000010000000000000003.partial-4c2a.lz4").as_deref(),
            Some("000000010000000000000003.partial")
        );
        assert_eq!(
            partial_segment("000000010000000000000003.partial"),
            Some(wal::WalFile::Segment { tli: 1, segno: 3 })
        );
        assert_eq!(partial_segment("000000010000000000000003"), None);
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
}
