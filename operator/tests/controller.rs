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
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use ramify_api::{
    ApiError, At, ComputeState, CreateRestorePoint, CreateTimeline, Credentials, FollowInfo,
    FollowSource, FollowStatus, Lsn, NodeStatus, RestorePointInfo, RestoreWindow, TimelineId,
    TimelineInfo, TimelineState,
};
use ramify_crd::{
    BranchCheckpoint, BranchRestore, BranchRestoreStatus, CheckpointPhase,
    ComputeState as BranchComputeState, DatabaseBranch, Phase, RestorePhase, Timeline,
};
use ramify_operator::config::Config;
use ramify_operator::metrics::Metrics;
use ramify_testkit::kube_env::{
    create_namespace, eventually, install_crds, skip_without_api_server,
};
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
    /// Restore points written: (timeline, name).
    restore_points: Mutex<Vec<(TimelineId, String)>>,
    /// Deletes fail with 503, as a node that is gone (behind a dead Service) or broken.
    fail_deletes: std::sync::atomic::AtomicBool,
    /// Following roots created: the source as the operator sent it (password included).
    follows: Mutex<Vec<(TimelineId, FollowSource)>>,
    /// The replication state every follower reports (`None`: streaming, no lag).
    follow_state: Mutex<Option<FollowStatus>>,
}

/// Password the fake source refuses, as a node whose source said "password
/// authentication failed".
const WRONG_SOURCE_PASSWORD: &str = "not-the-password";

fn streaming() -> FollowStatus {
    FollowStatus {
        streaming: true,
        received_lsn: Some(Lsn(0x500_0000)),
        replayed_lsn: Some(Lsn(0x4FF_F000)),
        source_lsn: Some(Lsn(0x500_0000)),
        lag_bytes: Some(4096),
        lag_seconds: Some(0.25),
        last_received_at: Some(Utc::now()),
        problem: None,
    }
}

/// Fork points at or after this LSN are "outside the restore window".
const WINDOW_END: u64 = 0xF_0000_0000;

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
        sizes_measured_at: Some(Utc::now()),
        restore_window: RestoreWindow {
            from_lsn: None,
            from_time: None,
            to_lsn: None,
            to_time: None,
        },
        snapshots: vec![],
        follow: None,
        backup: None,
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

async fn create_timeline(
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
    if let Some(source) = &req.follow {
        if source.password.as_deref() == Some(WRONG_SOURCE_PASSWORD) {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "source_refused",
                "the source refused the connection: password authentication failed for user \"replicator\"; check the replication role's password",
            );
        }
        f.follows.lock().unwrap().push((id, source.clone()));
    }
    if let Some(At::Lsn(l)) = &req.at {
        if l.0 >= WINDOW_END {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "out_of_range",
                &format!("{l} is after the last flushed LSN 0/5000000 (restore window 0/1000000 - 0/5000000)"),
            );
        }
    }
    let mut tls = f.timelines.lock().unwrap();
    let created = !tls.contains_key(&id);
    let tl = tls
        .entry(id)
        .or_insert_with(|| TimelineInfo {
            at: req.at.clone(),
            follow: req.follow.as_ref().map(|f| FollowInfo {
                conninfo: f.conninfo.clone(),
                slot: f.slot.clone(),
                passfile: "source.pass".into(),
                mode: f.mode,
                publication: f.publication.clone(),
                status: None,
                warm_standby: None,
            }),
            ..info(id, req.parent)
        })
        .clone();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(tl)).into_response()
}

async fn get_one(State(f): State<Fake>, Path(id): Path<TimelineId>) -> axum::response::Response {
    let state = f.follow_state.lock().unwrap().clone();
    match f.timelines.lock().unwrap().get(&id) {
        Some(t) => {
            let mut t = t.clone();
            if let Some(follow) = t.follow.as_mut() {
                // As the node reads it from the running compute.
                follow.status = Some(state.unwrap_or_else(streaming));
            }
            Json(t).into_response()
        }
        None => api_error(StatusCode::NOT_FOUND, "not_found", "no such timeline"),
    }
}

async fn delete_one(State(f): State<Fake>, Path(id): Path<TimelineId>) -> axum::response::Response {
    if f.fail_deletes.load(Ordering::SeqCst) {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage node is gone",
        );
    }
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
    if f.timelines
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|t| t.follow.is_some())
    {
        return api_error(
            StatusCode::CONFLICT,
            "conflict",
            "timeline follows another Postgres: it is a read-only standby whose roles are its source's",
        );
    }
    f.credentials.lock().unwrap().push((id, c));
    StatusCode::NO_CONTENT.into_response()
}

async fn restore_point(
    State(f): State<Fake>,
    Path(id): Path<TimelineId>,
    Json(req): Json<CreateRestorePoint>,
) -> axum::response::Response {
    match f.timelines.lock().unwrap().get(&id) {
        None => return api_error(StatusCode::NOT_FOUND, "not_found", "no such timeline"),
        Some(t) if t.follow.is_some() => {
            return api_error(
                StatusCode::CONFLICT,
                "conflict",
                "a standby writes no restore point",
            )
        }
        Some(_) => {}
    }
    let mut points = f.restore_points.lock().unwrap();
    points.push((id, req.name.clone()));
    Json(RestorePointInfo {
        name: req.name,
        lsn: Lsn(0x400_0000 + points.len() as u64 * 0x100),
        time: Utc::now(),
        wal_since_snapshot: 0,
        snapshot: None,
    })
    .into_response()
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
        reserve: None,
        backup: None,
    })
}

