//! The Kubernetes backend: verbs write Ramify's custom resources (DatabaseBranch,
//! BranchCheckpoint, BranchRestore) or annotations the operator acts on, and wait for
//! the operator's status; connections go through a port-forward to a proxy Pod.

mod actions;
mod branches;
mod checkpoints;
mod cluster;
pub mod errors;
mod objects;
pub mod portforward;
pub mod view;

pub use objects::{branch_object, go_duration, parent_ref, restore_source};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use ramify_api::At;
use ramify_crd::{
    BranchCheckpoint, BranchPoint, BranchRestore, DatabaseBranch, DatabaseBranchSpec, ParentRef,
    Phase, RestoreSource, DELETE_CHILDREN_ANNOTATION,
};
use ramify_lifecycle::HistoryPoint;
use serde::de::DeserializeOwned;
use serde_json::json;

use self::errors::{from_kube, is_not_found, KubeError, Op};
use super::{uri_component, Backend, Conn, Listing, Reach, Shown};
use crate::args::{CreateArgs, ExpireArgs, KubeArgs, MoveArgs, RestoreArgs, WaitArgs};

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

    fn list_value<T: serde::Serialize>(items: &[T]) -> anyhow::Result<serde_json::Value> {
        Ok(json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": serde_json::to_value(items)?,
        }))
    }
}

#[async_trait]
impl Backend for Kube {
    async fn create_branch(&self, args: CreateArgs) -> anyhow::Result<Shown> {
        self.create(args).await
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
        self.delete(name, force, wait).await
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
        self.protect_branch(name, protected).await
    }

    async fn expire(&self, args: &ExpireArgs) -> anyhow::Result<Shown> {
        self.expire_branch(args).await
    }

    async fn move_branch(&self, args: &MoveArgs) -> anyhow::Result<Shown> {
        self.move_to(args).await
    }

    async fn create_checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        self.checkpoint(branch, name, timeout).await
    }

    async fn list_checkpoints(&self, branch: &str) -> anyhow::Result<Shown> {
        self.checkpoints(branch).await
    }

    async fn delete_checkpoint(&self, branch: &str, name: &str) -> anyhow::Result<Shown> {
        self.drop_checkpoint(branch, name).await
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
