//! The storage node: timelines, forks, snapshots, deletion, accounting and the restore
//! window, on top of the data directory layout and the metadata store.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ramify_api::{
    At, CloneMethod, ComputeState, CreateRestorePoint, CreateTimeline, FollowInfo, Lsn, NodeStatus,
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
    /// `initdb` that makes every new root a cluster with a base snapshot, so its history
    /// starts at creation. Without it (only in-process harnesses that never run Postgres)
    /// roots are created EMPTY, as by older releases, with a warning: their history then
    /// starts at their first snapshot.
    pub initdb: Option<PathBuf>,
}

mod backup;
mod create;
mod credentials;
mod delete;
mod error;
mod follow;
mod fork;
mod fork_snapshot;
mod housekeeping;
mod read;
mod reserve;
mod snapshots;
mod spare;
mod stopped;

pub use backup::{host_name, Backups, Health as BackupHealth, Recovered, HEARTBEAT_EVERY};
pub use error::NodeError;
use housekeeping::read_wal_kept_from;
pub use reserve::Reserve;

/// The storage node.
pub struct Node {
    cfg: NodeConfig,
    layout: Layout,
    meta: Meta,
    clone_method: CloneMethod,
    /// How a new timeline or snapshot is made durable before it is published.
    durability: crate::beneath::Durability,
    metrics: Arc<Metrics>,
    /// Serialises read-modify-write of metadata records.
    meta_write: Mutex<()>,
    /// Per-timeline lock: forks and snapshots read it, deletion writes it.
    locks: StdMutex<HashMap<TimelineId, Arc<RwLock<()>>>>,
    /// Per-timeline history lock: a fork holds it shared from choosing its base (a
    /// snapshot, archived WAL) until its copy is done; snapshot deletion and GC hold it
    /// exclusive while they remove snapshots or WAL. Taking a snapshot never holds it, so
    /// a slow checkpoint never makes GC, or forks queued behind GC, wait.
    history: StdMutex<HashMap<TimelineId, Arc<RwLock<()>>>>,
    /// Per-id lock so concurrent retries of one create wait for each other.
    creating: StdMutex<HashMap<TimelineId, Arc<Mutex<()>>>>,
    /// Timelines with a periodic snapshot in flight.
    snapshotting: StdMutex<HashSet<TimelineId>>,
    /// Snapshots being taken, by timeline and name: each owns its staging directory
    /// `snapshots/.creating-<name>` until it publishes or gives up.
    taking: StdMutex<HashSet<(TimelineId, String)>>,
    /// One drain of an archive inbox at a time (the background one and those a fork,
    /// snapshot or GC runs first), so no two judge the same arrival.
    draining: Mutex<()>,
    /// Extent maps of unchanged files, reused by every accounting sweep.
    extent_cache: Arc<accounting::ExtentCache>,
    /// Space figures kept current in the background, answered by API calls.
    accountant: Arc<accounting::Accountant>,
    /// The data directory, open: every path inside a timeline is resolved beneath it
    /// without following links (see [`crate::beneath`]).
    data: Arc<Dir>,
    /// The space reserve and the guard keeping it (see [`reserve`]).
    space: reserve::SpaceGuard,
    /// Initial copies of following roots under way (see [`follow`]).
    copies: StdMutex<HashMap<TimelineId, follow::CopyProgress>>,
    /// Slots on their sources of logical copies a crash interrupted, to drop once the node
    /// serves (see [`Node::spawn_release_leftover_slots`]).
    leftover_slots: StdMutex<Vec<follow::logical::LeftoverSlot>>,
    /// Each physical follower's warm standby (see [`follow::warm`]); `None` when the node
    /// keeps none.
    warm: StdMutex<Option<HashMap<TimelineId, follow::warm::Slot>>>,
    /// The backup repository, when the node has one (see [`backup`]).
    backups: backup::BackupSlot,
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
        let durability =
            crate::beneath::Durability::for_filesystem(&clone::fs_info(layout.root())?.fs_type);
        let meta = Meta::open(&layout.meta_db())?;
        let data = Arc::new(Dir::open_root(layout.root()).map_err(CloneError::from)?);
        let node = Node {
            data,
            cfg,
            layout,
            meta,
            clone_method,
            durability,
            metrics,
            meta_write: Mutex::new(()),
            locks: StdMutex::new(HashMap::new()),
            history: StdMutex::new(HashMap::new()),
            creating: StdMutex::new(HashMap::new()),
            snapshotting: StdMutex::new(HashSet::new()),
            taking: StdMutex::new(HashSet::new()),
            draining: Mutex::new(()),
            extent_cache: Arc::default(),
            accountant: Arc::default(),
            space: reserve::SpaceGuard::default(),
            copies: StdMutex::new(HashMap::new()),
            leftover_slots: StdMutex::new(Vec::new()),
            warm: StdMutex::new(None),
            backups: backup::BackupSlot::new(),
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

    /// Crash recovery of the node's own state, logging each thing it reconciles: creates
    /// that never finished are undone, deletions that never finished are finished, and
    /// every timeline's `snapshots/` is made to agree with its record (a directory no
    /// record references is removed, a record whose directory is missing is dropped).
    fn recover(&self) -> Result<(), NodeError> {
        for r in self.meta.all()? {
            match r.phase {
                Phase::Creating => {
                    warn!(timeline = %r.id, "removing a timeline whose creation was interrupted");
                    self.interrupted_logical_copy(&r);
                    self.remove_tree(&self.layout.creating(r.id))?;
                    self.remove_tree(&self.layout.timeline(r.id))?;
                    crate::failpoint::hit("recover.mid");
                    self.meta.remove(r.id)?;
                }
                Phase::Deleting => {
                    warn!(timeline = %r.id, "finishing the deletion of a timeline that was interrupted");
                    self.remove_tree(&self.layout.timeline(r.id))?;
                    self.remove_tree(&self.layout.deleting(r.id))?;
                    self.meta.remove(r.id)?;
                }
                Phase::Empty | Phase::Ready => {}
            }
        }
        self.remove_leftover_warm()?;
        let records: HashMap<String, TimelineRecord> = self
            .meta
            .all()?
            .into_iter()
            .map(|r| (r.id.to_string(), r))
            .collect();
        let timelines = self.open_dir(&self.layout.timelines())?;
        let mut present = HashSet::new();
        for e in timelines.entries().map_err(CloneError::from)? {
            let name = e.name.to_string_lossy().into_owned();
            let Some(rec) = records.get(&name) else {
                warn!(dir = %name, "removing a directory no timeline owns (interrupted create or delete)");
                timelines.remove_tree(&e.name).map_err(CloneError::from)?;
                continue;
            };
            present.insert(name.clone());
            // A timeline whose snapshots/ a compute replaced by a link is left alone here
            // (its forks and snapshots are refused, naming it): one tenant must not keep
            // the node from starting.
            match timelines.open_dir_if_exists(Path::new(&e.name).join("snapshots")) {
                Ok(Some(snaps)) => self.reconcile_snapshots(rec, &snaps)?,
                Ok(None) => {}
                Err(err) => warn!(timeline = %name, error = %err, "cannot reconcile snapshots"),
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
        // A record whose directory is gone (an older release retired the directory
        // before removing the record, and crashed in between) is no timeline: every call
        // on it would fail. Its deletion is finished.
        for (name, rec) in &records {
            if !present.contains(name) {
                warn!(timeline = %rec.id, phase = ?rec.phase, "finishing the deletion of a timeline whose directory is gone");
                self.meta.remove(rec.id)?;
            }
        }
        Ok(())
    }

    /// Makes `snaps` (a timeline's `snapshots/`) and the record agree.
    fn reconcile_snapshots(&self, rec: &TimelineRecord, snaps: &Dir) -> Result<(), NodeError> {
        let referenced: HashSet<&str> =
            rec.snapshots.iter().map(|s| s.info.name.as_str()).collect();
        let mut on_disk = HashSet::new();
        for s in snaps.entries().map_err(CloneError::from)? {
            let n = s.name.to_string_lossy().into_owned();
            if n.starts_with(".creating-") {
                warn!(timeline = %rec.id, dir = %n, "removing a half-taken snapshot (the node stopped while taking it)");
            } else if n.starts_with(".deleting-") {
                warn!(timeline = %rec.id, dir = %n, "removing a snapshot whose deletion was interrupted");
            } else if !referenced.contains(n.as_str()) {
                warn!(timeline = %rec.id, snapshot = %n, "removing a snapshot directory no record references (the node stopped between publishing or deleting it and its record)");
            } else {
                on_disk.insert(n);
                continue;
            }
            snaps.remove_tree(&s.name).map_err(CloneError::from)?;
        }
        self.remove_spare(snaps)?;
        let missing: Vec<String> = rec
            .snapshots
            .iter()
            .map(|s| s.info.name.clone())
            .filter(|n| !on_disk.contains(n))
            .collect();
        if !missing.is_empty() {
            warn!(timeline = %rec.id, snapshots = ?missing, "dropping snapshot records whose directory is missing");
            let mut rec = rec.clone();
            rec.snapshots.retain(|s| on_disk.contains(&s.info.name));
            self.meta.put(&rec)?;
        }
        Ok(())
    }

    fn lock_of(&self, id: TimelineId) -> Arc<RwLock<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    fn history_of(&self, id: TimelineId) -> Arc<RwLock<()>> {
        let mut m = self.history.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    fn record(&self, id: TimelineId) -> Result<TimelineRecord, NodeError> {
        match self.meta.get(id)? {
            Some(r) if matches!(r.phase, Phase::Ready | Phase::Empty) => Ok(r),
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

    /// A control connection, over its Unix socket, to `id`'s compute listening on `port`
    /// (as [`Node::running`] found it).
    async fn connect_compute(
        &self,
        id: TimelineId,
        port: u16,
    ) -> Result<tokio_postgres::Client, ControlError> {
        control::connect(&self.dir(id).run(), port).await
    }

    /// A control connection to `id`'s compute, or `None` when none runs. A compute that is
    /// shutting down (a suspend, or the old compute a restore detached and stops in the
    /// background) refuses new connections until it has exited: it is waited for, up to
    /// [`SHUTDOWN_WAIT`], and then counts as stopped.
    async fn connect_unless_stopping(
        &self,
        id: TimelineId,
    ) -> Result<Option<tokio_postgres::Client>, NodeError> {
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        loop {
            let Some(r) = self.running(id).await else {
                return Ok(None);
            };
            match self.connect_compute(id, r.port).await {
                Ok(c) => return Ok(Some(c)),
                Err(e) if e.is_shutting_down() => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::Conflict(format!(
                            "the compute of timeline {id} has been shutting down for over {}s (a smart shutdown waits for its last sessions); try again once it has stopped",
                            SHUTDOWN_WAIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if self.running(id).await.is_none() => {
                    tracing::debug!(timeline = %id, error = %e, "compute stopped while connecting");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn read_lock(&self, id: TimelineId) -> OwnedRwLockReadGuard<()> {
        self.lock_of(id).read_owned().await
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
}

/// How long [`Node::connect_unless_stopping`] waits for a compute's shutdown: a fast
/// shutdown's checkpoint, or a smart one waiting for its last sessions.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// XFS copy-on-write extent size hint for everything under `timelines/`: one Postgres page
/// (see [`clone::set_cow_extent_size`]).
const COW_EXTENT_SIZE: u32 = 8192;

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

fn io_op(op: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let op = op.into();
    move |source| NodeError::Io { op, source }
}
