//! Which data directory local mode uses, and whether the Postgres user can reach it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Where local mode lives for root: the `postgres` user cannot enter /root.
pub const ROOT_DEFAULT: &str = "/var/lib/ramify";

/// The default data directory: `/var/lib/ramify` for root, else
/// `$XDG_DATA_HOME/ramify` (when set and absolute) or `$HOME/.local/share/ramify`.
pub fn default_data_dir(
    is_root: bool,
    home: Option<&Path>,
    xdg_data_home: Option<&Path>,
) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from(ROOT_DEFAULT));
    }
    if let Some(xdg) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Some(xdg.join("ramify"));
    }
    home.filter(|h| h.is_absolute())
        .map(|h| h.join(".local/share/ramify"))
}

/// The data directory to use, absolute (the daemon changes to `/`, and relative paths
/// would mean something else to it).
pub fn resolve(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d,
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let xdg = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from);
            default_data_dir(
                nix::unistd::Uid::effective().is_root(),
                home.as_deref(),
                xdg.as_deref(),
            )
            .context(
                "no data directory: $HOME is not set; pass --data-dir or set RAMIFY_DATA_DIR",
            )?
        }
    };
    if dir.as_os_str().is_empty() {
        bail!("--data-dir is empty; pass a directory");
    }
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .context("cannot resolve a relative --data-dir: the current directory is unreadable")?
            .join(dir)
    };
    Ok(normalize(&dir))
}

/// Removes `.` and `..` components without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether a user with `uid`/`gid` may enter a directory with this owner and mode.
pub fn can_search(mode: u32, owner_uid: u32, owner_gid: u32, uid: u32, gid: u32) -> bool {
    if uid == owner_uid {
        mode & 0o100 != 0
    } else if gid == owner_gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Fails with a clear message when some existing ancestor of `dir` is closed to the user
/// the daemon will run as (the classic case: a data directory under /root).
pub fn check_reachable(dir: &Path, user: &str, uid: u32, gid: u32) -> anyhow::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if !can_search(meta.mode(), meta.uid(), meta.gid(), uid, gid) {
            bail!(
                "the data directory {} is inside {}, which user `{user}` (who runs Postgres) cannot enter; \
                 use a --data-dir it can reach, like {ROOT_DEFAULT}",
                dir.display(),
                ancestor.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_depend_on_who_runs() {
        let home = Path::new("/home/ann");
        assert_eq!(
            default_data_dir(true, Some(Path::new("/root")), None),
            Some(PathBuf::from("/var/lib/ramify"))
        );
        assert_eq!(
            default_data_dir(false, Some(home), None),
            Some(PathBuf::from("/home/ann/.local/share/ramify"))
        );
        assert_eq!(
            default_data_dir(false, Some(home), Some(Path::new("/data/xdg"))),
            Some(PathBuf::from("/data/xdg/ramify"))
        );
        assert_eq!(
            default_data_dir(false, Some(home), Some(Path::new("relative"))),
            Some(PathBuf::from("/home/ann/.local/share/ramify"))
        );
        assert_eq!(default_data_dir(false, None, None), None);
    }

    #[test]
    fn explicit_dirs_become_absolute() {
        assert_eq!(
            resolve(Some(PathBuf::from("/a/./b/../c"))).unwrap(),
            PathBuf::from("/a/c")
        );
        let rel = resolve(Some(PathBuf::from("data"))).unwrap();
        assert!(rel.is_absolute() && rel.ends_with("data"), "{rel:?}");
        assert!(resolve(Some(PathBuf::new())).is_err());
    }

    #[test]
    fn search_permission_follows_owner_group_other() {
        // /root: drwx------ root root
        assert!(!can_search(0o40700, 0, 0, 105, 112));
        assert!(can_search(0o40700, 0, 0, 0, 0));
        // /var/lib: drwxr-xr-x
        assert!(can_search(0o40755, 0, 0, 105, 112));
        // group-only access
        assert!(can_search(0o40750, 0, 112, 105, 112));
        assert!(!can_search(0o40750, 0, 111, 105, 112));
        // owner without x is refused even if others have it
        assert!(!can_search(0o40611, 105, 0, 105, 112));
    }

    #[test]
    fn closed_ancestor_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let meta = std::fs::metadata(&closed).unwrap();
        // A user that is neither owner nor in the group.
        let (uid, gid) = (meta.uid() + 1, meta.gid() + 1);
        let err = check_reachable(&closed.join("ramify"), "postgres", uid, gid).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&closed.display().to_string()), "{msg}");
        assert!(msg.contains("cannot enter"), "{msg}");
        check_reachable(&closed.join("ramify"), "me", meta.uid(), meta.gid()).unwrap();
    }
}
