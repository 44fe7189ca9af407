//! Resolving paths beneath the data directory without ever following a link.
//!
//! A compute mounts its timeline directory read-write as the node's own uid, so anything
//! below `timelines/<id>/` may have been replaced by a symbolic link, a hard link, a FIFO
//! or a socket at any moment — including between two system calls of the node. Every
//! read, stat, open, clone source or destination, rename and delete inside a timeline
//! therefore goes through a [`Dir`]: an open directory descriptor plus its path relative
//! to the data directory (used only in messages, never resolved again).
//!
//! * A path of several components is opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` relative to a directory descriptor (or,
//!   where the kernel lacks `openat2`, one `O_NOFOLLOW` component at a time). A link
//!   anywhere on the way is an error; so is `..`.
//! * A single name inside a [`Dir`] is stat'ed with `AT_SYMLINK_NOFOLLOW` and opened with
//!   `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO never blocks the node), then checked again
//!   on the descriptor: the type the node acts on is the type of what it holds open.
//! * Walks read entries from the directory descriptor and descend with `openat` on it,
//!   so a directory swapped for a link mid-walk is refused, never followed.
//! * New files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`: a name planted in the
//!   way makes the call fail instead of writing through it.
//! * Deleting removes a link itself (`unlinkat`), never what it points to.
//!
//! What is refused, by [`Dir::check`]: anything that is neither a regular file nor a
//! directory (symlink, FIFO, socket, device), and a regular file with more than one hard
//! link (planted from a compute, a hard link would let it reach the same inode from its
//! PGDATA and from its history, or keep a second name for a file the node clones).
//! Postgres itself creates symlinks in one place only: `pg_tblspc/<oid>` for a
//! tablespace. Ramify does not support tablespaces outside PGDATA, so such an entry is
//! refused with its own message ([`BeneathError::Tablespace`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Why an operation inside the data directory was refused or failed. Paths are relative
/// to the data directory.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{} is a symbolic link, or a path through one; the storage node never follows links inside its data directory (only regular files and directories are valid there)", .path.display())]
    Symlink { path: PathBuf },
    #[error("{} is a {kind}; only regular files and directories are valid inside a timeline", .path.display())]
    Special { path: PathBuf, kind: &'static str },
    #[error("{} has {links} hard links; a file inside a timeline must have exactly one (a second name could reach another timeline's data or rewrite history)", .path.display())]
    HardLink { path: PathBuf, links: u64 },
    #[error("{} is a tablespace: Ramify does not support tablespaces outside PGDATA, so this PGDATA cannot be cloned; move its objects to pg_default (ALTER TABLE … SET TABLESPACE pg_default) and DROP TABLESPACE", .path.display())]
    Tablespace { path: PathBuf },
    #[error("{} is a {kind}, not a regular file", .path.display())]
    NotFile { path: PathBuf, kind: &'static str },
    #[error("{} is not a directory (it is a {kind})", .path.display())]
    NotDir { path: PathBuf, kind: &'static str },
    #[error("{} is not inside the data directory {}; only paths below it are valid", .path.display(), .root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BeneathError {
    /// True when a file or directory did not exist (it may have vanished while walked).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BeneathError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// True when permission bits deny the node what it tried (a compute can change the
    /// mode of its own files and directories).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, BeneathError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True for a refusal of what is on disk (a link, a special file, a hard link, a
    /// tablespace), as opposed to an I/O failure.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, BeneathError::Io { .. })
    }
}

type Result<T> = std::result::Result<T, BeneathError>;

fn io_at(op: &'static str, path: PathBuf) -> impl FnOnce(rustix::io::Errno) -> BeneathError {
    move |e| BeneathError::Io {
        op,
        path,
        source: e.into(),
    }
}

/// What a directory entry is, never following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device, by name.
    Special(&'static str),
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Special("FIFO"),
            FileType::Socket => Kind::Special("socket"),
            FileType::CharacterDevice => Kind::Special("character device"),
            FileType::BlockDevice => Kind::Special("block device"),
            _ => Kind::Special("file of unknown type"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Special(s) => s,
        }
    }
}

