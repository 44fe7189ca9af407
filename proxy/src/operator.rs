//! The operator's HTTP API for the proxy (`GET /v1/routes`, `POST …/wake`, `POST
//! …/suspend`, see docs/kubernetes.md) and [`OperatorControl`], the proxy's [`Control`]
//! over it.
//!
//! Branch keys are `"namespace/name"`. Every request carries `Authorization: Bearer
//! <token>`; the header is marked sensitive and the token appears in no log line or
//! error text.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ramify_proxy::{Control, SuspendOutcome};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::{debug, info, warn};

/// How long opening a TCP connection to the operator may take (it is a Service in the
/// same cluster: anything slower means it is not there).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `GET /v1/routes` may take; it reads the operator's cache.
const ROUTES_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a suspend may take: the operator deletes the compute Pod, whose `preStop`
/// hook runs a fast shutdown within the Pod's termination grace period.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an activity report may take; it updates the operator's memory.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of `GET /v1/routes`: a branch the proxy should listen for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    /// `"namespace/name"` of the `DatabaseBranch`.
    pub branch: String,
    /// The listener port (`status.proxyPort`); wider than `u16` so that one bad entry
    /// is refused on its own instead of failing the whole list.
    pub port: u32,
    /// Idle time before the compute is suspended; 0 means never.
    pub suspend_after_secs: u64,
    /// Which compute serves the branch (opaque; the branch's timeline id, plus a mark
    /// when a compute was started on request). It changes when the operator starts a
    /// compute the proxy did not wake: a restore moves the branch to a new timeline, or
    /// a wake request. Empty when unknown (an operator that does not report it yet).
    #[serde(default)]
    pub timeline: String,
}

/// The operator's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct WakeBody {
    address: String,
}

/// Why a call to the operator failed; variant names double as log labels.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// `--operator-url` cannot be used.
    #[error("operator URL {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong and what is valid.
        reason: String,
    },
    /// The token cannot be sent in an HTTP header.
    #[error("the proxy token is not usable: {reason}")]
    InvalidToken {
        /// What is wrong (never the token itself).
        reason: &'static str,
    },
    /// A branch key is not `"namespace/name"`.
    #[error(
        "branch key {branch:?} is not \"namespace/name\" (lowercase letters, digits, '-' and '.')"
    )]
    InvalidBranch {
        /// The key.
        branch: String,
    },
    /// The proxy's name is not a Pod name.
    #[error(
        "proxy name {name:?} is not usable: it names this proxy to the operator and must be \
         its Pod name (1-253 lowercase letters, digits, '-' and '.'; --proxy-name / \
         RAMIFY_PROXY_NAME, set by the chart from metadata.name)"
    )]
    InvalidProxyName {
        /// The name given.
        name: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The operator refused the bearer token.
    #[error(
        "the operator rejected the proxy's token ({status}: {message}); RAMIFY_PROXY_TOKEN \
         must be the `token` key of the operator's proxy token Secret"
    )]
    Unauthorized {
        /// 401 or 403.
        status: StatusCode,
        /// The operator's explanation.
        message: String,
    },
    /// The operator answered with an error.
    #[error("the operator answered {status} ({code}): {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The operator's error code.
        code: String,
        /// The operator's explanation, meant for users.
        message: String,
    },
    /// No connection to the operator could be opened: the request never reached it.
    #[error("cannot reach the operator at {url}: {reason}")]
    Unreachable {
        /// The operator's base URL.
        url: String,
        /// The innermost cause (connection refused, DNS, …).
        reason: String,
    },
    /// The request was sent but no (complete) answer came back in time.
    #[error("the operator at {url} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The operator's base URL.
        url: String,
        /// Which request.
        what: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The connection broke after the request was sent.
    #[error("the request {what} to the operator at {url} failed: {reason}")]
    Transport {
        /// The operator's base URL.
        url: String,
        /// Which request.
        what: &'static str,
        /// The innermost cause.
        reason: String,
    },
    /// The operator answered something that is not what the contract says.
    #[error("unexpected answer to {what} from the operator ({status}): {detail}")]
    Decode {
        /// Which request.
        what: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// What was wrong with it.
        detail: String,
    },
}

