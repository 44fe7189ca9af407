//! The archive inbox: the one directory of a timeline's history a compute may write.
//!
//! A compute's `archive_command` copies each finished WAL file into
//! `timelines/<id>/archive-inbox/` (durably: temporary name, fsync, rename, fsync of the
//! directory). The storage node moves what arrives there into the timeline's archive
//! `wal/`, which no compute mounts, so a compute can append to its own history and never
//! rewrite or delete what is already in it — the history "restore to before the incident"
//! replays.
//!
//! Moving is a copy into a new inode, not a rename: a compute that kept a descriptor of
//! the file it archived could otherwise still write into the archived segment. The copy
//! is a reflink where the filesystem has them (metadata only), then fsynced, then given
//! its name with `RENAME_NOREPLACE` and the directory fsynced; only after that is the
//! inbox copy removed. A crash at any point loses nothing: the inbox copy stays until the
//! archive holds the segment durably, and a second arrival of an identical segment is
//! dropped.
//!
//! What is moved: regular files with one link whose names are WAL segments, timeline
//! history files, `.partial` segments and `.backup` files (what Postgres archives).
//! Everything is opened through [`crate::beneath`]. A segment already in the archive is
//! never overwritten: an identical copy is dropped, a different one is kept aside in
//! `archive-rejected/` (not mounted by a compute either) and logged as an error naming
//! it, as is a link, special file or directory carrying an archive name, and a file whose
//! permission bits deny the node reading it (never retried forever). Other names —
//! the archive command's `.tmp` files among them — are left alone.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use ramify_api::CloneMethod;
use tracing::{error, warn};

use crate::beneath::{BeneathError, Dir};
use crate::clone::{self, CloneError};
use crate::wal::{self, WalFile};

/// Name of the inbox inside a timeline directory (the compute's `../archive-inbox`).
pub const INBOX: &str = "archive-inbox";
/// Name of the archive inside a timeline directory.
pub const ARCHIVE: &str = "wal";
/// Where refused arrivals are kept for inspection (never read by the node).
pub const REJECTED: &str = "archive-rejected";

/// What one drain of an inbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Files now in the archive.
    pub moved: usize,
    /// Arrivals identical to a file already archived, dropped.
    pub duplicates: usize,
    /// Arrivals kept aside in `archive-rejected/`.
    pub rejected: usize,
    /// Arrivals that could not be handled now (an I/O error, logged); retried next drain.
    pub failed: usize,
}

impl Drained {
    /// True when the drain changed anything.
    pub fn any(&self) -> bool {
        *self != Drained::default()
    }
}

/// Whether `name` is something Postgres archives: a segment, a history file, a
/// `.partial` segment (the old timeline's last one at promotion) or a `.backup` file.
pub fn is_archive_name(name: &str) -> bool {
    if wal::parse_name(name).is_some() {
        return true;
    }
    let is_segment = |s: &str| matches!(wal::parse_name(s), Some(WalFile::Segment { .. }));
    if let Some(seg) = name.strip_suffix(".partial") {
        return is_segment(seg);
    }
    if let Some((seg, offset)) = name
        .strip_suffix(".backup")
        .and_then(|rest| rest.split_once('.'))
    {
        return is_segment(seg)
            && offset.len() == 8
            && offset.bytes().all(|b| b.is_ascii_hexdigit());
    }
    false
}

/// Creates the inbox of the timeline directory `timeline` if it is missing (timelines
/// made before the inbox existed get it here), and opens it.
pub fn ensure(timeline: &Dir) -> Result<Dir, CloneError> {
    Ok(timeline.ensure_dir(INBOX, 0o700)?)
}

