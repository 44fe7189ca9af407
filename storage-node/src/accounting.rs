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

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::beneath::{Dir, Entry, Kind as EntryKind};
use crate::clone::{self, CloneError};

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
    owner: usize,
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

/// Extent maps of unchanged files, shared by every sweep of one node.
#[derive(Debug, Default)]
pub struct ExtentCache {
    files: Mutex<HashMap<PathBuf, CachedMap>>,
}

#[derive(Debug, Clone)]
struct CachedMap {
    stamp: FileStamp,
    /// `(physical, length)` of every extent.
    extents: Arc<[(u64, u64)]>,
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

/// One file to account.
struct FileRef {
    path: PathBuf,
    owner: usize,
    kind: Kind,
    stamp: FileStamp,
}

/// A file's extents as this sweep knows them.
enum Mapped {
    /// Mapped now: the shared flags are current.
    Fresh(Vec<clone::Extent>),
    /// From the cache: every extent counts as possibly shared.
    Cached(Arc<[(u64, u64)]>),
}

/// Accounts every timeline of `scopes` (index-aligned result), reusing and refreshing
/// `cache`. `data` is the data directory, open, and `root` its path: every directory of
/// a scope is below it, and is walked and opened without following links.
///
/// Files are listed first and those the cache cannot answer are mapped on a few threads.
pub fn account(
    data: &Dir,
    root: &Path,
    scopes: &[Scope],
    cache: &ExtentCache,
) -> Result<Vec<Usage>, CloneError> {
    let mut usage = vec![Usage::default(); scopes.len()];
    let mut files: Vec<FileRef> = Vec::new();
    for (owner, scope) in scopes.iter().enumerate() {
        let dirs = std::iter::once((scope.pgdata.as_path(), Kind::Live))
            .chain(scope.history.iter().map(|d| (d.as_path(), Kind::History)));
        for (dir, kind) in dirs {
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
            walk(&open, dir, &mut |path, entry| {
                if kind == Kind::Live {
                    usage[owner].logical += entry.len;
                }
                files.push(FileRef {
                    path: path.to_path_buf(),
                    owner,
                    kind,
                    stamp: FileStamp::of_stat(&entry.stat),
                });
            })?;
        }
    }
    let now = SystemTime::now();
    let mut keep: HashMap<PathBuf, CachedMap> = HashMap::new();
    let mut mapped: Vec<(usize, Kind, Mapped)> = Vec::with_capacity(files.len());
    let mut to_map: Vec<&FileRef> = Vec::new();
    {
        let cached = cache.files.lock().unwrap_or_else(|p| p.into_inner());
        for f in &files {
            match cached.get(&f.path) {
                Some(c) if c.stamp == f.stamp => {
                    mapped.push((f.owner, f.kind, Mapped::Cached(c.extents.clone())));
                    keep.insert(f.path.clone(), c.clone());
                }
                _ => to_map.push(f),
            }
        }
    }
    for (f, map) in map_files(data, root, &to_map, now)? {
        if f.stamp.settled(now) && map.settled {
            keep.insert(
                f.path.clone(),
                CachedMap {
                    stamp: f.stamp,
                    extents: map.extents.iter().map(|e| (e.physical, e.length)).collect(),
                },
            );
        }
        mapped.push((f.owner, f.kind, Mapped::Fresh(map.extents)));
    }
    // What this sweep saw is what the next one may reuse; vanished files drop out.
    *cache.files.lock().unwrap_or_else(|p| p.into_inner()) = keep;

    let mut shared = Vec::new();
    for (owner, kind, m) in mapped {
        match m {
            Mapped::Fresh(extents) => {
                for e in extents {
                    if e.shared {
                        shared.push(SharedRef {
                            start: e.physical,
                            end: e.physical + e.length,
                            owner,
                            kind,
                        });
                    } else {
                        usage[owner].exclusive += e.length;
                        if kind == Kind::History {
                            usage[owner].history += e.length;
                        }
                    }
                }
            }
            Mapped::Cached(extents) => {
                shared.extend(extents.iter().map(|&(start, len)| SharedRef {
                    start,
                    end: start + len,
                    owner,
                    kind,
                }));
            }
        }
    }
    for (owner, (exclusive, history)) in sweep(shared) {
        usage[owner].exclusive += exclusive;
        usage[owner].history += history;
    }
    Ok(usage)
}

/// Most threads [`map_files`] uses.
const MAX_MAP_THREADS: usize = 4;

/// Maps `files` on up to [`MAX_MAP_THREADS`] threads (one per core). A file left alone
/// for [`SETTLED`] is written back first, so that its map can be cached; others are
/// mapped as they are (forcing writeback of a running compute's files just to count them
/// would disturb it). Files that vanished meanwhile (Postgres removes temporary files)
/// are left out.
fn map_files<'a>(
    data: &Dir,
    root: &Path,
    files: &[&'a FileRef],
    now: SystemTime,
) -> Result<Vec<(&'a FileRef, clone::FileMap)>, CloneError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_MAP_THREADS)
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<Vec<(&'a FileRef, clone::FileMap)>, CloneError> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&f) = files.get(i) else {
                return Ok(out);
            };
            match map_beneath(data, root, &f.path, f.stamp.settled(now)) {
                Ok(map) => out.push((f, map)),
                Err(CloneError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(CloneError::Beneath(e)) if e.is_not_found() => {}
                // Swapped for a link (or hard-linked) since it was listed: not counted.
                Err(CloneError::Beneath(e)) if e.is_refusal() => {}
                // Its mode denies the node (a compute can chmod its own files): its blocks
                // go uncounted rather than one timeline deny every timeline's figures.
                Err(CloneError::Beneath(e)) if e.is_permission_denied() => {
                    tracing::warn!(error = %e, "space accounting skips a file it may not read");
                }
                Err(e) => return Err(e),
            }
        }
    };
    if threads == 1 {
        return work();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(all)
    })
}

