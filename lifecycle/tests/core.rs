//! The lifecycle against a real storage node (in process, on a temporary directory) and
//! a recording fake runtime: what it asks of the runtime, and that a failed create leaves
//! nothing behind.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ramify_api::{StorageClient, TimelineInfo};
use ramify_lifecycle::store::{BranchStore, JsonFileStore};
use ramify_lifecycle::{Branch, CreateBranch, Lifecycle, LifecycleError, Runtime};
use ramify_storage::metrics::Metrics;
use ramify_storage::node::{Node, NodeConfig};

#[derive(Default)]
struct FakeRuntime {
    calls: Mutex<Vec<String>>,
    fail_start: Mutex<bool>,
}

impl FakeRuntime {
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, b: &Branch, tl: &TimelineInfo) -> Result<SocketAddr, String> {
        self.log(format!("start {} {:?}", b.name, tl.state));
        if *self.fail_start.lock().unwrap() {
            return Err("postgres exited during start-up".into());
        }
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
    async fn stop(&self, b: &Branch) -> Result<(), String> {
        self.log(format!("stop {}", b.name));
        Ok(())
    }
    async fn is_running(&self, _: &Branch) -> bool {
        false
    }
    async fn admin_sql(&self, b: &Branch, statements: &[String]) -> Result<(), String> {
        for s in statements {
            // Passwords differ every time; keep the statement's shape.
            let shape = s.replace(&b.password, "<pw>");
            self.log(format!("sql {} {shape}", b.name));
        }
        Ok(())
    }
    async fn publish(&self, b: &Branch, port: u16) -> Result<u16, String> {
        self.log(format!("publish {} {port}", b.name));
        Ok(40000)
    }
    async fn unpublish(&self, b: &Branch) {
        self.log(format!("unpublish {}", b.name));
    }
}

struct Fixture {
    lifecycle: Lifecycle<FakeRuntime>,
    runtime: Arc<FakeRuntime>,
    storage: StorageClient,
    store: Arc<JsonFileStore>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(
        Node::open(
            NodeConfig {
                data_dir: dir.path().join("storage"),
                restore_window: Duration::from_secs(3600),
                snapshot_interval: Duration::ZERO,
                snapshot_wal_bytes: 0,
                waldump: None,
            },
            Arc::new(Metrics::default()),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, ramify_storage::api::router(node)).await });
    let storage = StorageClient::new(url);
    let runtime = Arc::new(FakeRuntime::default());
    let store = Arc::new(JsonFileStore::new(dir.path().join("branches.json")));
    let lifecycle = Lifecycle::new(storage.clone(), runtime.clone(), store.clone(), "127.0.0.1");
    Fixture {
        lifecycle,
        runtime,
        storage,
        store,
        _dir: dir,
    }
}

fn create(name: &str) -> CreateBranch {
    CreateBranch {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_root_is_published_started_and_given_its_role() {
    let f = fixture().await;
    let view = f.lifecycle.create(create("main")).await.unwrap();
    assert_eq!(view.port, 40000);
    assert_eq!(view.user, "app");
    assert_eq!(view.password.len(), 32);
    assert!(view.uri.starts_with("postgresql://app:"));
    assert!(view.uri.ends_with("@127.0.0.1:40000/app"));
    assert_eq!(
        f.runtime.calls(),
        vec![
            "publish main 0",
            "start main Empty",
            "sql main CREATE ROLE app LOGIN CREATEDB CREATEROLE PASSWORD '<pw>'",
            // CREATE DATABASE cannot share a transaction with anything: its own statement.
            "sql main CREATE DATABASE app OWNER app",
        ]
    );
    assert_eq!(
        f.store.get("main").unwrap().unwrap().password,
        view.password
    );
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let f = fixture().await;
    *f.runtime.fail_start.lock().unwrap() = true;
    let err = f.lifecycle.create(create("main")).await.unwrap_err();
    assert!(matches!(err, LifecycleError::Runtime(_)), "{err}");
    assert!(err.to_string().contains("postgres exited during start-up"));
    assert!(f.runtime.calls().contains(&"unpublish main".to_string()));
    assert!(f.store.all().unwrap().is_empty(), "no branch stored");
    assert!(
        f.storage.list_timelines().await.unwrap().is_empty(),
        "timeline deleted"
    );
}

#[tokio::test]
async fn bad_requests_get_the_right_error() {
    let f = fixture().await;
    f.lifecycle.create(create("main")).await.unwrap();
    let cases: Vec<(CreateBranch, u16, &str)> = vec![
        (create("Main_1"), 400, "invalid branch name"),
        (create("main"), 409, "already exists"),
        (
            CreateBranch {
                name: "dev".into(),
                parent: Some("nope".into()),
                ..Default::default()
            },
            404,
            "unknown parent",
        ),
        (
            CreateBranch {
                name: "dev".into(),
                at: Some(ramify_api::At::Latest),
                ..Default::default()
            },
            400,
            "--at needs --parent",
        ),
        (
            // main was never really initialised by the fake runtime: the storage node
            // refuses to fork an empty root, and that answer comes through as is.
            CreateBranch {
                name: "dev".into(),
                parent: Some("main".into()),
                ..Default::default()
            },
            409,
            "no data yet",
        ),
    ];
    for (req, status, needle) in cases {
        let name = req.name.clone();
        let e = f.lifecycle.create(req).await.unwrap_err();
        assert_eq!(e.status(), status, "{name}: {e}");
        assert!(e.to_string().contains(needle), "{name}: {e}");
    }
    let e = f.lifecycle.delete("ghost", false).await.unwrap_err();
    assert_eq!(e.status(), 404);
    assert!(e.to_string().contains("branches: main"), "{e}");
}

#[tokio::test]
async fn delete_stops_unpublishes_and_removes_storage() {
    let f = fixture().await;
    let view = f.lifecycle.create(create("main")).await.unwrap();
    f.lifecycle.delete("main", false).await.unwrap();
    let calls = f.runtime.calls();
    assert!(calls.ends_with(&["unpublish main".to_string(), "stop main".to_string()]));
    assert!(f.store.get("main").unwrap().is_none());
    assert!(f.storage.get_timeline(view.timeline_id).await.is_err());
}