/// Moves every archive file in `timeline`'s inbox into its archive (see the module
/// documentation). Fails only when the inbox or the archive cannot be opened; a file that
/// fails is logged, counted in [`Drained::failed`] and left for the next drain.
pub fn drain(timeline: &Dir, method: CloneMethod) -> Result<Drained, CloneError> {
    let inbox = ensure(timeline)?;
    let archive = timeline.open_dir(ARCHIVE)?;
    let mut entries = inbox.entries()?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Drained::default();
    for e in entries {
        let Some(name) = e.name.to_str().filter(|n| is_archive_name(n)) else {
            continue;
        };
        // Judged by the entry itself first: a FIFO, socket or device the node may not
        // even open (a compute can take away its permission bits) is refused, not
        // retried at every drain.
        if let Err(b) = inbox.check(&e.name, e.kind, e.nlink) {
            out.count_aside(set_aside(timeline, &inbox, name, &b.to_string()));
            continue;
        }
        match take(&inbox, &archive, name, method) {
            Ok(Taken::Moved) => out.moved += 1,
            Ok(Taken::Duplicate) => out.duplicates += 1,
            Ok(Taken::Vanished) => {}
            Ok(Taken::Unreadable) => {
                let why = format!(
                    "{} cannot be read by the storage node (permission denied); an archived WAL file must be readable by it",
                    inbox.path_of(name).display()
                );
                out.count_aside(set_aside(timeline, &inbox, name, &why));
            }
            Ok(Taken::Differs) => {
                let why = format!(
                    "{} differs from the archived {name}, which is never overwritten",
                    inbox.path_of(name).display()
                );
                out.count_aside(set_aside(timeline, &inbox, name, &why));
            }
            Err(CloneError::Beneath(b)) if b.is_refusal() => {
                out.count_aside(set_aside(timeline, &inbox, name, &b.to_string()));
            }
            Err(e) => {
                warn!(file = %inbox.path_of(name).display(), error = %e, "cannot move a WAL file from the archive inbox into the archive; retrying at the next drain");
                out.failed += 1;
            }
        }
    }
    Ok(out)
}

impl Drained {
    fn count_aside(&mut self, r: Result<(), CloneError>) {
        match r {
            Ok(()) => self.rejected += 1,
            Err(e) => {
                warn!(error = %e, "cannot keep a refused WAL file aside");
                self.failed += 1;
            }
        }
    }
}

/// What [`take`] did with a file.
pub(crate) enum Taken {
    Moved,
    Duplicate,
    Differs,
    /// Gone between listing and moving.
    Vanished,
    /// Its permission bits deny the node reading it: it can never be moved.
    Unreadable,
}

/// Puts `name` from `inbox` (or any directory only the node writes) into `archive` as a
/// new inode, never over an existing file: see the module doc.
pub(crate) fn take(
    inbox: &Dir,
    archive: &Dir,
    name: &str,
    method: CloneMethod,
) -> Result<Taken, CloneError> {
    let n = OsStr::new(name);
    let (src, st) = match inbox.open_file(n) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(Taken::Vanished),
        Err(e) if e.is_permission_denied() => return Ok(Taken::Unreadable),
        Err(e) => return Err(e.into()),
    };
    if archive.lstat(n)?.is_some() {
        return duplicate(inbox, archive, name, src, st.st_size as u64);
    }
    let tmp = format!(".incoming-{name}");
    archive.remove_file_if_exists(&tmp)?;
    let to = archive.create_file(&tmp, 0o600)?;
    let tmp_path = archive.path_of(&tmp);
    let io_err = |op: &'static str| {
        let path = tmp_path.clone();
        move |source| CloneError::Beneath(BeneathError::Io { op, path, source })
    };
    match method {
        CloneMethod::Reflink => clone::reflink_file(&src, &to).map_err(io_err("reflink"))?,
        CloneMethod::Copy => {
            let (mut from, mut to) = (&src, &to);
            io::copy(&mut from, &mut to).map_err(io_err("copy"))?;
        }
    }
    // The archive keeps a segment long after Postgres removed its own copy: the zeros
    // after a switched segment's last record need no blocks of their own.
    clone::punch_zero_tail(&to).map_err(io_err("punch trailing zeros"))?;
    to.sync_all().map_err(io_err("fsync"))?;
    drop(to);
    if !archive.rename_no_replace(&tmp, archive, n)? {
        // Archived meanwhile under the same name: judge this arrival against it.
        archive.remove_file_if_exists(&tmp)?;
        let (src, st) = inbox.open_file(n)?;
        return duplicate(inbox, archive, name, src, st.st_size as u64);
    }
    archive.fsync()?;
    // Only now, with the archive's copy durable, does the inbox copy go.
    inbox.remove_file_if_exists(n)?;
    Ok(Taken::Moved)
}

/// An arrival named like a file already archived: dropped if identical, else `Differs`.
fn duplicate(
    inbox: &Dir,
    archive: &Dir,
    name: &str,
    src: File,
    len: u64,
) -> Result<Taken, CloneError> {
    let (kept, kst) = archive.open_file(name)?;
    if kst.st_size as u64 != len
        || !same_bytes(src, kept).map_err(|source| {
            CloneError::Beneath(BeneathError::Io {
                op: "compare",
                path: inbox.path_of(name),
                source,
            })
        })?
    {
        return Ok(Taken::Differs);
    }
    inbox.remove_file_if_exists(name)?;
    Ok(Taken::Duplicate)
}

