//! The operator's HTTP server: the proxy's API (routes, wake, suspend; bearer token) and
//! `/metrics`, `/livez`, `/readyz`.
//!
//! The proxy wakes a branch with one HTTP call that returns when Postgres is ready,
//! rather than by writing a field and watching the branch: one round trip, no write
//! amplification on the API server for every connection, and every wake is still
//! observable (the Pod's events, the branch's status and this server's metrics).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kube::ResourceExt;
use ramify_api::ApiError;
use ramify_crd::DatabaseBranch;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::activity::{valid_proxy_name, Use};
use crate::branch::{self, PlanError};
use crate::build::BranchPlan;
use crate::compute::{self, ComputeError};
use crate::context::Context;

/// How long a wake may take: scheduling, image already present, Postgres start.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// The server's state: the context once this replica leads, and whether it does.
#[derive(Clone)]
pub struct AppState {
    pub ctx: Arc<tokio::sync::OnceCell<Arc<Context>>>,
    pub leader: Arc<AtomicBool>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// One route of the proxy.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// `namespace/name`.
    pub branch: String,
    pub port: u16,
    /// 0 = never suspend.
    pub suspend_after_secs: u64,
    /// Which compute serves the branch: its timeline id (`status.timeline.id`), with
    /// `@<time>` once a compute was started on request (`ramify.dev/wake-request`). It
    /// changes when the operator starts a compute the proxy did not wake — a restore
    /// moving the branch to a new timeline, or a wake request — so the proxy suspends
    /// that compute after the idle time like any other.
    pub timeline: String,
}

/// The wake answer.
#[derive(Debug, Serialize)]
pub struct WakeAnswer {
    /// `ip:port` of the ready compute.
    pub address: String,
}

struct HttpError(StatusCode, String, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiError {
                code: self.1,
                message: self.2,
            }),
        )
            .into_response()
    }
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> HttpError {
    HttpError(status, code.into(), message.into())
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/routes", get(routes))
        .route("/v1/branches/{namespace}/{name}/wake", post(wake))
        .route("/v1/branches/{namespace}/{name}/suspend", post(suspend))
        .route("/v1/proxies/{proxy}/activity", put(activity))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.ctx.get() {
        Some(ctx) if *ctx.synced.borrow() && s.leader.load(Ordering::Relaxed) => {
            "ok".into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not leading or not synced yet",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let all = s.ctx.get().map(|c| c.branches.state()).unwrap_or_default();
    let mut text = s
        .metrics
        .render(s.leader.load(Ordering::Relaxed), all.len());
    let mut phases = std::collections::BTreeMap::<String, usize>::new();
    for b in &all {
        let phase = match b.status.as_ref().and_then(|st| st.phase) {
            Some(p) => format!("{p:?}"),
            None => "Unknown".to_string(),
        };
        *phases.entry(phase).or_default() += 1;
    }
    text.push_str(&crate::metrics::render_branch_phases(&phases));
    if let Some(ctx) = s.ctx.get() {
        text.push_str(&ctx.proxy_activity.render(Instant::now()));
    }
    text.into_response()
}

/// The context, once this replica leads and the token is checked.
fn authorized(s: &AppState, headers: &HeaderMap) -> Result<Arc<Context>, HttpError> {
    let ctx = s
        .ctx
        .get()
        .filter(|_| s.leader.load(Ordering::Relaxed))
        .ok_or_else(|| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this operator replica is not the leader",
            )
        })?;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), ctx.proxy_token.as_bytes()) {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ));
    }
    Ok(Arc::clone(ctx))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Branches the proxy should listen for: with a timeline and a port, not being deleted.
