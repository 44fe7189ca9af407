//! A typed client of the storage node's HTTP API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::timeline::{
    ApiError, CreateRestorePoint, CreateSnapshot, CreateTimeline, Credentials, NodeStatus,
    RestorePointInfo, Sealed, SnapshotInfo, TimelineId, TimelineInfo,
};
use crate::token::ApiToken;

/// Why a call failed: the node said no (with its code and message), or it could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status.
    #[error("storage node refused ({status}): {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The request did not complete.
    #[error("cannot reach the storage node at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered something that is not the expected JSON.
    #[error("unexpected answer from the storage node ({status}): {body}")]
    Decode { status: StatusCode, body: String },
}

impl ClientError {
    /// HTTP status of an API error, if the node answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }

    /// The node's error code (`not_found`, `conflict`, …), if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Client of one storage node, e.g.
/// `StorageClient::new("http://127.0.0.1:7100").with_token(token)`.
#[derive(Debug, Clone)]
pub struct StorageClient {
    base: String,
    http: reqwest::Client,
    token: Option<ApiToken>,
}

/// How long a call that copies or removes a timeline's files may take in all: a fork at
/// an LSN or time replays up to `--snapshot-wal-bytes` of WAL, a snapshot or a copy-mode
/// fork copies a whole PGDATA, a delete unlinks every file of a timeline. On a large
/// database those run for minutes; a stuck node must still not hang the caller forever.
pub const SLOW_CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long a read or a call into a running compute may take: listing timelines reads
/// each one's restore window (a query to each running compute), credentials and restore
/// points wait for the compute's SQL.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2 * 60);

/// How long `GET /v1/status` may take: it only reads the filesystem's counters.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// A successful create: the timeline and whether this call made it (`201`) or found it (`200`).
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

impl StorageClient {
    /// A client for the node at `base` (scheme, host and port).
    pub fn new(base: impl Into<String>) -> StorageClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        StorageClient {
            base: base.into().trim_end_matches('/').to_string(),
            http,
            token: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` on every call (the node
    /// refuses calls without it).
    pub fn with_token(mut self, token: ApiToken) -> StorageClient {
        self.token = Some(token);
        self
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(StatusCode, T), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => ClientError::Api {
                    status,
                    code: e.code,
                    message: e.message,
                },
                Err(_) => ClientError::Decode {
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        let text = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(|v| (status, v))
            .map_err(|_| ClientError::Decode {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
    }

    /// `POST /v1/timelines`.
    pub async fn create_timeline(
        &self,
        req: &CreateTimeline,
    ) -> Result<Created<TimelineInfo>, ClientError> {
        let (status, value) = self
            .call(Method::POST, "/v1/timelines", Some(req), SLOW_CALL_TIMEOUT)
            .await?;
        Ok(Created {
            value,
            created: status == StatusCode::CREATED,
        })
    }

    /// `GET /v1/timelines/{id}`.
    pub async fn get_timeline(&self, id: TimelineId) -> Result<TimelineInfo, ClientError> {
        let path = format!("/v1/timelines/{id}");
        Ok(self
            .call::<(), _>(Method::GET, &path, None, READ_TIMEOUT)
            .await?
            .1)
    }

    /// `GET /v1/timelines/{id}?sizes=false`: the timeline without its space figures
    /// (0), which spares the node an accounting sweep — for starting a compute.
    pub async fn get_timeline_without_sizes(
        &self,
        id: TimelineId,
    ) -> Result<TimelineInfo, ClientError> {
        let path = format!("/v1/timelines/{id}?sizes=false");
        Ok(self
            .call::<(), _>(Method::GET, &path, None, READ_TIMEOUT)
            .await?
            .1)
    }

    /// `GET /v1/timelines`.
    pub async fn list_timelines(&self) -> Result<Vec<TimelineInfo>, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/timelines", None, READ_TIMEOUT)
            .await?
            .1)
    }

    /// `GET /v1/timelines/{id}?sizes=fresh`: the timeline with space figures from an
    /// accounting pass that started after the call (it waits for one: up to a pass's
    /// duration, seconds on a node with many large timelines).
    pub async fn get_timeline_fresh(&self, id: TimelineId) -> Result<TimelineInfo, ClientError> {
        let path = format!("/v1/timelines/{id}?sizes=fresh");
        Ok(self
            .call::<(), _>(Method::GET, &path, None, SLOW_CALL_TIMEOUT)
            .await?
            .1)
    }

    /// `GET /v1/timelines?sizes=fresh`: [`StorageClient::list_timelines`] with figures
    /// from an accounting pass that started after the call.
    pub async fn list_timelines_fresh(&self) -> Result<Vec<TimelineInfo>, ClientError> {
        Ok(self
            .call::<(), _>(
                Method::GET,
                "/v1/timelines?sizes=fresh",
                None,
                SLOW_CALL_TIMEOUT,
            )
            .await?
            .1)
    }

    /// `DELETE /v1/timelines/{id}`; `force` also deletes under a running compute.
    pub async fn delete_timeline(&self, id: TimelineId, force: bool) -> Result<(), ClientError> {
        let path = format!("/v1/timelines/{id}?force={force}");
        self.call::<(), serde_json::Value>(Method::DELETE, &path, None, SLOW_CALL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `POST /v1/timelines/{id}/snapshots`.
    pub async fn create_snapshot(
        &self,
        id: TimelineId,
        name: &str,
    ) -> Result<SnapshotInfo, ClientError> {
        let path = format!("/v1/timelines/{id}/snapshots");
        let body = CreateSnapshot { name: name.into() };
        Ok(self
            .call(Method::POST, &path, Some(&body), SLOW_CALL_TIMEOUT)
            .await?
            .1)
    }

    /// `GET /v1/timelines/{id}/snapshots`.
    pub async fn list_snapshots(&self, id: TimelineId) -> Result<Vec<SnapshotInfo>, ClientError> {
        let path = format!("/v1/timelines/{id}/snapshots");
        Ok(self
            .call::<(), _>(Method::GET, &path, None, READ_TIMEOUT)
            .await?
            .1)
    }

    /// `DELETE /v1/timelines/{id}/snapshots/{name}`.
    pub async fn delete_snapshot(&self, id: TimelineId, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/timelines/{id}/snapshots/{name}");
        self.call::<(), serde_json::Value>(Method::DELETE, &path, None, SLOW_CALL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `POST /v1/timelines/{id}/seal`: needs the timeline's compute stopped and the node a
    /// backup repository; returns once every WAL file is in it.
    pub async fn seal_timeline(&self, id: TimelineId) -> Result<Sealed, ClientError> {
        let path = format!("/v1/timelines/{id}/seal");
        Ok(self
            .call::<(), _>(Method::POST, &path, None, SLOW_CALL_TIMEOUT)
            .await?
            .1)
    }

    /// `POST /v1/timelines/{id}/restore-points`: needs the timeline's compute running.
    pub async fn create_restore_point(
        &self,
        id: TimelineId,
        req: &CreateRestorePoint,
    ) -> Result<RestorePointInfo, ClientError> {
        let path = format!("/v1/timelines/{id}/restore-points");
        Ok(self
            .call(Method::POST, &path, Some(req), READ_TIMEOUT)
            .await?
            .1)
    }

    /// `PUT /v1/timelines/{id}/credentials`: needs the timeline's compute running.
    pub async fn set_credentials(
        &self,
        id: TimelineId,
        creds: &Credentials,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/timelines/{id}/credentials");
        self.call::<_, serde_json::Value>(Method::PUT, &path, Some(creds), READ_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `GET /v1/status`.
    /// `GET /v1/copies`: initial copies of following roots under way.
    pub async fn copies(&self) -> Result<Vec<crate::CopyProgress>, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/copies", None, STATUS_TIMEOUT)
            .await?
            .1)
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "/v1/status", None, STATUS_TIMEOUT)
            .await?
            .1)
    }
}
