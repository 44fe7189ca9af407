//! Physical following: `pg_basebackup` of the source, then a hot standby of it that
//! archives every segment it receives into the timeline's own archive.

use std::process::Stdio;

use ramify_api::FollowSource;
use ramify_compute::settings::append_conninfo;
use ramify_compute::PgUser;
use tokio::io::AsyncReadExt;

use super::super::create::BASE_SNAPSHOT;
use super::super::*;
use super::*;

/// Settings a hot standby must have at least as high as its primary (Postgres refuses
/// to start, or pauses, otherwise).
pub(super) const STANDBY_MINIMUMS: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// What the node learnt from the source before copying it.
#[derive(Debug)]
struct SourceFacts {
    minimums: Vec<(String, String)>,
    slot_exists: bool,
}

impl Node {
    /// A root that follows `source`: checks, `pg_basebackup`, the base snapshot, a
    /// standby's configuration.
    pub(in crate::node) async fn create_follower(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
        source: &FollowSource,
    ) -> Result<TimelineRecord, NodeError> {
        let (bin, _) = self.follow_bin()?;
        let facts = self.check_source(&bin, source).await?;
        let mut rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        write_passfile(&dir.run().join(PASSFILE), source.password.as_deref(), &user)?;
        let t0 = Instant::now();
        let pgdata = dir.pgdata();
        std::fs::create_dir(&pgdata).map_err(io_op("create pgdata"))?;
        set_mode(&pgdata, 0o700)?;
        user.chown(&pgdata)
            .map_err(ramify_compute::ProcessError::from)?;
        let points = self
            .basebackup(id, &bin, &user, source, &pgdata, !facts.slot_exists)
            .await?;
        let copy_ms = t0.elapsed().as_millis() as u64;
        crate::failpoint::hit_async("follow.after_basebackup").await;
        configure_standby(&pgdata, &facts.minimums, &user)?;
        // The copied WAL up to the segment before the end point is archived here now;
        // the end point's segment is still being filled, and the standby archives it once
        // complete (archive_mode = always).
        let end_seg = points.end.segment(SEGMENT_SIZE);
        archive_copied_wal(&pgdata.join("pg_wal"), &dir.inbox(), end_seg, &user)?;
        // The base snapshot: the copy as pg_basebackup left it (its backup_label and
        // WAL included), before it becomes a standby.
        let snap_dir = self
            .open_dir(&dir.snapshots())?
            .create_dir(BASE_SNAPSHOT, 0o700)
            .map_err(CloneError::from)?;
        let method = self.clone_method;
        let src = self.open_dir(&pgdata)?;
        tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &snap_dir, "pgdata", method, &|_: &Path, _| false)
        })
        .await??;
        std::fs::write(pgdata.join("standby.signal"), b"")
            .map_err(io_op("write standby.signal"))?;
        user.chown(&pgdata.join("standby.signal"))
            .map_err(ramify_compute::ProcessError::from)?;
        rec.snapshots.push(SnapshotRecord {
            info: SnapshotInfo {
                name: BASE_SNAPSHOT.into(),
                kind: SnapshotKind::Base,
                start_lsn: points.start,
                end_lsn: points.end,
                time: Utc::now(),
                pg_timeline: points.timeline,
            },
            consistent_lsn: points.end,
            after_lsn: None,
            plain_start: false,
        });
        let rec = self.commit(rec)?;
        info!(
            timeline = %id, source = %source.conninfo, start = %points.start, end = %points.end,
            copy_ms, elapsed_ms = t0.elapsed().as_millis() as u64,
            "created following root (pg_basebackup and base snapshot)"
        );
        Ok(rec)
    }

    /// Connects to the source in replication mode, as `pg_basebackup` will: its major
    /// version, the settings a standby must match, and whether the slot exists.
    async fn check_source(
        &self,
        bin: &ramify_compute::PgBin,
        source: &FollowSource,
    ) -> Result<SourceFacts, NodeError> {
        let mut cmd = source_psql(bin, source, "ramify-check", &[("replication", "true")])?;
        cmd.args(["-c", "IDENTIFY_SYSTEM", "-c", "SHOW server_version_num"]);
        for s in STANDBY_MINIMUMS {
            cmd.args(["-c", &format!("SHOW {s}")]);
        }
        if let Some(slot) = &source.slot {
            cmd.args(["-c", &format!("READ_REPLICATION_SLOT {slot}")]);
        }
        let stdout = source_output(&mut cmd, "psql to check the source").await?;
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
        let value = |i: usize| lines.get(i).map(|s| s.trim()).unwrap_or("");
        let version_num: u32 = value(1).parse().map_err(|_| {
            NodeError::Conflict(format!(
                "the source answered an unreadable server_version_num {:?}",
                value(1)
            ))
        })?;
        let ours = bin
            .major_version()
            .map_err(|e| NodeError::Conflict(format!("Postgres binaries: {e}")))?;
        if version_num / 10000 != ours {
            return Err(NodeError::Source {
                unreachable: false,
                message: format!(
                    "the source runs Postgres {} and this node runs Postgres {ours}: a physical follower needs the same major version (use a node with Postgres {} binaries, or follow it logically)",
                    version_num / 10000,
                    version_num / 10000
                ),
            });
        }
        let minimums = STANDBY_MINIMUMS
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), value(2 + i).to_string()))
            .collect();
        let slot_exists = match &source.slot {
            Some(slot) => {
                let row = value(2 + STANDBY_MINIMUMS.len());
                match row.split('|').next() {
                    Some("physical") => true,
                    Some("") | None => false,
                    Some(kind) => {
                        return Err(NodeError::Source {
                            unreachable: false,
                            message: format!(
                                "slot {slot:?} on the source is a {kind} slot; a physical follower needs a physical one (name another slot, and Ramify makes it)"
                            ),
                        })
                    }
                }
            }
            None => false,
        };
        Ok(SourceFacts {
            minimums,
            slot_exists,
        })
    }

    /// Runs `pg_basebackup` into `pgdata` (WAL streamed alongside), logging progress.
    async fn basebackup(
        &self,
        id: TimelineId,
        bin: &ramify_compute::PgBin,
        user: &PgUser,
        source: &FollowSource,
        pgdata: &Path,
        create_slot: bool,
    ) -> Result<BackupPoints, NodeError> {
        let program = bin
            .tool("pg_basebackup")
            .ok_or_else(|| NodeError::Conflict("pg_basebackup not found next to initdb".into()))?;
        let conninfo = append_conninfo(
            &source.conninfo,
            &[
                ("connect_timeout", &CONNECT_TIMEOUT_SECS.to_string()),
                ("application_name", "ramify-copy"),
            ],
        );
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("-d").arg(&conninfo).arg("-D").arg(pgdata).args([
            "--wal-method=stream",
            "--checkpoint=fast",
            "--verbose",
            "--no-password",
            "--no-sync",
            "--label",
            &format!("ramify follow {id}"),
        ]);
        if let Some(slot) = &source.slot {
            cmd.args(["--slot", slot]);
            if create_slot {
                cmd.arg("--create-slot");
            }
        }
        source_env(&mut cmd, source);
        user.apply_tokio(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Whatever the source sends, the copy writes nowhere but the staging directory.
        let jail = crate::sandbox::WriteJail::beneath(pgdata)
            .map_err(io_op("confine pg_basebackup to the staging directory"))?;
        match &jail {
            Some(j) => j.confine(cmd.as_std_mut()),
            None => warn!(
                timeline = %id,
                "this kernel has no Landlock: the initial copy cannot be confined to its staging directory (follow only sources you trust)"
            ),
        }
        let mut child = cmd.spawn().map_err(io_op("run pg_basebackup"))?;
        drop(jail);
        // pg_basebackup reports progress only to a terminal: the bytes that have arrived
        // in the staging directory are the progress, measured every second.
        let mut stderr = child.stderr.take().expect("piped stderr");
        let output = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text).await;
            String::from_utf8_lossy(&text).into_owned()
        });
        let (mut last_log, t0, started_at) = (Instant::now(), Instant::now(), Utc::now());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(io_op("wait for pg_basebackup"))?,
                _ = tick.tick() => {
                    let dir = pgdata.to_path_buf();
                    let done = tokio::task::spawn_blocking(move || tree_bytes(&dir)).await.unwrap_or(0);
                    self.set_copy_progress(id, Some(CopyProgress { done_bytes: done, started_at }));
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        last_log = Instant::now();
                        let secs = t0.elapsed().as_secs_f64().max(0.001);
                        info!(
                            timeline = %id, copied_mb = done >> 20,
                            rate_mb_s = format!("{:.1}", done as f64 / 1048576.0 / secs),
                            "initial copy of the source"
                        );
                    }
                }
            }
        };
        let text = output.await.unwrap_or_default();
        self.set_copy_progress(id, None);
        if !status.success() {
            return Err(match source_error(&text) {
                NodeError::Source { unreachable, message } if text.contains("Permission denied") => {
                    NodeError::Source {
                        unreachable,
                        message: format!(
                            "{message} (the copy may write only inside its staging directory: a source with tablespaces outside its data directory cannot be followed physically; follow it logically)"
                        ),
                    }
                }
                e => e,
            });
        }
        // A tablespace link would let the follower's Postgres reach a path outside the
        // timeline: refused, whatever the source answered.
        if let Some(ts) = std::fs::read_dir(pgdata.join("pg_tblspc"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
        {
            return Err(NodeError::Source {
                unreachable: false,
                message: format!(
                    "the source has a tablespace (pg_tblspc/{}): a physical follower copies only the data directory; follow it logically{}",
                    ts.file_name().to_string_lossy(),
                    match (&source.slot, create_slot) {
                        (Some(slot), true) => format!(
                            " (the slot made for the copy stays on the source: SELECT pg_drop_replication_slot('{slot}'))"
                        ),
                        _ => String::new(),
                    }
                ),
            });
        }
        BackupPoints::parse(&text).ok_or_else(|| NodeError::Io {
            op: "read pg_basebackup's start and end points".into(),
            source: io::Error::other(compute_tail(&text)),
        })
    }
}

