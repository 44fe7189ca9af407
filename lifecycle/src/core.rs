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
    /// Makes the branch's compute run on `timeline` (running `initdb` for a root an older
    /// release created empty) and returns where Postgres listens. Cheap when it already
    /// runs; restarts a compute that died.
    async fn start(&self, branch: &Branch, timeline: &TimelineInfo) -> Result<SocketAddr, String>;
    /// Stops the compute cleanly (fast shutdown); a no-op when it is not running.
    async fn stop(&self, branch: &Branch) -> Result<(), String>;
    /// Stops the compute at once (immediate shutdown, no checkpoint), for a timeline
    /// about to be deleted; sessions still end with Postgres's own termination message.
    async fn stop_now(&self, branch: &Branch) -> Result<(), String> {
        self.stop(branch).await
    }
    /// Takes the running compute off the branch and shuts it down cleanly (fast) in the
    /// background, so that a compute on another timeline can start for the branch at
    /// once; its sessions end as with `stop`. A later start on the detached compute's
    /// timeline waits for that shutdown. By default the compute is stopped right here.
    async fn detach(&self, branch: &Branch) -> Result<(), String> {
        self.stop(branch).await
    }
    /// Whether the compute runs now.
    async fn is_running(&self, branch: &Branch) -> bool;
    /// Where the compute listens if it runs now, when the runtime can tell cheaply (it is
    /// asked on every client connection); `None` makes the lifecycle call `start`.
    async fn address(&self, _branch: &Branch) -> Option<SocketAddr> {
        None
    }
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
    pub(crate) storage: StorageClient,
    pub(crate) runtime: Arc<R>,
    pub(crate) store: Arc<dyn BranchStore>,
    /// Host clients use to reach published branches.
    host: String,
    /// One operation at a time per branch name.
    locks: KeyedLocks<String>,
    /// Expired branches the reaper keeps because they have children (warned once).
    pub(crate) expiry_blocked: std::sync::Mutex<std::collections::HashSet<String>>,
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
            expiry_blocked: Default::default(),
        }
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    /// The storage node client.
    pub fn storage(&self) -> &StorageClient {
        &self.storage
    }

    pub(crate) fn lock_of(&self, name: &str) -> Arc<Mutex<()>> {
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

    /// Forgets a branch whose timeline is gone (a recovery from a backup repository did
    /// not bring it back): only its record, nothing on the storage node or runtime.
    pub fn forget_branch(&self, name: &str) -> Result<(), LifecycleError> {
        Ok(self.store.remove(name)?)
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
        if req.follow.is_some() {
            if req.parent.is_some() {
                return Err(LifecycleError::Invalid(
                    "--follow makes a root that copies another Postgres: it takes no --parent"
                        .into(),
                ));
            }
            if req.suspend_after_secs.is_some_and(|s| s > 0) {
                return Err(LifecycleError::Invalid(
                    "a following root never suspends (it must stay connected to its source to keep up): drop --suspend-after".into(),
                ));
            }
            if req.expires_at.is_some() {
                return Err(LifecycleError::Invalid(
                    "a following root does not expire: delete it when you stop following".into(),
                ));
            }
            let db = crate::names::uri_database(req.follow.as_ref().map_or("", |f| &f.conninfo));
            ramify_api::names::validate_source_database(&db).map_err(|e| {
                LifecycleError::Invalid(format!(
                    "{e} (forks of the follower connect to the database the --follow URI names)"
                ))
            })?;
        }
        if let Some(t) = req.expires_at {
            if req.protected {
                return Err(LifecycleError::Invalid(
                    "a protected branch cannot expire: drop either the protection or the expiry"
                        .into(),
                ));
            }
            crate::expiry::check_future(t, Utc::now())?;
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
        let source = match (&parent, &req.at) {
            (Some(p), Some(at)) => Some(self.resolve_point(p, at).await?),
            (Some(p), None) => Some((p.timeline, ramify_api::At::Latest)),
            (None, _) => None,
        };
        let password = password::generate().map_err(|e| LifecycleError::Random(e.to_string()))?;
        // Pending until the branch is stored: a crash in between leaves a timeline that
        // recover() deletes (with the compute started on it).
        let id = TimelineId::new_v4();
        self.store.set_pending(id, true)?;
        let timeline = self
            .storage
            .create_timeline(&CreateTimeline {
                id: Some(id),
                parent: source.as_ref().map(|(tl, _)| *tl),
                at: source.map(|(_, at)| at),
                follow: req.follow.clone(),
                backup: req.backup,
                from_backup: None,
            })
            .await?
            .value;
        let follows = req.follow.as_ref().map(|f| f.conninfo.clone());
        let mut branch = Branch {
            name: req.name.clone(),
            parent: req.parent.clone(),
            timeline: timeline.id,
            at: timeline.at.clone(),
            port: 0,
            user: BRANCH_ROLE.into(),
            password,
            // A fork keeps its parent's database: a fork of a following root connects to
            // the source's database, where its data is.
            database: parent
                .as_ref()
                .map_or_else(|| BRANCH_DATABASE.to_string(), |p| p.database.clone()),
            suspend_after_secs: match follows {
                Some(_) => 0,
                None => req.suspend_after_secs.unwrap_or(DEFAULT_SUSPEND_AFTER_SECS),
            },
            created_at: Utc::now(),
            protected: req.protected,
            expires_at: req.expires_at,
            checkpoints: vec![],
            former_timelines: vec![],
            backup_of: None,
            password_pending: false,
            follows,
        };
        if let Some(f) = &req.follow {
            // It connects to the database it copies. A physical follower's logins are its
            // source's (the connection string names none); a logical one gets a
            // read-only login of the branch role's name.
            branch.database = crate::names::uri_database(&f.conninfo);
            if f.mode.is_physical() {
                (branch.user, branch.password) = (String::new(), String::new());
            }
        }
        match self
            .bring_up(&mut branch, &timeline, parent.is_none())
            .await
        {
            Ok(()) => {}
            Err(e) => {
                warn!(branch = %branch.name, error = %e, "create failed; undoing");
                self.runtime.unpublish(&branch).await;
                let _ = self.runtime.stop(&branch).await;
                self.discard_timeline(timeline.id).await;
                return Err(e);
            }
        }
        self.store.put(&branch)?;
        self.settle(timeline.id);
        info!(branch = %branch.name, timeline = %branch.timeline, port = branch.port, "branch created");
        // The fork's answer already carries its storage facts: no second accounting sweep.
        let mut view = self.view_of(&branch, &timeline).await?;
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
        if branch.follows.is_some() {
            // A read-only standby: its roles and databases are its source's. A logical
            // follower: the storage node makes its login a reader.
            if branch.user.is_empty() {
                return Ok(());
            }
            return self.set_credentials(branch).await;
        }
        if !root {
            // A fork inherited its parent's role and password hash: the role gets the
            // branch role's attributes and a new password, so the parent's never opens
            // this branch. A fork of a moment before its parent's own credentials were
            // set (the first second of a root) has no role or database yet: both are
            // made. The storage node does this idempotently.
            return self.set_credentials(branch).await;
        }
        // The password travels only as a SCRAM verifier, in a session that logs nothing.
        use ramify_compute::roles;
        let verifier = roles::scram_verifier(&branch.password);
        let mut statements = vec![roles::QUIET_SESSION.to_owned()];
        statements.extend(roles::login_statements(&branch.user, &verifier, false));
        statements.push(roles::revoke_escapes());
        statements.push(roles::create_database(&branch.database, &branch.user));
        self.runtime
            .admin_sql(branch, &statements)
            .await
            .map_err(LifecycleError::Runtime)
    }

    /// Starts the branch's compute (if suspended) and returns where Postgres listens.
    /// Waits for a reset, restore or checkpoint of the branch in progress, so a client
    /// that connects meanwhile reaches the branch's new timeline, never the old one.
    pub async fn wake(&self, name: &str) -> Result<SocketAddr, LifecycleError> {
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        let mut branch = self.branch(name)?;
        self.ensure_running(&mut branch).await
    }

    /// Makes the compute run (the caller holds the branch's lock) and, for a backup
    /// branch's first start, replaces the password its role inherited before anyone can
    /// log in.
    pub(crate) async fn ensure_running(
        &self,
        branch: &mut Branch,
    ) -> Result<SocketAddr, LifecycleError> {
        if !branch.password_pending {
            if let Some(addr) = self.runtime.address(branch).await {
                return Ok(addr);
            }
        }
        // Starting needs the timeline's paths and archive command, not its sizes: no
        // accounting sweep on the wake path.
        let timeline = self
            .storage
            .get_timeline_without_sizes(branch.timeline)
            .await?;
        let addr = self
            .runtime
            .start(branch, &timeline)
            .await
            .map_err(LifecycleError::Runtime)?;
        if branch.password_pending {
            self.set_credentials(branch).await?;
            branch.password_pending = false;
            self.store.put(branch)?;
        }
        Ok(addr)
    }

    /// Makes the branch's role (with its password) and database exist on its running
    /// compute: a fork inherits its source's role and password, another branch's role may
    /// differ.
    pub(crate) async fn set_credentials(&self, branch: &Branch) -> Result<(), LifecycleError> {
        self.storage
            .set_credentials(
                branch.timeline,
                &ramify_api::Credentials {
                    user: branch.user.clone(),
                    password: branch.password.clone(),
                    database: branch.database.clone(),
                    // Local mode has one tenant: the machine's user.
                    disable_other_logins: false,
                    adopt_objects: self.descends_from_follower(branch),
                },
            )
            .await?;
        Ok(())
    }

    /// Whether the branch's data came from a following root (its parent, or an ancestor,
    /// follows another Postgres): its objects are that Postgres's roles'.
    pub(crate) fn descends_from_follower(&self, branch: &Branch) -> bool {
        let mut seen = 0;
        let mut next = branch.parent.clone();
        while let Some(name) = next {
            let Ok(Some(b)) = self.store.get(&name) else {
                return false;
            };
            if b.follows.is_some() {
                return true;
            }
            seen += 1;
            if seen > 1000 {
                return false;
            }
            next = b.parent;
        }
        false
    }

    /// Stops the branch's compute cleanly; the next connection wakes it. Refused while
    /// another operation holds the branch (the proxy retries after another idle period).
    pub async fn suspend(&self, name: &str) -> Result<(), LifecycleError> {
        let lock = self.lock_of(name);
        let Ok(_g) = lock.try_lock() else {
            return Err(LifecycleError::Conflict(format!(
                "branch {name:?} is busy (being created, reset, restored or checkpointed); not suspending it now"
            )));
        };
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
        refuse_if_protected(&branch, "deleted")?;
        let all = self.store.all()?;
        let children: Vec<String> = all
            .iter()
            .filter(|b| b.parent.as_deref() == Some(name))
            .map(|b| b.name.clone())
            .collect();
        if !children.is_empty() {
            if !force {
                return Err(LifecycleError::Conflict(format!(
                    "branch {name:?} has child branches ({}); delete them first or use --force to delete them too",
                    children.join(", ")
                )));
            }
            // Nothing is deleted if any descendant is protected.
            if let Some(p) = descendants(&all, name).into_iter().find(|b| b.protected) {
                return Err(LifecycleError::Conflict(format!(
                    "branch {name:?} cannot be deleted with --force: its descendant {:?} is protected (protected: true); run `ramify branch unprotect {}` first",
                    p.name, p.name
                )));
            }
            for child in children {
                Box::pin(self.delete(&child, true)).await?;
            }
        }
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        // Read again under the lock: a restore that finished meanwhile moved the branch
        // to another timeline (its old one now belongs to the backup branch).
        let branch = self.branch(name)?;
        refuse_if_protected(&branch, "deleted")?;
        self.runtime.unpublish(&branch).await;
        // Its data is deleted next: a shutdown checkpoint would be wasted work.
        self.runtime
            .stop_now(&branch)
            .await
            .map_err(LifecycleError::Runtime)?;
        self.delete_timeline(branch.timeline).await?;
        self.store.remove(name)?;
        self.forget_timeline(branch.timeline)?;
        info!(branch = name, "branch deleted");
        Ok(())
    }

    /// Deletes a timeline with the compute on it (the node stops it); one already gone
    /// is not an error. Returns whether it was still there.
    pub(crate) async fn delete_timeline(&self, id: TimelineId) -> Result<bool, ClientError> {
        match self.storage.delete_timeline(id, true).await {
            Ok(()) => Ok(true),
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a timeline no branch uses any more (compute stopped with it).
    pub(crate) async fn retire_timeline(&self, id: TimelineId) -> Result<(), LifecycleError> {
        self.delete_timeline(id).await?;
        self.settle(id);
        self.forget_timeline(id)
    }

    /// Deletes a pending timeline an operation made and then gave up; it stays pending
    /// (for the next recover) if the delete fails.
    pub(crate) async fn discard_timeline(&self, id: TimelineId) {
        match self.delete_timeline(id).await {
            Ok(_) => self.settle(id),
            Err(e) => {
                warn!(timeline = %id, error = %e, "cannot delete the timeline of a failed operation; the next start deletes it")
            }
        }
    }

    /// The operation on `id` is over (its branch is stored, or it is deleted): no longer
    /// pending. A failure to record that only leaves work for the next recover, which
    /// keeps every timeline a branch points at.
    pub(crate) fn settle(&self, id: TimelineId) {
        if let Err(e) = self.store.set_pending(id, false) {
            warn!(timeline = %id, error = %e, "cannot clear a pending timeline");
        }
    }

    /// Drops every checkpoint that lived on a deleted timeline, and a branch's former
    /// timelines from it back (history beyond a gap cannot be walked to).
    ///
    /// One read-modify-write of the store, so a branch another operation writes meanwhile
    /// is never overwritten with a stale copy.
    fn forget_timeline(&self, id: TimelineId) -> Result<(), LifecycleError> {
        self.store.modify(&mut |all| {
            for b in all.iter_mut() {
                let before = (b.checkpoints.len(), b.former_timelines.len());
                b.checkpoints.retain(|c| c.timeline != id);
                if let Some(pos) = b.former_timelines.iter().position(|f| f.timeline == id) {
                    b.former_timelines.drain(..=pos);
                }
                if before != (b.checkpoints.len(), b.former_timelines.len()) {
                    info!(branch = %b.name, timeline = %id, "forgetting checkpoints of a deleted timeline");
                }
            }
        })?;
        Ok(())
    }

    /// The branch as the API shows it, with its storage facts and compute state.
    pub async fn view(&self, branch: &Branch) -> Result<BranchView, LifecycleError> {
        let tl = self.storage.get_timeline(branch.timeline).await?;
        let status = self.storage.status().await?;
        Ok(self.view_with(branch, &tl, status.clone_method).await)
    }

    /// The branch's view from a timeline answer already at hand.
    pub(crate) async fn view_of(
        &self,
        branch: &Branch,
        tl: &TimelineInfo,
    ) -> Result<BranchView, LifecycleError> {
        let status = self.storage.status().await?;
        Ok(self.view_with(branch, tl, status.clone_method).await)
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
            protected: b.protected,
            expires_at: b.expires_at,
            backup_of: b.backup_of.clone(),
            checkpoints: b.checkpoints.len(),
            snapshots: tl.snapshots.clone(),
            restore_window: Some(tl.restore_window.clone()),
            clone_method,
            create_ms: None,
            following: tl.follow.clone(),
            kept_in: tl.backup.clone(),
        }
    }
}

/// The refusal of what would write a following root's history, which is its source's.
pub(crate) fn refuse_if_following(branch: &Branch, what: &str) -> Result<(), LifecycleError> {
    if let Some(source) = &branch.follows {
        return Err(LifecycleError::Conflict(format!(
            "branch {:?} follows {source}: its history is its source's, so it cannot be {what}; fork it (`ramify branch create NAME --parent {} [--at …]`) and work on the fork",
            branch.name, branch.name
        )));
    }
    Ok(())
}

/// The protection refusal, naming the flag and how to lift it.
pub(crate) fn refuse_if_protected(branch: &Branch, what: &str) -> Result<(), LifecycleError> {
    if branch.protected {
        return Err(LifecycleError::Conflict(format!(
            "branch {:?} is protected (protected: true), so it cannot be {what}; run `ramify branch unprotect {}` first",
            branch.name, branch.name
        )));
    }
    Ok(())
}

/// Every branch below `name` (children, their children, …).
pub(crate) fn descendants<'a>(all: &'a [Branch], name: &str) -> Vec<&'a Branch> {
    let mut out: Vec<&Branch> = Vec::new();
    let mut frontier = vec![name.to_string()];
    while let Some(n) = frontier.pop() {
        for b in all
            .iter()
            .filter(|b| b.parent.as_deref() == Some(n.as_str()))
        {
            if !out.iter().any(|o| o.name == b.name) {
                frontier.push(b.name.clone());
                out.push(b);
            }
        }
    }
    out
}
