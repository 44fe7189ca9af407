//! The DatabaseBranch controller: dereference (parent, sharing, storage node) → validate
//! → storage timeline → build and apply the Timeline, Secret, Service and EndpointSlice →
//! set the branch's credentials once on its compute → publish status. A finalizer deletes
//! the compute, the storage timeline and the objects, after the branch's children.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Resource, ResourceExt};
use ramify_api::{ClientError, CreateTimeline, Credentials, TimelineId, TimelineInfo};
use ramify_crd::{
    ComputeState, ComputeStatus, ConnectionStatus, DatabaseBranch, DatabaseBranchStatus, Phase,
    Timeline, TimelineRef, SUSPEND_REQUEST_ANNOTATION, WAKE_REQUEST_ANNOTATION,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::build::{self, BranchPlan, ComputeFacts, PodState, FIELD_MANAGER, POSTGRES_PORT};
use crate::compute::{self, ComputeError};
use crate::conditions::{self, COMPUTE_READY, FOLLOWING, READY, STORAGE_READY};
use crate::context::Context;
use crate::following;
use crate::ownership;
use crate::sharing;
use crate::source::SourceProblem;
use crate::validate::{validate_spec, Problem, ValidSpec};

mod moving;
mod placement;
mod plan;
mod timeline;

pub(crate) use moving::in_progress as moving;
pub use plan::{plan, ready_plan, PlanError};
pub(crate) use timeline::storage_nodes;
use timeline::{adopt_timeline, create_timeline};
pub use timeline::{ADOPT_CREDENTIALS_ANNOTATION, ADOPT_TIMELINE_ANNOTATION};

/// Finalizer guarding a branch's storage timeline and compute.
pub const FINALIZER: &str = "ramify.dev/storage";

/// Why a reconcile failed (and will be retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("storage node {node}: {source}")]
    Storage {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    NoStorageNode(String),
    #[error("compute: {0}")]
    Compute(#[from] ComputeError),
    #[error("{0}")]
    HasChildren(String),
    #[error("{0}")]
    Protected(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot generate a password: {0}")]
    Random(String),
    #[error("no free proxy port in 20000-29999")]
    PortsExhausted,
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error's name, for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "Kube",
            Error::Storage { .. } => "StorageUnavailable",
            Error::NoStorageNode(_) => "NoStorageNode",
            Error::Compute(e) => e.kind(),
            Error::HasChildren(_) => "HasChildren",
            Error::Protected(_) => "Protected",
            Error::Conflict(_) => "Conflict",
            Error::Random(_) => "Random",
            Error::PortsExhausted => "PortsExhausted",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "Finalizer",
            },
        }
    }
}

