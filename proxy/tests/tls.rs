//! TLS on branch endpoints, with real Postgres behind the proxy and real clients in
//! front: psql (libpq/OpenSSL) with sslmode=require and verify-full, plaintext refused
//! when TLS is required, and cancel requests over TLS (tokio-postgres + rustls) and in
//! plaintext (psql's Ctrl-C, which libpq before 17 always sends unencrypted).

#[allow(dead_code)]
mod pg_control;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_control::PgControl;
use ramify_compute::PgBin;
use ramify_diff::connect::{trusting_pem, RustlsConnect};
use ramify_proxy::{CertificateAuthority, Proxy, ProxyOptions, ProxyTls, Route, ServerNames};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const BRANCH: &str = "feature-x";

fn psql_path() -> PathBuf {
    let bin = PgBin::find(None).expect("Postgres installed (apt-get install postgresql-15)");
    bin.psql().expect("psql installed next to postgres")
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

/// A proxy offering TLS with a fresh CA, whose certificate is written to `dir/ca.crt`.
async fn tls_proxy(
    control: Arc<PgControl>,
    names: ServerNames,
    required: bool,
    dir: &Path,
) -> (Proxy, SocketAddr, Arc<CertificateAuthority>) {
    init_tracing();
    let ca = Arc::new(CertificateAuthority::generate("Ramify test CA").unwrap());
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    let proxy = Proxy::with_tls(
        control,
        ProxyOptions::default(),
        ProxyTls {
            ca: Arc::clone(&ca),
            names,
            required,
        },
    )
    .unwrap();
    let addr = proxy
        .add_route(Route {
            branch: BRANCH.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after: None,
        })
        .await
        .unwrap();
    (proxy, addr, ca)
}

/// psql with `extra` connection parameters (host included), running `sql`.
async fn psql(addr: SocketAddr, extra: &str, sql: &str) -> std::process::Output {
    tokio::process::Command::new(psql_path())
        .arg(format!(
            "port={} user=app password=secret dbname=postgres connect_timeout=60 {extra}",
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn libpq_connects_with_require_and_verify_full_and_rejects_a_foreign_ca() {
    let control = PgControl::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr, _ca) =
        tls_proxy(control.clone(), ServerNames::Loopback, false, dir.path()).await;
    let root = dir.path().join("ca.crt");

    // \conninfo reports the client's side of the connection: TLS to the proxy.
    for extra in [
        "host=127.0.0.1 sslmode=require".to_owned(),
        format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            root.display()
        ),
        format!(
            "host=127.0.0.1 sslmode=verify-full sslrootcert={}",
            root.display()
        ),
        "host=127.0.0.1 sslmode=prefer".to_owned(),
    ] {
        let out = psql(addr, &extra, "\\conninfo").await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{extra}: {stderr}");
        assert!(
            stdout.contains("SSL connection (protocol: TLSv1.3"),
            "{extra}: {stdout}"
        );
        let out = psql(addr, &extra, "SELECT current_user").await;
        assert_eq!(text(&out).0.trim(), "app", "{extra}: {}", text(&out).1);
    }

    // A CA the client trusts that did not sign the proxy's certificate: refused.
    let other = CertificateAuthority::generate("someone else").unwrap();
    let other_root = dir.path().join("other.crt");
    std::fs::write(&other_root, other.cert_pem()).unwrap();
    let out = psql(
        addr,
        &format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            other_root.display()
        ),
        "SELECT 1",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("certificate verify failed"),
        "{}",
        text(&out).1
    );
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_branch_certificate_is_valid_for_its_service_names_only() {
    let control = PgControl::new().await;
    let dir = tempfile::tempdir().unwrap();
    let names = ServerNames::Cluster {
        domain: "cluster.local".to_owned(),
    };
    // The branch key of a cluster route is "namespace/name"; the leaf names its Service.
    let ca = Arc::new(CertificateAuthority::generate("Ramify test CA").unwrap());
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    init_tracing();
    let proxy = Proxy::with_tls(
        control.clone(),
        ProxyOptions::default(),
        ProxyTls {
            ca,
            names,
            required: true,
        },
    )
    .unwrap();
    let addr = proxy
        .add_route(Route {
            branch: "team-a/dev".to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after: None,
        })
        .await
        .unwrap();
    let root = dir.path().join("ca.crt");
    // verify-full against a name of the branch's Service: accepted. The host name
    // resolves through hostaddr, as a cluster's DNS would resolve it.
    let good = format!(
        "host=dev-postgres.team-a.svc.cluster.local hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
        root.display()
    );
    let out = psql(addr, &good, "SELECT current_user").await;
    assert_eq!(text(&out).0.trim(), "app", "{}", text(&out).1);
    // Another branch's Service name (or localhost): the certificate does not match.
    for host in [
        "prod-postgres.team-a.svc.cluster.local",
        "dev-postgres.team-b",
        "localhost",
    ] {
        let bad = format!(
            "host={host} hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
            root.display()
        );
        let out = psql(addr, &bad, "SELECT 1").await;
        assert!(!out.status.success(), "{host} accepted");
        assert!(
            text(&out).1.contains("does not match host name"),
            "{host}: {}",
            text(&out).1
        );
    }
    proxy.remove_route("team-a/dev").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_sessions_are_refused_before_waking_when_tls_is_required() {
    let control = PgControl::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr, _ca) =
        tls_proxy(control.clone(), ServerNames::Loopback, true, dir.path()).await;

    let out = psql(addr, "host=127.0.0.1 sslmode=disable", "SELECT 1").await;
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(stderr.contains("requires TLS"), "{stderr}");
    assert!(stderr.contains("sslmode=verify-full"), "{stderr}");

    // A driver sees SQLSTATE 28000, as from a pg_hba.conf that allows only hostssl.
    let err = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=postgres sslmode=disable",
            addr.port()
        ),
        NoTls,
    )
    .await
    .err()
    .expect("plaintext must be refused");
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
    // Nothing was woken for the refused clients.
    assert_eq!(control.wakes(), 0);
    assert!(!control.postgres_running());

    let out = psql(
        addr,
        "host=127.0.0.1 sslmode=require",
        "SELECT current_user",
    )
    .await;
    assert_eq!(text(&out).0.trim(), "app", "{}", text(&out).1);
    assert_eq!(control.wakes(), 1);
    proxy.remove_route(BRANCH).await;
}

