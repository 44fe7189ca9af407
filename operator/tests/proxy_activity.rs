//! Idleness decided across proxy replicas, through the operator's real HTTP handlers
//! (router, token check, branch lock, the leader's activity record) against a real
//! kube-apiserver + etcd: a proxy's suspend is refused (409, naming the other proxy)
//! while another proxy reports clients on the branch or has just woken it; a dead
//! proxy's claim expires with the lease; a new leader refuses every suspend for its
//! first lease.
//!
//! The branches here do not exist: a suspend that passes the cross-proxy check goes on
//! to read the branch and answers 404 `not_found`, which is how the test sees that the
//! check let it through.
//!
//! Needs `etcd` and `kube-apiserver` (`make cluster-build`); without them the test says
//! so and passes, unless `RAMIFY_REQUIRE_K8S=1` (as `make test` sets when it built them).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramify_operator::config::Config;
use ramify_operator::http::{router, AppState};
use ramify_operator::metrics::Metrics;
use ramify_testkit::kube_env::{
    create_namespace, eventually, install_crds, skip_without_api_server,
};
use ramify_testkit::ApiServer;
use serde_json::{json, Value};

const NS: &str = "ramify-system";
const TOKEN: &str = "tttttttttttttttttttttttttttttttttttttttt";
const LEASE: Duration = Duration::from_secs(5);

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn suspend(&self, branch: &str, proxy: Option<&str>) -> (u16, Value) {
        let q = proxy.map(|p| format!("?proxy={p}")).unwrap_or_default();
        self.call(
            self.http
                .post(format!("{}/v1/branches/{branch}/suspend{q}", self.base))
                .bearer_auth(TOKEN),
        )
        .await
    }

    async fn wake(&self, branch: &str, proxy: &str) -> (u16, Value) {
        self.call(
            self.http
                .post(format!(
                    "{}/v1/branches/{branch}/wake?proxy={proxy}",
                    self.base
                ))
                .bearer_auth(TOKEN),
        )
        .await
    }

    async fn report(&self, proxy: &str, branches: &[&str]) -> (u16, Value) {
        self.call(
            self.http
                .put(format!("{}/v1/proxies/{proxy}/activity", self.base))
                .bearer_auth(TOKEN)
                .json(&json!({ "branches": branches })),
        )
        .await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_in_use_through_another_proxy_is_not_suspended() {
    if skip_without_api_server("a_branch_in_use_through_another_proxy_is_not_suspended") {
        return;
    }
    let server = ApiServer::start().unwrap();
    let client = server.client().await;
    install_crds(&client).await;
    create_namespace(&client, NS, &[]).await;
    create_namespace(&client, "dev", &[]).await;

    let mut config = Config::for_namespace(NS);
    config.proxy_activity_lease = LEASE;
    let (ctx_tx, ctx_rx) = tokio::sync::oneshot::channel();
    let leading_since = Instant::now();
    tokio::spawn(async move {
        ramify_operator::run_controller(
            client,
            config,
            Arc::new(Metrics::default()),
            TOKEN.into(),
            |ctx| {
                let _ = ctx_tx.send(ctx);
            },
        )
        .await;
    });
    let ctx = ctx_rx.await.unwrap();
    let state = AppState {
        ctx: Arc::new(tokio::sync::OnceCell::new_with(Some(ctx))),
        leader: Arc::new(AtomicBool::new(true)),
        metrics: Arc::new(Metrics::default()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });
    let api = Api {
        base,
        http: reqwest::Client::new(),
    };

    // A leader that just started has heard no proxy: it suspends nothing for one lease.
    let (status, body) = api.suspend("dev/x", Some("proxy-a")).await;
    assert!(
        leading_since.elapsed() < LEASE,
        "setup took longer than the lease; the first check proves nothing"
    );
    assert_eq!((status, code(&body)), (409, "in_use_unknown"), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not heard from every proxy"),
        "{body}"
    );
    eventually(
        "the new leader's first lease is over",
        LEASE * 2,
        || async {
            let (status, _) = api.suspend("dev/x", Some("proxy-a")).await;
            (status == 404).then_some(())
        },
    )
    .await;

    // proxy-b has clients on dev/x: proxy-a's suspend is refused, naming proxy-b.
    assert_eq!(api.report("proxy-b", &["dev/x"]).await.0, 204);
    assert_eq!(api.report("proxy-a", &[]).await.0, 204);
    let (status, body) = api.suspend("dev/x", Some("proxy-a")).await;
    assert_eq!((status, code(&body)), (409, "in_use"), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("proxy proxy-b"),
        "{body}"
    );
    // A caller that does not say who it is is refused too; proxy-b itself is not (its
    // own clients are its own business); other branches are not held.
    assert_eq!(api.suspend("dev/x", None).await.0, 409);
    assert_eq!(api.suspend("dev/x", Some("proxy-b")).await.0, 404);
    assert_eq!(api.suspend("dev/y", Some("proxy-a")).await.0, 404);

    // proxy-b's clients leave: its next report frees the branch at once.
    assert_eq!(api.report("proxy-b", &[]).await.0, 204);
    assert_eq!(api.suspend("dev/x", Some("proxy-a")).await.0, 404);

    // A wake through proxy-c (between two of its reports) holds the branch for proxy-c.
    let (status, body) = api.wake("dev/z", "proxy-c").await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = api.suspend("dev/z", Some("proxy-a")).await;
    assert_eq!((status, code(&body)), (409, "in_use"), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("proxy-c"),
        "{body}"
    );

    // proxy-b reports clients on dev/x and then dies: after one lease its claim is gone.
    assert_eq!(api.report("proxy-b", &["dev/x"]).await.0, 204);
    let died = Instant::now();
    assert_eq!(api.suspend("dev/x", Some("proxy-a")).await.0, 409);
    eventually("a dead proxy's report expires", LEASE * 2, || async {
        let (status, _) = api.suspend("dev/x", Some("proxy-a")).await;
        (status == 404).then_some(())
    })
    .await;
    assert!(
        died.elapsed() >= LEASE - Duration::from_millis(100),
        "the claim must hold for the lease, it expired after {:?}",
        died.elapsed()
    );

    // Refusals are counted by reason.
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ramify_operator_suspends_refused_total{reason=\"unknown\"}"),
        "{metrics}"
    );
    let in_use: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ramify_operator_suspends_refused_total{reason=\"in_use\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(in_use >= 4, "{metrics}");

    // Bad reports are refused, saying what is valid; the token is required.
    let (status, body) = api.report("Proxy_A", &[]).await;
    assert_eq!((status, code(&body)), (400, "invalid_proxy"), "{body}");
    let (status, body) = api
        .call(
            api.http
                .put(format!("{}/v1/proxies/proxy-a/activity", api.base))
                .bearer_auth(TOKEN)
                .json(&json!({ "branch": "dev/x" })),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_report"), "{body}");
    let (status, _) = api
        .call(
            api.http
                .put(format!("{}/v1/proxies/proxy-a/activity", api.base))
                .json(&json!({ "branches": [] })),
        )
        .await;
    assert_eq!(status, 401);
    drop(server);
}