/// Listed while still being created, so every proxy listens before the branch is Ready
/// (a client arriving earlier is told the branch is still being created).
pub fn route_table(branches: &[Arc<DatabaseBranch>], default_suspend: Duration) -> Vec<RouteInfo> {
    let mut out: Vec<RouteInfo> = branches
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter_map(|b| {
            let st = b.status.as_ref()?;
            let timeline = st.timeline.as_ref()?;
            let port = u16::try_from(st.proxy_port?).ok()?;
            let suspend = match b
                .spec
                .compute
                .as_ref()
                .and_then(|c| c.suspend_after.as_deref())
            {
                // A follower must stay connected to its source to keep up.
                _ if b.external_source().is_some() => Duration::ZERO,
                Some(s) => ramify_crd::duration::parse(s).ok()?,
                None => default_suspend,
            };
            Some(RouteInfo {
                branch: format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
                port,
                suspend_after_secs: suspend.as_secs(),
                timeline: match st.compute.as_ref().and_then(|c| c.woken_on_request) {
                    Some(t) => format!(
                        "{}@{}",
                        timeline.id,
                        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                    None => timeline.id.clone(),
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.branch.cmp(&b.branch));
    out
}

async fn routes(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let ctx = authorized(&s, &headers)?;
    let table = route_table(&ctx.branches.state(), ctx.config.default_suspend_after);
    // What this proxy now routes: a branch is Ready only once every proxy does.
    ctx.proxy_fetched(peer.ip(), table.iter().map(|r| r.branch.clone()).collect());
    Ok(Json(table).into_response())
}

/// The plan of a created branch, for starting its compute, from a fresh read under the
/// branch's lock (which the caller holds): a restore may have just moved it.
async fn plan_of(ctx: &Context, ns: &str, name: &str) -> Result<BranchPlan, HttpError> {
    let api: kube::Api<DatabaseBranch> = kube::Api::namespaced(ctx.client.clone(), ns);
    let b = api
        .get_opt(name)
        .await
        .map_err(|e| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "kube",
                format!("reading branch {ns}/{name}: {e}"),
            )
        })?
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("branch {ns}/{name} does not exist"),
            )
        })?;
    branch::ready_plan(ctx, &b).await.map_err(|e| match e {
        PlanError::NotReady(_) => err(StatusCode::CONFLICT, "not_ready", e.to_string()),
        PlanError::Moving(_) => err(StatusCode::CONFLICT, "moving", e.to_string()),
        PlanError::InvalidSpec(_) => err(StatusCode::CONFLICT, "invalid_spec", e.to_string()),
        PlanError::Storage { .. } => err(
            StatusCode::BAD_GATEWAY,
            "storage_unavailable",
            e.to_string(),
        ),
    })
}

/// `?proxy=<pod name>` on wake and suspend: which proxy asks. Optional, for proxies
/// that predate it; an unnamed caller is "another proxy" to everyone.
#[derive(Debug, Deserialize)]
pub struct Caller {
    pub proxy: Option<String>,
}

impl Caller {
    fn name(&self) -> Result<Option<&str>, HttpError> {
        match self.proxy.as_deref() {
            None => Ok(None),
            Some(p) if valid_proxy_name(p) => Ok(Some(p)),
            Some(p) => Err(invalid_proxy_name(p)),
        }
    }
}

/// The wake's query: who asks, and whether the Pod's address is enough (`until=address`,
/// for a caller that retries until Postgres accepts) or the Pod must be Ready (default).
#[derive(Debug, Deserialize)]
pub struct WakeParams {
    pub proxy: Option<String>,
    pub until: Option<compute::WakeUntil>,
}

fn invalid_proxy_name(p: &str) -> HttpError {
    err(
        StatusCode::BAD_REQUEST,
        "invalid_proxy",
        format!(
            "proxy name {p:?} is not a Pod name (1-253 lowercase letters, digits, '-' and '.')"
        ),
    )
}

/// `PUT /v1/proxies/{proxy}/activity`: the branches the proxy has clients on now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    /// `namespace/name` of each branch with an authenticated client or a wake in flight.
    pub branches: std::collections::BTreeSet<String>,
}