async fn fake_storage(f: Fake) -> String {
    let app = Router::new()
        .route("/v1/timelines", post(create_timeline))
        .route("/v1/timelines/{id}", get(get_one).delete(delete_one))
        .route("/v1/timelines/{id}/credentials", put(set_credentials))
        .route("/v1/timelines/{id}/restore-points", post(restore_point))
        .route("/v1/status", get(status))
        .with_state(f);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
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

/// A real API server with the CRDs, namespaces, a storage StatefulSet, a fake storage
/// node, a play-kubelet and the operator's controllers running; `None` when the machine
/// has no etcd/kube-apiserver (a failure under `RAMIFY_REQUIRE_K8S=1`).
struct Env {
    _server: ApiServer,
    client: Client,
    storage: Fake,
}

async fn start_env(test: &str, namespaces: &[(&str, Vec<(&str, &str)>)]) -> Option<Env> {
    if skip_without_api_server(test) {
        return None;
    }
    let server = ApiServer::start().unwrap();
    let client = server.client().await;
    install_crds(&client).await;
    create_namespace(&client, STORAGE_NS, &[]).await;
    for (ns, labels) in namespaces {
        create_namespace(&client, ns, labels).await;
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
    // The administrator lets branches follow production's databases, nothing else.
    config.follow_allowed_hosts = vec!["*.prod.svc".into()];
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
    Some(Env {
        _server: server,
        client,
        storage,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_on_a_real_api_server() {
    let Some(Env {
        _server,
        client,
        storage,
    }) = start_env(
        "branches_on_a_real_api_server",
        &[
            ("prod", vec![]),
            ("dev", vec![("team", "web")]),
            ("other", vec![]),
        ],
    )
    .await
    else {
        return;
    };

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
    // Postgres parameters that run programs or load code: refused by the API server,
    // naming each one; an ordinary one next to them passes the same rule.
    let err = apply_branch(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "bad"},
            "spec": {"compute": {"postgresParameters": {
                "restore_command": "id > /tmp/x", "shared_preload_libraries": "evil",
                "work_mem": "64MB"}}}
        }),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("postgresParameters sets a parameter that runs a program"),
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

    // A Secret of the name a branch would use, made by someone else: the operator neither
    // overwrites it nor deletes it with the branch; the branch says why it is not Ready.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "prod");
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken-postgres"},
        "stringData": {"password": "TheirsTheirsTheirsTheirs0123456"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let before = secrets.get("taken-postgres").await.unwrap();
    apply_branch(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "taken"}, "spec": {}
        }),
    )
    .await
    .unwrap();
    let taken = wait_condition(&client, "prod", "taken", "Conflict").await;
    let msg = taken
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.starts_with("Secret prod/taken-postgres exists and was not created by Ramify"),
        "{msg}"
    );
    Api::<DatabaseBranch>::namespaced(client.clone(), "prod")
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the conflicting branch deleted",
        Duration::from_secs(60),
        || async {
            Api::<DatabaseBranch>::namespaced(client.clone(), "prod")
                .get_opt("taken")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let after = secrets.get("taken-postgres").await.unwrap();
    assert_eq!(
        after.data, before.data,
        "the operator changed a Secret it does not own"
    );
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "the Secret was replaced"
    );
    assert!(Api::<Service>::namespaced(client.clone(), "prod")
        .get_opt("taken-postgres")
        .await
        .unwrap()
        .is_none());

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

    // A fork at a time pasted from psql (`select now()`): the API server takes it and the
    // storage node is asked for that moment; a time without a zone is refused by the API
    // server, with both accepted forms.
    let err = apply_branch(&client, "dev", json!({
        "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
        "metadata": {"name": "past"},
        "spec": {"parent": {"name": "main", "namespace": "prod"}, "at": {"time": "2026-12-04 14:45:02"}}
    }))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.at.time: time 2026-12-04 14:45:02 has no time zone: write it as Postgres prints timestamptz (2026-12-04 14:45:02+00) or in RFC 3339 (2026-12-04T14:45:02Z)"),
        "{err}"
    );
    apply_branch(&client, "dev", json!({
        "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
        "metadata": {"name": "past"},
        "spec": {"parent": {"name": "main", "namespace": "prod"}, "at": {"time": "2026-12-04 14:45:02.954757+00"}}
    }))
    .await
    .unwrap();
    let past = wait_condition(&client, "dev", "past", "Ready").await;
    let past_tl: TimelineId = past.uid().unwrap().parse().unwrap();
    assert_eq!(
        storage.timelines.lock().unwrap()[&past_tl].at,
        Some(At::Time(
            chrono::DateTime::parse_from_rfc3339("2026-12-04T14:45:02.954757Z")
                .unwrap()
                .with_timezone(&Utc)
        ))
    );
    let dev: Api<DatabaseBranch> = Api::namespaced(client.clone(), "dev");
    dev.delete("past", &DeleteParams::default()).await.unwrap();
    eventually("past deleted", Duration::from_secs(60), || async {
        dev.get_opt("past").await.ok()?.is_none().then_some(())
    })
    .await;

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
    // nope's namespace is not shared: it never got main's data and does not hold it.
    assert!(
        msg.contains("dev/alice") && !msg.contains("other/nope"),
        "{msg}"
    );
    assert!(storage
        .timelines
        .lock()
        .unwrap()
        .contains_key(&main.uid().unwrap().parse().unwrap()));

    Api::<DatabaseBranch>::namespaced(client.clone(), "dev")
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "main deleted after its (shared) children",
        Duration::from_secs(60),
        || async { prod.get_opt("main").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        Api::<DatabaseBranch>::namespaced(client.clone(), "other")
            .get_opt("nope")
            .await
            .unwrap()
            .is_some(),
        "a branch in a namespace main does not share with was deleted with it"
    );
    Api::<DatabaseBranch>::namespaced(client.clone(), "other")
        .delete("nope", &DeleteParams::default())
        .await
        .unwrap();
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

