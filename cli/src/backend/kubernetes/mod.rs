//! The Kubernetes backend: verbs write Ramify's custom resources (DatabaseBranch,
//! BranchCheckpoint, BranchRestore) or annotations the operator acts on, and wait for
//! the operator's status; connections go through a port-forward to a proxy Pod.

pub mod errors;
pub mod portforward;
pub mod view;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use ramify_api::At;
use ramify_crd::{
    BranchCheckpoint, BranchPoint, BranchRestore, ComputeSpec, DatabaseBranch, DatabaseBranchSpec,
    ParentRef, Phase, RestoreSource, DELETE_CHILDREN_ANNOTATION,
};
use ramify_lifecycle::HistoryPoint;
use serde::de::DeserializeOwned;
use serde_json::json;

use self::errors::{from_kube, is_not_found, KubeError, Op};
use super::{uri_component, Backend, Conn, Listing, Reach, Shown};
use crate::args::{CreateArgs, ExpireArgs, KubeArgs, RestoreArgs, WaitArgs};

/// Annotation asking the operator to start a branch's compute now. The operator matches
/// it through the same constant in `ramify_crd`; it removes it once the compute runs.
pub const WAKE_REQUEST: &str = ramify_crd::WAKE_REQUEST_ANNOTATION;
/// Annotation asking the operator to stop a branch's compute now (removed once stopped).
pub const SUSPEND_REQUEST: &str = ramify_crd::SUSPEND_REQUEST_ANNOTATION;

const BRANCHES: &str = "databasebranches.ramify.dev";
const CHECKPOINTS: &str = "branchcheckpoints.ramify.dev";
const RESTORES: &str = "branchrestores.ramify.dev";
/// How often a wait looks at the object again.
const POLL: Duration = Duration::from_millis(500);
/// How long `run` and `diff` wait for a throwaway branch to be Ready.
const SCRATCH_READY: Duration = Duration::from_secs(300);
/// How long deleting a throwaway branch may take before `run`/`diff` give up waiting
/// (the branch still goes; its ttl is the last safety net).
const SCRATCH_GONE: Duration = Duration::from_secs(120);

/// A cluster, a namespace and the namespace Ramify runs in.
pub struct Kube {
    client: Client,
    /// The API server's URL, for messages.
    server: String,
    /// -n, else the context's namespace.
    namespace: String,
    all_namespaces: bool,
    storage_ns: String,
    program: String,
}

/// Loads the kubeconfig the flags name (or $KUBECONFIG, ~/.kube/config, in-cluster).
pub async fn load_config(k: &KubeArgs) -> anyhow::Result<Config> {
    let opts = KubeConfigOptions {
        context: k.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match &k.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                anyhow!("cannot read the kubeconfig {}: {e}", path.display())
            })?;
            Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| {
                anyhow!("cannot use the kubeconfig {}: {e}", path.display())
            })?
        }
        None if k.context.is_some() => Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| anyhow!("cannot use the kubeconfig: {e}"))?,
        None => Config::infer().await.map_err(|e| {
            anyhow!("no Kubernetes cluster configured ({e}): set --kubeconfig or $KUBECONFIG, or use local mode (ramify without --kube)")
        })?,
    };
    Ok(config)
}

impl Kube {
    /// Connects (lazily: the first request reaches the API server) to the cluster of the
    /// flags' kubeconfig and context.
    pub async fn connect(k: &KubeArgs, program: &str) -> anyhow::Result<Kube> {
        let config = load_config(k).await?;
        let server = config.cluster_url.to_string();
        let namespace = k
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)
            .map_err(|e| anyhow!("cannot set up a client for {server}: {e}"))?;
        Ok(Kube {
            client,
            server: server.trim_end_matches('/').to_string(),
            namespace,
            all_namespaces: k.all_namespaces,
            storage_ns: k.storage_namespace.clone(),
            program: program.to_string(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn op<'a>(&'a self, verb: &'a str, resource: &'a str) -> Op<'a> {
        Op {
            verb,
            resource,
            namespace: Some(&self.namespace),
        }
    }

    /// `e` as one line; a 404 is told apart: the CRDs missing (operator not installed),
    /// the namespace missing, or the object (`kind name`) missing.
    async fn fail(
        &self,
        e: kube::Error,
        op: Op<'_>,
        object: Option<(&str, &str)>,
    ) -> anyhow::Error {
        if !is_not_found(&e) {
            return from_kube(e, op, &self.server).into();
        }
        if let Some(missing) = self.missing_crd(op.resource).await {
            return missing.into();
        }
        if let Some(ns) = op.namespace {
            if self.namespace_missing(ns).await {
                return KubeError::NoNamespace(ns.to_string()).into();
            }
        }
        match object {
            Some((kind, name)) => KubeError::NotFound(format!(
                "{kind} \"{name}\" not found in namespace \"{}\"",
                op.namespace.unwrap_or_default()
            ))
            .into(),
            None => from_kube(e, op, &self.server).into(),
        }
    }

    /// `NotInstalled` when the API server does not serve `resource` (`plural.ramify.dev`).
    async fn missing_crd(&self, resource: &str) -> Option<KubeError> {
        let (plural, group) = resource.split_once('.')?;
        if group != "ramify.dev" {
            return None;
        }
        match self
            .client
            .list_api_group_resources("ramify.dev/v1alpha1")
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => None,
            Ok(_) => Some(KubeError::NotInstalled(format!(
                "{resource} (ramify.dev/v1alpha1)"
            ))),
            Err(e) if is_not_found(&e) => Some(KubeError::NotInstalled(
                "ramify.dev/v1alpha1 API".to_string(),
            )),
            Err(_) => None,
        }
    }