/// Consecutive failures per branch, for exponential backoff.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The delay before retry number n of `key` (1 s, 2 s, 4 s, … 5 min).
    pub fn next(&self, key: &str) -> Duration {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets `key`'s failures (it succeeded).
    pub fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Reconciles one branch, holding its lock and working from a fresh read: a restore may
/// have moved it to another timeline since the watch delivered it.
#[instrument(skip_all, fields(branch = %branch.name_any(), namespace = %branch.namespace().unwrap_or_default()))]
pub async fn reconcile(branch: Arc<DatabaseBranch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = branch.namespace().unwrap_or_default();
    let api: Api<DatabaseBranch> = Api::namespaced(ctx.client.clone(), &ns);
    let lock = ctx.branch_lock(&ns, &branch.name_any());
    let _guard = lock.lock().await;
    let Some(branch) = api.get_opt(&branch.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let branch = Arc::new(branch);
    let key = branch.uid().unwrap_or_default();
    let result = finalizer(&api, FINALIZER, branch, |event| async {
        match event {
            finalizer::Event::Apply(b) => apply(&b, &ctx).await,
            finalizer::Event::Cleanup(b) => crate::cleanup::cleanup(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

/// Requeues a failed reconcile with exponential backoff (1 s … 5 min) and reports it as a
/// Warning event; a deletion waiting for children (or for `spec.protected` to be
/// cleared) is retried quietly: its condition and one event already say why.
pub fn error_policy(branch: Arc<DatabaseBranch>, err: &Error, ctx: Arc<Context>) -> Action {
    let kind = err.kind();
    ctx.metrics.reconcile_failed(kind);
    match kind {
        "HasChildren" => return Action::requeue(Duration::from_secs(5)),
        "Protected" => return Action::requeue(Duration::from_secs(30)),
        _ => {}
    }
    retry_with_event(branch, err, ctx)
}

/// Requeues a failed reconcile of any of the operator's objects with exponential backoff
/// (1 s … 5 min) and reports it as a Warning event on the object.
pub fn retry_with_event<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let kind = err.kind();
    let delay = ctx.backoff.next(&obj.uid().unwrap_or_default());
    warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    let note = err.to_string();
    tokio::spawn(async move {
        publish(&ctx, obj.as_ref(), EventType::Warning, kind, note).await;
    });
    Action::requeue(delay)
}

/// Publishes an Event about a branch, checkpoint or restore (failures to publish are
/// logged, not returned).
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    b: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &b.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
}

pub(crate) fn storage_err(node: &str) -> impl FnOnce(ClientError) -> Error + '_ {
    move |source| Error::Storage {
        node: node.to_string(),
        source,
    }
}

/// What the reconcile found out, written as the branch's status.
struct Outcome {
    status: DatabaseBranchStatus,
    action: Action,
}

async fn apply(b: &DatabaseBranch, ctx: &Context) -> Result<Action, Error> {
    let old = b.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let expires = match expiry(b, ctx, &mut status).await? {
        Expiry::Deleted => return Ok(Action::await_change()),
        Expiry::At(at) => at,
    };
    let outcome: Result<Outcome, Error> = match converge(b, ctx, &mut status).await {
        Ok(action) => Ok(Outcome { status, action }),
        Err(Step::Problem(p)) => {
            let action = if p.reason == "InvalidSpec" {
                Action::await_change()
            } else {
                Action::requeue(Duration::from_secs(30))
            };
            status.phase = Some(Phase::Failed);
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                p.reason,
                &p.message,
                b.metadata.generation,
            );
            Ok(Outcome { status, action })
        }
        Err(Step::Wait {
            reason,
            message,
            after,
        }) => {
            if status.timeline.is_none() {
                status.phase = Some(Phase::Pending);
            }
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                reason,
                message,
                b.metadata.generation,
            );
            Ok(Outcome {
                status,
                action: Action::requeue(after),
            })
        }
        Err(Step::Fail(e)) => {
            // Record what failed where the user looks, then let error_policy back off.
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                e.kind(),
                e.to_string(),
                b.metadata.generation,
            );
            if status.phase.is_none() {
                status.phase = Some(Phase::Pending);
            }
            write_status(b, ctx, &old, &status).await?;
            return Err(e);
        }
    };
    let Outcome { status, mut action } = outcome?;
    write_status(b, ctx, &old, &status).await?;
    done_requests(b, ctx, &status).await?;
    // Come back when the branch expires, if that is before the next periodic look.
    if let Some(at) = expires {
        let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        if left < Duration::from_secs(60) {
            action = Action::requeue(left.max(Duration::from_millis(100)));
        }
    }
    Ok(action)
}

/// Removes a wake or suspend request annotation once the status shows it done, so whoever
/// asked sees the state it wanted when the annotation is gone.
async fn done_requests(
    b: &DatabaseBranch,
    ctx: &Context,
    status: &DatabaseBranchStatus,
) -> Result<(), Error> {
    let state = status.compute.as_ref().map(|c| c.state);
    let done: Vec<&str> = [
        (WAKE_REQUEST_ANNOTATION, ComputeState::Running),
        (SUSPEND_REQUEST_ANNOTATION, ComputeState::Suspended),
    ]
    .into_iter()
    .filter(|(a, want)| b.annotations().contains_key(*a) && state == Some(*want))
    .map(|(a, _)| a)
    .collect();
    if done.is_empty() {
        return Ok(());
    }
    let remove: serde_json::Map<String, serde_json::Value> = done
        .iter()
        .map(|a| (a.to_string(), serde_json::Value::Null))
        .collect();
    Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": remove}})),
        )
        .await?;
    Ok(())
}

