//! The storage node: timelines, forks, snapshots, deletion, accounting and the restore
//! window, on top of the data directory layout and the metadata store.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ramify_api::{
    At, CloneMethod, ComputeState, CreateRestorePoint, CreateTimeline, Lsn, NodeStatus,
    RestorePointInfo, RestoreWindow, SnapshotInfo, SnapshotKind, TimelineId, TimelineInfo,
    TimelineState,
};
use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock};
use tracing::{info, instrument, warn};

use crate::accounting::{self, Scope, Usage};
use crate::beneath::Dir;
use crate::clone::{self, CloneError};
use crate::control::{self, ControlError};
use crate::inbox::{self, Drained};
use crate::layout::{Layout, TimelineDir};
use crate::meta::{Meta, MetaError, Phase, SnapshotRecord, TimelineRecord};
use crate::metrics::Metrics;
use crate::pgcontrol::{self, PgControlError};
use crate::pgdata::{self, RecoveryTarget};
use crate::wal::{self, WalError, SEGMENT_SIZE};
use crate::window;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub restore_window: Duration,
    pub snapshot_interval: Duration,
    pub snapshot_wal_bytes: u64,
    /// `pg_waldump` used to find commit times; without it time targets are refused.
    pub waldump: Option<PathBuf>,
}

/// Everything that can go wrong, each with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error(transparent)]
    Fs(#[from] CloneError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    PgControl(#[from] PgControlError),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl NodeError {
    /// Stable code for the API and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Invalid(_) => "invalid_request",
            NodeError::NotFound(_) => "not_found",
            NodeError::Conflict(_) => "conflict",
            NodeError::OutOfRange(_) => "out_of_range",
            e if e.is_disk_full() => "insufficient_storage",
            _ => "internal",
        }
    }

    /// A file a timeline must not contain (a link, a special file, a hard link, a
    /// tablespace; see [`crate::beneath`]) is the state of that timeline, not a failure of
    /// the node: a conflict, with the message naming the file.
    pub fn refusal_is_conflict(self) -> NodeError {
        let b = match &self {
            NodeError::Fs(CloneError::Beneath(b)) => b,
            NodeError::Wal(WalError::Fs(CloneError::Beneath(b))) => b,
            _ => return self,
        };
        if b.is_refusal() {
            NodeError::Conflict(b.to_string())
        } else {
            self
        }
    }

    fn is_disk_full(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if io.raw_os_error() == Some(libc::ENOSPC) {
                    return true;
                }
            }
            cur = e.source();
        }
        false
    }
}

fn io_op(op: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let op = op.into();
    move |source| NodeError::Io { op, source }
}

/// The storage node.
pub struct Node {
    cfg: NodeConfig,
    layout: Layout,
    meta: Meta,
    clone_method: CloneMethod,
    metrics: Arc<Metrics>,
    /// Serialises read-modify-write of metadata records.
    meta_write: Mutex<()>,
    /// Per-timeline lock: forks and snapshots read it, deletion writes it.
    locks: StdMutex<HashMap<TimelineId, Arc<RwLock<()>>>>,
    /// Per-id lock so concurrent retries of one create wait for each other.
    creating: StdMutex<HashMap<TimelineId, Arc<Mutex<()>>>>,
    /// Timelines with a periodic snapshot in flight.
    snapshotting: StdMutex<HashSet<TimelineId>>,
    /// One drain of an archive inbox at a time (the background one and those a fork,
    /// snapshot or GC runs first), so no two judge the same arrival.
    draining: Mutex<()>,
    /// Extent maps of unchanged files, reused by every accounting sweep.
    extent_cache: Arc<accounting::ExtentCache>,
    /// The data directory, open: every path inside a timeline is resolved beneath it
    /// without following links (see [`crate::beneath`]).
    data: Arc<Dir>,
}

/// What a compute looks like from the storage side.
struct Running {
    port: u16,
}

impl Node {
    /// Opens the data directory: detects the clone method, opens metadata, and removes
    /// whatever a crash left half-done (staging directories, creating records).
    pub fn open(cfg: NodeConfig, metrics: Arc<Metrics>) -> Result<Node, NodeError> {
        let layout = Layout::new(&cfg.data_dir);
        for d in [layout.timelines(), layout.root().join("meta")] {
            std::fs::create_dir_all(&d).map_err(io_op(format!("create {}", d.display())))?;
        }
        let clone_method = clone::detect_clone_method(layout.root())?;
        if clone_method == CloneMethod::Copy {
            warn!(
                data_dir = %layout.root().display(),
                "THE DATA DIRECTORY DOES NOT SUPPORT REFLINKS: every fork and snapshot is a FULL COPY \
                 (slow, and no space is shared). Use XFS (mkfs.xfs -m reflink=1) or btrfs."
            );
        }
        if clone_method == CloneMethod::Reflink
            && clone::set_cow_extent_size(&layout.timelines(), COW_EXTENT_SIZE)?
        {
            tracing::debug!(
                bytes = COW_EXTENT_SIZE,
                "set XFS copy-on-write extent size hint"
            );
        }
        let meta = Meta::open(&layout.meta_db())?;
        let data = Arc::new(Dir::open_root(layout.root()).map_err(CloneError::from)?);
        let node = Node {
            data,
            cfg,
            layout,
            meta,
            clone_method,
            metrics,
            meta_write: Mutex::new(()),
            locks: StdMutex::new(HashMap::new()),
            creating: StdMutex::new(HashMap::new()),
            snapshotting: StdMutex::new(HashSet::new()),
            draining: Mutex::new(()),
            extent_cache: Arc::default(),
        };
        node.recover()?;
        Ok(node)
    }

