//! Space accounting: what each timeline would free if deleted.
//!
//! `FIEMAP` says whether an extent is shared, not with whom. A timeline shares blocks
//! with other timelines (its parent, its children) and also with itself (its archive is
//! reflinked from `pg_wal` by `cp`, its fork snapshot with its PGDATA). Only the first
//! kind makes blocks survive its deletion, so shared extents of every timeline on the
//! node are swept together by physical address: a range that only one timeline's files
//! reference belongs to that timeline alone.
//!
//! Mapping extents is nearly all the cost, in the kernel (XFS looks every extent up in its
//! reference-count tree to say whether it is shared), and the count grows with every
//! snapshot and every scattered write. Most files do not change between two sweeps:
//! snapshots and archived WAL never do, nor does a stopped compute's PGDATA. Their maps
//! are kept in an [`ExtentCache`] and reused while the file's identity, size, mtime and
//! ctime stay the same. A file enters the cache only once it has been left alone for
//! [`SETTLED`] and was mapped after its dirty pages were written back, so its blocks no
//! longer move (delayed allocation and XFS's copy-on-write remap happen at writeback,
//! without touching the timestamps). A cached map's "shared" flags may be stale (a new
//! fork may have cloned the file since), so all of its extents go into the sweep.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use ramify_api::TimelineId;

use crate::beneath::{Dir, Entry, Kind as EntryKind};
use crate::clone::{self, CloneError};

/// The node's space figures as of its last accounting pass. One background task
/// ([`Accountant::run`]) measures every timeline in turn; API calls answer from here,
/// with the time of the measurement, and never sweep themselves. A caller that needs
/// figures taken after some moment (a test, an operator that just wrote data) asks
/// [`Accountant::fresh`], which waits for a pass started after the call.
#[derive(Debug)]
pub struct Accountant {
    measured: Mutex<Measured>,
    /// Wakes the background task before its interval is over.
    wake: tokio::sync::Notify,
    /// Generation of the newest pass a caller waits for.
    wanted: AtomicU64,
    /// Generation of the pass running, or of the last one started.
    started: AtomicU64,
    /// Generation of the newest finished pass, and why it failed, if it did.
    done: tokio::sync::watch::Sender<(u64, Option<Arc<str>>)>,
    /// Whether a task runs the passes (without one, nothing is measured).
    running: AtomicBool,
    /// A timeline without figures was asked for since the last pass started.
    poked: AtomicBool,
}

/// Figures of the last pass that succeeded.
#[derive(Debug, Default)]
struct Measured {
    by_timeline: HashMap<TimelineId, Usage>,
    /// When that pass started: the figures describe the node at or after this moment.
    at: Option<DateTime<Utc>>,
    /// How long it took.
    took: Duration,
}

/// What the last pass measured, for `/metrics` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassInfo {
    /// Passes finished (successful or not).
    pub generation: u64,
    /// When the last successful one started.
    pub at: Option<DateTime<Utc>>,
    /// How long it took.
    pub took: Duration,
    /// Timelines it measured.
    pub timelines: usize,
}

impl Default for Accountant {
    fn default() -> Self {
        Accountant {
            measured: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            wanted: AtomicU64::new(0),
            started: AtomicU64::new(0),
            done: tokio::sync::watch::channel((0, None)).0,
            running: AtomicBool::new(false),
            poked: AtomicBool::new(false),
        }
    }
}

impl Accountant {
    /// The figures of timeline `id` and when they were measured; `None` before the first
    /// pass that saw it.
    pub fn figures(&self, id: TimelineId) -> Option<(Usage, DateTime<Utc>)> {
        let m = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        Some((*m.by_timeline.get(&id)?, m.at?))
    }

    /// Every timeline's figures from the last pass, and when it started.
    pub fn all(&self) -> (HashMap<TimelineId, Usage>, Option<DateTime<Utc>>) {
        let m = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        (m.by_timeline.clone(), m.at)
    }

    /// The last pass, as [`PassInfo`].
    pub fn last_pass(&self) -> PassInfo {
        let m = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        PassInfo {
            generation: self.done.borrow().0,
            at: m.at,
            took: m.took,
            timelines: m.by_timeline.len(),
        }
    }