    /// Whether the namespace is known not to exist (an unreadable one counts as existing).
    async fn namespace_missing(&self, ns: &str) -> bool {
        match Api::<Namespace>::all(self.client.clone()).get(ns).await {
            Err(e) => is_not_found(&e),
            Ok(_) => false,
        }
    }

    /// A branch of the namespace, or `NAMESPACE/NAME` of another one (a parent across
    /// namespaces, as `diff` names it).
    async fn get_branch_obj(&self, name: &str) -> anyhow::Result<DatabaseBranch> {
        let Some((ns, other)) = name.split_once('/') else {
            return match self.api::<DatabaseBranch>().get(name).await {
                Ok(b) => Ok(b),
                Err(e) => Err(self
                    .fail(e, self.op("get", BRANCHES), Some(("branch", name)))
                    .await),
            };
        };
        let api: Api<DatabaseBranch> = Api::namespaced(self.client.clone(), ns);
        match api.get(other).await {
            Ok(b) => Ok(b),
            Err(e) if is_not_found(&e) => bail!("branch {other:?} not found in namespace {ns:?}"),
            Err(e) => {
                let op = Op {
                    verb: "get",
                    resource: BRANCHES,
                    namespace: Some(ns),
                };
                Err(from_kube(e, op, &self.server).into())
            }
        }
    }

