//! Ramify's generated Postgres settings: the `ramify.conf` include file.
//!
//! Rendering is pure; [`ensure_include`] is the only function here that touches disk.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The generated include file's name inside PGDATA.
pub const RAMIFY_CONF: &str = "ramify.conf";

/// The line that makes `postgresql.conf` read the generated file `file`.
pub fn include_line(file: &str) -> String {
    format!("include_if_exists = '{file}'")
}

/// Longest Unix socket path Postgres accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors rendering settings or editing `postgresql.conf`.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A parameter name is not a plain lower-case Postgres setting name.
    #[error(
        "invalid Postgres parameter name {name:?}: use lower-case letters, digits, `_` and `.` \
         (e.g. shared_buffers, auto_explain.log_min_duration)"
    )]
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// A parameter the one list in `ramify_api::parameters` refuses: it would run a
    /// program, load code, name a server file, change recovery, replication or
    /// archiving, or override a setting Ramify controls.
    #[error("{}", ramify_api::parameters::refusal_message(name, *why))]
    Refused {
        /// The offending name.
        name: String,
        /// Why it is refused.
        why: ramify_api::parameters::Refusal,
    },
    /// A value contains a NUL byte, which a configuration file cannot hold.
    #[error("value of Postgres parameter `{name}` contains a NUL byte")]
    InvalidValue {
        /// The parameter whose value is invalid.
        name: String,
    },
    /// The archive command is empty (WAL would pile up forever).
    #[error(
        "archive_command must not be empty: with archive_mode = on, WAL would never be archived"
    )]
    EmptyArchiveCommand,
    /// The socket directory cannot be used by Postgres.
    #[error("unix socket directory {}: {reason}", run_dir.display())]
    RunDir {
        /// The directory.
        run_dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a configuration file failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Everything Ramify writes into a compute's `ramify.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeSettings {
    /// TCP port (also names the Unix socket `.s.PGSQL.<port>`).
    pub port: u16,
    /// `listen_addresses`, e.g. `127.0.0.1`, `*`, or empty for sockets only.
    pub listen_addresses: String,
    /// The Unix socket directory (the timeline's `run/`), also where the server log goes.
    pub run_dir: PathBuf,
    /// The shell command archiving one WAL segment (`%p`, `%f` as Postgres defines them).
    pub archive_command: String,
    /// The user's `postgresParameters`, written last.
    pub parameters: BTreeMap<String, String>,
    /// Set for a following root: the compute runs as a hot standby of its source.
    pub standby: Option<Standby>,
    /// `archive_timeout` in seconds ([`DURABLE_ARCHIVE_TIMEOUT_SECS`] for a branch kept in
    /// a backup repository): a quiet
    /// branch still switches WAL segments this often, which bounds what losing the
    /// storage node's volume loses. `None`: only full segments are archived.
    pub archive_timeout_secs: Option<u32>,
}

/// `archive_timeout` of a branch kept in a backup repository, in seconds: what the loss of
/// its storage node's volume may lose at most, when it writes too little to fill a WAL
/// segment sooner (the node pushes what is archived within about a second).
pub const DURABLE_ARCHIVE_TIMEOUT_SECS: u32 = 60;

/// How a following root's compute streams from its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// The source's connection string as the node shows it (no password), a URI or
    /// `key=value` pairs.
    pub conninfo: String,
    /// The password file `primary_conninfo` names (absolute, as the compute sees it).
    pub passfile: PathBuf,
    /// The physical replication slot to stream from.
    pub slot: Option<String>,
}

impl Standby {
    /// `primary_conninfo`: the source plus the password file and an application name
    /// the source's `pg_stat_replication` shows.
    pub fn primary_conninfo(&self) -> String {
        let passfile = self.passfile.to_string_lossy();
        append_conninfo(
            &self.conninfo,
            &[("passfile", &passfile), ("application_name", "ramify")],
        )
    }
}

