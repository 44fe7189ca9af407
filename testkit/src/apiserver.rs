//! A real Kubernetes API server (etcd + kube-apiserver, no kubelet or controllers) for
//! controller tests, like controller-runtime's envtest: schemas, CEL rules, the status
//! subresource, server-side apply and finalizers behave exactly as in a cluster.
//!
//! The binaries come from `$RAMIFY_K8S_BIN` (default `/var/tmp/ramify-k8s/bin`, where
//! `make cluster-build` puts them). Everything lives in a temporary directory and both
//! processes are killed when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::port::free_port;

/// Where the Kubernetes binaries are looked for.
pub fn k8s_bin_dir() -> PathBuf {
    std::env::var_os("RAMIFY_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ramify-k8s/bin"))
}

/// Why the API server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// A binary is missing: build them with `make cluster-build`.
    #[error("{0} not found; build the Kubernetes binaries with `make cluster-build` (or set RAMIFY_K8S_BIN)")]
    Missing(PathBuf),
    /// A command failed.
    #[error("{what}: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// The error or the process's log tail.
        detail: String,
    },
}

/// A running etcd + kube-apiserver.
pub struct ApiServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Bearer token of a `system:masters` user.
    pub token: String,
    /// Bearer token of a plain user ([`ApiServer::UNPRIVILEGED_USER`], no groups) that
    /// RBAC grants nothing, for testing what a denied request looks like.
    pub unprivileged_token: String,
    etcd: Child,
    apiserver: Child,
    dir: tempfile::TempDir,
}

fn failed(what: impl Into<String>, detail: impl ToString) -> ApiServerError {
    ApiServerError::Failed {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl ApiServer {
    /// The user name of [`ApiServer::unprivileged_token`].
    pub const UNPRIVILEGED_USER: &'static str = "bob";

    /// Whether the binaries exist (tests print why they skip otherwise).
    pub fn available() -> Result<(), ApiServerError> {
        for b in ["etcd", "kube-apiserver"] {
            let p = k8s_bin_dir().join(b);
            if !p.is_file() {
                return Err(ApiServerError::Missing(p));
            }
        }
        Ok(())
    }

    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz`.
    pub fn start() -> Result<ApiServer, ApiServerError> {
        Self::available()?;
        let bin = k8s_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("ramify-apiserver-")
            .tempdir()
            .map_err(|e| failed("temporary directory", e))?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> Result<(), ApiServerError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .map_err(|e| failed("run openssl", e))?;
            if !out.status.success() {
                return Err(failed(
                    format!("openssl {}", args.join(" ")),
                    String::from_utf8_lossy(&out.stderr),
                ));
            }
            Ok(())
        };
        openssl(&["genrsa", "-out", "sa.key", "2048"])?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        let token = format!("ramify-test-{}", std::process::id());
        let unprivileged_token = format!("ramify-test-unprivileged-{}", std::process::id());
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "{token},admin,admin,system:masters\n{unprivileged_token},{user},{user}\n",
                user = Self::UNPRIVILEGED_USER
            ),
        )
        .map_err(|e| failed("write tokens", e))?;

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_log = std::fs::File::create(d.join("etcd.log")).map_err(|e| failed("log", e))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(bin.join("etcd"))
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .map_err(|e| failed("start etcd", e))?;
        let api_log =
            std::fs::File::create(d.join("apiserver.log")).map_err(|e| failed("log", e))?;
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // No kubernetes Service endpoints for a loopback address (nothing uses them).
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                d.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .arg("--service-cluster-ip-range=10.250.0.0/24")
            // No controller-manager creates the `default` ServiceAccount here.
            .arg("--disable-admission-plugins=ServiceAccount")
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .map_err(|e| failed("start kube-apiserver", e))?;
        let mut server = ApiServer {
            url: format!("https://127.0.0.1:{api_port}"),
            token,
            unprivileged_token,
            etcd,
            apiserver,
            dir,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ApiServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                return Err(failed(
                    format!("kube-apiserver exited ({status})"),
                    log_tail(&self.dir.path().join("apiserver.log")),
                ));
            }
            if readyz(&self.url, &self.token) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(
                    "kube-apiserver not ready in time",
                    log_tail(&self.dir.path().join("apiserver.log")),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The temporary directory (logs: `etcd.log`, `apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `GET {url}/readyz` answers 2xx. curl, because the throwaway server's
/// certificate is self-signed and a blocking HTTP client is not worth a dependency here.
fn readyz(url: &str, token: &str) -> bool {
    Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "2",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{url}/readyz"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "200")
        .unwrap_or(false)
}