async fn query_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until `query` runs. The exact text: a session whose earlier sleep was just
/// cancelled can still show as active with its query for a moment (Postgres reports it
/// idle only after the error went out), and a cancel sent then reaches nothing.
async fn wait_for_sleep(other: &Client, query: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while query_i64(
        other,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query = '{query}' AND state = 'active'"
        ),
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "the sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_requests_reach_the_compute_over_tls_and_in_plaintext() {
    let control = PgControl::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr, ca) =
        tls_proxy(control.clone(), ServerNames::Loopback, true, dir.path()).await;
    let tls = RustlsConnect::new(trusting_pem(ca.cert_pem().as_bytes()).expect("the proxy's CA"));
    let conn_str = format!(
        "host=localhost port={} user=app password=secret dbname=postgres sslmode=require",
        addr.port()
    );
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(&conn_str, tls.clone())
            .await
            .expect("TLS session through the proxy");
        tokio::spawn(connection);
        client
    };
    let client = Arc::new(connect().await);
    let other = connect().await;

    // 1. tokio-postgres: SSLRequest, handshake, CancelRequest inside TLS.
    let started = Instant::now();
    let sleeper = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await })
    };
    wait_for_sleep(&other, "SELECT pg_sleep(30)").await;
    client
        .cancel_token()
        .cancel_query(tls.clone())
        .await
        .unwrap();
    let err = sleeper
        .await
        .unwrap()
        .expect_err("the sleep must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // 2. psql with sslmode=require: its Ctrl-C handler (PQcancel) sends the cancel in
    // plaintext, which a TLS-required route still accepts.
    let mut psql = tokio::process::Command::new(psql_path())
        .arg(format!(
            "host=127.0.0.1 port={} user=app password=secret dbname=postgres sslmode=require",
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT pg_sleep(30) AS psql"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_sleep(&other, "SELECT pg_sleep(30) AS psql").await;
    let pid = nix::unistd::Pid::from_raw(psql.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), async {
        let mut stderr = String::new();
        psql.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        (psql.wait().await.unwrap(), stderr)
    })
    .await
    .expect("psql ends once its query is cancelled");
    assert!(!out.0.success());
    assert!(
        out.1.contains("canceling statement due to user request"),
        "{}",
        out.1
    );

    // The other session is untouched.
    assert_eq!(query_i64(&other, "SELECT 1::int8").await, 1);
    proxy.remove_route(BRANCH).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_pipelined_after_the_ssl_request_never_reach_postgres_as_plaintext() {
    let control = PgControl::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, addr, _ca) =
        tls_proxy(control.clone(), ServerNames::Loopback, false, dir.path()).await;
    // An attacker in the middle appends a plaintext StartupMessage to the client's
    // SSLRequest (CVE-2021-23214 style): it must be taken as a broken handshake.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut packet = 8u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_103u32.to_be_bytes());
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app\0database\0postgres\0\0");
    packet.extend(((body.len() + 4) as u32).to_be_bytes());
    packet.extend(body);
    raw.write_all(&packet).await.unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(
        !rest.starts_with(b"R"),
        "the proxy answered a plaintext startup after 'S': {rest:?}"
    );
    assert_eq!(
        control.wakes(),
        0,
        "nothing may be woken by the injected startup"
    );
    proxy.remove_route(BRANCH).await;
}
