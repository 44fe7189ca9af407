//! `status` on a cluster: the storage nodes, operator and proxy Pods, and the branches.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use super::*;

impl Kube {
    /// Everything `status` reports.
    pub(super) async fn cluster_status(&self) -> anyhow::Result<view::ClusterStatus> {
        let ns = &self.storage_ns;
        let pods = match Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                let op = Op {
                    verb: "list",
                    resource: "pods",
                    namespace: Some(ns),
                };
                return Err(from_kube(e, op, &self.server).into());
            }
        };
        if pods.is_empty() && self.namespace_missing(ns).await {
            bail!("namespace \"{ns}\" not found: Ramify is not installed there (name its namespace with --storage-namespace or RAMIFY_NAMESPACE)");
        }
        let mut problems = Vec::new();
        if let Some(missing) = self.missing_crd(BRANCHES).await {
            problems.push(missing.to_string());
        }
        let component = |p: &Pod| {
            p.labels()
                .get("app.kubernetes.io/component")
                .cloned()
                .unwrap_or_default()
        };
        let mut summary = |name: &str| -> view::ComponentStatus {
            let of: Vec<&Pod> = pods.iter().filter(|p| component(p) == name).collect();
            let ready = of.iter().filter(|p| portforward::pod_ready(p)).count();
            for p in of.iter().filter(|p| !portforward::pod_ready(p)) {
                problems.push(format!("{name} Pod {}: {}", p.name_any(), pod_problem(p)));
            }
            if of.is_empty() {
                problems.push(format!(
                    "no {name} Pod in namespace {ns} (label app.kubernetes.io/component={name})"
                ));
            }
            view::ComponentStatus {
                name: name.to_string(),
                summary: format!("{ready}/{} ready", of.len()),
                healthy: !of.is_empty() && ready == of.len(),
            }
        };
        let operator = summary("operator");
        let proxy = summary("proxy");
        let mut storage = Vec::new();
        for p in pods.iter().filter(|p| component(p) == "storage") {
            let pod = p.name_any();
            let ready = portforward::pod_ready(p);
            if !ready {
                problems.push(format!("storage Pod {pod}: {}", pod_problem(p)));
            }
            let req =
                kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods/{pod}:7071/proxy"))
                    .get_subresource("status", "v1");
            let node: Result<ramify_api::NodeStatus, String> = match req {
                Ok(req) => self.client.request(req).await.map_err(|e| {
                    let op = Op {
                        verb: "get",
                        resource: "pods/proxy",
                        namespace: Some(ns),
                    };
                    from_kube(e, op, &self.server).to_string()
                }),
                Err(e) => Err(e.to_string()),
            };
            storage.push(match node {
                Ok(n) => {
                    if n.clone_method == ramify_api::CloneMethod::Copy {
                        problems.push(format!("storage Pod {pod}: copy mode: its volume ({}) has no reflinks, so every fork is a full copy", n.filesystem));
                    }
                    view::StorageNodeStatus {
                        pod,
                        ready,
                        clone_method: Some(n.clone_method.to_string()),
                        filesystem: Some(n.filesystem),
                        capacity_bytes: Some(n.capacity_bytes),
                        used_bytes: Some(n.used_bytes),
                        error: None,
                    }
                }
                Err(e) => view::StorageNodeStatus {
                    pod,
                    ready,
                    clone_method: None,
                    filesystem: None,
                    capacity_bytes: None,
                    used_bytes: None,
                    error: Some(format!("its status could not be read: {e}")),
                },
            });
        }
        if storage.is_empty() {
            problems.push(format!(
                "no storage Pod in namespace {ns} (label app.kubernetes.io/component=storage)"
            ));
        }
        let branches = match Api::<DatabaseBranch>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => {
                let ready = list
                    .items
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready))
                    .count();
                let stale = Utc::now() - chrono::Duration::minutes(2);
                for b in &list.items {
                    let phase = b.status.as_ref().and_then(|s| s.phase);
                    let failed = phase == Some(Phase::Failed);
                    let stuck = !matches!(phase, Some(Phase::Ready) | Some(Phase::Deleting))
                        && view::created(b) < stale;
                    if failed || stuck {
                        problems.push(format!("branch {}", view::progress(b)));
                    }
                }
                Some(format!(
                    "{} in all namespaces ({ready} ready)",
                    list.items.len()
                ))
            }
            Err(_) => None,
        };
        Ok(view::ClusterStatus {
            storage_namespace: ns.clone(),
            operator,
            proxy,
            storage,
            branches,
            problems,
        })
    }
}

/// Why a Pod is not ready, from its containers' states.
fn pod_problem(p: &Pod) -> String {
    let Some(st) = &p.status else {
        return "no status yet".to_string();
    };
    for c in st.container_statuses.iter().flatten() {
        if let Some(s) = &c.state {
            if let Some(w) = &s.waiting {
                return format!(
                    "not ready: container {} waiting: {}{}",
                    c.name,
                    w.reason.as_deref().unwrap_or("?"),
                    w.message
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                );
            }
            if let Some(t) = &s.terminated {
                return format!(
                    "not ready: container {} terminated: {} (exit {})",
                    c.name,
                    t.reason.as_deref().unwrap_or("?"),
                    t.exit_code
                );
            }
        }
        if !c.ready {
            return format!(
                "not ready: container {} is running but not ready (restarts: {})",
                c.name, c.restart_count
            );
        }
    }
    format!(
        "not ready: phase {}{}",
        st.phase.as_deref().unwrap_or("Unknown"),
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.status != "True" && c.message.is_some())
            .map(|c| format!(
                " ({}: {})",
                c.type_,
                c.message.as_deref().unwrap_or_default()
            ))
            .unwrap_or_default()
    )
}