async fn activity(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(proxy): Path<String>,
    body: Result<Json<ActivityReport>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, HttpError> {
    let ctx = authorized(&s, &headers)?;
    if !valid_proxy_name(&proxy) {
        return Err(invalid_proxy_name(&proxy));
    }
    let Json(report) = body.map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_report",
            format!(
                "expected {{\"branches\": [\"namespace/name\", …]}}: {}",
                e.body_text()
            ),
        )
    })?;
    ctx.proxy_activity
        .report(&proxy, report.branches, Instant::now());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn wake(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Query<WakeParams>,
) -> Result<Response, HttpError> {
    let ctx = authorized(&s, &headers)?;
    let caller = Caller {
        proxy: params.proxy,
    };
    if let Some(proxy) = caller.name()? {
        // In use by this proxy from now on: another proxy's suspend, even one queued
        // on the branch lock behind this wake, is refused.
        ctx.proxy_activity
            .woke(proxy, &format!("{ns}/{name}"), Instant::now());
    }
    let started = Instant::now();
    let lock = ctx.branch_lock(&ns, &name);
    let _guard = lock.lock().await;
    let plan = plan_of(&ctx, &ns, &name).await?;
    let result = compute::wake(&ctx, &plan, WAKE_TIMEOUT, params.until.unwrap_or_default()).await;
    ctx.metrics.woke(result.is_ok(), started.elapsed());
    match result {
        Ok(address) => {
            info!(branch = %format!("{ns}/{name}"), %address, took_ms = started.elapsed().as_millis() as u64, "woke");
            Ok(Json(WakeAnswer { address }).into_response())
        }
        Err(e) => {
            warn!(branch = %format!("{ns}/{name}"), error = %e, "wake failed");
            let status = match e {
                ComputeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(err(status, e.kind(), e.to_string()))
        }
    }
}

async fn suspend(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(caller): Query<Caller>,
) -> Result<Response, HttpError> {
    let ctx = authorized(&s, &headers)?;
    let asking = caller.name()?;
    let lock = ctx.branch_lock(&ns, &name);
    let _guard = lock.lock().await;
    // Under the branch lock: a wake that held it has recorded its proxy by now.
    let key = format!("{ns}/{name}");
    let lease = ctx.proxy_activity.lease();
    let verdict = ctx
        .proxy_activity
        .use_by_others(&key, asking, Instant::now());
    if verdict != Use::Idle {
        ctx.proxy_activity.refused(&verdict);
        let (code, message) = match &verdict {
            Use::InUse { proxy, ago } => (
                "in_use",
                format!(
                    "branch {key} is in use through proxy {proxy} (reported {}s ago): not suspended; \
                     a branch is suspended only when no proxy has had clients on it for its idle time",
                    ago.as_secs()
                ),
            ),
            _ => (
                "in_use_unknown",
                format!(
                    "branch {key} not suspended: this operator replica became leader less than \
                     {}s ago and has not heard from every proxy yet; ask again after the idle time",
                    lease.as_secs()
                ),
            ),
        };
        info!(branch = %key, asking = asking.unwrap_or("(unnamed)"), %message, "suspend refused");
        return Err(err(StatusCode::CONFLICT, code, message));
    }
    let plan = plan_of(&ctx, &ns, &name).await?;
    if plan.following {
        return Err(err(
            StatusCode::CONFLICT,
            "following",
            format!("branch {key} follows an external Postgres and never suspends: it must stay connected to keep up"),
        ));
    }
    match compute::suspend(&ctx, &plan.timeline_id, Duration::from_secs(90)).await {
        Ok(existed) => {
            if existed {
                ctx.metrics.suspended();
                info!(branch = %format!("{ns}/{name}"), "suspended");
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            e.kind(),
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramify_crd::{ComputeSpec, DatabaseBranchSpec, DatabaseBranchStatus, TimelineRef};

    fn branch(
        name: &str,
        port: Option<i32>,
        credentials: bool,
        suspend: Option<&str>,
    ) -> Arc<DatabaseBranch> {
        let mut b = DatabaseBranch::new(
            name,
            DatabaseBranchSpec {
                compute: suspend.map(|s| ComputeSpec {
                    suspend_after: Some(s.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some("dev".into());
        b.status = Some(DatabaseBranchStatus {
            timeline: Some(TimelineRef {
                id: "t1".into(),
                name: "tl-t1".into(),
                storage_node: "ramify-storage-0".into(),
            }),
            credentials_timeline: credentials.then(|| "t1".into()),
            proxy_port: port,
            ..Default::default()
        });
        Arc::new(b)
    }

    #[test]
    fn routes_only_for_created_branches() {
        // b was restored: it now runs on timeline t2, its credentials not yet set there.
        let mut restored = (*branch("b", Some(20001), false, Some("0s"))).clone();
        if let Some(tl) = restored.status.as_mut().and_then(|s| s.timeline.as_mut()) {
            tl.id = "t2".into();
        }
        let mut creating = (*branch("creating", Some(20002), false, None)).clone();
        if let Some(st) = creating.status.as_mut() {
            st.timeline = None;
        }
        let table = route_table(
            &[
                Arc::new(restored),
                branch("a", Some(20000), true, None),
                branch("no-port", None, true, None),
                Arc::new(creating),
            ],
            Duration::from_secs(300),
        );
        assert_eq!(
            table,
            vec![
                RouteInfo {
                    branch: "dev/a".into(),
                    port: 20000,
                    suspend_after_secs: 300,
                    timeline: "t1".into(),
                },
                RouteInfo {
                    branch: "dev/b".into(),
                    port: 20001,
                    suspend_after_secs: 0,
                    timeline: "t2".into(),
                },
            ]
        );
        // The wire format the proxy decodes (proxy/src/operator.rs `RouteEntry`).
        assert_eq!(
            serde_json::to_value(&table[1]).unwrap(),
            serde_json::json!({
                "branch": "dev/b",
                "port": 20001,
                "suspendAfterSecs": 0,
                "timeline": "t2"
            })
        );
    }

    #[test]
    fn a_wake_on_request_changes_the_compute_marker() {
        let mut woken = (*branch("w", Some(20003), true, None)).clone();
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        woken.status.as_mut().unwrap().compute = Some(ramify_crd::ComputeStatus {
            state: ramify_crd::ComputeState::Running,
            woken_on_request: Some(at),
            ..Default::default()
        });
        let table = route_table(&[Arc::new(woken)], Duration::from_secs(300));
        assert_eq!(table[0].timeline, "t1@2026-11-28T12:00:00.000Z");
    }

    #[test]
    fn a_follower_is_never_suspended_by_the_proxy() {
        let mut f = (*branch("f", Some(20004), true, Some("5m"))).clone();
        f.spec.source = Some(ramify_crd::BranchSource {
            external: Some(ramify_crd::ExternalSource::default()),
        });
        let table = route_table(&[Arc::new(f)], Duration::from_secs(300));
        assert_eq!(table[0].suspend_after_secs, 0);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