    /// Asks for a pass soon (a timeline has no figures yet). The task still keeps its
    /// pause after a pass, so a burst of new timelines costs one pass, not one each.
    pub fn poke(&self) {
        self.poked.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Waits for a pass that started after this call and returns how it ended.
    pub async fn fresh(&self) -> Result<(), Arc<str>> {
        if !self.running.load(Ordering::SeqCst) {
            return Err("space accounting is not running on this node".into());
        }
        let target = self.started.load(Ordering::SeqCst) + 1;
        self.wanted.fetch_max(target, Ordering::SeqCst);
        self.wake.notify_one();
        let mut rx = self.done.subscribe();
        let r = match rx.wait_for(|(g, _)| *g >= target).await {
            Ok(v) => v.1.clone(),
            Err(_) => Some("space accounting stopped".into()),
        };
        r.map_or(Ok(()), Err)
    }

    /// Runs passes for ever: `measure` accounts every timeline. After a pass the task
    /// pauses twice as long as the pass took (so accounting takes at most a third of the
    /// node's time, however many timelines it holds), then until `every` is over or
    /// someone pokes it; a caller waiting in [`Accountant::fresh`] skips the pause.
    pub async fn run<F, Fut>(&self, every: Duration, mut measure: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<HashMap<TimelineId, Usage>, String>>,
    {
        self.running.store(true, Ordering::SeqCst);
        loop {
            self.poked.store(false, Ordering::SeqCst);
            let generation = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let (at, t0) = (Utc::now(), std::time::Instant::now());
            let failed = match measure().await {
                Ok(by_timeline) => {
                    let took = t0.elapsed();
                    tracing::debug!(
                        timelines = by_timeline.len(),
                        took_ms = took.as_millis() as u64,
                        "space accounting pass"
                    );
                    *self.measured.lock().unwrap_or_else(|p| p.into_inner()) = Measured {
                        by_timeline,
                        at: Some(at),
                        took,
                    };
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "space accounting pass failed");
                    Some(Arc::from(e))
                }
            };
            self.done.send_replace((generation, failed));
            if self.wanted.load(Ordering::SeqCst) > generation {
                continue;
            }
            let rest = t0.elapsed() * 2;
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = self.wait_wanted(generation) => continue,
            }
            if self.poked.load(Ordering::SeqCst) {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(every.saturating_sub(rest)) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Returns once a caller waits for a pass after `generation`.
    async fn wait_wanted(&self, generation: u64) {
        loop {
            if self.wanted.load(Ordering::SeqCst) > generation {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// Directories of one timeline, by what they hold.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The live PGDATA.
    pub pgdata: PathBuf,
    /// Its history: the WAL archive and the snapshots.
    pub history: Vec<PathBuf>,
}

/// Space figures of one timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of file sizes in PGDATA.
    pub logical: u64,
    /// Bytes no other timeline references: what deleting this one frees.
    pub exclusive: u64,
    /// The part of `exclusive` only its history (archive, snapshots) references.
    pub history: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Live,
    History,
}

/// A shared extent found in one timeline.
#[derive(Debug, Clone, Copy)]
struct SharedRef {
    start: u64,
    end: u64,
    owner: u32,
    kind: Kind,
}

/// How long a file must have been left alone before its map is cached: well past the
/// kernel's writeback of dirty data (30 s by default).
pub const SETTLED: Duration = Duration::from_secs(60);

/// What makes a cached map still valid: the same file, unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of_stat(st: &rustix::fs::Stat) -> FileStamp {
        FileStamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }

    /// A 64-bit digest of the whole stamp: what a kept map is checked against.
    fn key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.dev, self.ino, self.size, self.mtime, self.ctime).hash(&mut h);
        h.finish()
    }

    #[cfg(test)]
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Unchanged for [`SETTLED`] (by both timestamps) as of `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let limit = now.saturating_sub(SETTLED).as_secs() as i64;
        self.mtime.0 < limit && self.ctime.0 < limit
    }
}

/// Extent maps of unchanged files, shared by every pass of one node, and the figures of
/// the last pass with what they were computed from.
///
/// Memory: per file whose map is kept, 40 bytes in a hash table keyed by inode (about
/// 60–90 bytes with the table's spare capacity); the extent lists themselves are shared
/// between files with identical maps (a fork's untouched files and their clones in its
/// snapshots map to the very blocks of the parent's), 16 bytes per extent per distinct
/// list. During a pass the sweep holds one slot (about 40 bytes) per distinct physical
/// range that may be shared, not one per reference: the same range in a thousand forks
/// is one slot.
#[derive(Debug, Default)]
pub struct ExtentCache {
    files: Mutex<HashMap<u64, CachedMap>>,
    /// Every distinct extent list held by `files`, to share identical ones.
    lists: Mutex<HashSet<ExtentList>>,
    /// Passes started, numbering them for [`CachedMap::seen`].
    passes: AtomicU32,
    last: Mutex<Option<LastPass>>,
}

/// `(physical, length)` of every extent of a file, shared by files with the same map.
type ExtentList = Arc<[(u64, u64)]>;

#[derive(Debug)]
struct CachedMap {
    /// [`FileStamp::key`] of the file when it was mapped.
    stamp: u64,
    /// `(physical, length)` of every extent.
    extents: Arc<[(u64, u64)]>,
    /// The last pass that found the file unchanged (maps not seen by a pass are dropped).
    seen: AtomicU32,
}

/// What the last pass was computed from, and what it found.
#[derive(Debug)]
struct LastPass {
    /// Hash of every scope's directories and every file's identity and stamp.
    inputs: u64,
    usage: Vec<Usage>,
}

impl ExtentCache {
    /// Number of files whose map is kept.
    pub fn len(&self) -> usize {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no map is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file mapped by this pass whose map is kept for the next ones.
struct NewMap {
    ino: u64,
    stamp: u64,
    extents: Vec<(u64, u64)>,
}

/// What one pass found in one timeline.
#[derive(Default)]
struct ScopePass {
    usage: Usage,
    /// Maps to keep for the next pass.
    new_maps: Vec<NewMap>,
    /// Hash of its directories and of every file's identity and stamp.
    inputs: u64,
    /// Every file was answered from the cache.
    all_cached: bool,
    /// Files seen, and how many of them were mapped (not answered from the cache).
    files: usize,
    mapped: usize,
}

/// Owner of a shared range that several timelines reference.
const MANY: u32 = u32::MAX;
const LIVE: u8 = 1;
const HISTORY: u8 = 2;

/// Who references one physical range: one timeline (and through which kinds of its
/// files), or [`MANY`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    owner: u32,
    kinds: u8,
}

/// Every physical range that may be shared, once, with who references it.
#[derive(Default)]
struct SharedRanges(HashMap<(u64, u64), Slot>);

impl SharedRanges {
    fn add(&mut self, start: u64, end: u64, owner: u32, kind: Kind) {
        let k = if kind == Kind::History { HISTORY } else { LIVE };
        self.0
            .entry((start, end))
            .and_modify(|s| {
                if s.owner == owner {
                    s.kinds |= k;
                } else {
                    s.owner = MANY;
                }
            })
            .or_insert(Slot { owner, kinds: k });
    }

    fn merge(&mut self, other: SharedRanges) {
        for ((start, end), s) in other.0 {
            match self.0.entry((start, end)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(s);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let cur = o.get_mut();
                    if cur.owner == s.owner {
                        cur.kinds |= s.kinds;
                    } else {
                        cur.owner = MANY;
                    }
                }
            }
        }
    }

    fn into_refs(self) -> Vec<SharedRef> {
        self.0
            .into_iter()
            .map(|((start, end), s)| SharedRef {
                start,
                end,
                owner: s.owner,
                // A range the timeline's live files reference is not history-only.
                kind: if s.kinds & LIVE != 0 {
                    Kind::Live
                } else {
                    Kind::History
                },
            })
            .collect()
    }
}

/// Accounts every timeline of `scopes` (index-aligned result), reusing and refreshing
/// `cache`. `data` is the data directory, open, and `root` its path: every directory of
/// a scope is below it, and is walked and opened without following links.
///
/// Timelines are walked on a few threads; each file the cache cannot answer is mapped
/// where it is found, through its directory's descriptor. When every file of every
/// timeline was answered from the cache and none appeared, vanished or changed since the
/// last pass, that pass's figures are still exact and the sweep is skipped: a node whose
/// computes are stopped costs one `stat` per file.
pub fn account(
    data: &Dir,
    root: &Path,
    scopes: &[Scope],
    cache: &ExtentCache,
) -> Result<Vec<Usage>, CloneError> {
    let pass = cache.passes.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    let now = SystemTime::now();
    let shared = Mutex::new(SharedRanges::default());
    let passes = {
        let cached = cache.files.lock().unwrap_or_else(|p| p.into_inner());
        scan_scopes(data, root, scopes, &cached, pass, now, &shared)?
    };

    let mut inputs = std::collections::hash_map::DefaultHasher::new();
    let (mut all_cached, mut files, mut mapped) = (true, 0, 0);
    for p in &passes {
        std::hash::Hash::hash(&p.inputs, &mut inputs);
        all_cached &= p.all_cached;
        files += p.files;
        mapped += p.mapped;
    }
    let inputs = std::hash::Hasher::finish(&inputs);

    let mut usage = Vec::with_capacity(passes.len());
    {
        let mut files = cache.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut lists = cache.lists.lock().unwrap_or_else(|p| p.into_inner());
        // What this pass saw is what the next one may reuse; vanished files drop out.
        files.retain(|_, m| m.seen.load(Ordering::Relaxed) == pass);
        for p in passes {
            for m in p.new_maps {
                let extents: ExtentList = match lists.get(m.extents.as_slice()) {
                    Some(l) => l.clone(),
                    None => {
                        let l: ExtentList = Arc::from(m.extents);
                        lists.insert(l.clone());
                        l
                    }
                };
                files.insert(
                    m.ino,
                    CachedMap {
                        stamp: m.stamp,
                        extents,
                        seen: AtomicU32::new(pass),
                    },
                );
            }
            usage.push(p.usage);
        }
        lists.retain(|l| Arc::strong_count(l) > 1);
        files.shrink_to_fit();
        lists.shrink_to_fit();
    }

    let mut last = cache.last.lock().unwrap_or_else(|p| p.into_inner());
    if all_cached {
        if let Some(l) = last.as_ref().filter(|l| l.inputs == inputs) {
            tracing::debug!(files, "space accounting: nothing changed, sweep skipped");
            return Ok(l.usage.clone());
        }
    }
    let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    tracing::debug!(
        files,
        mapped,
        ranges = shared.0.len(),
        "space accounting: sweeping"
    );
    for (owner, (exclusive, history)) in sweep(shared.into_refs()) {
        usage[owner].exclusive += exclusive;
        usage[owner].history += history;
    }
    *last = all_cached.then(|| LastPass {
        inputs,
        usage: usage.clone(),
    });
    Ok(usage)
}

/// Most threads [`scan_scopes`] uses.
const MAX_SCAN_THREADS: usize = 4;

/// Walks and maps every scope, on up to [`MAX_SCAN_THREADS`] threads (one per core),
/// adding what may be shared to `shared` one timeline at a time.
fn scan_scopes(
    data: &Dir,
    root: &Path,
    scopes: &[Scope],
    cached: &HashMap<u64, CachedMap>,
    pass: u32,
    now: SystemTime,
    shared: &Mutex<SharedRanges>,
) -> Result<Vec<ScopePass>, CloneError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_SCAN_THREADS)
        .min(scopes.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<Vec<(usize, ScopePass)>, CloneError> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(scope) = scopes.get(i) else {
                return Ok(out);
            };
            let mut mine = SharedRanges::default();
            let p = scan_scope(data, root, scope, i as u32, cached, pass, now, &mut mine)?;
            shared.lock().unwrap_or_else(|p| p.into_inner()).merge(mine);
            out.push((i, p));
        }
    };
    let mut all = if threads <= 1 {
        work()?
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            let mut all = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(part) => all.extend(part?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok::<_, CloneError>(all)
        })?
    };
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// Walks one timeline's directories, answering each file from `cached` when its stamp
/// is unchanged (and marking it seen by `pass`) and mapping it otherwise. A file left
/// alone for [`SETTLED`] is written back before it is mapped, so that its map can be
/// kept; others are mapped as they are (forcing writeback of a running compute's files
/// just to count them would disturb it).
#[allow(clippy::too_many_arguments)]
fn scan_scope(
    data: &Dir,
    root: &Path,
    scope: &Scope,
    owner: u32,
    cached: &HashMap<u64, CachedMap>,
    pass: u32,
    now: SystemTime,
    shared: &mut SharedRanges,
) -> Result<ScopePass, CloneError> {
    use std::hash::{Hash, Hasher};
    let mut out = ScopePass {
        all_cached: true,
        ..ScopePass::default()
    };
    let mut inputs = std::collections::hash_map::DefaultHasher::new();
    let dirs = std::iter::once((scope.pgdata.as_path(), Kind::Live))
        .chain(scope.history.iter().map(|d| (d.as_path(), Kind::History)));
    for (dir, kind) in dirs {
        dir.hash(&mut inputs);
        let open = match data.open_dir_at(root, dir) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            // A timeline whose directory a compute replaced by a link: its figures
            // leave that directory out rather than deny every timeline's accounting.
            Err(e) if e.is_refusal() || e.is_permission_denied() => {
                tracing::warn!(error = %e, "space accounting skips a directory");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        walk(&open, &mut |parent, entry| {
            let stamp = FileStamp::of_stat(&entry.stat);
            let (ino, key) = (stamp.ino, stamp.key());
            (ino, key).hash(&mut inputs);
            out.files += 1;
            if kind == Kind::Live {
                out.usage.logical += entry.len;
            }
            if let Some(c) = cached.get(&ino).filter(|c| c.stamp == key) {
                c.seen.store(pass, Ordering::Relaxed);
                // The shared flags of a kept map may be stale (a fork may have cloned
                // the file since): every extent goes into the sweep.
                for &(start, len) in c.extents.iter() {
                    shared.add(start, start + len, owner, kind);
                }
                return Ok(());
            }
            out.all_cached = false;
            out.mapped += 1;
            let map = match map_in(parent, &entry.name, stamp.settled(now)) {
                Ok(m) => m,
                // Removed meanwhile (Postgres removes temporary files).
                Err(CloneError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(())
                }
                Err(CloneError::Beneath(e)) if e.is_not_found() => return Ok(()),
                // Swapped for a link (or hard-linked) since it was listed: not counted.
                Err(CloneError::Beneath(e)) if e.is_refusal() => return Ok(()),
                // Its mode denies the node (a compute can chmod its own files): its blocks
                // go uncounted rather than one timeline deny every timeline's figures.
                Err(CloneError::Beneath(e)) if e.is_permission_denied() => {
                    tracing::warn!(error = %e, "space accounting skips a file it may not read");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if stamp.settled(now) && map.settled {
                out.new_maps.push(NewMap {
                    ino,
                    stamp: key,
                    extents: map.extents.iter().map(|e| (e.physical, e.length)).collect(),
                });
            }
            for e in map.extents {
                if e.shared {
                    shared.add(e.physical, e.physical + e.length, owner, kind);
                } else {
                    out.usage.exclusive += e.length;
                    if kind == Kind::History {
                        out.usage.history += e.length;
                    }
                }
            }
            Ok(())
        })?;
    }
    out.inputs = inputs.finish();
    Ok(out)
}

/// For shared ranges, the bytes each owner references alone, and how many of those only
/// its history references. A range whose owner is [`MANY`] is nobody's alone. The events
/// are packed and the counters are plain vectors indexed by owner.
fn sweep(refs: Vec<SharedRef>) -> HashMap<usize, (u64, u64)> {
    let owners = refs
        .iter()
        .filter(|r| r.owner != MANY)
        .map(|r| r.owner as usize + 1)
        .max()
        .unwrap_or(0);
    // Several timelines: one more counter, never an owner alone.
    let many = owners;
    // (position, owner << 2 | history << 1 | opens)
    let mut events: Vec<(u64, u32)> = Vec::with_capacity(refs.len() * 2);
    for r in &refs {
        let owner = if r.owner == MANY {
            many as u32
        } else {
            r.owner
        };
        let tag = (owner << 2) | (u32::from(r.kind == Kind::History) << 1);
        events.push((r.start, tag | 1));
        events.push((r.end, tag));
    }
    drop(refs);
    events.sort_unstable_by_key(|e| e.0);
    // Open references per owner, by kind; how many owners have any, and the sum of their
    // indices, which names the owner when only one has.
    let mut live = vec![0i64; owners + 1];
    let mut history = vec![0i64; owners + 1];
    let (mut active, mut active_sum) = (0usize, 0usize);
    let mut out = vec![(0u64, 0u64); owners];
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let tag = events[i].1;
            let owner = (tag >> 2) as usize;
            let d = if tag & 1 == 1 { 1 } else { -1 };
            let before = live[owner] + history[owner];
            if tag & 2 == 2 {
                history[owner] += d;
            } else {
                live[owner] += d;
            }
            let after = live[owner] + history[owner];
            if before == 0 && after > 0 {
                active += 1;
                active_sum += owner;
            } else if before > 0 && after == 0 {
                active -= 1;
                active_sum -= owner;
            }
            i += 1;
        }
        let Some(next) = events.get(i).map(|e| e.0) else {
            break;
        };
        if active == 1 && active_sum != many {
            let len = next - pos;
            out[active_sum].0 += len;
            if live[active_sum] == 0 {
                out[active_sum].1 += len;
            }
        }
    }
    out.into_iter()
        .enumerate()
        .filter(|(_, v)| *v != (0, 0))
        .collect()
}

/// Maps the file `name` of the open directory `dir` (opened without following links).
fn map_in(dir: &Dir, name: &std::ffi::OsStr, sync: bool) -> Result<clone::FileMap, CloneError> {
    let (file, _) = dir.open_file(name)?;
    clone::map_open_file(&file, &dir.path_of(name), sync)
}

/// Calls `f(dir, entry)` for every regular file below the open directory `dir`, with the
/// directory holding it, through directory descriptors. Links, special files and files
/// with several hard links are not followed and not counted; directories that vanish
/// meanwhile (Postgres removes temporary files) or whose mode denies the node are
/// skipped.
fn walk(
    dir: &Dir,
    f: &mut dyn FnMut(&Dir, &Entry) -> Result<(), CloneError>,
) -> Result<(), CloneError> {
    let entries = match dir.entries() {
        Ok(e) => e,
        // A directory whose mode denies the node listing it: skipped like a link.
        Err(e) if e.is_permission_denied() => {
            tracing::warn!(error = %e, "space accounting skips a directory it may not read");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        match e.kind {
            EntryKind::Dir => match dir.open_dir(Path::new(&e.name)) {
                Ok(sub) => walk(&sub, f)?,
                Err(err) if err.is_permission_denied() => {
                    tracing::warn!(error = %err, "space accounting skips a directory it may not read");
                }
                Err(err) if err.is_not_found() || err.is_refusal() => {}
                Err(err) => return Err(err.into()),
            },
            EntryKind::File if e.nlink == 1 => f(dir, &e)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, owner: u32, kind: Kind) -> SharedRef {
        SharedRef {
            start,
            end,
            owner,
            kind,
        }
    }

    #[test]
    fn ranges_shared_only_within_one_timeline_are_its_own() {
        let out = sweep(vec![
            // 0..100 shared by timelines 0 and 1 (parent and child): nobody's alone.
            r(0, 100, 0, Kind::Live),
            r(0, 100, 1, Kind::Live),
            // 100..150 shared by timeline 1's pg_wal and archive: timeline 1's.
            r(100, 150, 1, Kind::Live),
            r(100, 150, 1, Kind::History),
            // 200..260 shared by timeline 1's two snapshots: its history.
            r(200, 260, 1, Kind::History),
            r(200, 260, 1, Kind::History),
            // 300..400 timeline 0, overlapping 350..450 of timeline 2.
            r(300, 400, 0, Kind::Live),
            r(350, 450, 2, Kind::Live),
        ]);
        assert_eq!(out.get(&1), Some(&(50 + 60, 60)));
        assert_eq!(out.get(&0), Some(&(50, 0)));
        assert_eq!(out.get(&2), Some(&(50, 0)));
    }

    #[test]
    fn a_range_several_timelines_reference_is_kept_once_and_is_nobodys() {
        let mut shared = SharedRanges::default();
        // A thousand forks referencing the parent's range 0..100: one slot.
        for owner in 0..1000 {
            shared.add(0, 100, owner, Kind::Live);
        }
        // Timeline 5's archive and pg_wal share 200..300 with each other only.
        shared.add(200, 300, 5, Kind::Live);
        shared.add(200, 300, 5, Kind::History);
        // Timeline 7's snapshot overlaps the forks' range: 50..150, 100..150 its alone.
        shared.add(50, 150, 7, Kind::History);
        let mut other = SharedRanges::default();
        other.add(200, 300, 9, Kind::Live);
        other.add(400, 450, 9, Kind::History);
        let mut merged = SharedRanges::default();
        merged.merge(shared);
        assert_eq!(merged.0.len(), 3);
        let out = sweep(merged.into_refs());
        assert_eq!(out.get(&5), Some(&(100, 0)));
        assert_eq!(out.get(&7), Some(&(50, 50)));
        assert_eq!(out.get(&0), None);
        // Another scope's ranges merged in: 200..300 is now shared by 5 and 9.
        let mut merged = SharedRanges::default();
        merged.add(200, 300, 5, Kind::Live);
        merged.merge(other);
        let out = sweep(merged.into_refs());
        assert_eq!(out.get(&5), None);
        assert_eq!(out.get(&9), Some(&(50, 50)));
    }

    #[test]
    fn unchanged_files_are_answered_from_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let pg = t.path().join("pgdata");
        std::fs::create_dir_all(&pg).unwrap();
        let file = pg.join("1");
        std::fs::write(&file, vec![1u8; 64 * 1024]).unwrap();
        let scopes = [Scope {
            pgdata: pg.clone(),
            history: vec![],
        }];
        let cache = ExtentCache::default();
        // A map the kernel would never return, to see it used: one 8 KiB extent.
        let stamp = FileStamp::of(&std::fs::metadata(&file).unwrap());
        cache.files.lock().unwrap().insert(
            stamp.ino,
            CachedMap {
                stamp: stamp.key(),
                extents: Arc::from(vec![(1u64 << 40, 8192u64)]),
                seen: AtomicU32::new(0),
            },
        );
        let u = account(
            &Dir::open_root(t.path()).unwrap(),
            t.path(),
            &scopes,
            &cache,
        )
        .unwrap();
        assert_eq!((u[0].logical, u[0].exclusive), (64 * 1024, 8192));
        assert_eq!(cache.len(), 1, "a reused map stays");
        // Written since: mapped again, and (just written) not kept.
        std::fs::write(&file, vec![2u8; 128 * 1024]).unwrap();
        let u = account(
            &Dir::open_root(t.path()).unwrap(),
            t.path(),
            &scopes,
            &cache,
        )
        .unwrap();
        assert!(u[0].exclusive >= 128 * 1024, "{u:?}");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_pass_over_unchanged_cached_files_reuses_the_last_figures() {
        let t = tempfile::tempdir().unwrap();
        let pg = t.path().join("pgdata");
        std::fs::create_dir_all(&pg).unwrap();
        let (a, b) = (pg.join("a"), pg.join("b"));
        std::fs::write(&a, vec![1u8; 16 * 1024]).unwrap();
        std::fs::write(&b, vec![2u8; 16 * 1024]).unwrap();
        let scopes = [Scope {
            pgdata: pg.clone(),
            history: vec![],
        }];
        let cache = ExtentCache::default();
        let keep = |f: &Path, physical: u64| {
            let stamp = FileStamp::of(&std::fs::metadata(f).unwrap());
            cache.files.lock().unwrap().insert(
                stamp.ino,
                CachedMap {
                    stamp: stamp.key(),
                    extents: Arc::from(vec![(physical, 8192u64)]),
                    seen: AtomicU32::new(0),
                },
            );
        };
        // Two maps the kernel would never return: one 8 KiB extent each, apart.
        keep(&a, 1 << 40);
        keep(&b, 2 << 40);
        let data = Dir::open_root(t.path()).unwrap();
        let run = || account(&data, t.path(), &scopes, &cache).unwrap()[0];
        assert_eq!(run().exclusive, 2 * 8192);
        // Nothing changed: the sweep is skipped and the last figures stand (marked here
        // so that reuse is visible).
        cache.last.lock().unwrap().as_mut().unwrap().usage[0].exclusive = 777;
        assert_eq!(run().exclusive, 777, "an unchanged node is swept again");
        // A file vanishes: swept again.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(run().exclusive, 8192);
        // A file changes: it is mapped again, and the sweep runs.
        cache.last.lock().unwrap().as_mut().unwrap().usage[0].exclusive = 777;
        std::fs::write(&a, vec![3u8; 32 * 1024]).unwrap();
        let u = run();
        assert!(u.exclusive >= 32 * 1024 && u.exclusive != 777, "{u:?}");
    }

    #[tokio::test]
    async fn fresh_waits_for_a_pass_started_after_the_call() {
        let accountant = Arc::new(Accountant::default());
        assert!(
            accountant.fresh().await.is_err(),
            "no task: fresh must not wait for ever"
        );
        let id = TimelineId::new_v4();
        let passes = Arc::new(AtomicU64::new(0));
        let task = {
            let (acc, passes) = (accountant.clone(), passes.clone());
            tokio::spawn(async move {
                acc.run(Duration::from_secs(3600), || {
                    let passes = passes.clone();
                    async move {
                        let n = passes.fetch_add(1, Ordering::SeqCst) + 1;
                        let u = Usage {
                            logical: n,
                            ..Usage::default()
                        };
                        Ok(HashMap::from([(id, u)]))
                    }
                })
                .await
            })
        };
        // The first pass runs at once; then the task rests for an hour unless asked.
        while accountant.figures(id).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (first, at) = accountant.figures(id).unwrap();
        let before = Utc::now();
        accountant.fresh().await.unwrap();
        let (second, at2) = accountant.figures(id).unwrap();
        assert!(second.logical > first.logical, "{first:?} then {second:?}");
        assert!(at2 >= before && at2 > at);
        // A poke does not wait, and starts a pass for a timeline without figures.
        accountant.poke();
        while accountant.figures(id).unwrap().0.logical == second.logical {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }

    #[test]
    fn only_files_left_alone_long_enough_are_settled() {
        let now = SystemTime::now();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let stamp = |m: SystemTime, c: SystemTime| FileStamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (secs(m), 0),
            ctime: (secs(c), 0),
        };
        let old = now - SETTLED - Duration::from_secs(5);
        assert!(stamp(old, old).settled(now));
        assert!(!stamp(now, old).settled(now));
        assert!(!stamp(old, now).settled(now));
    }

    #[test]
    fn accounts_a_plain_directory() {
        let t = tempfile::tempdir().unwrap();
        let pg = t.path().join("pgdata");
        let wal = t.path().join("wal");
        std::fs::create_dir_all(pg.join("base")).unwrap();
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(pg.join("base/1"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(wal.join("seg"), vec![2u8; 32 * 1024]).unwrap();
        let u = account(
            &Dir::open_root(t.path()).unwrap(),
            t.path(),
            &[Scope {
                pgdata: pg,
                history: vec![wal],
            }],
            &ExtentCache::default(),
        )
        .unwrap();
        assert_eq!(u[0].logical, 64 * 1024);
        assert!(u[0].exclusive >= 96 * 1024, "{u:?}");
        assert!(
            u[0].history >= 32 * 1024 && u[0].history < u[0].exclusive,
            "{u:?}"
        );
    }
}
