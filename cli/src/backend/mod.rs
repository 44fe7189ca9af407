//! The two things the CLI can drive — local mode's daemon and a Kubernetes cluster — behind
//! one trait, so every verb is written once above it, and the rule that picks one.

pub mod kubernetes;
pub mod local;

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ramify_lifecycle::HistoryPoint;
use serde::Serialize;

use crate::args::{
    CreateArgs, ExpireArgs, KubeArgs, MoveArgs, OutputFormat, RestoreArgs, WaitArgs,
};

/// Which backend a command line drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Local mode's daemon on this machine.
    Local,
    /// The cluster of a kubeconfig context.
    Kubernetes,
}

/// The name a kubectl plugin must have for `kubectl ramify` to find it.
pub const PLUGIN_NAME: &str = "kubectl-ramify";

/// Whether the program was started under the kubectl plugin's name (its argv[0]).
pub fn invoked_as_plugin(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == PLUGIN_NAME)
}

/// The rule: as `kubectl-ramify` always Kubernetes; as `ramify` Kubernetes exactly when
/// --kube, --context or --kubeconfig is given. -n/-A without them is refused (rather than
/// silently listing local mode's branches).
pub fn select(plugin: bool, k: &KubeArgs) -> Result<BackendKind, String> {
    if plugin || k.kube || k.context.is_some() || k.kubeconfig.is_some() {
        return Ok(BackendKind::Kubernetes);
    }
    if let Some(ns) = &k.namespace {
        return Err(format!(
            "-n {ns} names a Kubernetes namespace, but this command runs in local mode: add --kube (or --context/--kubeconfig) to use the cluster, or run it as `kubectl ramify`"
        ));
    }
    if k.all_namespaces {
        return Err("-A lists every Kubernetes namespace, but this command runs in local mode: add --kube (or --context/--kubeconfig) to use the cluster, or run it as `kubectl ramify`".to_string());
    }
    Ok(BackendKind::Local)
}

/// What a verb prints: the structured value for `-o json|yaml` (local mode's own types,
/// or Kubernetes objects) and the text for people.
pub struct Shown {
    structured: Box<dyn FnOnce(OutputFormat) -> anyhow::Result<Option<String>> + Send>,
    text: String,
}

impl Shown {
    /// `value` for -o json|yaml (serialized as it is, keeping its field order), `text`
    /// for the table format.
    pub fn new<T: Serialize + Send + 'static>(value: T, text: String) -> Shown {
        Shown {
            structured: Box::new(move |f| crate::render::structured(f, &value)),
            text,
        }
    }

    /// The same value with another text.
    pub fn with_text(self, text: String) -> Shown {
        Shown { text, ..self }
    }

    /// The output in `format`.
    pub fn render(self, format: OutputFormat) -> anyhow::Result<String> {
        Ok((self.structured)(format)?.unwrap_or(self.text))
    }
}

/// One branch as a row of `branch list`, the same shape for both backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRow {
    /// The namespace on a cluster; `None` in local mode.
    pub namespace: Option<String>,
    pub name: String,
    /// (namespace, name) of the parent; the namespace is `None` in local mode.
    pub parent: Option<(Option<String>, String)>,
    /// `running`/`suspended`/`starting` when the branch is ready, else its phase.
    pub state: String,
    pub fork_lsn: Option<String>,
    pub exclusive_bytes: Option<u64>,
    /// Local mode: its port on 127.0.0.1; a cluster: its proxy port.
    pub port: Option<u16>,
    pub created_at: DateTime<Utc>,
    pub protected: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// Where the branch's restorable history starts (`branch list -o wide`).
    pub restorable_from: Option<DateTime<Utc>>,
    /// The LSN of `restorable_from`.
    pub restorable_from_lsn: Option<String>,
}

impl BranchRow {
    /// The key that parents refer to.
    pub fn key(&self) -> (Option<&str>, &str) {
        (self.namespace.as_deref(), &self.name)
    }
}

/// `branch list`'s answer: rows for the tree, the structured value for -o json|yaml.
pub struct Listing {
    pub rows: Vec<BranchRow>,
    /// What to print when there are no rows.
    pub empty: String,
    pub shown: Shown,
}

/// How to reach a branch's Postgres from this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub uri: String,
}

/// A branch reachable from here, for as long as this lives (a cluster's port-forward
/// stops when it is dropped).
pub struct Reach {
    pub conn: Conn,
    /// The branch was suspended: connecting wakes it.
    pub was_suspended: bool,
    pub forward: Option<kubernetes::portforward::Forward>,
}

