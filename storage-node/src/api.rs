//! The HTTP API (`/v1`): JSON in and out, every error as `{code, message}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use ramify_api::{
    ApiError, CreateRestorePoint, CreateSnapshot, CreateTimeline, Credentials, TimelineId,
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
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::OutOfRange(_) => StatusCode::UNPROCESSABLE_ENTITY,
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

/// The router of the whole API.
pub fn router(node: AppState) -> Router {
    Router::new()
        .route("/v1/timelines", get(list).post(create))
        .route("/v1/timelines/{id}", get(get_one).delete(delete_one))
        .route("/v1/timelines/{id}/credentials", put(set_credentials))
        .route(
            "/v1/timelines/{id}/restore-points",
            axum::routing::post(create_restore_point),
        )
        .route(
            "/v1/timelines/{id}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/timelines/{id}/snapshots/{name}",
            delete(delete_snapshot),
        )
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                ApiError {
                    code: "not_found".into(),
                    message: "no such endpoint; see /v1/timelines, /v1/status, /metrics, /healthz"
                        .into(),
                },
            )
        })
        .with_state(node)
}

async fn create(State(node): State<AppState>, body: Bytes) -> Result<Response> {
    let req: CreateTimeline = parse_json(&body)?;
    let (info, created) = node.create(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn list(State(node): State<AppState>) -> Result<Response> {
    Ok(Json(node.list().await?).into_response())
}

async fn get_one(State(node): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(node.get(parse_id(&id)?).await?).into_response())
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
    Ok(node.metrics().render(&gauges).into_response())
}
