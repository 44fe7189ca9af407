//! A control plane may answer a wake before the compute's Postgres accepts connections
//! (the operator answers once the container runs, not when the kubelet's probe says
//! Ready). The proxy retries a refused connection and Postgres's own 57P03 until the
//! wake deadline; the client sees only the compute that finally accepts — or, past the
//! deadline, Postgres's own answer.

mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramify_proxy::protocol::{error_response, SQLSTATE_CANNOT_CONNECT_NOW};
use ramify_proxy::{Control, Proxy, ProxyOptions, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire::{read_message, startup_message};

/// A control plane that answers every wake at once with the same address, whatever
/// listens there (or not yet).
struct AtAddress(SocketAddr);

#[async_trait::async_trait]
impl Control for AtAddress {
    async fn wake(&self, _branch: &str) -> Result<SocketAddr, String> {
        Ok(self.0)
    }
    async fn suspend(&self, _branch: &str) -> Result<(), String> {
        Ok(())
    }
}

/// "Postgres" on an address where it starts listening only after `listen_after`, and
/// then refuses the first `refusals` clients with 57P03.
struct StartingCompute {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl StartingCompute {
    async fn start(listen_after: Duration, refusals: usize) -> Self {
        // A free port, released, taken again once "Postgres" starts.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&connections);
        tokio::spawn(async move {
            tokio::time::sleep(listen_after).await;
            let listener = TcpListener::bind(addr).await.unwrap();
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let n = seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut len = [0u8; 4];
                    conn.read_exact(&mut len).await.unwrap();
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    conn.read_exact(&mut body).await.unwrap();
                    if n < refusals {
                        let msg = error_response(
                            SQLSTATE_CANNOT_CONNECT_NOW,
                            "the database system is starting up",
                        );
                        conn.write_all(&msg).await.unwrap();
                        return;
                    }
                    // AuthenticationOk, BackendKeyData, ReadyForQuery(idle).
                    let mut reply = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
                    reply.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 42, 0, 0, 0, 7]);
                    reply.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                    conn.write_all(&reply).await.unwrap();
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest).await;
                });
            }
        });
        Self { addr, connections }
    }
}

async fn proxy_for(control: Arc<dyn Control>, opts: ProxyOptions) -> (Proxy, SocketAddr) {
    let proxy = Proxy::new(control, opts).unwrap();
    let addr = proxy
        .add_route(Route {
            branch: "b".to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            suspend_after: None,
        })
        .await
        .unwrap();
    (proxy, addr)
}

/// What a client that sends its startup packet gets: an ErrorResponse, as text.
async fn refusal(addr: SocketAddr) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&startup_message()).await.unwrap();
    let (kind, body) = read_message(&mut client).await;
    assert_eq!(kind, b'E', "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).into_owned()
}

fn wake_timeout(secs: u64) -> ProxyOptions {
    ProxyOptions {
        wake_timeout: Duration::from_secs(secs),
        ..ProxyOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_still_starting_is_retried_until_it_accepts() {
    let compute = StartingCompute::start(Duration::from_millis(300), 3).await;
    let (proxy, addr) = proxy_for(Arc::new(AtAddress(compute.addr)), wake_timeout(10)).await;
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&startup_message()).await.unwrap();
    // Only the compute that accepted reaches the client: no refusal, no 57P03.
    let kinds = [
        read_message(&mut client).await.0,
        read_message(&mut client).await.0,
        read_message(&mut client).await.0,
    ];
    assert_eq!(kinds, [b'R', b'K', b'Z']);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        compute.connections.load(Ordering::SeqCst),
        4,
        "three 57P03, then accepted"
    );
    let stats = proxy.route_stats("b").unwrap();
    assert_eq!((stats.wakes, stats.authenticated_connections), (1, 1));
    drop(client);
    proxy.remove_route("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_that_never_accepts_answers_the_client_at_the_wake_deadline() {
    let compute = StartingCompute::start(Duration::ZERO, usize::MAX).await;
    let (proxy, addr) = proxy_for(Arc::new(AtAddress(compute.addr)), wake_timeout(1)).await;
    let started = Instant::now();
    let text = refusal(addr).await;
    assert!(
        text.contains("C57P03") && text.contains("starting up"),
        "{text}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?}, the wake deadline is 1 s"
    );
    assert!(compute.connections.load(Ordering::SeqCst) > 10);
    proxy.remove_route("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_that_never_answers_the_startup_packet_is_given_up_on() {
    // Accepts connections and never answers (a hung compute, or a tenant's own listener).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let compute = Arc::new(AtAddress(listener.local_addr().unwrap()));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let opts = ProxyOptions {
        connect_timeout: Duration::from_secs(1),
        ..ProxyOptions::default()
    };
    let (proxy, addr) = proxy_for(compute, opts).await;
    let started = Instant::now();
    let text = refusal(addr).await;
    assert!(
        text.contains("C08006") && text.contains("no answer"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    proxy.remove_route("b").await;
}
