//! Space accounting: what each timeline would free if deleted.
//!
//! `FIEMAP` says whether an extent is shared, not with whom. A timeline shares blocks
//! with other timelines (its parent, its children) and also with itself (its archive is
//! reflinked from `pg_wal` by `cp`, its fork snapshot with its PGDATA). Only the first
//! kind makes blocks survive its deletion, so shared extents of every timeline on the
//! node are swept together by physical address: a range that only one timeline's files
//! reference belongs to that timeline alone.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

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

/// Accounts every timeline of `scopes` (index-aligned result).
pub fn account(scopes: &[Scope]) -> Result<Vec<Usage>, CloneError> {
    let mut usage = vec![Usage::default(); scopes.len()];
    let mut shared = Vec::new();
    for (owner, scope) in scopes.iter().enumerate() {
        let dirs = std::iter::once((scope.pgdata.as_path(), Kind::Live))
            .chain(scope.history.iter().map(|d| (d.as_path(), Kind::History)));
        for (dir, kind) in dirs {
            walk(dir, &mut |path, len| {
                if kind == Kind::Live {
                    usage[owner].logical += len;
                }
                for e in clone::file_extents(path)? {
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
                Ok(())
            })?;
        }
    }
    for (owner, (exclusive, history)) in sweep(shared) {
        usage[owner].exclusive += exclusive;
        usage[owner].history += history;
    }
    Ok(usage)
}

/// For shared ranges, the bytes each owner references alone, and how many of those only
/// its history references.
fn sweep(refs: Vec<SharedRef>) -> HashMap<usize, (u64, u64)> {
    let mut events: Vec<(u64, i32, usize, Kind)> = Vec::with_capacity(refs.len() * 2);
    for r in refs {
        events.push((r.start, 1, r.owner, r.kind));
        events.push((r.end, -1, r.owner, r.kind));
    }
    events.sort_unstable_by_key(|e| e.0);
    let mut per_kind: HashMap<(usize, Kind), i64> = HashMap::new();
    let mut per_owner: HashMap<usize, i64> = HashMap::new();
    let mut out: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, d, owner, kind) = events[i];
            *per_kind.entry((owner, kind)).or_default() += d as i64;
            let n = per_owner.entry(owner).or_default();
            *n += d as i64;
            if *n == 0 {
                per_owner.remove(&owner);
            }
            i += 1;
        }
        let Some(next) = events.get(i).map(|e| e.0) else {
            break;
        };
        if per_owner.len() == 1 {
            let owner = *per_owner.keys().next().unwrap_or(&0);
            let len = next - pos;
            let entry = out.entry(owner).or_default();
            entry.0 += len;
            if per_kind.get(&(owner, Kind::Live)).copied().unwrap_or(0) == 0 {
                entry.1 += len;
            }
        }
    }
    out
}

/// Calls `f(path, size)` for every regular file below `dir`; files and directories that
/// vanish meanwhile (Postgres removes temporary files) are skipped.
fn walk(
    dir: &Path,
    f: &mut dyn FnMut(&Path, u64) -> Result<(), CloneError>,
) -> Result<(), CloneError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CloneError::Io {
                op: "read dir",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in rd.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        if ft.is_dir() {
            walk(&path, f)?;
        } else if ft.is_file() {
            let Ok(meta) = entry.metadata() else { continue };
            match f(&path, meta.len()) {
                Err(CloneError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
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
    fn accounts_a_plain_directory() {
        let t = tempfile::tempdir().unwrap();
        let pg = t.path().join("pgdata");
        let wal = t.path().join("wal");
        std::fs::create_dir_all(pg.join("base")).unwrap();
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(pg.join("base/1"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(wal.join("seg"), vec![2u8; 32 * 1024]).unwrap();
        let u = account(&[Scope {
            pgdata: pg,
            history: vec![wal],
        }])
        .unwrap();
        assert_eq!(u[0].logical, 64 * 1024);
        assert!(u[0].exclusive >= 96 * 1024, "{u:?}");
        assert!(
            u[0].history >= 32 * 1024 && u[0].history < u[0].exclusive,
            "{u:?}"
        );
    }
}
