//! The storage API's credential on the real `ramify-storage` binary: a caller without the
//! bearer token (a curl from another Pod or process) is refused and changes nothing, the
//! token's holder gets through, and the node will not start without a private token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ramify_api::CreateTimeline;
use ramify_testkit::{Scratch, StorageNodeProcess};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_ramify-storage");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_are_refused_and_the_token_holder_gets_through() {
    let scratch = Scratch::plain().unwrap();
    let node = StorageNodeProcess::start(Path::new(BIN), &scratch.path().join("data"), &[])
        .await
        .unwrap();
    let client = node.client();
    let root = client
        .create_timeline(&CreateTimeline::default())
        .await
        .expect("the token's holder creates a timeline")
        .value;

    // What `curl` would do from anywhere that reaches the port.
    let http = reqwest::Client::new();
    let attacks = [
        (reqwest::Method::GET, "/v1/timelines".to_string(), None),
        (
            reqwest::Method::PUT,
            format!("/v1/timelines/{}/credentials", root.id),
            Some(
                r#"{"user":"intruder","password":"Intruder-password-0123456789","database":"app"}"#,
            ),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/timelines/{}?force=true", root.id),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/timelines".to_string(),
            Some(r#"{}"#),
        ),
    ];
    for (method, path, body) in attacks {
        for auth in [None, Some("Bearer guessed-guessed-guessed-guessed-guessed")] {
            let mut req = http.request(method.clone(), format!("{}{path}", node.url()));
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert!(resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            let text = resp.text().await.unwrap();
            assert!(text.contains(r#""code":"unauthorized""#), "{text}");
            assert!(
                text.contains("--token-file"),
                "says where the token is: {text}"
            );
            assert!(
                !text.contains(&root.id.to_string()),
                "leaks a timeline: {text}"
            );
        }
    }
    // Nothing changed: the one timeline is still there, no new one was made.
    let listed = client.list_timelines().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![root.id]
    );
    // The same raw request with the token is accepted.
    let resp = http
        .get(format!("{}/v1/timelines", node.url()))
        .bearer_auth(node.token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A client built without the token is refused with a clear error.
    let e = ramify_api::StorageClient::new(node.url())
        .list_timelines()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"), "{e}");
    // Health stays open for probes; metrics live on their own port only.
    assert_eq!(
        reqwest::get(format!("{}/healthz", node.url()))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let m = reqwest::get(format!("{}/metrics", node.metrics_url()))
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    assert!(m
        .text()
        .await
        .unwrap()
        .contains("ramify_storage_timelines 1"));
    let m = http
        .get(format!("{}/metrics", node.url()))
        .bearer_auth(node.token().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::NOT_FOUND);
}

/// Runs the binary to completion with a bad token setup; returns its stderr.
fn refused_start(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RAMIFY_STORAGE_TOKEN")
        .env_remove("RAMIFY_STORAGE_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without a usable token");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_node_does_not_start_without_a_private_token() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused_start(dir.path(), &[]);
    assert!(
        err.contains("no API token") && err.contains("--token-file"),
        "{err}"
    );

    let file = dir.path().join("token");
    std::fs::write(&file, "0123456789abcdefghijklmnopqrstuvwxyz\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused_start(dir.path(), &["--token-file", file.to_str().unwrap()]);
    assert!(err.contains("mode 0644"), "{err}");

    std::fs::write(&file, "short\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused_start(dir.path(), &["--token-file", file.to_str().unwrap()]);
    assert!(err.contains("at least 32"), "{err}");
}
