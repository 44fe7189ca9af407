//! Attacks by clients that can reach a branch's port but hold no password: they must not
//! keep the branch awake, exhaust the proxy, or hold a connection open without starting.
//! Every test runs real Postgres behind the proxy.

#[allow(dead_code)]
mod pg_control;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_control::{Event, PgControl};
use ramify_proxy::{Control, Proxy, ProxyOptions, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use wire::{startup_message, try_read_message as read_message};

const BRANCH: &str = "tenant-a";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ramify_proxy=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn add_route(proxy: &Proxy, branch: &str, suspend_after: Option<Duration>) -> SocketAddr {
    proxy
        .add_route(Route {
            branch: branch.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after,
        })
        .await
        .unwrap()
}

async fn connect(addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=postgres connect_timeout=60",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn connect_to(addr: SocketAddr, control: &PgControl) -> Client {
    match connect(addr).await {
        Ok(client) => client,
        Err(err) => panic!(
            "connecting through the proxy failed: {err:?}\nPostgres log:\n{}",
            control.log_tail().await
        ),
    }
}

async fn query_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of an ErrorResponse body by their one-letter code.
fn error_field(body: &[u8], field: u8) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&field))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// A client that sends its StartupMessage, receives the password challenge (SASL) from
/// Postgres, and never answers it: what anyone without the password can do.
async fn unauthenticated(addr: SocketAddr) -> TcpStream {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&startup_message()).await.unwrap();
    let (kind, body) = read_message(&mut raw).await.unwrap();
    assert_eq!(kind, b'R', "authentication request expected");
    assert_eq!(&body[..4], &10u32.to_be_bytes(), "SASL challenge expected");
    raw
}

