//! Following roots: a root built from an existing Postgres with `pg_basebackup`, whose
//! compute then runs as a hot standby of it, archiving every segment it receives into
//! the timeline's own archive. Its history is forkable like any other timeline's.
//!
//! The source is only ever read: the node asks it for its version and settings and the
//! slot it names over a replication connection, and `pg_basebackup` copies it (with one
//! immediate checkpoint, as `--checkpoint=fast` asks). The slot, when asked for, is the
//! one object it creates there.

use std::process::Stdio;

use ramify_api::names::SOURCE_URI_PARAMS as URI_PARAMS;
use ramify_api::FollowSource;
use ramify_compute::settings::append_conninfo;
use ramify_compute::PgUser;
use tokio::io::AsyncReadExt;

use super::create::BASE_SNAPSHOT;
use super::*;

/// The password file a following root's compute names in `primary_conninfo`, in `run/`.
pub const PASSFILE: &str = "source.pass";

/// Settings a hot standby must have at least as high as its primary (Postgres refuses
/// to start, or pauses, otherwise).
const STANDBY_MINIMUMS: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// How long the checks wait for the source to answer.
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// What the node learnt from the source before copying it.
#[derive(Debug)]
struct SourceFacts {
    minimums: Vec<(String, String)>,
    slot_exists: bool,
}

/// Progress of an initial copy, for logs and `GET /v1/status`.
#[derive(Debug, Clone)]
pub(super) struct CopyProgress {
    pub done_bytes: u64,
    pub started_at: DateTime<Utc>,
}

impl Node {
    /// A root that follows `source`: checks, `pg_basebackup`, the base snapshot, a
    /// standby's configuration.
    pub(super) async fn create_follower(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
        source: &FollowSource,
    ) -> Result<TimelineRecord, NodeError> {
        let (Some(initdb), Some(_)) = (self.cfg.initdb.clone(), self.cfg.waldump.as_ref()) else {
            return Err(NodeError::Conflict(
                "a following root needs this node's Postgres binaries (pg_basebackup, psql): start it with --pg-bin DIR".into(),
            ));
        };
        let bin = ramify_compute::PgBin::from_dir(initdb.parent().unwrap_or(Path::new("/")))
            .map_err(|e| NodeError::Conflict(format!("Postgres binaries: {e}")))?;
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
        let psql = bin
            .psql()
            .ok_or_else(|| NodeError::Conflict("psql not found next to initdb".into()))?;
        let conninfo = append_conninfo(
            &source.conninfo,
            &[
                ("replication", "true"),
                ("connect_timeout", &CONNECT_TIMEOUT_SECS.to_string()),
                ("application_name", "ramify-check"),
            ],
        );
        let mut cmd = tokio::process::Command::new(psql);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&conninfo)
            .args(["-c", "IDENTIFY_SYSTEM", "-c", "SHOW server_version_num"]);
        for s in STANDBY_MINIMUMS {
            cmd.args(["-c", &format!("SHOW {s}")]);
        }
        if let Some(slot) = &source.slot {
            cmd.args(["-c", &format!("READ_REPLICATION_SLOT {slot}")]);
        }
        source_env(&mut cmd, source);
        let out = cmd
            .output()
            .await
            .map_err(io_op("run psql to check the source"))?;
        if !out.status.success() {
            return Err(source_error(&String::from_utf8_lossy(&out.stderr)));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
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
        let mut child = cmd.spawn().map_err(io_op("run pg_basebackup"))?;
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
            return Err(source_error(&text));
        }
        BackupPoints::parse(&text).ok_or_else(|| NodeError::Io {
            op: "read pg_basebackup's start and end points".into(),
            source: io::Error::other(compute_tail(&text)),
        })
    }

    fn set_copy_progress(&self, id: TimelineId, p: Option<CopyProgress>) {
        let mut m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Some(p) => {
                m.insert(id, p);
            }
            None => {
                m.remove(&id);
            }
        }
    }

    /// `GET /v1/copies`: initial copies under way.
    pub fn copies(&self) -> Vec<ramify_api::CopyProgress> {
        let m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(id, p)| ramify_api::CopyProgress {
                timeline: *id,
                bytes_done: p.done_bytes,
                started_at: p.started_at,
            })
            .collect()
    }

    /// The follow view of a following root: its source, and its replication state read
    /// from the running compute (`None` when it is stopped or not answering yet).
    pub(super) async fn follow_info(
        &self,
        rec: &TimelineRecord,
        running: Option<&Running>,
    ) -> Option<FollowInfo> {
        let source = rec.request.follow.as_ref()?;
        let status = match running {
            Some(r) => match self.connect_compute(rec.id, r.port).await {
                Ok(c) => match control::follow_status(&c).await {
                    Ok(mut s) => {
                        if !s.streaming {
                            s.problem = Some(self.follow_problem(rec.id));
                        }
                        Some(s)
                    }
                    Err(e) => {
                        tracing::debug!(timeline = %rec.id, error = %e, "no replication state");
                        None
                    }
                },
                Err(_) => None,
            },
            None => None,
        };
        Some(FollowInfo {
            conninfo: source.conninfo.clone(),
            slot: source.slot.clone(),
            passfile: PASSFILE.into(),
            status,
        })
    }

    /// Why a following root's compute is not streaming, from the last replication error
    /// in its log, with what to do about it.
    fn follow_problem(&self, id: TimelineId) -> String {
        let log = self
            .open_dir(&self.dir(id).run())
            .and_then(|d| {
                d.read(ramify_compute::process::SERVER_LOG)
                    .map_err(|e| CloneError::from(e).into())
            })
            .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(64 * 1024)..]).into_owned())
            .unwrap_or_default();
        diagnose_log(&log)
    }
}

