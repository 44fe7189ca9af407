//! The DatabaseBranch controller against a real kube-apiserver + etcd (no kubelet: the
//! test plays the kubelet by marking compute Pods ready) and a fake storage node whose
//! failures the test controls. Proves: create → Ready with Secret, Service, EndpointSlice
//! and Timeline; CEL rules reject invalid branches; a parent not shared → condition;
//! deleting a parent with children is blocked until they are gone; storage errors →
//! retried with backoff and a Warning event.
//!
//! Needs `etcd` and `kube-apiserver` (`make cluster-build`); without them the test says
//! so and passes, unless `RAMIFY_REQUIRE_K8S=1` (as `make test` sets when it built them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use ramify_api::{
    ApiError, ComputeState, CreateTimeline, Credentials, NodeStatus, RestoreWindow, TimelineId,
    TimelineInfo, TimelineState,
};
use ramify_crd::{DatabaseBranch, Phase, Timeline};
use ramify_operator::config::Config;
use ramify_operator::metrics::Metrics;
use ramify_testkit::ApiServer;
use serde_json::json;

const STORAGE_NS: &str = "ramify-system";

#[derive(Default)]
struct FakeStorage {
    timelines: Mutex<HashMap<TimelineId, TimelineInfo>>,
    /// Creates to fail with 503 before succeeding.
    fail_creates: AtomicU32,
    credentials: Mutex<Vec<(TimelineId, Credentials)>>,
    deleted: Mutex<Vec<TimelineId>>,
}

type Fake = Arc<FakeStorage>;

fn info(id: TimelineId, parent: Option<TimelineId>) -> TimelineInfo {
    TimelineInfo {
        id,
        parent,
        at: None,
        fork_lsn: parent.map(|_| "0/3000028".parse().unwrap()),
        fork_time: parent.map(|_| Utc::now()),
        state: TimelineState::Ready,
        compute: ComputeState::Stopped,
        created_at: Utc::now(),
        pgdata: format!("/data/timelines/{id}/pgdata"),
        archive: format!("/data/timelines/{id}/wal"),
        run_dir: format!("/data/timelines/{id}/run"),
        archive_command: "test ! -f ../wal/%f && cp %p ../wal/%f".into(),
        logical_bytes: 40 << 20,
        exclusive_bytes: 3 << 20,
        history_bytes: 16 << 20,
        restore_window: RestoreWindow {
            from_lsn: None,
            from_time: None,
            to_lsn: None,
            to_time: None,
        },
        snapshots: vec![],
    }
}

fn api_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

async fn create(
    State(f): State<Fake>,
    Json(req): Json<CreateTimeline>,
) -> axum::response::Response {
    if f.fail_creates
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "disk is being replaced",
        );
    }
    let id = req.id.unwrap();
    let mut tls = f.timelines.lock().unwrap();
    let created = !tls.contains_key(&id);
    let tl = tls
        .entry(id)
        .or_insert_with(|| info(id, req.parent))
        .clone();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(tl)).into_response()
}

async fn get_one(State(f): State<Fake>, Path(id): Path<TimelineId>) -> axum::response::Response {
    match f.timelines.lock().unwrap().get(&id) {
        Some(t) => Json(t.clone()).into_response(),
        None => api_error(StatusCode::NOT_FOUND, "not_found", "no such timeline"),
    }
}

async fn delete_one(State(f): State<Fake>, Path(id): Path<TimelineId>) -> axum::response::Response {
    if f.timelines.lock().unwrap().remove(&id).is_none() {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no such timeline");
    }
    f.deleted.lock().unwrap().push(id);
    StatusCode::NO_CONTENT.into_response()
}

async fn set_credentials(
    State(f): State<Fake>,
    Path(id): Path<TimelineId>,
    Json(c): Json<Credentials>,
) -> axum::response::Response {
    f.credentials.lock().unwrap().push((id, c));
    StatusCode::NO_CONTENT.into_response()
}

async fn status() -> Json<NodeStatus> {
    Json(NodeStatus {
        version: "test".into(),
        data_dir: "/data".into(),
        clone_method: ramify_api::CloneMethod::Reflink,
        filesystem: "xfs".into(),
        capacity_bytes: 8 << 30,
        used_bytes: 1 << 30,
        available_bytes: 7 << 30,
        timelines: 0,
        restore_window_seconds: 3600,
        snapshot_interval_seconds: 0,
        snapshot_wal_bytes: 0,
    })
}

