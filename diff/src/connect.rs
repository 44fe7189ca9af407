//! Connecting to a branch as libpq would, TLS included: branch endpoints speak TLS and
//! `ramify branch connect` hands out `sslmode=verify-full&sslrootcert=…`, which
//! tokio-postgres alone does not understand (it knows `disable`, `prefer` and `require`,
//! and has no TLS of its own). The TLS parameters are taken out of the connection string
//! and served by rustls (the ring provider, as everywhere in Ramify):
//!
//! * `disable`, `allow`, `prefer` (or none): as tokio-postgres does without TLS;
//! * `require`: TLS; the server certificate is checked against `sslrootcert` when one is
//!   given (as libpq does), not checked otherwise;
//! * `verify-ca`, `verify-full`: TLS, the certificate checked against `sslrootcert` and
//!   the host name (`verify-ca` is checked as strictly as `verify-full`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls};

use crate::error::{self, DiffError};

/// What a connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` as written (`verify-full`, `require`, …), if any.
    pub mode: Option<String>,
    /// `sslrootcert`, if any.
    pub root_cert: Option<String>,
}

/// Splits the TLS parameters off a URI (`postgresql://…?sslmode=…&sslrootcert=…`) or a
/// key/value string (`host=… sslmode=…`); returns the rest, which tokio-postgres parses.
pub fn split_tls(conn_str: &str) -> (String, TlsParams) {
    let mut tls = TlsParams {
        mode: None,
        root_cert: None,
    };
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            tls.mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            tls.root_cert = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if conn_str.starts_with("postgres://") || conn_str.starts_with("postgresql://") {
        match conn_str.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, &percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => conn_str.to_owned(),
        }
    } else {
        conn_str
            .split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k.trim(), v.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, tls)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Connects to `conn_str` (libpq key/value or URI, TLS as its `sslmode` says) and drives
/// the connection in the background; errors name the target without its password.
pub async fn connect(conn_str: &str) -> Result<Client, DiffError> {
    let target = error::redact(conn_str);
    let (rest, tls) = split_tls(conn_str);
    let fail = |reason: String| DiffError::Tls {
        target: target.clone(),
        reason,
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|source| DiffError::Connect {
        target: target.clone(),
        source,
    })?;
    let connected = match tls.mode.as_deref() {
        None | Some("disable") | Some("allow") | Some("prefer") => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            spawn(config.connect(NoTls).await)
        }
        Some(mode @ ("require" | "verify-ca" | "verify-full")) => {
            let verify = mode != "require" || tls.root_cert.is_some();
            let client_config = match (&tls.root_cert, verify) {
                (Some(path), true) => trusting(path).map_err(fail)?,
                (None, true) => {
                    return Err(fail(format!(
                        "sslmode={mode} needs sslrootcert=<file> (the CA that signed the server's certificate)"
                    )))
                }
                (_, false) => unverified().map_err(fail)?,
            };
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            spawn(
                config
                    .connect(RustlsConnect {
                        config: Arc::new(client_config),
                        host: None,
                    })
                    .await,
            )
        }
        Some(other) => {
            return Err(fail(format!(
                "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            )))
        }
    };
    connected.map_err(|source| DiffError::Connect { target, source })
}

fn spawn<S>(
    r: Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, S>,
        ),
        tokio_postgres::Error,
    >,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = r?;
    tokio::spawn(async move {
        // Errors surface on the client's next call; a closed connection is normal.
        let _ = connection.await;
    });
    Ok(client)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the CA certificates in the PEM file `path`.
fn trusting(path: &str) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
    trusting_pem(&pem).map_err(|e| format!("sslrootcert {path}: {e}"))
}

/// A client configuration trusting the CA certificates in `pem`.
pub fn trusting_pem(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("not PEM: {e}"))?;
        roots.add(der).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".to_string());
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `sslmode=require` without a root certificate: encrypted, the certificate unchecked
/// (libpq's meaning of `require`); the handshake's signatures are still verified.
fn unverified() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCertificate(provider)));
    Ok(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook over rustls (the server name checked is the host connected
/// to).
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    host: Option<String>,
}

impl RustlsConnect {
    /// A connector with this client configuration (e.g. [`trusting_pem`]).
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            host: None,
        }
    }
}

impl MakeTlsConnect<tokio_postgres::Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self, io::Error> {
        Ok(Self {
            config: Arc::clone(&self.config),
            host: Some(domain.to_owned()),
        })
    }
}

impl TlsConnect<tokio_postgres::Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let host = self.host.unwrap_or_else(|| "localhost".to_owned());
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream tokio-postgres can drive.
pub struct RustlsStream(tokio_rustls::client::TlsStream<tokio_postgres::Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // TLS ends at Ramify's proxy, not at Postgres: no channel binding end to end.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_split_off_uris_and_key_values() {
        let (rest, tls) = split_tls(
            "postgresql://app:pw@127.0.0.1:4000/app?sslmode=verify-full&sslrootcert=/d/tls/ca.crt",
        );
        assert_eq!(rest, "postgresql://app:pw@127.0.0.1:4000/app");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/d/tls/ca.crt"));
        let (rest, tls) = split_tls(
            "postgresql://a@h/db?application_name=x&sslrootcert=%2Fd%2Fca.crt&sslmode=require",
        );
        assert_eq!(rest, "postgresql://a@h/db?application_name=x");
        assert_eq!(tls.root_cert.as_deref(), Some("/d/ca.crt"));
        let (rest, tls) = split_tls("host=h port=5 sslmode=verify-full sslrootcert=/ca user=u");
        assert_eq!(rest, "host=h port=5 user=u");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        let (rest, tls) = split_tls("postgresql://a@h/db");
        assert_eq!((rest.as_str(), tls.mode), ("postgresql://a@h/db", None));
    }

    #[tokio::test]
    async fn verify_full_without_a_root_certificate_says_what_it_needs() {
        let err = connect("postgresql://a@127.0.0.1:1/db?sslmode=verify-full")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs sslrootcert"), "{err}");
        let err = connect("postgresql://a@127.0.0.1:1/db?sslmode=sometimes")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown sslmode \"sometimes\""), "{err}");
    }
}
