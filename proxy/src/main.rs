//! `ramify-proxy`: the in-cluster Postgres front door of Ramify branches.
#![forbid(unsafe_code)]

mod metrics;
mod operator;
mod sync;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ramify_proxy::{CertificateAuthority, Proxy, ProxyOptions, ProxyTls, ServerNames};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

use crate::metrics::Endpoints;
use crate::operator::{OperatorClient, OperatorControl};
use crate::sync::{SyncStatus, Syncer};

/// How long the metrics server may take to finish its open requests on shutdown.
const METRICS_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Ramify's in-cluster Postgres proxy: one port per branch, computes woken on connect.
///
/// Listens on one port per DatabaseBranch (its `status.proxyPort`, which the branch's
/// Service's EndpointSlice points at). When a client connects, the proxy asks the
/// operator to wake the branch's compute, then splices the connection to it; after the
/// branch's idle time (`spec.compute.suspendAfter`) without clients it asks the operator
/// to suspend the compute.
///
/// The routes (branch, port, idle time) come from the operator's `GET /v1/routes`,
/// polled every --sync-interval. While the operator is unreachable the last known routes
/// keep serving, and computes this proxy woke keep taking new clients. Errors reach
/// clients as Postgres ErrorResponses (SQLSTATE 57P03), e.g.
///   branch "dev/alice" is unavailable: the operator could not wake it: …
///
/// Every flag can also be set through the environment variable shown with it.
///
/// Example (as the Helm chart runs it):
///   RAMIFY_PROXY_TOKEN=… ramify-proxy --operator-url http://ramify-operator.ramify-system.svc:8080
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Base URL of the operator's HTTP API: plain http, scheme, host and port only.
    #[arg(long, env = "RAMIFY_OPERATOR_URL", value_name = "URL")]
    operator_url: String,

    /// Bearer token for the operator's API: the `token` key of the Secret the operator
    /// creates (`ramify-proxy-token` by default). Prefer the environment variable:
    /// command lines are visible to every process on the node. Never logged.
    #[arg(
        long,
        env = "RAMIFY_PROXY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: String,

    /// Address the per-branch listeners bind to (each on its branch's port, 20000-29999).
    #[arg(
        long,
        env = "RAMIFY_LISTEN_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    listen_address: IpAddr,

    /// Address of the HTTP server with /metrics (Prometheus), /livez and /readyz (200
    /// once the first route sync with the operator succeeded, 503 while shutting down).
    #[arg(
        long,
        env = "RAMIFY_METRICS_LISTEN",
        default_value = "0.0.0.0:9090",
        value_name = "ADDR"
    )]
    metrics_listen: SocketAddr,

    /// How often to fetch the routes from the operator (e.g. 2s, 500ms). New branches
    /// become reachable, and deleted ones stop, within about this long.
    #[arg(long, env = "RAMIFY_SYNC_INTERVAL", default_value = "2s", value_parser = parse_interval, value_name = "DURATION")]
    sync_interval: Duration,

    /// How long a client waits for its branch's compute: a suspend in progress, then the
    /// wake (Pod scheduling, image pull, Postgres start-up). The client then gets an
    /// error; the operator goes on starting the compute for the next client.
    #[arg(long, env = "RAMIFY_WAKE_TIMEOUT", default_value = "60s", value_parser = parse_interval, value_name = "DURATION")]
    wake_timeout: Duration,

    /// How long a client may take from connecting to a complete StartupMessage (the
    /// SSLRequest and TLS handshake included); slower clients are disconnected.
    #[arg(long, env = "RAMIFY_STARTUP_TIMEOUT", default_value = "10s", value_parser = parse_interval, value_name = "DURATION")]
    startup_timeout: Duration,

    /// On SIGTERM, how long the proxy goes on accepting new clients after its readiness
    /// turns false: the time Services need to stop sending clients here (EndpointSlice
    /// update, then every node's kube-proxy). Clients that arrive meanwhile are served,
    /// not refused. 0 stops accepting at once.
    #[arg(long, env = "RAMIFY_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_delay: Duration,

    /// On SIGTERM, after --shutdown-delay: how long sessions still open may go on (no
    /// new client is accepted) before the proxy closes them and exits. While they last
    /// the proxy keeps telling the operator their branches are in use. Keep
    /// --shutdown-delay plus this below the Pod's terminationGracePeriodSeconds.
    #[arg(long, env = "RAMIFY_DRAIN_TIMEOUT", default_value = "40s", value_parser = parse_duration, value_name = "DURATION")]
    drain_timeout: Duration,

    /// Client connections one branch may have open at once, counted from the accept
    /// (authenticated or not). More are refused at once with SQLSTATE 53300
    /// (too_many_connections), without waking the branch. Keep it below the compute's
    /// max_connections so that Postgres, not the proxy, is the last word.
    #[arg(long, env = "RAMIFY_MAX_CONNECTIONS_PER_BRANCH", default_value_t = 100, value_parser = parse_cap, value_name = "N")]
    max_connections_per_branch: usize,

    /// Client connections the proxy may have open at once over all branches; more are
    /// refused with SQLSTATE 53300. Bounds the proxy's memory and file descriptors.
    #[arg(long, env = "RAMIFY_MAX_CONNECTIONS", default_value_t = 1000, value_parser = parse_cap, value_name = "N")]
    max_connections: usize,

    /// Threads that carry client connections (TLS, startup, splicing). One thread serves
    /// every branch without cross-thread wake-ups, the cheapest per query when Postgres
    /// shares the node's cores; raise it when this proxy's own CPU use nears one core.
    /// Calls to the operator run on other threads.
    #[arg(long, env = "RAMIFY_PROXY_IO_THREADS", default_value_t = 1, value_parser = parse_cap, value_name = "N")]
    io_threads: usize,

    /// CA certificate (PEM) that signs each branch's TLS server certificate; clients
    /// verify against it (`sslrootcert`, the `ca.crt` key of every branch's connection
    /// Secret). The chart mounts it from the Secret named by `tls.caSecretName`. Without
    /// it the proxy answers SSLRequest with `N` (plaintext only).
    #[arg(
        long,
        env = "RAMIFY_TLS_CA_CERT",
        value_name = "FILE",
        requires = "tls_ca_key"
    )]
    tls_ca_cert: Option<PathBuf>,

    /// The CA's private key (PEM: PKCS#8, SEC1 or PKCS#1), paired with --tls-ca-cert.
    #[arg(
        long,
        env = "RAMIFY_TLS_CA_KEY",
        value_name = "FILE",
        requires = "tls_ca_cert"
    )]
    tls_ca_key: Option<PathBuf>,

    /// Refuse sessions that did not negotiate TLS (SQLSTATE 28000, telling the client to
    /// use sslmode=require or verify-full). Cancel requests are still accepted in
    /// plaintext: libpq before Postgres 17 never encrypts them.
    #[arg(long, env = "RAMIFY_TLS_REQUIRED", requires = "tls_ca_cert")]
    tls_required: bool,

    /// The cluster's DNS domain: certificates name `<branch>-postgres.<ns>.svc.<domain>`
    /// besides the shorter Service names.
    #[arg(
        long,
        env = "RAMIFY_CLUSTER_DOMAIN",
        default_value = "cluster.local",
        value_name = "DOMAIN"
    )]
    cluster_domain: String,

    /// This proxy's name, as it reports to the operator the branches it has clients on
    /// (so that another proxy replica's suspend of them is refused): its Pod name, which
    /// the chart sets from metadata.name. Default: $HOSTNAME (a Pod's name), lowercased,
    /// or `ramify-proxy-<pid>`.
    #[arg(long, env = "RAMIFY_PROXY_NAME", value_name = "NAME")]
    proxy_name: Option<String>,

    /// Log format: `text` for people, `json` for log pipelines. The level is set with
    /// RUST_LOG (default `info`, e.g. RUST_LOG=ramify_proxy=debug).
    #[arg(long, env = "RAMIFY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A positive duration like `2s`, `500ms` or `1m`.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: expected a duration like 2s, 500ms or 1m"))?;
    if d.is_zero() {
        return Err("must be more than 0 (e.g. 2s)".to_owned());
    }
    Ok(d)
}

