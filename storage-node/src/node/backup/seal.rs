//! Sealing a durable timeline whose compute is stopped: every WAL record it wrote put in
//! the backup repository, so that a copy made from there (`from_backup` with `through`)
//! holds every commit — the step that makes moving a branch to another node lose nothing.
//!
//! Postgres archives a segment only once it is full (or switched away from after
//! `archive_timeout`), so the tail of the WAL, up to the compute's shutdown checkpoint, is
//! normally only in `pg_wal`. The seal archives it as `<segment>.partial`, the name
//! Postgres itself gives a segment a timeline left unfinished (at promotion): should the
//! compute start here again, it finishes that segment and archives it under its own name
//! beside the partial one, never over it. A second seal after such a restart archives a
//! longer tail: the older `.partial`, a prefix of the same WAL, is replaced.
//!
//! The files are read as the stopped clone reads them ([`super::super::stopped`]): the
//! marks a starting Postgres leaves (`pg_control`, `postmaster.pid`) are compared before
//! and after, and a compute that started meanwhile fails the seal (409) — nothing it
//! writes can then be left out unnoticed.

use ramify_api::Sealed;

use super::*;
use crate::inbox::Taken;

/// How long a seal waits for its files to reach the bucket.
const PUSH_WAIT: Duration = Duration::from_secs(120);