    pub fn clone_method(&self) -> CloneMethod {
        self.clone_method
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Crash recovery of the node's own state.
    fn recover(&self) -> Result<(), NodeError> {
        let records = self.meta.all()?;
        for r in &records {
            if r.phase == Phase::Creating {
                warn!(timeline = %r.id, "removing a timeline whose creation was interrupted");
                self.remove_tree(&self.layout.creating(r.id))?;
                self.remove_tree(&self.layout.timeline(r.id))?;
                self.meta.remove(r.id)?;
            }
        }
        let known: Vec<String> = self.meta.all()?.iter().map(|r| r.id.to_string()).collect();
        let timelines = self.open_dir(&self.layout.timelines())?;
        for e in timelines.entries().map_err(CloneError::from)? {
            let name = e.name.to_string_lossy().into_owned();
            if !known.contains(&name) {
                warn!(dir = %name, "removing a directory no timeline owns (interrupted create or delete)");
                timelines.remove_tree(&e.name).map_err(CloneError::from)?;
                continue;
            }
            // A half-taken snapshot. A timeline whose snapshots/ a compute replaced by a
            // link is left alone here (its forks and snapshots are refused, naming it):
            // one tenant must not keep the node from starting.
            match timelines.open_dir_if_exists(Path::new(&e.name).join("snapshots")) {
                Ok(Some(snaps)) => {
                    for s in snaps.entries().map_err(CloneError::from)? {
                        if s.name.to_string_lossy().starts_with(".creating-") {
                            snaps.remove_tree(&s.name).map_err(CloneError::from)?;
                        }
                    }
                }
                Ok(None) => {}
                Err(err) => warn!(timeline = %name, error = %err, "cannot clean up snapshots"),
            }
            // Timelines made before the archive inbox existed get theirs now, so their
            // next compute (given the new archive_command) can archive at once.
            let ensured = timelines
                .open_dir(&e.name)
                .map_err(CloneError::from)
                .and_then(|t| inbox::ensure(&t));
            if let Err(err) = ensured {
                warn!(timeline = %name, error = %err, "cannot create the archive inbox");
            }
        }
        Ok(())
    }

    fn lock_of(&self, id: TimelineId) -> Arc<RwLock<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    fn record(&self, id: TimelineId) -> Result<TimelineRecord, NodeError> {
        match self.meta.get(id)? {
            Some(r) if r.phase != Phase::Creating => Ok(r),
            _ => Err(NodeError::NotFound(format!("timeline {id} does not exist"))),
        }
    }

    fn dir(&self, id: TimelineId) -> TimelineDir {
        TimelineDir(self.layout.timeline(id))
    }

    async fn running(&self, id: TimelineId) -> Option<Running> {
        control::running_port(&self.dir(id).run())
            .await
            .map(|port| Running { port })
    }

    // ----- create -------------------------------------------------------------------

    /// `POST /v1/timelines`. Returns the timeline and whether it was created now.
    #[instrument(skip(self, req), fields(timeline))]
    pub async fn create(&self, mut req: CreateTimeline) -> Result<(TimelineInfo, bool), NodeError> {
        if req.at.is_some() && req.parent.is_none() {
            return Err(NodeError::Invalid(
                "\"at\" is only valid with \"parent\": a root timeline starts empty".into(),
            ));
        }
        if req.parent.is_some() && req.at.is_none() {
            req.at = Some(At::Latest);
        }
        let id = *req.id.get_or_insert_with(TimelineId::new_v4);
        tracing::Span::current().record("timeline", tracing::field::display(id));
        let id_lock = {
            let mut m = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id).or_default().clone()
        };
        let _guard = id_lock.lock().await;
        if let Some(existing) = self.meta.get(id)? {
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
        let started = Instant::now();
        let result = match req.parent {
            None => self.create_root(id, &req).await,
            Some(parent) => self.fork(id, parent, &req).await,
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

    fn begin(&self, id: TimelineId, req: &CreateTimeline) -> Result<TimelineRecord, NodeError> {
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
        Ok(rec)
    }

    /// Makes the staging directory the timeline: durable first, then one rename, then one
    /// metadata commit. A crash before the commit is cleaned up at start-up.
    fn commit(&self, mut rec: TimelineRecord) -> Result<TimelineRecord, NodeError> {
        let staging = self.layout.creating(rec.id);
        clone::syncfs(&staging)?;
        std::fs::rename(&staging, self.layout.timeline(rec.id))
            .map_err(io_op(format!("publish timeline {}", rec.id)))?;
        fsync_dir(&self.layout.timelines())?;
        rec.phase = Phase::Ready;
        self.meta.put(&rec)?;
        Ok(rec)
    }

    async fn create_root(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
    ) -> Result<TimelineRecord, NodeError> {
        let rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        std::fs::create_dir(dir.pgdata()).map_err(io_op("create pgdata"))?;
        set_mode(&dir.pgdata(), 0o700)?;
        info!(timeline = %id, "created empty root timeline");
        self.commit(rec)
    }

    async fn fork(
        &self,
        id: TimelineId,
        parent: TimelineId,
        req: &CreateTimeline,
    ) -> Result<TimelineRecord, NodeError> {
        let _parent_guard = self.read_lock(parent).await;
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
        let mut rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        let t0 = Instant::now();
        let fork = match plan {
            Plan::Backup { port } => self.fork_backup(&pdir, port, &dir, id).await?,
            Plan::Stopped => self.fork_stopped(&pdir, &dir).await?,
            Plan::FromSnapshot { base, target } => {
                self.fork_from_snapshot(&prec, &pdir, base, target, &dir)
                    .await?
            }
        };
        let build_ms = t0.elapsed().as_millis() as u64;
        // The fork's starting state is also its first snapshot: its own history (and
        // its restore window) begins at the fork point.
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
        let snapshot_ms = t0.elapsed().as_millis() as u64 - build_ms;
        pgdata::prepare_recovery(&dir.pgdata(), fork.recovery)
            .map_err(io_op("write recovery settings"))?;
        rec.fork_lsn = Some(fork.lsn);
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
            plain_start: fork.recovery == RecoveryTarget::None,
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
        Ok(rec)
    }

    async fn read_lock(&self, id: TimelineId) -> OwnedRwLockReadGuard<()> {
        self.lock_of(id).read_owned().await
    }

    /// Decides how to serve a fork of `prec` at `at`, or says why the target is invalid.
    async fn plan(
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
                    return Err(NodeError::OutOfRange(format!(
                        "timeline {} has no snapshot yet, so no point of its history can be forked; take one with POST /v1/timelines/{}/snapshots or fork at latest",
                        prec.id, prec.id
                    )));
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
                    return Err(NodeError::OutOfRange(format!(
                        "timeline {} has no snapshot yet, so no point of its history can be forked",
                        prec.id
                    )));
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

    fn snapshot_named(
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
    async fn fork_backup(
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
        Ok(Fork {
            start_lsn: b.start_lsn,
            lsn: b.stop_lsn,
            consistent_lsn: b.stop_lsn,
            time: b.time,
            pg_timeline: b.pg_timeline,
            recovery: RecoveryTarget::Immediate,
        })
    }

    /// Takes a base backup of the compute in `pdir` into `dest` (a new directory).
    async fn backup_into(
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
        let stop = control::backup_stop(&client).await?;
        let time = control::now(&client).await?;
        drop(client);
        pgdata::write_backup_files(&dest_dir, &stop.label, &stop.tablespace_map)
            .map_err(CloneError::from)?;
        let range = start_lsn.segment(SEGMENT_SIZE)..=stop.lsn.segment(SEGMENT_SIZE);
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
        wal::check_complete(&pg_wal, start_lsn, stop.lsn, pg_timeline)?;
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
    /// an archive of its own.
    async fn fork_stopped(&self, pdir: &TimelineDir, dir: &TimelineDir) -> Result<Fork, NodeError> {
        let method = self.clone_method;
        let (src, dst) = (self.open_dir(&pdir.pgdata())?, self.open_dir(&dir.0)?);
        tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &dst, "pgdata", method, &pgdata::stopped_exclude)
        })
        .await??;
        let c = self.read_pg_control(&dir.pgdata())?;
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
        })
    }

    /// Fork at a point of history: the newest snapshot before it plus archived WAL (and the
    /// parent's unarchived tail) replayed to the target.
    async fn fork_from_snapshot(
        &self,
        prec: &TimelineRecord,
        pdir: &TimelineDir,
        base: SnapshotRecord,
        target: Target,
        dir: &TimelineDir,
    ) -> Result<Fork, NodeError> {
        // A running parent writes a record past the target and flushes it, so recovery
        // always finds the record it stops after.
        if let Some(r) = self.running(prec.id).await {
            let c = control::connect(&pdir.run(), r.port).await?;
            control::mark_and_flush(
                &c,
                &format!("ramify-fork-{}", Utc::now().timestamp_millis()),
            )
            .await?;
        }
        let method = self.clone_method;
        let (src, dst) = (
            self.open_dir(&pdir.snapshot_pgdata(&base.info.name))?,
            self.open_dir(&dir.0)?,
        );
        tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &dst, "pgdata", method, &|_: &Path, _| false)
        })
        .await??;
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
        let recovery = if lsn == base.info.end_lsn && base.plain_start {
            RecoveryTarget::None
        } else if lsn == base.consistent_lsn {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Lsn(lsn)
        };
        Ok(Fork {
            start_lsn: base.info.start_lsn,
            lsn,
            consistent_lsn: base.consistent_lsn,
            time,
            pg_timeline: tli,
            recovery,
        })
    }

    /// Commit time of the last transaction before `lsn`, reading as little WAL as it can.
    async fn commit_time_before(
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

    // ----- read ---------------------------------------------------------------------

    fn wal_kept_from(&self, rec: &TimelineRecord) -> Option<Lsn> {
        let archive = self.open_dir(&self.dir(rec.id).archive()).ok()?;
        read_wal_kept_from(&archive)
    }

    // ----- paths inside timelines -----------------------------------------------------

    /// Opens directory `path` (below the data directory) without following any link.
    fn open_dir(&self, path: &Path) -> Result<Dir, NodeError> {
        Ok(self
            .data
            .open_dir_at(self.layout.root(), path)
            .map_err(CloneError::from)?)
    }

    /// The directory holding `path`, opened as [`Node::open_dir`] does, and `path`'s name in it.
    fn open_parent(&self, path: &Path) -> Result<(Dir, std::ffi::OsString), NodeError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(NodeError::Invalid(format!(
                "{} has no parent directory",
                path.display()
            )));
        };
        Ok((self.open_dir(parent)?, name.to_os_string()))
    }

    /// Removes `path` and everything below it; a link is removed, never followed.
    fn remove_tree(&self, path: &Path) -> Result<(), NodeError> {
        let (parent, name) = match self.open_parent(path) {
            Ok(p) => p,
            Err(NodeError::Fs(CloneError::Beneath(e))) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        parent.remove_tree(&name).map_err(CloneError::from)?;
        Ok(())
    }

    /// Whether `name` is a regular file in the timeline's PGDATA (a link is not).
    fn pg_has(&self, id: TimelineId, name: &str) -> bool {
        self.open_dir(&self.dir(id).pgdata())
            .is_ok_and(|d| d.has_file(name))
    }

    /// `global/pg_control` of the PGDATA at `pgdata`, read without following links.
    fn read_pg_control(&self, pgdata: &Path) -> Result<pgcontrol::PgControl, NodeError> {
        let bytes = self
            .open_dir(&pgdata.join("global"))?
            .read("pg_control")
            .map_err(CloneError::from)?;
        Ok(pgcontrol::parse(&bytes, &pgdata.join("global/pg_control"))?)
    }

    /// The WAL directories a fork reads from, opened; one that does not exist is left out.
    fn wal_sources(&self, paths: &[PathBuf]) -> Result<Vec<Dir>, NodeError> {
        let mut out = Vec::new();
        for p in paths {
            match self.open_dir(p) {
                Ok(d) => out.push(d),
                Err(NodeError::Fs(CloneError::Beneath(e))) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn window(
        &self,
        rec: &TimelineRecord,
        running: Option<&Running>,
    ) -> Result<RestoreWindow, NodeError> {
        let usable = window::usable(&rec.snapshots, self.wal_kept_from(rec));
        let base = usable.first();
        let (to_lsn, to_time) = match running {
            Some(r) => match control::connect(&self.dir(rec.id).run(), r.port).await {
                Ok(c) => (Some(control::flush_lsn(&c).await?), Some(Utc::now())),
                Err(_) => (None, None),
            },
            None => match self.read_pg_control(&self.dir(rec.id).pgdata()) {
                Ok(c) if !self.pg_has(rec.id, "recovery.signal") => {
                    (Some(c.checkpoint), Some(c.time))
                }
                _ => (rec.fork_lsn, rec.fork_time),
            },
        };
        Ok(RestoreWindow {
            from_lsn: base.map(|s| s.info.end_lsn),
            from_time: base.map(|s| s.info.time),
            to_lsn,
            to_time,
        })
    }

    /// Space figures of every timeline, from one sweep over the whole node (a timeline's
    /// exclusive bytes depend on what every other timeline shares with it).
    async fn usage(&self) -> Result<HashMap<TimelineId, Usage>, NodeError> {
        let ids: Vec<TimelineId> = self
            .meta
            .all()?
            .into_iter()
            .filter(|r| r.phase == Phase::Ready)
            .map(|r| r.id)
            .collect();
        let scopes: Vec<Scope> = ids
            .iter()
            .map(|id| {
                let d = self.dir(*id);
                Scope {
                    pgdata: d.pgdata(),
                    history: vec![d.archive(), d.inbox(), d.rejected(), d.snapshots()],
                }
            })
            .collect();
        let cache = self.extent_cache.clone();
        let (data, root) = (self.data.clone(), self.layout.root().to_path_buf());
        let usage =
            tokio::task::spawn_blocking(move || accounting::account(&data, &root, &scopes, &cache))
                .await??;
        Ok(ids.into_iter().zip(usage).collect())
    }

    /// The API view of a timeline, with fresh accounting and compute state.
    async fn info(&self, rec: &TimelineRecord) -> Result<TimelineInfo, NodeError> {
        let usage = self.usage().await?;
        self.info_with(rec, usage.get(&rec.id).copied().unwrap_or_default())
            .await
    }

    async fn info_with(
        &self,
        rec: &TimelineRecord,
        usage: Usage,
    ) -> Result<TimelineInfo, NodeError> {
        let dir = self.dir(rec.id);
        let running = self.running(rec.id).await;
        let restore_window = self.window(rec, running.as_ref()).await?;
        let state = if self.pg_has(rec.id, "PG_VERSION") {
            TimelineState::Ready
        } else {
            TimelineState::Empty
        };
        Ok(TimelineInfo {
            id: rec.id,
            parent: rec.parent,
            at: rec.at.clone(),
            fork_lsn: rec.fork_lsn,
            fork_time: rec.fork_time,
            state,
            compute: if running.is_some() {
                ComputeState::Running
            } else {
                ComputeState::Stopped
            },
            created_at: rec.created_at,
            pgdata: path_str(&dir.pgdata()),
            archive: path_str(&dir.archive()),
            run_dir: path_str(&dir.run()),
            archive_command: wal::archive_command(),
            logical_bytes: usage.logical,
            exclusive_bytes: usage.exclusive,
            history_bytes: usage.history,
            restore_window,
            snapshots: rec.snapshots.iter().map(|s| s.info.clone()).collect(),
        })
    }

    /// `GET /v1/timelines/{id}`.
    pub async fn get(&self, id: TimelineId) -> Result<TimelineInfo, NodeError> {
        let rec = self.record(id)?;
        self.info(&rec).await
    }

    /// `GET /v1/timelines/{id}?sizes=false`: everything but the space figures (left 0),
    /// without the accounting sweep — what starting a compute needs, on every wake.
    pub async fn get_without_sizes(&self, id: TimelineId) -> Result<TimelineInfo, NodeError> {
        let rec = self.record(id)?;
        self.info_with(&rec, Usage::default()).await
    }

    /// `GET /v1/timelines`.
    pub async fn list(&self) -> Result<Vec<TimelineInfo>, NodeError> {
        let usage = self.usage().await?;
        let mut out = Vec::new();
        for rec in self.meta.all()? {
            if rec.phase == Phase::Ready {
                let u = usage.get(&rec.id).copied().unwrap_or_default();
                out.push(self.info_with(&rec, u).await?);
            }
        }
        Ok(out)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let fs = clone::fs_info(self.layout.root())?;
        let timelines = self
            .meta
            .all()?
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .count();
        Ok(NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: path_str(self.layout.root()),
            clone_method: self.clone_method,
            filesystem: fs.fs_type,
            capacity_bytes: fs.capacity,
            used_bytes: fs.used,
            available_bytes: fs.available,
            timelines,
            restore_window_seconds: self.cfg.restore_window.as_secs(),
            snapshot_interval_seconds: self.cfg.snapshot_interval.as_secs(),
            snapshot_wal_bytes: self.cfg.snapshot_wal_bytes,
        })
    }

    // ----- delete -------------------------------------------------------------------

    /// `DELETE /v1/timelines/{id}`: refused while its compute runs unless `force`, which
    /// stops the compute first. Space other timelines share stays; the rest is freed.
    #[instrument(skip(self))]
    pub async fn delete(&self, id: TimelineId, force: bool) -> Result<(), NodeError> {
        self.record(id)?;
        let dir = self.dir(id);
        if self.running(id).await.is_some() {
            if !force {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} has a running compute; stop it first or delete with ?force=true"
                )));
            }
            // Stopped before taking the lock: a snapshot waiting on this compute's
            // checkpoint then fails at once and lets go of the timeline.
            stop_postmaster(&dir.pgdata(), self.open_dir(&dir.pgdata())?).await?;
        }
        let lock = self.lock_of(id);
        let _w = lock.write().await;
        self.record(id)?;
        if self.running(id).await.is_some() {
            return Err(NodeError::Conflict(format!(
                "the compute of timeline {id} started again while it was being deleted; stop it and retry"
            )));
        }
        let gone = self.layout.deleting(id);
        std::fs::rename(&dir.0, &gone).map_err(io_op(format!("retire timeline {id}")))?;
        self.meta.remove(id)?;
        let timelines = self.open_dir(&self.layout.timelines())?;
        tokio::task::spawn_blocking(move || remove_tree_in(&timelines, &gone)).await??;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        info!(timeline = %id, "deleted timeline");
        Ok(())
    }

    // ----- credentials --------------------------------------------------------------

    /// `PUT /v1/timelines/{id}/credentials`: creates the branch's login role with this
    /// password (or resets the password of the role a fork inherited) and its database,
    /// over the compute's Unix socket as the bootstrap superuser. Idempotent.
    #[instrument(skip(self, creds), fields(user = %creds.user, database = %creds.database))]
    pub async fn set_credentials(
        &self,
        id: TimelineId,
        creds: &ramify_api::Credentials,
    ) -> Result<(), NodeError> {
        use ramify_api::names::{validate_password, validate_sql_identifier};
        validate_sql_identifier("role name", &creds.user).map_err(NodeError::Invalid)?;
        validate_sql_identifier("database name", &creds.database).map_err(NodeError::Invalid)?;
        validate_password(&creds.password).map_err(NodeError::Invalid)?;
        self.record(id)?;
        let Some(running) = self.running(id).await else {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has no running compute; start it before setting credentials"
            )));
        };
        let c = control::connect(&self.dir(id).run(), running.port).await?;
        control::ensure_login(
            &c,
            &creds.user,
            &creds.password,
            &creds.database,
            creds.disable_other_logins,
        )
        .await?;
        info!(timeline = %id, "credentials set");
        Ok(())
    }

    // ----- restore points -----------------------------------------------------------

    /// `POST /v1/timelines/{id}/restore-points`: a named restore point in the running
    /// compute's WAL, durably flushed, in one short transaction (the compute keeps
    /// serving). When `snapshot_wal_bytes` of WAL or more were written since the newest
    /// snapshot, a snapshot is started in the background (unless one is already being
    /// taken), so a fork at a later point never has much WAL to replay. A timeline without
    /// any snapshot first gets one, so that the point can be forked at all.
    #[instrument(skip(self, req), fields(name = %req.name))]
    pub async fn create_restore_point(
        self: &Arc<Self>,
        id: TimelineId,
        req: &CreateRestorePoint,
    ) -> Result<RestorePointInfo, NodeError> {
        ramify_api::names::validate_snapshot_name(&req.name)
            .map_err(|e| NodeError::Invalid(e.replace("snapshot name", "restore point name")))?;
        // A point no snapshot precedes could never be forked: a timeline that has none yet
        // (a root before its first periodic one) gets one now, once.
        if self.record(id)?.snapshots.is_empty() && self.running(id).await.is_some() {
            let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
            self.snapshot(id, &name, SnapshotKind::Periodic, true)
                .await?;
        }
        let (lsn, time, rec) = {
            let _g = self.read_lock(id).await;
            let rec = self.record(id)?;
            let Some(running) = self.running(id).await else {
                return Err(NodeError::Conflict(format!(
                    "timeline {id} has no running compute; a restore point is written by its Postgres, so start it first"
                )));
            };
            let c = control::connect(&self.dir(id).run(), running.port).await?;
            let (lsn, time) = control::restore_point(&c, &req.name).await?;
            (lsn, time, rec)
        };
        let wal_since_snapshot = rec
            .snapshots
            .iter()
            .max_by_key(|s| s.info.end_lsn)
            .map_or(lsn.0, |s| {
                lsn.bytes_since(s.after_lsn.unwrap_or(s.info.end_lsn))
            });
        let snapshot = match req.snapshot_wal_bytes {
            Some(limit) if limit > 0 && wal_since_snapshot >= limit => {
                self.snapshot_in_background(id)
            }
            _ => None,
        };
        info!(timeline = %id, %lsn, wal_since_snapshot, snapshot = ?snapshot, "restore point written");
        Ok(RestorePointInfo {
            name: req.name.clone(),
            lsn,
            time,
            wal_since_snapshot,
            snapshot,
        })
    }

    /// Starts a snapshot of `id` in a task of its own, with a fast checkpoint (whoever asked
    /// wants the next fork to be quick); `None` when one is already being taken.
    fn snapshot_in_background(self: &Arc<Self>, id: TimelineId) -> Option<String> {
        let newly_busy = self
            .snapshotting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        if !newly_busy {
            return None;
        }
        let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
        let node = Arc::clone(self);
        let task_name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = node
                .snapshot(id, &task_name, SnapshotKind::Periodic, true)
                .await
            {
                warn!(timeline = %id, error = %e, "snapshot after a restore point failed");
            }
            node.snapshotting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        Some(name)
    }

    // ----- snapshots ----------------------------------------------------------------

    /// `POST /v1/timelines/{id}/snapshots`: a named snapshot, taken now.
    pub async fn create_snapshot(
        &self,
        id: TimelineId,
        name: &str,
    ) -> Result<SnapshotInfo, NodeError> {
        ramify_api::names::validate_snapshot_name(name).map_err(NodeError::Invalid)?;
        if name == "fork" {
            return Err(NodeError::Invalid(
                "snapshot name \"fork\" is reserved for the fork point".into(),
            ));
        }
        self.snapshot(id, name, SnapshotKind::Manual, true)
            .await
            .map_err(NodeError::refusal_is_conflict)
    }

    async fn snapshot(
        &self,
        id: TimelineId,
        name: &str,
        kind: SnapshotKind,
        fast: bool,
    ) -> Result<SnapshotInfo, NodeError> {
        let _g = self.read_lock(id).await;
        let rec = self.record(id)?;
        if rec.snapshots.iter().any(|s| s.info.name == name) {
            return Err(NodeError::Conflict(format!(
                "timeline {id} already has a snapshot {name:?}"
            )));
        }
        let dir = self.dir(id);
        if !self.pg_has(id, "PG_VERSION") || self.pg_has(id, "recovery.signal") {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has not been started yet; its fork snapshot already holds its only state"
            )));
        }
        let staging = dir.snapshot_staging(name);
        let snaps = self.open_dir(&dir.snapshots())?;
        let staging_name = format!(".creating-{name}");
        snaps.remove_tree(&staging_name).map_err(CloneError::from)?;
        let staging_dir = snaps
            .create_dir(&staging_name, 0o700)
            .map_err(CloneError::from)?;
        let pg = staging.join("pgdata");
        let running = self.running(id).await;
        let stopped = running.is_none();
        let taken = async {
            match running {
                Some(r) => {
                    let b = self
                        .backup_into(&dir, r.port, &pg, &format!("ramify snapshot {name}"), fast)
                        .await?;
                    let after = match control::connect(&dir.run(), r.port).await {
                        Ok(c) => control::flush_lsn(&c).await.ok(),
                        Err(_) => None,
                    };
                    Ok::<_, NodeError>((b.start_lsn, b.stop_lsn, b.time, b.pg_timeline, after))
                }
                None => {
                    let method = self.clone_method;
                    let src = self.open_dir(&dir.pgdata())?;
                    tokio::task::spawn_blocking(move || {
                        clone::clone_tree(
                            &src,
                            &staging_dir,
                            "pgdata",
                            method,
                            &pgdata::stopped_exclude,
                        )
                    })
                    .await??;
                    let c = self.read_pg_control(&pg)?;
                    Ok((c.redo, c.checkpoint, c.time, c.timeline, Some(c.checkpoint)))
                }
            }
        }
        .await;
        let (start, end, time, tli, after) = match taken {
            Ok(v) => v,
            Err(e) => {
                let _ = snaps.remove_tree(&staging_name);
                return Err(e);
            }
        };
        clone::syncfs(self.layout.root())?;
        snaps
            .rename(&staging_name, &snaps, name)
            .map_err(CloneError::from)?;
        let info = SnapshotInfo {
            name: name.to_string(),
            kind,
            start_lsn: start,
            end_lsn: end,
            time,
            pg_timeline: tli,
        };
        let _m = self.meta_write.lock().await;
        let mut rec = self.record(id)?;
        rec.snapshots.push(SnapshotRecord {
            info: info.clone(),
            consistent_lsn: end,
            after_lsn: after,
            plain_start: stopped,
        });
        rec.snapshots.sort_by_key(|s| s.info.end_lsn);
        self.meta.put(&rec)?;
        self.metrics.snapshot_taken();
        info!(timeline = %id, snapshot = name, kind = ?kind, start_lsn = %start, end_lsn = %end, "snapshot taken");
        Ok(info)
    }

    /// `GET /v1/timelines/{id}/snapshots`.
    pub fn list_snapshots(&self, id: TimelineId) -> Result<Vec<SnapshotInfo>, NodeError> {
        Ok(self
            .record(id)?
            .snapshots
            .into_iter()
            .map(|s| s.info)
            .collect())
    }

    /// `DELETE /v1/timelines/{id}/snapshots/{name}`.
    pub async fn delete_snapshot(&self, id: TimelineId, name: &str) -> Result<(), NodeError> {
        ramify_api::names::validate_snapshot_name(name).map_err(NodeError::Invalid)?;
        let _g = self.read_lock(id).await;
        let _m = self.meta_write.lock().await;
        let mut rec = self.record(id)?;
        self.snapshot_named(&rec, name)?;
        rec.snapshots.retain(|s| s.info.name != name);
        self.meta.put(&rec)?;
        let snaps = self.open_dir(&self.dir(id).snapshots())?;
        let name = name.to_string();
        tokio::task::spawn_blocking(move || snaps.remove_tree(&name).map_err(CloneError::from))
            .await??;
        Ok(())
    }

    // ----- archive inbox ----------------------------------------------------------

    /// Moves what the compute of `dir` archived into its inbox into its archive (see
    /// [`crate::inbox`]). Callers hold the timeline's lock (read or write).
    async fn drain_archive_of(&self, dir: &TimelineDir) -> Result<Drained, NodeError> {
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
            let newly_busy = self
                .snapshotting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.id);
            if !newly_busy {
                continue;
            }
            let node = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = node.maybe_snapshot(&rec).await {
                    warn!(timeline = %rec.id, error = %e, "periodic snapshot failed");
                }
                node.snapshotting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&rec.id);
            });
        }
        Ok(())
    }

    async fn maybe_snapshot(&self, rec: &TimelineRecord) -> Result<(), NodeError> {
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
            Some(r) => match control::connect(&dir.run(), r.port).await {
                Ok(c) => control::flush_lsn(&c).await?,
                Err(_) => return Ok(()), // starting up; next tick
            },
            None => self.read_pg_control(&dir.pgdata())?.checkpoint,
        };
        let due = match newest {
            None => true,
            Some(s) => {
                let new_wal = current.bytes_since(s.after_lsn.unwrap_or(s.info.end_lsn));
                let age = (Utc::now() - s.info.time).to_std().unwrap_or_default();
                // An idle compute still writes a little WAL (a timed checkpoint after the
                // snapshot's own): that alone must not cause snapshot after snapshot.
                new_wal >= MIN_NEW_WAL
                    && ((!interval.is_zero() && age >= interval)
                        || (wal_bytes > 0 && new_wal >= wal_bytes))
            }
        };
        if due {
            let name = format!("auto-{}", Utc::now().format("%Y%m%dt%H%M%S%3fz"));
            // A periodic snapshot never forces an immediate checkpoint on the compute.
            self.snapshot(rec.id, &name, SnapshotKind::Periodic, false)
                .await?;
        }
        Ok(())
    }

    /// Deletes snapshots and archived WAL no fork inside the restore window needs.
    pub async fn gc(&self, id: TimelineId) -> Result<(), NodeError> {
        let window =
            chrono::Duration::from_std(self.cfg.restore_window).unwrap_or(chrono::Duration::MAX);
        let window_start = Utc::now() - window;
        let _g = self.read_lock(id).await;
        let dir = self.dir(id);
        // Segments still in the inbox are judged against the window like the rest.
        self.drain_archive_of(&dir).await?;
        let plan = {
            let _m = self.meta_write.lock().await;
            let mut rec = self.record(id)?;
            let kept = self.wal_kept_from(&rec);
            let plan = window::plan_gc(&rec.snapshots, kept, window_start);
            if plan.snapshots.is_empty() && plan.wal_kept_from == kept {
                return Ok(());
            }
            // Record first: from now on nothing will use what is deleted below.
            if let Some(k) = plan.wal_kept_from {
                write_wal_kept_from(&self.open_dir(&dir.archive())?, k)?;
            }
            rec.snapshots
                .retain(|s| !plan.snapshots.contains(&s.info.name));
            self.meta.put(&rec)?;
            plan
        };
        let mut freed_files = 0;
        // Removing goes through descriptors: a link planted in place of a snapshot or a
        // segment is removed itself, never what it points to.
        let snaps = self.open_dir(&dir.snapshots())?;
        for name in &plan.snapshots {
            snaps.remove_tree(name).map_err(CloneError::from)?;
        }
        if let Some(first) = plan.first_needed_segment() {
            let archive = self.open_dir(&dir.archive())?;
            for (name, f) in wal::list(&archive)? {
                if let wal::WalFile::Segment { segno, .. } = f {
                    if segno < first {
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
                    if matches!(seg, wal::WalFile::Segment { segno, .. } if segno < first) {
                        let _ = archive.remove_file_if_exists(&e.name);
                    }
                }
            }
        }
        info!(timeline = %id, snapshots = plan.snapshots.len(), wal_segments = freed_files, "restore-window GC");
        Ok(())
    }
}

