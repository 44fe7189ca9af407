//! Clients talking to real Postgres through the proxy: wake on connect, scale to zero,
//! cancel, errors a driver understands, route removal.

mod pg_control;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_control::{Event, PgControl};
use ramify_compute::PgBin;
use ramify_proxy::{Control, Proxy, ProxyOptions, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use wire::{read_message, startup_message};

const BRANCH: &str = "feature-x";

/// A libpq client tool installed next to `postgres`.
fn pg_tool(tool: fn(&PgBin) -> Option<PathBuf>, name: &str) -> PathBuf {
    let bin = PgBin::find(None).expect("Postgres installed (apt-get install postgresql-15)");
    tool(&bin).unwrap_or_else(|| panic!("{name} is not installed in {}", bin.dir().display()))
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ramify_proxy=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn proxy_for(
    control: Arc<dyn Control>,
    suspend_after: Option<Duration>,
    opts: ProxyOptions,
) -> (Proxy, SocketAddr) {
    init_tracing();
    let proxy = Proxy::new(control, opts).unwrap();
    let addr = proxy
        .add_route(Route {
            branch: BRANCH.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after,
        })
        .await
        .unwrap();
    (proxy, addr)
}

fn conn_str(addr: SocketAddr) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=postgres connect_timeout=60",
        addr.port()
    )
}

async fn connect(addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&conn_str(addr), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// [`connect`] that explains a failure with the Postgres log.
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

/// Polls `cond` every 20 ms for up to `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn psql(addr: SocketAddr, sslmode: &str, sql: &str) -> std::process::Output {
    tokio::process::Command::new(pg_tool(PgBin::psql, "psql"))
        .arg(format!("{} sslmode={sslmode}", conn_str(addr)))
        .args(["-X", "-A", "-t", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_wakes_a_suspended_branch_and_prefer_clients_get_plaintext() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(control.clone(), None, ProxyOptions::default()).await;
    assert!(!control.postgres_running());

    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT 6 * 7::int8").await, 42);
    assert_eq!(control.count(Event::Start), 1);
    assert_eq!(control.wakes(), 1);
    let stats = proxy.route_stats(BRANCH).unwrap();
    assert_eq!((stats.active_connections, stats.wakes), (1, 1));

    // SSLRequest and GSSENCRequest are refused with 'N'; the startup then proceeds.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    for code in [80_877_103u32, 80_877_104] {
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&code.to_be_bytes());
        raw.write_all(&request).await.unwrap();
        let mut answer = [0u8; 1];
        raw.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N", "answer to request code {code}");
    }
    raw.write_all(&startup_message()).await.unwrap();
    let (kind, body) = read_message(&mut raw).await;
    assert_eq!(kind, b'R', "authentication request expected");
    assert_eq!(
        &body[..4],
        &10u32.to_be_bytes(),
        "SASL (scram-sha-256) expected"
    );
    drop(raw);

    // libpq: prefer falls back to plaintext, require is told the server has no SSL.
    let out = psql(addr, "prefer", "SELECT current_user").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    let out = psql(addr, "require", "SELECT 1").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server does not support SSL"),
        "{out:?}"
    );
    // The compute already ran: no second start.
    assert_eq!(control.count(Event::Start), 1);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_clients_arriving_together_share_one_wake() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(control.clone(), None, ProxyOptions::default()).await;
    // Hold the wake until every client is waiting on it.
    control.set_wake_gate(false);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let client = connect(addr).await?;
                let row = client.query_one("SELECT $1::int4 + 1", &[&i]).await?;
                Ok::<i32, tokio_postgres::Error>(row.get(0))
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "20 waiting clients", || {
        proxy.route_stats(BRANCH).unwrap().active_connections == 20
    })
    .await;
    assert_eq!(control.wakes(), 1, "one wake in flight for all 20");
    control.set_wake_gate(true);
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(client.await.unwrap().unwrap(), i as i32 + 1);
    }
    assert_eq!(control.wakes(), 1);
    assert_eq!(control.count(Event::Start), 1);
    let stats = proxy.route_stats(BRANCH).unwrap();
    assert_eq!((stats.wakes, stats.connections), (1, 20));
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_branch_is_suspended_and_the_next_client_finds_its_data() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(
        control.clone(),
        Some(Duration::from_secs(1)),
        ProxyOptions::default(),
    )
    .await;
    let client = connect_to(addr, &control).await;
    client
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    // Busy: a connected client keeps the compute up however long it idles.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(control.count(Event::SuspendBegin), 0);
    drop(client);

    eventually(Duration::from_secs(20), "the suspend", || {
        control.count(Event::SuspendEnd) == 1
    })
    .await;
    assert!(
        !control.postgres_running(),
        "Postgres still runs after suspend"
    );
    let stats = proxy.route_stats(BRANCH).unwrap();
    assert!(stats.suspended && stats.suspends == 1, "{stats:?}");
    // Suspended stays suspended: no wake, no second suspend, without clients.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(control.count(Event::SuspendBegin), 1);
    assert_eq!(control.wakes(), 1);

    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM t").await, 1000);
    assert_eq!(control.count(Event::Start), 2);

    // A crashed compute is restarted by the next wake; committed data survives.
    proxy.set_suspend_after(BRANCH, None);
    drop(client);
    control.kill9().await;
    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM t").await, 1000);
    assert_eq!(control.count(Event::Start), 3);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_arriving_during_a_suspend_waits_and_wakes_the_compute_again() {
    let control = PgControl::new().await;
    // Idleness counts from AuthenticationOk: a woken client has suspend_after to finish
    // its SCRAM exchange, which a debug build on a loaded CI machine may need a second for.
    let (proxy, addr) = proxy_for(
        control.clone(),
        Some(Duration::from_millis(1500)),
        ProxyOptions::default(),
    )
    .await;
    control.set_suspend_delay(Duration::from_millis(800));
    let client = connect_to(addr, &control).await;
    client
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .unwrap();
    drop(client);
    eventually(Duration::from_secs(20), "the suspend to begin", || {
        control.count(Event::SuspendBegin) == 1
    })
    .await;
    // The suspend is in progress (still sleeping before the stop).
    let client = connect_to(addr, &control).await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(query_i64(&client, "SELECT count(*) FROM t").await, 1);
    assert_eq!(
        control.events(),
        [
            Event::Wake,
            Event::Start,
            Event::SuspendBegin,
            Event::SuspendEnd,
            Event::Wake,
            Event::Start
        ],
        "the new client must wait for the suspend, then wake the compute"
    );
    proxy.remove_route(BRANCH).await;
}

