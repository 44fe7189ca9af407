//! An in-process stand-in for the operator's proxy API (docs/kubernetes.md): serves
//! `GET /v1/routes` from a list the test sets, answers wake and suspend by starting and
//! stopping a real Postgres through [`PgControl`], and checks the bearer token. It can
//! be stopped (connections refused) and started again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ramify_proxy::Control;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pg_control::PgControl;

/// A request the fake operator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET /v1/routes`.
    Routes,
    /// `POST /v1/branches/{ns}/{name}/wake`, with `"ns/name"`.
    Wake(String),
    /// `POST /v1/branches/{ns}/{name}/suspend`, with `"ns/name"`.
    Suspend(String),
    /// Any request whose bearer token was wrong or missing.
    Unauthorized,
}

struct Shared {
    token: Mutex<String>,
    routes: Mutex<Vec<serde_json::Value>>,
    compute: Option<Arc<PgControl>>,
    calls: Mutex<Vec<Call>>,
}

/// The fake operator.
pub struct FakeOperator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl FakeOperator {
    /// Starts serving on a free loopback port. Every branch is backed by `compute`;
    /// without one, wakes fail with 503 `no_compute`.
    pub async fn start(token: &str, compute: Option<Arc<PgControl>>) -> Self {
        let shared = Arc::new(Shared {
            token: Mutex::new(token.to_owned()),
            routes: Mutex::new(Vec::new()),
            compute,
            calls: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let op = Self {
            shared,
            addr,
            server: Mutex::new(None),
        };
        op.serve(listener);
        op
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the routes: `(branch, port, suspendAfterSecs)`.
    pub fn set_routes(&self, routes: &[(&str, u16, u64)]) {
        *self.shared.routes.lock().unwrap() = routes
            .iter()
            .map(|&(branch, port, secs)| json!({"branch": branch, "port": port, "suspendAfterSecs": secs}))
            .collect();
    }

    /// Replaces the routes, reporting each branch's timeline: `(branch, port,
    /// suspendAfterSecs, timeline)`. [`FakeOperator::set_routes`] reports none, like an
    /// operator from before timelines were part of the routes.
    pub fn set_routes_on_timelines(&self, routes: &[(&str, u16, u64, &str)]) {
        *self.shared.routes.lock().unwrap() = routes
            .iter()
            .map(|&(branch, port, secs, timeline)| {
                json!({"branch": branch, "port": port, "suspendAfterSecs": secs, "timeline": timeline})
            })
            .collect();
    }

    /// Changes the token the operator accepts (a rotated Secret).
    pub fn set_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = token.to_owned();
    }

    /// Requests so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Requests other than route listings, in order.
    pub fn branch_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| *c != Call::Routes)
            .collect()
    }

    /// Stops listening and closes every connection: the operator is down.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/v1/routes", get(routes))
            .route("/v1/branches/{ns}/{name}/wake", post(wake))
            .route("/v1/branches/{ns}/{name}/suspend", post(suspend))
            .with_state(Arc::clone(&self.shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        *self.server.lock().unwrap() = Some((stop, task));
    }
}

impl Drop for FakeOperator {
    fn drop(&mut self) {
        if let Some((_, task)) = self.server.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

/// Records `call`, or `Unauthorized` and returns `false` when the token is wrong.
fn authorize(shared: &Shared, headers: &HeaderMap, call: Call) -> bool {
    let expected = format!("Bearer {}", shared.token.lock().unwrap());
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    shared
        .calls
        .lock()
        .unwrap()
        .push(if ok { call } else { Call::Unauthorized });
    ok
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or invalid bearer token",
    )
}

async fn routes(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorize(&shared, &headers, Call::Routes) {
        return unauthorized();
    }
    Json(shared.routes.lock().unwrap().clone()).into_response()
}

async fn wake(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let branch = format!("{ns}/{name}");
    if !authorize(&shared, &headers, Call::Wake(branch.clone())) {
        return unauthorized();
    }
    let Some(compute) = &shared.compute else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_compute",
            &format!("branch {branch} has no compute in this test"),
        );
    };
    match compute.wake(&branch).await {
        Ok(addr) => Json(json!({"address": addr.to_string()})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "wake_failed", &e),
    }
}

async fn suspend(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let branch = format!("{ns}/{name}");
    if !authorize(&shared, &headers, Call::Suspend(branch.clone())) {
        return unauthorized();
    }
    if let Some(compute) = &shared.compute {
        if let Err(e) = compute.suspend(&branch).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "suspend_failed", &e);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
