//! The lifecycle against a real storage node (in process, on a temporary directory) and
//! a recording fake runtime: what it asks of the runtime, and that a failed create leaves
//! nothing behind.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ramify_api::{StorageClient, TimelineInfo};
use ramify_lifecycle::store::{BranchStore, JsonFileStore};
use ramify_lifecycle::{
    Branch, Checkpoint, CreateBranch, CreateCheckpoint, Expiry, HistoryPoint, Lifecycle,
    LifecycleError, RestoreBranch, Runtime, UpdateBranch,
};
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
            // The password itself must never be in SQL: only its SCRAM verifier, which
            // differs every time (a fresh salt). Keep the statement's shape.
            assert!(!s.contains(&b.password), "plaintext password in {s}");
            let shape = match s.find("SCRAM-SHA-256$") {
                Some(i) => format!("{}<verifier>'", &s[..i]),
                None if s.starts_with("DO $ramify$") => "<revoke escapes>".to_owned(),
                None => s.clone(),
            };
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
                initdb: None,
            },
            Arc::new(Metrics::default()),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = ramify_api::ApiToken::generate().unwrap();
    let api = ramify_storage::api::router(node, token.clone(), "the test's");
    tokio::spawn(async move { axum::serve(listener, api).await });
    let storage = StorageClient::new(url).with_token(token);
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
            format!("sql main {}", ramify_compute::roles::QUIET_SESSION).as_str(),
            "sql main CREATE ROLE app LOGIN CREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION \
             NOBYPASSRLS PASSWORD '<verifier>'",
            "sql main GRANT pg_monitor TO app",
            "sql main <revoke escapes>",
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
        f.store.pending().unwrap().is_empty(),
        "nothing left pending"
    );
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
                at: Some(ramify_api::At::Latest.into()),
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

/// Stores a branch `name` under `parent` on a timeline of its own, as a fork would (the
/// fake runtime's roots have no data, so the storage node cannot really fork them).
async fn put_child(f: &Fixture, name: &str, parent: &str) -> Branch {
    let tl = f
        .storage
        .create_timeline(&ramify_api::CreateTimeline::default())
        .await
        .unwrap()
        .value;
    let mut b = f.store.get(parent).unwrap().unwrap();
    b.name = name.into();
    b.parent = Some(parent.into());
    b.timeline = tl.id;
    b.port = 40001;
    b.expires_at = None;
    b.protected = false;
    f.store.put(&b).unwrap();
    b
}

fn restore_at(at: Option<HistoryPoint>, from: Option<&str>) -> RestoreBranch {
    RestoreBranch {
        at,
        from: from.map(Into::into),
        backup: true,
    }
}

