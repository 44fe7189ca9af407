//! The HTTP API (`/v1`): JSON in and out, every error as `{code, message}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use ramify_api::{
    ApiError, ApiToken, CreateRestorePoint, CreateSnapshot, CreateTimeline, Credentials, TimelineId,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::node::{Node, NodeError};

/// Shared state of the handlers.
pub type AppState = Arc<Node>;

/// An error as the API returns it.
pub struct HttpError(StatusCode, ApiError);

impl HttpError {
    fn bad(message: impl Into<String>) -> HttpError {
        HttpError(
            StatusCode::BAD_REQUEST,
            ApiError {
                code: "invalid_request".into(),
                message: message.into(),
            },
        )
    }
}

impl From<NodeError> for HttpError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) | NodeError::NotStarted(_) => StatusCode::CONFLICT,
            NodeError::OutOfRange(_) => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::Source {
                unreachable: true, ..
            } => StatusCode::BAD_GATEWAY,
            NodeError::Source { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ if e.code() == "insufficient_storage" => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        HttpError(
            status,
            ApiError {
                code: e.code().into(),
                message: e.to_string(),
            },
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type Result<T> = std::result::Result<T, HttpError>;

/// Parses a request body, which must be a JSON object (an empty body counts as `{}`).
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    let bad = |e: &dyn std::fmt::Display| HttpError::bad(format!("invalid JSON body: {e}"));
    let value: serde_json::Value = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| bad(&e))?
    };
    if !value.is_object() {
        return Err(bad(&"expected a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| bad(&e))
}

fn parse_id(s: &str) -> Result<TimelineId> {
    s.parse()
        .map_err(|_| HttpError::bad(format!("invalid timeline id {s:?}: expected a UUID")))
}

/// The router of the control API (`/v1`): every route but `/healthz` answers 401 unless
/// the request carries `Authorization: Bearer <token>`. `token_source` tells a refused
/// caller where the token is kept (a flag, a file, the daemon file).
pub fn router(node: AppState, token: ApiToken, token_source: &str) -> Router {
    let auth = Arc::new(Auth {
        token,
        source: token_source.to_string(),
    });
    Router::new()
        .route("/v1/timelines", get(list).post(create))
        .route("/v1/timelines/{id}", get(get_one).delete(delete_one))
        .route("/v1/timelines/{id}/credentials", put(set_credentials))
        .route(
            "/v1/timelines/{id}/restore-points",
            axum::routing::post(create_restore_point),
        )
        .route("/v1/timelines/{id}/seal", axum::routing::post(seal))
        .route(
            "/v1/timelines/{id}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/timelines/{id}/snapshots/{name}",
            delete(delete_snapshot),
        )
        .route("/v1/status", get(status))
        .route("/v1/copies", get(copies))
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                ApiError {
                    code: "not_found".into(),
                    message: "no such endpoint; see /v1/timelines, /v1/status, /healthz (/metrics is served on the metrics listener)"
                        .into(),
                },
            )
        })
        // Also guards the fallback: an unauthenticated caller learns nothing, not even
        // which paths exist.
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .route("/healthz", get(healthz))
        .with_state(node)
}

/// The router of the metrics listener: `/metrics` (Prometheus text), `/healthz` and
/// `/v1/status` (the node's filesystem and counts, what `kubectl ramify status` shows), no
/// credential. It reveals counters and the node's space, never a timeline or a route
/// that changes anything, so a monitoring peer can be let in without the API token.
pub fn metrics_router(node: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                ApiError {
                    code: "not_found".into(),
                    message: "the metrics listener serves only /metrics, /v1/status and /healthz; the control API is on --listen, with a token".into(),
                },
            )
        })
        .with_state(node)
}

async fn healthz() -> &'static str {
    "ok"
}

/// The control API's credential and where it comes from.
struct Auth {
    token: ApiToken,
    source: String,
}

async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if auth.token.matches_header(presented) {
        return next.run(req).await;
    }
    let why = if presented.is_some() {
        "wrong bearer token"
    } else {
        "missing Authorization header"
    };
    tracing::warn!(method = %req.method(), path = %req.uri().path(), why, "refused an unauthenticated storage API call");
    let mut resp = HttpError(
        StatusCode::UNAUTHORIZED,
        ApiError {
            code: "unauthorized".into(),
            message: format!(
                "{why}: the storage API needs `Authorization: Bearer <token>`, the token being {}",
                auth.source
            ),
        },
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"ramify-storage\""),
    );
    resp
}

