//! The `ramify-proxy` binary as a child process: a clean environment, loopback
//! listeners, a fast route sync, its log in a temporary file, and its `/metrics`,
//! `/livez` and `/readyz` at hand. Killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often the proxy under test syncs its routes.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// A running `ramify-proxy`.
pub struct ProxyProcess {
    child: tokio::process::Child,
    metrics: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts the proxy against `operator_url` with `token` in `RAMIFY_PROXY_TOKEN` (as the
    /// Helm chart passes it) and debug logging, so a leaked token would show. SIGTERM
    /// closes everything at once (no shutdown delay, no drain).
    pub async fn spawn(operator_url: &str, token: &str) -> Self {
        Self::spawn_with_args(
            operator_url,
            token,
            &["--shutdown-delay", "0s", "--drain-timeout", "0s"],
        )
        .await
    }

    /// [`ProxyProcess::spawn`] with further flags (given last, so they win).
    pub async fn spawn_with_args(operator_url: &str, token: &str, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ramify-proxy-test-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("proxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let metrics = SocketAddr::from(([127, 0, 0, 1], ramify_testkit::free_port()));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ramify-proxy"))
            .env_clear()
            .env("RAMIFY_PROXY_TOKEN", token)
            .env("RUST_LOG", "debug")
            .args(["--operator-url", operator_url])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--metrics-listen", &metrics.to_string()])
            .args([
                "--sync-interval",
                &format!("{}ms", SYNC_INTERVAL.as_millis()),
            ])
            .args(["--wake-timeout", "30s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let proxy = Self {
            child,
            metrics,
            log,
            http,
            _dir: dir,
        };
        proxy.wait_serving().await;
        proxy
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/livez").await.map(|(s, _)| s) != Some(200) {
            self.check_deadline(deadline, "/livez 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET` on the metrics listener: status and body, `None` when it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.metrics))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/readyz").await.map(|(s, _)| s) != Some(200) {
            self.check_deadline(deadline, "/readyz 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one series (`name` or `name{labels}`), `None` when absent.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let (status, body) = self.get("/metrics").await?;
        assert_eq!(status, 200, "{body}");
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    /// Waits (up to 30 s) until the series has a value for which `cond` holds.
    pub async fn wait_metric(&self, series: &str, cond: impl Fn(Option<u64>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self.metric(series).await) {
            self.check_deadline(deadline, &format!("metric {series}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails with the proxy's log once `deadline` has passed.
    pub fn check_deadline(&self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; proxy log:\n{}",
            self.log()
        );
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 20 s) for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(Duration::from_secs(20)).await
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("the proxy is still running");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits up to `limit` for the exit; fails with the log after that.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the proxy did not exit within {limit:?}; its log:\n{}",
                self.log()
            ),
        }
    }
}
