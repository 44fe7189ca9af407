//! The proxy's one error type, and how each error is told to a Postgres client.

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::{
    SQLSTATE_CANNOT_CONNECT_NOW, SQLSTATE_CONNECTION_FAILURE, SQLSTATE_FEATURE_NOT_SUPPORTED,
    SQLSTATE_INVALID_AUTHORIZATION, SQLSTATE_PROTOCOL_VIOLATION, SQLSTATE_TOO_MANY_CONNECTIONS,
};
use crate::tls::TlsError;

/// Everything that can go wrong in the proxy; variant names double as log/metric labels.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `add_route` for a branch that already has a route.
    #[error("branch \"{branch}\" already has a route (remove it first)")]
    RouteExists {
        /// The branch.
        branch: String,
    },
    /// The route's listener could not be bound.
    #[error("could not listen on {addr} for branch \"{branch}\": {source}")]
    Bind {
        /// The branch.
        branch: String,
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The threads that carry client connections could not be started.
    #[error("cannot start the proxy's connection threads: {0}")]
    IoRuntime(#[source] std::io::Error),
    /// The client sent no complete startup packet within `startup_timeout`.
    #[error("no startup packet within {timeout:?}")]
    StartupTimeout {
        /// The configured limit.
        timeout: Duration,
    },
    /// The client broke the startup protocol (or the server its message framing).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The client speaks a protocol version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: the proxy supports 3.x")]
    UnsupportedProtocol {
        /// Major version requested.
        major: u32,
        /// Minor version requested.
        minor: u32,
    },
    /// The control plane could not wake the branch's compute.
    #[error("branch \"{branch}\" is unavailable: {reason}")]
    WakeFailed {
        /// The branch.
        branch: String,
        /// The control plane's explanation.
        reason: String,
    },
    /// The compute was not ready (or still being suspended) within `wake_timeout`.
    #[error(
        "branch \"{branch}\" is unavailable: its compute did not become ready within {timeout:?}"
    )]
    WakeTimeout {
        /// The branch.
        branch: String,
        /// The configured limit.
        timeout: Duration,
    },
    /// The compute was woken but its Postgres did not accept the connection.
    #[error(
        "branch \"{branch}\" is unavailable: could not connect to its compute at {addr}: {source}"
    )]
    BackendConnect {
        /// The branch.
        branch: String,
        /// The address `wake` returned.
        addr: SocketAddr,
        /// The OS error (or a timeout).
        #[source]
        source: std::io::Error,
    },
    /// The route requires TLS and the client sent its `StartupMessage` in plaintext.
    #[error(
        "branch \"{branch}\" requires TLS: connect with sslmode=require, or with \
         sslmode=verify-full and sslrootcert=<the Ramify CA certificate, ca.crt>"
    )]
    TlsRequired {
        /// The branch.
        branch: String,
    },
    /// The client asked for TLS but the handshake failed (wrong protocol version, the
    /// client rejected the certificate, the connection dropped).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    /// No server certificate could be made for the branch (`add_route`).
    #[error("branch \"{branch}\" cannot serve TLS: {source}")]
    Certificate {
        /// The branch.
        branch: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The branch already has `max_connections_per_branch` client connections open.
    #[error(
        "branch \"{branch}\" has too many connections: the proxy allows {limit} concurrent \
         connections per branch; close idle ones or use a connection pool"
    )]
    TooManyBranchConnections {
        /// The branch.
        branch: String,
        /// The configured cap.
        limit: usize,
    },
    /// The proxy already has `max_connections` client connections open.
    #[error(
        "the proxy has too many connections: it allows {limit} concurrent connections in \
         total; try again later"
    )]
    TooManyConnections {
        /// The configured cap.
        limit: usize,
    },
    /// Reading from or writing to the client failed.
    #[error("client connection failed: {0}")]
    ClientIo(#[source] std::io::Error),
    /// Reading from or writing to the compute failed.
    #[error("compute connection failed: {0}")]
    BackendIo(#[source] std::io::Error),
}

impl ProxyError {
    /// The SQLSTATE a client is sent for this error, if it deserves an `ErrorResponse`
    /// (I/O failures and timeouts on a silent client do not: nobody is listening).
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            Self::WakeFailed { .. } | Self::WakeTimeout { .. } => Some(SQLSTATE_CANNOT_CONNECT_NOW),
            Self::BackendConnect { .. } => Some(SQLSTATE_CONNECTION_FAILURE),
            Self::Protocol { .. } => Some(SQLSTATE_PROTOCOL_VIOLATION),
            Self::UnsupportedProtocol { .. } => Some(SQLSTATE_FEATURE_NOT_SUPPORTED),
            Self::TlsRequired { .. } => Some(SQLSTATE_INVALID_AUTHORIZATION),
            Self::TooManyBranchConnections { .. } | Self::TooManyConnections { .. } => {
                Some(SQLSTATE_TOO_MANY_CONNECTIONS)
            }
            Self::RouteExists { .. }
            | Self::Bind { .. }
            | Self::IoRuntime(_)
            | Self::StartupTimeout { .. }
            | Self::TlsHandshake(_)
            | Self::Certificate { .. }
            | Self::ClientIo(_)
            | Self::BackendIo(_) => None,
        }
    }
}
