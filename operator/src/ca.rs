//! The CA that signs the proxy's per-branch TLS certificates: a `kubernetes.io/tls`
//! Secret in the operator's namespace (`tls.crt`, `tls.key`, `ca.crt`, the layout
//! cert-manager writes for a CA Certificate), created at start-up when missing. The
//! proxy mounts it; its public certificate goes into every branch's connection Secret
//! as `ca.crt`, for clients' `sslrootcert`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use ramify_proxy::CertificateAuthority;

/// Why the CA could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot generate the CA: {0}")]
    Generate(#[source] ramify_proxy::TlsError),
    #[error(
        "Secret {secret} is not a usable CA: {reason}; it needs keys tls.crt and tls.key \
         (PEM, a CA certificate and its private key), or delete it to have the operator \
         create one"
    )]
    Malformed { secret: String, reason: String },
}

/// The CA certificate (PEM) of Secret `name`, creating the Secret with a new CA when it
/// does not exist. The key is checked to belong with a usable certificate but not kept.
pub async fn ensure(client: Client, namespace: &str, name: &str) -> Result<String, CaError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret_name = format!("{namespace}/{name}");
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await? {
            return ca_cert_of(&s).map_err(|reason| CaError::Malformed {
                secret: secret_name.clone(),
                reason,
            });
        }
        let ca = CertificateAuthority::generate(&format!("Ramify CA ({namespace})"))
            .map_err(CaError::Generate)?;
        match api
            .create(&PostParams::default(), &ca_secret(namespace, name, &ca))
            .await
        {
            Ok(_) => return Ok(ca.cert_pem().to_string()),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaError::Malformed {
        secret: secret_name,
        reason: "it was created and deleted again while the operator started".to_string(),
    })
}

/// The CA certificate (PEM) of Secret `name` once cert-manager has issued it (the chart's
/// `tls.issuerRef` makes a CA Certificate into that Secret): the operator never creates
/// it then, or cert-manager and the operator would each write their own CA. Waits with a
/// log line every 30 s.
pub async fn wait_issued(client: Client, namespace: &str, name: &str) -> Result<String, CaError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let started = std::time::Instant::now();
    let mut told = std::time::Duration::ZERO;
    loop {
        if let Some(s) = api.get_opt(name).await? {
            if s.data.as_ref().is_some_and(|d| d.contains_key("tls.crt")) {
                return ca_cert_of(&s).map_err(|reason| CaError::Malformed {
                    secret: format!("{namespace}/{name}"),
                    reason,
                });
            }
        }
        if started.elapsed() >= told {
            tracing::info!(
                secret = %format!("{namespace}/{name}"),
                "waiting for cert-manager to issue the TLS CA (Certificate ramify-ca, the chart's tls.issuerRef)"
            );
            told += std::time::Duration::from_secs(30);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The Secret holding a new CA.
pub fn ca_secret(namespace: &str, name: &str, ca: &CertificateAuthority) -> Secret {
    Secret {
        metadata: crate::token::secret_meta(namespace, name),
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ca.cert_pem().to_string()),
            ("tls.key".to_string(), ca.key_pem()),
            ("ca.crt".to_string(), ca.cert_pem().to_string()),
        ])),
        ..Default::default()
    }
}

/// The CA certificate of an existing Secret, after checking that `tls.crt` and
/// `tls.key` make a CA the proxy can sign with.
pub fn ca_cert_of(secret: &Secret) -> Result<String, String> {
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| format!("key {k} is missing or not text"))
    };
    let (cert, private) = (key("tls.crt")?, key("tls.key")?);
    let ca = CertificateAuthority::from_pem(&cert, &private).map_err(|e| e.to_string())?;
    Ok(ca.cert_pem().to_string())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    /// What the API server returns for a Secret written with `string_data`.
    fn stored(mut s: Secret) -> Secret {
        s.data = s.string_data.take().map(|d| {
            d.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect()
        });
        s
    }

    #[test]
    fn a_created_ca_secret_reads_back_as_the_same_ca() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let s = ca_secret("ramify-system", "ramify-ca", &ca);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(ca_cert_of(&stored(s)).unwrap(), ca.cert_pem());
    }

    #[test]
    fn a_secret_without_the_key_is_refused() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let mut s = stored(ca_secret("ns", "ramify-ca", &ca));
        s.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(
            ca_cert_of(&s).unwrap_err(),
            "key tls.key is missing or not text"
        );
    }
}
