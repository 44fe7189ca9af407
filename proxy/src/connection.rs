//! One client connection: startup negotiation, cancel forwarding, wake, splice.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::protocol::{
    self, BackendStartupScanner, CancelKey, FrontendStartup, MAX_STARTUP_PACKET,
};
use crate::route::{LiveRoute, Session};
use crate::ProxyError;

/// What the client asked for in its startup phase.
enum Request {
    Cancel(CancelKey),
    Session {
        packet: Vec<u8>,
        params: Vec<(String, String)>,
    },
}

/// Serves one accepted client until either side closes; errors end up in the log and,
/// where a client can understand them, in an `ErrorResponse`.
pub(crate) async fn serve(route: Arc<LiveRoute>, mut client: TcpStream) {
    // Postgres sets TCP_NODELAY on its sockets; a proxy that does not adds 40 ms stalls.
    let _ = client.set_nodelay(true);
    match handle(&route, &mut client).await {
        Ok(()) => debug!("connection closed"),
        Err(err) => {
            if let Some(code) = err.sqlstate() {
                let msg = protocol::error_response(code, &err.to_string());
                // The client may already be gone; there is nobody else to tell.
                let _ = client.write_all(&msg).await;
                let _ = client.shutdown().await;
            }
            match err {
                ProxyError::ClientIo(_) | ProxyError::StartupTimeout { .. } => {
                    debug!(error = %err, "connection ended")
                }
                ProxyError::WakeFailed { .. }
                | ProxyError::WakeTimeout { .. }
                | ProxyError::BackendConnect { .. }
                | ProxyError::BackendIo(_) => warn!(error = %err, "connection failed"),
                _ => info!(error = %err, "connection rejected"),
            }
        }
    }
}

async fn handle(route: &Arc<LiveRoute>, client: &mut TcpStream) -> Result<(), ProxyError> {
    let timeout = route.opts.startup_timeout;
    let request = tokio::time::timeout(timeout, read_startup(client))
        .await
        .map_err(|_| ProxyError::StartupTimeout { timeout })??;
    match request {
        Request::Cancel(key) => forward_cancel(route, key).await,
        Request::Session { packet, params } => {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| v.as_str())
                    .to_owned()
            };
            debug!(user = %param("user"), database = %param("database"), "startup");
            session(route, client, &packet).await
        }
    }
}

/// Reads packets until a `StartupMessage` or `CancelRequest`, refusing encryption
/// requests with `N` (each at most once, as Postgres does) so `sslmode=prefer` and
/// `gssencmode=prefer` clients go on in plaintext.
async fn read_startup(client: &mut TcpStream) -> Result<Request, ProxyError> {
    let mut ssl_refused = false;
    let mut gss_refused = false;
    let mut body = Vec::with_capacity(128);
    loop {
        let mut len = [0u8; 4];
        client
            .read_exact(&mut len)
            .await
            .map_err(ProxyError::ClientIo)?;
        let body_len = protocol::startup_body_len(len)?;
        debug_assert!(body_len <= MAX_STARTUP_PACKET);
        body.resize(body_len, 0);
        client
            .read_exact(&mut body)
            .await
            .map_err(ProxyError::ClientIo)?;
        match protocol::parse_frontend_startup(&body)? {
            FrontendStartup::SslRequest if !ssl_refused => ssl_refused = true,
            FrontendStartup::GssEncRequest if !gss_refused => gss_refused = true,
            FrontendStartup::SslRequest | FrontendStartup::GssEncRequest => {
                return Err(ProxyError::Protocol {
                    reason: "encryption requested twice".to_owned(),
                })
            }
            FrontendStartup::Cancel(key) => return Ok(Request::Cancel(key)),
            FrontendStartup::Startup { packet, params } => {
                return Ok(Request::Session { packet, params })
            }
        }
        client.write_all(b"N").await.map_err(ProxyError::ClientIo)?;
    }
}