/// A control plane that cannot wake anything.
struct BrokenControl {
    wake: Result<SocketAddr, String>,
    delay: Duration,
}

#[async_trait::async_trait]
impl Control for BrokenControl {
    async fn wake(&self, _branch: &str) -> Result<SocketAddr, String> {
        tokio::time::sleep(self.delay).await;
        self.wake.clone()
    }

    async fn suspend(&self, _branch: &str) -> Result<(), String> {
        Ok(())
    }
}

async fn connect_error(
    control: BrokenControl,
    opts: ProxyOptions,
) -> tokio_postgres::error::DbError {
    let (proxy, addr) = proxy_for(Arc::new(control), None, opts).await;
    let Err(err) = connect(addr).await else {
        panic!("connect must fail");
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err}"))
        .clone();
    proxy.remove_route(BRANCH).await;
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn wake_failures_reach_the_client_as_error_responses() {
    let err = connect_error(
        BrokenControl {
            wake: Err("storage node 10.0.0.7 unreachable".to_owned()),
            delay: Duration::ZERO,
        },
        ProxyOptions::default(),
    )
    .await;
    assert_eq!(err.code(), &SqlState::CANNOT_CONNECT_NOW);
    assert_eq!(err.severity(), "FATAL");
    assert_eq!(
        err.message(),
        "branch \"feature-x\" is unavailable: storage node 10.0.0.7 unreachable"
    );

    let opts = ProxyOptions {
        wake_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let started = Instant::now();
    let err = connect_error(
        BrokenControl {
            wake: Err("never reached".to_owned()),
            delay: Duration::from_secs(30),
        },
        opts,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.code(), &SqlState::CANNOT_CONNECT_NOW);
    assert!(
        err.message().starts_with(
            "branch \"feature-x\" is unavailable: its compute did not become ready within"
        ),
        "{}",
        err.message()
    );

    // Woken, but nothing listens where the control plane says.
    let nobody = SocketAddr::from(([127, 0, 0, 1], ramify_testkit::free_port()));
    let err = connect_error(
        BrokenControl {
            wake: Ok(nobody),
            delay: Duration::ZERO,
        },
        ProxyOptions::default(),
    )
    .await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE);
    assert!(
        err.message().starts_with(&format!(
            "branch \"feature-x\" is unavailable: could not connect to its compute at {nobody}"
        )),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_request_reaches_the_compute_running_the_query() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(control.clone(), None, ProxyOptions::default()).await;
    let client = Arc::new(connect_to(addr, &control).await);
    let other = connect_to(addr, &control).await;

    let started = Instant::now();
    let sleeper = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while query_i64(
        &other,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "the sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A wrong key is ignored.
    let mut bogus = TcpStream::connect(addr).await.unwrap();
    let mut request = 16u32.to_be_bytes().to_vec();
    request.extend_from_slice(&80_877_102u32.to_be_bytes());
    request.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    bogus.write_all(&request).await.unwrap();
    assert_eq!(
        bogus.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "closed without reply"
    );
    assert!(!sleeper.is_finished());

    // The token holds the proxy's address: the client connected through it.
    client.cancel_token().cancel_query(NoTls).await.unwrap();
    let err = sleeper
        .await
        .unwrap()
        .expect_err("the sleep must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // The other session is untouched.
    assert_eq!(query_i64(&other, "SELECT 1::int8").await, 1);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_through_the_proxy() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(control.clone(), None, ProxyOptions::default()).await;
    let pgbench = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(pg_tool(PgBin::pgbench, "pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", "secret")
        .stdin(Stdio::null());
        cmd
    };
    let init = pgbench(&["-i", "-s", "1", "-q"]).output().await.unwrap();
    assert!(init.status.success(), "{init:?}");
    let run = pgbench(&["-S", "-T", "3", "-c", "4", "-j", "2"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{run:?}");
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
    assert!(processed > 0, "{stdout}");
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{stdout}"
    );
    assert_eq!(
        control
            .query_i64("SELECT count(*) FROM pgbench_accounts")
            .await,
        100_000
    );
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_route_closes_the_listener_and_open_connections() {
    let control = PgControl::new().await;
    let (proxy, addr) = proxy_for(control.clone(), None, ProxyOptions::default()).await;
    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT 1::int8").await, 1);

    proxy.remove_route(BRANCH).await;
    assert!(proxy.route_stats(BRANCH).is_none());
    let err = TcpStream::connect(addr)
        .await
        .expect_err("listener still open");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(client.simple_query("SELECT 1").await.is_err());
    assert!(client.is_closed());
    // The compute is the control plane's business, not the proxy's.
    assert!(control.postgres_running());

    // The branch can be routed again (same port even).
    let again = proxy
        .add_route(Route {
            branch: BRANCH.to_owned(),
            listen: addr,
            suspend_after: None,
        })
        .await
        .unwrap();
    assert_eq!(again, addr);
    let dup = proxy
        .add_route(Route {
            branch: BRANCH.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after: None,
        })
        .await;
    assert!(
        matches!(dup, Err(ramify_proxy::ProxyError::RouteExists { .. })),
        "{dup:?}"
    );
    let client = connect_to(addr, &control).await;
    assert_eq!(query_i64(&client, "SELECT 2::int8").await, 2);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_proxy_closes_its_connections_on_one_or_several_io_threads() {
    let control = PgControl::new().await;
    for io_threads in [1, 3] {
        let opts = ProxyOptions {
            io_threads,
            ..ProxyOptions::default()
        };
        let (proxy, addr) = proxy_for(control.clone(), None, opts).await;
        let mut clients = Vec::new();
        for i in 0..6i64 {
            let client = connect_to(addr, &control).await;
            assert_eq!(query_i64(&client, &format!("SELECT {i}::int8")).await, i);
            clients.push(client);
        }
        // Six sessions open at once, each still answering.
        for (i, client) in clients.iter().enumerate() {
            let row = client
                .query_one("SELECT $1::int8 * 2", &[&(i as i64)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), i as i64 * 2);
        }

        drop(proxy);
        for client in &clients {
            let closed =
                tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
                    .await
                    .expect("a session of a dropped proxy still hangs");
            assert!(
                closed.is_err(),
                "io_threads {io_threads}: a session outlived its proxy"
            );
        }
        eventually(Duration::from_secs(10), "the listener to close", || {
            std::net::TcpStream::connect(addr).is_err()
        })
        .await;
    }
}