async fn create<K>(client: &Client, ns: &str, body: serde_json::Value) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(body).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
}

/// The restore's final status (Succeeded or Failed).
async fn restore_done(client: &Client, ns: &str, name: &str) -> BranchRestoreStatus {
    let api: Api<BranchRestore> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("BranchRestore {name} to finish"),
        Duration::from_secs(60),
        || async {
            let st = api.get(name).await.ok()?.status?;
            matches!(
                st.phase,
                Some(RestorePhase::Succeeded | RestorePhase::Failed)
            )
            .then_some(st)
        },
    )
    .await
}

fn succeeded(st: &BranchRestoreStatus) -> (String, String) {
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    (c.reason.clone(), c.message.clone())
}

fn restore(name: &str, branch: &str, source: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "ramify.dev/v1alpha1", "kind": "BranchRestore",
        "metadata": {"name": name},
        "spec": {"branch": branch, "source": source}
    })
}

async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Protection, expiry, checkpoints, restore (with a backup branch), reset, and every
/// refusal of the workflow objects, against the real API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_on_a_real_api_server() {
    let Some(Env {
        _server,
        client,
        storage,
    }) = start_env("workflows_on_a_real_api_server", &[("app", vec![])]).await
    else {
        return;
    };
    let ns = "app";
    let branches: Api<DatabaseBranch> = Api::namespaced(client.clone(), ns);
    let timeline_of = |b: &DatabaseBranch| b.status.as_ref().unwrap().timeline.clone().unwrap();
    let branch = |name: &str, spec: serde_json::Value| json!({"apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch", "metadata": {"name": name}, "spec": spec});

    // CEL: expiresAt and ttl exclude each other; a restore needs a meaningful source and
    // is immutable.
    let err = create::<DatabaseBranch>(
        &client,
        ns,
        branch(
            "x",
            json!({"ttl": "1h", "expiresAt": "2030-01-01T00:00:00Z"}),
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("exclude each other"), "{err}");
    for (source, expect) in [
        (json!({}), "source needs parent: true"),
        (
            json!({"parent": true, "lsn": "0/10"}),
            "takes no other field",
        ),
        (
            json!({"lsn": "0/10", "checkpoint": "c"}),
            "at most one of lsn, time and checkpoint",
        ),
    ] {
        let err = create::<BranchRestore>(&client, ns, restore("bad", "dev", source))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }

    create::<DatabaseBranch>(&client, ns, branch("main", json!({})))
        .await
        .unwrap();
    let main = wait_condition(&client, ns, "main", "Ready").await;
    create::<DatabaseBranch>(
        &client,
        ns,
        branch("dev", json!({"parent": {"name": "main"}})),
    )
    .await
    .unwrap();
    let dev = wait_condition(&client, ns, "dev", "Ready").await;
    let dev_tl0 = timeline_of(&dev);
    let dev_password = {
        let s = Api::<Secret>::namespaced(client.clone(), ns)
            .get("dev-postgres")
            .await
            .unwrap();
        String::from_utf8(s.data.unwrap()["password"].0.clone()).unwrap()
    };

    // Protection: the operator holds the deletion (no admission policy here) and says why.
    create::<DatabaseBranch>(&client, ns, branch("keep", json!({"protected": true})))
        .await
        .unwrap();
    let keep = wait_condition(&client, ns, "keep", "Ready").await;
    branches
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    let held = wait_condition(&client, ns, "keep", "Protected").await;
    let msg = held.status.unwrap().conditions[0..]
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("spec.protected is true"), "{msg}");
    let keep_tl: TimelineId = timeline_of(&keep).id.parse().unwrap();
    assert!(storage.timelines.lock().unwrap().contains_key(&keep_tl));
    branches
        .patch(
            "keep",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protected": false}})),
        )
        .await
        .unwrap();
    eventually(
        "keep deleted once unprotected",
        Duration::from_secs(60),
        || async { branches.get_opt("keep").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(storage.deleted.lock().unwrap().contains(&keep_tl));

    // Expiry: a 3 s ttl is resolved in status and the branch is gone within 10 s, with
    // an Event; an expired protected branch is kept, with a condition saying why.
    let created = Instant::now();
    create::<DatabaseBranch>(&client, ns, branch("tmp", json!({"ttl": "3s"})))
        .await
        .unwrap();
    let tmp = wait_condition(&client, ns, "tmp", "Ready").await;
    let tmp_tl: TimelineId = timeline_of(&tmp).id.parse().unwrap();
    let expires = tmp.status.as_ref().unwrap().expires_at.unwrap();
    let born = tmp
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_second();
    assert_eq!(expires.timestamp() - born, 3);
    eventually("tmp expired", Duration::from_secs(10), || async {
        branches.get_opt("tmp").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(created.elapsed() < Duration::from_secs(12));
    assert!(storage.deleted.lock().unwrap().contains(&tmp_tl));
    let ev = events_of(&client, ns, "tmp").await;
    assert!(
        ev.iter()
            .any(|(_, r, n)| r == "Expired" && n.contains("spec.ttl 3s")),
        "{ev:?}"
    );
    create::<DatabaseBranch>(
        &client,
        ns,
        branch(
            "old",
            json!({"protected": true, "expiresAt": "2020-01-01T00:00:00Z"}),
        ),
    )
    .await
    .unwrap();
    let old = eventually(
        "old kept with an Expired condition",
        Duration::from_secs(30),
        || async {
            let b = branches.get("old").await.ok()?;
            let c = b
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Expired")?
                .clone();
            Some((b, c))
        },
    )
    .await;
    assert_eq!(old.1.reason, "Protected");
    assert!(
        old.1.message.contains("spec.protected is true"),
        "{}",
        old.1.message
    );
    branches
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protected": false}})),
        )
        .await
        .unwrap();
    eventually(
        "old expired once unprotected",
        Duration::from_secs(30),
        || async { branches.get_opt("old").await.ok()?.is_none().then_some(()) },
    )
    .await;

    // Suspend and wake asked for by annotation (`kubectl ramify branch suspend|wake`):
    // done, then the annotation is removed and the status shows the new state.
    let pods: Api<Pod> = Api::namespaced(client.clone(), STORAGE_NS);
    let dev_pod = format!("compute-{}", dev_tl0.id);
    for (annotation, state, pod_exists) in [
        (
            "ramify.dev/suspend-request",
            BranchComputeState::Suspended,
            false,
        ),
        ("ramify.dev/wake-request", BranchComputeState::Running, true),
    ] {
        branches
            .patch(
                "dev",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {annotation: Utc::now().to_rfc3339()}}}),
                ),
            )
            .await
            .unwrap();
        let b = eventually(annotation, Duration::from_secs(30), || async {
            let b = branches.get("dev").await.ok()?;
            (!b.annotations().contains_key(annotation)).then_some(b)
        })
        .await;
        assert_eq!(
            b.status.unwrap().compute.unwrap().state,
            state,
            "{annotation}"
        );
        assert_eq!(pods.get_opt(&dev_pod).await.unwrap().is_some(), pod_exists);
    }

    // A checkpoint: a restore point on dev's timeline, owned by dev.
    create::<BranchCheckpoint>(
        &client,
        ns,
        json!({"apiVersion": "ramify.dev/v1alpha1", "kind": "BranchCheckpoint",
               "metadata": {"name": "step-1"}, "spec": {"branch": "dev"}}),
    )
    .await
    .unwrap();
    let cps: Api<BranchCheckpoint> = Api::namespaced(client.clone(), ns);
    let cp = eventually("checkpoint Ready", Duration::from_secs(30), || async {
        let c = cps.get("step-1").await.ok()?;
        (c.status.as_ref()?.phase == Some(CheckpointPhase::Ready)).then_some(c)
    })
    .await;
    let cp_st = cp.status.clone().unwrap();
    assert_eq!(cp_st.timeline.as_ref().unwrap().id, dev_tl0.id);
    assert!(storage
        .restore_points
        .lock()
        .unwrap()
        .iter()
        .any(|(t, n)| t.to_string() == dev_tl0.id && n == "step-1"));
    assert_eq!(cp.owner_references()[0].name, "dev");
    let cp_lsn: Lsn = cp_st.lsn.clone().unwrap().parse().unwrap();

    // Restore to it: dev moves onto a new timeline forked at the checkpoint; its former
    // timeline is handed to a backup branch that is Ready without starting a compute.
    create::<BranchRestore>(
        &client,
        ns,
        restore("undo", "dev", json!({"checkpoint": "step-1"})),
    )
    .await
    .unwrap();
    let st = restore_done(&client, ns, "undo").await;
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        succeeded(&st)
    );
    let undo_uid = Api::<BranchRestore>::namespaced(client.clone(), ns)
        .get("undo")
        .await
        .unwrap()
        .uid()
        .unwrap();
    assert_eq!(st.timeline.as_deref(), Some(undo_uid.as_str()));
    assert_eq!(st.previous_timeline.as_deref(), Some(dev_tl0.id.as_str()));
    let dev = branches.get("dev").await.unwrap();
    assert_eq!(timeline_of(&dev).id, undo_uid);
    let new_tl: TimelineId = undo_uid.parse().unwrap();
    {
        let tls = storage.timelines.lock().unwrap();
        assert_eq!(tls[&new_tl].parent.unwrap().to_string(), dev_tl0.id);
        assert_eq!(tls[&new_tl].at, Some(At::Lsn(cp_lsn)));
    }
    // Same password on the new timeline.
    assert!(storage
        .credentials
        .lock()
        .unwrap()
        .iter()
        .any(|(t, c)| *t == new_tl && c.password == dev_password));
    let backup = st.backup_branch.clone().unwrap();
    assert!(backup.starts_with("dev-before-restore-"), "{backup}");
    let b = wait_condition(&client, ns, &backup, "Ready").await;
    assert_eq!(timeline_of(&b).id, dev_tl0.id);
    assert!(b.spec.expires_at.is_some());
    // Its password is the one dev's role has on that timeline: set once, when dev was
    // created, never again for the backup.
    assert_eq!(
        storage
            .credentials
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.to_string() == dev_tl0.id)
            .count(),
        1
    );
    let handed = Api::<Timeline>::namespaced(client.clone(), STORAGE_NS)
        .get(&format!("tl-{}", dev_tl0.id))
        .await
        .unwrap();
    assert_eq!(handed.spec.branch.name, backup);
    let backup_secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{backup}-postgres"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(backup_secret.data.unwrap()["password"].0.clone()).unwrap(),
        dev_password
    );
    let ev = events_of(&client, ns, "dev").await;
    assert!(ev.iter().any(|(_, r, _)| r == "Restored"), "{ev:?}");

    // Applying the same restore again changes nothing.
    let forks = storage.timelines.lock().unwrap().len();
    Api::<BranchRestore>::namespaced(client.clone(), ns)
        .patch(
            "undo",
            &PatchParams::apply("test"),
            &Patch::Apply(restore("undo", "dev", json!({"checkpoint": "step-1"}))),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(storage.timelines.lock().unwrap().len(), forks);
    assert_eq!(
        timeline_of(&branches.get("dev").await.unwrap()).id,
        undo_uid
    );
    // The spec is immutable.
    let err = Api::<BranchRestore>::namespaced(client.clone(), ns)
        .patch(
            "undo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"branch": "main"}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec is immutable"), "{err}");

    // Reset to the parent: a fork of main's latest state; the timeline dev leaves is
    // deleted, and no backup is kept.
    create::<BranchRestore>(
        &client,
        ns,
        restore("reset", "dev", json!({"parent": true})),
    )
    .await
    .unwrap();
    let st = restore_done(&client, ns, "reset").await;
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        succeeded(&st)
    );
    assert!(st.backup_branch.is_none());
    let reset_tl: TimelineId = st.timeline.clone().unwrap().parse().unwrap();
    {
        let tls = storage.timelines.lock().unwrap();
        assert_eq!(
            tls[&reset_tl].parent.unwrap().to_string(),
            timeline_of(&main).id
        );
        assert_eq!(tls[&reset_tl].at, Some(At::Latest));
        assert!(
            !tls.contains_key(&new_tl),
            "the timeline reset left is deleted"
        );
    }
    assert!(Api::<Timeline>::namespaced(client.clone(), STORAGE_NS)
        .get_opt(&format!("tl-{new_tl}"))
        .await
        .unwrap()
        .is_none());

    // Refusals: each one Failed with a clear reason, and dev unchanged.
    let dev_before = timeline_of(&branches.get("dev").await.unwrap()).id;
    branches
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protected": true}})),
        )
        .await
        .unwrap();
    let cases = [
        (
            "protected",
            "dev",
            json!({"parent": true}),
            "Protected",
            "spec.protected",
        ),
        (
            "root",
            "main",
            json!({"parent": true}),
            "IsRoot",
            "is a root",
        ),
        (
            "nocp",
            "main",
            json!({"checkpoint": "nope"}),
            "CheckpointNotFound",
            "no BranchCheckpoint app/nope",
        ),
        (
            "window",
            "main",
            json!({"lsn": "F/0"}),
            "InvalidPoint",
            "restore window",
        ),
        (
            "nobranch",
            "ghost",
            json!({"parent": true}),
            "BranchNotFound",
            "does not exist",
        ),
        (
            "nosource",
            "main",
            json!({"branch": "ghost"}),
            "SourceNotFound",
            "ghost",
        ),
    ];
    for (name, target, source, reason, text) in cases {
        create::<BranchRestore>(&client, ns, restore(name, target, source))
            .await
            .unwrap();
        let st = restore_done(&client, ns, name).await;
        assert_eq!(st.phase, Some(RestorePhase::Failed), "{name}");
        let (r, m) = succeeded(&st);
        assert_eq!(r, reason, "{name}: {m}");
        assert!(m.contains(text), "{name}: {m}");
    }
    assert_eq!(
        timeline_of(&branches.get("dev").await.unwrap()).id,
        dev_before
    );
    assert_eq!(
        timeline_of(&branches.get("main").await.unwrap()).id,
        timeline_of(&main).id
    );

    // Restore from another branch (its latest state), without a backup: main takes
    // dev's state; dev, its child, keeps its own timeline.
    create::<BranchRestore>(
        &client,
        ns,
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "BranchRestore",
            "metadata": {"name": "from-dev"},
            "spec": {"branch": "main", "source": {"branch": "dev"}, "keepBackup": false}
        }),
    )
    .await
    .unwrap();
    let st = restore_done(&client, ns, "from-dev").await;
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        succeeded(&st)
    );
    let main_tl: TimelineId = st.timeline.clone().unwrap().parse().unwrap();
    {
        let tls = storage.timelines.lock().unwrap();
        assert_eq!(tls[&main_tl].parent.unwrap().to_string(), dev_before);
        assert_eq!(tls[&main_tl].at, Some(At::Latest));
        assert!(!tls.contains_key(&timeline_of(&main).id.parse().unwrap()));
    }
    assert_eq!(
        timeline_of(&branches.get("dev").await.unwrap()).id,
        dev_before
    );
    assert!(
        succeeded(&st).1.contains("dev latest"),
        "{:?}",
        succeeded(&st)
    );
}

