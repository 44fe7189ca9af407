//! Scratch directories for tests, on a loop-mounted reflink XFS volume when possible.
//!
//! Copy-on-write assertions need a filesystem with reflinks. As root with xfsprogs
//! installed, [`Scratch::reflink`] formats a sparse image file and loop-mounts it;
//! anywhere else it falls back to a plain temp dir and says so once on stderr.
//! Dropping a `Scratch` always unmounts and deletes everything, also while a test
//! panics: it first tries `umount`, then SIGKILLs whatever still uses the mount
//! (a leaked Postgres), retries, and finally detaches lazily.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use ramify_compute::PgUser;

/// mkfs.xfs refuses filesystems smaller than 300 MB; the image is sparse, so round up.
const MIN_XFS_BYTES: u64 = 512 * 1024 * 1024;

static NOTICE_PRINTED: AtomicBool = AtomicBool::new(false);

/// Errors creating or inspecting a scratch directory.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// Creating or preparing a directory failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `statvfs` or `syncfs` failed.
    #[error("{call} on {} failed: {source}", path.display())]
    Sys {
        /// The system call.
        call: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The Postgres user could not be given the directory.
    #[error(transparent)]
    User(#[from] ramify_compute::UserError),
}

/// A test's scratch directory; everything in it is deleted on drop.
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
    path: PathBuf,
    image: Option<PathBuf>,
}

impl Scratch {
    /// A scratch directory on a fresh loop-mounted XFS volume with reflinks (at least
    /// 512 MiB, sparse) owned by the Postgres user; falls back to a plain temp dir when
    /// not root, without xfsprogs, or when mounting fails.
    pub fn reflink(size_bytes: u64) -> Result<Self, ScratchError> {
        let user = PgUser::resolve(None).ok();
        let root = make_root()?;
        let reason = if !Uid::effective().is_root() {
            "not running as root".to_owned()
        } else if find_program("mkfs.xfs").is_none() {
            "mkfs.xfs not found (apt-get install xfsprogs)".to_owned()
        } else if find_program("mount").is_none() || find_program("losetup").is_none() {
            "mount or losetup not found".to_owned()
        } else {
            match mount_xfs(&root, size_bytes.max(MIN_XFS_BYTES)) {
                Ok((image, mountpoint)) => {
                    let scratch = Self {
                        root,
                        path: mountpoint,
                        image: Some(image),
                    };
                    if let Some(user) = &user {
                        user.chown(&scratch.path)?;
                    }
                    return Ok(scratch);
                }
                Err(reason) => reason,
            }
        };
        if !NOTICE_PRINTED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ramify-testkit: reflink scratch unavailable ({reason}); \
                 copy-on-write assertions are skipped"
            );
        }
        Self::plain_in(root, user.as_ref())
    }

    /// A plain temp directory (no reflinks) owned by the Postgres user.
    pub fn plain() -> Result<Self, ScratchError> {
        let user = PgUser::resolve(None).ok();
        Self::plain_in(make_root()?, user.as_ref())
    }

    fn plain_in(root: PathBuf, user: Option<&PgUser>) -> Result<Self, ScratchError> {
        let path = root.join("fs");
        let scratch = Self {
            root,
            path,
            image: None,
        };
        std::fs::create_dir(&scratch.path).map_err(io_err("create", &scratch.path))?;
        chmod(&scratch.path, 0o755)?;
        if let Some(user) = user {
            user.chown(&scratch.path)?;
        }
        Ok(scratch)
    }

    /// The directory tests work in (the mount point when reflinks are available).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when [`Scratch::path`] is on a reflink-capable XFS volume.
    pub fn is_reflink(&self) -> bool {
        self.image.is_some()
    }

    /// The loop-mounted image file, when reflinks are available.
    pub fn image(&self) -> Option<&Path> {
        self.image.as_deref()
    }

    /// Bytes in use on the filesystem holding [`Scratch::path`] (`statvfs`:
    /// (blocks - free blocks) × fragment size); shared reflinked extents count once.
    pub fn df_used_bytes(&self) -> Result<u64, ScratchError> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|source| ScratchError::Sys {
            call: "statvfs",
            path: self.path.clone(),
            source,
        })?;
        // fsblkcnt_t and c_ulong are u32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let used_blocks = u64::from(st.blocks()).saturating_sub(u64::from(st.blocks_free()));
        #[allow(clippy::useless_conversion)]
        let fragment = u64::from(st.fragment_size());
        Ok(used_blocks * fragment)
    }

    /// Flushes the filesystem holding [`Scratch::path`] (`syncfs`), so space numbers
    /// reflect delayed allocation.
    pub fn sync(&self) -> Result<(), ScratchError> {
        let dir = std::fs::File::open(&self.path).map_err(io_err("open", &self.path))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|source| ScratchError::Sys {
            call: "syncfs",
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            unmount(&self.path);
            detach_loops(image);
        }
        if is_mounted(&self.path) {
            eprintln!(
                "ramify-testkit: {} is still mounted; leaving {} in place",
                self.path.display(),
                self.root.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!(
                "ramify-testkit: could not remove {}: {e}",
                self.root.display()
            );
        }
    }
}

