//! Off-node durability: the object-storage repository, pgBackRest as the tool that moves
//! WAL and base backups into it, and Ramify's own record of each durable timeline beside
//! them (see docs/architecture.md, "Off-node durability").
//!
//! Credentials live in the storage node only: pgBackRest gets them through its
//! environment, never a file on a volume a compute mounts; computes never see the bucket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ramify_api::{CreateTimeline, Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use tracing::debug;

pub mod s3;

/// Errors of the repository and of pgBackRest.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup configuration: {0}")]
    Config(String),
    #[error("object storage: {0}")]
    Bucket(String),
    #[error("pgbackrest {command} failed: {message}")]
    Tool { command: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where durable timelines are kept: an S3-compatible bucket and a prefix in it.
#[derive(Clone)]
pub struct Repo {
    pub bucket: String,
    /// Key prefix without leading or trailing slash ("" for the bucket's root).
    pub prefix: String,
    /// Host name of the S3 endpoint (TLS only; its certificate must name this host).
    pub endpoint: String,
    pub port: u16,
    pub region: String,
    /// Path-style URLs (`https://host/bucket/key`), which S3-compatible servers need;
    /// otherwise virtual-host style (`https://bucket.host/key`).
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    /// CA bundle that signs the endpoint's certificate; default: the system's.
    pub ca_file: Option<PathBuf>,
    /// Passphrase encrypting everything pgBackRest writes (aes-256-cbc); none: plain.
    pub cipher_pass: Option<String>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// System CA bundle used when no `--backup-ca-file` is given.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Repo {
    /// Parses `s3://bucket/prefix` with the endpoint (`host` or `host:port`).
    pub fn parse(url: &str, endpoint: &str) -> Result<Repo, BackupError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            BackupError::Config(format!(
                "repository {url:?} is not an s3:// URL (expected s3://BUCKET/PREFIX)"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(BackupError::Config(format!(
                "bucket name {bucket:?} in {url:?} is not valid: 3 to 63 lower-case letters, digits, dots and hyphens"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(BackupError::Config(format!(
                "prefix {prefix:?} in {url:?} may not contain . or .. components"
            )));
        }
        let (host, port) = match endpoint.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| {
                    BackupError::Config(format!(
                        "endpoint {endpoint:?}: port {p:?} is not a number"
                    ))
                })?,
            ),
            None => (endpoint, 443),
        };
        if host.is_empty() || host.contains('/') {
            return Err(BackupError::Config(format!(
                "endpoint {endpoint:?} must be a host name with an optional :port, like s3.eu-west-1.amazonaws.com"
            )));
        }
        Ok(Repo {
            bucket: bucket.to_string(),
            prefix,
            endpoint: host.to_string(),
            port,
            region: "us-east-1".into(),
            path_style: false,
            access_key: String::new(),
            secret_key: String::new(),
            ca_file: None,
            cipher_pass: None,
        })
    }

    /// `s3://bucket/prefix at host:port`, for messages (no credentials).
    pub fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}:{}",
            self.bucket, self.prefix, self.endpoint, self.port
        )
    }

    /// The object key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else if rel.is_empty() {
            format!("{}/", self.prefix)
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA))
    }

    pub(crate) fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, BackupError> {
        let path = self.ca_path();
        let pem = std::fs::read(&path).map_err(|e| {
            BackupError::Config(format!(
                "cannot read the CA bundle {} (--backup-ca-file): {e}",
                path.display()
            ))
        })?;
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            BackupError::Config(format!("{} holds no PEM certificates: {e}", path.display()))
        })
    }
}

