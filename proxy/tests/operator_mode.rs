//! The `ramify-proxy` binary against a fake operator backed by real Postgres: routes
//! come and go with the operator's list, clients wake branches through it, idle
//! branches are suspended through it, a rejected token and an operator outage reach
//! clients as clear errors while the routes keep serving, and SIGTERM closes everything.

mod fake_operator;
#[allow(dead_code)]
mod pg_control;
#[allow(dead_code)]
mod proxy_process;

use std::time::{Duration, Instant};

use fake_operator::{Call, FakeOperator};
use pg_control::PgControl;
use proxy_process::{ProxyProcess, SYNC_INTERVAL};
use ramify_proxy::Control;
use ramify_testkit::free_port;
use tokio::net::TcpStream;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, NoTls};

/// The proxy's token; distinctive so a log line containing it is found.
const TOKEN: &str = "tok-5f3a9c1e7b2d4860";

fn series(name: &str, branch: &str) -> String {
    format!("{name}{{branch=\"{branch}\"}}")
}

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=postgres connect_timeout=60"
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// [`connect`] that explains a failure with the proxy's and Postgres' logs.
async fn connect_ok(port: u16, proxy: &ProxyProcess, control: &PgControl) -> Client {
    match connect(port).await {
        Ok(client) => client,
        Err(err) => panic!(
            "connecting through the proxy failed: {err:?}\nproxy log:\n{}\nPostgres log:\n{}",
            proxy.log(),
            control.log_tail().await
        ),
    }
}

/// The `ErrorResponse` a client gets instead of a session.
async fn connect_refused_with(port: u16, proxy: &ProxyProcess) -> DbError {
    match connect(port).await {
        Ok(_) => panic!("connecting to port {port} must fail"),
        Err(err) => err
            .as_db_error()
            .cloned()
            .unwrap_or_else(|| panic!("no ErrorResponse but {err:?}; proxy log:\n{}", proxy.log())),
    }
}

