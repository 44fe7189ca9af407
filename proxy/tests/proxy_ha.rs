//! The `ramify-proxy` binary as one of several proxy replicas: every route sync it
//! reports to the operator, under its own name, the branches it has clients on; it
//! names itself in wakes and suspends; and a suspend the operator refuses because
//! another proxy serves the branch (409 `in_use`) is neither a failure nor a suspend:
//! the compute keeps running and the proxy asks again only after another idle period.
//! (The operator's side of the decision is tested against its real HTTP handlers in
//! operator/tests/proxy_activity.rs.)

#[allow(dead_code)]
mod pg_control;
#[allow(dead_code)]
mod proxy_process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pg_control::PgControl;
use proxy_process::ProxyProcess;
use ramify_proxy::Control;
use ramify_testkit::free_port;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

const TOKEN: &str = "tok-8c21d0a94f6e3b57";
const IDLE: Duration = Duration::from_secs(2);

/// What the stand-in operator saw.
#[derive(Default)]
struct Seen {
    /// (proxy, branches) of each activity report, in order.
    reports: Vec<(String, Vec<String>)>,
    /// `?proxy=` of each wake.
    wakes: Vec<Option<String>>,
    /// (when, `?proxy=`, refused) of each suspend.
    suspends: Vec<(Instant, Option<String>, bool)>,
}

struct Op {
    port: u16,
    compute: Arc<PgControl>,
    seen: Mutex<Seen>,
}