async fn fake_storage(f: Fake) -> String {
    let app = Router::new()
        .route("/v1/timelines", post(create))
        .route("/v1/timelines/{id}", get(get_one).delete(delete_one))
        .route("/v1/timelines/{id}/credentials", put(set_credentials))
        .route("/v1/status", get(status))
        .with_state(f);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n",
        server.url, server.token
    );
    let kc = Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in ramify_crd::crd_files().unwrap() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        api.create(&PostParams::default(), &crd).await.unwrap();
    }
    for name in ["databasebranches.ramify.dev", "timelines.ramify.dev"] {
        eventually("CRD established", Duration::from_secs(30), || async {
            let crd = api.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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

async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// The kubelet's part: every compute Pod becomes Running and Ready with an IP.
fn play_kubelet(client: Client) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, STORAGE_NS);
        let lp = ListParams::default().labels("app.kubernetes.io/component=compute");
        loop {
            if let Ok(list) = pods.list(&lp).await {
                for p in list.items {
                    if p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some() {
                        continue;
                    }
                    let status = json!({"status": {
                        "phase": "Running",
                        "podIP": "10.244.0.9",
                        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": Utc::now()}],
                    }});
                    let _ = pods
                        .patch_status(
                            &p.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(status),
                        )
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn apply_branch(
    client: &Client,
    ns: &str,
    body: serde_json::Value,
) -> Result<DatabaseBranch, kube::Error> {
    let b: DatabaseBranch = serde_json::from_value(body).unwrap();
    Api::<DatabaseBranch>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &b)
        .await
}

async fn wait_condition(client: &Client, ns: &str, name: &str, reason: &str) -> DatabaseBranch {
    let api: Api<DatabaseBranch> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("{ns}/{name} Ready reason {reason}"),
        Duration::from_secs(60),
        || async {
            let b = api.get(name).await.ok()?;
            let c = b
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (c.reason == reason).then_some(b)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_on_a_real_api_server() {
    if let Err(e) = ApiServer::available() {
        assert!(
            std::env::var("RAMIFY_REQUIRE_K8S").as_deref() != Ok("1"),
            "RAMIFY_REQUIRE_K8S is set but: {e}"
        );
        eprintln!("SKIPPED branches_on_a_real_api_server: {e}");
        return;
    }
    let server = ApiServer::start().unwrap();
    let client = client(&server).await;
    install_crds(&client).await;
    for (ns, labels) in [
        (STORAGE_NS, vec![]),
        ("prod", vec![]),
        ("dev", vec![("team", "web")]),
        ("other", vec![]),
    ] {
        namespace(&client, ns, &labels).await;
    }
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "ramify-storage", "namespace": STORAGE_NS},
        "spec": {
            "replicas": 1,
            "serviceName": "ramify-storage",
            "selector": {"matchLabels": {"app": "s"}},
            "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "s", "image": "x"}]}}
        }
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(client.clone(), STORAGE_NS)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();

    let storage = Arc::new(FakeStorage::default());
    let mut config = Config::for_namespace(STORAGE_NS);
    config.storage_url = Some(fake_storage(Arc::clone(&storage)).await);
    play_kubelet(client.clone());
    let (ctx_tx, ctx_rx) = tokio::sync::oneshot::channel();
    {
        let client = client.clone();
        tokio::spawn(async move {
            ramify_operator::run_controller(
                client,
                config,
                Arc::new(Metrics::default()),
                "t".repeat(40),
                |ctx| {
                    let _ = ctx_tx.send(ctx);
                },
            )
            .await;
        });
    }
    // The operator reports ready (/readyz) once its first list of branches arrived.
    let ctx = ctx_rx.await.unwrap();
    eventually(
        "the branch watch synced",
        Duration::from_secs(20),
        || async { ctx.synced.borrow().then_some(()) },
    )
    .await;

    // CEL in the CRD schema: the API server itself refuses what cannot make sense.
    let err = apply_branch(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "bad"}, "spec": {"at": {"lsn": "0/10"}}
        }),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("spec.at needs spec.parent"),
        "{err}"
    );
    let err = apply_branch(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "Bad_Name"}, "spec": {}
        }),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("metadata.name must be a DNS label"),
        "{err}"
    );

    // A root: storage first fails twice, then the branch becomes Ready.
    storage.fail_creates.store(2, Ordering::SeqCst);
    apply_branch(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "main"},
            "spec": {"sharing": {"namespaceSelector": {"matchLabels": {"team": "web"}}}}
        }),
    )
    .await
    .unwrap();
    let main = wait_condition(&client, "prod", "main", "Ready").await;
    let st = main.status.clone().unwrap();
    assert_eq!(st.phase, Some(Phase::Ready));
    let uid = main.uid().unwrap();
    assert_eq!(
        st.timeline.as_ref().unwrap().id,
        uid,
        "the first timeline's id is the branch uid"
    );
    assert_eq!(st.observed_generation, main.metadata.generation);
    assert_eq!(st.exclusive_size.as_deref(), Some("3.0Mi"));
    let port = st.proxy_port.unwrap();
    assert!((20000..30000).contains(&port));
    assert_eq!(storage.fail_creates.load(Ordering::SeqCst), 0);
    let events: Api<Event> = Api::namespaced(client.clone(), "prod");
    let warned = eventually(
        "a Warning event for the storage failure",
        Duration::from_secs(10),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("StorageUnavailable")
            })
        },
    )
    .await;
    assert!(warned
        .note
        .unwrap_or_default()
        .contains("disk is being replaced"));

    // Its Secret, Service, EndpointSlice and Timeline; the password set on the compute.
    let secret = Api::<Secret>::namespaced(client.clone(), "prod")
        .get("main-postgres")
        .await
        .unwrap();
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    assert_eq!(data["host"], "main-postgres.prod.svc.cluster.local");
    assert_eq!(data["port"], "5432");
    assert_eq!(data["user"], "app");
    assert_eq!(data["database"], "app");
    assert_eq!(data["password"].len(), 32);
    assert_eq!(
        data["uri"],
        format!(
            "postgresql://app:{}@main-postgres.prod.svc.cluster.local:5432/app",
            data["password"]
        )
    );
    let creds = storage.credentials.lock().unwrap().clone();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].0.to_string(), uid);
    assert_eq!(creds[0].1.password, data["password"]);
    let svc = Api::<Service>::namespaced(client.clone(), "prod")
        .get("main-postgres")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    assert!(
        spec.selector.is_none(),
        "the Service is backed by our EndpointSlice"
    );
    assert_eq!(spec.ports.unwrap()[0].port, 5432);
    let slice = Api::<EndpointSlice>::namespaced(client.clone(), "prod")
        .get("main-postgres-proxy")
        .await
        .unwrap();
    assert_eq!(
        slice.labels()["kubernetes.io/service-name"],
        "main-postgres"
    );
    assert_eq!(slice.ports.unwrap()[0].port, Some(port));
    let tl = Api::<Timeline>::namespaced(client.clone(), STORAGE_NS)
        .get(&format!("tl-{uid}"))
        .await
        .unwrap();
    assert_eq!(tl.spec.branch.name, "main");
    assert_eq!(tl.status.unwrap().exclusive_bytes, Some(3 << 20));

    // A fork in a namespace the parent does not share with.
    apply_branch(
        &client,
        "other",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "nope"},
            "spec": {"parent": {"name": "main", "namespace": "prod"}}
        }),
    )
    .await
    .unwrap();
    let nope = wait_condition(&client, "other", "nope", "ParentNotShared").await;
    assert_eq!(nope.status.unwrap().phase, Some(Phase::Failed));

    // A fork where the selector matches: Ready, forked from main's timeline.
    apply_branch(&client, "dev", json!({
        "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
        "metadata": {"name": "alice"},
        "spec": {"parent": {"name": "main", "namespace": "prod"}, "compute": {"suspendAfter": "30s"}}
    }))
    .await
    .unwrap();
    let alice = wait_condition(&client, "dev", "alice", "Ready").await;
    let alice_tl: TimelineId = alice.uid().unwrap().parse().unwrap();
    assert_eq!(
        storage.timelines.lock().unwrap()[&alice_tl]
            .parent
            .map(|p| p.to_string()),
        Some(uid.clone())
    );
    assert_eq!(
        alice.status.as_ref().unwrap().fork_lsn.as_deref(),
        Some("0/3000028")
    );

    // `parent` is immutable (CEL transition rule).
    let err = Api::<DatabaseBranch>::namespaced(client.clone(), "dev")
        .patch(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"parent": {"name": "other"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.parent is immutable"),
        "{err}"
    );

    // Deleting main while alice (and nope) point at it: blocked, with a condition naming them.
    let prod: Api<DatabaseBranch> = Api::namespaced(client.clone(), "prod");
    prod.delete("main", &DeleteParams::default()).await.unwrap();
    let blocked = wait_condition(&client, "prod", "main", "HasChildren").await;
    let msg = blocked
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("dev/alice") && msg.contains("other/nope"),
        "{msg}"
    );
    assert!(storage
        .timelines
        .lock()
        .unwrap()
        .contains_key(&main.uid().unwrap().parse().unwrap()));

    for (ns, name) in [("dev", "alice"), ("other", "nope")] {
        Api::<DatabaseBranch>::namespaced(client.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(
        "main deleted after its children",
        Duration::from_secs(60),
        || async { prod.get_opt("main").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let deleted = storage.deleted.lock().unwrap().clone();
    assert!(deleted.contains(&alice_tl), "{deleted:?}");
    assert!(deleted.iter().any(|d| d.to_string() == uid), "{deleted:?}");
    assert!(Api::<Secret>::namespaced(client.clone(), "prod")
        .get_opt("main-postgres")
        .await
        .unwrap()
        .is_none());
    assert!(Api::<Timeline>::namespaced(client.clone(), STORAGE_NS)
        .get_opt(&format!("tl-{uid}"))
        .await
        .unwrap()
        .is_none());
    let pods = Api::<Pod>::namespaced(client.clone(), STORAGE_NS)
        .list(&ListParams::default().labels("app.kubernetes.io/component=compute"))
        .await
        .unwrap();
    assert!(
        pods.items.is_empty(),
        "compute Pods left: {}",
        pods.items.len()
    );
}