/// A client of the operator's proxy API; cheap to clone.
#[derive(Clone)]
pub struct OperatorClient {
    base: String,
    http: reqwest::Client,
    wake_timeout: Duration,
    /// This proxy's name (its Pod name), sent with wakes, suspends and activity reports.
    proxy_name: Option<String>,
}

impl fmt::Debug for OperatorClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately without the client (and so without the token header).
        f.debug_struct("OperatorClient")
            .field("base", &self.base)
            .field("wake_timeout", &self.wake_timeout)
            .finish_non_exhaustive()
    }
}

impl OperatorClient {
    /// A client for the operator at `base` (`http://host:port`), authenticating with
    /// `token`; a wake may take up to `wake_timeout`.
    pub fn new(base: &str, token: &str, wake_timeout: Duration) -> Result<Self, OperatorError> {
        let base = validate_base_url(base)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(OperatorError::InvalidToken {
                reason: "it is empty",
            });
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            OperatorError::InvalidToken {
                reason: "it contains characters an HTTP header cannot carry",
            }
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ramify-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(OperatorError::Client)?;
        Ok(Self {
            base,
            http,
            wake_timeout,
            proxy_name: None,
        })
    }

    /// The same client, naming this proxy (`name`: its Pod name) in every wake and
    /// suspend, so the operator can tell proxy replicas apart; required for
    /// [`OperatorClient::report_activity`].
    pub fn with_proxy_name(mut self, name: &str) -> Result<Self, OperatorError> {
        if !valid_proxy_name(name) {
            return Err(OperatorError::InvalidProxyName {
                name: name.to_owned(),
            });
        }
        self.proxy_name = Some(name.to_owned());
        Ok(self)
    }

    /// This proxy's name, if set.
    pub fn proxy_name(&self) -> Option<&str> {
        self.proxy_name.as_deref()
    }

    fn caller_query(&self) -> String {
        match &self.proxy_name {
            Some(name) => format!("?proxy={name}"),
            None => String::new(),
        }
    }

    /// `PUT /v1/proxies/{name}/activity`: the branches this proxy has clients on now
    /// (replacing its previous report). The operator refuses another proxy's suspend of
    /// these branches until this report expires.
    pub async fn report_activity(&self, branches: &[String]) -> Result<(), OperatorError> {
        const WHAT: &str = "PUT …/activity";
        let Some(name) = &self.proxy_name else {
            return Err(OperatorError::InvalidProxyName {
                name: String::new(),
            });
        };
        let resp = self
            .http
            .put(format!("{}/v1/proxies/{name}/activity", self.base))
            .timeout(REPORT_TIMEOUT)
            .json(&serde_json::json!({ "branches": branches }))
            .send()
            .await
            .map_err(|e| self.transport_error(WHAT, REPORT_TIMEOUT, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.error_from(WHAT, resp).await)
        }
    }

