//! The operator's settings: flags, each also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// `ramify-operator`: reconciles DatabaseBranch objects into storage timelines, compute
/// Pods, Secrets and Services, and wakes suspended branches for the proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "ramify-operator", version, about, long_about = None)]
pub struct Config {
    /// Storage namespace: where the storage nodes, proxy, compute Pods and Timelines live.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// Name of the storage StatefulSet and of its headless Service.
    #[arg(long, env = "RAMIFY_STORAGE_SERVICE", default_value = "ramify-storage")]
    pub storage_service: String,

    /// Port of the storage nodes' HTTP API.
    #[arg(long, env = "RAMIFY_STORAGE_PORT", default_value_t = 7070)]
    pub storage_port: u16,

    /// URL of a storage node's API; `{node}` is replaced by its Pod name. Default:
    /// http://{node}.<storage-service>.<namespace>.svc.<cluster-domain>:<storage-port>
    #[arg(long, env = "RAMIFY_STORAGE_URL")]
    pub storage_url: Option<String>,

    /// Secret (key `token`) holding the storage nodes' API bearer token; created when
    /// missing. The storage StatefulSet reads the same Secret.
    #[arg(
        long,
        env = "RAMIFY_STORAGE_TOKEN_SECRET",
        default_value = "ramify-storage-token"
    )]
    pub storage_token_secret: String,

    /// File holding the storage API token (mode 0600), used instead of the Secret: for an
    /// operator run outside the cluster or with the token mounted by other means.
    #[arg(long, env = "RAMIFY_STORAGE_TOKEN_FILE")]
    pub storage_token_file: Option<std::path::PathBuf>,

    /// The storage API token in use, resolved at start-up from the file or the Secret.
    #[arg(skip)]
    pub storage_token: Option<ramify_api::ApiToken>,

    /// Postgres image of the compute Pods (official `postgres` layout).
    #[arg(long, env = "RAMIFY_COMPUTE_IMAGE", default_value = "postgres:15")]
    pub compute_image: String,

    /// Pull policy of the compute image (Always, IfNotPresent, Never).
    #[arg(
        long,
        env = "RAMIFY_COMPUTE_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub compute_image_pull_policy: String,

    /// Hosts a following branch may name as its source (`spec.source.external`): a host
    /// name or address exactly, `*.SUFFIX` for every name under SUFFIX, or `*` for any.
    /// None (the default): following is refused. The storage nodes copy a source with the
    /// rights of every branch's files, and its schema and answers are the source's to
    /// write: list only the databases this installation's tenants may copy and trust.
    #[arg(
        long = "follow-allowed-host",
        env = "RAMIFY_FOLLOW_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub follow_allowed_hosts: Vec<String>,

    /// Postgres major version of the compute image (a root asking for another is refused).
    #[arg(long, env = "RAMIFY_POSTGRES_VERSION", default_value_t = 15)]
    pub postgres_version: i32,

    /// Idle time before a branch's compute is stopped, when its spec does not say
    /// (`30s`, `5m`, `1h`; `0s` = never).
    #[arg(long, env = "RAMIFY_DEFAULT_SUSPEND_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub default_suspend_after: Duration,

    /// How long a proxy's report of the branches it has clients on (sent every route
    /// sync, 2 s by default) holds: while another proxy's report names a branch, a
    /// proxy's suspend of it is refused; a proxy that stops reporting (it died) no longer
    /// holds any branch after this long. Also how long a new leader refuses every
    /// suspend, until each live proxy has reported to it. Keep it several times the
    /// proxy's --sync-interval.
    #[arg(long, env = "RAMIFY_PROXY_ACTIVITY_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub proxy_activity_lease: Duration,

    /// Most CPU one branch's compute may request or be limited to (`2`, `1500m`); a branch
    /// asking more is refused (reason ResourceLimitExceeded). Also its CPU limit when the
    /// branch sets none. Unset: no maximum.
    #[arg(long, env = "RAMIFY_MAX_COMPUTE_CPU", value_parser = crate::quantity::parse_flag)]
    pub max_compute_cpu: Option<String>,

    /// Most memory one branch's compute may request or be limited to (`4Gi`); as
    /// `--max-compute-cpu`, and its memory limit when the branch sets none.
    #[arg(long, env = "RAMIFY_MAX_COMPUTE_MEMORY", value_parser = crate::quantity::parse_flag)]
    pub max_compute_memory: Option<String>,

    /// Label selector of the proxy Pods (their IPs back every branch's Service).
    #[arg(
        long,
        env = "RAMIFY_PROXY_SELECTOR",
        default_value = "app.kubernetes.io/component=proxy"
    )]
    pub proxy_selector: String,

    /// Secret (key `token`) holding the proxy's bearer token; created when missing.
    #[arg(
        long,
        env = "RAMIFY_PROXY_TOKEN_SECRET",
        default_value = "ramify-proxy-token"
    )]
    pub proxy_token_secret: String,

    /// Secret (`kubernetes.io/tls`: tls.crt, tls.key) holding the CA that signs the
    /// proxy's per-branch TLS certificates; created when missing (or issued by
    /// cert-manager). Its certificate is published as `ca.crt` in every branch's
    /// connection Secret. Empty: no TLS CA, connection Secrets carry no `ca.crt`.
    #[arg(long, env = "RAMIFY_TLS_CA_SECRET", default_value = "ramify-ca")]
    pub tls_ca_secret: String,

    /// The CA Secret is issued by cert-manager (the chart's `tls.issuerRef`): wait for it
    /// at start-up instead of creating one.
    #[arg(long, env = "RAMIFY_TLS_CA_ISSUED")]
    pub tls_ca_issued: bool,

    /// The CA certificate (PEM) in use, resolved at start-up from `tls_ca_secret`.
    #[arg(skip)]
    pub tls_ca_cert: Option<String>,

    /// Address of the HTTP server: wake API, /metrics, /livez, /readyz.
    #[arg(long, env = "RAMIFY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Only the holder of the Lease `ramify-operator` reconciles (for more than one replica).
    #[arg(long, env = "RAMIFY_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Cluster DNS domain, for the host names in connection Secrets.
    #[arg(long, env = "RAMIFY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Log format: text or json.
    #[arg(long, env = "RAMIFY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ramify_crd::duration::parse(s)
}

impl Config {
    /// Base URL of a storage node's API.
    pub fn storage_url(&self, node: &str) -> String {
        match &self.storage_url {
            Some(t) => t.replace("{node}", node),
            None => format!(
                "http://{node}.{}.{}.svc.{}:{}",
                self.storage_service, self.namespace, self.cluster_domain, self.storage_port
            ),
        }
    }

    /// A configuration for tests and examples, with the chart's defaults.
    pub fn for_namespace(namespace: &str) -> Config {
        Config::parse_from(["ramify-operator", "--namespace", namespace])
    }
}
