//! Starting and stopping a branch's compute Pod: what the reconciler does once after a
//! create (to set the branch's credentials) and what the proxy asks for through the wake
//! API. A Pod's spec is immutable, so it is created (an existing one is kept) rather than
//! applied: a changed `postgresParameters` takes effect on the next wake.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::Api;
use tracing::info;

use crate::build::{self, compute_pod_name, pod_state, BranchPlan, PodState, POSTGRES_PORT};
use crate::context::Context;

/// Why a compute could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid compute settings: {0}")]
    Settings(#[from] ramify_compute::settings::SettingsError),
    #[error("{0}")]
    Broken(String),
    #[error("the compute did not become ready within {0:?}")]
    Timeout(Duration),
    /// Its storage node does not (or not yet) hold the timeline, or does not answer.
    #[error("{0}")]
    Storage(String),
}

impl ComputeError {
    /// Stable name for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            ComputeError::Kube(_) => "Kube",
            ComputeError::Settings(_) => "Settings",
            ComputeError::Broken(_) => "ComputeBroken",
            ComputeError::Timeout(_) => "ComputeTimeout",
            ComputeError::Storage(_) => "StorageUnavailable",
        }
    }
}

fn pods(ctx: &Context) -> Api<Pod> {
    Api::namespaced(ctx.client.clone(), &ctx.config.namespace)
}

/// Creates the branch's compute Pod unless it exists; returns its current state.
///
/// A new Pod only once its storage node answers for the timeline: a node rebuilding a
/// lost volume from its backup repository serves nothing until the timeline is back, and
/// a Pod started before that would find (and have the kubelet create) empty directories
/// where its timeline is about to be restored.
pub async fn ensure(ctx: &Context, plan: &BranchPlan) -> Result<PodState, ComputeError> {
    let api = pods(ctx);
    let name = compute_pod_name(&plan.timeline_id);
    if let Some(p) = api.get_opt(&name).await? {
        return Ok(pod_state(&p));
    }
    let id = plan.timeline_id.parse().map_err(|_| {
        ComputeError::Storage(format!("timeline id {:?} is not a UUID", plan.timeline_id))
    })?;
    if let Err(e) = ctx.storage(&plan.storage_node).get_timeline(id).await {
        return Err(ComputeError::Storage(format!(
            "storage node {} does not serve timeline {}: {e}",
            plan.storage_node, plan.timeline_id
        )));
    }
    let pod = build::compute_pod(plan, &ctx.config)?;
    let pod = match api.create(&PostParams::default(), &pod).await {
        Ok(p) => {
            info!(branch = %plan.name, namespace = %plan.namespace, pod = %name, "compute starting");
            p
        }
        Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await? {
            Some(p) => p,
            // Deleted between the two calls (a suspend finishing): the caller retries.
            None => return Ok(PodState::Starting),
        },
        Err(e) => return Err(e.into()),
    };
    Ok(pod_state(&pod))
}

/// The state of a timeline's compute Pod; `None` when there is none.
pub async fn state(ctx: &Context, timeline_id: &str) -> Result<Option<PodState>, ComputeError> {
    Ok(pods(ctx)
        .get_opt(&compute_pod_name(timeline_id))
        .await?
        .map(|p| pod_state(&p)))
}

/// Starts the compute (if needed) and waits until Postgres accepts connections;
/// returns `ip:5432`.
pub async fn wake(
    ctx: &Context,
    plan: &BranchPlan,
    timeout: Duration,
) -> Result<String, ComputeError> {
    let name = compute_pod_name(&plan.timeline_id);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match ensure(ctx, plan).await? {
            PodState::Ready(ip) => return Ok(format!("{ip}:{POSTGRES_PORT}")),
            PodState::Broken(msg) if msg.contains("shutting down") => {
                // A suspend in progress: wait for the Pod to go, then start a new one.
                wait_gone(ctx, &name, deadline).await?;
                continue;
            }
            PodState::Broken(msg) => return Err(ComputeError::Broken(msg)),
            PodState::Starting => {}
        }
        // Until it is ready, broken or gone.
        let settled = |p: Option<&Pod>| !matches!(p.map(pod_state), Some(PodState::Starting));
        let waited =
            tokio::time::timeout_at(deadline, await_condition(pods(ctx), &name, settled)).await;
        match waited {
            Err(_) => return Err(ComputeError::Timeout(timeout)),
            Ok(Err(e)) => {
                return Err(ComputeError::Broken(format!(
                    "watching the compute failed: {e}"
                )))
            }
            Ok(Ok(Some(p))) => match pod_state(&p) {
                PodState::Ready(ip) => return Ok(format!("{ip}:{POSTGRES_PORT}")),
                PodState::Broken(msg) if !msg.contains("shutting down") => {
                    return Err(ComputeError::Broken(msg))
                }
                _ => {}
            },
            // Deleted while starting: loop and create it again.
            Ok(Ok(None)) => {}
        }
    }
}

/// Stops the compute (fast shutdown through the Pod's preStop hook) and waits until the
/// Pod is gone, so a wake right after never finds it half-terminated.
pub async fn suspend(
    ctx: &Context,
    timeline_id: &str,
    timeout: Duration,
) -> Result<bool, ComputeError> {
    let name = compute_pod_name(timeline_id);
    let existed = match pods(ctx).delete(&name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        Err(e) => return Err(e.into()),
    };
    if existed {
        wait_gone(ctx, &name, tokio::time::Instant::now() + timeout).await?;
        info!(pod = %name, "compute stopped");
    }
    Ok(existed)
}

async fn wait_gone(
    ctx: &Context,
    name: &str,
    deadline: tokio::time::Instant,
) -> Result<(), ComputeError> {
    let gone = tokio::time::timeout_at(
        deadline,
        await_condition(pods(ctx), name, |p: Option<&Pod>| p.is_none()),
    )
    .await;
    match gone {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ComputeError::Broken(format!(
            "watching the compute failed: {e}"
        ))),
        Err(_) => Err(ComputeError::Broken(format!(
            "compute Pod {name} is still terminating"
        ))),
    }
}

/// The ready proxy Pods' IPs (they back every branch's Service).
pub async fn proxy_ips(ctx: &Context) -> Result<Vec<String>, kube::Error> {
    let lp = kube::api::ListParams::default().labels(&ctx.config.proxy_selector);
    let list = pods(ctx).list(&lp).await?;
    Ok(list.items.iter().filter_map(build::proxy_pod_ip).collect())
}
