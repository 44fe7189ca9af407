//! The lifecycle itself: create (root or fork), wake, suspend, delete, and the view of a
//! branch — in terms of the storage API and a [`Runtime`], never of processes or Pods.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use ramify_api::{ClientError, CreateTimeline, StorageClient, TimelineId, TimelineInfo};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::locks::KeyedLocks;
use crate::model::*;
use crate::names::validate_branch_name;
use crate::password;
use crate::store::{BranchStore, StoreError};

/// Where computes run and how clients reach them: processes and proxy listeners on this
/// machine (local mode), or Pods and Services (Kubernetes).
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Makes the branch's compute run on `timeline` (running `initdb` for an empty root)
    /// and returns where Postgres listens. Cheap when it already runs; restarts a compute
    /// that died.
    async fn start(&self, branch: &Branch, timeline: &TimelineInfo) -> Result<SocketAddr, String>;
    /// Stops the compute cleanly (fast shutdown); a no-op when it is not running.
    async fn stop(&self, branch: &Branch) -> Result<(), String>;
    /// Whether the compute runs now.
    async fn is_running(&self, branch: &Branch) -> bool;
    /// Runs SQL statements one by one (each in its own transaction: `CREATE DATABASE`
    /// cannot run inside one) as the bootstrap superuser on the running compute.
    async fn admin_sql(&self, branch: &Branch, statements: &[String]) -> Result<(), String>;
    /// Makes the branch reachable at `port` (0 = choose one) and returns the port.
    async fn publish(&self, branch: &Branch, port: u16) -> Result<u16, String>;
    /// Stops accepting clients for the branch and closes their connections.
    async fn unpublish(&self, branch: &Branch);
}

/// Why a lifecycle operation failed, each with the HTTP status the API answers.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Storage(#[from] ClientError),
    #[error("compute: {0}")]
    Runtime(String),
    #[error("branch state: {0}")]
    Store(#[from] StoreError),
    #[error("cannot generate a password: {0}")]
    Random(String),
}

impl LifecycleError {
    /// HTTP status for the API.
    pub fn status(&self) -> u16 {
        match self {
            LifecycleError::Invalid(_) => 400,
            LifecycleError::NotFound(_) => 404,
            LifecycleError::Conflict(_) => 409,
            LifecycleError::Storage(e) => e.status().map(|s| s.as_u16()).unwrap_or(502),
            _ => 500,
        }
    }

    /// Stable code for the API.
    pub fn code(&self) -> String {
        match self {
            LifecycleError::Invalid(_) => "invalid_request".into(),
            LifecycleError::NotFound(_) => "not_found".into(),
            LifecycleError::Conflict(_) => "conflict".into(),
            LifecycleError::Storage(e) => e.code().unwrap_or("storage_unavailable").into(),
            _ => "internal".into(),
        }
    }
}

/// The lifecycle of every branch of one storage node.
pub struct Lifecycle<R: Runtime> {
    storage: StorageClient,
    runtime: Arc<R>,
    store: Arc<dyn BranchStore>,
    /// Host clients use to reach published branches.
    host: String,
    /// One operation at a time per branch name.
    locks: KeyedLocks<String>,
}