    /// The operator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/routes`: every branch the proxy should listen for.
    pub async fn routes(&self) -> Result<Vec<RouteEntry>, OperatorError> {
        const WHAT: &str = "GET /v1/routes";
        let resp = self
            .send(Method::GET, "/v1/routes", WHAT, ROUTES_TIMEOUT)
            .await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(self.error_from(WHAT, resp).await);
        }
        let body = self.body(WHAT, resp, ROUTES_TIMEOUT).await?;
        serde_json::from_slice(&body).map_err(|e| OperatorError::Decode {
            what: WHAT,
            status,
            detail: format!("expected [{{\"branch\", \"port\", \"suspendAfterSecs\"}}]: {e}"),
        })
    }

    /// `POST /v1/branches/{ns}/{name}/wake?until=address`: the address of the branch's
    /// compute as soon as its Pod has one. Postgres may still be starting there: the
    /// proxy retries its connection until Postgres accepts (an operator that predates
    /// `until` ignores it and answers once the compute is Ready, as before).
    pub async fn wake(&self, branch: &str) -> Result<SocketAddr, OperatorError> {
        const WHAT: &str = "POST …/wake";
        let caller = self.caller_query();
        let query = match caller.strip_prefix('?') {
            Some(proxy) => format!("?until=address&{proxy}"),
            None => "?until=address".to_owned(),
        };
        let path = format!("{}/wake{query}", branch_path(branch)?);
        let resp = self
            .send(Method::POST, &path, WHAT, self.wake_timeout)
            .await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(self.error_from(WHAT, resp).await);
        }
        let body = self.body(WHAT, resp, self.wake_timeout).await?;
        let decode = |detail: String| OperatorError::Decode {
            what: WHAT,
            status,
            detail,
        };
        let wake: WakeBody = serde_json::from_slice(&body)
            .map_err(|e| decode(format!("expected {{\"address\": \"ip:port\"}}: {e}")))?;
        wake.address
            .parse()
            .map_err(|_| decode(format!("address {:?} is not ip:port", wake.address)))
    }

    /// `POST /v1/branches/{ns}/{name}/suspend`: stops the branch's compute. A branch the
    /// operator no longer knows (404) has nothing to stop, which counts as success.
    pub async fn suspend(&self, branch: &str) -> Result<(), OperatorError> {
        const WHAT: &str = "POST …/suspend";
        let path = format!("{}/suspend{}", branch_path(branch)?, self.caller_query());
        let resp = self
            .send(Method::POST, &path, WHAT, SUSPEND_TIMEOUT)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => {
                debug!(
                    branch,
                    "the operator does not know the branch: nothing to suspend"
                );
                Ok(())
            }
            _ => Err(self.error_from(WHAT, resp).await),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        what: &'static str,
        timeout: Duration,
    ) -> Result<reqwest::Response, OperatorError> {
        self.http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(what, timeout, &e))
    }

    async fn body(
        &self,
        what: &'static str,
        resp: reqwest::Response,
        timeout: Duration,
    ) -> Result<Vec<u8>, OperatorError> {
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.transport_error(what, timeout, &e))
    }

    fn transport_error(
        &self,
        what: &'static str,
        timeout: Duration,
        err: &reqwest::Error,
    ) -> OperatorError {
        let url = self.base.clone();
        if err.is_timeout() {
            OperatorError::Timeout { url, what, timeout }
        } else if err.is_connect() {
            OperatorError::Unreachable {
                url,
                reason: innermost_cause(err),
            }
        } else {
            OperatorError::Transport {
                url,
                what,
                reason: innermost_cause(err),
            }
        }
    }

    /// The error an unsuccessful answer stands for: `{code, message}` when the operator
    /// sent it, else the start of whatever it sent.
    async fn error_from(&self, what: &'static str, resp: reqwest::Response) -> OperatorError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) if !e.message.is_empty() => (e.code, e.message),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(200).collect();
                let message = if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no explanation")
                        .to_owned()
                } else {
                    text
                };
                (String::new(), message)
            }
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                OperatorError::Unauthorized { status, message }
            }
            _ if status.is_client_error() || status.is_server_error() => {
                let code = if code.is_empty() {
                    status.as_u16().to_string()
                } else {
                    code
                };
                OperatorError::Api {
                    status,
                    code,
                    message,
                }
            }
            _ => OperatorError::Decode {
                what,
                status,
                detail: message,
            },
        }
    }
}