#[tokio::test]
async fn workflow_bad_input_is_refused_and_changes_nothing() {
    let f = fixture().await;
    f.lifecycle.create(create("main")).await.unwrap();
    let dev = put_child(&f, "dev", "main").await;
    let mut with_cp = dev.clone();
    with_cp.checkpoints.push(Checkpoint {
        name: "step-1".into(),
        lsn: ramify_api::Lsn(0x1000),
        time: chrono::Utc::now(),
        timeline: dev.timeline,
        snapshot: None,
    });
    f.store.put(&with_cp).unwrap();
    let before_state = f.store.all().unwrap();
    let before_timelines = f.storage.list_timelines().await.unwrap().len();
    let calls_before = f.runtime.calls().len();
    let l = &f.lifecycle;

    let e = l.reset("main").await.unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(e.to_string().contains("is a root"), "{e}");
    let e = l.reset("ghost").await.unwrap_err();
    assert_eq!(e.status(), 404, "{e}");
    let e = l.restore("main", restore_at(None, None)).await.unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(e.to_string().contains("needs --at"), "{e}");
    let e = l
        .restore("dev", restore_at(None, Some("nope")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 404, "{e}");
    assert!(e.to_string().contains("unknown branch \"nope\""), "{e}");
    let e = l
        .restore(
            "dev",
            restore_at(Some(HistoryPoint::Checkpoint("step-9".into())), None),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 404, "{e}");
    assert!(e.to_string().contains("checkpoints: step-1"), "{e}");
    let e = l
        .create_checkpoint(
            "dev",
            CreateCheckpoint {
                name: Some("step-1".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    assert!(e.to_string().contains("already has a checkpoint"), "{e}");
    let e = l
        .create_checkpoint(
            "dev",
            CreateCheckpoint {
                name: Some("Step 2".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    let e = l
        .update(
            "dev",
            UpdateBranch {
                expiry: Some(Expiry::At(
                    chrono::Utc::now() - chrono::Duration::seconds(5),
                )),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(e.to_string().contains("not in the future"), "{e}");
    // The storage node refuses the fork (main has no data): dev stays where it was, and
    // its compute was never touched.
    let e = l.reset("dev").await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");

    assert_eq!(f.store.all().unwrap(), before_state);
    assert_eq!(
        f.storage.list_timelines().await.unwrap().len(),
        before_timelines
    );
    let new_calls = &f.runtime.calls()[calls_before..];
    assert!(
        !new_calls
            .iter()
            .any(|c| c.starts_with("stop") || c.starts_with("unpublish")),
        "{new_calls:?}"
    );
}

#[tokio::test]
async fn a_protected_branch_refuses_delete_reset_restore_and_expiry() {
    let f = fixture().await;
    f.lifecycle
        .create(CreateBranch {
            name: "main".into(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    put_child(&f, "dev", "main").await;
    let l = &f.lifecycle;
    let view = l
        .update(
            "dev",
            UpdateBranch {
                protected: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(view.protected);
    let refused = |e: LifecycleError, what: &str| {
        assert_eq!(e.status(), 409, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("protected: true"), "{msg}");
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains("ramify branch unprotect dev"), "{msg}");
    };
    refused(l.delete("dev", false).await.unwrap_err(), "deleted");
    refused(l.reset("dev").await.unwrap_err(), "reset");
    refused(
        l.restore("dev", restore_at(Some(ramify_api::At::Latest.into()), None))
            .await
            .unwrap_err(),
        "restored",
    );
    refused(
        l.update(
            "dev",
            UpdateBranch {
                expiry: Some(Expiry::At(chrono::Utc::now() + chrono::Duration::hours(1))),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
        "expiry",
    );
    // A force delete of the parent would take dev with it: refused as a whole.
    let e = l.delete("main", true).await.unwrap_err();
    assert!(
        e.to_string().contains("descendant \"dev\" is protected"),
        "{e}"
    );
    assert!(f.store.get("main").unwrap().is_some());
    assert!(f.store.get("dev").unwrap().is_some());
    // Protecting clears an expiry: a protected branch never expires.
    let main = l
        .update(
            "main",
            UpdateBranch {
                protected: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(main.expires_at, None);
    l.update(
        "dev",
        UpdateBranch {
            protected: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    l.delete("dev", false).await.unwrap();
    assert!(f.store.get("dev").unwrap().is_none());
}

#[tokio::test]
async fn expired_branches_are_deleted_unless_protected_or_parents() {
    let f = fixture().await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
    let l = &f.lifecycle;
    for name in ["gone", "parent", "kept"] {
        l.create(CreateBranch {
            name: name.into(),
            expires_at: Some(soon),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    put_child(&f, "child", "parent").await;
    l.update(
        "kept",
        UpdateBranch {
            protected: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(l.reap_expired(chrono::Utc::now()).await.unwrap().is_empty());
    let later = soon + chrono::Duration::seconds(1);
    assert_eq!(l.reap_expired(later).await.unwrap(), ["gone"]);
    let names: Vec<String> = f.store.all().unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["parent", "kept", "child"]);
    // Once its child is gone, the expired parent goes too.
    l.delete("child", false).await.unwrap();
    assert_eq!(l.reap_expired(later).await.unwrap(), ["parent"]);
}

async fn new_timeline(f: &Fixture) -> ramify_api::TimelineId {
    f.storage
        .create_timeline(&ramify_api::CreateTimeline::default())
        .await
        .unwrap()
        .value
        .id
}

/// A crash between making a timeline and storing the branch that points at it (a
/// create, a fork, the new timeline of a reset or restore), or between a reset's switch
/// and deleting the timeline it left, leaves a *pending* timeline no branch has. The next
/// start deletes those — and only those: a pending timeline a branch has (its own, one it
/// left in a restore, one its checkpoints live on) stays, and a timeline that was never
/// pending is never touched, whoever made it.
#[tokio::test]
async fn recovery_deletes_exactly_the_pending_timelines_no_branch_needs() {
    let f = fixture().await;
    f.lifecycle.create(create("main")).await.unwrap();
    assert!(
        f.store.pending().unwrap().is_empty(),
        "a finished create leaves nothing pending"
    );
    let mut dev = put_child(&f, "dev", "main").await;
    let (former, checkpointed) = (new_timeline(&f).await, new_timeline(&f).await);
    dev.former_timelines.push(ramify_lifecycle::FormerTimeline {
        timeline: former,
        left_at: chrono::Utc::now(),
        successor_fork_lsn: None,
    });
    dev.checkpoints.push(Checkpoint {
        name: "before-migration".into(),
        lsn: ramify_api::Lsn(0x1000),
        time: chrono::Utc::now(),
        timeline: checkpointed,
        snapshot: None,
    });
    f.store.put(&dev).unwrap();
    // Made through the storage API by someone else: never pending, never deleted.
    let foreign = new_timeline(&f).await;
    // A create cut short after its timeline was made.
    let orphan = uuid::Uuid::new_v4();
    f.store.set_pending(orphan, true).unwrap();
    f.storage
        .create_timeline(&ramify_api::CreateTimeline {
            id: Some(orphan),
            ..Default::default()
        })
        .await
        .unwrap();
    // One cut short before the node made it.
    let never_made = uuid::Uuid::new_v4();
    f.store.set_pending(never_made, true).unwrap();
    // Operations that finished all but clearing the mark.
    for id in [dev.timeline, former, checkpointed] {
        f.store.set_pending(id, true).unwrap();
    }

    let r = f.lifecycle.recover().await.unwrap();
    assert_eq!(r.deleted_timelines, [orphan]);
    assert_eq!(r.kept_timelines, [dev.timeline, former, checkpointed]);
    assert!(r.failed.is_empty(), "{r:?}");
    assert!(f.store.pending().unwrap().is_empty());
    let mut left: Vec<_> = f
        .storage
        .list_timelines()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    left.sort();
    let main = f.store.get("main").unwrap().unwrap().timeline;
    let mut want = vec![main, dev.timeline, former, checkpointed, foreign];
    want.sort();
    assert_eq!(left, want);
    // Nothing more to do the second time.
    assert_eq!(f.lifecycle.recover().await.unwrap(), Default::default());
}
