//! What tests against an [`ApiServer`] share: the skip-or-require rule, a client for a
//! token, Ramify's CRDs installed and established, namespaces, and waiting for a
//! condition.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::ApiServer;

/// Whether `test` must skip because this machine has no etcd/kube-apiserver; under
/// `RAMIFY_REQUIRE_K8S=1` (as `make test` sets when it built them) that is a failure.
pub fn skip_without_api_server(test: &str) -> bool {
    let Err(e) = ApiServer::available() else {
        return false;
    };
    assert!(
        std::env::var("RAMIFY_REQUIRE_K8S").as_deref() != Ok("1"),
        "RAMIFY_REQUIRE_K8S is set but: {e}"
    );
    eprintln!("SKIPPED {test}: {e}");
    true
}

impl ApiServer {
    /// A kubeconfig for this server with `token`, whose context's namespace is
    /// `namespace` when given.
    pub fn kubeconfig(&self, token: &str, namespace: Option<&str>) -> String {
        let ns = namespace
            .map(|n| format!("    namespace: {n}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n{ns}current-context: t\n",
            self.url
        )
    }

    /// A client of the `system:masters` user.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::from_yaml(&self.kubeconfig(&self.token, None))
            .expect("the generated kubeconfig parses");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("the generated kubeconfig is usable");
        Client::try_from(cfg).expect("a client for the test API server")
    }
}

/// Polls `f` every 200 ms until it returns `Some`, panicking after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates every CRD Ramify ships and waits until each is established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, yaml) in ramify_crd::crd_files().expect("the CRDs generate") {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&yaml).expect("a generated CRD parses");
        api.create(&PostParams::default(), &crd)
            .await
            .expect("the CRD is created");
        let name = file.trim_end_matches(".yaml").to_string();
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// Creates namespace `name` with `labels`.
pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("the namespace is created");
}