/// The flags that describe a backup repository (`ramify-storage` and `ramify local up`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct RepoArgs {
    /// Keep durable timelines (roots, and timelines created with "backup": true) in this
    /// S3-compatible repository, s3://BUCKET/PREFIX: their WAL is pushed as it is archived
    /// and their snapshots backed up, through pgBackRest, so they survive the loss of
    /// this volume (see --recover). Credentials: $AWS_ACCESS_KEY_ID and
    /// $AWS_SECRET_ACCESS_KEY, or --backup-credentials-file.
    #[arg(
        long,
        visible_alias = "backup",
        env = "RAMIFY_BACKUP_REPO",
        value_name = "s3://BUCKET/PREFIX"
    )]
    pub backup_repo: Option<String>,
    /// The repository's S3 endpoint, host[:port] (HTTPS only; its certificate must name
    /// this host). Default: s3.<region>.amazonaws.com.
    #[arg(long, env = "RAMIFY_BACKUP_ENDPOINT")]
    pub backup_endpoint: Option<String>,
    /// The repository's region.
    #[arg(long, default_value = "us-east-1", env = "RAMIFY_BACKUP_REGION")]
    pub backup_region: String,
    /// `path` (https://host/bucket/key, what most S3-compatible servers need) or `host`
    /// (https://bucket.host/key, AWS's default).
    #[arg(long, default_value = "host", env = "RAMIFY_BACKUP_URI_STYLE", value_parser = ["host", "path"])]
    pub backup_uri_style: String,
    /// CA bundle (PEM) that signs the endpoint's certificate. Default: the system's.
    #[arg(long, env = "RAMIFY_BACKUP_CA_FILE")]
    pub backup_ca_file: Option<PathBuf>,
    /// File with the repository's credentials, in AWS's shared-credentials form
    /// (`aws_access_key_id = …` and `aws_secret_access_key = …` lines); mode 0600.
    #[arg(long, env = "RAMIFY_BACKUP_CREDENTIALS_FILE")]
    pub backup_credentials_file: Option<PathBuf>,
    /// File holding a passphrase: everything pgBackRest writes is then encrypted
    /// (aes-256-cbc). Keep it: without it nothing in the repository can be restored.
    /// Or the passphrase itself in RAMIFY_BACKUP_CIPHER_PASS.
    #[arg(long, env = "RAMIFY_BACKUP_CIPHER_PASS_FILE")]
    pub backup_cipher_pass_file: Option<PathBuf>,
}

impl RepoArgs {
    /// The flags again, as a command line (`ramify local up` hands them to the daemon it
    /// starts; credentials stay in the environment or the files named).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        if self.backup_repo.is_none() {
            return out;
        }
        let mut flag = |name: &str, value: Option<std::ffi::OsString>| {
            if let Some(v) = value {
                out.push(format!("--{name}").into());
                out.push(v);
            }
        };
        flag("backup-repo", self.backup_repo.clone().map(Into::into));
        flag(
            "backup-endpoint",
            self.backup_endpoint.clone().map(Into::into),
        );
        flag("backup-region", Some(self.backup_region.clone().into()));
        flag(
            "backup-uri-style",
            Some(self.backup_uri_style.clone().into()),
        );
        flag(
            "backup-ca-file",
            self.backup_ca_file.clone().map(Into::into),
        );
        flag(
            "backup-credentials-file",
            self.backup_credentials_file.clone().map(Into::into),
        );
        flag(
            "backup-cipher-pass-file",
            self.backup_cipher_pass_file.clone().map(Into::into),
        );
        out
    }

    /// The repository the flags describe, with its credentials; `None` without
    /// `--backup-repo`.
    pub fn repo(&self) -> Result<Option<Repo>, BackupError> {
        let Some(url) = &self.backup_repo else {
            return Ok(None);
        };
        let endpoint = self
            .backup_endpoint
            .clone()
            .unwrap_or_else(|| format!("s3.{}.amazonaws.com", self.backup_region));
        let mut repo = Repo::parse(url, &endpoint)?;
        repo.region = self.backup_region.clone();
        repo.path_style = self.backup_uri_style == "path";
        repo.ca_file = self.backup_ca_file.clone();
        let (key, secret) = match &self.backup_credentials_file {
            Some(path) => {
                let text = read_secret_file(path, "--backup-credentials-file")?;
                let field = |name: &str| {
                    text.lines()
                        .filter_map(|l| l.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                };
                match (field("aws_access_key_id"), field("aws_secret_access_key")) {
                    (Some(k), Some(s)) => (k, s),
                    _ => {
                        return Err(BackupError::Config(format!(
                            "{} must hold `aws_access_key_id = …` and `aws_secret_access_key = …` lines",
                            path.display()
                        )))
                    }
                }
            }
            None => match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(k), Ok(s)) => (k, s),
                _ => {
                    return Err(BackupError::Config(
                        "--backup-repo needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --backup-credentials-file".into(),
                    ))
                }
            },
        };
        repo.access_key = key;
        repo.secret_key = secret;
        let pass = match &self.backup_cipher_pass_file {
            Some(path) => Some((
                read_secret_file(path, "--backup-cipher-pass-file")?,
                path.display().to_string(),
            )),
            None => std::env::var(CIPHER_PASS_ENV)
                .ok()
                .map(|p| (p, CIPHER_PASS_ENV.to_string())),
        };
        if let Some((pass, from)) = pass {
            let pass = pass.trim_end_matches('\n').to_string();
            if pass.is_empty() {
                return Err(BackupError::Config(format!("{from} is empty")));
            }
            repo.cipher_pass = Some(pass);
        }
        Ok(Some(repo))
    }
}