/// XFS copy-on-write extent size hint for everything under `timelines/`: one Postgres page
/// (see [`clone::set_cow_extent_size`]).
const COW_EXTENT_SIZE: u32 = 8192;

/// WAL that must be written since the last snapshot before another periodic one is due.
const MIN_NEW_WAL: u64 = 64 * 1024;

/// How a fork is served.
enum Plan {
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
enum Target {
    Lsn(Lsn),
    Time(DateTime<Utc>),
}

struct Fork {
    start_lsn: Lsn,
    lsn: Lsn,
    consistent_lsn: Lsn,
    time: DateTime<Utc>,
    pg_timeline: u32,
    recovery: RecoveryTarget,
}

struct Backup {
    start_lsn: Lsn,
    stop_lsn: Lsn,
    time: DateTime<Utc>,
    pg_timeline: u32,
}

fn describe_window(w: &RestoreWindow) -> String {
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

const WAL_KEPT_FROM: &str = "wal-kept-from";

fn read_wal_kept_from(archive: &Dir) -> Option<Lsn> {
    let bytes = archive.read(WAL_KEPT_FROM).ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// Written before any WAL is deleted, durably, so forks never pick a base whose WAL is gone.
/// The temporary file is created new (`O_EXCL | O_NOFOLLOW`): a link planted under its
/// name is replaced, never written through.
fn write_wal_kept_from(archive: &Dir, lsn: Lsn) -> Result<(), NodeError> {
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

async fn stop_postmaster(pgdata: &Path, pgdata_dir: Dir) -> Result<(), NodeError> {
    let Some(pid) = pgdata_dir
        .read("postmaster.pid")
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return Err(NodeError::Conflict(
            "the compute runs but its postmaster.pid is unreadable from here; stop the compute first".into(),
        ));
    };
    // The pid is only meaningful in the compute's own PID namespace. In Kubernetes the
    // compute is another Pod, and its pid may name an unrelated process here (even this
    // node itself): signal it only if that process runs in this very data directory.
    let same_dir = match (
        std::fs::canonicalize(format!("/proc/{pid}/cwd")),
        std::fs::canonicalize(pgdata),
    ) {
        (Ok(cwd), Ok(dir)) => cwd == dir,
        _ => false,
    };
    if !same_dir {
        return Err(NodeError::Conflict(
            "the compute runs in another process namespace (e.g. its own Pod); stop it first, then delete".into(),
        ));
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    // SIGINT = fast shutdown.
    if kill(pid, Signal::SIGINT).is_err() {
        return Err(NodeError::Conflict(
            "the compute runs in another process namespace; stop it first, then delete".into(),
        ));
    }
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Removes `path`, a child of the open directory `parent`, with everything below it; a
/// link is removed, never followed.
fn remove_tree_in(parent: &Dir, path: &Path) -> Result<(), NodeError> {
    let name = path.file_name().unwrap_or(path.as_os_str());
    parent.remove_tree(name).map_err(CloneError::from)?;
    Ok(())
}

fn fsync_dir(p: &Path) -> Result<(), NodeError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_op(format!("fsync {}", p.display())))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(io_op(format!("chmod {}", p.display())))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