/// A duration like `5s`, `500ms` or `0s` (zero allowed).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: expected a duration like 5s, 500ms or 0s"))
}

/// A connection cap: a whole number of at least 1.
fn parse_cap(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a valid cap: expected a whole number of at least 1"
        )),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in Pod logs.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
}

/// SIGTERM (Kubernetes stopping the Pod) and SIGINT (Ctrl-C).
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            return fail(&anyhow::Error::new(err).context("cannot start the async runtime"))
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// One clear line, in the log format chosen, and a non-zero exit.
fn fail(err: &anyhow::Error) -> ExitCode {
    error!("{err:#}");
    ExitCode::FAILURE
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;

    let proxy_name = args.proxy_name.clone().unwrap_or_else(default_proxy_name);
    let client = OperatorClient::new(&args.operator_url, &args.token, args.wake_timeout)?
        .with_proxy_name(&proxy_name)?;
    let control = Arc::new(OperatorControl::new(client));
    let opts = ProxyOptions {
        wake_timeout: args.wake_timeout,
        startup_timeout: args.startup_timeout,
        max_connections_per_branch: args.max_connections_per_branch,
        max_connections: args.max_connections,
        io_threads: args.io_threads,
        ..ProxyOptions::default()
    };
    let proxy = match (&args.tls_ca_cert, &args.tls_ca_key) {
        (Some(cert), Some(key)) => {
            let tls = ProxyTls {
                ca: Arc::new(load_ca(cert, key)?),
                names: ServerNames::Cluster {
                    domain: args.cluster_domain.clone(),
                },
                required: args.tls_required,
            };
            info!(ca = %cert.display(), required = tls.required, "TLS on branch endpoints");
            Proxy::with_tls(control.clone(), opts, tls)?
        }
        _ => {
            warn!("no --tls-ca-cert: branch endpoints answer SSLRequest with N (plaintext only)");
            Proxy::new(control.clone(), opts)?
        }
    };
    let status = Arc::new(SyncStatus::default());

    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--metrics-listen)",
                args.metrics_listen
            )
        })?;
    let endpoints = Arc::new(Endpoints {
        proxy: proxy.clone(),
        status: status.clone(),
        control: control.clone(),
    });
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = tokio::spawn(async move {
        axum::serve(metrics_listener, metrics::router(endpoints))
            .with_graceful_shutdown(async {
                let _ = metrics_stopped.await;
            })
            .await
    });
    info!(
        operator_url = %control.client().base(),
        proxy_name = %proxy_name,
        listen_address = %args.listen_address,
        metrics_listen = %args.metrics_listen,
        sync_interval = ?args.sync_interval,
        wake_timeout = ?args.wake_timeout,
        startup_timeout = ?args.startup_timeout,
        max_connections_per_branch = args.max_connections_per_branch,
        max_connections = args.max_connections,
        io_threads = args.io_threads,
        "ramify-proxy starting"
    );

    let mut syncer = Syncer::new(proxy.clone(), control, args.listen_address, status.clone());
    let mut received = "";
    syncer
        .run(args.sync_interval, async {
            received = signals.next().await;
        })
        .await;
    // Graceful: readiness fails at once so Services stop sending clients here, but the
    // kube-proxies learn it only seconds later; until --shutdown-delay has passed, new
    // clients are still served. Then the listeners close and open sessions may finish
    // within --drain-timeout. A second signal skips what is left of both.
    status.begin_shutdown();
    info!(
        signal = received,
        routes = status.routes().len(),
        shutdown_delay = ?args.shutdown_delay,
        "shutting down: not ready any more; still accepting clients while Services stop sending them here"
    );
    let mut hurried: Option<&'static str> = None;
    syncer
        .run(args.sync_interval, async {
            tokio::select! {
                () = tokio::time::sleep(args.shutdown_delay) => {}
                second = signals.next() => hurried = Some(second),
            }
        })
        .await;
    if hurried.is_none() {
        proxy.stop_accepting();
        info!(
            open_connections = proxy.open_connections(),
            drain_timeout = ?args.drain_timeout,
            "no longer accepting clients: waiting for open sessions to end"
        );
        let left = syncer
            .drain(args.sync_interval, async {
                tokio::select! {
                    () = tokio::time::sleep(args.drain_timeout) => {}
                    second = signals.next() => hurried = Some(second),
                }
            })
            .await;
        if left > 0 {
            warn!(
                open_connections = left,
                "sessions still open after --drain-timeout: closing them"
            );
        }
    }
    if let Some(second) = hurried {
        warn!(signal = second, "second signal: closing every session now");
    }
    info!(routes = status.routes().len(), "closing every route");
    tokio::select! {
        () = syncer.remove_all() => {}
        second = signals.next() => {
            warn!(signal = second, "second signal: exiting without waiting for routes to close");
            std::process::exit(1);
        }
    }
    // Nothing is in use here any more: say so, so that no other replica's suspend waits
    // for this proxy's last report to expire.
    syncer.report_activity().await;
    let _ = stop_metrics.send(());
    match tokio::time::timeout(METRICS_SHUTDOWN_GRACE, metrics_server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!(error = %err, "metrics server failed"),
        Ok(Err(err)) => warn!(error = %err, "metrics server task failed"),
        Err(_) => warn!("metrics server did not finish within {METRICS_SHUTDOWN_GRACE:?}"),
    }
    info!("ramify-proxy stopped");
    Ok(())
}