/// For shared ranges, the bytes each owner references alone, and how many of those only
/// its history references. Runs over millions of ranges on every sweep, so the events
/// are packed and the counters are plain vectors indexed by owner.
fn sweep(refs: Vec<SharedRef>) -> HashMap<usize, (u64, u64)> {
    let owners = refs.iter().map(|r| r.owner + 1).max().unwrap_or(0);
    // (position, owner << 2 | history << 1 | opens)
    let mut events: Vec<(u64, u32)> = Vec::with_capacity(refs.len() * 2);
    for r in &refs {
        let tag = ((r.owner as u32) << 2) | (u32::from(r.kind == Kind::History) << 1);
        events.push((r.start, tag | 1));
        events.push((r.end, tag));
    }
    drop(refs);
    events.sort_unstable_by_key(|e| e.0);
    // Open references per owner, by kind; how many owners have any, and the sum of their
    // indices, which names the owner when only one has.
    let mut live = vec![0i64; owners];
    let mut history = vec![0i64; owners];
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
        if active == 1 {
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

/// Maps the file at `path` (below `root`), opened beneath `data` without following links.
fn map_beneath(
    data: &Dir,
    root: &Path,
    path: &Path,
    sync: bool,
) -> Result<clone::FileMap, CloneError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(CloneError::Io {
            op: "map",
            path: path.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    };
    let (file, _) = data.open_dir_at(root, parent)?.open_file(name)?;
    clone::map_open_file(&file, path, sync)
}

/// Calls `f(path, entry)` for every regular file below the open directory `dir` (at
/// `path`), through directory descriptors. Links, special files and files with several
/// hard links are not followed and not counted; directories that vanish meanwhile
/// (Postgres removes temporary files) or whose mode denies the node are skipped.
fn walk(dir: &Dir, path: &Path, f: &mut dyn FnMut(&Path, &Entry)) -> Result<(), CloneError> {
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
                Ok(sub) => walk(&sub, &path.join(&e.name), f)?,
                Err(err) if err.is_permission_denied() => {
                    tracing::warn!(error = %err, "space accounting skips a directory it may not read");
                }
                Err(err) if err.is_not_found() || err.is_refusal() => {}
                Err(err) => return Err(err.into()),
            },
            EntryKind::File if e.nlink == 1 => f(&path.join(&e.name), &e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, owner: usize, kind: Kind) -> SharedRef {
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
            file.clone(),
            CachedMap {
                stamp,
                extents: Arc::from(vec![(1u64 << 40, 8192u64)]),
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
