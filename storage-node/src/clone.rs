//! The filesystem primitives copy-on-write rests on: `FICLONE` (reflink a file),
//! `FIEMAP` (which extents a file shares) and `statfs`.
//!
//! With `sandbox.rs` (Landlock), one of the two modules of the storage node with `unsafe`
//! code: four ioctls/syscalls on file descriptors we own, with buffers sized and aligned
//! for the kernel structs.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ramify_api::CloneMethod;

use crate::beneath::{BeneathError, Dir, Kind};

/// `_IOW(0x94, 9, int)`: make the destination share the source's extents.
const FICLONE: libc::c_ulong = 0x4004_9409;
/// `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Location not known yet (delayed allocation, …): the mapping will still change.
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// `fm_flags`: write the file's dirty pages back before mapping it.
const FIEMAP_FLAG_SYNC: u64 = 0x1;
/// Size of `struct fiemap` without its extent array, and of one `struct fiemap_extent`.
const FIEMAP_HEADER: usize = 32;
const FIEMAP_EXTENT: usize = 56;
const EXTENTS_PER_CALL: usize = 256;
/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801C_581F;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401C_5820;
const FS_XFLAG_COWEXTSIZE: u32 = 0x0001_0000;

/// Errors of filesystem operations, each naming the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Beneath(#[from] BeneathError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CloneError + 'a {
    move |source| CloneError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `dst` (new) a reflink of `src`: O(extents), no data copied.
