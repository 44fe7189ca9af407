//! State shared by the controllers and the HTTP API.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::Client;
use ramify_api::StorageClient;
use ramify_crd::DatabaseBranch;
use ramify_lifecycle::locks::KeyedLocks;
use tokio::sync::watch;

use crate::build::ComputeFacts;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ports::Ports;

/// Everything a reconcile or an API handler needs.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub ports: Ports,
    /// Every DatabaseBranch, as the controller's watch sees it.
    pub branches: Store<DatabaseBranch>,
    /// The proxy's bearer token (from the Secret the operator keeps).
    pub proxy_token: String,
    storage: Mutex<HashMap<String, StorageClient>>,
    /// What each timeline's compute needs from its storage node (`archive_command`, a
    /// following root's standby settings), as the node reported it.
    compute_facts: Mutex<HashMap<String, ComputeFacts>>,
    /// Per proxy Pod IP, the branches (`ns/name`) of the route table it last fetched.
    proxy_routes: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Which proxy has clients on which branch (suspends are decided across proxies).
    pub proxy_activity: crate::activity::ProxyActivity,
    /// Consecutive reconcile failures per branch.
    pub backoff: crate::branch::Backoff,
    /// Becomes true when the controller's first list of branches arrived.
    pub synced: watch::Receiver<bool>,
    /// One lock per branch (`ns/name`): its reconcile, a restore moving it to another
    /// timeline, a checkpoint and a wake never interleave.
    locks: KeyedLocks<String>,
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        branches: Store<DatabaseBranch>,
        proxy_token: String,
        synced: watch::Receiver<bool>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "ramify-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let proxy_activity = crate::activity::ProxyActivity::new(
            config.proxy_activity_lease,
            std::time::Instant::now(),
        );
        Context {
            client,
            config,
            recorder,
            metrics,
            ports: Ports::default(),
            branches,
            proxy_token,
            storage: Mutex::new(HashMap::new()),
            compute_facts: Mutex::new(HashMap::new()),
            proxy_routes: Mutex::new(HashMap::new()),
            proxy_activity,
            backoff: Default::default(),
            synced,
            locks: KeyedLocks::default(),
        }
    }

    /// The lock of branch `namespace/name`; hold its guard while reading the branch and
    /// acting on its timeline or compute.
    pub fn branch_lock(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.of(&format!("{namespace}/{name}"))
    }

    /// The API client of a storage node (one connection pool per node).
    pub fn storage(&self, node: &str) -> StorageClient {
        self.storage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_string())
            .or_insert_with(|| {
                let client = StorageClient::new(self.config.storage_url(node));
                match &self.config.storage_token {
                    Some(t) => client.with_token(t.clone()),
                    None => client,
                }
            })
            .clone()
    }

    /// Remembers what a timeline's compute needs (a wake then needs no storage call).
    pub fn remember_compute_facts(&self, timeline_id: &str, facts: &ComputeFacts) {
        self.compute_facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(timeline_id.to_string(), facts.clone());
    }

    /// What a timeline's compute needs, if a reconcile has seen it.
    pub fn compute_facts(&self, timeline_id: &str) -> Option<ComputeFacts> {
        self.compute_facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(timeline_id)
            .cloned()
    }

    /// Records the route table a proxy fetched.
    pub fn proxy_fetched(&self, ip: std::net::IpAddr, branches: BTreeSet<String>) {
        self.proxy_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip.to_string(), branches);
    }

    /// The proxies (by IP) among `proxies` that have not fetched a route table with
    /// `branch` (`ns/name`) yet.
    pub fn proxies_without(&self, proxies: &[String], branch: &str) -> Vec<String> {
        let seen = self.proxy_routes.lock().unwrap_or_else(|p| p.into_inner());
        proxies
            .iter()
            .filter(|ip| !seen.get(*ip).is_some_and(|b| b.contains(branch)))
            .cloned()
            .collect()
    }

    /// Proxy ports every branch's status holds.
    pub fn ports_in_use(&self) -> BTreeSet<u16> {
        self.branches
            .state()
            .iter()
            .filter_map(|b| b.status.as_ref()?.proxy_port)
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    }

    /// A branch from the watch cache.
    pub fn branch(&self, namespace: &str, name: &str) -> Option<Arc<DatabaseBranch>> {
        self.branches
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }
}
