//! A local port forwarded to a branch: each connection to 127.0.0.1:<port> becomes a
//! port-forward (through the API server) to a ready proxy Pod on the branch's proxy port.
//! The branch's Service has no selector, so the proxy Pod is the only thing to forward to;
//! connecting through it wakes a suspended branch like any client does.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::errors::{from_kube, KubeError, Op};

/// Label of the proxy Pods (the chart's `app.kubernetes.io/component: proxy`).
pub const PROXY_SELECTOR: &str = "app.kubernetes.io/component=proxy";

/// A running forward; dropping it stops it.
pub struct Forward {
    /// The local address clients connect to.
    pub local: SocketAddr,
    /// The proxy Pod forwarded to.
    pub pod: String,
    task: JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a Pod is Running with its Ready condition true.
pub fn pod_ready(p: &Pod) -> bool {
    let Some(st) = &p.status else { return false };
    st.phase.as_deref() == Some("Running")
        && st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A ready proxy Pod in the storage namespace.
pub async fn proxy_pod(
    client: &Client,
    storage_ns: &str,
    server: &str,
) -> Result<String, KubeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), storage_ns);
    let list = pods
        .list(&ListParams::default().labels(PROXY_SELECTOR))
        .await
        .map_err(|e| {
            from_kube(
                e,
                Op {
                    verb: "list",
                    resource: "pods",
                    namespace: Some(storage_ns),
                },
                server,
            )
        })?;
    if list.items.is_empty() {
        return Err(KubeError::Other(format!(
            "no proxy Pod ({PROXY_SELECTOR}) in namespace \"{storage_ns}\": is Ramify installed there? (name its namespace with --storage-namespace or RAMIFY_NAMESPACE)"
        )));
    }
    list.items
        .iter()
        .find(|p| pod_ready(p))
        .map(|p| p.name_any())
        .ok_or_else(|| {
            KubeError::Other(format!(
                "no proxy Pod in namespace \"{storage_ns}\" is ready ({}): see `kubectl ramify status`",
                list.items
                    .iter()
                    .map(|p| p.name_any())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Forwards `127.0.0.1:local_port` (0: a free port) to `pod`:`port` until dropped. One
/// port-forward is opened first, so that a refusal (RBAC) is an error here rather than
/// on the first client's connection.
pub async fn start(
    client: &Client,
    storage_ns: &str,
    pod: &str,
    port: u16,
    local_port: u16,
    server: &str,
) -> Result<Forward, KubeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), storage_ns);
    let op = Op {
        verb: "create",
        resource: "pods/portforward",
        namespace: Some(storage_ns),
    };
    let probe = pods
        .portforward(pod, &[port])
        .await
        .map_err(|e| upgrade_error(e, op, server))?;
    probe.abort();
    let listener = TcpListener::bind(("127.0.0.1", local_port))
        .await
        .map_err(|e| KubeError::Other(format!("cannot listen on 127.0.0.1:{local_port}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| KubeError::Other(format!("local address: {e}")))?;
    let pod_name = pod.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let pods = pods.clone();
            let pod = pod_name.clone();
            tokio::spawn(async move {
                let mut pf = match pods.portforward(&pod, &[port]).await {
                    Ok(pf) => pf,
                    Err(e) => {
                        eprintln!(
                            "port-forward to {pod}:{port} failed: {}",
                            crate::error_line(&anyhow::Error::new(e))
                        );
                        return;
                    }
                };
                let Some(mut upstream) = pf.take_stream(port) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                drop(upstream);
                let _ = pf.join().await;
            });
        }
    });
    Ok(Forward {
        local,
        pod: pod.to_string(),
        task,
    })
}

/// A failed port-forward upgrade: the API server's refusal arrives as the HTTP answer to
/// the upgrade request, not as a Status object.
fn upgrade_error(e: kube::Error, op: Op<'_>, server: &str) -> KubeError {
    let text = crate::error_line(&anyhow::Error::new(e));
    if text.contains("403") || text.to_ascii_lowercase().contains("forbidden") {
        return KubeError::Forbidden {
            who: String::new(),
            verb: op.verb.to_string(),
            resource: op.resource.to_string(),
            scope: format!("in namespace \"{}\"", op.namespace.unwrap_or_default()),
            hint: "; port-forwarding to a branch needs get and create on pods/portforward in the storage namespace (--storage-namespace; the chart's Role ramify-connect grants it)".to_string(),
        };
    }
    KubeError::Other(format!(
        "cannot port-forward through the API server at {server}: {text}"
    ))
}