/// Checks the scheme and strips trailing slashes. Only plain HTTP: the operator is a
/// cluster-internal Service and this binary carries no TLS stack.
fn validate_base_url(url: &str) -> Result<String, OperatorError> {
    let invalid = |reason: &str| OperatorError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let Some(rest) = trimmed.strip_prefix("http://") else {
        return Err(invalid(if trimmed.starts_with("https://") {
            "https is not supported; the operator serves plain http inside the cluster, e.g. http://ramify-operator.ramify-system.svc:8080"
        } else {
            "expected http://host:port, e.g. http://ramify-operator.ramify-system.svc:8080"
        }));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(invalid(
            "expected only scheme, host and port, e.g. http://ramify-operator.ramify-system.svc:8080",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Whether `name` can name a proxy to the operator (a Pod name).
pub fn valid_proxy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Splits `"namespace/name"`; both parts must be Kubernetes object names, which also
/// makes them safe in a URL path.
pub fn split_branch(branch: &str) -> Result<(&str, &str), OperatorError> {
    let invalid = || OperatorError::InvalidBranch {
        branch: branch.to_owned(),
    };
    let (ns, name) = branch.split_once('/').ok_or_else(invalid)?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if valid(ns) && valid(name) {
        Ok((ns, name))
    } else {
        Err(invalid())
    }
}

fn branch_path(branch: &str) -> Result<String, OperatorError> {
    let (ns, name) = split_branch(branch)?;
    Ok(format!("/v1/branches/{ns}/{name}"))
}

/// The deepest error in the chain: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url (…)".
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The proxy's [`Control`] through the operator.
///
/// When the operator cannot be reached at all (connection refused, no DNS: the request
/// never arrived), a wake falls back to the address this proxy last woke the branch at,
/// so that computes that run keep taking new clients while the operator restarts. The
/// fallback is dropped when this proxy suspends the branch, when the operator answers
/// a wake with an error, when the route is removed, and when the branch moves to
/// another timeline (its compute is then another Pod at another address).
pub struct OperatorControl {
    client: OperatorClient,
    last_address: Mutex<HashMap<String, SocketAddr>>,
    fallbacks: AtomicU64,
}

impl OperatorControl {
    /// A control plane over `client`.
    pub fn new(client: OperatorClient) -> Self {
        Self {
            client,
            last_address: Mutex::new(HashMap::new()),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The operator client (route sync shares it).
    pub fn client(&self) -> &OperatorClient {
        &self.client
    }

    /// Forgets the branch's last address (its route is gone or its compute replaced).
    pub fn forget(&self, branch: &str) {
        self.addresses().remove(branch);
    }

    /// Wakes answered from the last known address because the operator was unreachable.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    fn addresses(&self) -> MutexGuard<'_, HashMap<String, SocketAddr>> {
        self.last_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Control for OperatorControl {
    async fn wake(&self, branch: &str) -> Result<SocketAddr, String> {
        match self.client.wake(branch).await {
            Ok(addr) => {
                self.addresses().insert(branch.to_owned(), addr);
                Ok(addr)
            }
            Err(err @ OperatorError::Unreachable { .. }) => {
                let last = self.addresses().get(branch).copied();
                match last {
                    Some(addr) => {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %err, %addr, "operator unreachable: using the compute's last known address");
                        Ok(addr)
                    }
                    None => Err(err.to_string()),
                }
            }
            Err(OperatorError::Api { code, message, .. }) => {
                // The operator is there and says no: whatever ran before is not to be used.
                self.addresses().remove(branch);
                info!(%code, %message, "the operator could not wake the branch");
                Err(format!("the operator could not wake it: {message}"))
            }
            Err(err) => Err(err.to_string()),
        }
    }

    async fn suspend(&self, branch: &str) -> Result<(), String> {
        self.client
            .suspend(branch)
            .await
            .map_err(|e| e.to_string())?;
        self.addresses().remove(branch);
        Ok(())
    }

    async fn try_suspend(&self, branch: &str) -> SuspendOutcome {
        match self.client.suspend(branch).await {
            Ok(()) => {
                self.addresses().remove(branch);
                SuspendOutcome::Suspended
            }
            // Another proxy has clients on it (or the operator, new as leader, has not
            // heard from every proxy yet): the compute keeps running.
            Err(OperatorError::Api {
                status: StatusCode::CONFLICT,
                code,
                message,
            }) if code == "in_use" || code == "in_use_unknown" => {
                SuspendOutcome::InUseElsewhere(message)
            }
            Err(err) => SuspendOutcome::Failed(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};

    use super::*;

    #[test]
    fn branch_keys_are_namespace_slash_name() {
        assert_eq!(split_branch("dev/alice").unwrap(), ("dev", "alice"));
        assert_eq!(split_branch("pr-1/a.b").unwrap(), ("pr-1", "a.b"));
        for bad in [
            "alice",
            "/alice",
            "dev/",
            "dev/a/b",
            "dev/Alice",
            "dev/a%2F",
            "dev/a b",
        ] {
            assert!(split_branch(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn operator_url_must_be_plain_http_host_and_port() {
        assert_eq!(
            validate_base_url("http://op.ns.svc:8080/").unwrap(),
            "http://op.ns.svc:8080"
        );
        let err = validate_base_url("https://op:8080")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https is not supported"), "{err}");
        assert!(validate_base_url("op:8080").is_err());
        assert!(validate_base_url("http://op:8080/api").is_err());
        assert!(validate_base_url("http://").is_err());
    }

    #[test]
    fn tokens_are_checked_but_never_shown() {
        let secret = "s3cr3t\nmore";
        let err = OperatorClient::new("http://op:8080", secret, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(OperatorClient::new("http://op:8080", "  ", Duration::from_secs(1)).is_err());
        let client =
            OperatorClient::new("http://op:8080", "s3cr3t", Duration::from_secs(1)).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    /// What the fake operator answers to wake.
    #[derive(Clone)]
    enum WakeAnswer {
        Address(&'static str),
        Error(StatusCode, &'static str),
        Raw(StatusCode, &'static str),
    }

    /// A fake operator; dropping it does not stop it, [`Server::stop`] does.
    struct Server {
        url: String,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        /// Stops accepting, closes idle keep-alive connections and waits for that, so
        /// the next request finds nobody listening.
        async fn stop(self) {
            let _ = self.stop.send(());
            let _ = self.task.await;
            // Let the client's pool notice its connections closed.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fake_operator(wake: WakeAnswer, suspend: StatusCode) -> Server {
        #[derive(Clone)]
        struct S {
            wake: WakeAnswer,
            suspend: StatusCode,
        }
        fn authorized(headers: &HeaderMap) -> bool {
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer t0ken")
        }
        fn denied() -> Response {
            (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"code": "unauthorized", "message": "bad token"})),
            )
                .into_response()
        }
        let app = Router::new()
            .route(
                "/v1/branches/{ns}/{name}/wake",
                post(
                    |State(s): State<Arc<S>>, headers: HeaderMap, Path((_ns, _name)): Path<(String, String)>| async move {
                        if !authorized(&headers) {
                            return denied();
                        }
                        match s.wake {
                            WakeAnswer::Address(a) => Json(serde_json::json!({"address": a})).into_response(),
                            WakeAnswer::Error(status, message) => (
                                status,
                                Json(serde_json::json!({"code": "not_ready", "message": message})),
                            )
                                .into_response(),
                            WakeAnswer::Raw(status, body) => (status, body).into_response(),
                        }
                    },
                ),
            )
            .route(
                "/v1/branches/{ns}/{name}/suspend",
                post(|State(s): State<Arc<S>>, headers: HeaderMap| async move {
                    if !authorized(&headers) {
                        return denied();
                    }
                    s.suspend.into_response()
                }),
            )
            .route(
                "/v1/routes",
                get(|headers: HeaderMap| async move {
                    if !authorized(&headers) {
                        return denied();
                    }
                    Json(serde_json::json!([
                        {"branch": "dev/alice", "port": 20001, "suspendAfterSecs": 300, "timeline": "t1", "extra": true},
                        // From an operator that does not report timelines.
                        {"branch": "dev/bob", "port": 20002, "suspendAfterSecs": 0}
                    ]))
                    .into_response()
                }),
            )
            .with_state(Arc::new(S { wake, suspend }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Server { url, stop, task }
    }

    fn client(url: &str, token: &str) -> OperatorClient {
        OperatorClient::new(url, token, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn routes_are_decoded_unknown_fields_ignored_and_missing_timelines_empty() {
        let server =
            fake_operator(WakeAnswer::Address("10.1.2.3:5432"), StatusCode::NO_CONTENT).await;
        let url = server.url.clone();
        let routes = client(&url, "t0ken").routes().await.unwrap();
        assert_eq!(
            routes,
            [
                RouteEntry {
                    branch: "dev/alice".into(),
                    port: 20001,
                    suspend_after_secs: 300,
                    timeline: "t1".into(),
                },
                RouteEntry {
                    branch: "dev/bob".into(),
                    port: 20002,
                    suspend_after_secs: 0,
                    timeline: String::new(),
                },
            ]
        );
        let err = client(&url, "wrong").routes().await.unwrap_err();
        assert!(matches!(err, OperatorError::Unauthorized { .. }), "{err}");
        assert!(!err.to_string().contains("wrong"), "{err}");
        server.stop().await;
    }

    #[tokio::test]
    async fn wake_errors_become_client_messages() {
        let server = fake_operator(
            WakeAnswer::Error(
                StatusCode::SERVICE_UNAVAILABLE,
                "compute Pod compute-0a1b2c3d is Pending: 0/1 nodes are available",
            ),
            StatusCode::NO_CONTENT,
        )
        .await;
        let control = OperatorControl::new(client(&server.url, "t0ken"));
        assert_eq!(
            control.wake("dev/alice").await.unwrap_err(),
            "the operator could not wake it: compute Pod compute-0a1b2c3d is Pending: 0/1 nodes are available"
        );
        let wrong = OperatorControl::new(client(&server.url, "wrong"));
        let err = wrong.wake("dev/alice").await.unwrap_err();
        assert!(
            err.starts_with(
                "the operator rejected the proxy's token (401 Unauthorized: bad token)"
            ),
            "{err}"
        );
        server.stop().await;

        let server = fake_operator(
            WakeAnswer::Raw(StatusCode::OK, "<html>"),
            StatusCode::NO_CONTENT,
        )
        .await;
        let err = OperatorControl::new(client(&server.url, "t0ken"))
            .wake("dev/alice")
            .await
            .unwrap_err();
        assert!(err.starts_with("unexpected answer to POST …/wake from the operator (200 OK): expected {\"address\": \"ip:port\"}"), "{err}");
        server.stop().await;

        let server = fake_operator(
            WakeAnswer::Raw(StatusCode::BAD_GATEWAY, ""),
            StatusCode::NO_CONTENT,
        )
        .await;
        let err = OperatorControl::new(client(&server.url, "t0ken"))
            .wake("dev/alice")
            .await
            .unwrap_err();
        assert_eq!(err, "the operator could not wake it: Bad Gateway");
        server.stop().await;
    }

    #[tokio::test]
    async fn an_unreachable_operator_falls_back_to_the_last_address_until_suspend() {
        let server =
            fake_operator(WakeAnswer::Address("10.1.2.3:5432"), StatusCode::NOT_FOUND).await;
        let control = OperatorControl::new(client(&server.url, "t0ken"));
        let woken: SocketAddr = "10.1.2.3:5432".parse().unwrap();
        assert_eq!(control.wake("dev/alice").await.unwrap(), woken);
        let url = server.url.clone();
        server.stop().await;
        // Nothing listens on the port any more: connection refused.
        assert_eq!(control.wake("dev/alice").await.unwrap(), woken);
        assert_eq!(control.fallbacks(), 1);
        let err = control.wake("dev/bob").await.unwrap_err();
        assert!(
            err.starts_with(&format!("cannot reach the operator at {url}: ")),
            "{err}"
        );

        // A 404 to suspend means there is nothing to stop; the fallback is gone after it.
        let server =
            fake_operator(WakeAnswer::Address("10.1.2.3:5432"), StatusCode::NOT_FOUND).await;
        let control = OperatorControl::new(client(&server.url, "t0ken"));
        control.wake("dev/alice").await.unwrap();
        control.suspend("dev/alice").await.unwrap();
        server.stop().await;
        assert!(control.wake("dev/alice").await.is_err());
        assert_eq!(control.fallbacks(), 0);
    }
}