/// Appends `params` to a libpq connection string: as query parameters to a URI
/// (`postgresql://…`), as quoted `key=value` pairs otherwise. A parameter already in
/// the string is left to the later value (libpq takes the last one).
pub fn append_conninfo(conninfo: &str, params: &[(&str, &str)]) -> String {
    let trimmed = conninfo.trim();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        let mut out = trimmed.to_owned();
        for (k, v) in params {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(k);
            out.push('=');
            out.push_str(&percent_encode(v));
        }
        out
    } else {
        let mut out = trimmed.to_owned();
        for (k, v) in params {
            let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
            out.push_str(&format!(" {k}='{quoted}'"));
        }
        out
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn percent_encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ComputeSettings {
    /// Renders `ramify.conf`, validating the socket directory and every user parameter.
    pub fn render(&self) -> Result<String, SettingsError> {
        let settings = self.settings()?;
        let mut out = String::from(
            "# Generated by Ramify on every start; edits are overwritten.\n\
             # Set your own parameters through the branch's postgresParameters.\n",
        );
        for (i, (name, value)) in settings.iter().enumerate() {
            if i == settings.len() - self.parameters.len() && !self.parameters.is_empty() {
                out.push_str("# postgresParameters\n");
            }
            out.push_str(name);
            out.push_str(" = ");
            out.push_str(&quote(value));
            out.push('\n');
        }
        Ok(out)
    }

    /// The same settings as `postgres` command-line arguments (`-c name=value` pairs),
    /// for a compute whose configuration files Ramify does not write (a Pod).
    pub fn args(&self) -> Result<Vec<String>, SettingsError> {
        Ok(self
            .settings()?
            .into_iter()
            .flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")])
            .collect())
    }

    /// Every setting, Ramify's first and then the user's, validated.
    pub fn settings(&self) -> Result<Vec<(String, String)>, SettingsError> {
        let run_dir = self.run_dir.to_str().ok_or_else(|| SettingsError::RunDir {
            run_dir: self.run_dir.clone(),
            reason: "path is not valid UTF-8".to_owned(),
        })?;
        if !self.run_dir.is_absolute() {
            return Err(SettingsError::RunDir {
                run_dir: self.run_dir.clone(),
                reason: "path must be absolute".to_owned(),
            });
        }
        if run_dir.contains([',', '"']) {
            return Err(SettingsError::RunDir {
                run_dir: self.run_dir.clone(),
                reason: "path must not contain `,` or `\"` (unix_socket_directories is a list)"
                    .to_owned(),
            });
        }
        let socket_path_len = run_dir.len() + "/.s.PGSQL.".len() + self.port.to_string().len();
        if socket_path_len > MAX_SOCKET_PATH {
            return Err(SettingsError::RunDir {
                run_dir: self.run_dir.clone(),
                reason: format!(
                    "socket path would be {socket_path_len} bytes, Postgres allows at most \
                     {MAX_SOCKET_PATH}; use a shorter directory"
                ),
            });
        }
        if self.archive_command.trim().is_empty() {
            return Err(SettingsError::EmptyArchiveCommand);
        }
        let owned: [(&str, String); OWNED_SETTINGS] = [
            ("port", self.port.to_string()),
            ("listen_addresses", self.listen_addresses.clone()),
            ("unix_socket_directories", run_dir.to_owned()),
            ("unix_socket_permissions", "0700".to_owned()),
            // A standby archives every segment it receives too: its own archive is the
            // followed history forks at an LSN or a time read.
            (
                "archive_mode",
                if self.standby.is_some() {
                    "always"
                } else {
                    "on"
                }
                .to_owned(),
            ),
            ("archive_command", self.archive_command.clone()),
            // Before a crash or archive recovery (every fork's first start), Postgres makes
            // the data directory durable. `syncfs` would write back the whole volume, which
            // every other branch on the storage node shares: a restored fork waited ~1 s for
            // the shutdown checkpoint of the compute it replaced. `fsync` syncs this
            // directory's files only; a fork's are clean already (the node synced the tree).
            ("recovery_init_sync_method", "fsync".to_owned()),
            // lz4 shrinks full-page images, so less WAL is written and archived, and fewer
            // blocks diverge from the parent's copy-on-write extents.
            ("wal_compression", "lz4".to_owned()),
            ("full_page_writes", "on".to_owned()),
            ("wal_level", "replica".to_owned()),
        ];
        let mut out: Vec<(String, String)> =
            owned.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        if let Some(standby) = &self.standby {
            out.push(("hot_standby".into(), "on".into()));
            out.push(("primary_conninfo".into(), standby.primary_conninfo()));
            out.push((
                "primary_slot_name".into(),
                standby.slot.clone().unwrap_or_default(),
            ));
            // A failover on the source switches its timeline; the standby follows it.
            out.push(("recovery_target_timeline".into(), "latest".into()));
        }
        if let Some(secs) = self.archive_timeout_secs {
            out.push(("archive_timeout".into(), format!("{secs}s")));
        }
        // Defaults a branch may override. A timeline lives on copy-on-write storage:
        // a new WAL segment filled with zeros (or an old one renamed for reuse) is 16 MiB
        // of blocks of its own in every fork, which is most of what an idle fork costs;
        // created sparse and removed when done, it costs what is written into it.
        for (name, value) in COW_DEFAULTS {
            if !self.parameters.contains_key(*name) {
                out.push(((*name).to_owned(), (*value).to_owned()));
            }
        }
        for (name, value) in &self.parameters {
            validate_parameter(name, value)?;
            out.push((name.clone(), value.clone()));
        }
        Ok(out)
    }
}

/// Number of settings Ramify itself sets.
const OWNED_SETTINGS: usize = 10;

/// Ramify's defaults for copy-on-write storage, which `postgresParameters` may override.
const COW_DEFAULTS: &[(&str, &str)] = &[("wal_init_zero", "off"), ("wal_recycle", "off")];

fn validate_parameter(name: &str, value: &str) -> Result<(), SettingsError> {
    let invalid = || SettingsError::InvalidName {
        name: name.to_owned(),
    };
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let all_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !first_ok || !all_ok || name.ends_with('.') || name.contains("..") {
        return Err(invalid());
    }
    if let Some(why) = ramify_api::parameters::refusal(name) {
        return Err(SettingsError::Refused {
            name: name.to_owned(),
            why,
        });
    }
    if value.contains('\0') {
        return Err(SettingsError::InvalidValue {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Quotes `value` as a Postgres configuration-file string: single quotes and
/// backslashes doubled (the file parser treats `\` as an escape), and line breaks
/// escaped because a quoted string cannot span lines.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `conf` with the [`include_line`] of `file` as its last line and nowhere else (so the
/// file's settings win), or `None` when it already is exactly that.
pub fn with_include(conf: &str, file: &str) -> Option<String> {
    let line = include_line(file);
    let is_include = |l: &str| l.trim() == line;
    let count = conf.lines().filter(|l| is_include(l)).count();
    let last = conf.lines().rev().find(|l| !l.trim().is_empty());
    if count == 1 && last.is_some_and(is_include) && conf.ends_with('\n') {
        return None;
    }
    let mut out: String = conf
        .lines()
        .filter(|l| !is_include(l))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(&line);
    out.push('\n');
    Some(out)
}

/// Makes `<pgdata>/postgresql.conf` end with the [`include_line`] of `file` exactly once;
/// idempotent, atomic (write + rename) and keeps the file's owner and mode.
pub fn ensure_include(pgdata: &Path, file: &str) -> Result<(), SettingsError> {
    let path = pgdata.join("postgresql.conf");
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| SettingsError::Io {
            action,
            path,
            source,
        }
    };
    let conf = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    let Some(updated) = with_include(&conf, file) else {
        return Ok(());
    };
    let meta = std::fs::metadata(&path).map_err(io("stat", &path))?;
    let tmp = pgdata.join("postgresql.conf.ramify-tmp");
    std::fs::write(&tmp, updated).map_err(io("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io("set permissions of", &tmp))?;
    if meta.uid() != nix::unistd::Uid::current().as_raw() {
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
            .map_err(io("chown", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("replace", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ComputeSettings {
        ComputeSettings {
            port: 54321,
            listen_addresses: "127.0.0.1".to_owned(),
            run_dir: PathBuf::from("/data/timelines/t1/run"),
            archive_command: "test ! -f '/data/wal/%f' && cp %p /data/wal/%f".to_owned(),
            parameters: BTreeMap::new(),
            standby: None,
            archive_timeout_secs: None,
        }
    }

    #[test]
    fn a_standby_streams_with_a_password_file_and_archives_what_it_receives() {
        let mut s = settings();
        s.parameters.insert("work_mem".into(), "8MB".into());
        s.standby = Some(Standby {
            conninfo: "postgresql://rep@db.example:5433/postgres?sslmode=require".into(),
            passfile: PathBuf::from("/data/timelines/t1/run/source pass"),
            slot: Some("ramify_prod".into()),
        });
        let out = s.render().unwrap();
        assert!(out.contains("archive_mode = 'always'\n"), "{out}");
        assert!(out.contains("hot_standby = 'on'\n"), "{out}");
        assert!(out.contains("primary_slot_name = 'ramify_prod'\n"), "{out}");
        assert!(
            out.contains("primary_conninfo = 'postgresql://rep@db.example:5433/postgres?sslmode=require&passfile=/data/timelines/t1/run/source%20pass&application_name=ramify'\n"),
            "{out}"
        );
        // The user's parameters still come last, under their heading.
        assert!(
            out.ends_with("# postgresParameters\nwork_mem = '8MB'\n"),
            "{out}"
        );
        s.standby = None;
        assert!(s.render().unwrap().contains("archive_mode = 'on'\n"));
    }

    #[test]
    fn key_value_conninfo_gets_quoted_pairs() {
        assert_eq!(
            append_conninfo("host=db user=rep", &[("passfile", "/r/it's")]),
            "host=db user=rep passfile='/r/it\\'s'"
        );
        assert_eq!(
            append_conninfo("postgres://h/db", &[("a", "1"), ("b", "x y")]),
            "postgres://h/db?a=1&b=x%20y"
        );
    }

    #[test]
    fn renders_ramify_settings() {
        assert_eq!(
            settings().render().unwrap(),
            "# Generated by Ramify on every start; edits are overwritten.\n\
             # Set your own parameters through the branch's postgresParameters.\n\
             port = '54321'\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '/data/timelines/t1/run'\n\
             unix_socket_permissions = '0700'\n\
             archive_mode = 'on'\n\
             archive_command = 'test ! -f ''/data/wal/%f'' && cp %p /data/wal/%f'\n\
             recovery_init_sync_method = 'fsync'\n\
             wal_compression = 'lz4'\n\
             full_page_writes = 'on'\n\
             wal_level = 'replica'\n\
             wal_init_zero = 'off'\n\
             wal_recycle = 'off'\n"
        );
    }

    #[test]
    fn a_branch_may_override_the_copy_on_write_defaults() {
        let mut s = settings();
        s.parameters.insert("wal_recycle".into(), "on".into());
        let out = s.render().unwrap();
        assert!(out.contains("wal_init_zero = 'off'\n"), "{out}");
        assert!(
            out.ends_with("wal_init_zero = 'off'\n# postgresParameters\nwal_recycle = 'on'\n"),
            "{out}"
        );
        assert_eq!(out.matches("wal_recycle").count(), 1, "{out}");
    }

    #[test]
    fn renders_user_parameters_sorted_and_quoted() {
        let mut s = settings();
        s.parameters.insert("work_mem".into(), "64MB".into());
        s.parameters
            .insert("application_name".into(), "it's a \\ test\nline".into());
        s.parameters
            .insert("auto_explain.log_min_duration".into(), "250ms".into());
        let rendered = s.render().unwrap();
        let tail = rendered.split_once("# postgresParameters\n").unwrap().1;
        assert_eq!(
            tail,
            "application_name = 'it''s a \\\\ test\\nline'\n\
             auto_explain.log_min_duration = '250ms'\n\
             work_mem = '64MB'\n"
        );
    }

    #[test]
    fn rejects_bad_parameter_names() {
        for name in [
            "",
            "Work_mem",
            "work-mem",
            "a b",
            "x = 1\nport",
            "1abc",
            "a..b",
            "a.",
        ] {
            let mut s = settings();
            s.parameters.insert(name.into(), "1".into());
            assert!(
                matches!(s.render(), Err(SettingsError::InvalidName { .. })),
                "{name:?} accepted"
            );
        }
    }

    #[test]
    fn rejects_refused_parameters() {
        for name in [
            "port",
            "archive_command",
            "include",
            "include_if_exists",
            "restore_command",
            "shared_preload_libraries",
            "ssl_passphrase_command",
            "recovery_target_lsn",
        ] {
            let mut s = settings();
            s.parameters.insert(name.into(), "1".into());
            let err = s.render().unwrap_err();
            assert!(
                matches!(err, SettingsError::Refused { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
            // The command-line form (a compute Pod) refuses the same way.
            assert!(s.args().is_err(), "{name}");
        }
    }

    #[test]
    fn rejects_unusable_socket_dirs() {
        let mut s = settings();
        s.run_dir = PathBuf::from(format!("/{}", "x".repeat(100)));
        let err = s.render().unwrap_err().to_string();
        assert!(err.contains("at most 107"), "{err}");
        s.run_dir = PathBuf::from("relative/run");
        assert!(s.render().is_err());
        s.run_dir = PathBuf::from("/a,b");
        assert!(s.render().is_err());
    }

    #[test]
    fn rejects_empty_archive_command() {
        let mut s = settings();
        s.archive_command = " ".into();
        assert!(matches!(
            s.render(),
            Err(SettingsError::EmptyArchiveCommand)
        ));
    }

    #[test]
    fn include_is_appended_once() {
        assert_eq!(
            with_include("a = 1\n", RAMIFY_CONF).as_deref(),
            Some("a = 1\ninclude_if_exists = 'ramify.conf'\n")
        );
        assert_eq!(
            with_include("a = 1", RAMIFY_CONF).as_deref(),
            Some("a = 1\ninclude_if_exists = 'ramify.conf'\n")
        );
        assert_eq!(
            with_include("a = 1\ninclude_if_exists = 'ramify.conf'\n", RAMIFY_CONF),
            None
        );
        // Moved to the end when something was appended after it, and deduplicated.
        assert_eq!(
            with_include("include_if_exists = 'ramify.conf'\nb = 2\ninclude_if_exists = 'ramify.conf'\nc = 3\n", RAMIFY_CONF)
            .as_deref(),
            Some("b = 2\nc = 3\ninclude_if_exists = 'ramify.conf'\n")
        );
    }

    #[test]
    fn ensure_include_is_idempotent_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.conf");
        std::fs::write(&path, "max_connections = 100\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        ensure_include(dir.path(), RAMIFY_CONF).unwrap();
        ensure_include(dir.path(), RAMIFY_CONF).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "max_connections = 100\ninclude_if_exists = 'ramify.conf'\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let err = ensure_include(&dir.path().join("missing"), RAMIFY_CONF).unwrap_err();
        assert!(err.to_string().contains("could not read"), "{err}");
    }
}