/// Refuses a source the node could only misuse: an empty connection string, a password
/// inside it (it would be stored and shown), a slot name Postgres would refuse.
pub(super) fn validate(source: &FollowSource) -> Result<(), NodeError> {
    let c = source.conninfo.trim();
    if c.is_empty() {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" is empty: name the source, e.g. postgresql://replicator@db.example:5432/postgres".into(),
        ));
    }
    if c.contains('\0') || c.contains('\n') {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" must be one line".into(),
        ));
    }
    if conninfo_has_password(c) {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" contains a password: pass it in \"follow.password\" instead, so it is never stored or shown".into(),
        ));
    }
    check_uri(c).map_err(|e| NodeError::Invalid(format!("\"follow.conninfo\": {e}")))?;
    if let Some(slot) = &source.slot {
        let ok = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(NodeError::Invalid(format!(
                "slot name {slot:?} is invalid: use 1-63 lower-case letters, digits and underscores"
            )));
        }
    }
    if source
        .password
        .as_deref()
        .is_some_and(|p| p.contains(['\0', '\n']))
    {
        return Err(NodeError::Invalid(
            "\"follow.password\" must not contain a line break or NUL".into(),
        ));
    }
    Ok(())
}

/// Checks that `c` is a `postgresql://` URI naming one network host (a DNS name or an IP
/// address, never a socket directory) and only parameters in [`URI_PARAMS`].
fn check_uri(c: &str) -> Result<(), String> {
    let rest = c
        .strip_prefix("postgresql://")
        .or_else(|| c.strip_prefix("postgres://"))
        .ok_or("use a URI: postgresql://ROLE@HOST:PORT/DATABASE")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
            (h, after.strip_prefix(':').unwrap_or(after))
        }
        None => hostport.split_once(':').unwrap_or((hostport, "")),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    if !host_ok {
        return Err(format!(
            "the host must be a DNS name or an IP address (got {host:?}; one host, no socket directory)"
        ));
    }
    if !port.is_empty() && port.parse::<u16>().is_err() {
        return Err(format!("port {port:?} is not a port number"));
    }
    if let Some((_, query)) = tail.split_once('?') {
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let key = kv.split('=').next().unwrap_or("");
            if !URI_PARAMS.contains(&key) {
                return Err(format!(
                    "parameter {key:?} is not accepted (accepted: {})",
                    URI_PARAMS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Whether a libpq connection string carries a password (`user:secret@` in a URI, or a
/// `password` parameter in either form).
pub fn conninfo_has_password(c: &str) -> bool {
    let lower = c.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("postgresql://")
        .or_else(|| lower.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return true;
            }
        }
        return rest
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    }
    lower
        .split_whitespace()
        .any(|w| w.starts_with("password=") || w.starts_with("password ="))
        || lower.contains("password =")
}

/// The environment of a program talking to the source: the password (never on a
/// command line) and no password file of the node's own user.
fn source_env(cmd: &mut tokio::process::Command, source: &FollowSource) {
    cmd.env("PGPASSFILE", "/dev/null").env_remove("PGPASSWORD");
    if let Some(p) = &source.password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS.to_string());
}

/// Writes the libpq password file the standby's `primary_conninfo` names: mode 0600
/// (libpq ignores it otherwise), owned by the compute's user.
fn write_passfile(path: &Path, password: Option<&str>, user: &PgUser) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let line = match password {
        Some(p) => format!("*:*:*:*:{}\n", p.replace('\\', "\\\\").replace(':', "\\:")),
        None => String::new(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_op(format!("create {}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_op(format!("write {}", path.display())))?;
    user.chown(path)
        .map_err(ramify_compute::ProcessError::from)?;
    Ok(())
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
struct BackupPoints {
    start: Lsn,
    end: Lsn,
    timeline: u32,
}

impl BackupPoints {
    fn parse(text: &str) -> Option<BackupPoints> {
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

/// Bytes of the files below `dir` (links are not followed; entries that vanish while
/// it walks count as nothing).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match std::fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn compute_tail(text: &str) -> String {
    ramify_compute::tail::last_lines(text, 8)
}

/// The source's refusal, named: what failed and what to change on the source.
fn source_error(output: &str) -> NodeError {
    let detail = output
        .lines()
        .rev()
        .find(|l| l.contains("FATAL") || l.contains("error:") || l.contains("ERROR"))
        .unwrap_or_else(|| output.lines().last().unwrap_or("no output"))
        .trim()
        .to_string();
    let lower = output.to_lowercase();
    let (unreachable, advice) = if lower.contains("password authentication failed")
        || lower.contains("no password supplied")
    {
        (false, "check the replication role's password")
    } else if lower.contains("no pg_hba.conf entry") {
        (false, "add a line like \"host replication <role> <this node's address>/32 scram-sha-256\" to the source's pg_hba.conf and reload it")
    } else if lower.contains("must be superuser or replication role")
        || lower.contains("permission denied to start wal sender")
        || lower.contains("must have replication")
    {
        (
            false,
            "give the role the REPLICATION attribute (ALTER ROLE <role> REPLICATION)",
        )
    } else if lower.contains("number of requested standby connections exceeds")
        || lower.contains("max_wal_senders")
    {
        (false, "raise max_wal_senders on the source (a physical follower holds one WAL sender, the initial copy two)")
    } else if lower.contains("incompatible server version") {
        (
            false,
            "follow it with a node whose Postgres major version matches the source's",
        )
    } else if lower.contains("replication slot") && lower.contains("already exists") {
        (false, "another slot of that name exists: name another slot, or drop the old one on the source")
    } else if lower.contains("connection refused")
        || lower.contains("could not translate host name")
        || lower.contains("timeout expired")
        || lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("server closed the connection unexpectedly")
    {
        (
            true,
            "check that the source runs and that this node can reach its address and port",
        )
    } else {
        (false, "see the message from the source above")
    };
    NodeError::Source {
        unreachable,
        message: format!("the source refused or failed the copy: {detail} — {advice}"),
    }
}

/// Why a standby's WAL receiver is not streaming, from its server log's last word on it.
pub(super) fn diagnose_log(log: &str) -> String {
    let relevant = log.lines().rev().find(|l| {
        (l.contains("FATAL") || l.contains("ERROR") || l.contains("LOG"))
            && (l.contains("primary")
                || l.contains("replication")
                || l.contains("WAL segment")
                || l.contains("authentication")
                || l.contains("pg_hba")
                || l.contains("timeline")
                || l.contains("wal receiver")
                || l.contains("walreceiver"))
    });
    let Some(line) = relevant else {
        return "not streaming from the source yet (no replication error in the compute's log)"
            .into();
    };
    let msg = line
        .split_once(":  ")
        .map(|(_, m)| m.trim())
        .unwrap_or(line.trim());
    let lower = msg.to_lowercase();
    let advice = if lower.contains("replication slot") && lower.contains("does not exist") {
        "the slot was dropped on the source: create it again there (SELECT pg_create_physical_replication_slot(...)) — WAL the source recycled meanwhile is lost to this follower, then create a new follower"
    } else if lower.contains("has already been removed") {
        "the source recycled WAL this follower had not received: create a new follower, and use a slot (--slot) so the source keeps it"
    } else if lower.contains("password authentication failed") {
        "the source no longer accepts the replication role's password: set it again with a new follower, or restore the old password on the source"
    } else if lower.contains("no pg_hba.conf entry") {
        "the source's pg_hba.conf no longer admits this node: add the replication line back and reload"
    } else if lower.contains("connection refused")
        || lower.contains("could not connect")
        || lower.contains("terminating walreceiver")
        || lower.contains("timeout")
    {
        "the source is unreachable or restarting: the follower retries every few seconds and catches up by itself"
    } else if lower.contains("timeline") {
        "the source switched timelines (a failover): the follower follows the newest timeline when the source's history allows it"
    } else {
        "see the compute's log"
    };
    format!("{msg} — {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_host_and_harmless_parameters_are_accepted() {
        for ok in [
            "postgresql://rep@db.example:5432/postgres",
            "postgres://rep@10.0.0.7/app?sslmode=require&application_name=x",
            "postgresql://rep@[::1]:5433/postgres",
            "postgresql://rep@prod-db.prod.svc.cluster.local",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}: {:?}", check_uri(ok));
        }
        for bad in [
            "host=db user=rep",
            "postgresql://rep@%2Fdata%2Ftimelines%2Fx%2Frun/postgres",
            "postgresql://rep@/postgres",
            "postgresql:///postgres?host=/data/timelines/x/run",
            "postgresql://rep@db/postgres?passfile=/etc/shadow",
            "postgresql://rep@db/postgres?sslkey=/data/x",
            "postgresql://rep@db/postgres?service=x",
            "postgresql://rep@a,b/postgres",
            "postgresql://rep@db:99999/postgres",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_in_the_connection_string_is_refused() {
        for c in [
            "postgresql://rep:secret@db/postgres",
            "postgres://rep:@db",
            "postgresql://db/postgres?sslmode=require&password=x",
            "host=db user=rep password=x",
            "host=db password = x",
        ] {
            assert!(conninfo_has_password(c), "{c}");
        }
        for c in [
            "postgresql://rep@db:5432/postgres",
            "postgresql://db/postgres?passfile=/x",
            "host=db user=rep passfile=/p",
            "postgresql://[::1]:5432/postgres",
        ] {
            assert!(!conninfo_has_password(c), "{c}");
        }
        let bad = |slot: &str| {
            validate(&FollowSource {
                conninfo: "postgresql://db".into(),
                password: None,
                slot: Some(slot.into()),
            })
            .is_err()
        };
        assert!(bad("Prod") && bad("") && bad("a-b") && !bad("ramify_prod_1"));
    }

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

    #[test]
    fn source_errors_say_what_to_change() {
        let e = source_error("pg_basebackup: error: connection to server at \"127.0.0.1\", port 5 failed: FATAL:  password authentication failed for user \"rep\"\n");
        assert!(
            matches!(&e, NodeError::Source { unreachable: false, message } if message.contains("password authentication failed") && message.contains("check the replication role's password")),
            "{e}"
        );
        let e = source_error("psql: error: connection to server at \"127.0.0.1\", port 9 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n");
        assert!(
            matches!(
                &e,
                NodeError::Source {
                    unreachable: true,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn log_diagnosis_names_the_slot_and_the_network() {
        let log = "2026-12-05 LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n\
                   2026-12-05 FATAL:  could not start WAL streaming: ERROR:  replication slot \"s1\" does not exist\n";
        let d = diagnose_log(log);
        assert!(d.contains("replication slot \"s1\" does not exist"), "{d}");
        assert!(d.contains("dropped on the source"), "{d}");
        let d = diagnose_log("x FATAL:  could not connect to the primary server: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n");
        assert!(d.contains("retries"), "{d}");
    }
}