/// A fresh `ramify-scratch-*` dir under /var/tmp (else the system temp dir), mode 0755
/// so the Postgres user can traverse it.
fn make_root() -> Result<PathBuf, ScratchError> {
    let var_tmp = Path::new("/var/tmp");
    let base = if var_tmp.is_dir() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = tempfile::Builder::new()
        .prefix("ramify-scratch-")
        .tempdir_in(&base)
        .map_err(io_err("create a temp dir in", &base))?
        .keep();
    chmod(&root, 0o755)?;
    Ok(root)
}

/// Creates `<root>/xfs.img`, formats and mounts it on `<root>/mnt`; on failure undoes
/// what it did and returns the reason.
fn mount_xfs(root: &Path, size: u64) -> Result<(PathBuf, PathBuf), String> {
    let image = root.join("xfs.img");
    let mountpoint = root.join("mnt");
    let file =
        std::fs::File::create(&image).map_err(|e| format!("create {}: {e}", image.display()))?;
    file.set_len(size)
        .map_err(|e| format!("size {}: {e}", image.display()))?;
    drop(file);
    run_quiet(
        Command::new(program("mkfs.xfs"))
            .args(["-q", "-m", "reflink=1"])
            .arg(&image),
    )?;
    std::fs::create_dir(&mountpoint)
        .map_err(|e| format!("create {}: {e}", mountpoint.display()))?;
    run_quiet(
        Command::new(program("mount"))
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mountpoint),
    )?;
    if let Err(e) = std::fs::set_permissions(&mountpoint, std::fs::Permissions::from_mode(0o755)) {
        unmount(&mountpoint);
        detach_loops(&image);
        return Err(format!("chmod {}: {e}", mountpoint.display()));
    }
    Ok((image, mountpoint))
}

/// Unmounts `mountpoint`; if busy, SIGKILLs the processes using it and retries, then
/// falls back to a lazy unmount.
fn unmount(mountpoint: &Path) {
    if run_quiet(Command::new(program("umount")).arg(mountpoint)).is_ok() || !is_mounted(mountpoint)
    {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let users = processes_using(mountpoint);
        for &pid in &users {
            eprintln!(
                "ramify-testkit: killing pid {pid} ({}), which still uses {}",
                process_name(pid),
                mountpoint.display()
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        if run_quiet(Command::new(program("umount")).arg(mountpoint)).is_ok()
            || !is_mounted(mountpoint)
        {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "ramify-testkit: {} stays busy; detaching it lazily (umount -l)",
        mountpoint.display()
    );
    if let Err(e) = run_quiet(Command::new(program("umount")).arg("-l").arg(mountpoint)) {
        eprintln!("ramify-testkit: {e}");
    }
}

/// Detaches every loop device backed by `image` (`losetup -j`); `mount -o loop` sets
/// autoclear, so usually there is none left.
fn detach_loops(image: &Path) {
    let Ok(out) = Command::new(program("losetup"))
        .arg("-j")
        .arg(image)
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((device, _)) = line.split_once(':') {
            if let Err(e) = run_quiet(Command::new(program("losetup")).arg("-d").arg(device)) {
                eprintln!("ramify-testkit: {e}");
            }
        }
    }
}

/// Whether `/proc/mounts` lists `mountpoint`.
fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let wanted = mountpoint.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes spaces and the like as octal.
        .any(|m| m.replace("\\040", " ") == wanted)
}

/// Pids (other than ours) whose cwd, root or an open file lies under `dir`.
fn processes_using(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
            under(proc.join("cwd"))
                || under(proc.join("root"))
                || std::fs::read_dir(proc.join("fd"))
                    .is_ok_and(|fds| fds.filter_map(Result::ok).any(|fd| under(fd.path())))
        })
        .collect()
}

fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

/// `name` on `$PATH` or in the sbin directories a non-login root shell may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// [`find_program`], or the bare name for the error message to mention.
fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `cmd`, returning a one-line description of the failure with its stderr.
fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let described = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{described}` could not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{described}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn chmod(path: &Path, mode: u32) -> Result<(), ScratchError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ScratchError {
    let path = path.to_path_buf();
    move |source| ScratchError::Io {
        action,
        path,
        source,
    }
}
