//! The unprivileged OS user Postgres runs as.
//!
//! Postgres refuses to start as root. When Ramify itself runs as root (CI, containers)
//! it drops to an unprivileged user for every Postgres program and hands that user the
//! files it prepares; otherwise everything simply runs as the current user.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The user a root process runs Postgres as when none is requested.
pub const DEFAULT_PG_USER: &str = "postgres";

/// Errors resolving the Postgres user or handing files to it.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user database could not be read.
    #[error("could not look up OS user `{name}`: {source}")]
    Lookup {
        /// The user name looked up.
        name: String,
        /// Why the lookup failed.
        #[source]
        source: nix::Error,
    },
    /// The requested user does not exist.
    #[error(
        "OS user `{name}` does not exist; create the `postgres` user \
         (apt-get install postgresql-15 does) or pass --pg-user"
    )]
    NoSuchUser {
        /// The missing user name.
        name: String,
    },
    /// The requested user has uid 0.
    #[error(
        "Postgres refuses to run as root and `{name}` has uid 0; create the `postgres` user \
         (apt-get install postgresql-15 does) or pass --pg-user"
    )]
    IsRoot {
        /// The user name that maps to uid 0.
        name: String,
    },
    /// A non-root process asked to run Postgres as someone else.
    #[error(
        "cannot run Postgres as `{requested}`: this process runs as `{current}` and is not root; \
         omit --pg-user or run as root"
    )]
    CannotSwitch {
        /// The user asked for.
        requested: String,
        /// The user this process runs as.
        current: String,
    },
    /// The current uid has no passwd entry.
    #[error("the current uid {uid} has no entry in the user database")]
    CurrentUnknown {
        /// The current uid.
        uid: u32,
    },
    /// Changing ownership of a path failed.
    #[error("could not give {} to user `{user}`: {source}", path.display())]
    Chown {
        /// The path whose owner was being changed.
        path: PathBuf,
        /// The user it was being given to.
        user: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Walking a directory tree failed.
    #[error("could not read directory {}: {source}", path.display())]
    ReadDir {
        /// The directory being read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// The OS user Postgres runs as, and whether starting a program as it means dropping root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUser {
    name: String,
    uid: Uid,
    gid: Gid,
    home: PathBuf,
    switch: bool,
}

impl PgUser {
    /// As root: the `requested` user or `postgres`, which must exist and not be uid 0.
    /// Otherwise: the current user (requesting anyone else is an error).
    pub fn resolve(requested: Option<&str>) -> Result<Self, UserError> {
        let me = Uid::current();
        if me.is_root() {
            let name = requested.unwrap_or(DEFAULT_PG_USER);
            let user = User::from_name(name)
                .map_err(|source| UserError::Lookup {
                    name: name.to_owned(),
                    source,
                })?
                .ok_or_else(|| UserError::NoSuchUser {
                    name: name.to_owned(),
                })?;
            if user.uid.is_root() {
                return Err(UserError::IsRoot {
                    name: name.to_owned(),
                });
            }
            return Ok(Self::from_user(user, true));
        }
        let user = User::from_uid(me)
            .map_err(|source| UserError::Lookup {
                name: format!("uid {me}"),
                source,
            })?
            .ok_or(UserError::CurrentUnknown { uid: me.as_raw() })?;
        match requested {
            Some(requested) if requested != user.name => Err(UserError::CannotSwitch {
                requested: requested.to_owned(),
                current: user.name,
            }),
            _ => Ok(Self::from_user(user, false)),
        }
    }

    fn from_user(user: User, switch: bool) -> Self {
        Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
            switch,
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid.as_raw()
    }

    /// The numeric primary group id.
    pub fn gid(&self) -> u32 {
        self.gid.as_raw()
    }

    /// True when this process is root and programs run as this user drop privileges.
    pub fn switches_user(&self) -> bool {
        self.switch
    }

    /// Makes `cmd` run as this user (uid, gid, no supplementary groups, HOME/USER/LOGNAME,
    /// cwd `/`) when we are root; leaves it unchanged otherwise.
    pub fn apply_std<'c>(
        &self,
        cmd: &'c mut std::process::Command,
    ) -> &'c mut std::process::Command {
        use std::os::unix::process::CommandExt;
        if self.switch {
            // std clears supplementary groups (setgroups(0)) when root sets a uid.
            cmd.uid(self.uid.as_raw())
                .gid(self.gid.as_raw())
                .env("HOME", &self.home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name)
                // root's cwd is often unreadable by the user; Postgres tools warn or fail.
                .current_dir("/");
        }
        cmd
    }

    /// [`PgUser::apply_std`] for a `tokio::process::Command`.
    pub fn apply_tokio<'c>(
        &self,
        cmd: &'c mut tokio::process::Command,
    ) -> &'c mut tokio::process::Command {
        self.apply_std(cmd.as_std_mut());
        cmd
    }

    /// Gives `path` (not following a symlink) to this user when we are root; a no-op otherwise.
    pub fn chown(&self, path: &Path) -> Result<(), UserError> {
        if !self.switch {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw())).map_err(
            |source| UserError::Chown {
                path: path.to_path_buf(),
                user: self.name.clone(),
                source,
            },
        )
    }

    /// Gives `path` and everything below it to this user when we are root, never
    /// following symlinks; a no-op otherwise.
    pub fn chown_recursive(&self, path: &Path) -> Result<(), UserError> {
        if !self.switch {
            return Ok(());
        }
        self.chown(path)?;
        let meta = std::fs::symlink_metadata(path).map_err(|source| UserError::Chown {
            path: path.to_path_buf(),
            user: self.name.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Ok(());
        }
        let read_dir_err = |source| UserError::ReadDir {
            path: path.to_path_buf(),
            source,
        };
        for entry in std::fs::read_dir(path).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            self.chown_recursive(&entry.path())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_without_request() {
        let user = PgUser::resolve(None).expect("a postgres user (root) or the current user");
        if Uid::current().is_root() {
            assert_eq!(user.name(), DEFAULT_PG_USER);
            assert!(user.switches_user());
            assert_ne!(user.uid(), 0);
        } else {
            assert_eq!(user.uid(), Uid::current().as_raw());
            assert!(!user.switches_user());
        }
    }

    #[test]
    fn root_is_refused() {
        if Uid::current().is_root() {
            let err = PgUser::resolve(Some("root")).unwrap_err();
            assert!(matches!(err, UserError::IsRoot { .. }), "{err}");
            assert!(err.to_string().contains("refuses to run as root"));
        } else {
            let err = PgUser::resolve(Some("root")).unwrap_err();
            assert!(matches!(err, UserError::CannotSwitch { .. }), "{err}");
        }
    }

    #[test]
    fn missing_user_is_named() {
        if !Uid::current().is_root() {
            return;
        }
        let err = PgUser::resolve(Some("no_such_ramify_user")).unwrap_err();
        assert!(err
            .to_string()
            .contains("`no_such_ramify_user` does not exist"));
    }

    #[test]
    fn chown_recursive_hands_over_a_tree() {
        let Ok(user) = PgUser::resolve(None) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("a/link")).unwrap();
        user.chown_recursive(dir.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::metadata(dir.path().join("a/b/f")).unwrap();
        assert_eq!(f.uid(), user.uid());
        // The symlink's target was not touched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