/// Replaces the source's configuration with a standby's own: the source's files are kept
/// beside it (`*.source.conf`), unused — they name its paths, libraries and archive
/// command. The settings a standby must match are carried over.
fn configure_standby(
    pgdata: &Path,
    minimums: &[(String, String)],
    user: &PgUser,
) -> Result<(), NodeError> {
    for (file, kept) in [
        ("postgresql.conf", "postgresql.source.conf"),
        ("postgresql.auto.conf", "postgresql.auto.source.conf"),
        ("pg_hba.conf", "pg_hba.source.conf"),
    ] {
        match std::fs::rename(pgdata.join(file), pgdata.join(kept)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_op(format!("keep the source's {file}"))(e)),
        }
    }
    write_standby_conf(pgdata, minimums, "", user)
}

/// Writes a following root's own `postgresql.conf` (the `minimums` a hot standby must
/// match, then `extra`), an empty `postgresql.auto.conf`, its `pg_hba.conf` and, when
/// missing, `pg_ident.conf`, replacing whatever was there.
pub(super) fn write_standby_conf(
    pgdata: &Path,
    minimums: &[(String, String)],
    extra: &str,
    user: &PgUser,
) -> Result<(), NodeError> {
    let mut conf = String::from(
        "# Written by ramify-storage for a root that follows another Postgres; the\n\
         # source's own settings are in postgresql.source.conf, unused. A hot standby\n\
         # needs these at least as high as its source's:\n",
    );
    for (name, value) in minimums {
        conf.push_str(&format!(
            "{name} = {}\n",
            ramify_compute::settings::quote(value)
        ));
    }
    conf.push_str(extra);
    let hba = format!(
        "# Written by ramify-storage. The socket directory is 0700: only the storage\n\
         # node and the compute's own user reach it.\n\
         local all all trust\n\
         {}\n",
        ramify_compute::process::PG_HBA_ANY_HOST
    );
    for (file, contents) in [
        ("postgresql.conf", conf.as_str()),
        (
            "postgresql.auto.conf",
            "# Do not edit this file manually!\n",
        ),
        ("pg_hba.conf", hba.as_str()),
    ] {
        let path = pgdata.join(file);
        std::fs::write(&path, contents).map_err(io_op(format!("write {}", path.display())))?;
        set_mode(&path, 0o600)?;
        user.chown(&path)
            .map_err(ramify_compute::ProcessError::from)?;
    }
    if !pgdata.join("pg_ident.conf").exists() {
        let path = pgdata.join("pg_ident.conf");
        std::fs::write(&path, "").map_err(io_op("write pg_ident.conf"))?;
        user.chown(&path)
            .map_err(ramify_compute::ProcessError::from)?;
    }
    Ok(())
}