    /// The last Warning events of an object, `Reason: message`, oldest first.
    async fn warnings(&self, kind: &str, name: &str) -> Vec<String> {
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name},type=Warning"
        ));
        let Ok(list) = self.api::<Event>().list(&lp).await else {
            return Vec::new();
        };
        let mut events = list.items;
        events.sort_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(view::time)
                .or_else(|| {
                    e.event_time.as_ref().map(|t| {
                        view::time(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0))
                    })
                })
                .unwrap_or_default()
        });
        let n = events.len();
        events
            .into_iter()
            .skip(n.saturating_sub(3))
            .map(|e| view::event_line(e.reason.as_deref(), e.message.as_deref()))
            .collect()
    }

    /// Polls `get` until `done` says Some, printing `progress` to stderr whenever it
    /// changes; a timeout is an error with the last progress line.
    async fn wait_for<K, T>(
        &self,
        what: &str,
        name: &str,
        timeout: Duration,
        mut done: impl FnMut(&K) -> Option<anyhow::Result<T>>,
        progress: impl Fn(&K) -> String,
    ) -> anyhow::Result<(T, Duration)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let start = Instant::now();
        let api = self.api::<K>();
        let mut last = String::new();
        loop {
            let obj = api
                .get(name)
                .await
                .map_err(|e| from_kube(e, self.op("get", what), &self.server))?;
            if let Some(result) = done(&obj) {
                return result.map(|t| (t, start.elapsed()));
            }
            let line = progress(&obj);
            if line != last {
                eprintln!("waiting: {line}");
                last = line;
            }
            if start.elapsed() >= timeout {
                bail!(
                    "still not done after {}: {last}",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the branch is Ready; Failed, or the timeout, is an error showing its
    /// conditions and last Warning events.
    async fn wait_ready(
        &self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<(DatabaseBranch, Duration)> {
        let result = self
            .wait_for::<DatabaseBranch, _>(
                BRANCHES,
                name,
                timeout,
                |b| match b.status.as_ref().and_then(|s| s.phase) {
                    Some(Phase::Ready) => Some(Ok(b.clone())),
                    Some(Phase::Failed) => Some(Err(anyhow!("failed"))),
                    _ => None,
                },
                view::progress,
            )
            .await;
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let b = self.get_branch_obj(name).await?;
                let warnings = self.warnings("DatabaseBranch", name).await;
                let why = if e.to_string() == "failed" {
                    "failed".to_string()
                } else {
                    format!("is not Ready after {}", humantime::format_duration(timeout))
                };
                Err(anyhow!("branch {why}: {}", view::stuck(&b, &warnings)))
            }
        }
    }

    /// The branch's Secret as connection facts (host as the Secret says).
    async fn secret_conn(&self, b: &DatabaseBranch) -> anyhow::Result<Conn> {
        let name = b.name_any();
        let secret_name = b
            .status
            .as_ref()
            .and_then(|s| s.connection.as_ref())
            .map_or_else(|| format!("{name}-postgres"), |c| c.secret_name.clone());
        let ns = b.namespace().unwrap_or_else(|| self.namespace.clone());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let secret = match secrets.get(&secret_name).await {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => bail!(
                "branch {name} has no connection Secret {secret_name} yet ({}): wait until it is Ready",
                view::progress(b)
            ),
            Err(e) => return Err(from_kube(e, self.op("get", "secrets"), &self.server).into()),
        };
        let data = secret.data.unwrap_or_default();
        let get = |k: &str| -> anyhow::Result<String> {
            let v = data
                .get(k)
                .with_context(|| format!("Secret {secret_name} has no key {k}"))?;
            String::from_utf8(v.0.clone())
                .with_context(|| format!("Secret {secret_name} key {k} is not text"))
        };
        let port = get("port")?;
        Ok(Conn {
            name,
            host: get("host")?,
            port: port
                .trim()
                .parse()
                .with_context(|| format!("Secret {secret_name} has port {port:?}"))?,
            user: get("user")?,
            password: get("password")?,
            database: get("database")?,
            uri: get("uri")?,
        })
    }

    fn require_ready(&self, b: &DatabaseBranch) -> anyhow::Result<()> {
        if b.status.as_ref().and_then(|s| s.phase) != Some(Phase::Ready) {
            bail!(
                "branch {} is not Ready: {}",
                b.name_any(),
                view::progress(b)
            );
        }
        Ok(())
    }

    /// The branch point of `spec.at` for a history point; a checkpoint is resolved to its
    /// LSN (the BranchCheckpoint of `parent`).
    async fn branch_point(
        &self,
        parent_ns: &str,
        parent: &str,
        at: &HistoryPoint,
    ) -> anyhow::Result<Option<BranchPoint>> {
        Ok(match at {
            HistoryPoint::At(At::Latest) => None,
            HistoryPoint::At(At::Lsn(l)) => Some(BranchPoint {
                lsn: Some(l.to_string()),
                ..BranchPoint::default()
            }),
            HistoryPoint::At(At::Time(t)) => Some(BranchPoint {
                time: Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                ..BranchPoint::default()
            }),
            HistoryPoint::At(At::Snapshot(s)) => Some(BranchPoint {
                snapshot: Some(s.clone()),
                ..BranchPoint::default()
            }),
            HistoryPoint::Checkpoint(c) => {
                let api: Api<BranchCheckpoint> = Api::namespaced(self.client.clone(), parent_ns);
                let cp = match api.get(c).await {
                    Ok(cp) => cp,
                    Err(e) => {
                        let op = Op {
                            verb: "get",
                            resource: CHECKPOINTS,
                            namespace: Some(parent_ns),
                        };
                        return Err(self.fail(e, op, Some(("checkpoint", c))).await);
                    }
                };
                if cp.spec.branch != parent {
                    bail!(
                        "checkpoint {c} is of branch {}, not {parent}",
                        cp.spec.branch
                    );
                }
                let lsn = cp
                    .status
                    .and_then(|s| s.lsn)
                    .with_context(|| format!("checkpoint {c} is not Ready yet"))?;
                Some(BranchPoint {
                    lsn: Some(lsn),
                    ..BranchPoint::default()
                })
            }
        })
    }

    /// Runs one BranchRestore to its end.
    async fn run_restore(
        &self,
        branch: &str,
        kind: &str,
        source: RestoreSource,
        keep_backup: Option<bool>,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(branch).await?;
        if b.is_protected() {
            bail!(
                "branch {branch} is protected: {kind} is refused; unprotect it first: {} branch unprotect {branch} -n {}",
                self.program, self.namespace
            );
        }
        let name = format!("{branch}-{kind}-{}", Utc::now().format("%Y%m%dt%H%M%Sz"));
        let r: BranchRestore = serde_json::from_value(json!({
            "apiVersion": "ramify.dev/v1alpha1",
            "kind": "BranchRestore",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"branch": branch, "source": source, "keepBackup": keep_backup},
        }))?;
        if let Err(e) = self
            .api::<BranchRestore>()
            .create(&PostParams::default(), &r)
            .await
        {
            return Err(self.fail(e, self.op("create", RESTORES), None).await);
        }
        let (r, _) = self
            .wait_for::<BranchRestore, _>(
                RESTORES,
                &name,
                Duration::from_secs(timeout),
                |r| view::restore_finished(r).map(|_| Ok(r.clone())),
                view::restore_progress,
            )
            .await
            .with_context(|| format!("BranchRestore {name}"))?;
        if view::restore_finished(&r) == Some(false) {
            bail!(
                "{kind} of branch {branch} failed, nothing was changed: {}",
                view::restore_progress(&r)
            );
        }
        let uri = self.secret_conn(&b).await.ok().map(|c| c.uri);
        let text = view::restore_done(&r, kind == "reset", uri.as_deref());
        Ok(Shown::new(r, text))
    }

    /// Patches the branch with `patch` (a JSON merge patch).
    async fn patch_branch(
        &self,
        name: &str,
        patch: serde_json::Value,
    ) -> anyhow::Result<DatabaseBranch> {
        match self
            .api::<DatabaseBranch>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(b) => Ok(b),
            Err(e) => Err(self
                .fail(e, self.op("patch", BRANCHES), Some(("branch", name)))
                .await),
        }
    }

    /// Asks the operator for a compute state through `annotation` and waits until it has
    /// removed it.
    async fn request_compute(
        &self,
        name: &str,
        annotation: &str,
        other: &str,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(name).await?;
        self.require_ready(&b)?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.patch_branch(
            name,
            json!({"metadata": {"annotations": {annotation: now, other: null}}}),
        )
        .await?;
        let verb = if annotation == WAKE_REQUEST {
            "wake"
        } else {
            "suspend"
        };
        let (b, _) = self
            .wait_for::<DatabaseBranch, _>(
                BRANCHES,
                name,
                Duration::from_secs(timeout),
                |b| (!b.annotations().contains_key(annotation)).then(|| Ok(b.clone())),
                |b| format!("operator to {verb} it: {}", view::progress(b)),
            )
            .await
            .map_err(|e| anyhow!("the operator did not {verb} branch {name}: {e}"))?;
        let text = view::state_line(&b);
        Ok(Shown::new(b, text))
    }

    fn list_value<T: serde::Serialize>(items: &[T]) -> anyhow::Result<serde_json::Value> {
        Ok(json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": serde_json::to_value(items)?,
        }))
    }

    /// Everything `status` reports.
    async fn cluster_status(&self) -> anyhow::Result<view::ClusterStatus> {
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

/// `parent` or `namespace/parent` of `--parent`.
pub fn parent_ref(parent: &str) -> ParentRef {
    match parent.split_once('/') {
        Some((ns, name)) => ParentRef {
            name: name.to_string(),
            namespace: Some(ns.to_string()),
        },
        None => ParentRef {
            name: parent.to_string(),
            namespace: None,
        },
    }
}

/// A Go-style duration of whole seconds (`300s`), as `spec.ttl` and `suspendAfter` take.
pub fn go_duration(secs: u64) -> String {
    format!("{secs}s")
}

/// The DatabaseBranch `branch create` writes (the point already resolved).
pub fn branch_object(
    args: &CreateArgs,
    namespace: &str,
    at: Option<BranchPoint>,
) -> DatabaseBranch {
    let mut b = DatabaseBranch::new(
        &args.name,
        DatabaseBranchSpec {
            parent: args.parent.as_deref().map(parent_ref),
            at,
            compute: args.suspend_after.map(|s| ComputeSpec {
                suspend_after: Some(go_duration(s)),
                ..ComputeSpec::default()
            }),
            protected: args.protected.then_some(true),
            expires_at: args.expires_at,
            ttl: args.expires_in.map(go_duration),
            ..DatabaseBranchSpec::default()
        },
    );
    b.metadata.namespace = Some(namespace.to_string());
    // `new` copies the CRD's own annotations (helm.sh/resource-policy): not the object's.
    b.metadata.annotations = None;
    b
}

/// The source of `branch restore` on a cluster.
pub fn restore_source(args: &RestoreArgs) -> anyhow::Result<RestoreSource> {
    let mut s = RestoreSource {
        branch: args.from.clone(),
        ..RestoreSource::default()
    };
    match &args.at {
        None | Some(HistoryPoint::At(At::Latest)) => {
            if args.from.is_none() {
                bail!("restore needs --at WHEN (or --from BRANCH): like --at -10m or --at checkpoint:NAME");
            }
        }
        Some(HistoryPoint::At(At::Lsn(l))) => s.lsn = Some(l.to_string()),
        Some(HistoryPoint::At(At::Time(t))) => {
            s.time = Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        Some(HistoryPoint::Checkpoint(c)) => s.checkpoint = Some(c.clone()),
        Some(HistoryPoint::At(At::Snapshot(_))) => bail!(
            "restoring to a snapshot is not available against a cluster (BranchRestore takes lsn, time or checkpoint): use --at checkpoint:NAME or an LSN"
        ),
    }
    Ok(s)
}

#[async_trait]
impl Backend for Kube {
    async fn create_branch(&self, args: CreateArgs) -> anyhow::Result<Shown> {
        if args.follow.is_some() {
            anyhow::bail!(
                "--follow is for local mode; on a cluster a following root is a DatabaseBranch with spec.source.external naming a Secret that holds the source's URI (see docs/kubernetes.md)"
            );
        }
        let ns = self.namespace.clone();
        let mut at = None;
        if let Some(parent) = &args.parent {
            let p = parent_ref(parent);
            let pns = p.namespace.clone().unwrap_or_else(|| ns.clone());
            let api: Api<DatabaseBranch> = Api::namespaced(self.client.clone(), &pns);
            // A missing parent is refused here, before anything is written; a parent this
            // user may not read is left to the operator (spec.sharing decides).
            if let Err(e) = api.get(&p.name).await {
                if is_not_found(&e) {
                    let op = Op {
                        verb: "get",
                        resource: BRANCHES,
                        namespace: Some(&pns),
                    };
                    return Err(self.fail(e, op, Some(("parent branch", &p.name))).await);
                }
            }
            if let Some(point) = &args.at {
                at = self.branch_point(&pns, &p.name, point).await?;
            }
        }
        let obj = branch_object(&args, &ns, at);
        let created = match self
            .api::<DatabaseBranch>()
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(b) => b,
            Err(e) => return Err(self.fail(e, self.op("create", BRANCHES), None).await),
        };
        if !args.wait.wait {
            let text = view::created_branch(&created, None, None, &self.program);
            return Ok(Shown::new(created, text));
        }
        let (b, waited) = self
            .wait_ready(&args.name, Duration::from_secs(args.wait.timeout))
            .await?;
        let uri = self.secret_conn(&b).await.ok().map(|c| c.uri);
        let text = view::created_branch(&b, uri.as_deref(), Some(waited), &self.program);
        Ok(Shown::new(b, text))
    }

    async fn list_branches(&self) -> anyhow::Result<Listing> {
        let (api, op): (Api<DatabaseBranch>, Op<'_>) = if self.all_namespaces {
            (
                Api::all(self.client.clone()),
                Op {
                    verb: "list",
                    resource: BRANCHES,
                    namespace: None,
                },
            )
        } else {
            (self.api(), self.op("list", BRANCHES))
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => return Err(self.fail(e, op, None).await),
        };
        if list.is_empty() && !self.all_namespaces && self.namespace_missing(&self.namespace).await
        {
            return Err(KubeError::NoNamespace(self.namespace.clone()).into());
        }
        let rows = list
            .iter()
            .map(|b| view::row(b, self.all_namespaces))
            .collect();
        let empty = if self.all_namespaces {
            format!("no branches in any namespace: create one with `{} branch create main -n NAMESPACE`", self.program)
        } else {
            format!(
                "no branches in namespace {}: create one with `{} branch create main -n {}`",
                self.namespace, self.program, self.namespace
            )
        };
        Ok(Listing {
            rows,
            empty,
            shown: Shown::new(Self::list_value(&list)?, String::new()),
        })
    }

    async fn get_branch(&self, name: &str) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(name).await?;
        let text = view::branch_details(&b, Utc::now());
        Ok(Shown::new(b, text))
    }

    async fn delete_branch(
        &self,
        name: &str,
        force: bool,
        wait: WaitArgs,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(name).await?;
        if b.is_protected() {
            bail!(
                "branch {name} is protected (spec.protected: true): unprotect it first: {} branch unprotect {name} -n {}",
                self.program, self.namespace
            );
        }
        // Children may be in any namespace (spec.sharing): look everywhere this user may,
        // else in the branch's own namespace.
        let listed = match Api::<DatabaseBranch>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(_) => match self
                .api::<DatabaseBranch>()
                .list(&ListParams::default())
                .await
            {
                Ok(l) => l.items,
                Err(e) => return Err(self.fail(e, self.op("list", BRANCHES), None).await),
            },
        };
        let children: Vec<String> = listed
            .iter()
            .filter(|c| {
                c.spec.parent.as_ref().is_some_and(|p| p.name == name)
                    && c.parent_namespace().as_deref() == Some(self.namespace.as_str())
            })
            .map(|c| match c.namespace() {
                Some(ns) if ns != self.namespace => format!("{ns}/{}", c.name_any()),
                _ => c.name_any(),
            })
            .collect();
        if !children.is_empty() && !force {
            bail!(
                "branch {name} has child branches ({}): delete them first, or use --force to delete them too",
                children.join(", ")
            );
        }
        if let Err(e) = self
            .api::<DatabaseBranch>()
            .delete(name, &DeleteParams::default())
            .await
        {
            return Err(self
                .fail(e, self.op("delete", BRANCHES), Some(("branch", name)))
                .await);
        }
        if force && !children.is_empty() {
            // After the DELETE was accepted, so a refused one leaves the branch unchanged.
            self.patch_branch(
                name,
                json!({"metadata": {"annotations": {DELETE_CHILDREN_ANNOTATION: "true"}}}),
            )
            .await?;
        }
        let text = if wait.wait {
            let deadline = Instant::now() + Duration::from_secs(wait.timeout);
            let mut last = String::new();
            loop {
                match self.api::<DatabaseBranch>().get(name).await {
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => {
                        return Err(from_kube(e, self.op("get", BRANCHES), &self.server).into())
                    }
                    Ok(b) => {
                        let line = view::progress(&b);
                        if Instant::now() >= deadline {
                            let warnings = self.warnings("DatabaseBranch", name).await;
                            bail!(
                                "branch {name} is still there after {}: {}",
                                humantime::format_duration(Duration::from_secs(wait.timeout)),
                                view::stuck(&b, &warnings)
                            );
                        }
                        if line != last {
                            eprintln!("waiting: {line}");
                            last = line;
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
            format!("deleted branch {name} in namespace {}\n", self.namespace)
        } else {
            format!(
                "deleting branch {name} in namespace {}: the operator removes its compute and storage (--wait waits for it)\n",
                self.namespace
            )
        };
        Ok(Shown::new(b, text))
    }

    async fn connection(&self, name: &str) -> anyhow::Result<Conn> {
        let b = self.get_branch_obj(name).await?;
        self.secret_conn(&b).await
    }

    async fn reach(&self, name: &str, local_port: u16) -> anyhow::Result<Reach> {
        let b = self.get_branch_obj(name).await?;
        self.require_ready(&b)?;
        let secret = self.secret_conn(&b).await?;
        let port = b
            .status
            .as_ref()
            .and_then(|s| s.proxy_port)
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| {
                format!(
                    "branch {name} has no proxy port yet: {}",
                    view::progress(&b)
                )
            })?;
        let pod = portforward::proxy_pod(&self.client, &self.storage_ns, &self.server).await?;
        let forward = portforward::start(
            &self.client,
            &self.storage_ns,
            &pod,
            port,
            local_port,
            &self.server,
        )
        .await?;
        let local = forward.local.port();
        let uri = format!(
            "postgresql://{}:{}@127.0.0.1:{local}/{}",
            uri_component(&secret.user),
            uri_component(&secret.password),
            uri_component(&secret.database)
        );
        Ok(Reach {
            conn: Conn {
                host: "127.0.0.1".to_string(),
                port: local,
                uri,
                ..secret
            },
            was_suspended: b
                .status
                .as_ref()
                .and_then(|s| s.compute.as_ref())
                .is_some_and(|c| c.state == ramify_crd::ComputeState::Suspended),
            forward: Some(forward),
        })
    }

    async fn wake(&self, name: &str, timeout: u64) -> anyhow::Result<Shown> {
        self.request_compute(name, WAKE_REQUEST, SUSPEND_REQUEST, timeout)
            .await
    }

    async fn suspend(&self, name: &str, timeout: u64) -> anyhow::Result<Shown> {
        self.request_compute(name, SUSPEND_REQUEST, WAKE_REQUEST, timeout)
            .await
    }

    async fn reset(&self, name: &str, timeout: u64) -> anyhow::Result<Shown> {
        let source = RestoreSource {
            parent: Some(true),
            ..RestoreSource::default()
        };
        self.run_restore(name, "reset", source, None, timeout).await
    }

    async fn restore(&self, args: &RestoreArgs) -> anyhow::Result<Shown> {
        let source = restore_source(args)?;
        self.run_restore(
            &args.name,
            "restore",
            source,
            Some(!args.no_backup),
            args.timeout,
        )
        .await
    }

    async fn protect(&self, name: &str, protected: bool) -> anyhow::Result<Shown> {
        let before = self.get_branch_obj(name).await?;
        let patch = if protected {
            json!({"spec": {"protected": true, "expiresAt": null, "ttl": null}})
        } else {
            json!({"spec": {"protected": false}})
        };
        let b = self.patch_branch(name, patch).await?;
        let cleared = before
            .status
            .as_ref()
            .and_then(|s| s.expires_at)
            .or(before.spec.expires_at);
        let text = match (protected, cleared) {
            (true, Some(t)) => format!(
                "protected branch {name}: delete, reset, restore and expiry are refused (its expiry at {} was removed)\n",
                crate::render::timestamp_secs(t)
            ),
            (true, None) => format!("protected branch {name}: delete, reset, restore and expiry are refused\n"),
            (false, _) => format!("branch {name} is no longer protected\n"),
        };
        Ok(Shown::new(b, text))
    }

    async fn expire(&self, args: &ExpireArgs) -> anyhow::Result<Shown> {
        let name = &args.name;
        let before = self.get_branch_obj(name).await?;
        if before.is_protected() && !args.never {
            bail!(
                "branch {name} is protected, so it cannot expire: unprotect it first: {} branch unprotect {name} -n {}",
                self.program, self.namespace
            );
        }
        let now = Utc::now();
        let request = crate::commands::branch::expire_request(args, now);
        let at = match request.expiry {
            Some(ramify_lifecycle::Expiry::At(t)) => Some(t),
            _ => None,
        };
        let b = self
            .patch_branch(name, json!({"spec": {"expiresAt": at, "ttl": null}}))
            .await?;
        let text = match at {
            Some(t) => format!(
                "branch {name} expires at {} (in {}); the operator then deletes it with its compute and storage\n",
                crate::render::timestamp_secs(t),
                crate::render::expiry_left(false, Some(t), now)
            ),
            None => format!("branch {name} never expires\n"),
        };
        Ok(Shown::new(b, text))
    }

    async fn create_checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        self.get_branch_obj(branch).await?;
        let api = self.api::<BranchCheckpoint>();
        let name = match name {
            Some(n) => n.to_string(),
            None => match api.list(&ListParams::default()).await {
                Ok(l) => view::next_checkpoint_name(
                    l.items
                        .iter()
                        .map(|c| c.metadata.name.as_deref().unwrap_or_default()),
                ),
                Err(e) => return Err(self.fail(e, self.op("list", CHECKPOINTS), None).await),
            },
        };
        let mut cp = BranchCheckpoint::new(
            &name,
            ramify_crd::BranchCheckpointSpec {
                branch: branch.to_string(),
            },
        );
        cp.metadata.namespace = Some(self.namespace.clone());
        cp.metadata.annotations = None;
        if let Err(e) = api.create(&PostParams::default(), &cp).await {
            return Err(self.fail(e, self.op("create", CHECKPOINTS), None).await);
        }
        let (cp, _) = self
            .wait_for::<BranchCheckpoint, _>(
                CHECKPOINTS,
                &name,
                Duration::from_secs(timeout),
                |c| view::checkpoint_finished(c).map(|_| Ok(c.clone())),
                |c| {
                    let st = c.status.as_ref();
                    format!(
                        "checkpoint {}: {}",
                        c.name_any(),
                        view::conditions(st.map_or(&[][..], |s| &s.conditions[..]))
                    )
                },
            )
            .await
            .with_context(|| format!("checkpoint {name} of {branch}"))?;
        if view::checkpoint_finished(&cp) == Some(false) {
            let st = cp.status.as_ref();
            bail!(
                "checkpoint {name} of {branch} failed: {}",
                view::conditions(st.map_or(&[][..], |s| &s.conditions[..]))
            );
        }
        let text = view::created_checkpoint(&cp, &self.program);
        Ok(Shown::new(cp, text))
    }

    async fn list_checkpoints(&self, branch: &str) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(branch).await?;
        let list: Vec<BranchCheckpoint> = match self
            .api::<BranchCheckpoint>()
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l
                .items
                .into_iter()
                .filter(|c| c.spec.branch == branch)
                .collect(),
            Err(e) => return Err(self.fail(e, self.op("list", CHECKPOINTS), None).await),
        };
        let timeline = b
            .status
            .as_ref()
            .and_then(|s| s.timeline.as_ref())
            .map(|t| t.id.clone());
        let text = view::checkpoint_list(
            branch,
            &list,
            timeline.as_deref(),
            Utc::now(),
            &self.program,
        );
        Ok(Shown::new(Self::list_value(&list)?, text))
    }

    async fn delete_checkpoint(&self, branch: &str, name: &str) -> anyhow::Result<Shown> {
        let api = self.api::<BranchCheckpoint>();
        let cp = match api.get(name).await {
            Ok(c) => c,
            Err(e) => {
                return Err(self
                    .fail(e, self.op("get", CHECKPOINTS), Some(("checkpoint", name)))
                    .await)
            }
        };
        if cp.spec.branch != branch {
            bail!(
                "checkpoint {name} is of branch {}, not {branch}: nothing was deleted",
                cp.spec.branch
            );
        }
        if let Err(e) = api.delete(name, &DeleteParams::default()).await {
            return Err(self
                .fail(
                    e,
                    self.op("delete", CHECKPOINTS),
                    Some(("checkpoint", name)),
                )
                .await);
        }
        Ok(Shown::new(
            cp,
            format!("deleted checkpoint {name} of {branch}\n"),
        ))
    }

    async fn status(&self) -> anyhow::Result<Shown> {
        let s = self.cluster_status().await?;
        let text = view::cluster_status(&s);
        Ok(Shown::new(s, text))
    }

    async fn parent_of(&self, name: &str) -> anyhow::Result<Option<String>> {
        let b = self.get_branch_obj(name).await?;
        Ok(match &b.spec.parent {
            // A parent in another namespace is named NAMESPACE/NAME, which the other verbs
            // that take a branch reached this way (reach, connection) understand.
            Some(p) if b.parent_namespace().as_deref() != Some(self.namespace.as_str()) => Some(
                format!("{}/{}", b.parent_namespace().unwrap_or_default(), p.name),
            ),
            Some(p) => Some(p.name.clone()),
            None => None,
        })
    }

    async fn create_scratch(
        &self,
        name: &str,
        parent: &str,
        at: Option<&HistoryPoint>,
        ttl_secs: u64,
    ) -> anyhow::Result<()> {
        let point = match at {
            Some(p) => self.branch_point(&self.namespace, parent, p).await?,
            None => None,
        };
        let mut b = DatabaseBranch::new(
            name,
            DatabaseBranchSpec {
                parent: Some(ParentRef {
                    name: parent.to_string(),
                    namespace: None,
                }),
                at: point,
                ttl: Some(go_duration(ttl_secs)),
                ..DatabaseBranchSpec::default()
            },
        );
        b.metadata.namespace = Some(self.namespace.clone());
        b.metadata.annotations = None;
        b.metadata.labels = Some(BTreeMap::from([(
            "ramify.dev/scratch".to_string(),
            "true".to_string(),
        )]));
        if let Err(e) = self
            .api::<DatabaseBranch>()
            .create(&PostParams::default(), &b)
            .await
        {
            return Err(self.fail(e, self.op("create", BRANCHES), None).await);
        }
        if let Err(e) = self.wait_ready(name, SCRATCH_READY).await {
            let _ = self.delete_scratch(name).await;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a throwaway branch and waits until the operator removed it with its
    /// compute and storage, so that nothing of a `run` or `diff` outlives the command.
    async fn delete_scratch(&self, name: &str) -> anyhow::Result<()> {
        let api = self.api::<DatabaseBranch>();
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(from_kube(e, self.op("delete", BRANCHES), &self.server).into()),
        }
        let deadline = Instant::now() + SCRATCH_GONE;
        loop {
            match api.get(name).await {
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(from_kube(e, self.op("get", BRANCHES), &self.server).into()),
                Ok(b) if Instant::now() >= deadline => bail!(
                    "branch {name} is still being deleted after {}: {}",
                    humantime::format_duration(SCRATCH_GONE),
                    view::progress(&b)
                ),
                Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{BranchCommand, Cli, Command};
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateArgs {
        let cli =
            Cli::try_parse_from(["kubectl-ramify", "branch", "create"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Branch(BranchCommand::Create(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn branch_objects_carry_every_flag() {
        let args = create_args(&[
            "dev",
            "--parent",
            "prod/main",
            "--suspend-after",
            "0",
            "--expires-in",
            "2h",
        ]);
        let b = branch_object(&args, "team-a", None);
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({
                "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
                "metadata": {"name": "dev", "namespace": "team-a"},
                "spec": {"parent": {"name": "main", "namespace": "prod"}, "compute": {"suspendAfter": "0s"}, "ttl": "7200s"}
            })
        );
        let root = branch_object(&create_args(&["main", "--protected"]), "prod", None);
        assert_eq!(
            serde_json::to_value(&root.spec).unwrap(),
            json!({"protected": true})
        );
    }

    #[test]
    fn restore_sources() {
        let args = |a: &[&str]| -> RestoreArgs {
            let cli = Cli::try_parse_from(["kubectl-ramify", "branch", "restore"].iter().chain(a))
                .unwrap();
            match cli.command {
                Command::Branch(BranchCommand::Restore(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let s = restore_source(&args(&["dev", "--at", "checkpoint:step-3"])).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"checkpoint": "step-3"})
        );
        let s = restore_source(&args(&["dev", "--from", "main", "--at", "0/16B3748"])).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"branch": "main", "lsn": "0/16B3748"})
        );
        let e = restore_source(&args(&["dev", "--at", "snapshot:x"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not available against a cluster"), "{e}");
        assert!(restore_source(&args(&["dev"])).is_err());
    }
}