/// With cert-manager issuing the TLS CA (the chart's `tls.issuerRef`), the operator never
/// makes its own: it waits until the Secret appears and then uses that CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_waits_for_a_ca_that_cert_manager_issues() {
    if skip_without_api_server("the_operator_waits_for_a_ca_that_cert_manager_issues") {
        return;
    }
    let server = ApiServer::start().unwrap();
    let client = server.client().await;
    create_namespace(&client, STORAGE_NS, &[]).await;
    let waiting = tokio::spawn(ramify_operator::ca::wait_issued(
        client.clone(),
        STORAGE_NS,
        "ramify-ca",
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the operator did not wait for the CA"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), STORAGE_NS);
    assert!(
        secrets.get_opt("ramify-ca").await.unwrap().is_none(),
        "the operator created a CA of its own"
    );
    // What cert-manager writes for a CA Certificate.
    let issued = ramify_proxy::CertificateAuthority::generate("issued by cert-manager").unwrap();
    secrets
        .create(
            &PostParams::default(),
            &ramify_operator::ca::ca_secret(STORAGE_NS, "ramify-ca", &issued),
        )
        .await
        .unwrap();
    let pem = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the operator did not notice the issued CA")
        .unwrap()
        .unwrap();
    assert_eq!(pem, issued.cert_pem());
}

/// A storage node gone for good: deleting a branch on it retries with a condition that
/// gives the exact command; with `ramify.dev/forget-storage` the deletion finishes, the
/// timeline left behind with a Warning event. Without the annotation nothing is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_storage_node_can_be_let_go() {
    let Some(Env {
        _server,
        client,
        storage,
    }) = start_env("a_lost_storage_node_can_be_let_go", &[("app", vec![])]).await
    else {
        return;
    };
    apply_branch(
        &client,
        "app",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "stranded"}, "spec": {}
        }),
    )
    .await
    .unwrap();
    let b = wait_condition(&client, "app", "stranded", "Ready").await;
    let uid: TimelineId = b.uid().unwrap().parse().unwrap();
    storage
        .fail_deletes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let api: Api<DatabaseBranch> = Api::namespaced(client.clone(), "app");
    api.delete("stranded", &DeleteParams::default())
        .await
        .unwrap();
    let held = wait_condition(&client, "app", "stranded", "StorageUnreachable").await;
    let msg = held
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains(
            "kubectl annotate databasebranch stranded -n app ramify.dev/forget-storage=true"
        ),
        "{msg}"
    );
    api.patch(
        "stranded",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ramify.dev/forget-storage": "true"}}})),
    )
    .await
    .unwrap();
    eventually(
        "the branch deleted without its storage node",
        Duration::from_secs(60),
        || async { api.get_opt("stranded").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        storage.timelines.lock().unwrap().contains_key(&uid),
        "the timeline was deleted after all"
    );
    let events = events_of(&client, "app", "stranded").await;
    assert!(
        events
            .iter()
            .any(|(_, reason, note)| reason == "StorageForgotten" && note.contains("left behind")),
        "{events:?}"
    );
}

