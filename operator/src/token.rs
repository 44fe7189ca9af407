//! The proxy's bearer token: a Secret in the storage namespace that the operator creates
//! when missing and the proxy reads through its environment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::build::FIELD_MANAGER;

/// Why the token could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot generate a token: {0}")]
    Random(String),
    #[error("Secret {0} has no usable `token` key")]
    Malformed(String),
}

/// The token in Secret `name` (key `token`), creating the Secret with a fresh random
/// token when it does not exist.
pub async fn ensure(client: Client, namespace: &str, name: &str) -> Result<String, TokenError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await? {
            return s
                .data
                .and_then(|d| d.get("token").cloned())
                .and_then(|t| String::from_utf8(t.0).ok())
                .filter(|t| t.len() >= 32)
                .ok_or_else(|| TokenError::Malformed(format!("{namespace}/{name}")));
        }
        let random = |_| {
            ramify_lifecycle::password::generate().map_err(|e| TokenError::Random(e.to_string()))
        };
        let token = format!("{}{}", random(())?, random(())?);
        let secret = Secret {
            metadata: secret_meta(namespace, name),
            string_data: Some(BTreeMap::from([("token".to_string(), token.clone())])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(token),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TokenError::Malformed(format!("{namespace}/{name}")))
}

/// Name, namespace and labels of a Secret the operator creates for itself in its own
/// namespace (the proxy and storage tokens, the TLS CA).
pub fn secret_meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "ramify".to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                FIELD_MANAGER.to_string(),
            ),
        ])),
        ..Default::default()
    }
}