/// Whether the proxy closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An ErrorResponse before the close is fine; keep reading to the EOF.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_authenticate_do_not_keep_the_branch_awake() {
    init_tracing();
    let control = PgControl::new().await;
    let proxy = Proxy::new(control.clone(), ProxyOptions::default()).unwrap();
    let addr = add_route(&proxy, BRANCH, Some(Duration::from_secs(1))).await;

    // The owner works, then leaves: the branch is idle from now on.
    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT 1::int8").await, 1);
    drop(client);

    // An attacker holds a session open at the password challenge, and keeps opening
    // new ones every 200 ms (each asks the proxy to wake the branch).
    let mut held = unauthenticated(addr).await;
    let attacker = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            if let Ok(mut raw) = TcpStream::connect(addr).await {
                let _ = raw.write_all(&startup_message()).await;
                open.push(raw);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // suspendAfter is 1 s; the wake the attacker triggered may restart the idle period
    // once. Postgres' own authentication_timeout (60 s) must not be what ends it.
    eventually(
        Duration::from_secs(10),
        "the suspend despite unauthenticated clients",
        || control.count(Event::SuspendEnd) >= 1,
    )
    .await;
    assert!(
        closed_within(&mut held, Duration::from_secs(5)).await,
        "the unauthenticated session outlived the suspend"
    );
    attacker.abort();
    let stats = proxy.route_stats(BRANCH).unwrap();
    assert_eq!(stats.authenticated_connections, 0, "{stats:?}");

    // The owner still gets in, woken again.
    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT 2::int8").await, 2);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_client_keeps_the_branch_awake() {
    init_tracing();
    let control = PgControl::new().await;
    let proxy = Proxy::new(control.clone(), ProxyOptions::default()).unwrap();
    // Longer than a debug build's SCRAM exchange: a session still authenticating does
    // not hold the route, so a shorter period could suspend under it.
    let addr = add_route(&proxy, BRANCH, Some(Duration::from_secs(2))).await;
    let client = connect_to(addr, &control).await;
    assert_eq!(
        proxy.route_stats(BRANCH).unwrap().authenticated_connections,
        1
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(control.count(Event::SuspendBegin), 0);
    assert_eq!(query_i64(&client, "SELECT 3::int8").await, 3);
    drop(client);
    eventually(Duration::from_secs(10), "the suspend", || {
        control.count(Event::SuspendEnd) == 1
    })
    .await;
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_beyond_the_per_branch_cap_is_refused_with_53300_without_waking() {
    init_tracing();
    let control = PgControl::new().await;
    let opts = ProxyOptions {
        max_connections_per_branch: 4,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(control.clone(), opts).unwrap();
    let addr = add_route(&proxy, BRANCH, None).await;

    let owner = connect_to(addr, &control).await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(unauthenticated(addr).await);
    }
    let wakes = control.wakes();
    assert_eq!(wakes, 4, "one wake per admitted session");

    // Twenty more: each is told why, at once, in an ErrorResponse.
    for _ in 0..20 {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&startup_message()).await.unwrap();
        let (kind, body) = read_message(&mut raw).await.unwrap();
        assert_eq!(kind, b'E', "ErrorResponse expected");
        assert_eq!(error_field(&body, b'C'), "53300");
        let message = error_field(&body, b'M');
        assert!(
            message.contains("4 concurrent connections per branch") && message.contains(BRANCH),
            "{message}"
        );
    }
    // A driver understands the refusal too.
    let Err(err) = connect(addr).await else {
        panic!("a session over the cap was admitted");
    };
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");

    assert_eq!(control.wakes(), wakes, "a refused client must not wake");
    assert_eq!(query_i64(&owner, "SELECT 4::int8").await, 4);
    let stats = proxy.route_stats(BRANCH).unwrap();
    assert_eq!(stats.refused_connections, 21, "{stats:?}");
    assert_eq!(stats.active_connections, 4, "{stats:?}");

    // Freed slots are usable again.
    drop(pending);
    eventually(Duration::from_secs(5), "the slots to be freed", || {
        proxy.route_stats(BRANCH).unwrap().active_connections == 1
    })
    .await;
    let second = connect_to(addr, &control).await;
    assert_eq!(query_i64(&second, "SELECT 5::int8").await, 5);
    proxy.remove_route(BRANCH).await;
}

/// A control plane whose wakes never finish: sessions stay pending as long as wanted.
struct HangingControl;

#[async_trait::async_trait]
impl Control for HangingControl {
    async fn wake(&self, _branch: &str) -> Result<SocketAddr, String> {
        std::future::pending().await
    }

    async fn suspend(&self, _branch: &str) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_cap_spans_every_branch() {
    init_tracing();
    let opts = ProxyOptions {
        max_connections: 3,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(Arc::new(HangingControl), opts).unwrap();
    let a = add_route(&proxy, "a", None).await;
    let b = add_route(&proxy, "b", None).await;
    let mut open = Vec::new();
    for addr in [a, a, b] {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&startup_message()).await.unwrap();
        open.push(raw);
    }
    eventually(Duration::from_secs(5), "three waiting sessions", || {
        let n = |b| proxy.route_stats(b).unwrap().active_connections;
        n("a") + n("b") == 3
    })
    .await;
    let mut raw = TcpStream::connect(b).await.unwrap();
    raw.write_all(&startup_message()).await.unwrap();
    let (kind, body) = read_message(&mut raw).await.unwrap();
    assert_eq!(kind, b'E');
    assert_eq!(error_field(&body, b'C'), "53300");
    assert!(
        error_field(&body, b'M').contains("3 concurrent connections in total"),
        "{}",
        error_field(&body, b'M')
    );
    drop(open);
    proxy.remove_route("a").await;
    proxy.remove_route("b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_finish_its_startup_is_dropped() {
    init_tracing();
    let control = PgControl::new().await;
    let opts = ProxyOptions {
        startup_timeout: Duration::from_secs(1),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(control.clone(), opts).unwrap();
    let addr = add_route(&proxy, BRANCH, None).await;

    // Silent after connecting.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Trickling its StartupMessage a byte every 300 ms: each read is quick, the whole
    // startup is not.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for byte in startup_message() {
            if slow.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
        (closed, started.elapsed())
    });
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (closed, _) = trickle.await.unwrap();
    assert!(closed, "the trickling client was not dropped");
    assert_eq!(control.wakes(), 0, "no startup finished, nothing to wake");
    assert_eq!(proxy.route_stats(BRANCH).unwrap().active_connections, 0);
    proxy.remove_route(BRANCH).await;
}