fn follower(name: &str, secret: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "source": {"external": {
            "connectionSecretRef": {"name": secret, "key": "uri"},
            "slot": "ramify_mirror"
        }},
        "compute": {"suspendAfter": "30s"},
        "sharing": {"namespaces": ["preview"]}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
        "metadata": {"name": name}, "spec": spec
    })
}

/// Writes the source's Secret, and touches the branch: the operator does not watch
/// Secrets (it may not list them), so a changed one is read at the branch's next
/// reconcile (within 30 s), or at once when the branch changes.
/// Writes the source's Secret, then touches the branch: the operator does not watch
/// Secrets (it may not list them), so a changed one is read at the branch's next
/// reconcile (within 30 s), or at once when the branch changes.
async fn source_secret(client: &Client, ns: &str, name: &str, uri: &str) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns},
                "stringData": {"uri": uri}
            })),
        )
        .await
        .unwrap();
    let touched = Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or_default()
        .to_string();
    Api::<DatabaseBranch>::namespaced(client.clone(), ns)
        .patch(
            "mirror",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/secret-written": touched}}})),
        )
        .await
        .unwrap();
}

fn condition(b: &DatabaseBranch, type_: &str) -> Option<(String, String, String)> {
    b.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A branch following an external Postgres (`spec.source.external`): the CEL rules, the
/// Secret read and split (the password to the node, never shown), a hot-standby compute
/// that always runs and gets no credentials, the replication state in the status and a
/// `Following` condition, reset/restore/checkpoint refused, and a fork in another
/// namespace that takes over the source's database and objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_branch_on_a_real_api_server() {
    const PASSWORD: &str = "pw-Secret-123";
    let Some(Env {
        _server,
        client,
        storage,
    }) = start_env(
        "a_following_branch_on_a_real_api_server",
        &[("prod", vec![]), ("preview", vec![])],
    )
    .await
    else {
        return;
    };

    // What cannot make sense is refused by the API server.
    for (extra, said) in [
        (
            json!({"parent": {"name": "main"}}),
            "spec.source and spec.parent exclude each other",
        ),
        (
            json!({"source": {"external": {"connectionSecretRef": {"name": "prod-db", "key": "uri"}, "mode": "logical"}}}),
            "mode logical needs publication",
        ),
        (
            json!({"source": {"external": {"connectionSecretRef": {"name": "prod-db", "key": "uri"}, "publication": "bank"}}}),
            "physical takes none",
        ),
        (json!({"ttl": "2h"}), "a following branch does not expire"),
        (json!({"source": {}}), "spec.source needs external"),
    ] {
        let err = apply_branch(&client, "prod", follower("bad", "prod-db", extra))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(said), "{said}: {err}");
    }

    // The Secret comes after the branch: it waits for it.
    apply_branch(&client, "prod", follower("mirror", "prod-db", json!({})))
        .await
        .unwrap();
    let waiting = wait_condition(&client, "prod", "mirror", "SourceSecretNotFound").await;
    assert!(
        condition(&waiting, "Ready")
            .unwrap()
            .2
            .contains("Secret prod/prod-db key \"uri\""),
        "{:?}",
        condition(&waiting, "Ready")
    );
    // A Secret naming a Unix socket is refused: the storage node would connect to another
    // branch's compute, which trusts local connections.
    source_secret(
        &client,
        "prod",
        "prod-db",
        &format!(
            "postgresql://postgres:{PASSWORD}@%2Fvar%2Flib%2Framify%2Ftimelines%2Fx%2Frun/postgres"
        ),
    )
    .await;
    let refused = wait_condition(&client, "prod", "mirror", "InvalidSource").await;
    let msg = condition(&refused, "Ready").unwrap().2;
    assert!(msg.contains("over TCP") && !msg.contains(PASSWORD), "{msg}");
    // A host the administrator did not list: the storage node would connect to it and
    // load what it answers.
    source_secret(
        &client,
        "prod",
        "prod-db",
        &format!("postgresql://replicator:{PASSWORD}@db.elsewhere.example:5432/bank"),
    )
    .await;
    let refused = wait_condition(&client, "prod", "mirror", "SourceNotAllowed").await;
    let msg = condition(&refused, "Ready").unwrap().2;
    assert!(
        msg.contains("\"db.elsewhere.example\"")
            && msg.contains("following.allowedHosts")
            && !msg.contains(PASSWORD),
        "{msg}"
    );
    // A password the source refuses: the node's reason, retried.
    source_secret(
        &client,
        "prod",
        "prod-db",
        &format!("postgresql://replicator:{WRONG_SOURCE_PASSWORD}@prod-db.prod.svc:5432/bank"),
    )
    .await;
    let refused = wait_condition(&client, "prod", "mirror", "SourceRefused").await;
    assert!(
        condition(&refused, "Ready")
            .unwrap()
            .2
            .contains("check the replication role's password"),
        "{:?}",
        condition(&refused, "Ready")
    );
    source_secret(
        &client,
        "prod",
        "prod-db",
        &format!("postgresql://replicator:{PASSWORD}@prod-db.prod.svc:5432/bank?sslmode=prefer"),
    )
    .await;
    let mirror = wait_condition(&client, "prod", "mirror", "Ready").await;
    let uid: TimelineId = mirror.uid().unwrap().parse().unwrap();
    let sent = storage.follows.lock().unwrap().clone();
    let source = &sent.iter().find(|(id, _)| *id == uid).unwrap().1;
    assert_eq!(
        source.conninfo,
        "postgresql://replicator@prod-db.prod.svc:5432/bank?sslmode=prefer"
    );
    assert_eq!(source.password.as_deref(), Some(PASSWORD));
    assert_eq!(source.slot.as_deref(), Some("ramify_mirror"));
    assert!(
        storage
            .credentials
            .lock()
            .unwrap()
            .iter()
            .all(|(id, _)| *id != uid),
        "a follower's roles are its source's: no credentials are set"
    );

    // Status: the source without its password, the replication figures, Following.
    let mirror = eventually(
        "mirror's replication state",
        Duration::from_secs(30),
        || async {
            let b = Api::<DatabaseBranch>::namespaced(client.clone(), "prod")
                .get("mirror")
                .await
                .ok()?;
            (condition(&b, "Following")?.0 == "True").then_some(b)
        },
    )
    .await;
    let st = mirror.status.clone().unwrap();
    let f = st.following.clone().unwrap();
    assert_eq!(f.source, source.conninfo);
    assert_eq!(f.slot.as_deref(), Some("ramify_mirror"));
    assert_eq!(
        (f.streaming, f.lag_bytes, f.lag_seconds),
        (Some(true), Some(4096), Some(0.3))
    );
    assert!(f.last_received_at.is_some() && f.checked_at.is_some());
    assert_eq!(
        condition(&mirror, "Following").unwrap().1,
        "Streaming".to_string()
    );
    let conn = st.connection.clone().unwrap();
    assert_eq!((conn.database.as_str(), conn.user.as_str()), ("bank", ""));
    // Its Secret names no login; nothing anywhere shows the password.
    let secret = Api::<Secret>::namespaced(client.clone(), "prod")
        .get("mirror-postgres")
        .await
        .unwrap();
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["database", "host", "port", "uri"]);
    assert!(secret.annotations()["ramify.dev/logins"].starts_with("source"));
    assert!(!serde_json::to_string(&mirror).unwrap().contains(PASSWORD));
    assert!(!format!("{:?}", events_of(&client, "prod", "mirror").await).contains(PASSWORD));

    // Its compute: a hot standby of the source, reading the node's password file.
    let pods: Api<Pod> = Api::namespaced(client.clone(), STORAGE_NS);
    let pod_name = format!("compute-{uid}");
    let pod = pods.get(&pod_name).await.unwrap();
    let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"primary_conninfo=postgresql://replicator@prod-db.prod.svc:5432/bank?sslmode=prefer&passfile=/var/lib/ramify/timeline/run/source.pass&application_name=ramify".to_string())
            && args.contains(&"hot_standby=on".to_string())
            && args.contains(&"primary_slot_name=ramify_mirror".to_string()),
        "{args:?}"
    );
    assert!(!args.join(" ").contains(PASSWORD));
    // It always runs: a compute Pod that goes is started again.
    let first_uid = pods.get(&pod_name).await.unwrap().uid();
    pods.delete(&pod_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the follower's compute started again",
        Duration::from_secs(30),
        || async {
            let p = pods.get_opt(&pod_name).await.ok()??;
            (p.uid() != first_uid).then_some(())
        },
    )
    .await;
    // Nor does it suspend on request.
    let branches: Api<DatabaseBranch> = Api::namespaced(client.clone(), "prod");
    branches
        .patch(
            "mirror",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ramify.dev/suspend-request": "now"}}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        "the suspend request answered",
        Duration::from_secs(30),
        || async {
            let b = branches.get("mirror").await.ok()?;
            (!b.annotations().contains_key("ramify.dev/suspend-request")).then_some(())
        },
    )
    .await;
    assert!(pods.get_opt(&pod_name).await.unwrap().is_some());
    assert!(events_of(&client, "prod", "mirror")
        .await
        .iter()
        .any(|(t, r, _)| t == "Warning" && r == "SuspendRefused"));

    // Streaming stops: the condition carries the node's reason, with a Warning event.
    *storage.follow_state.lock().unwrap() = Some(FollowStatus {
        streaming: false,
        problem: Some(
            "replication slot \"ramify_mirror\" does not exist on the source: it was dropped on the source; recreate the branch"
                .into(),
        ),
        ..streaming()
    });
    let stopped = eventually("Following False", Duration::from_secs(40), || async {
        let b = branches.get("mirror").await.ok()?;
        (condition(&b, "Following")?.0 == "False").then_some(b)
    })
    .await;
    let (_, reason, message) = condition(&stopped, "Following").unwrap();
    assert_eq!(reason, "NotStreaming");
    assert!(message.contains("dropped on the source"), "{message}");
    assert_eq!(
        condition(&stopped, "Ready").unwrap().0,
        "True",
        "still readable and forkable"
    );
    assert_eq!(
        stopped.status.unwrap().following.unwrap().streaming,
        Some(false)
    );
    eventually("a NotStreaming event", Duration::from_secs(10), || async {
        events_of(&client, "prod", "mirror")
            .await
            .into_iter()
            .find(|(t, r, _)| t == "Warning" && r == "NotStreaming")
    })
    .await;
    *storage.follow_state.lock().unwrap() = None;

    // Its history is its source's: no reset, restore or checkpoint.
    for (name, source) in [
        ("reset-mirror", json!({"parent": true})),
        ("rewind-mirror", json!({"lsn": "0/4000000"})),
    ] {
        create::<BranchRestore>(&client, "prod", restore(name, "mirror", source))
            .await
            .unwrap();
        let st = restore_done(&client, "prod", name).await;
        assert_eq!(st.phase, Some(RestorePhase::Failed));
        let (reason, message) = succeeded(&st);
        assert_eq!(reason, "Following", "{message}");
        assert!(
            message.contains("its history is its source's") && message.contains("fork it"),
            "{message}"
        );
    }
    create::<BranchCheckpoint>(
        &client,
        "prod",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "BranchCheckpoint",
            "metadata": {"name": "cp-mirror"}, "spec": {"branch": "mirror"}
        }),
    )
    .await
    .unwrap();
    let cps: Api<BranchCheckpoint> = Api::namespaced(client.clone(), "prod");
    let cp = eventually(
        "the checkpoint refused",
        Duration::from_secs(30),
        || async {
            let st = cps.get("cp-mirror").await.ok()?.status?;
            (st.phase == Some(CheckpointPhase::Failed)).then_some(st)
        },
    )
    .await;
    assert_eq!(cp.conditions[0].reason, "Following");

    // A fork in another namespace (shared with it): an ordinary, writable branch in the
    // source's database, whose role takes over the source's objects.
    apply_branch(
        &client,
        "preview",
        json!({
            "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
            "metadata": {"name": "pr-1"},
            "spec": {"parent": {"name": "mirror", "namespace": "prod"}, "at": {"time": "2026-01-01T00:00:00Z"}}
        }),
    )
    .await
    .unwrap();
    let fork = wait_condition(&client, "preview", "pr-1", "Ready").await;
    let fork_id: TimelineId = fork.uid().unwrap().parse().unwrap();
    let creds = storage.credentials.lock().unwrap().clone();
    let (_, c) = creds.iter().find(|(id, _)| *id == fork_id).unwrap();
    assert_eq!(
        (
            c.user.as_str(),
            c.database.as_str(),
            c.adopt_objects,
            c.disable_other_logins
        ),
        ("app", "bank", true, true)
    );
    assert_eq!(
        storage.timelines.lock().unwrap()[&fork_id].parent,
        Some(uid)
    );
    assert!(fork.status.as_ref().unwrap().following.is_none());
    assert!(condition(&fork, "Following").is_none());
    let data = Api::<Secret>::namespaced(client.clone(), "preview")
        .get("pr-1-postgres")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["database"].0, b"bank");
    assert_eq!(data["password"].0.len(), 32);

    // Deleting the follower names the slot it leaves on the source.
    Api::<DatabaseBranch>::namespaced(client.clone(), "preview")
        .delete("pr-1", &DeleteParams::default())
        .await
        .unwrap();
    branches
        .delete("mirror", &DeleteParams::default())
        .await
        .unwrap();
    eventually("mirror deleted", Duration::from_secs(60), || async {
        branches
            .get_opt("mirror")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let deleted = events_of(&client, "prod", "mirror").await;
    assert!(
        deleted
            .iter()
            .any(|(_, r, n)| r == "Deleted"
                && n.contains("pg_drop_replication_slot('ramify_mirror')")),
        "{deleted:?}"
    );
    assert!(storage.deleted.lock().unwrap().contains(&uid));
}