impl Node {
    /// `POST /v1/timelines/{id}/seal` (see the module doc).
    #[instrument(skip(self))]
    pub async fn seal(&self, id: TimelineId) -> Result<Sealed, NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| {
                NodeError::Conflict(
                    "this node has no backup repository: a timeline is sealed into one".into(),
                )
            })?
            .clone();
        let rec = self.record(id)?;
        if !self.is_durable(&rec) {
            return Err(NodeError::Conflict(format!(
                "timeline {id} is not kept in the backup repository (created without \"backup\": true): only a durable timeline can be sealed, moved or copied"
            )));
        }
        let waldump = self.cfg.waldump.clone().ok_or_else(|| {
            NodeError::Conflict(
                "a seal needs pg_waldump to find where the WAL ends (--pg-bin)".into(),
            )
        })?;
        b.may_write()?;
        let stage = b.work.join("seal").join(id.to_string());
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).map_err(io_op("create the seal directory"))?;
        let result = self.seal_in(id, &stage, &waldump).await;
        let _ = std::fs::remove_dir_all(&stage);
        let sealed = result?;
        let partial = format!("{}.partial", sealed.partial);
        if !self.meta.backup_state(id)?.has(&partial) {
            // Not pushed as it is now: one of that name in the bucket is an earlier
            // seal's, which pgBackRest would refuse to overwrite. It goes first (never
            // under the timeline's lock; if this fails, the next seal tries again).
            self.forget_pushed_partial(&b, id, &partial).await?;
        }
        // Everything into the bucket before the answer: the caller copies from there. A
        // pass that succeeds has pushed every file of the archive, the seal's included.
        let deadline = Instant::now() + PUSH_WAIT;
        loop {
            let pass = self.backup_pass(id).await;
            if pass.is_ok() && self.meta.backup_state(id)?.has(&partial) {
                info!(timeline = %id, lsn = %sealed.lsn, partial = %sealed.partial, "sealed: every WAL record of the timeline is in the backup repository");
                return Ok(sealed);
            }
            if Instant::now() > deadline {
                let why = match pass {
                    Err(e) => e.to_string(),
                    Ok(()) => "the push pass left files behind".into(),
                };
                return Err(NodeError::Backup(crate::backup::BackupError::Bucket(format!(
                    "timeline {id} is sealed at {} on this node but its WAL is not all in the backup repository yet ({why}); it stays here, and the seal can be asked again",
                    sealed.lsn
                ))));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The local half of a seal: the WAL up to its last record put into the timeline's
    /// archive, the unfinished segment as `.partial`, with no compute running meanwhile.
    async fn seal_in(
        &self,
        id: TimelineId,
        stage: &Path,
        waldump: &Path,
    ) -> Result<Sealed, NodeError> {
        let _g = self.read_lock(id).await;
        let tdir = self.dir(id);
        let stopped = || async {
            match self.running(id).await {
                Some(_) => Err(NodeError::Conflict(format!(
                    "the compute of timeline {id} is running: stop it before sealing the timeline"
                ))),
                None => Ok(()),
            }
        };
        let before = self.marks(&tdir)?;
        if let Some(why) = before.starting() {
            return Err(NodeError::Conflict(format!(
                "timeline {id} cannot be sealed now: {why}"
            )));
        }
        stopped().await?;
        let control =
            pgcontrol::parse(&before.pg_control, &tdir.pgdata().join("global/pg_control"))?;
        let tli = control.timeline;
        let redo_seg = control.redo.0 / SEGMENT_SIZE;
        let st = self.meta.backup_state(id)?;
        // The segments recovery would read from the last checkpoint on, and any older one
        // not in the repository yet, cloned into the node's own directory (a file the
        // compute could have replaced by a link is refused there).
        let pg_wal = self.open_dir(&tdir.pg_wal())?;
        // WAL on a newer Postgres timeline than `pg_control` names (a timeline restored or
        // copied and not started since, or one that promoted and stopped before its
        // first checkpoint there): reading the older one would end the seal at the
        // switch and leave the newer commits out, so it is refused instead.
        let newest = wal::newest_timeline(&pg_wal);
        if newest > tli {
            return Err(NodeError::NotStarted(format!(
                "timeline {id} has WAL on Postgres timeline {newest}, past the one its pg_control names ({tli}): it was restored or copied and has not run since, or stopped right after a promotion; start its compute once and stop it, then seal"
            )));
        }
        let archive = self.open_dir(&tdir.archive())?;
        let staged = self.open_dir(stage)?;
        let mut segments = Vec::new();
        for (name, f) in wal::list(&pg_wal)? {
            let wal::WalFile::Segment { tli: t, segno } = f else {
                continue;
            };
            if t != tli || (segno < redo_seg && (st.has(&name) || archive.has_file(&name))) {
                continue;
            }
            clone::clone_file(
                &pg_wal,
                name.as_ref(),
                &staged,
                name.as_ref(),
                self.clone_method,
            )?;
            segments.push(segno);
        }
        let after = self.marks(&tdir)?;
        if !after.same_files(&before) || after.starting().is_some() {
            return Err(NodeError::Conflict(format!(
                "a compute started on timeline {id} while it was being sealed: stop it and seal again"
            )));
        }
        stopped().await?;
        let Some(&newest) = segments.iter().max() else {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has no WAL segment of Postgres timeline {tli} from its last checkpoint on"
            )));
        };
        let (from, to) = (
            Lsn(redo_seg * SEGMENT_SIZE),
            Lsn((newest + 1) * SEGMENT_SIZE),
        );
        let path = stage.to_path_buf();
        let waldump = waldump.to_path_buf();
        let span = tokio::task::spawn_blocking(move || {
            wal::last_record_span(&waldump, &path, tli, from, to)
        })
        .await??;
        let Some((last, end)) = span else {
            return Err(NodeError::Conflict(format!(
                "no WAL record of timeline {id} found after its last checkpoint at {}",
                control.checkpoint
            )));
        };
        let tail = (end.0 - 1) / SEGMENT_SIZE;
        // Finished segments first (those Postgres had not archived yet, after a crash or
        // a failing archive command), then the tail.
        for &segno in segments.iter().filter(|s| **s < tail) {
            let name = wal::segment_name(tli, segno);
            if st.has(&name) {
                continue;
            }
            match inbox::take(&staged, &archive, &name, self.clone_method)? {
                Taken::Moved | Taken::Duplicate | Taken::Vanished => {}
                Taken::Differs | Taken::Unreadable => {
                    return Err(NodeError::Conflict(format!(
                        "WAL segment {name} of timeline {id} differs from the one already in its archive: not sealed"
                    )))
                }
            }
        }
        let name = wal::segment_name(tli, tail);
        let partial = format!("{name}.partial");
        staged
            .rename(&name, &staged, &partial)
            .map_err(CloneError::from)?;
        if let Taken::Differs = inbox::take(&staged, &archive, &partial, self.clone_method)? {
            // An earlier seal's, before the compute ran again: a shorter prefix of this.
            archive
                .remove_file_if_exists(&partial)
                .map_err(CloneError::from)?;
            self.update_backup_state(id, |s| s.pushed_other.retain(|n| *n != partial))?;
            if !matches!(
                inbox::take(&staged, &archive, &partial, self.clone_method)?,
                Taken::Moved
            ) {
                return Err(NodeError::Conflict(format!(
                    "cannot replace {partial} in the archive of timeline {id}"
                )));
            }
        }
        Ok(Sealed {
            lsn: last,
            pg_timeline: tli,
            partial: name,
        })
    }

    /// Deletes a `.partial` segment of that name from the timeline's stanza, if any.
    async fn forget_pushed_partial(
        &self,
        b: &Backups,
        id: TimelineId,
        partial: &str,
    ) -> Result<(), NodeError> {
        let dir = format!("archive/{id}/");
        for key in b.bucket.list(&dir).await? {
            let file = key.rsplit('/').next().unwrap_or_default();
            if file.starts_with(&format!("{partial}-")) {
                b.bucket.delete(&format!("{dir}{key}")).await?;
                info!(timeline = %id, file = %partial, "removed an earlier seal's partial segment from the bucket");
            }
        }
        Ok(())
    }
}
