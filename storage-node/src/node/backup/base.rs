//! Base backups: which snapshot of a durable timeline is due for one (none while an
//! ancestor's backup before its fork point is its base), and taking it with pgBackRest
//! in a task of its own beside the WAL pushes.

use super::*;

impl Node {
    /// Takes a base backup of timeline `id` if one is due, unless one is under way.
    /// A backup runs for minutes on a large database: in a task of its own, so the WAL
    /// pushes that bound what a lost volume loses go on meanwhile.
    pub(super) fn spawn_backup_if_due(
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
            // A timeline deleted while its backup ran has nothing to report.
            let failed = match result {
                Err(e) if node.record(id).is_ok() => Some(e.to_string()),
                _ => None,
            };
            if let Some(message) = failed {
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
            // One the repository lost takes a base of its own: its WAL since an
            // ancestor's older base may be gone from the node and from the bucket.
            None if st.lost_at.is_none() && self.covered_by_ancestor(rec)? => Ok(None),
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

    /// Whether a durable ancestor's backup, taken before this fork's fork point (or the
    /// first backup a durable parent is about to take), is a base from which the fork
    /// can be recovered.
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
        // A durable parent with no backup yet (its first is being taken) will be the
        // base: the fork waits for it rather than store a copy of its own.
        if pst.backups.is_empty() || pst.backups.iter().any(|s| s.consistent_lsn <= fork_lsn) {
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
        b.may_write()?;
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
    fn newest_set_from_info() {
        let info = r#"[{"name":"x","backup":[
            {"label":"20261206-010101F","timestamp":{"start":1,"stop":2}},
            {"label":"20261206-020202F","timestamp":{"start":3,"stop":4}}]}]"#;
        assert_eq!(newest_set(info).as_deref(), Some("20261206-020202F"));
        assert_eq!(newest_set("[]"), None);
    }
}