async fn create(State(node): State<AppState>, body: Bytes) -> Result<Response> {
    let req: CreateTimeline = parse_json(&body)?;
    // In a task of its own: axum drops this handler when the client goes away (an
    // operator restarting mid-fork), and a creation cut off at an await would leave a
    // half-made timeline behind. The task runs to the end; a retry with the same id waits
    // for it on the id's lock and answers with what it made.
    let (info, created) = tokio::spawn(async move { node.create(req).await })
        .await
        .map_err(NodeError::from)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn list(
    State(node): State<AppState>,
    q: std::result::Result<Query<SizesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let list = match Sizes::of(q)? {
        Sizes::Fresh => node.list_fresh().await?,
        Sizes::Last | Sizes::Without => node.list().await?,
    };
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct SizesQuery {
    #[serde(default)]
    sizes: Option<String>,
}

/// Which space figures a read returns (`?sizes=`).
enum Sizes {
    /// `true` (the default): those of the node's last accounting pass.
    Last,
    /// `fresh`: wait for a pass that started after the call.
    Fresh,
    /// `false`: none (0), without looking (what a compute start needs).
    Without,
}

impl Sizes {
    fn of(
        q: std::result::Result<Query<SizesQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Sizes> {
        const VALID: &str = "use sizes=true (the last measurement, the default), sizes=fresh \
                             (wait for a measurement started after the call) or sizes=false (none)";
        let Query(q) = q.map_err(|e| HttpError::bad(format!("invalid query: {e}; {VALID}")))?;
        match q.sizes.as_deref() {
            None | Some("true") => Ok(Sizes::Last),
            Some("fresh") => Ok(Sizes::Fresh),
            Some("false") => Ok(Sizes::Without),
            Some(other) => Err(HttpError::bad(format!("invalid sizes={other:?}: {VALID}"))),
        }
    }
}

async fn get_one(
    State(node): State<AppState>,
    Path(id): Path<String>,
    q: std::result::Result<Query<SizesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let info = match Sizes::of(q)? {
        Sizes::Last => node.get(id).await?,
        Sizes::Fresh => node.get_fresh(id).await?,
        Sizes::Without => node.get_without_sizes(id).await?,
    };
    Ok(Json(info).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_one(
    State(node): State<AppState>,
    Path(id): Path<String>,
    q: std::result::Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| {
        HttpError::bad(format!(
            "invalid query: {e}; use ?force=true or ?force=false"
        ))
    })?;
    node.delete(parse_id(&id)?, q.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_snapshot(
    State(node): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let req: CreateSnapshot = parse_json(&body)?;
    let s = node.create_snapshot(id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

async fn seal(State(node): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(node.seal(parse_id(&id)?).await?).into_response())
}

async fn create_restore_point(
    State(node): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let req: CreateRestorePoint = parse_json(&body)?;
    let p = node.create_restore_point(id, &req).await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

async fn set_credentials(
    State(node): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let creds: Credentials = parse_json(&body)?;
    node.set_credentials(id, &creds).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_snapshots(State(node): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(node.list_snapshots(parse_id(&id)?)?).into_response())
}

async fn delete_snapshot(
    State(node): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    node.delete_snapshot(parse_id(&id)?, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(State(node): State<AppState>) -> Result<Response> {
    Ok(Json(node.status()?).into_response())
}

async fn copies(State(node): State<AppState>) -> Json<Vec<ramify_api::CopyProgress>> {
    Json(node.copies())
}

async fn metrics(State(node): State<AppState>) -> Result<Response> {
    let st = node.status()?;
    let gauges = [
        (
            "ramify_storage_timelines",
            "Timelines on this node.",
            st.timelines as u64,
        ),
        (
            "ramify_storage_capacity_bytes",
            "Size of the data filesystem.",
            st.capacity_bytes,
        ),
        (
            "ramify_storage_used_bytes",
            "Bytes used on the data filesystem.",
            st.used_bytes,
        ),
        (
            "ramify_storage_reflink",
            "1 when clones are reflinks, 0 for full copies.",
            (st.clone_method == ramify_api::CloneMethod::Reflink) as u64,
        ),
    ];
    let mut gauges = gauges.to_vec();
    // Absent until the first accounting pass, rather than a misleading 0.
    if let Some(space) = node.space_totals() {
        gauges.extend([
            (
                "ramify_storage_logical_bytes",
                "Sum of the timelines' logical sizes (their PGDATA files), as of the last accounting pass.",
                space.logical,
            ),
            (
                "ramify_storage_exclusive_bytes",
                "Sum of the bytes each timeline alone references (what deleting it frees), as of the last accounting pass.",
                space.exclusive,
            ),
            (
                "ramify_storage_history_bytes",
                "The part of the exclusive bytes only history (WAL archive, snapshots) references, as of the last accounting pass.",
                space.history,
            ),
        ]);
    }
    let mut text = node.metrics().render(&gauges);
    text.push_str(&crate::metrics::render_followers(
        &node.follower_samples().await?,
    ));
    text.push_str(&crate::metrics::render_backups(&node.backup_samples()?));
    Ok(text.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::node::NodeConfig;
    use std::time::Duration;

    const TOKEN: &str = "test-token-0123456789-abcdefghijklmnop";
    const NOBODY: &str = "00000000-0000-4000-8000-000000000000";

    /// Every route of the control API with a method it serves.
    fn routes() -> Vec<(reqwest::Method, String)> {
        use reqwest::Method as M;
        let tl = format!("/v1/timelines/{NOBODY}");
        vec![
            (M::GET, "/v1/timelines".into()),
            (M::POST, "/v1/timelines".into()),
            (M::GET, tl.clone()),
            (M::DELETE, format!("{tl}?force=true")),
            (M::PUT, format!("{tl}/credentials")),
            (M::POST, format!("{tl}/restore-points")),
            (M::POST, format!("{tl}/seal")),
            (M::GET, format!("{tl}/snapshots")),
            (M::POST, format!("{tl}/snapshots")),
            (M::DELETE, format!("{tl}/snapshots/s1")),
            (M::GET, "/v1/status".into()),
        ]
    }

    struct Served {
        _dir: tempfile::TempDir,
        api: String,
        metrics: String,
        http: reqwest::Client,
    }

    async fn serve() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(
            Node::open(
                NodeConfig {
                    data_dir: dir.path().join("data"),
                    restore_window: Duration::from_secs(3600),
                    snapshot_interval: Duration::ZERO,
                    snapshot_wal_bytes: 0,
                    waldump: None,
                    initdb: None,
                },
                Arc::new(Metrics::default()),
            )
            .unwrap(),
        );
        let token = ApiToken::new(TOKEN, "test").unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let urls = (
            format!("http://{}", api.local_addr().unwrap()),
            format!("http://{}", metrics.local_addr().unwrap()),
        );
        let r = router(node.clone(), token, "in the test's constant");
        tokio::spawn(async move { axum::serve(api, r).await });
        let m = metrics_router(node);
        tokio::spawn(async move { axum::serve(metrics, m).await });
        Served {
            _dir: dir,
            api: urls.0,
            metrics: urls.1,
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        s: &Served,
        method: reqwest::Method,
        url: String,
        auth: Option<&str>,
    ) -> (reqwest::StatusCode, Option<String>, serde_json::Value) {
        let mut req = s.http.request(method, url).json(&serde_json::json!({}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, www, json)
    }

    #[tokio::test]
    async fn every_route_refuses_a_missing_or_wrong_token() {
        let s = serve().await;
        let wrong_same_length = format!("Bearer {}", "x".repeat(TOKEN.len()));
        let bad_auth = [
            None,
            Some("Bearer"),
            Some("Bearer wrong"),
            Some(wrong_same_length.as_str()),
            Some("Basic dGVzdDp0ZXN0"),
        ];
        for (method, path) in routes() {
            for auth in bad_auth {
                let (status, www, body) =
                    send(&s, method.clone(), format!("{}{path}", s.api), auth).await;
                assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
                assert!(
                    www.unwrap_or_default().starts_with("Bearer"),
                    "{method} {path}"
                );
                assert_eq!(body["code"], "unauthorized", "{body}");
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .contains("in the test's constant"),
                    "the message says where the token is: {body}"
                );
            }
            // With the token the same request reaches its handler, not the fallback:
            // the list above names real routes.
            let (status, _, body) = send(
                &s,
                method.clone(),
                format!("{}{path}", s.api),
                Some(&format!("Bearer {TOKEN}")),
            )
            .await;
            assert_ne!(status, 401, "{method} {path}: {body}");
            assert!(
                !body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("no such endpoint"),
                "{method} {path} is not a route: {body}"
            );
        }
        // Unknown paths are hidden behind the token too.
        let (status, _, _) = send(&s, reqwest::Method::GET, format!("{}/v2/x", s.api), None).await;
        assert_eq!(status, 401);
    }

    #[tokio::test]
    async fn healthz_is_open_and_metrics_only_on_the_metrics_listener() {
        let s = serve().await;
        for base in [&s.api, &s.metrics] {
            let resp = reqwest::get(format!("{base}/healthz")).await.unwrap();
            assert_eq!(resp.status(), 200, "{base}/healthz");
        }
        let auth = format!("Bearer {TOKEN}");
        // The control port no longer serves /metrics, with or without the token.
        let (status, _, _) =
            send(&s, reqwest::Method::GET, format!("{}/metrics", s.api), None).await;
        assert_eq!(status, 401);
        let (status, _, body) = send(
            &s,
            reqwest::Method::GET,
            format!("{}/metrics", s.api),
            Some(&auth),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        let resp = reqwest::get(format!("{}/metrics", s.metrics))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp
            .text()
            .await
            .unwrap()
            .contains("ramify_storage_timelines "));
        // ...and nothing of the control API but the read-only node status.
        let resp = reqwest::get(format!("{}/v1/status", s.metrics))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        for (method, path) in routes().into_iter().filter(|(_, p)| p != "/v1/status") {
            let (status, _, body) = send(
                &s,
                method.clone(),
                format!("{}{path}", s.metrics),
                Some(&auth),
            )
            .await;
            assert_eq!(
                status, 404,
                "{method} {path} on the metrics listener: {body}"
            );
        }
    }
}
