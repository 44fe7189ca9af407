//! Where local mode keeps its files under the data directory.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `<data>/local/`: the daemon's own files.
pub fn local_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("local")
}

/// `<data>/storage/`: the storage node's data directory.
pub fn storage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// `<data>/tls/`: local mode's TLS certificate authority.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The CA certificate clients verify branch endpoints with (`sslrootcert`), mode 0644.
pub fn ca_cert_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.crt")
}

/// The CA's private key, mode 0600, owned by the daemon's user.
pub fn ca_key_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.key")
}

/// The daemon's log.
pub fn log_path(data_dir: &Path) -> PathBuf {
    local_dir(data_dir).join("daemon.log")
}

/// Branch state (names, ports, passwords): readable by its owner only.
pub fn state_path(data_dir: &Path) -> PathBuf {
    local_dir(data_dir).join("branches.json")
}

/// Written by a running daemon (mode 0600): how to reach it. Removed when it stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonFile {
    /// Process id of the daemon.
    pub pid: u32,
    /// Base URL of its API (loopback).
    pub api: String,
    /// Bearer token its API requires.
    pub token: String,
    /// Base URL of its storage node's API (loopback).
    pub storage_url: String,
    /// Bearer token the storage node's API requires: any local user can reach a loopback
    /// port, only the daemon's owner can read this file.
    #[serde(default)]
    pub storage_token: String,
}

impl DaemonFile {
    /// `<data>/local/daemon.json`.
    pub fn path(data_dir: &Path) -> PathBuf {
        local_dir(data_dir).join("daemon.json")
    }

    /// Reads it; `Ok(None)` when no daemon file exists.
    pub fn read(data_dir: &Path) -> io::Result<Option<DaemonFile>> {
        match std::fs::read(Self::path(data_dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the process it names still exists.
    pub fn process_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
    }
}
