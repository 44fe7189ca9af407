//! Ramify's Kubernetes operator: the DatabaseBranch, BranchCheckpoint and BranchRestore
//! controllers, the compute lifecycle on Pods, and the HTTP API the proxy wakes branches
//! through.
#![forbid(unsafe_code)]

pub mod activity;
pub mod backup;
pub mod branch;
pub mod build;
pub mod ca;
pub mod checkpoint;
pub mod cleanup;
pub mod compute;
pub mod conditions;
pub mod config;
pub mod context;
pub mod following;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod ownership;
pub mod ports;
pub mod quantity;
pub mod restore;
pub mod restore_window;
pub mod sharing;
pub mod source;
pub mod token;
pub mod validate;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use ramify_crd::{BranchCheckpoint, BranchRestore, DatabaseBranch};
use tracing::warn;

use crate::build::{COMPONENT_COMPUTE, LABEL_COMPONENT};
use crate::config::Config;
use crate::context::Context;
use crate::metrics::Metrics;

/// Runs the DatabaseBranch, BranchCheckpoint and BranchRestore controllers until
/// SIGTERM/SIGINT. `on_context` receives the
/// shared context as soon as it exists (the HTTP API serves from it).
pub async fn run_controller(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    proxy_token: String,
    on_context: impl FnOnce(Arc<Context>),
) {
    let controller = Controller::new(
        Api::<DatabaseBranch>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics,
        store.clone(),
        proxy_token,
        synced_rx,
    ));
    on_context(Arc::clone(&ctx));
    let ready_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness future wakes only its latest poller, and the controller
        // polls it too: ask again every 100 ms instead of waiting for a wake-up.
        loop {
            let wait = ready_store.wait_until_ready();
            match tokio::time::timeout(std::time::Duration::from_millis(100), wait).await {
                Ok(Ok(())) => {
                    tracing::info!(branches = ready_store.state().len(), "branch watch synced");
                    let _ = synced_tx.send(true);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "branch watch stopped before it synced");
                    return;
                }
                Err(_) => {}
            }
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let computes =
        watcher::Config::default().labels(&format!("{LABEL_COMPONENT}={COMPONENT_COMPUTE}"));
    let proxies = watcher::Config::default().labels(&config.proxy_selector);
    let all_branches = store.clone();
    let checkpoints = Controller::new(
        Api::<BranchCheckpoint>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .shutdown_on_signal()
    .run(
        checkpoint::reconcile,
        checkpoint::error_policy,
        Arc::clone(&ctx),
    )
    .for_each(log_controller_error);
    let restores = Controller::new(
        Api::<BranchRestore>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .shutdown_on_signal()
    .run(restore::reconcile, restore::error_policy, Arc::clone(&ctx))
    .for_each(log_controller_error);
    let branches = controller
        // A compute Pod changing (ready, gone) changes its branch's status.
        .watches(pods.clone(), computes, |pod| {
            branch::branch_of_pod(pod.labels()).map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        })
        // A proxy Pod coming or going changes every branch's EndpointSlice.
        .watches(pods, proxies, move |_| {
            all_branches
                .state()
                .into_iter()
                .map(|b| ObjectRef::from(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(branch::reconcile, branch::error_policy, ctx)
        .for_each(log_controller_error);
    tokio::join!(branches, checkpoints, restores);
}

/// Logs what a controller reports, except reconcile failures: error_policy reported
/// those already (log, metric, Event).
async fn log_controller_error<T, E: std::fmt::Debug>(
    res: Result<T, kube::runtime::controller::Error<E, kube::runtime::watcher::Error>>,
) {
    match res {
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) | Ok(_) => {}
        Err(e) => warn!(error = ?e, "controller error"),
    }
}