/// `$HOSTNAME` (in a Pod: the Pod's name) when it can name a proxy, else
/// `ramify-proxy-<pid>`.
fn default_proxy_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| operator::valid_proxy_name(h))
        .unwrap_or_else(|| format!("ramify-proxy-{}", std::process::id()))
}

/// Reads the CA from its PEM files, saying which file is wrong.
fn load_ca(cert: &Path, key: &Path) -> anyhow::Result<CertificateAuthority> {
    let read = |path: &Path, flag: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} ({flag})", path.display()))
    };
    let cert_pem = read(cert, "--tls-ca-cert")?;
    let key_pem = read(key, "--tls-ca-key")?;
    CertificateAuthority::from_pem(&cert_pem, &key_pem).with_context(|| {
        format!(
            "--tls-ca-cert {} / --tls-ca-key {}",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn intervals_must_be_positive_durations() {
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let args = Args::try_parse_from([
            "ramify-proxy",
            "--operator-url",
            "http://op:8080",
            "--token",
            "t",
        ])
        .unwrap();
        assert_eq!(args.listen_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(args.metrics_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(args.sync_interval, Duration::from_secs(2));
        assert_eq!(args.wake_timeout, Duration::from_secs(60));
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.tls_ca_cert, None);
        assert!(!args.tls_required);
        assert_eq!(args.cluster_domain, "cluster.local");
        assert_eq!(args.startup_timeout, Duration::from_secs(10));
        assert_eq!(args.max_connections_per_branch, 100);
        assert_eq!(args.max_connections, 1000);
        assert_eq!(args.io_threads, 1);
    }

    #[test]
    fn connection_caps_must_be_positive() {
        let base = [
            "ramify-proxy",
            "--operator-url",
            "http://op:8080",
            "--token",
            "t",
        ];
        let with = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra));
        let args = with(&[
            "--max-connections-per-branch",
            "5",
            "--max-connections=50",
            "--startup-timeout=3s",
        ])
        .unwrap();
        assert_eq!(
            (args.max_connections_per_branch, args.max_connections),
            (5, 50)
        );
        assert_eq!(args.startup_timeout, Duration::from_secs(3));
        for (bad, flag) in [
            (
                "--max-connections-per-branch=0",
                "--max-connections-per-branch",
            ),
            ("--max-connections=-1", "--max-connections"),
            ("--max-connections=lots", "--max-connections"),
            ("--startup-timeout=0s", "--startup-timeout"),
        ] {
            let err = with(&[bad]).err().expect(bad);
            assert!(err.to_string().contains(flag), "{err}");
        }
        assert!(parse_cap("0").unwrap_err().contains("at least 1"));
    }

    #[test]
    fn tls_flags_come_as_a_pair_and_required_needs_them() {
        let base = [
            "ramify-proxy",
            "--operator-url",
            "http://op:8080",
            "--token",
            "t",
        ];
        let with = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra));
        assert!(with(&["--tls-ca-cert", "/ca.crt"]).is_err());
        assert!(with(&["--tls-required"]).is_err());
        let args = with(&[
            "--tls-ca-cert",
            "/ca.crt",
            "--tls-ca-key",
            "/ca.key",
            "--tls-required",
        ])
        .unwrap();
        assert!(args.tls_required);
    }

    #[test]
    fn ca_files_are_loaded_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("t").unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&cert, ca.cert_pem()).unwrap();
        std::fs::write(&key, ca.key_pem()).unwrap();
        let loaded = load_ca(&cert, &key).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let err = load_ca(&cert, &dir.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("--tls-ca-key"), "{err:#}");
        std::fs::write(&key, "garbage").unwrap();
        let err = load_ca(&cert, &key).unwrap_err();
        assert!(format!("{err:#}").contains("private key"), "{err:#}");
    }
}