/// Relays a `CancelRequest` to the compute that issued the key; unknown keys are
/// dropped silently, as Postgres does (a reply would help guessing keys).
async fn forward_cancel(route: &LiveRoute, key: CancelKey) -> Result<(), ProxyError> {
    let Some(backend) = route.cancel_target(key) else {
        debug!(pid = key.pid, "cancel request with an unknown key");
        return Ok(());
    };
    let mut server = connect(route, backend).await?;
    server
        .write_all(&protocol::cancel_request(key))
        .await
        .map_err(ProxyError::BackendIo)?;
    // Postgres closes the connection once it has signalled the backend; waiting for that
    // means the client's cancel call returns only after the cancel was delivered.
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(route.opts.connect_timeout, server.read(&mut byte)).await;
    info!(pid = key.pid, %backend, "cancel request forwarded");
    Ok(())
}

async fn connect(route: &LiveRoute, backend: SocketAddr) -> Result<TcpStream, ProxyError> {
    let connect_err = |source| ProxyError::BackendConnect {
        branch: route.branch.clone(),
        addr: backend,
        source,
    };
    let server = tokio::time::timeout(route.opts.connect_timeout, TcpStream::connect(backend))
        .await
        .map_err(|_| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", route.opts.connect_timeout),
            ))
        })?
        .map_err(connect_err)?;
    let _ = server.set_nodelay(true);
    Ok(server)
}

/// Admits the client, wakes the compute, replays the startup packet, follows the
/// startup phase for the cancel key, then splices until either side closes.
async fn session(
    route: &Arc<LiveRoute>,
    client: &mut TcpStream,
    startup_packet: &[u8],
) -> Result<(), ProxyError> {
    let deadline = tokio::time::Instant::now() + route.opts.wake_timeout;
    let mut session = route.admit(deadline).await?;
    let backend = route.wake(deadline).await?;
    let mut server = connect(route, backend).await?;
    server
        .write_all(startup_packet)
        .await
        .map_err(ProxyError::BackendIo)?;
    if !relay_startup_phase(client, &mut server, &mut session, backend).await? {
        return Ok(());
    }
    match tokio::io::copy_bidirectional(client, &mut server).await {
        Ok((up, down)) => debug!(bytes_to_server = up, bytes_to_client = down, "spliced"),
        // Resets are how many clients say goodbye; not worth more than a debug line.
        Err(err) => debug!(error = %err, "splice ended"),
    }
    Ok(())
}

/// Forwards both directions unchanged while scanning the server's messages; registers
/// the `BackendKeyData` key. Returns `true` at the first `ReadyForQuery`, `false` when
/// either side closed first (failed authentication, client gone).
async fn relay_startup_phase(
    client: &mut TcpStream,
    server: &mut TcpStream,
    session: &mut Session,
    backend: SocketAddr,
) -> Result<bool, ProxyError> {
    let mut scanner = BackendStartupScanner::default();
    let (mut client_rd, mut client_wr) = client.split();
    let (mut server_rd, mut server_wr) = server.split();
    let mut up = vec![0u8; 8192];
    let mut down = vec![0u8; 8192];
    loop {
        tokio::select! {
            read = client_rd.read(&mut up) => {
                let n = read.map_err(ProxyError::ClientIo)?;
                if n == 0 {
                    return Ok(false);
                }
                server_wr.write_all(&up[..n]).await.map_err(ProxyError::BackendIo)?;
            }
            read = server_rd.read(&mut down) => {
                let n = read.map_err(ProxyError::BackendIo)?;
                if n == 0 {
                    client_wr.shutdown().await.map_err(ProxyError::ClientIo)?;
                    return Ok(false);
                }
                let scan = scanner.feed(&down[..n])?;
                if let Some(key) = scan.key {
                    session.register_key(key, backend);
                }
                // Bytes after ReadyForQuery (a pipelined reply) are forwarded as they are.
                client_wr.write_all(&down[..n]).await.map_err(ProxyError::ClientIo)?;
                if scan.ready_at.is_some() {
                    return Ok(true);
                }
            }
        }
    }
}