/// The environment variables a repository's secrets may come from: whoever reads them
/// ([`RepoArgs::repo`]) removes them from its environment before it starts any process.
pub const SECRET_ENV: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    CIPHER_PASS_ENV,
];

/// The environment variable that may hold the repository's cipher passphrase instead of
/// `--backup-cipher-pass-file` (a Kubernetes Secret's files are group-readable under a
/// Pod's fsGroup, which the file check refuses).
pub const CIPHER_PASS_ENV: &str = "RAMIFY_BACKUP_CIPHER_PASS";

/// Reads a file holding a secret, refusing one its group or others can read.
fn read_secret_file(path: &Path, flag: &str) -> Result<String, BackupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| BackupError::Config(format!("cannot read {flag} {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(BackupError::Config(format!(
            "{flag} {} is readable by its group or others (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| BackupError::Config(format!("cannot read {flag} {}: {e}", path.display())))
}

/// Runs pgBackRest against the repository, as the node's own user, with every option in
/// its environment (no configuration file: `/etc/pgbackrest.conf` is never read).
pub struct PgBackRest {
    repo: Repo,
    /// The node's working directory for pgBackRest (locks, spool, empty config).
    work: PathBuf,
    bin: PathBuf,
}

impl PgBackRest {
    pub fn new(repo: Repo, work: &Path, bin: PathBuf) -> Result<PgBackRest, BackupError> {
        for d in ["lock", "spool", "log"] {
            std::fs::create_dir_all(work.join(d))?;
        }
        std::fs::write(work.join("pgbackrest.conf"), b"")?;
        Ok(PgBackRest {
            repo,
            work: work.to_path_buf(),
            bin,
        })
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The `pgbackrest` binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn env(&self) -> Vec<(String, OsString)> {
        let r = &self.repo;
        let mut env: Vec<(&str, OsString)> = vec![
            ("CONFIG", self.work.join("pgbackrest.conf").into()),
            ("LOCK_PATH", self.work.join("lock").into()),
            ("SPOOL_PATH", self.work.join("spool").into()),
            ("LOG_PATH", self.work.join("log").into()),
            ("LOG_LEVEL_CONSOLE", "off".into()),
            ("LOG_LEVEL_STDERR", "error".into()),
            ("LOG_LEVEL_FILE", "off".into()),
            ("COMPRESS_TYPE", "lz4".into()),
            ("REPO1_TYPE", "s3".into()),
            ("REPO1_PATH", format!("/{}", r.prefix).into()),
            ("REPO1_S3_BUCKET", r.bucket.clone().into()),
            ("REPO1_S3_ENDPOINT", r.endpoint.clone().into()),
            ("REPO1_STORAGE_PORT", r.port.to_string().into()),
            ("REPO1_S3_REGION", r.region.clone().into()),
            ("REPO1_S3_KEY", r.access_key.clone().into()),
            ("REPO1_S3_KEY_SECRET", r.secret_key.clone().into()),
            (
                "REPO1_S3_URI_STYLE",
                if r.path_style { "path" } else { "host" }.into(),
            ),
            ("REPO1_STORAGE_CA_FILE", r.ca_path().into()),
        ];
        if let Some(pass) = &r.cipher_pass {
            env.push(("REPO1_CIPHER_TYPE", "aes-256-cbc".into()));
            env.push(("REPO1_CIPHER_PASS", pass.clone().into()));
        }
        env.into_iter()
            .map(|(k, v)| (format!("PGBACKREST_{k}"), v))
            .collect()
    }

    /// Runs `pgbackrest --stanza=STANZA COMMAND ARGS…` and returns its standard output.
    pub async fn run(
        &self,
        stanza: Option<&str>,
        command: &str,
        args: &[OsString],
    ) -> Result<String, BackupError> {
        let t0 = Instant::now();
        let mut cmd = tokio::process::Command::new(&self.bin);
        // Only what pgBackRest needs; nothing of the node's own environment leaks in.
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env())
            // pgBackRest gives up on an unreachable repository after four of these: a
            // WAL push or listing fails in 20 s (and is retried with backoff), not
            // minutes. Backups and restores move large files and keep the default.
            .envs(
                (!matches!(command, "backup" | "restore"))
                    .then_some([
                        ("PGBACKREST_IO_TIMEOUT", "5"),
                        ("PGBACKREST_ARCHIVE_TIMEOUT", "20"),
                    ])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(s) = stanza {
            cmd.arg(format!("--stanza={s}"));
        }
        // Options before the command, its parameters (a WAL file, a destination) after.
        let (options, params): (Vec<&OsString>, Vec<&OsString>) = args
            .iter()
            .partition(|a| a.to_string_lossy().starts_with("--"));
        cmd.args(options).arg(command).args(params);
        let out = cmd.output().await.map_err(|e| BackupError::Tool {
            command: command.into(),
            message: format!("cannot run {}: {e}", self.bin.display()),
        })?;
        debug!(
            command,
            stanza,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            ok = out.status.success(),
            "pgbackrest"
        );
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let text = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            let message = text
                .lines()
                .map(|l| {
                    l.trim_start_matches(|c: char| {
                        c.is_ascii_digit() || c == '-' || c == ' ' || c == ':' || c == '.'
                    })
                })
                .map(|l| l.trim_start_matches("P00").trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(BackupError::Tool {
                command: command.into(),
                message: format!("{message} (exit {})", out.status.code().unwrap_or(-1)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One base backup of a durable timeline: a pgBackRest backup set of one of its
/// snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSet {
    /// pgBackRest's label (`--set` on restore: an offline backup carries no LSN range, so
    /// pgBackRest cannot choose one for a target itself).
    pub set: String,
    /// The snapshot it was taken of.
    pub snapshot: String,
    pub start_lsn: Lsn,
    /// Where replay from it is consistent.
    pub consistent_lsn: Lsn,
    /// The snapshot's end (its LSN in the timeline's history).
    pub end_lsn: Lsn,
    pub pg_timeline: u32,
    pub time: DateTime<Utc>,
}

/// Ramify's record of a durable timeline in the bucket
/// (`<prefix>/ramify/timelines/<id>.json`): what recovery needs beyond pgBackRest's
/// stanza — where the timeline forked from, and which backup sets are whose snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub format: u32,
    pub id: TimelineId,
    pub parent: Option<TimelineId>,
    pub request: CreateTimeline,
    pub fork_lsn: Option<Lsn>,
    pub fork_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Oldest first.
    pub backups: Vec<BackupSet>,
    /// Set when the timeline was deleted: recovery skips it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

pub const RECORD_FORMAT: u32 = 1;

/// Key of a timeline's record below the repository prefix.
pub fn record_key(id: TimelineId) -> String {
    format!("ramify/timelines/{id}.json")
}

/// Where a durable timeline's archiving and backups stand, kept in the node's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupState {
    pub stanza_created: bool,
    /// Every WAL segment (and `.backup` file) in the timeline's archive up to this name,
    /// in name order, is in the bucket.
    pub pushed_to: Option<String>,
    /// `.history` and `.partial` files pushed (they can arrive after a later segment).
    #[serde(default)]
    pub pushed_other: Vec<String>,
    pub pushed_at: Option<DateTime<Utc>>,
    pub backups: Vec<BackupSet>,
    /// The record last written to the bucket, to write it again only when it changes.
    pub record: Option<BucketRecord>,
    /// The timeline was deleted: its record is to be marked so in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The repository lost this timeline (the bucket emptied, or deleted and made again)
    /// and it is archived anew from the node: set until it has a base there again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_at: Option<DateTime<Utc>>,
}

impl BackupState {
    /// Whether archive file `name` is in the repository.
    pub fn has(&self, name: &str) -> bool {
        if name.ends_with(".history") || name.ends_with(".partial") {
            self.pushed_other.iter().any(|n| n == name)
        } else {
            self.pushed_to.as_deref().is_some_and(|w| name <= w)
        }
    }
}

/// `pgbackrest` on $PATH (or /usr/bin).
pub fn find_pgbackrest() -> Result<PathBuf, BackupError> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("pgbackrest"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BackupError::Config(
                "a backup repository needs pgBackRest: apt-get install pgbackrest".into(),
            )
        })
}

/// Marks an object [`seal`] encrypted.
const SEALED: &[u8] = b"RAMIFY-SEALED-1\n";
const PBKDF2_ROUNDS: u32 = 200_000;

/// Encrypts `plain` with a key derived from `pass` (PBKDF2-HMAC-SHA256, random salt;
/// AES-256-GCM, random nonce): what Ramify writes to the bucket itself when the
/// repository is encrypted (local mode's branches, whose passwords must not be readable
/// where pgBackRest's data is not).
pub fn seal(pass: &str, plain: &[u8]) -> Result<Vec<u8>, BackupError> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .and_then(|_| rng.fill(&mut nonce))
        .map_err(|_| BackupError::Config("no randomness from the OS".into()))?;
    let key = sealing_key(pass, &salt)?;
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(SEALED),
        &mut data,
    )
    .map_err(|_| BackupError::Config("encryption failed".into()))?;
    let mut out = SEALED.to_vec();
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Decrypts what [`seal`] made; `Ok(None)` when `data` is not sealed.
pub fn unseal(pass: &str, data: &[u8]) -> Result<Option<Vec<u8>>, BackupError> {
    let Some(rest) = data.strip_prefix(SEALED) else {
        return Ok(None);
    };
    if rest.len() < 28 {
        return Err(BackupError::Bucket("a sealed object is truncated".into()));
    }
    let (salt, rest) = rest.split_at(16);
    let (nonce, sealed) = rest.split_at(12);
    let key = sealing_key(pass, salt)?;
    let mut buf = sealed.to_vec();
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| BackupError::Bucket("a sealed object has a bad nonce".into()))?;
    let plain = key
        .open_in_place(nonce, ring::aead::Aad::from(SEALED), &mut buf)
        .map_err(|_| {
            BackupError::Config(
                "cannot decrypt an object of the repository: wrong --backup-cipher-pass-file?"
                    .into(),
            )
        })?;
    Ok(Some(plain.to_vec()))
}

fn sealing_key(pass: &str, salt: &[u8]) -> Result<ring::aead::LessSafeKey, BackupError> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero"),
        salt,
        pass.as_bytes(),
        &mut key,
    );
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
        .map_err(|_| BackupError::Config("cannot make the encryption key".into()))?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

/// Name pgBackRest's offline backup cannot leave out: it drops `backup_label`, without
/// which a restore fails ("could not locate a valid checkpoint record"), so the node
/// backs up a clone with the label renamed and renames it back after a restore.
pub const KEPT_LABEL: &str = "ramify_backup_label";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_with_their_pass() {
        let sealed = seal("right pass", b"secret branches").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            unseal("right pass", &sealed).unwrap().unwrap(),
            b"secret branches"
        );
        assert!(unseal("wrong pass", &sealed).is_err());
        assert_eq!(unseal("any", b"{\"plain\": 1}").unwrap(), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(unseal("right pass", &tampered).is_err());
    }

    #[test]
    fn parses_repositories() {
        let r = Repo::parse("s3://ramify-backups/prod/eu", "s3.example.com").unwrap();
        assert_eq!(r.bucket, "ramify-backups");
        assert_eq!(r.prefix, "prod/eu");
        assert_eq!(r.port, 443);
        assert_eq!(r.key("ramify/x.json"), "prod/eu/ramify/x.json");
        let r = Repo::parse("s3://abc", "localhost:9000").unwrap();
        assert_eq!(r.prefix, "");
        assert_eq!(r.port, 9000);
        assert_eq!(r.key("a"), "a");
        for bad in ["https://x/y", "s3://ab/x", "s3://Upper/x", "s3://abc/../x"] {
            assert!(Repo::parse(bad, "h").is_err(), "{bad} accepted");
        }
        assert!(Repo::parse("s3://abc", "h:port").is_err());
        assert!(Repo::parse("s3://abc", "http://h").is_err());
    }
}