impl<R: Runtime> Lifecycle<R> {
    pub fn new(
        storage: StorageClient,
        runtime: Arc<R>,
        store: Arc<dyn BranchStore>,
        host: impl Into<String>,
    ) -> Self {
        Lifecycle {
            storage,
            runtime,
            store,
            host: host.into(),
            locks: KeyedLocks::default(),
        }
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    pub fn storage(&self) -> &StorageClient {
        &self.storage
    }

    fn lock_of(&self, name: &str) -> Arc<Mutex<()>> {
        self.locks.of(&name.to_string())
    }

    /// A stored branch, or a 404 naming the branches that exist.
    pub fn branch(&self, name: &str) -> Result<Branch, LifecycleError> {
        if let Some(b) = self.store.get(name)? {
            return Ok(b);
        }
        let names: Vec<String> = self.store.all()?.into_iter().map(|b| b.name).collect();
        Err(LifecycleError::NotFound(format!(
            "branch {name:?} does not exist (branches: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )))
    }

    /// Every stored branch.
    pub fn branches(&self) -> Result<Vec<Branch>, LifecycleError> {
        Ok(self.store.all()?)
    }

    /// Creates a branch: a new root, or a fork of `parent` at `at`, with its own compute,
    /// port, role and fresh password. Everything made is undone if a later step fails.
    pub async fn create(&self, req: CreateBranch) -> Result<BranchView, LifecycleError> {
        let started = Instant::now();
        validate_branch_name(&req.name).map_err(LifecycleError::Invalid)?;
        if req.at.is_some() && req.parent.is_none() {
            return Err(LifecycleError::Invalid(
                "--at needs --parent: a root branch starts empty".into(),
            ));
        }
        let lock = self.lock_of(&req.name);
        let _g = lock.lock().await;
        if self.store.get(&req.name)?.is_some() {
            return Err(LifecycleError::Conflict(format!(
                "branch {:?} already exists",
                req.name
            )));
        }
        let parent =
            match &req.parent {
                Some(p) => Some(self.branch(p).map_err(|_| {
                    LifecycleError::NotFound(format!("unknown parent branch {p:?}"))
                })?),
                None => None,
            };
        let password = password::generate().map_err(|e| LifecycleError::Random(e.to_string()))?;
        let timeline = self
            .storage
            .create_timeline(&CreateTimeline {
                id: Some(TimelineId::new_v4()),
                parent: parent.as_ref().map(|p| p.timeline),
                at: req.at.clone(),
            })
            .await?
            .value;
        let mut branch = Branch {
            name: req.name.clone(),
            parent: req.parent.clone(),
            timeline: timeline.id,
            at: timeline.at.clone(),
            port: 0,
            user: BRANCH_ROLE.into(),
            password,
            database: BRANCH_DATABASE.into(),
            suspend_after_secs: req.suspend_after_secs.unwrap_or(DEFAULT_SUSPEND_AFTER_SECS),
            created_at: Utc::now(),
        };
        match self
            .bring_up(&mut branch, &timeline, parent.is_none())
            .await
        {
            Ok(()) => {}
            Err(e) => {
                warn!(branch = %branch.name, error = %e, "create failed; undoing");
                self.runtime.unpublish(&branch).await;
                let _ = self.runtime.stop(&branch).await;
                let _ = self.storage.delete_timeline(timeline.id, true).await;
                return Err(e);
            }
        }
        self.store.put(&branch)?;
        info!(branch = %branch.name, timeline = %branch.timeline, port = branch.port, "branch created");
        let mut view = self.view(&branch).await?;
        view.create_ms = Some(started.elapsed().as_millis() as u64);
        Ok(view)
    }

    /// Publishes, starts the compute and sets the branch's credentials.
    async fn bring_up(
        &self,
        branch: &mut Branch,
        timeline: &TimelineInfo,
        root: bool,
    ) -> Result<(), LifecycleError> {
        branch.port = self
            .runtime
            .publish(branch, 0)
            .await
            .map_err(LifecycleError::Runtime)?;
        self.runtime
            .start(branch, timeline)
            .await
            .map_err(LifecycleError::Runtime)?;
        // Passwords are generated from [A-Za-z0-9], so they need no quoting beyond '…'.
        let statements = if root {
            vec![
                format!(
                    "CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD '{}'",
                    branch.user, branch.password
                ),
                format!("CREATE DATABASE {} OWNER {}", branch.database, branch.user),
            ]
        } else {
            // The fork inherited its parent's role and password hash: replace it, so the
            // parent's password never opens this branch.
            vec![format!(
                "ALTER ROLE {} PASSWORD '{}'",
                branch.user, branch.password
            )]
        };
        self.runtime
            .admin_sql(branch, &statements)
            .await
            .map_err(LifecycleError::Runtime)
    }

    /// Starts the branch's compute (if suspended) and returns where Postgres listens.
    pub async fn wake(&self, name: &str) -> Result<SocketAddr, LifecycleError> {
        let branch = self.branch(name)?;
        let timeline = self.storage.get_timeline(branch.timeline).await?;
        self.runtime
            .start(&branch, &timeline)
            .await
            .map_err(LifecycleError::Runtime)
    }

    /// Stops the branch's compute cleanly; the next connection wakes it.
    pub async fn suspend(&self, name: &str) -> Result<(), LifecycleError> {
        let branch = self.branch(name)?;
        self.runtime
            .stop(&branch)
            .await
            .map_err(LifecycleError::Runtime)
    }

    /// Deletes a branch with its compute and storage. A branch with children is refused
    /// (the message names them) unless `force`, which deletes the children first.
    pub async fn delete(&self, name: &str, force: bool) -> Result<(), LifecycleError> {
        let branch = self.branch(name)?;
        let children: Vec<String> = self
            .store
            .all()?
            .into_iter()
            .filter(|b| b.parent.as_deref() == Some(name))
            .map(|b| b.name)
            .collect();
        if !children.is_empty() {
            if !force {
                return Err(LifecycleError::Conflict(format!(
                    "branch {name:?} has child branches ({}); delete them first or use --force to delete them too",
                    children.join(", ")
                )));
            }
            for child in children {
                Box::pin(self.delete(&child, true)).await?;
            }
        }
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        self.runtime.unpublish(&branch).await;
        self.runtime
            .stop(&branch)
            .await
            .map_err(LifecycleError::Runtime)?;
        match self.storage.delete_timeline(branch.timeline, true).await {
            Ok(()) => {}
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.remove(name)?;
        info!(branch = name, "branch deleted");
        Ok(())
    }

    /// The branch as the API shows it, with its storage facts and compute state.
    pub async fn view(&self, branch: &Branch) -> Result<BranchView, LifecycleError> {
        let tl = self.storage.get_timeline(branch.timeline).await?;
        let status = self.storage.status().await?;
        Ok(self.view_with(branch, &tl, status.clone_method).await)
    }

    /// Every branch's view, from one listing of the storage node.
    pub async fn views(&self) -> Result<Vec<BranchView>, LifecycleError> {
        let timelines: HashMap<TimelineId, TimelineInfo> = self
            .storage
            .list_timelines()
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let method = self.storage.status().await?.clone_method;
        let mut out = Vec::new();
        for b in self.store.all()? {
            match timelines.get(&b.timeline) {
                Some(tl) => out.push(self.view_with(&b, tl, method).await),
                None => {
                    warn!(branch = %b.name, timeline = %b.timeline, "branch without its timeline")
                }
            }
        }
        Ok(out)
    }

    async fn view_with(
        &self,
        b: &Branch,
        tl: &TimelineInfo,
        clone_method: ramify_api::CloneMethod,
    ) -> BranchView {
        let running = self.runtime.is_running(b).await;
        BranchView {
            name: b.name.clone(),
            parent: b.parent.clone(),
            timeline_id: b.timeline,
            compute: if running {
                ComputeStatus::Running
            } else {
                ComputeStatus::Suspended
            },
            host: self.host.clone(),
            port: b.port,
            database: b.database.clone(),
            user: b.user.clone(),
            password: b.password.clone(),
            uri: b.uri(&self.host),
            at: b.at.clone(),
            fork_lsn: tl.fork_lsn,
            fork_time: tl.fork_time,
            logical_bytes: tl.logical_bytes,
            exclusive_bytes: tl.exclusive_bytes,
            history_bytes: tl.history_bytes,
            suspend_after_secs: b.suspend_after_secs,
            created_at: b.created_at,
            snapshots: tl.snapshots.clone(),
            clone_method,
            create_ms: None,
        }
    }
}