/// Puts copies of the complete WAL segments (and timeline history files) the backup
/// streamed into the new timeline's archive inbox, as the compute's archiver would: the
/// standby never archives WAL it did not receive itself.
fn archive_copied_wal(
    pg_wal: &Path,
    inbox: &Path,
    end_seg: u64,
    user: &PgUser,
) -> Result<(), NodeError> {
    let entries = std::fs::read_dir(pg_wal).map_err(io_op("list the copied WAL"))?;
    for e in entries {
        let e = e.map_err(io_op("list the copied WAL"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = match wal::parse_name(&name) {
            Some(wal::WalFile::History { .. }) => true,
            Some(wal::WalFile::Segment { segno, .. }) => segno < end_seg,
            None => false,
        };
        if keep && e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let to = inbox.join(&name);
            std::fs::copy(e.path(), &to).map_err(io_op(format!("archive {name}")))?;
            user.chown(&to)
                .map_err(ramify_compute::ProcessError::from)?;
        }
    }
    Ok(())
}

/// Start and end of the copy, from `pg_basebackup --verbose`.
#[derive(Debug, PartialEq)]
pub(super) struct BackupPoints {
    start: Lsn,
    end: Lsn,
    timeline: u32,
}

impl BackupPoints {
    pub(super) fn parse(text: &str) -> Option<BackupPoints> {
        let mut start = None;
        let mut end = None;
        let mut timeline = None;
        for line in text.split(['\n', '\r']) {
            if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
                let mut words = rest.split_whitespace();
                start = words.next().and_then(|w| w.parse().ok());
                timeline = rest
                    .split("on timeline ")
                    .nth(1)
                    .and_then(|t| t.trim().parse().ok());
            }
            if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
                end = rest.split_whitespace().next().and_then(|w| w.parse().ok());
            }
        }
        Some(BackupPoints {
            start: start?,
            end: end?,
            timeline: timeline?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pg_basebackups_points_and_measures_the_copy() {
        let out = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: checkpoint completed\n\
                   pg_basebackup: write-ahead log start point: 0/5000028 on timeline 3\n\
                   pg_basebackup: starting background WAL receiver\n\
                   \r    0/30534 kB (0%), 0/1 tablespace\r30544/30544 kB (100%), 1/1 tablespace\n\
                   pg_basebackup: write-ahead log end point: 0/5000100\n\
                   pg_basebackup: base backup completed\n";
        assert_eq!(
            BackupPoints::parse(out),
            Some(BackupPoints {
                start: Lsn(0x5000028),
                end: Lsn(0x5000100),
                timeline: 3
            })
        );
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("base")).unwrap();
        std::fs::write(t.path().join("base/1"), [0u8; 1000]).unwrap();
        std::fs::write(t.path().join("PG_VERSION"), b"15\n").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("link")).unwrap();
        assert_eq!(tree_bytes(t.path()), 1003, "links are not followed");
        assert!(BackupPoints::parse("pg_basebackup: error: x").is_none());
    }
}
