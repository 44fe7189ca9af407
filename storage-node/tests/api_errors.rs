//! Acceptance 7: every error code of the API, from garbage JSON to targets outside the
//! restore window, answered as JSON `{code, message}` without hurting the node.

mod common;

use common::*;
use ramify_api::{At, CreateTimeline, Lsn, TimelineId};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn call(
    env: &Env,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method, format!("{}{}", env.node.url(), path))
        .bearer_auth(env.node.token().expose());
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, v)
}

/// Asserts an error answer: status, code, and a message containing `needle`.
async fn expect_err(
    env: &Env,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
    status: u16,
    code: &str,
    needle: &str,
) {
    let (s, v) = call(env, method.clone(), path, body).await;
    assert_eq!(s.as_u16(), status, "{method} {path} {body:?} → {s} {v}");
    assert_eq!(v["code"], code, "{method} {path} {body:?} → {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "{method} {path} {body:?}: message {msg:?} lacks {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_answered_as_json() {
    use reqwest::Method as M;
    let env = Env::new(2 << 30, &[]).await;

    // 400: malformed input.
    for (body, needle) in [
        ("{", "invalid JSON"),
        ("not json", "invalid JSON"),
        ("[]", "invalid JSON"),
        (r#"{"parent": "not-a-uuid"}"#, "invalid JSON"),
        (r#"{"parnet": null}"#, "unknown field"),
        (r#"{"at": "latest"}"#, "only valid with \"parent\""),
    ] {
        expect_err(
            &env,
            M::POST,
            "/v1/timelines",
            Some(body),
            400,
            "invalid_request",
            needle,
        )
        .await;
    }
    // A new root, never started (a cluster already: the node ran initdb).
    let empty = env
        .client
        .create_timeline(&CreateTimeline::default())
        .await
        .unwrap()
        .value;
    for lsn in ["0/ZZ", "-1", "", "1/2/3", "123456789/0"] {
        let body = json!({"parent": empty.id, "at": {"lsn": lsn}}).to_string();
        expect_err(
            &env,
            M::POST,
            "/v1/timelines",
            Some(&body),
            400,
            "invalid_request",
            "like 0/16B3748",
        )
        .await;
    }
    let body = json!({"parent": empty.id, "at": {"time": "yesterday"}}).to_string();
    expect_err(
        &env,
        M::POST,
        "/v1/timelines",
        Some(&body),
        400,
        "invalid_request",
        "RFC 3339",
    )
    .await;
    expect_err(
        &env,
        M::GET,
        "/v1/timelines/xyz",
        None,
        400,
        "invalid_request",
        "UUID",
    )
    .await;
    expect_err(
        &env,
        M::POST,
        &format!("/v1/timelines/{}/snapshots", empty.id),
        Some(r#"{"name":"Bad/Name"}"#),
        400,
        "invalid_request",
        "invalid snapshot name",
    )
    .await;
    expect_err(
        &env,
        M::DELETE,
        &format!("/v1/timelines/{}?force=maybe", empty.id),
        None,
        400,
        "invalid_request",
        "force=true",
    )
    .await;

    // 404: unknown things.
    let nobody = TimelineId::new_v4();
    expect_err(
        &env,
        M::GET,
        &format!("/v1/timelines/{nobody}"),
        None,
        404,
        "not_found",
        "does not exist",
    )
    .await;
    expect_err(
        &env,
        M::DELETE,
        &format!("/v1/timelines/{nobody}"),
        None,
        404,
        "not_found",
        "does not exist",
    )
    .await;
    let body = json!({"parent": nobody}).to_string();
    expect_err(
        &env,
        M::POST,
        "/v1/timelines",
        Some(&body),
        404,
        "not_found",
        "parent timeline",
    )
    .await;
    expect_err(
        &env,
        M::GET,
        "/v2/anything",
        None,
        404,
        "not_found",
        "no such endpoint",
    )
    .await;

    // 422: a new root's history starts at its creation, and a point before it is refused
    // with the range (it used to be a 409: a new root had no data at all).
    let body = json!({"parent": empty.id, "at": {"lsn": "0/1"}}).to_string();
    expect_err(
        &env,
        M::POST,
        "/v1/timelines",
        Some(&body),
        422,
        "out_of_range",
        "is before the restore window",
    )
    .await;

    // 409: state conflicts.
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t AS SELECT 1 AS x").await.unwrap();
    expect_err(
        &env,
        M::DELETE,
        &format!("/v1/timelines/{}", root.id),
        None,
        409,
        "conflict",
        "running compute",
    )
    .await;
    env.client.create_snapshot(root.id, "s1").await.unwrap();
    expect_err(
        &env,
        M::POST,
        &format!("/v1/timelines/{}/snapshots", root.id),
        Some(r#"{"name":"s1"}"#),
        409,
        "conflict",
        "already has",
    )
    .await;
    expect_err(
        &env,
        M::DELETE,
        &format!("/v1/timelines/{}/snapshots/nope", root.id),
        None,
        404,
        "not_found",
        "no snapshot",
    )
    .await;

    // Idempotent create: same id and body → 200 with the same timeline; different body → 409.
    let id = TimelineId::new_v4();
    let req = CreateTimeline {
        id: Some(id),
        parent: Some(root.id),
        at: Some(At::Latest),
        follow: None,
        backup: None,
        from_backup: None,
    };
    let first = env.client.create_timeline(&req).await.unwrap();
    assert!(first.created);
    let again = env.client.create_timeline(&req).await.unwrap();
    assert!(!again.created, "a retry answers 200, not 201");
    assert_eq!(again.value.id, id);
    assert_eq!(again.value.fork_lsn, first.value.fork_lsn);
    let other = json!({"id": id, "parent": root.id, "at": {"snapshot": "s1"}}).to_string();
    expect_err(
        &env,
        M::POST,
        "/v1/timelines",
        Some(&other),
        409,
        "conflict",
        "different request",
    )
    .await;

    // 422: targets outside the valid range name the range.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for (at, needle) in [
        (json!({"lsn": "99999999/0"}), "after the last flushed LSN"),
        (json!({"lsn": "0/1"}), "before the restore window"),
        (json!({"time": future}), "in the future"),
        (json!({"time": "2001-01-01T00:00:00Z"}), "valid range"),
    ] {
        let body = json!({"parent": root.id, "at": at}).to_string();
        expect_err(
            &env,
            M::POST,
            "/v1/timelines",
            Some(&body),
            422,
            "out_of_range",
            needle,
        )
        .await;
    }
    // A child's own fork point bounds its history.
    let child = first.value;
    let body =
        json!({"parent": child.id, "at": {"lsn": Lsn(child.fork_lsn.unwrap().0 - 1).to_string()}})
            .to_string();
    expect_err(
        &env,
        M::POST,
        "/v1/timelines",
        Some(&body),
        422,
        "out_of_range",
        "before the restore window",
    )
    .await;

    // The node is unharmed: healthy, and every timeline is still listed.
    let (s, _) = call(&env, M::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    let listed = env.client.list_timelines().await.unwrap();
    assert_eq!(listed.len(), 3);
    let metrics = reqwest::get(format!("{}/metrics", env.node.metrics_url()))
        .await
        .expect("metrics listener");
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.unwrap_or_default();
    assert!(
        metrics.contains("ramify_storage_timelines 3"),
        "metrics are Prometheus text counting the timelines: {metrics}"
    );
    let st = env.client.status().await.unwrap();
    assert_eq!(st.timelines, 3);
    if env.reflink() {
        assert_eq!(st.clone_method, ramify_api::CloneMethod::Reflink);
        assert_eq!(st.filesystem, "xfs");
    }
}