/// An operator whose decision is scripted: the first suspend after a wake is refused
/// with 409 `in_use` (another proxy has clients), later ones stop the compute.
async fn start_operator(port: u16, compute: Arc<PgControl>) -> (Arc<Op>, String) {
    let op = Arc::new(Op {
        port,
        compute,
        seen: Mutex::new(Seen::default()),
    });
    async fn routes(State(op): State<Arc<Op>>) -> Json<Value> {
        Json(json!([{"branch": "dev/a", "port": op.port, "suspendAfterSecs": IDLE.as_secs()}]))
    }
    async fn activity(
        State(op): State<Arc<Op>>,
        Path(proxy): Path<String>,
        Json(body): Json<Value>,
    ) -> StatusCode {
        let branches = body["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_owned())
            .collect();
        op.seen.lock().unwrap().reports.push((proxy, branches));
        StatusCode::NO_CONTENT
    }
    async fn wake(State(op): State<Arc<Op>>, Query(q): Query<HashMap<String, String>>) -> Response {
        op.seen.lock().unwrap().wakes.push(q.get("proxy").cloned());
        match op.compute.wake("dev/a").await {
            Ok(addr) => Json(json!({"address": addr.to_string()})).into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
        }
    }
    async fn suspend(
        State(op): State<Arc<Op>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        let refuse = {
            let mut seen = op.seen.lock().unwrap();
            let refuse = !seen.wakes.is_empty() && !seen.suspends.iter().any(|s| s.2);
            seen.suspends
                .push((Instant::now(), q.get("proxy").cloned(), refuse));
            refuse
        };
        if refuse {
            return (
                StatusCode::CONFLICT,
                Json(json!({
                    "code": "in_use",
                    "message": "branch dev/a is in use through proxy ramify-proxy-other (reported 1s ago): not suspended"
                })),
            )
                .into_response();
        }
        match op.compute.suspend("dev/a").await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
    let app = Router::new()
        .route("/v1/routes", get(routes))
        .route("/v1/proxies/{proxy}/activity", put(activity))
        .route("/v1/branches/{ns}/{name}/wake", post(wake))
        .route("/v1/branches/{ns}/{name}/suspend", post(suspend))
        .with_state(Arc::clone(&op));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (op, url)
}

async fn wait_for(what: &str, proxy: &ProxyProcess, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        proxy.check_deadline(deadline, what);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn series(name: &str) -> String {
    format!("{name}{{branch=\"dev/a\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_reports_its_clients_and_a_refused_suspend_restarts_its_idle_clock() {
    let compute = PgControl::new().await;
    let port = free_port();
    let (op, url) = start_operator(port, Arc::clone(&compute)).await;
    let proxy = ProxyProcess::spawn(&url, TOKEN).await;
    proxy.wait_ready().await;

    let conn = format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=postgres connect_timeout=60"
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    let session = tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();

    // While the client is connected, the proxy's reports name the branch, under one
    // name that its wake carried too.
    wait_for("a report naming dev/a", &proxy, || {
        op.seen
            .lock()
            .unwrap()
            .reports
            .iter()
            .any(|r| r.1 == ["dev/a"])
    })
    .await;
    let name = {
        let seen = op.seen.lock().unwrap();
        let (name, _) = seen
            .reports
            .iter()
            .find(|r| r.1 == ["dev/a"])
            .unwrap()
            .clone();
        assert!(name.starts_with("ramify-proxy-"), "{name}");
        assert!(
            seen.reports.iter().all(|r| r.0 == name),
            "one name per proxy"
        );
        assert_eq!(seen.wakes, [Some(name.clone())]);
        name
    };

    // The client leaves: the next report is empty, and after the idle time the proxy
    // asks to suspend, naming itself. The operator refuses (another proxy serves it).
    drop(client);
    session.await.unwrap().unwrap();
    let left = Instant::now();
    wait_for("an empty report after the client left", &proxy, || {
        op.seen.lock().unwrap().reports.last().unwrap().1.is_empty()
    })
    .await;
    wait_for("a refused suspend", &proxy, || {
        op.seen.lock().unwrap().suspends.iter().any(|s| s.2)
    })
    .await;
    proxy
        .wait_metric(&series("ramify_proxy_suspend_refusals_total"), |v| {
            v == Some(1)
        })
        .await;
    let refused_at = {
        let seen = op.seen.lock().unwrap();
        let s = seen.suspends.iter().find(|s| s.2).unwrap();
        assert_eq!(s.1.as_deref(), Some(name.as_str()));
        assert!(s.0.duration_since(left) >= IDLE - Duration::from_millis(200));
        s.0
    };
    // Not a failure, not suspended: the compute still runs.
    assert_eq!(
        proxy
            .metric(&series("ramify_proxy_suspend_failures_total"))
            .await,
        Some(0)
    );
    assert_eq!(
        proxy.metric(&series("ramify_proxy_suspended")).await,
        Some(0)
    );
    assert!(compute.postgres_running());

    // It asks again only after a whole new idle period; that suspend goes through.
    proxy
        .wait_metric(&series("ramify_proxy_suspended"), |v| v == Some(1))
        .await;
    let after: Vec<_> = op
        .seen
        .lock()
        .unwrap()
        .suspends
        .iter()
        .filter(|s| s.0 > refused_at)
        .cloned()
        .collect();
    assert_eq!(after.len(), 1, "one suspend after the refusal");
    assert!(
        after[0].0.duration_since(refused_at) >= IDLE - Duration::from_millis(200),
        "asked again {:?} after the refusal, before a new idle period of {IDLE:?}",
        after[0].0.duration_since(refused_at)
    );
    assert!(!after[0].2);
    assert!(!compute.postgres_running());
    assert_eq!(
        proxy
            .metric("ramify_proxy_activity_report_failures_total")
            .await,
        Some(0)
    );
}

async fn connect(
    port: u16,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=postgres connect_timeout=30"
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// A proxy Pod being replaced: on SIGTERM its readiness fails at once, but clients the
/// Service still sends it during --shutdown-delay are served (kube-proxies learn of the
/// change only seconds later); then its listeners close while open sessions go on,
/// their branch still reported in use; once the last one ends the proxy says so and
/// exits at once, well before --drain-timeout.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_serves_late_clients_then_drains_open_sessions() {
    let compute = PgControl::new().await;
    let port = free_port();
    let (op, url) = start_operator(port, Arc::clone(&compute)).await;
    let mut proxy = ProxyProcess::spawn_with_args(
        &url,
        TOKEN,
        &["--shutdown-delay", "2s", "--drain-timeout", "30s"],
    )
    .await;
    proxy.wait_ready().await;
    proxy
        .wait_metric(&series("ramify_proxy_route_port"), |v| {
            v == Some(u64::from(port))
        })
        .await;
    let (early, _) = connect(port).await.unwrap();
    early.simple_query("SELECT 1").await.unwrap();

    let signalled = Instant::now();
    proxy.sigterm();
    let deadline = signalled + Duration::from_secs(10);
    while proxy.get("/readyz").await.map(|(s, _)| s) != Some(503) {
        proxy.check_deadline(deadline, "/readyz 503 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "readiness must fail at once"
    );
    // A client the Service still routes here during the delay gets a session.
    let (late, _) = connect(port).await.unwrap_or_else(|e| {
        panic!(
            "a client during --shutdown-delay was refused: {e:?}\n{}",
            proxy.log()
        )
    });
    late.simple_query("SELECT 2").await.unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the late client came too late to prove anything"
    );

    // After the delay the port is closed; the open sessions still work.
    tokio::time::sleep_until((signalled + Duration::from_millis(2500)).into()).await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(
        refused
            .expect_err("the proxy still accepts after --shutdown-delay")
            .kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    early.simple_query("SELECT 3").await.unwrap();
    late.simple_query("SELECT 4").await.unwrap();
    // While draining, the proxy keeps reporting the branch in use.
    let reports_before = op.seen.lock().unwrap().reports.len();
    wait_for("a report during the drain", &proxy, || {
        let seen = op.seen.lock().unwrap();
        seen.reports.len() > reports_before + 2 && seen.reports.last().unwrap().1 == ["dev/a"]
    })
    .await;
    assert!(
        !proxy.exited(),
        "exited with sessions open:\n{}",
        proxy.log()
    );

    // The last session ends: an empty report, and the proxy exits cleanly at once.
    drop(early);
    drop(late);
    let ended = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit {status}; log:\n{}", proxy.log());
    assert!(
        ended.elapsed() < Duration::from_secs(3),
        "took {:?} after the last session",
        ended.elapsed()
    );
    assert_eq!(
        op.seen.lock().unwrap().reports.last().unwrap().1,
        Vec::<String>::new()
    );
    let log = proxy.log();
    assert!(log.contains("no longer accepting clients"), "{log}");
    assert!(!log.contains("still open after --drain-timeout"), "{log}");
    // The compute is the operator's business: the proxy leaves it running.
    assert!(compute.postgres_running());
}

/// A session that outlasts --drain-timeout is closed then, and the proxy exits; a
/// second SIGTERM cuts the drain short.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_ends_at_its_timeout_or_at_a_second_signal() {
    let compute = PgControl::new().await;
    let port = free_port();
    let (_op, url) = start_operator(port, Arc::clone(&compute)).await;
    for second_signal in [false, true] {
        let mut proxy = ProxyProcess::spawn_with_args(
            &url,
            TOKEN,
            &[
                "--shutdown-delay",
                "0s",
                "--drain-timeout",
                if second_signal { "60s" } else { "2s" },
            ],
        )
        .await;
        proxy.wait_ready().await;
        let (held, _) = connect(port).await.unwrap();
        held.simple_query("SELECT 1").await.unwrap();
        let signalled = Instant::now();
        proxy.sigterm();
        if second_signal {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!proxy.exited());
            proxy.sigterm();
        }
        let status = proxy.wait_exit(Duration::from_secs(10)).await;
        let took = signalled.elapsed();
        let log = proxy.log();
        assert!(status.success(), "exit {status}; log:\n{log}");
        if second_signal {
            assert!(took < Duration::from_secs(3), "took {took:?}");
            assert!(
                log.contains("second signal: closing every session now"),
                "{log}"
            );
        } else {
            assert!(
                took >= Duration::from_secs(2),
                "exited after {took:?}, before the drain timeout"
            );
            assert!(log.contains("still open after --drain-timeout"), "{log}");
        }
        assert!(
            held.simple_query("SELECT 2").await.is_err(),
            "the session outlived the proxy"
        );
    }
}