fn same_bytes(mut a: File, mut b: File) -> io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Moves `name` out of the inbox into `archive-rejected/` under a name of its own (the
/// entry itself, whatever it is: a link is moved, never followed), and logs why.
fn set_aside(timeline: &Dir, inbox: &Dir, name: &str, why: &str) -> Result<(), CloneError> {
    let rejected = timeline.ensure_dir(REJECTED, 0o700)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for attempt in 0..100u32 {
        let aside = format!("{name}.{stamp}.{attempt}");
        if inbox.rename_no_replace(name, &rejected, &aside)? {
            error!(
                file = %inbox.path_of(name).display(),
                kept_as = %rejected.path_of(&aside).display(),
                reason = %why,
                "refused a file in the archive inbox: the archive keeps what it had, and the arrival is kept aside"
            );
            return Ok(());
        }
    }
    Err(CloneError::Beneath(BeneathError::Io {
        op: "keep aside",
        path: inbox.path_of(name),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    const SEG: &str = "000000010000000000000003";

    struct T {
        _t: tempfile::TempDir,
        root: std::path::PathBuf,
    }

    impl T {
        fn new() -> T {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("data");
            fs::create_dir_all(root.join("tl/wal")).unwrap();
            fs::create_dir_all(root.join("tl/archive-inbox")).unwrap();
            fs::create_dir_all(root.join("other")).unwrap();
            T { _t: t, root }
        }
        fn p(&self, rel: &str) -> std::path::PathBuf {
            self.root.join(rel)
        }
        fn drain(&self) -> Drained {
            let data = Dir::open_root(&self.root).unwrap();
            drain(&data.open_dir("tl").unwrap(), CloneMethod::Copy).unwrap()
        }
        fn rejected(&self) -> Vec<String> {
            match fs::read_dir(self.p("tl/archive-rejected")) {
                Ok(rd) => rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => vec![],
            }
        }
    }

    fn exists(p: &Path) -> bool {
        fs::symlink_metadata(p).is_ok()
    }

    #[test]
    fn archive_names() {
        for ok in [
            SEG,
            "00000002.history",
            "000000010000000000000003.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(is_archive_name(ok), "{ok}");
        }
        for other in [
            "000000010000000000000003.tmp",
            "00000002.history.tmp",
            "x.partial",
            "000000010000000000000002.0028.backup",
            "rejected",
            "wal-kept-from",
        ] {
            assert!(!is_archive_name(other), "{other}");
        }
    }

    #[test]
    fn arrivals_move_into_the_archive_and_leave_the_inbox() {
        let t = T::new();
        fs::write(t.p("tl/archive-inbox").join(SEG), b"segment").unwrap();
        fs::write(t.p("tl/archive-inbox/00000002.history"), b"1\t0/3000000\n").unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.duplicates, d.rejected, d.failed), (2, 0, 0, 0));
        assert_eq!(fs::read(t.p("tl/wal").join(SEG)).unwrap(), b"segment");
        assert!(t.p("tl/wal/00000002.history").exists());
        assert_eq!(fs::read_dir(t.p("tl/archive-inbox")).unwrap().count(), 0);
        let entries: Vec<_> = fs::read_dir(t.p("tl/wal")).unwrap().collect();
        assert_eq!(entries.len(), 2, "no temporary file stays behind");
        // The archived copy is a file of its own: writing the old inbox inode (a
        // descriptor the compute kept) cannot reach it.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(t.p("tl/wal").join(SEG)).unwrap().nlink(), 1);
        assert!(!t.drain().any(), "a second drain has nothing to do");
    }

    /// A segment switched away from early (mostly zeros) is archived with the same bytes
    /// but its zeros as a hole; re-archived after a crash, it is still found identical.
    #[test]
    fn a_switched_segment_keeps_no_blocks_for_its_zeros() {
        use std::os::unix::fs::MetadataExt;
        let t = T::new();
        let mut seg = vec![0u8; 16 << 20];
        seg[..40_000].fill(0xd1);
        fs::write(t.p("tl/archive-inbox").join(SEG), &seg).unwrap();
        assert_eq!(t.drain().moved, 1);
        let kept = t.p("tl/wal").join(SEG);
        assert!(fs::read(&kept).unwrap() == seg);
        let blocks = fs::metadata(&kept).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "{blocks} bytes allocated for 40 KB of WAL"
        );
        fs::write(t.p("tl/archive-inbox").join(SEG), &seg).unwrap();
        assert_eq!(t.drain().duplicates, 1);
    }

    #[test]
    fn an_identical_duplicate_is_dropped() {
        let t = T::new();
        fs::write(t.p("tl/wal").join(SEG), b"segment").unwrap();
        fs::write(t.p("tl/archive-inbox").join(SEG), b"segment").unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.duplicates, d.rejected), (0, 1, 0));
        assert!(!exists(&t.p("tl/archive-inbox").join(SEG)));
        assert_eq!(fs::read(t.p("tl/wal").join(SEG)).unwrap(), b"segment");
    }

    #[test]
    fn a_different_duplicate_never_overwrites_and_is_kept_aside() {
        let t = T::new();
        fs::write(t.p("tl/wal").join(SEG), b"history").unwrap();
        fs::write(t.p("tl/archive-inbox").join(SEG), b"rewritten").unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.duplicates, d.rejected), (0, 0, 1));
        assert_eq!(fs::read(t.p("tl/wal").join(SEG)).unwrap(), b"history");
        assert!(!exists(&t.p("tl/archive-inbox").join(SEG)));
        let aside = t.rejected();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].starts_with(SEG), "{aside:?}");
        assert_eq!(
            fs::read(t.p("tl/archive-rejected").join(&aside[0])).unwrap(),
            b"rewritten"
        );
        // The same size but other bytes is refused as well.
        fs::write(t.p("tl/archive-inbox").join(SEG), b"HISTORY").unwrap();
        assert_eq!(t.drain().rejected, 1);
        assert_eq!(fs::read(t.p("tl/wal").join(SEG)).unwrap(), b"history");
        assert_eq!(t.rejected().len(), 2);
    }

    #[test]
    fn a_symlink_is_kept_aside_never_followed() {
        let t = T::new();
        fs::write(t.p("other/secret"), b"another timeline's relation").unwrap();
        symlink(t.p("other/secret"), t.p("tl/archive-inbox").join(SEG)).unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.rejected), (0, 1));
        assert!(!exists(&t.p("tl/wal").join(SEG)));
        assert!(!exists(&t.p("tl/archive-inbox").join(SEG)));
        let aside = t.p("tl/archive-rejected").join(&t.rejected()[0]);
        assert!(fs::symlink_metadata(&aside)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read(t.p("other/secret")).unwrap(),
            b"another timeline's relation"
        );
    }

    #[test]
    fn a_hard_link_is_kept_aside() {
        let t = T::new();
        fs::write(t.p("other/relation"), b"pgdata file").unwrap();
        fs::hard_link(t.p("other/relation"), t.p("tl/archive-inbox").join(SEG)).unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.rejected), (0, 1));
        assert!(!exists(&t.p("tl/wal").join(SEG)));
        assert_eq!(t.rejected().len(), 1);
    }

    #[test]
    fn a_fifo_is_kept_aside_without_blocking() {
        let t = T::new();
        nix::unistd::mkfifo(
            &t.p("tl/archive-inbox").join(SEG),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let d = t.drain();
        assert_eq!((d.moved, d.rejected), (0, 1));
        assert!(!exists(&t.p("tl/wal").join(SEG)));
    }

    #[test]
    fn partial_and_other_files_are_left_alone() {
        let t = T::new();
        let tmp = format!("{SEG}.tmp");
        fs::write(t.p("tl/archive-inbox").join(&tmp), b"half a copy").unwrap();
        fs::write(t.p("tl/archive-inbox/notes"), b"x").unwrap();
        assert!(!t.drain().any());
        assert!(t.p("tl/archive-inbox").join(&tmp).exists());
        assert!(t.p("tl/archive-inbox/notes").exists());
        assert!(!exists(&t.p("tl/wal").join(SEG)));
        assert!(t.rejected().is_empty());
    }

    #[test]
    fn a_missing_inbox_is_created() {
        let t = T::new();
        fs::remove_dir(t.p("tl/archive-inbox")).unwrap();
        assert!(!t.drain().any());
        assert!(t.p("tl/archive-inbox").is_dir());
    }

    #[test]
    fn a_leftover_temporary_file_of_a_crashed_move_is_replaced() {
        let t = T::new();
        fs::write(t.p("tl/wal").join(format!(".incoming-{SEG}")), b"torn").unwrap();
        fs::write(t.p("tl/archive-inbox").join(SEG), b"segment").unwrap();
        assert_eq!(t.drain().moved, 1);
        assert_eq!(fs::read(t.p("tl/wal").join(SEG)).unwrap(), b"segment");
        assert!(!exists(&t.p("tl/wal").join(format!(".incoming-{SEG}"))));
    }
}