pub fn reflink_file(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument; both fds are
    // open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives back the blocks of `file`'s trailing zeros, keeping its size and content: a
/// hole reads as zeros. A WAL segment Postgres switched away from early (a fork's
/// backup, `archive_timeout`) is mostly zeros after its last record — 16 MiB on disk
/// for a few KiB of WAL, kept as long as the archive keeps the segment. Only blocks
/// entirely past the last non-zero byte are punched, so nothing but zeros is released.
/// Returns the length of the range that is now a hole (0 where the file system cannot
/// punch holes). Only for a file nobody writes any more (the caller's own new copy): a
/// concurrent writer could lose a write into the punched range.
pub fn punch_zero_tail(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let meta = file.metadata()?;
    let len = meta.len();
    let block = meta.blksize().max(512);
    // Read back to front, at most 1 MiB at a time (a short file in one read).
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut end = len; // everything at or after `end` is zero
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        match chunk.iter().rposition(|&b| b != 0) {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    let from = end.div_ceil(block) * block;
    if from >= len {
        return Ok(0);
    }
    match rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        from,
        len - from,
    ) {
        Ok(()) => Ok(len - from),
        Err(rustix::io::Errno::OPNOTSUPP) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Probes whether `dir` supports reflinks by cloning a small scratch file.
pub fn detect_clone_method(dir: &Path) -> Result<CloneMethod, CloneError> {
    let a = dir.join(".clone-probe-src");
    let b = dir.join(".clone-probe-dst");
    fs::write(&a, [7u8; 4096]).map_err(io_err("write", &a))?;
    let src = File::open(&a).map_err(io_err("open", &a))?;
    let dst = File::create(&b).map_err(io_err("create", &b))?;
    let method = match reflink_file(&src, &dst) {
        Ok(()) => CloneMethod::Reflink,
        Err(_) => CloneMethod::Copy,
    };
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    Ok(method)
}

/// Clones the regular file `name` of `src` to the new file `dst_name` of `dst` (reflink or
/// copy), keeping its permission bits. Both ends are resolved without following links:
/// a link, a special file or a file with several hard links as the source is refused,
/// and anything already at the destination makes it fail. Returns the bytes cloned.
pub fn clone_file(
    src: &Dir,
    name: &OsStr,
    dst: &Dir,
    dst_name: &OsStr,
    method: CloneMethod,
) -> Result<u64, CloneError> {
    let (from, st) = src.open_file(name)?;
    let to = dst.create_file(dst_name, st.st_mode & 0o7777)?;
    fill(from, &to, method, &dst.path_of(dst_name))?;
    Ok(st.st_size as u64)
}

/// Writes `from`'s content over `to` from its start: a reflink, or a copy.
fn fill(from: File, to: &File, method: CloneMethod, to_path: &Path) -> Result<(), CloneError> {
    match method {
        CloneMethod::Reflink => reflink_file(&from, to).map_err(io_err("reflink", to_path)),
        CloneMethod::Copy => {
            let (mut from, mut to) = (from, to);
            io::copy(&mut from, &mut to)
                .map(drop)
                .map_err(io_err("copy", to_path))
        }
    }
}

/// Gives the existing regular file `dst_name` of `dst` the content of `name` of `src`
/// (reflink or copy) in place: a process that holds it open reads the new content
/// through its descriptor, where a replaced file would leave it reading the old one to
/// its end. Anything else at `dst_name` (none, a link, a special file, several hard
/// links) is removed and the file cloned anew, as [`clone_file`]. Returns the bytes.
pub fn rewrite_file(
    src: &Dir,
    name: &OsStr,
    dst: &Dir,
    dst_name: &OsStr,
    method: CloneMethod,
) -> Result<u64, CloneError> {
    let Ok((to, _)) = dst.open_file_rw(dst_name) else {
        dst.remove_file_if_exists(dst_name)?;
        return clone_file(src, name, dst, dst_name, method);
    };
    let (from, st) = src.open_file(name)?;
    let dst_path = dst.path_of(dst_name);
    // A reflink replaces the destination's range with the source's blocks at once: a
    // reader sees the old content or the new, never a mix within a page.
    fill(from, &to, method, &dst_path)?;
    to.set_len(st.st_size as u64)
        .map_err(io_err("truncate", &dst_path))?;
    Ok(st.st_size as u64)
}

/// What `clone_tree` leaves out, as paths relative to the source root.
pub trait Exclude {
    /// True if `rel` (a file or directory below the root) must not be cloned.
    fn skip(&self, rel: &Path, is_dir: bool) -> bool;
}

impl<F: Fn(&Path, bool) -> bool> Exclude for F {
    fn skip(&self, rel: &Path, is_dir: bool) -> bool {
        self(rel, is_dir)
    }
}

/// Totals of a tree clone.
#[derive(Debug, Default, Clone, Copy)]
pub struct CloneStats {
    pub files: u64,
    pub bytes: u64,
}

/// Clones the tree `src` into the new directory `dst_name` of `dst_parent`, file by file,
/// keeping modes. The walk goes through directory descriptors (see [`crate::beneath`]):
/// an entry that is not excluded and is not a regular file or a directory — a symlink
/// (a `pg_tblspc` tablespace link included), FIFO, socket or device — or is a file with
/// several hard links makes the whole clone fail, naming it. Excluded entries are skipped
/// whatever they are, and never followed.
pub fn clone_tree(
    src: &Dir,
    dst_parent: &Dir,
    dst_name: impl AsRef<OsStr>,
    method: CloneMethod,
    exclude: &dyn Exclude,
) -> Result<CloneStats, CloneError> {
    let mut stats = CloneStats::default();
    let dst = dst_parent.create_dir(dst_name, src.mode()?)?;
    clone_dir(src, &dst, Path::new(""), method, exclude, false, &mut stats)?;
    Ok(stats)
}

/// [`clone_tree`] of a source nothing may change while it is cloned (a snapshot): a file
/// or directory that vanishes during the walk is an error naming it, never left out, so
/// a copy with relation or `pg_xact` files missing is never made.
pub fn clone_tree_whole(
    src: &Dir,
    dst_parent: &Dir,
    dst_name: impl AsRef<OsStr>,
    method: CloneMethod,
    exclude: &dyn Exclude,
) -> Result<CloneStats, CloneError> {
    let mut stats = CloneStats::default();
    let dst = dst_parent.create_dir(dst_name, src.mode()?)?;
    clone_dir(src, &dst, Path::new(""), method, exclude, true, &mut stats)?;
    Ok(stats)
}

/// [`clone_tree_whole`] into the existing directory `dst`, which already holds what
/// `exclude` leaves out (a fork snapshot's own WAL, cloned before the rest).
pub fn clone_tree_whole_into(
    src: &Dir,
    dst: &Dir,
    method: CloneMethod,
    exclude: &dyn Exclude,
) -> Result<CloneStats, CloneError> {
    let mut stats = CloneStats::default();
    clone_dir(src, dst, Path::new(""), method, exclude, true, &mut stats)?;
    Ok(stats)
}

fn clone_dir(
    src: &Dir,
    dst: &Dir,
    rel: &Path,
    method: CloneMethod,
    exclude: &dyn Exclude,
    whole: bool,
    stats: &mut CloneStats,
) -> Result<(), CloneError> {
    for e in src.entries()? {
        let child_rel = rel.join(&e.name);
        if exclude.skip(&child_rel, e.kind == Kind::Dir) {
            continue;
        }
        src.check(&e.name, e.kind, e.nlink)?;
        if e.kind == Kind::Dir {
            let sub = match src.open_dir(Path::new(&e.name)) {
                Ok(d) => d,
                // Removed by Postgres while we walk (temporary directories).
                Err(err) if err.is_not_found() && !whole => continue,
                Err(err) => return Err(err.into()),
            };
            let d = dst.create_dir(&e.name, sub.mode()?)?;
            clone_dir(&sub, &d, &child_rel, method, exclude, whole, stats)?;
        } else {
            match clone_file(src, &e.name, dst, &e.name, method) {
                Ok(n) => {
                    stats.files += 1;
                    stats.bytes += n;
                }
                // A file Postgres removed while we walk (temporary files) is not cloned.
                Err(CloneError::Beneath(err)) if err.is_not_found() && !whole => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

/// One mapped extent of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Physical byte offset on the device.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether other files (or other ranges) reference the same blocks.
    pub shared: bool,
}

/// Reads a file's extent map with `FIEMAP`. No `FIEMAP_FLAG_SYNC`: forcing writeback of
/// a running compute's files just to count them would disturb it, and data not yet
/// allocated (delalloc) is new, hence unshared, which is how it is reported anyway.
pub fn file_extents(path: &Path) -> Result<Vec<Extent>, CloneError> {
    Ok(map_file(path, false)?.extents)
}

/// A file's extents, and whether the mapping is final.
#[derive(Debug, Clone)]
pub struct FileMap {
    /// The extents, in file order.
    pub extents: Vec<Extent>,
    /// No extent awaits allocation: with `sync` and no write since, the mapping stays.
    pub settled: bool,
}

/// [`file_extents`], writing the file's dirty pages back first when `sync` (on XFS a
/// copy-on-write remap happens only when the data reaches the disk).
pub fn map_file(path: &Path, sync: bool) -> Result<FileMap, CloneError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    map_open_file(&file, path, sync)
}

/// [`map_file`] of a file already open (`path` names it in errors).
pub fn map_open_file(file: &File, path: &Path, sync: bool) -> Result<FileMap, CloneError> {
    let mut out = Vec::new();
    let mut settled = true;
    let mut start: u64 = 0;
    // u64 words keep the buffer aligned for the kernel's u64 fields.
    let words = (FIEMAP_HEADER + FIEMAP_EXTENT * EXTENTS_PER_CALL) / 8;
    let mut buf = vec![0u64; words];
    loop {
        buf.iter_mut().for_each(|w| *w = 0);
        buf[0] = start; // fm_start
        buf[1] = u64::MAX; // fm_length
                           // fm_flags is the low half of word 2; fm_extent_count is the low half of word 3.
        if sync {
            buf[2] = FIEMAP_FLAG_SYNC;
        }
        buf[3] = EXTENTS_PER_CALL as u64;
        // SAFETY: `buf` is a writable, 8-byte aligned buffer of exactly the size the
        // kernel expects for `fm_extent_count` extents, alive for the whole call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, buf.as_mut_ptr()) };
        if rc != 0 {
            return Err(io_err("fiemap", path)(io::Error::last_os_error()));
        }
        let mapped = (buf[2] >> 32) as usize; // fm_mapped_extents
        if mapped == 0 {
            return Ok(FileMap {
                extents: out,
                settled,
            });
        }
        let mut last = false;
        for i in 0..mapped.min(EXTENTS_PER_CALL) {
            let base = (FIEMAP_HEADER + i * FIEMAP_EXTENT) / 8;
            let logical = buf[base];
            let flags = (buf[base + 5] & 0xFFFF_FFFF) as u32;
            out.push(Extent {
                physical: buf[base + 1],
                length: buf[base + 2],
                shared: flags & FIEMAP_EXTENT_SHARED != 0,
            });
            settled &= flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC) == 0;
            start = logical + buf[base + 2];
            last |= flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last || mapped < EXTENTS_PER_CALL {
            return Ok(FileMap {
                extents: out,
                settled,
            });
        }
    }
}

/// Sets XFS's copy-on-write extent size hint on directory `dir`; files and directories
/// created below it inherit it.
///
/// When a block shared with another timeline is written, XFS allocates a whole
/// "CoW extent" (32 blocks = 128 KiB by default) around it and keeps the unused rest
/// reserved for minutes. Postgres writes 8 KiB pages all over its files, so a branch doing
/// scattered updates would look (to `df`) up to 16× bigger than what it changed. A hint
/// of one Postgres page keeps a branch's space what it really wrote.
/// Returns `false` (and changes nothing) on filesystems without the hint.
pub fn set_cow_extent_size(dir: &Path, bytes: u32) -> Result<bool, CloneError> {
    let f = File::open(dir).map_err(io_err("open", dir))?;
    // struct fsxattr: xflags, extsize, nextents, projid, cowextsize (u32 each), pad[8].
    let mut attr = [0u32; 7];
    // SAFETY: `attr` is a writable buffer of the 28 bytes `struct fsxattr` occupies.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR as _, attr.as_mut_ptr()) };
    if rc != 0 {
        return Ok(false);
    }
    attr[0] |= FS_XFLAG_COWEXTSIZE;
    attr[4] = bytes;
    // SAFETY: as above; the kernel only reads it.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSSETXATTR as _, attr.as_ptr()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(false),
            _ => Err(io_err("set cowextsize on", dir)(e)),
        };
    }
    Ok(true)
}

/// Writes back a file's dirty pages and waits for them: `sync_file_range` over the whole
/// file, which flushes no device cache and commits no metadata (see
/// `beneath::Dir::sync_tree` for what does).
pub fn write_back(fd: &impl AsRawFd) -> Result<(), rustix::io::Errno> {
    // SAFETY: plain syscall on an open descriptor; offset 0 and length 0 mean the
    // whole file.
    let rc = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            0,
            0,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if rc != 0 {
        return Err(rustix::io::Errno::from_raw_os_error(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    Ok(())
}

/// Filesystem facts for `/v1/status`.
#[derive(Debug, Clone)]
pub struct FsInfo {
    pub fs_type: String,
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
}

/// `statfs` of the filesystem holding `path`.
pub fn fs_info(path: &Path) -> Result<FsInfo, CloneError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    // SAFETY: `st` is a zeroed struct the kernel fills; fd is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(io_err("statfs", path)(io::Error::last_os_error()));
    }
    let bsize = st.f_frsize as u64;
    let fs_type = match st.f_type as u64 {
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        other => {
            return Ok(FsInfo {
                fs_type: format!("0x{other:x}"),
                capacity: st.f_blocks as u64 * bsize,
                used: (st.f_blocks as u64 - st.f_bfree as u64) * bsize,
                available: st.f_bavail as u64 * bsize,
            })
        }
    };
    Ok(FsInfo {
        fs_type: fs_type.to_string(),
        capacity: st.f_blocks as u64 * bsize,
        used: (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * bsize,
        available: st.f_bavail as u64 * bsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data, then zeros written as zeros (a switched WAL segment): the zeros' blocks go,
    /// the data, the size and every byte read stay; the block the data ends in stays.
    #[test]
    fn punch_zero_tail_releases_only_trailing_zero_blocks() {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("000000010000000000000002");
        let mut content = vec![7u8; 100_000];
        content.extend(vec![0u8; 8 << 20]);
        let mut f = File::create(&path).unwrap();
        f.write_all(&content).unwrap();
        f.sync_all().unwrap();
        let before = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(before >= content.len() as u64, "{before}");
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let punched = punch_zero_tail(&f).unwrap();
        let block = f.metadata().unwrap().blksize();
        assert_eq!(
            punched,
            content.len() as u64 - 100_000u64.div_ceil(block) * block
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), content.len() as u64);
        // (A file system may count a block of its own metadata, ext4 its extent tree.)
        assert!(
            meta.blocks() * 512 <= 100_000 + 4 * block,
            "{}",
            meta.blocks() * 512
        );
        assert!(fs::read(&path).unwrap() == content);
        // Again: the same range, already a hole; a file ending in data: nothing.
        assert_eq!(punch_zero_tail(&f).unwrap(), punched);
        assert_eq!(fs::metadata(&path).unwrap().blocks(), meta.blocks());
        let full = t.path().join("full");
        fs::write(&full, vec![1u8; 50_000]).unwrap();
        let rw = |p: &Path| File::options().read(true).write(true).open(p).unwrap();
        assert_eq!(punch_zero_tail(&rw(&full)).unwrap(), 0);
        // All zeros: all of it.
        let zeros = t.path().join("zeros");
        fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(punch_zero_tail(&rw(&zeros)).unwrap(), 1 << 20);
        assert_eq!(fs::read(&zeros).unwrap(), vec![0u8; 1 << 20]);
    }

    #[test]
    fn clone_tree_copies_content_and_honours_excludes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("keep/sub")).unwrap();
        fs::create_dir_all(src.join("skipme")).unwrap();
        fs::write(src.join("keep/sub/a"), b"hello").unwrap();
        fs::write(src.join("skipme/b"), b"x").unwrap();
        fs::write(src.join("top"), vec![1u8; 100_000]).unwrap();
        let method = detect_clone_method(t.path()).unwrap();
        let skip = |rel: &Path, _dir: bool| rel.starts_with("skipme") && rel != Path::new("skipme");
        let root = Dir::open_root(t.path()).unwrap();
        let stats =
            clone_tree(&root.open_dir("src").unwrap(), &root, "dst", method, &skip).unwrap();
        assert_eq!(stats.files, 2);
        assert_eq!(stats.bytes, 100_005);
        assert_eq!(fs::read(t.path().join("dst/keep/sub/a")).unwrap(), b"hello");
        assert!(t.path().join("dst/skipme").is_dir());
        assert!(!t.path().join("dst/skipme/b").exists());
        let ext = file_extents(&t.path().join("dst/top")).unwrap();
        assert!(ext.iter().map(|e| e.length).sum::<u64>() >= 100_000);
        if method == CloneMethod::Reflink {
            assert!(
                ext.iter().all(|e| e.shared),
                "a reflinked file shares its extents"
            );
        }
    }

    /// Each planted entry — a link to another timeline's file, a link to a directory, a
    /// hard link, a FIFO, a tablespace link — makes the clone fail naming it, and the
    /// other timeline's file is left as it was.
    #[test]
    fn clone_tree_refuses_links_and_special_files() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("other/pgdata/base/1/1234");
        fs::create_dir_all(victim.parent().unwrap()).unwrap();
        fs::write(&victim, b"other tenant's rows").unwrap();
        let method = detect_clone_method(t.path()).unwrap();
        let root = Dir::open_root(t.path()).unwrap();
        type Plant<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);
        let plant: Vec<Plant> = vec![
            (
                "base/1/99999",
                Box::new(|p| symlink(&victim, p).unwrap()),
                "is a symbolic link",
            ),
            (
                "base/2",
                Box::new(|p| symlink(victim.parent().unwrap(), p).unwrap()),
                "is a symbolic link",
            ),
            (
                "base/1/88888",
                Box::new(|p| fs::hard_link(&victim, p).unwrap()),
                "has 2 hard links",
            ),
            (
                "base/1/fifo",
                Box::new(|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap()),
                "is a FIFO",
            ),
            (
                "pg_tblspc/16390",
                Box::new(|p| symlink(victim.parent().unwrap(), p).unwrap()),
                "is a tablespace",
            ),
        ];
        for (i, (at, make, says)) in plant.iter().enumerate() {
            let src = t.path().join(format!("tl{i}/pgdata"));
            fs::create_dir_all(src.join("base/1")).unwrap();
            fs::create_dir_all(src.join("pg_tblspc")).unwrap();
            fs::write(src.join("base/1/100"), b"mine").unwrap();
            make(&src.join(at));
            let e = clone_tree(
                &root.open_dir(format!("tl{i}/pgdata")).unwrap(),
                &root,
                format!("fork{i}"),
                method,
                &|_: &Path, _| false,
            )
            .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("tl{i}/pgdata/{at} {says}")),
                "{msg}"
            );
            assert_eq!(fs::read(&victim).unwrap(), b"other tenant's rows");
            let planted = t.path().join(format!("fork{i}")).join(at);
            assert!(
                fs::symlink_metadata(&planted).is_err(),
                "{at} was not cloned"
            );
        }
    }

    /// A file of the source removed during the walk is left out by `clone_tree` (a
    /// running compute's temporary files) and is an error naming it for
    /// `clone_tree_whole` (a snapshot, which nothing may change).
    #[test]
    fn a_file_vanishing_mid_walk_fails_only_the_whole_clone() {
        let t = tempfile::tempdir().unwrap();
        let method = detect_clone_method(t.path()).unwrap();
        let root = Dir::open_root(t.path()).unwrap();
        for (i, whole) in [(0, false), (1, true)] {
            let src = t.path().join(format!("src{i}"));
            fs::create_dir_all(&src).unwrap();
            for f in ["a", "b", "c"] {
                fs::write(src.join(f), f).unwrap();
            }
            // At the first entry, the other two files go.
            let first = std::sync::Mutex::new(None::<PathBuf>);
            let remove_others = |rel: &Path, _: bool| {
                let mut seen = first.lock().unwrap();
                if seen.is_none() {
                    *seen = Some(rel.to_path_buf());
                    for f in ["a", "b", "c"] {
                        if Path::new(f) != rel {
                            fs::remove_file(src.join(f)).unwrap();
                        }
                    }
                }
                false
            };
            let s = root.open_dir(format!("src{i}")).unwrap();
            let r = if whole {
                clone_tree_whole(&s, &root, format!("dst{i}"), method, &remove_others)
            } else {
                clone_tree(&s, &root, format!("dst{i}"), method, &remove_others)
            };
            if whole {
                let e = r.unwrap_err();
                assert!(
                    matches!(&e, CloneError::Beneath(b) if b.is_not_found()),
                    "{e}"
                );
            } else {
                assert_eq!(r.unwrap().files, 1);
            }
        }
    }

    #[test]
    fn fs_info_reports_sizes() {
        let t = tempfile::tempdir().unwrap();
        let i = fs_info(t.path()).unwrap();
        assert!(i.capacity > 0 && i.capacity >= i.used);
    }
}