/// One entry of a directory, as `lstat` saw it while listing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    pub nlink: u64,
    pub len: u64,
    /// The whole `lstat`.
    pub stat: Stat,
}

/// An open directory inside the data directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// Path relative to the data directory, for messages only.
    rel: PathBuf,
}

/// Flags of `open` for a directory: never a link, never a controlling terminal.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

/// Checks `rel` is a plain relative path (no `..`, no root), to be resolved beneath.
fn plain_relative(rel: &Path, base: &Path) -> Result<()> {
    if rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(BeneathError::Outside {
            path: base.join(rel),
            root: base.to_path_buf(),
        })
    }
}

/// How [`Dir::sync_tree`] makes a tree durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The filesystem journals all metadata in one ordered log (XFS): data is written
    /// back, and one later fsync forces the log.
    OrderedLog,
    /// Every file and directory is fsynced.
    PerFile,
}

impl Durability {
    /// What the filesystem named by `statfs` (see `clone::fs_info`) needs.
    pub fn for_filesystem(fs_type: &str) -> Durability {
        if fs_type == "xfs" {
            Durability::OrderedLog
        } else {
            Durability::PerFile
        }
    }
}

impl Dir {
    /// Opens the data directory itself: the one path the node trusts as given (its
    /// `--data-dir`, chosen by the operator, may well be reached through a link).
    pub fn open_root(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at("open data directory", path.to_path_buf()))?;
        Ok(Dir {
            fd,
            rel: PathBuf::new(),
        })
    }

    /// This directory's path relative to the data directory.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// `rel` of a child of this directory, for messages.
    pub fn path_of(&self, name: impl AsRef<Path>) -> PathBuf {
        self.rel.join(name)
    }

    /// Opens the directory `rel` (one or more components) below this one, refusing a
    /// link anywhere on the way.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> Result<Dir> {
        let rel = rel.as_ref();
        plain_relative(rel, &self.rel)?;
        let path = self.path_of(rel);
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let opened = match rustix::fs::openat2(&self.fd, rel, dir_flags(), Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => self.open_dir_by_component(rel),
            other => other,
        };
        match opened {
            Ok(fd) => Ok(Dir { fd, rel: path }),
            Err(e) => Err(self.explain(rel, e, "open directory")),
        }
    }

    /// [`Dir::open_dir`] for kernels without `openat2` (before 5.6, or a seccomp filter
    /// that hides it): one `O_NOFOLLOW | O_DIRECTORY` open per component.
    fn open_dir_by_component(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        for c in rel.components() {
            if let Component::Normal(name) = c {
                cur = rustix::fs::openat(&cur, name, dir_flags(), Mode::empty())?;
            }
        }
        Ok(cur)
    }

    /// Turns a failed open of `rel` into a message saying what is there instead.
    fn explain(&self, rel: &Path, e: rustix::io::Errno, op: &'static str) -> BeneathError {
        let path = self.path_of(rel);
        match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => BeneathError::Symlink {
                path: self.first_link(rel).map_or(path, |l| self.path_of(l)),
            },
            rustix::io::Errno::NOTDIR => {
                // Name what the last component is, if it is still there.
                let kind = rel
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| self.open_dir("."), |p| self.open_dir(p))
                    .ok()
                    .and_then(|d| {
                        rel.file_name()
                            .and_then(|n| d.lstat(n).ok().flatten())
                            .map(|s| Kind::of(FileType::from_raw_mode(s.st_mode)))
                    });
                match kind {
                    Some(Kind::Symlink) => BeneathError::Symlink { path },
                    Some(k) => BeneathError::NotDir {
                        path,
                        kind: k.name(),
                    },
                    None => BeneathError::Io {
                        op,
                        path,
                        source: e.into(),
                    },
                }
            }
            _ => BeneathError::Io {
                op,
                path,
                source: e.into(),
            },
        }
    }

    /// The first component of `rel` that is a symbolic link, to name it in the error.
    fn first_link(&self, rel: &Path) -> Option<PathBuf> {
        let mut cur = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty()).ok()?;
        let mut so_far = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            so_far.push(name);
            match rustix::fs::openat(&cur, name, dir_flags(), Mode::empty()) {
                Ok(fd) => cur = fd,
                Err(_) => {
                    let st = rustix::fs::statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
                    return (FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
                        .then_some(so_far);
                }
            }
        }
        None
    }

    /// Opens directory `rel` below this one, or `None` when it does not exist.
    pub fn open_dir_if_exists(&self, rel: impl AsRef<Path>) -> Result<Option<Dir>> {
        match self.open_dir(rel) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `lstat` of one name in this directory; `None` when absent.
    pub fn lstat(&self, name: impl AsRef<OsStr>) -> Result<Option<Stat>> {
        let name = name.as_ref();
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io_at("stat", self.path_of(name))(e)),
        }
    }

    /// Whether `name` in this directory is a regular file (a link to one is not).
    pub fn has_file(&self, name: impl AsRef<OsStr>) -> bool {
        matches!(self.lstat(name), Ok(Some(s)) if FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
    }

    /// Refuses what a timeline must not contain: anything but a regular file or a
    /// directory, and a regular file with more than one hard link.
    pub fn check(&self, name: &OsStr, kind: Kind, nlink: u64) -> Result<()> {
        let path = self.path_of(name);
        match kind {
            Kind::Dir => Ok(()),
            Kind::File if nlink > 1 => Err(BeneathError::HardLink { path, links: nlink }),
            Kind::File => Ok(()),
            Kind::Symlink if self.rel.file_name() == Some(OsStr::new("pg_tblspc")) => {
                Err(BeneathError::Tablespace { path })
            }
            Kind::Symlink => Err(BeneathError::Symlink { path }),
            Kind::Special(kind) => Err(BeneathError::Special { path, kind }),
        }
    }

    /// Opens the regular file `name` in this directory for reading, refusing a link, a
    /// special file or a file with several hard links. Returns it with its `fstat`.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> Result<(File, Stat)> {
        self.open_regular(name.as_ref(), file_flags())
    }

    /// Opens the existing regular file `name` for reading and writing, refused as
    /// [`Dir::open_file`] refuses: whatever is written goes into this file only.
    pub fn open_file_rw(&self, name: impl AsRef<OsStr>) -> Result<(File, Stat)> {
        let flags =
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        self.open_regular(name.as_ref(), flags)
    }

    fn open_regular(&self, name: &OsStr, flags: OFlags) -> Result<(File, Stat)> {
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP => BeneathError::Symlink {
                path: self.path_of(name),
            },
            // A socket cannot be opened.
            rustix::io::Errno::NXIO => BeneathError::Special {
                path: self.path_of(name),
                kind: "socket",
            },
            e => io_at("open", self.path_of(name))(e),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(io_at("stat", self.path_of(name)))?;
        self.check(
            name,
            Kind::of(FileType::from_raw_mode(st.st_mode)),
            st.st_nlink,
        )?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(BeneathError::NotFile {
                path: self.path_of(name),
                kind: "directory",
            });
        }
        // Back to blocking reads (harmless for regular files, but keep it ordinary).
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(io_at("open", self.path_of(name)))?;
        Ok((File::from(fd), st))
    }

    /// Reads the whole regular file `name`.
    pub fn read(&self, name: impl AsRef<OsStr>) -> Result<Vec<u8>> {
        let name = name.as_ref();
        let (mut f, _) = self.open_file(name)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|source| BeneathError::Io {
            op: "read",
            path: self.path_of(name),
            source,
        })?;
        Ok(out)
    }

    /// Lists this directory from its descriptor, `lstat`ing each entry (no link is
    /// followed). Entries that vanish meanwhile are left out.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut rd =
            rustix::fs::Dir::read_from(&self.fd).map_err(io_at("read dir", self.rel.clone()))?;
        let mut out = Vec::new();
        while let Some(e) = rd.read() {
            let e = e.map_err(io_at("read dir", self.rel.clone()))?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let Some(st) = self.lstat(name)? else {
                continue;
            };
            out.push(Entry {
                name: name.to_os_string(),
                kind: Kind::of(FileType::from_raw_mode(st.st_mode)),
                mode: st.st_mode & 0o7777,
                nlink: st.st_nlink,
                len: st.st_size as u64,
                stat: st,
            });
        }
        Ok(out)
    }

    /// Creates directory `name` in this one with exactly `mode`, and opens it.
    pub fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<Dir> {
        let name = name.as_ref();
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700))
            .map_err(io_at("mkdir", self.path_of(name)))?;
        let d = self.open_dir(Path::new(name))?;
        rustix::fs::fchmod(&d.fd, Mode::from_raw_mode(mode))
            .map_err(io_at("chmod", self.path_of(name)))?;
        Ok(d)
    }

    /// Opens directory `name` in this one, creating it (with `mode`) if absent.
    pub fn ensure_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<Dir> {
        let name = name.as_ref();
        match self.open_dir(Path::new(name)) {
            Err(e) if e.is_not_found() => self.create_dir(name, mode),
            other => other,
        }
    }

    /// Creates the new regular file `name` with exactly `mode`, open for reading and
    /// writing; fails if anything (a link included) already has that name.
    pub fn create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> Result<File> {
        let name = name.as_ref();
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_at("create", self.path_of(name)))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(io_at("chmod", self.path_of(name)))?;
        Ok(File::from(fd))
    }

    /// Replaces `name` with a new file holding `data` (mode 0600): whatever had the name
    /// before (a link included) is unlinked first, never written through.
    pub fn write(&self, name: impl AsRef<OsStr>, data: &[u8], sync: bool) -> Result<()> {
        let name = name.as_ref();
        self.remove_file_if_exists(name)?;
        let mut f = self.create_file(name, 0o600)?;
        let werr = |source| BeneathError::Io {
            op: "write",
            path: self.path_of(name),
            source,
        };
        f.write_all(data).map_err(werr)?;
        if sync {
            f.sync_all().map_err(werr)?;
        }
        Ok(())
    }

    /// Unlinks the non-directory `name` (a link itself, not its target); absent is fine.
    pub fn remove_file_if_exists(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_at("remove", self.path_of(name))(e)),
        }
    }

    /// Removes `name` and, for a directory, everything below it, through descriptors: a
    /// link anywhere below is removed itself, never followed. Absent is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        let Some(st) = self.lstat(name)? else {
            return Ok(());
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
                Ok(fd) => {
                    let sub = Dir {
                        fd,
                        rel: self.path_of(name),
                    };
                    for e in sub.entries()? {
                        sub.remove_tree(&e.name)?;
                    }
                    match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
                        Err(e) => return Err(io_at("remove", self.path_of(name))(e)),
                    }
                }
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                // Swapped for a link or a file since the stat: unlink that instead.
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {}
                Err(e) => return Err(io_at("open directory", self.path_of(name))(e)),
            }
        }
        self.remove_file_if_exists(name)
    }

    /// Renames `from` in this directory to `to` in `dest` (atomic on one filesystem).
    pub fn rename(&self, from: impl AsRef<OsStr>, dest: &Dir, to: impl AsRef<OsStr>) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        rustix::fs::renameat(&self.fd, from, &dest.fd, to)
            .map_err(io_at("rename", self.path_of(from)))
    }

    /// Renames `from` in this directory to `to` in `dest` unless `to` already exists
    /// (`RENAME_NOREPLACE`: checked and done in one step, so nothing is ever overwritten).
    /// Returns `false`, moving nothing, when `to` exists.
    pub fn rename_no_replace(
        &self,
        from: impl AsRef<OsStr>,
        dest: &Dir,
        to: impl AsRef<OsStr>,
    ) -> Result<bool> {
        let (from, to) = (from.as_ref(), to.as_ref());
        match rustix::fs::renameat_with(
            &self.fd,
            from,
            &dest.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(e) => Err(io_at("rename", self.path_of(from))(e)),
        }
    }

    /// Makes this directory's entries durable.
    pub fn fsync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io_at("fsync", self.rel.clone()))
    }

    /// Prepares everything below this directory to be published durably by a rename and
    /// an fsync of the rename's directory, never following a link (a link's or special
    /// file's entry is covered by its directory).
    ///
    /// [`Durability::OrderedLog`] (XFS): each regular file's dirty data is written back
    /// and waited for — no fsync, no device flush. XFS journals every metadata change,
    /// a reflink clone's extent map or a new name alike, in one ordered log, and the
    /// publishing fsync forces that log up to the rename, so every earlier change with
    /// it (and its flush makes the written data stable first). This is what `syncfs`
    /// does on XFS, limited to this tree: `syncfs` also writes back whatever every other
    /// branch on the filesystem left dirty, which under load takes seconds.
    /// [`Durability::PerFile`] (any other filesystem): every file and directory fsynced.
    pub fn sync_tree(&self, how: Durability) -> Result<()> {
        for e in self.entries()? {
            match e.kind {
                Kind::Dir => self.open_dir(Path::new(&e.name))?.sync_tree(how)?,
                Kind::File => {
                    let fd =
                        match rustix::fs::openat(&self.fd, &e.name, file_flags(), Mode::empty()) {
                            Ok(fd) => fd,
                            // Replaced by a link or removed since the listing: nothing of ours.
                            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT) => continue,
                            Err(err) => return Err(io_at("open", self.path_of(&e.name))(err)),
                        };
                    match how {
                        Durability::OrderedLog => crate::clone::write_back(&fd)
                            .map_err(io_at("write back", self.path_of(&e.name)))?,
                        Durability::PerFile => {
                            rustix::fs::fsync(&fd).map_err(io_at("fsync", self.path_of(&e.name)))?
                        }
                    }
                }
                Kind::Symlink | Kind::Special(_) => {}
            }
        }
        match how {
            Durability::OrderedLog => Ok(()),
            Durability::PerFile => self.fsync(),
        }
    }

    /// The descriptor, for calls on the directory itself (`syncfs`, `statfs`).
    pub fn as_file(&self) -> Result<File> {
        let fd = rustix::io::dup(&self.fd).map_err(io_at("dup", self.rel.clone()))?;
        Ok(File::from(fd))
    }

    /// Permission bits of this directory.
    pub fn mode(&self) -> Result<u32> {
        let st = rustix::fs::fstat(&self.fd).map_err(io_at("stat", self.rel.clone()))?;
        Ok(st.st_mode & 0o7777)
    }

    /// Opens the data directory relative path of an absolute `path` below `root`
    /// (this directory being the data directory opened from `root`).
    pub fn open_dir_at(&self, root: &Path, path: &Path) -> Result<Dir> {
        let rel = path.strip_prefix(root).map_err(|_| BeneathError::Outside {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        })?;
        if rel.as_os_str().is_empty() {
            return self.open_dir(".");
        }
        self.open_dir(rel)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("data/tl/sub")).unwrap();
        fs::create_dir_all(t.path().join("outside")).unwrap();
        fs::write(t.path().join("outside/secret"), b"secret").unwrap();
        let root = Dir::open_root(&t.path().join("data")).unwrap();
        (t, root)
    }

    #[test]
    fn a_tree_is_synced_without_following_a_link_or_opening_a_fifo() {
        let (t, root) = setup();
        fs::write(t.path().join("data/tl/sub/f"), b"x").unwrap();
        // Opened for reading without O_NONBLOCK, a FIFO would block the sync for good.
        let fifo = t.path().join("outside/fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        symlink(&fifo, t.path().join("data/tl/to-fifo")).unwrap();
        symlink(t.path().join("outside"), t.path().join("data/tl/to-dir")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("data/tl/sub/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (done, rx) = std::sync::mpsc::channel();
        let tl = root.open_dir("tl").unwrap();
        std::thread::spawn(move || {
            let r = [Durability::PerFile, Durability::OrderedLog]
                .into_iter()
                .try_for_each(|how| tl.sync_tree(how));
            done.send(r.map_err(|e| e.to_string()))
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("sync_tree blocked on a FIFO or followed a link");
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn a_link_anywhere_on_the_path_is_refused_and_named() {
        let (t, root) = setup();
        symlink(t.path().join("outside"), t.path().join("data/tl/link")).unwrap();
        let e = root.open_dir("tl/link").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        assert!(
            e.to_string().starts_with("tl/link is a symbolic link"),
            "{e}"
        );
        let e = root.open_dir("tl/link/x").unwrap_err();
        assert!(
            e.to_string().starts_with("tl/link is a symbolic link"),
            "{e}"
        );
        assert!(matches!(
            root.open_dir("tl/../tl"),
            Err(BeneathError::Outside { .. })
        ));
        // The per-component fallback refuses the same.
        // (O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR; explain() names it a link.)
        let errno = root
            .open_dir_by_component(Path::new("tl/link"))
            .unwrap_err();
        assert!(
            matches!(errno, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR),
            "{errno}"
        );
        assert!(matches!(
            root.explain(Path::new("tl/link"), errno, "open directory"),
            BeneathError::Symlink { .. }
        ));
        assert!(root.open_dir_by_component(Path::new("tl/sub")).is_ok());
    }

    #[test]
    fn files_links_fifos_and_hard_links_are_told_apart() {
        let (t, root) = setup();
        let tl = root.open_dir("tl").unwrap();
        fs::write(t.path().join("data/tl/plain"), b"x").unwrap();
        symlink(
            t.path().join("outside/secret"),
            t.path().join("data/tl/link"),
        )
        .unwrap();
        fs::hard_link(
            t.path().join("outside/secret"),
            t.path().join("data/tl/hard"),
        )
        .unwrap();
        nix::unistd::mkfifo(
            &t.path().join("data/tl/fifo"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        assert_eq!(tl.read("plain").unwrap(), b"x");
        let e = tl.read("link").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        let e = tl.read("hard").unwrap_err();
        assert!(e.to_string().contains("tl/hard has 2 hard links"), "{e}");
        // Opening a FIFO must not block, and is refused.
        let e = tl.read("fifo").unwrap_err();
        assert!(e.to_string().contains("tl/fifo is a FIFO"), "{e}");
        assert!(!tl.has_file("link") && tl.has_file("plain"));
    }

    #[test]
    fn writing_and_deleting_never_go_through_a_link() {
        let (t, root) = setup();
        let tl = root.open_dir("tl").unwrap();
        symlink(t.path().join("outside/secret"), t.path().join("data/tl/f")).unwrap();
        tl.write("f", b"mine", true).unwrap();
        assert_eq!(
            fs::read(t.path().join("outside/secret")).unwrap(),
            b"secret"
        );
        assert_eq!(fs::read(t.path().join("data/tl/f")).unwrap(), b"mine");
        assert!(tl.create_file("f", 0o600).is_err(), "create never replaces");
        // A tree with links to outside: the links go, their targets stay.
        symlink(
            t.path().join("outside"),
            t.path().join("data/tl/sub/dirlink"),
        )
        .unwrap();
        symlink(
            t.path().join("outside/secret"),
            t.path().join("data/tl/sub/filelink"),
        )
        .unwrap();
        root.remove_tree("tl").unwrap();
        assert!(!t.path().join("data/tl").exists());
        assert_eq!(
            fs::read(t.path().join("outside/secret")).unwrap(),
            b"secret"
        );
        // A link in place of the tree itself: the link goes.
        symlink(t.path().join("outside"), t.path().join("data/tl")).unwrap();
        root.remove_tree("tl").unwrap();
        assert!(t.path().join("outside/secret").exists());
        assert!(fs::symlink_metadata(t.path().join("data/tl")).is_err());
    }

    #[test]
    fn a_tablespace_link_is_named_as_such() {
        let (t, root) = setup();
        fs::create_dir_all(t.path().join("data/tl/pg_tblspc")).unwrap();
        symlink(
            t.path().join("outside"),
            t.path().join("data/tl/pg_tblspc/16390"),
        )
        .unwrap();
        let d = root.open_dir("tl/pg_tblspc").unwrap();
        let e = d.entries().unwrap();
        assert_eq!(e.len(), 1);
        let err = d.check(&e[0].name, e[0].kind, e[0].nlink).unwrap_err();
        assert!(err.to_string().contains("tablespace"), "{err}");
    }
}
