//! Confining what a child process may write to one directory, with Landlock (Linux 5.13
//! and newer; no privilege needed).
//!
//! The initial copy of a following root is `pg_basebackup`, which writes what a remote
//! server sends: a tablespace where the server says it lives, files named as the server
//! names them. A hostile or impersonated source could make it write anywhere the node's
//! OS user may — into another timeline's PGDATA. [`WriteJail`] takes every write-type
//! right away from the child except beneath the staging directory (and writing to
//! `/dev/null`); reads, execution and the network stay as they were. The rights are
//! dropped between `fork` and `exec` with two system calls and nothing else, so the
//! child of a multi-threaded node runs no allocator before `exec`.
//!
//! With `clone.rs`, one of the two modules of the storage node with `unsafe` code: the
//! three Landlock system calls, `prctl` and a `pre_exec` hook, on descriptors we own.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

// System call numbers (the same on every architecture since Linux 5.13).
const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_ADD_RULE: libc::c_long = 445;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

// Filesystem access rights (include/uapi/linux/landlock.h).
const WRITE_FILE: u64 = 1 << 1;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
/// ABI 2: linking or renaming across directories.
const REFER: u64 = 1 << 13;
/// ABI 3: truncating a file.
const TRUNCATE: u64 = 1 << 14;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, `None` without Landlock (too old,
/// or not among the enabled security modules).
pub fn abi() -> Option<u32> {
    // SAFETY: a query with a null attribute and size 0, as the ABI documents.
    let v = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v >= 1).then_some(v as u32)
}

/// Every write-type right this kernel's Landlock knows.
fn write_rights(abi: u32) -> u64 {
    let mut r = WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        r |= REFER;
    }
    if abi >= 3 {
        r |= TRUNCATE;
    }
    r
}

/// A Landlock ruleset allowing writes only beneath one directory, ready to be entered by
/// a child process ([`WriteJail::confine`]).
#[derive(Debug)]
pub struct WriteJail {
    ruleset: OwnedFd,
}

impl WriteJail {
    /// A jail whose only writable place is `dir` and what lies beneath it (and
    /// `/dev/null`). `Ok(None)` when the kernel has no Landlock.
    pub fn beneath(dir: &Path) -> io::Result<Option<WriteJail>> {
        Self::beneath_all(&[dir])
    }

    /// A jail whose writable places are `dirs` and what lies beneath them (and
    /// `/dev/null`). `Ok(None)` when the kernel has no Landlock.
    pub fn beneath_all(dirs: &[&Path]) -> io::Result<Option<WriteJail>> {
        let Some(abi) = abi() else {
            return Ok(None);
        };
        let handled = write_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: handled,
        };
        // SAFETY: a valid attribute of the size passed; the result is a new descriptor.
        let fd = unsafe {
            libc::syscall(
                SYS_LANDLOCK_CREATE_RULESET,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for dir in dirs {
            add_beneath(&ruleset, dir, handled)?;
        }
        add_beneath(
            &ruleset,
            Path::new("/dev/null"),
            handled & (WRITE_FILE | TRUNCATE),
        )?;
        Ok(Some(WriteJail { ruleset }))
    }

    /// Makes the child `cmd` spawns enter the jail just before it execs: it can no longer
    /// gain privileges (`no_new_privs`, which Landlock requires) nor write outside the
    /// directory. `self` must outlive the spawn.
    pub fn confine(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.ruleset.as_raw_fd();
        // SAFETY: the closure makes two system calls and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0u32) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Makes the child `cmd` spawns receive `signal` when the thread that spawned it ends
/// (the node's runtime worker, i.e. the node): a Postgres the node runs for itself never
/// outlives it. Set after the child's user is switched, which would clear it.
pub fn die_with_parent(cmd: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: one system call, touching no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn add_beneath(ruleset: &OwnedFd, path: &Path, allowed: u64) -> io::Result<()> {
    let target = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let attr = PathBeneathAttr {
        allowed_access: allowed,
        parent_fd: target.as_raw_fd(),
    };
    // SAFETY: valid descriptors and an attribute of the rule type given.
    let r = unsafe {
        libc::syscall(
            SYS_LANDLOCK_ADD_RULE,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jail's promise, on this kernel: a shell inside it creates files beneath the
    /// directory and nowhere else, not even through a link planted inside pointing out.
    #[test]
    fn a_jailed_child_writes_only_beneath_its_directory() {
        if abi().is_none() {
            assert!(
                std::env::var("RAMIFY_REQUIRE_LANDLOCK").as_deref() != Ok("1"),
                "this kernel has no Landlock"
            );
            eprintln!("skipped: this kernel has no Landlock");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let inside = t.path().join("inside");
        let outside = t.path().join("outside");
        std::fs::create_dir(&inside).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("link")).unwrap();
        let jail = WriteJail::beneath(&inside).unwrap().expect("landlock");
        let script = format!(
            "echo a > {i}/file && mkdir {i}/dir && echo b > {i}/dir/f && echo c > /dev/null; \
             echo d > {o}/escaped; echo e > {i}/link/through-link; mkdir {o}/d; \
             mv {i}/file {o}/moved; exit 0",
            i = inside.display(),
            o = outside.display()
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        jail.confine(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(inside.join("dir/f").exists(), "{out:?}");
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "the jailed child wrote outside its directory: {:?}; stderr: {}",
            std::fs::read_dir(&outside).unwrap().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(inside.join("file").exists(), "a move out was refused");
        // The parent itself is not confined.
        std::fs::write(outside.join("parent"), b"ok").unwrap();
    }
}