/// Everything a verb asks of a backend. Local mode answers from its daemon; a cluster
/// writes custom resources and waits for the operator.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn create_branch(&self, args: CreateArgs) -> anyhow::Result<Shown>;
    async fn list_branches(&self) -> anyhow::Result<Listing>;
    async fn get_branch(&self, name: &str) -> anyhow::Result<Shown>;
    async fn delete_branch(&self, name: &str, force: bool, wait: WaitArgs)
        -> anyhow::Result<Shown>;
    /// The branch's own connection facts (a cluster: its Secret).
    async fn connection(&self, name: &str) -> anyhow::Result<Conn>;
    /// A connection usable from this machine (a cluster: through a port-forward).
    async fn reach(&self, name: &str, local_port: u16) -> anyhow::Result<Reach>;
    async fn wake(&self, name: &str, timeout: u64) -> anyhow::Result<Shown>;
    async fn suspend(&self, name: &str, timeout: u64) -> anyhow::Result<Shown>;
    async fn reset(&self, name: &str, timeout: u64) -> anyhow::Result<Shown>;
    async fn restore(&self, args: &RestoreArgs) -> anyhow::Result<Shown>;
    async fn protect(&self, name: &str, protected: bool) -> anyhow::Result<Shown>;
    async fn expire(&self, args: &ExpireArgs) -> anyhow::Result<Shown>;
    async fn move_branch(&self, args: &MoveArgs) -> anyhow::Result<Shown>;
    async fn create_checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
        timeout: u64,
    ) -> anyhow::Result<Shown>;
    async fn list_checkpoints(&self, branch: &str) -> anyhow::Result<Shown>;
    async fn delete_checkpoint(&self, branch: &str, name: &str) -> anyhow::Result<Shown>;
    async fn status(&self) -> anyhow::Result<Shown>;

    /// The parent's name, for `diff` with one branch.
    async fn parent_of(&self, name: &str) -> anyhow::Result<Option<String>>;
    /// A throwaway branch of `parent` at `at` (for `run` and `diff`), ready to connect to,
    /// deleted by the backend after `ttl_secs` should this process die first.
    async fn create_scratch(
        &self,
        name: &str,
        parent: &str,
        at: Option<&HistoryPoint>,
        ttl_secs: u64,
    ) -> anyhow::Result<()>;
    /// Deletes a throwaway branch (gone already is fine).
    async fn delete_scratch(&self, name: &str) -> anyhow::Result<()>;
}

/// `%`-encodes what a URI's user-info part cannot hold as is.
pub fn uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube(f: impl FnOnce(&mut KubeArgs)) -> KubeArgs {
        let mut k = KubeArgs {
            storage_namespace: "ramify-system".into(),
            ..KubeArgs::default()
        };
        f(&mut k);
        k
    }

    #[test]
    fn the_plugin_name_always_means_kubernetes() {
        assert!(invoked_as_plugin("kubectl-ramify"));
        assert!(invoked_as_plugin("/usr/local/bin/kubectl-ramify"));
        assert!(!invoked_as_plugin("/usr/local/bin/ramify"));
        assert!(!invoked_as_plugin("kubectl-ramify-old"));
        assert_eq!(select(true, &kube(|_| ())), Ok(BackendKind::Kubernetes));
        assert_eq!(
            select(true, &kube(|k| k.all_namespaces = true)),
            Ok(BackendKind::Kubernetes)
        );
    }

    #[test]
    fn ramify_is_local_unless_a_cluster_is_named() {
        assert_eq!(select(false, &kube(|_| ())), Ok(BackendKind::Local));
        for k in [
            kube(|k| k.kube = true),
            kube(|k| k.context = Some("prod".into())),
            kube(|k| k.kubeconfig = Some("/tmp/kc".into())),
            kube(|k| {
                k.kube = true;
                k.namespace = Some("team-a".into())
            }),
        ] {
            assert_eq!(select(false, &k), Ok(BackendKind::Kubernetes), "{k:?}");
        }
    }

    #[test]
    fn namespaces_without_a_cluster_are_refused() {
        let e = select(false, &kube(|k| k.namespace = Some("team-a".into()))).unwrap_err();
        assert!(e.contains("-n team-a") && e.contains("--kube"), "{e}");
        let e = select(false, &kube(|k| k.all_namespaces = true)).unwrap_err();
        assert!(e.contains("-A") && e.contains("--kube"), "{e}");
    }

    #[test]
    fn passwords_are_encoded_for_uris() {
        assert_eq!(uri_component("s3cr@t/x:y"), "s3cr%40t%2Fx%3Ay");
        assert_eq!(uri_component("Abc-1.2_~"), "Abc-1.2_~");
    }

    #[test]
    fn shown_keeps_field_order_and_text() {
        #[derive(Serialize)]
        struct T {
            z: u8,
            a: u8,
        }
        let s = Shown::new(T { z: 1, a: 2 }, "text\n".into());
        assert_eq!(
            s.render(OutputFormat::Json).unwrap(),
            "{\n  \"z\": 1,\n  \"a\": 2\n}\n"
        );
        let s = Shown::new(T { z: 1, a: 2 }, "text\n".into());
        assert_eq!(s.render(OutputFormat::Table).unwrap(), "text\n");
    }
}