/// Whether the branch was deleted for its expiry, or when it expires.
enum Expiry {
    Deleted,
    At(Option<chrono::DateTime<chrono::Utc>>),
}

/// Condition type set while an expired branch is kept because it is protected.
pub const EXPIRED: &str = "Expired";

/// Records when the branch expires and deletes it (with an Event saying why) once that
/// time passed, unless it is protected: then an `Expired` condition and a Warning event
/// say that it was kept and how to let it go.
async fn expiry(
    b: &DatabaseBranch,
    ctx: &Context,
    status: &mut DatabaseBranchStatus,
) -> Result<Expiry, Error> {
    let at = match b.expires_at() {
        Ok(at) => at,
        Err(e) => {
            warn!(error = %e, "spec.ttl cannot be used");
            None
        }
    };
    status.expires_at = at;
    let now = chrono::Utc::now();
    let Some(at) = at.filter(|at| *at <= now) else {
        status.conditions.retain(|c| c.type_ != EXPIRED);
        return Ok(Expiry::At(at));
    };
    let how = match (&b.spec.expires_at, &b.spec.ttl) {
        (Some(_), _) | (None, None) => "spec.expiresAt".to_string(),
        (None, Some(ttl)) => format!("spec.ttl {ttl}"),
    };
    if b.is_protected() {
        let known = status.conditions.iter().any(|c| c.type_ == EXPIRED);
        let message = format!(
            "expired at {} ({how}) but kept: spec.protected is true; set it to false to let the branch be deleted",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        conditions::set(
            &mut status.conditions,
            EXPIRED,
            true,
            "Protected",
            &message,
            b.metadata.generation,
        );
        if !known {
            publish(ctx, b, EventType::Warning, "ExpiryRefused", message).await;
        }
        return Ok(Expiry::At(Some(at)));
    }
    let api: Api<DatabaseBranch> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    publish(
        ctx,
        b,
        EventType::Normal,
        "Expired",
        format!(
            "expired at {} ({how}): deleting the branch with its compute and storage",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .await;
    info!(expired_at = %at, "branch expired; deleting it");
    crate::cleanup::delete_if_exists(&api, &b.name_any()).await?;
    Ok(Expiry::Deleted)
}

/// Why `converge` stopped before the branch was ready.
pub(crate) enum Step {
    /// The user must change the spec (or the parent): `Failed`.
    Problem(Problem),
    /// Something else must happen first (parent ready, compute starting).
    Wait {
        reason: &'static str,
        message: String,
        after: Duration,
    },
    /// A real error: retried with backoff.
    Fail(Error),
}

impl<E: Into<Error>> From<E> for Step {
    fn from(e: E) -> Step {
        Step::Fail(e.into())
    }
}

pub(crate) fn wait(reason: &'static str, message: impl Into<String>, after: Duration) -> Step {
    Step::Wait {
        reason,
        message: message.into(),
        after,
    }
}

async fn converge(
    b: &DatabaseBranch,
    ctx: &Context,
    status: &mut DatabaseBranchStatus,
) -> Result<Action, Step> {
    let cfg = &ctx.config;
    let name = b.name_any();
    let ns = b.namespace().unwrap_or_default();
    let uid = b.uid().unwrap_or_default();
    let generation = b.metadata.generation;
    let spec = validate_spec(b, cfg).map_err(Step::Problem)?;

    // Dereference: where the timeline is (or will be), forking from what.
    let (timeline, info) = match status.timeline.clone() {
        Some(t) => {
            let id: TimelineId = t.id.parse().map_err(|_| {
                Step::Problem(Problem {
                    reason: "TimelineLost",
                    message: format!("status.timeline.id {:?} is not a UUID", t.id),
                })
            })?;
            match ctx.storage(&t.storage_node).get_timeline(id).await {
                Ok(info) => (t, info),
                Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {
                    return Err(Step::Problem(Problem {
                        reason: "TimelineLost",
                        message: format!(
                            "timeline {} is not on storage node {}: if the node is restoring its volume from its backup repository, this clears once the timeline is back (its log names any that failed); otherwise the data is gone: delete and recreate the branch",
                            t.id, t.storage_node
                        ),
                    }))
                }
                Err(e) => return Err(storage_err(&t.storage_node)(e).into()),
            }
        }
        None => match b.annotations().get(ADOPT_TIMELINE_ANNOTATION) {
            Some(id) => adopt_timeline(b, ctx, id, status).await?,
            None => create_timeline(b, ctx, &spec, &uid).await?,
        },
    };
    // `spec.storageNode` naming another node than the branch's: moved there.
    let (timeline, info) = moving::converge(b, ctx, &spec, status, timeline, info).await?;
    status.timeline = Some(timeline.clone());
    status.fork_lsn = info.fork_lsn.map(|l| l.to_string());
    status.fork_time = info.fork_time;
    status.logical_bytes = i64::try_from(info.logical_bytes).ok();
    status.exclusive_bytes = i64::try_from(info.exclusive_bytes).ok();
    status.exclusive_size = Some(conditions::human_bytes(info.exclusive_bytes as i64));
    status.restore_window = crate::restore_window::status(&info);
    conditions::set(
        &mut status.conditions,
        STORAGE_READY,
        true,
        "TimelineReady",
        format!("timeline {} on {}", timeline.id, timeline.storage_node),
        generation,
    );
    if spec.following {
        following::update(ctx, b, &info, status).await;
    } else {
        status.following = None;
        status.conditions.retain(|c| c.type_ != FOLLOWING);
    }
    crate::backup::update(
        &mut status.conditions,
        &info,
        spec.backup,
        &timeline.storage_node,
        generation,
    );

    let proxy_port = match status.proxy_port.and_then(|p| u16::try_from(p).ok()) {
        Some(p) => p,
        None => ctx
            .ports
            .allocate(&uid, &ctx.ports_in_use())
            .ok_or(Error::PortsExhausted)?,
    };
    status.proxy_port = Some(proxy_port.into());
    let (plan, follower_parent) = compute_plan(b, ctx, &spec, &timeline, proxy_port, &info).await?;

    // Build and apply the children: only over objects this branch owns (a Secret or
    // Service of the same name someone else made is a conflict, never overwritten).
    let conn_name = build::connection_name(&name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let slice_name = build::endpoint_slice_name(&name);
    let own_secret = ownership::claim(&secrets, "Secret", &ns, &conn_name, &uid)
        .await
        .map_err(Error::from)?
        .map_err(Step::Problem)?;
    ownership::claim(&services, "Service", &ns, &conn_name, &uid)
        .await
        .map_err(Error::from)?
        .map_err(Step::Problem)?;
    ownership::claim(&slices, "EndpointSlice", &ns, &slice_name, &uid)
        .await
        .map_err(Error::from)?
        .map_err(Step::Problem)?;
    // A physical follower has no role of its own: its Secret names no password.
    let password = if spec.source_logins {
        String::new()
    } else {
        password(own_secret)?
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let tl_api: Api<Timeline> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let tl_name = build::timeline_name(&timeline.id);
    tl_api
        .patch(&tl_name, &pp, &Patch::Apply(build::timeline(&plan, cfg)))
        .await
        .map_err(Error::from)?;
    let tl_status = json!({
        "apiVersion": "ramify.dev/v1alpha1",
        "kind": "Timeline",
        "status": {
            "forkLsn": status.fork_lsn,
            "forkTime": info.fork_time,
            "logicalBytes": info.logical_bytes,
            "exclusiveBytes": info.exclusive_bytes,
            "historyBytes": info.history_bytes,
            "snapshots": info.snapshots.len(),
            "restoreWindow": status.restore_window,
        }
    });
    tl_api
        .patch_status(&tl_name, &pp, &Patch::Apply(tl_status))
        .await
        .map_err(Error::from)?;
    secrets
        .patch(
            &conn_name,
            &pp,
            &Patch::Apply(build::secret(b, &plan, &password, cfg)),
        )
        .await
        .map_err(Error::from)?;
    services
        .patch(&conn_name, &pp, &Patch::Apply(build::service(b, &plan)))
        .await
        .map_err(Error::from)?;
    let proxies = compute::proxy_ips(ctx).await.map_err(Error::from)?;
    slices
        .patch(
            &slice_name,
            &pp,
            &Patch::Apply(build::endpoint_slice(b, &plan, &proxies)),
        )
        .await
        .map_err(Error::from)?;
    status.connection = Some(ConnectionStatus {
        host: build::service_host(&name, &ns, &cfg.cluster_domain),
        port: POSTGRES_PORT.into(),
        database: plan.database.clone(),
        // A physical follower's logins are its source's roles: none is named.
        user: if spec.source_logins {
            String::new()
        } else {
            plan.user.clone()
        },
        secret_name: conn_name,
    });

    // Credentials, once per timeline: they need the compute running. A physical follower
    // is a read-only standby whose roles are its source's: it only needs its compute up.
    // A logical follower's are set like any branch's; the storage node makes them a
    // read-only login.
    if status.credentials_timeline.as_deref() != Some(timeline.id.as_str()) {
        status.phase = Some(Phase::Creating);
        match compute::ensure(ctx, &plan).await? {
            PodState::Ready(_) if spec.source_logins => {
                status.credentials_timeline = Some(timeline.id.clone());
            }
            PodState::Ready(_) => {
                let creds = Credentials {
                    user: plan.user.clone(),
                    password: password.clone(),
                    database: plan.database.clone(),
                    // Forked from another namespace: the parent's tenant made the other
                    // logins and knows their passwords; none of them opens this branch.
                    disable_other_logins: b.parent_namespace().is_some_and(|p| p != ns),
                    // The source's objects belong to its roles: the branch's role is made
                    // a member of them, so it can use and migrate what it forked.
                    adopt_objects: follower_parent.is_some(),
                };
                let node = &timeline.storage_node;
                let id: TimelineId = timeline
                    .id
                    .parse()
                    .map_err(|_| Error::NoStorageNode("bad id".into()))?;
                match ctx.storage(node).set_credentials(id, &creds).await {
                    Ok(()) => status.credentials_timeline = Some(timeline.id.clone()),
                    // The socket is not there yet (Postgres just became ready): soon.
                    Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => {
                        return Err(wait(
                            "Creating",
                            format!("setting credentials: {e}"),
                            Duration::from_secs(1),
                        ))
                    }
                    Err(e) => return Err(storage_err(node)(e).into()),
                }
            }
            PodState::Starting => {
                set_compute(status, ComputeState::Starting, &plan);
                conditions::set(
                    &mut status.conditions,
                    COMPUTE_READY,
                    false,
                    "Starting",
                    "the compute is starting for the first time",
                    generation,
                );
                return Err(wait(
                    "Creating",
                    "waiting for the compute to start",
                    Duration::from_secs(1),
                ));
            }
            PodState::Broken(msg) => {
                conditions::set(
                    &mut status.conditions,
                    COMPUTE_READY,
                    false,
                    "ComputeFailed",
                    &msg,
                    generation,
                );
                return Err(Error::Compute(ComputeError::Broken(msg)).into());
            }
        }
    }

    // A wake or suspend asked for through an annotation (`kubectl ramify branch wake`).
    let annotations = b.annotations();
    if spec.following {
        // Always running, so that it keeps up with its source: started again when its Pod
        // is gone (deleted, its machine restarted), and never suspended.
        compute::ensure(ctx, &plan).await.map_err(Error::from)?;
        if annotations.contains_key(SUSPEND_REQUEST_ANNOTATION) {
            following::refuse_suspend(ctx, b).await?;
        }
    } else if annotations.contains_key(WAKE_REQUEST_ANNOTATION) {
        info!("waking the compute on request");
        compute::wake_ready(ctx, &plan).await.map_err(Error::from)?;
        // The proxy did not wake it, so it must be told to idle-track it (the route
        // table's compute marker changes).
        let mut c = status.compute.clone().unwrap_or_default();
        c.woken_on_request = Some(chrono::Utc::now());
        status.compute = Some(c);
    } else if annotations.contains_key(SUSPEND_REQUEST_ANNOTATION) {
        info!("suspending the compute on request");
        compute::suspend(ctx, &timeline.id, Duration::from_secs(90))
            .await
            .map_err(Error::from)?;
    }
    let state = match compute::state(ctx, &timeline.id)
        .await
        .map_err(Error::from)?
    {
        Some(PodState::Ready(_)) => ComputeState::Running,
        Some(PodState::Starting) => ComputeState::Starting,
        Some(PodState::Broken(msg)) => {
            conditions::set(
                &mut status.conditions,
                COMPUTE_READY,
                false,
                "ComputeFailed",
                &msg,
                generation,
            );
            ComputeState::Starting
        }
        None => ComputeState::Suspended,
    };
    set_compute(status, state, &plan);
    // Ready means connectable: every proxy behind the Service must listen for the branch.
    let waiting = ctx.proxies_without(&proxies, &format!("{ns}/{name}"));
    if !waiting.is_empty() {
        status.phase = Some(Phase::Creating);
        return Err(wait(
            "WaitingForProxy",
            format!(
                "waiting for proxy {} to route the branch",
                waiting.join(", ")
            ),
            Duration::from_millis(500),
        ));
    }
    if !matches!(status.conditions.iter().find(|c| c.type_ == COMPUTE_READY), Some(c) if c.reason == "ComputeFailed" && state != ComputeState::Running)
    {
        let msg = match state {
            ComputeState::Running => "Postgres is running",
            ComputeState::Starting => "Postgres is starting",
            ComputeState::Suspended => "suspended; the next connection wakes it",
        };
        conditions::set(
            &mut status.conditions,
            COMPUTE_READY,
            true,
            &format!("{state:?}"),
            msg,
            generation,
        );
    }
    status.phase = Some(Phase::Ready);
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Ready",
        format!(
            "connect with Secret {} (Service {}:{POSTGRES_PORT})",
            build::connection_name(&name),
            build::service_host(&name, &ns, &cfg.cluster_domain)
        ),
        generation,
    );
    status.observed_generation = generation;
    Ok(Action::requeue(if spec.following {
        following::STATUS_EVERY
    } else {
        Duration::from_secs(60)
    }))
}

/// The plan of the branch's compute on `timeline`, and the following branch its data
/// descends from, if any.
pub(super) async fn compute_plan(
    b: &DatabaseBranch,
    ctx: &Context,
    spec: &ValidSpec,
    timeline: &TimelineRef,
    proxy_port: u16,
    info: &TimelineInfo,
) -> Result<(BranchPlan, Option<DatabaseBranch>), Error> {
    let facts = ComputeFacts::of(info);
    ctx.remember_compute_facts(&timeline.id, &facts);
    let mut plan = plan(
        b,
        spec,
        timeline,
        proxy_port,
        &facts,
        info.parent.map(|p| build::timeline_name(&p.to_string())),
    );
    // Whose objects the data holds: a following branch's, and every fork descending from
    // one, are an external Postgres's, owned by its roles, in its database.
    let follower_parent = if spec.following {
        None
    } else {
        following::follower_parent(ctx, b).await?
    };
    plan.database = following::database(spec, info, follower_parent.as_ref());
    Ok((plan, follower_parent))
}

fn set_compute(status: &mut DatabaseBranchStatus, state: ComputeState, plan: &BranchPlan) {
    let previous = status.compute.clone().unwrap_or_default();
    status.compute = Some(ComputeStatus {
        state,
        pod: (state != ComputeState::Suspended).then(|| build::compute_pod_name(&plan.timeline_id)),
        last_transition: if previous.state == state && previous.last_transition.is_some() {
            previous.last_transition
        } else {
            Some(chrono::Utc::now())
        },
        woken_on_request: previous.woken_on_request,
    });
}

/// The branch's password: the one in its own connection Secret, or a new one.
fn password(own_secret: Option<Secret>) -> Result<String, Error> {
    let existing = own_secret
        .and_then(|s| s.data?.get("password").cloned())
        .and_then(|p| String::from_utf8(p.0).ok())
        .filter(|p| ramify_api::names::validate_password(p).is_ok());
    match existing {
        Some(p) => Ok(p),
        None => ramify_lifecycle::password::generate().map_err(|e| Error::Random(e.to_string())),
    }
}

/// Patches the status subresource when it changed, and publishes an Event when the phase
/// or the Ready condition's reason changed.
pub(crate) async fn write_status(
    b: &DatabaseBranch,
    ctx: &Context,
    old: &DatabaseBranchStatus,
    new: &DatabaseBranchStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    let api: Api<DatabaseBranch> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    api.patch_status(
        &b.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status_patch(old, new) })),
    )
    .await?;
    let ready = |s: &DatabaseBranchStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if old.phase != new.phase || ready(old).map(|r| r.1) != ready(new).map(|r| r.1) {
        if let Some((st, reason, message)) = ready(new) {
            let type_ = if st == "True"
                || matches!(new.phase, Some(Phase::Creating) | Some(Phase::Pending))
                    && reason != "InvalidSpec"
                    && reason != "ParentNotShared"
            {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(ctx, b, type_, &reason, message).await;
        }
    }
    Ok(())
}

/// `new` as a merge patch over `old`: a field `new` leaves out (an `Option` now `None`,
/// like `moving` once a move is done) is `null`, which removes it; left out, a merge
/// patch would keep the old value.
fn status_patch(old: &DatabaseBranchStatus, new: &DatabaseBranchStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(new).unwrap_or_default();
    if let (Some(p), Ok(serde_json::Value::Object(o))) =
        (patch.as_object_mut(), serde_json::to_value(old))
    {
        for k in o.keys() {
            p.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    patch
}

/// Labels of a compute Pod → the branch it serves (for the controller's watch).
pub fn branch_of_pod(labels: &BTreeMap<String, String>) -> Option<(String, String)> {
    Some((
        labels.get(build::LABEL_BRANCH_NAMESPACE)?.clone(),
        labels.get(build::LABEL_BRANCH_NAME)?.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_that_went_away_is_removed_by_the_patch() {
        let old = DatabaseBranchStatus {
            moving: Some(ramify_crd::BranchMove {
                from: "a".into(),
                to: "b".into(),
                sealed_lsn: None,
            }),
            proxy_port: Some(20001),
            ..Default::default()
        };
        let new = DatabaseBranchStatus {
            proxy_port: Some(20001),
            ..Default::default()
        };
        let p = status_patch(&old, &new);
        assert_eq!(p["moving"], serde_json::Value::Null);
        assert!(p.as_object().unwrap().contains_key("moving"));
        assert_eq!(p["proxyPort"], 20001);
    }
}
