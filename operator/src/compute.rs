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

/// How far a wake waits for the compute it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeUntil {
    /// The Pod is Ready: its readiness probe saw Postgres accept connections.
    #[default]
    Ready,
    /// The Pod has its IP (its sandbox and network exist; the container may still be
    /// starting). Measured on the test cluster, the IP reaches the API ~0.25-0.4 s
    /// before the container shows running and 0.5-1.4 s before Ready (the kubelet
    /// probes once a second). A caller that retries until Postgres accepts (the proxy: a
    /// refused connection, or Postgres's own 57P03 while it starts or replays WAL)
    /// connects that much sooner.
    Address,
}

/// The compute's address once its Pod has one (see [`WakeUntil::Address`]); never for
/// a Pod being deleted.
fn pod_address(pod: &Pod) -> Option<&str> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// Starts the compute (if needed) and waits until Postgres accepts connections, or only
/// until the Pod has its address (`until`); returns `ip:5432`.
pub async fn wake(
    ctx: &Context,
    plan: &BranchPlan,
    timeout: Duration,
    until: WakeUntil,
) -> Result<String, ComputeError> {
    let name = compute_pod_name(&plan.timeline_id);
    let deadline = tokio::time::Instant::now() + timeout;
    let early = |p: &Pod| {
        (until == WakeUntil::Address)
            .then(|| pod_address(p))
            .flatten()
            .map(str::to_owned)
    };
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
        // Until it is ready (or has its address, if that is enough), broken or gone.
        let settled = |p: Option<&Pod>| {
            !matches!(p.map(pod_state), Some(PodState::Starting)) || p.and_then(early).is_some()
        };
        let waited =
            tokio::time::timeout_at(deadline, await_condition(pods(ctx), &name, settled)).await;
        match waited {
            Err(_) => return Err(ComputeError::Timeout(timeout)),
            Ok(Err(e)) => {
                return Err(ComputeError::Broken(format!(
                    "watching the compute failed: {e}"
                )))
            }
            Ok(Ok(Some(p))) => match (pod_state(&p), early(&p)) {
                (PodState::Ready(ip), _) | (PodState::Starting, Some(ip)) => {
                    return Ok(format!("{ip}:{POSTGRES_PORT}"))
                }
                (PodState::Broken(msg), _) if !msg.contains("shutting down") => {
                    return Err(ComputeError::Broken(msg))
                }
                _ => {}
            },
            // Deleted while starting: loop and create it again.
            Ok(Ok(None)) => {}
        }
    }
}

/// [`wake`] until the Pod is Ready, within the wake API's timeout: for the operator's own
/// wakes (a checkpoint, a wake on request, a move's one-time start), whose callers
/// connect at once or read the branch's status after.
pub async fn wake_ready(ctx: &Context, plan: &BranchPlan) -> Result<String, ComputeError> {
    wake(ctx, plan, crate::http::WAKE_TIMEOUT, WakeUntil::Ready).await
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn pod(ip: Option<&str>, container: &str, state: ContainerState) -> Pod {
        Pod {
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_owned),
                container_statuses: Some(vec![ContainerStatus {
                    name: container.into(),
                    state: Some(state),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_compute_has_an_address_once_its_pod_has_an_ip_and_is_not_going() {
        assert_eq!(pod_address(&Pod::default()), None);
        let creating = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_address(&pod(None, "postgres", creating.clone())), None);
        // The sandbox has its IP while the container is still being created.
        assert_eq!(
            pod_address(&pod(Some("10.1.1.1"), "postgres", creating)),
            Some("10.1.1.1")
        );
        assert_eq!(
            pod_address(&pod(Some("10.1.1.1"), "postgres", running())),
            Some("10.1.1.1")
        );
        // A Pod being deleted (a suspend) is never handed out.
        let mut stopping = pod(Some("10.1.1.1"), "postgres", running());
        stopping.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(pod_address(&stopping), None);
    }

    #[test]
    fn a_wake_waits_for_ready_unless_asked_otherwise() {
        assert_eq!(WakeUntil::default(), WakeUntil::Ready);
        let query = |q: &str| {
            let uri: axum::http::Uri = format!("/wake?{q}").parse().unwrap();
            axum::extract::Query::<crate::http::WakeParams>::try_from_uri(&uri).map(|q| q.0)
        };
        assert_eq!(
            query("proxy=p-1&until=address").unwrap().until,
            Some(WakeUntil::Address)
        );
        assert_eq!(query("until=ready").unwrap().until, Some(WakeUntil::Ready));
        assert_eq!(query("proxy=p-1").unwrap().until, None);
        assert!(query("until=soon").is_err());
    }
}
