//! The CLI's client of the local daemon's API.

use std::path::Path;
use std::time::Duration;

use ramify_api::{ApiError, SnapshotInfo};
use ramify_lifecycle::{
    BranchView, CheckpointView, CreateBranch, CreateCheckpoint, CreateSnapshotReq, LocalStatus,
    RestoreBranch, RestoreOutcome, UpdateBranch,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::files::DaemonFile;

/// Why a daemon call failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No daemon runs for this data directory.
    #[error("local mode is not running for {data_dir}: start it with `ramify local up`")]
    NotRunning { data_dir: String },
    /// The daemon file is there but unreadable (permissions, corruption).
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon said no.
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The daemon could not be reached or answered garbage.
    #[error("cannot talk to the local daemon at {url}: {reason}")]
    Transport { url: String, reason: String },
}

/// Client of one local daemon.
#[derive(Debug, Clone)]
pub struct DaemonClient {
    file: DaemonFile,
    http: reqwest::Client,
}

impl DaemonClient {
    /// Connects to the daemon of `data_dir` (reads its daemon file).
    pub fn for_data_dir(data_dir: &Path) -> Result<DaemonClient, DaemonError> {
        let file = DaemonFile::read(data_dir)
            .map_err(|source| DaemonError::File {
                path: DaemonFile::path(data_dir).display().to_string(),
                source,
            })?
            .filter(DaemonFile::process_alive)
            .ok_or_else(|| DaemonError::NotRunning {
                data_dir: data_dir.display().to_string(),
            })?;
        Ok(DaemonClient::new(file))
    }

    /// A client for the daemon a daemon file describes.
    pub fn new(file: DaemonFile) -> DaemonClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        DaemonClient { file, http }
    }

    /// The daemon file this client uses.
    pub fn file(&self) -> &DaemonFile {
        &self.file
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, DaemonError> {
        let url = format!("{}{}", self.file.api, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.file.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |reason: String| DaemonError::Transport {
            url: url.clone(),
            reason,
        };
        let resp = req.send().await.map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => DaemonError::Api {
                    status,
                    code: e.code,
                    message: e.message,
                },
                Err(_) => transport(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| transport(format!("bad answer: {e}")))
    }

    /// Status of the daemon and its storage node.
    pub async fn status(&self) -> Result<LocalStatus, DaemonError> {
        self.call::<(), _>(Method::GET, "/v1/status", None).await
    }

    /// Creates a branch (root or fork).
    pub async fn create_branch(&self, req: &CreateBranch) -> Result<BranchView, DaemonError> {
        self.call(Method::POST, "/v1/branches", Some(req)).await
    }

    /// Every branch.
    pub async fn list_branches(&self) -> Result<Vec<BranchView>, DaemonError> {
        self.call::<(), _>(Method::GET, "/v1/branches", None).await
    }

    /// One branch.
    pub async fn get_branch(&self, name: &str) -> Result<BranchView, DaemonError> {
        self.call::<(), _>(Method::GET, &format!("/v1/branches/{name}"), None)
            .await
    }

    /// Deletes a branch; `force` also deletes its children first.
    pub async fn delete_branch(&self, name: &str, force: bool) -> Result<(), DaemonError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/branches/{name}?force={force}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Starts a branch's compute now.
    pub async fn wake(&self, name: &str) -> Result<BranchView, DaemonError> {
        self.call::<(), _>(Method::POST, &format!("/v1/branches/{name}/wake"), None)
            .await
    }

    /// Stops a branch's compute now.
    pub async fn suspend(&self, name: &str) -> Result<BranchView, DaemonError> {
        self.call::<(), _>(Method::POST, &format!("/v1/branches/{name}/suspend"), None)
            .await
    }

    /// Makes a branch its parent's latest state.
    pub async fn reset(&self, name: &str) -> Result<RestoreOutcome, DaemonError> {
        self.call::<(), _>(Method::POST, &format!("/v1/branches/{name}/reset"), None)
            .await
    }

    /// Makes a branch itself (or another branch) as it was at a point.
    pub async fn restore(
        &self,
        name: &str,
        req: &RestoreBranch,
    ) -> Result<RestoreOutcome, DaemonError> {
        self.call(
            Method::POST,
            &format!("/v1/branches/{name}/restore"),
            Some(req),
        )
        .await
    }

    /// Changes a branch's protection or expiry.
    pub async fn update_branch(
        &self,
        name: &str,
        req: &UpdateBranch,
    ) -> Result<BranchView, DaemonError> {
        self.call(Method::PATCH, &format!("/v1/branches/{name}"), Some(req))
            .await
    }

    /// Records a checkpoint of a branch now.
    pub async fn create_checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
    ) -> Result<CheckpointView, DaemonError> {
        let body = CreateCheckpoint {
            name: name.map(Into::into),
        };
        self.call(
            Method::POST,
            &format!("/v1/branches/{branch}/checkpoints"),
            Some(&body),
        )
        .await
    }

    /// A branch's checkpoints, oldest first.
    pub async fn list_checkpoints(&self, branch: &str) -> Result<Vec<CheckpointView>, DaemonError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/branches/{branch}/checkpoints"),
            None,
        )
        .await
    }

    /// Forgets a checkpoint.
    pub async fn delete_checkpoint(&self, branch: &str, name: &str) -> Result<(), DaemonError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/branches/{branch}/checkpoints/{name}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Takes a named snapshot of a branch.
    pub async fn create_snapshot(
        &self,
        branch: &str,
        name: &str,
    ) -> Result<SnapshotInfo, DaemonError> {
        let body = CreateSnapshotReq { name: name.into() };
        self.call(
            Method::POST,
            &format!("/v1/branches/{branch}/snapshots"),
            Some(&body),
        )
        .await
    }

    /// A branch's snapshots.
    pub async fn list_snapshots(&self, branch: &str) -> Result<Vec<SnapshotInfo>, DaemonError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/branches/{branch}/snapshots"),
            None,
        )
        .await
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, branch: &str, name: &str) -> Result<(), DaemonError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/branches/{branch}/snapshots/{name}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Asks the daemon to stop every compute and exit.
    pub async fn shutdown(&self) -> Result<(), DaemonError> {
        self.call::<(), serde_json::Value>(Method::POST, "/v1/shutdown", None)
            .await
            .map(|_| ())
    }
}
