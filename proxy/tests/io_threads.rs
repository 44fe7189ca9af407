//! The proxy's connection threads: as many as asked for while it lives, none after it is
//! dropped (a proxy removed from a long-running daemon must not leak threads). Alone in
//! its own test binary: it counts this process's threads by name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ramify_proxy::{Control, Proxy, ProxyOptions, Route};

struct NoCompute;

#[async_trait::async_trait]
impl Control for NoCompute {
    async fn wake(&self, _branch: &str) -> Result<std::net::SocketAddr, String> {
        Err("no compute in this test".to_owned())
    }
    async fn suspend(&self, _branch: &str) -> Result<(), String> {
        Ok(())
    }
}

fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "ramify-proxy-io")
        .count()
}

async fn until_io_threads(want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while io_threads() != want {
        assert!(
            Instant::now() < deadline,
            "{} connection threads, expected {want}",
            io_threads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_threads_are_as_many_as_asked_and_end_with_the_proxy() {
    assert_eq!(io_threads(), 0);
    for threads in [1, 3] {
        let opts = ProxyOptions {
            io_threads: threads,
            ..ProxyOptions::default()
        };
        let proxy = Proxy::new(Arc::new(NoCompute), opts).unwrap();
        let addr = proxy
            .add_route(Route {
                branch: "b".to_owned(),
                listen: "127.0.0.1:0".parse().unwrap(),
                suspend_after: None,
            })
            .await
            .unwrap();
        until_io_threads(threads).await;
        // The listener is served by them.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        drop(client);
        drop(proxy);
        until_io_threads(0).await;
    }
}
