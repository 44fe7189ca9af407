//! Finding a Postgres installation: the directory holding `postgres`, `initdb` and `pg_ctl`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tail::{last_lines, TAIL_LINES};

/// Where distribution packages install each major version's binaries (Debian, Ubuntu).
const DISTRO_ROOT: &str = "/usr/lib/postgresql";

/// The programs a directory must hold to count as a Postgres installation.
const REQUIRED: [&str; 3] = ["postgres", "initdb", "pg_ctl"];

/// Errors locating Postgres or asking it for its version.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    /// No directory searched holds all of `postgres`, `initdb` and `pg_ctl`.
    #[error(
        "no Postgres installation found: looked for postgres, initdb and pg_ctl in {}; \
         install postgresql-15 (apt-get install postgresql-15) or pass --pg-bin DIR",
        display_paths(searched)
    )]
    NotFound {
        /// Every directory that was examined, in search order.
        searched: Vec<PathBuf>,
    },
    /// The explicitly requested directory lacks required programs.
    #[error(
        "--pg-bin {} is not a Postgres bin directory: missing {}; \
         point it at the directory holding postgres, initdb and pg_ctl (e.g. /usr/lib/postgresql/15/bin)",
        dir.display(),
        missing.join(", ")
    )]
    Incomplete {
        /// The directory that was given.
        dir: PathBuf,
        /// The required programs it does not hold (or holds without execute permission).
        missing: Vec<&'static str>,
    },
    /// `postgres --version` could not be run.
    #[error("could not run `{command}`: {source}")]
    Run {
        /// The command line.
        command: String,
        /// Why spawning it failed.
        #[source]
        source: std::io::Error,
    },
    /// `postgres --version` failed or printed something unexpected.
    #[error("`{command}` gave no usable version ({status}): {output}")]
    Version {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its output.
        output: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(no directories: $PATH is empty and /usr/lib/postgresql/*/bin does not exist)"
            .to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Postgres installation's bin directory, with paths to the programs Ramify uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// Finds Postgres: the `explicit` directory if given (an error if it is incomplete),
    /// else the first `$PATH` entry holding `postgres`, `initdb` and `pg_ctl`, else
    /// `/usr/lib/postgresql/<major>/bin`, highest major first.
    pub fn find(explicit: Option<&Path>) -> Result<Self, BinError> {
        if let Some(dir) = explicit {
            return Self::from_dir(dir);
        }
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let distro_dirs = distro_bin_dirs(Path::new(DISTRO_ROOT));
        let mut searched = Vec::new();
        for dir in path_dirs.into_iter().chain(distro_dirs) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            if missing_programs(&dir).is_empty() {
                return Ok(Self {
                    dir: installation_dir(dir),
                });
            }
            searched.push(dir);
        }
        Err(BinError::NotFound { searched })
    }

    /// Uses exactly `dir`, which must hold `postgres`, `initdb` and `pg_ctl`.
    pub fn from_dir(dir: &Path) -> Result<Self, BinError> {
        let missing = missing_programs(dir);
        if missing.is_empty() {
            Ok(Self {
                dir: installation_dir(dir.to_path_buf()),
            })
        } else {
            Err(BinError::Incomplete {
                dir: dir.to_path_buf(),
                missing,
            })
        }
    }

    /// The bin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `postgres` server program.
    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    /// The `initdb` program.
    pub fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    /// The `pg_ctl` program.
    pub fn pg_ctl(&self) -> PathBuf {
        self.dir.join("pg_ctl")
    }

    /// `pg_waldump`, when installed alongside.
    pub fn pg_waldump(&self) -> Option<PathBuf> {
        self.tool("pg_waldump")
    }

    /// `pg_amcheck`, when installed alongside.
    pub fn pg_amcheck(&self) -> Option<PathBuf> {
        self.tool("pg_amcheck")
    }

    /// `psql`, when installed alongside.
    pub fn psql(&self) -> Option<PathBuf> {
        self.tool("psql")
    }

    /// `pgbench`, when installed alongside.
    pub fn pgbench(&self) -> Option<PathBuf> {
        self.tool("pgbench")
    }

    /// `pg_controldata`, when installed alongside.
    pub fn pg_controldata(&self) -> Option<PathBuf> {
        self.tool("pg_controldata")
    }

    /// `pg_dump`, when installed alongside.
    pub fn pg_dump(&self) -> Option<PathBuf> {
        self.tool("pg_dump")
    }

    /// `pg_restore`, when installed alongside.
    pub fn pg_restore(&self) -> Option<PathBuf> {
        self.tool("pg_restore")
    }

    /// Any program `name` in the bin directory, when present and executable.
    pub fn tool(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        is_executable(&path).then_some(path)
    }

    /// The major version (e.g. 15), from `postgres --version`.
    pub fn major_version(&self) -> Result<u32, BinError> {
        let program = self.postgres();
        let command = format!("{} --version", program.display());
        let output = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|source| BinError::Run {
                command: command.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match parse_major_version(&stdout) {
            Some(major) if output.status.success() => Ok(major),
            _ => Err(BinError::Version {
                command,
                status: output.status,
                output: last_lines(
                    &format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
                    TAIL_LINES,
                ),
            }),
        }
    }
}

/// The directory `dir/postgres` really lives in, when `dir` only holds symlinks to a
/// complete installation (e.g. `/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres`),
/// so that the tools beside it (`pg_amcheck`, `pgbench`, …) are found too.
fn installation_dir(dir: PathBuf) -> PathBuf {
    match std::fs::canonicalize(dir.join("postgres")) {
        Ok(real) => match real.parent() {
            Some(parent) if parent != dir && missing_programs(parent).is_empty() => {
                parent.to_path_buf()
            }
            _ => dir,
        },
        Err(_) => dir,
    }
}

/// `<root>/<major>/bin` directories that exist, highest numeric major first.
fn distro_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut majors: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.is_dir().then_some((major, bin))
        })
        .collect();
    majors.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    majors.into_iter().map(|(_, dir)| dir).collect()
}

fn missing_programs(dir: &Path) -> Vec<&'static str> {
    REQUIRED
        .into_iter()
        .filter(|name| !is_executable(&dir.join(name)))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Parses the major version out of `postgres --version` output such as
/// `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)` or `postgres (PostgreSQL) 17beta1`.
fn parse_major_version(output: &str) -> Option<u32> {
    let rest = output.split_once("(PostgreSQL)")?.1.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major_version("something else"), None);
    }

    #[test]
    fn distro_dirs_sort_highest_major_first() {
        let root = tempfile::tempdir().unwrap();
        for major in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.path().join(major).join("bin")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("16")).unwrap(); // no bin/
        let dirs = distro_bin_dirs(root.path());
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["15", "13", "9"]);
    }

    #[test]
    fn explicit_dir_must_be_complete() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgBin::find(Some(dir.path())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing postgres, initdb, pg_ctl"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn symlinked_programs_lead_to_the_real_installation() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("lib/15/bin");
        let links = tmp.path().join("local/bin");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        for name in ["postgres", "initdb", "pg_ctl", "pgbench"] {
            let path = real.join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for name in REQUIRED {
            symlink(real.join(name), links.join(name)).unwrap();
        }
        let bin = PgBin::from_dir(&links).unwrap();
        assert_eq!(bin.dir(), std::fs::canonicalize(&real).unwrap());
        assert!(bin.pgbench().is_some());
        assert!(bin.pg_amcheck().is_none());
    }

    #[test]
    fn not_found_names_every_place_searched() {
        let err = BinError::NotFound {
            searched: vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
        };
        assert_eq!(
            err.to_string(),
            "no Postgres installation found: looked for postgres, initdb and pg_ctl in \
             /usr/bin, /bin; install postgresql-15 (apt-get install postgresql-15) or pass --pg-bin DIR"
        );
    }

    #[test]
    fn finds_the_installed_postgres() {
        // The CI image and dev machines have postgresql-15; skip quietly elsewhere.
        let Ok(bin) = PgBin::find(None) else { return };
        assert!(bin.postgres().is_file());
        assert!(bin.major_version().unwrap() >= 10);
    }
}