async fn query_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn assert_port_closed(port: u16) {
    let err = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect_err("the port is still open");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Waits until nothing listens on `port` any more.
async fn wait_port_closed(port: u16, proxy: &ProxyProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        proxy.check_deadline(deadline, &format!("port {port} to close"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_port_closed(port).await;
}

/// SIGTERM; the proxy must exit cleanly and never have logged the token.
async fn terminate(mut proxy: ProxyProcess) -> String {
    let status = proxy.terminate().await;
    let log = proxy.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(!log.contains(TOKEN), "the token was logged:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_wakes_its_branch_through_the_operator_and_sigterm_closes_everything() {
    let control = PgControl::new().await;
    let op = FakeOperator::start(TOKEN, Some(control.clone())).await;
    let port = free_port();
    op.set_routes(&[("dev/alice", port, 0)]);
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    proxy
        .wait_metric(&series("ramify_proxy_route_port", "dev/alice"), |v| {
            v == Some(u64::from(port))
        })
        .await;
    assert!(!control.postgres_running(), "nothing woke the branch yet");

    let client = connect_ok(port, &proxy, &control).await;
    assert_eq!(query_i64(&client, "SELECT 6 * 7::int8").await, 42);
    assert!(control.postgres_running());
    assert_eq!(op.branch_calls(), [Call::Wake("dev/alice".into())]);
    assert!(!op.calls().contains(&Call::Unauthorized));
    for (name, value) in [
        ("ramify_proxy_wakes_total", 1),
        ("ramify_proxy_wake_failures_total", 0),
        ("ramify_proxy_active_connections", 1),
        ("ramify_proxy_connections_total", 1),
        ("ramify_proxy_suspend_after_seconds", 0),
    ] {
        assert_eq!(
            proxy.metric(&series(name, "dev/alice")).await,
            Some(value),
            "{name}"
        );
    }
    assert_eq!(proxy.metric("ramify_proxy_routes").await, Some(1));
    assert_eq!(proxy.metric("ramify_proxy_ready").await, Some(1));
    assert_eq!(proxy.get("/livez").await.map(|(s, _)| s), Some(200));

    let log = terminate(proxy).await;
    assert!(log.contains("closing every route"), "{log}");
    assert_port_closed(port).await;
    assert!(client.simple_query("SELECT 1").await.is_err());
    // The compute is the operator's business: the proxy leaves it running.
    assert!(control.postgres_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_follow_the_operator() {
    let control = PgControl::new().await;
    let op = FakeOperator::start(TOKEN, Some(control.clone())).await;
    let (alice_port, bob_port, bob_new_port) = (free_port(), free_port(), free_port());
    op.set_routes(&[("dev/alice", alice_port, 0), ("dev/bob", bob_port, 300)]);
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    proxy
        .wait_metric("ramify_proxy_routes", |v| v == Some(2))
        .await;
    let alice = connect_ok(alice_port, &proxy, &control).await;
    assert_eq!(query_i64(&alice, "SELECT 1::int8").await, 1);

    // alice is deleted, bob's idle time changes: alice's port and session close.
    op.set_routes(&[("dev/bob", bob_port, 600)]);
    proxy
        .wait_metric(
            &series("ramify_proxy_suspend_after_seconds", "dev/bob"),
            |v| v == Some(600),
        )
        .await;
    wait_port_closed(alice_port, &proxy).await;
    assert_eq!(proxy.metric("ramify_proxy_routes").await, Some(1));
    assert_eq!(
        proxy
            .metric(&series("ramify_proxy_wakes_total", "dev/alice"))
            .await,
        None
    );
    assert!(alice.simple_query("SELECT 1").await.is_err());

    // bob moves to another port.
    op.set_routes(&[("dev/bob", bob_new_port, 600)]);
    proxy
        .wait_metric(&series("ramify_proxy_route_port", "dev/bob"), |v| {
            v == Some(u64::from(bob_new_port))
        })
        .await;
    assert_port_closed(bob_port).await;
    let bob = connect_ok(bob_new_port, &proxy, &control).await;
    assert_eq!(query_i64(&bob, "SELECT 2::int8").await, 2);
    assert_eq!(
        op.branch_calls(),
        [Call::Wake("dev/alice".into()), Call::Wake("dev/bob".into())]
    );

    // An empty list closes everything.
    op.set_routes(&[]);
    wait_port_closed(bob_new_port, &proxy).await;
    assert_eq!(proxy.metric("ramify_proxy_routes").await, Some(0));
    terminate(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_reaches_the_client_as_an_error_response() {
    let op = FakeOperator::start(TOKEN, None).await;
    let port = free_port();
    op.set_routes(&[("dev/alice", port, 0)]);

    // A wrong token from the start: no routes, never ready, one clear warning.
    let mut wrong = ProxyProcess::spawn(&op.url(), "wrong-token-0d1e").await;
    wrong
        .wait_metric("ramify_proxy_route_sync_failures_total", |v| {
            v.is_some_and(|n| n >= 3)
        })
        .await;
    assert_eq!(wrong.get("/readyz").await.map(|(s, _)| s), Some(503));
    assert_eq!(wrong.metric("ramify_proxy_ready").await, Some(0));
    assert_eq!(wrong.metric("ramify_proxy_routes").await, Some(0));
    assert_port_closed(port).await;
    assert!(wrong.terminate().await.success());
    let log = wrong.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("the operator rejected the proxy's token"))
            .count(),
        1,
        "one warning per outage, not one per sync:\n{log}"
    );
    assert!(
        !log.contains("wrong-token-0d1e"),
        "the token was logged:\n{log}"
    );

    // The token is rotated under a running proxy: its routes stay, and clients are
    // told why they cannot get in.
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    proxy
        .wait_metric("ramify_proxy_routes", |v| v == Some(1))
        .await;
    op.set_token("rotated-token");
    let err = connect_refused_with(port, &proxy).await;
    assert_eq!(err.code(), &SqlState::CANNOT_CONNECT_NOW);
    assert_eq!(err.severity(), "FATAL");
    assert_eq!(
        err.message(),
        "branch \"dev/alice\" is unavailable: the operator rejected the proxy's token \
         (401 Unauthorized: missing or invalid bearer token); RAMIFY_PROXY_TOKEN must be \
         the `token` key of the operator's proxy token Secret"
    );
    let failures = proxy
        .metric("ramify_proxy_route_sync_failures_total")
        .await
        .unwrap();
    proxy
        .wait_metric("ramify_proxy_route_sync_failures_total", |v| {
            v.is_some_and(|n| n >= failures + 2)
        })
        .await;
    assert_eq!(proxy.get("/readyz").await.map(|(s, _)| s), Some(200));
    assert_eq!(proxy.metric("ramify_proxy_routes").await, Some(1));
    assert_eq!(
        proxy
            .metric(&series("ramify_proxy_wake_failures_total", "dev/alice"))
            .await,
        Some(1)
    );
    terminate(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_branch_is_suspended_through_the_operator() {
    let control = PgControl::new().await;
    let op = FakeOperator::start(TOKEN, Some(control.clone())).await;
    let port = free_port();
    // Idle time counts from AuthenticationOk: two seconds leave a debug build's SCRAM
    // exchange on a loaded machine time to finish after a wake.
    op.set_routes(&[("dev/alice", port, 2)]);
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    proxy
        .wait_metric(&series("ramify_proxy_route_port", "dev/alice"), |v| {
            v.is_some()
        })
        .await;

    let client = connect_ok(port, &proxy, &control).await;
    client
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    drop(client);
    // A new route assumes its compute may run and may suspend it before any client
    // came; what matters is the suspend after this client's session.
    let suspended_after_wake = |calls: Vec<Call>| {
        calls
            .iter()
            .skip_while(|c| !matches!(c, Call::Wake(_)))
            .any(|c| *c == Call::Suspend("dev/alice".into()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !suspended_after_wake(op.branch_calls()) {
        proxy.check_deadline(deadline, "the operator to be asked to suspend dev/alice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
        .wait_metric(&series("ramify_proxy_suspended", "dev/alice"), |v| {
            v == Some(1)
        })
        .await;
    assert!(
        !control.postgres_running(),
        "Postgres still runs after the suspend"
    );

    // The next client wakes it again and finds its data.
    let client = connect_ok(port, &proxy, &control).await;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM t").await, 100);
    assert_eq!(
        op.branch_calls().last(),
        Some(&Call::Wake("dev/alice".into()))
    );
    assert_eq!(
        proxy
            .metric(&series("ramify_proxy_suspended", "dev/alice"))
            .await,
        Some(0)
    );
    terminate(proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compute_started_on_a_restored_timeline_is_suspended_when_idle() {
    let control = PgControl::new().await;
    let op = FakeOperator::start(TOKEN, Some(control.clone())).await;
    let port = free_port();
    op.set_routes_on_timelines(&[("dev/alice", port, 1, "t1")]);
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    // A new route's compute may run: it is suspended once, then left alone.
    proxy
        .wait_metric(&series("ramify_proxy_suspended", "dev/alice"), |v| {
            v == Some(1)
        })
        .await;

    // A restore: the operator moves the branch onto a new timeline and starts its
    // compute there itself (to set the password), without any client.
    control.wake("dev/alice").await.unwrap();
    assert!(control.postgres_running());
    op.set_routes_on_timelines(&[("dev/alice", port, 1, "t2")]);
    proxy
        .wait_metric(&series("ramify_proxy_suspends_total", "dev/alice"), |v| {
            v == Some(2)
        })
        .await;
    assert!(
        !control.postgres_running(),
        "the restored timeline's compute still runs"
    );
    assert_eq!(
        proxy
            .metric(&series("ramify_proxy_suspended", "dev/alice"))
            .await,
        Some(1)
    );
    assert!(
        !op.branch_calls().contains(&Call::Wake("dev/alice".into())),
        "no client came, so the proxy woke nothing"
    );
    let log = terminate(proxy).await;
    assert!(
        log.contains("replaced or started the branch's compute"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_keep_working_while_the_operator_is_down() {
    let control = PgControl::new().await;
    let op = FakeOperator::start(TOKEN, Some(control.clone())).await;
    let (alice_port, bob_port) = (free_port(), free_port());
    op.set_routes(&[("dev/alice", alice_port, 0), ("dev/bob", bob_port, 0)]);
    let proxy = ProxyProcess::spawn(&op.url(), TOKEN).await;
    proxy.wait_ready().await;
    proxy
        .wait_metric("ramify_proxy_routes", |v| v == Some(2))
        .await;
    let first = connect_ok(alice_port, &proxy, &control).await;
    assert_eq!(query_i64(&first, "SELECT 1::int8").await, 1);

    op.stop().await;
    proxy
        .wait_metric("ramify_proxy_operator_reachable", |v| v == Some(0))
        .await;
    let failures = proxy
        .metric("ramify_proxy_route_sync_failures_total")
        .await
        .unwrap();
    proxy
        .wait_metric("ramify_proxy_route_sync_failures_total", |v| {
            v.is_some_and(|n| n >= failures + 3)
        })
        .await;

    // The open session goes on; a new client of the running compute gets in.
    assert_eq!(query_i64(&first, "SELECT 2::int8").await, 2);
    let second = connect_ok(alice_port, &proxy, &control).await;
    assert_eq!(query_i64(&second, "SELECT 3::int8").await, 3);
    assert_eq!(
        proxy.metric("ramify_proxy_wake_fallbacks_total").await,
        Some(1)
    );
    // A branch this proxy never woke cannot be: the client is told why.
    let err = connect_refused_with(bob_port, &proxy).await;
    assert_eq!(err.code(), &SqlState::CANNOT_CONNECT_NOW);
    let expected = format!(
        "branch \"dev/bob\" is unavailable: cannot reach the operator at {}: ",
        op.url()
    );
    assert!(err.message().starts_with(&expected), "{}", err.message());
    assert_eq!(proxy.get("/readyz").await.map(|(s, _)| s), Some(200));
    assert_eq!(proxy.metric("ramify_proxy_routes").await, Some(2));
    let log = proxy.log();
    assert_eq!(
        log.matches("operator unavailable: keeping the last known routes")
            .count(),
        1,
        "one warning per outage, not one per sync:\n{log}"
    );

    // The operator is back: its list applies again.
    op.set_routes(&[("dev/bob", bob_port, 0)]);
    op.restart().await;
    wait_port_closed(alice_port, &proxy).await;
    proxy
        .wait_metric("ramify_proxy_operator_reachable", |v| v == Some(1))
        .await;
    assert!(proxy.log().contains("operator reachable again"));
    assert!(
        op.calls().len() > 1,
        "the proxy asks for routes every {SYNC_INTERVAL:?}"
    );
    terminate(proxy).await;
}
