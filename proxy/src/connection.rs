//! One client connection: startup negotiation (TLS included), cancel forwarding, wake,
//! splice.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn, Instrument, Span};

use crate::protocol::{
    self, BackendStartupScanner, CancelKey, FrontendStartup, MAX_STARTUP_PACKET,
    SQLSTATE_TOO_MANY_CONNECTIONS,
};
use crate::route::{ConnectionSlot, LiveRoute, Session};
use crate::tls::RouteTls;
use crate::ProxyError;

/// What the client asked for in its startup phase.
enum Request {
    Cancel(CancelKey),
    Session {
        packet: Vec<u8>,
        params: Vec<(String, String)>,
    },
}

/// The client's connection: plaintext, or TLS after an accepted `SSLRequest`.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A session past its startup phase: what is left is splicing bytes.
struct Established {
    client: ClientStream,
    server: TcpStream,
    /// Counts the session in the route until the splice ends.
    _session: Session,
    /// Counts the connection against the caps until it closes.
    _slot: ConnectionSlot,
}

/// Serves one accepted client until either side closes; errors end up in the log and,
/// where a client can understand them, in an `ErrorResponse` (inside TLS when the
/// client negotiated it). Everything up to the first `ReadyForQuery` runs in `span`;
/// the splice after it does not, so relaying a query costs no span enter and exit.
pub(crate) async fn serve(
    route: Arc<LiveRoute>,
    tls: Option<RouteTls>,
    client: TcpStream,
    span: Span,
) {
    let Some(mut established) = start(&route, tls.as_ref(), client)
        .instrument(span.clone())
        .await
    else {
        return;
    };
    let spliced =
        tokio::io::copy_bidirectional(&mut established.client, &mut established.server).await;
    span.in_scope(|| match spliced {
        Ok((up, down)) => debug!(
            bytes_to_server = up,
            bytes_to_client = down,
            "connection closed"
        ),
        // Resets are how many clients say goodbye; not worth more than a debug line.
        Err(err) => debug!(error = %err, "splice ended"),
    });
}

/// The startup phase of one client: negotiation (TLS included), a cancel request
/// forwarded, or a session admitted, woken and authenticated. `None` when nothing is
/// left to splice.
async fn start(
    route: &Arc<LiveRoute>,
    tls: Option<&RouteTls>,
    client: TcpStream,
) -> Option<Established> {
    // Postgres sets TCP_NODELAY on its sockets; a proxy that does not adds 40 ms stalls.
    let _ = client.set_nodelay(true);
    let slot = match route.try_open() {
        Ok(slot) => slot,
        Err(err) => {
            refuse(client, err).await;
            return None;
        }
    };
    let timeout = route.opts.startup_timeout;
    let negotiated = tokio::time::timeout(timeout, negotiate(route, tls, client))
        .await
        .unwrap_or(Err((None, ProxyError::StartupTimeout { timeout })));
    let result = match negotiated {
        Ok((mut client, request)) => match handle(route, &mut client, request).await {
            Ok(Some((server, session))) => Ok(Some((client, server, session))),
            Ok(None) => Ok(None),
            Err(err) => Err((Some(client), err)),
        },
        Err(failed) => Err(failed),
    };
    match result {
        Ok(Some((client, server, session))) => {
            return Some(Established {
                client,
                server,
                _session: session,
                _slot: slot,
            })
        }
        Ok(None) => debug!("connection closed"),
        Err((client, err)) => {
            if let (Some(code), Some(mut client)) = (err.sqlstate(), client) {
                let msg = protocol::error_response(code, &err.to_string());
                // The client may already be gone; there is nobody else to tell.
                let _ = client.write_all(&msg).await;
                let _ = client.shutdown().await;
            }
            match err {
                ProxyError::ClientIo(_)
                | ProxyError::StartupTimeout { .. }
                | ProxyError::TlsHandshake(_) => {
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
    None
}

/// Longest a refused client is given to read its `ErrorResponse` before the close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Tells a client over a connection cap why, before reading anything from it: the
/// `ErrorResponse` is what Postgres sends when it cannot start a backend, and libpq
/// shows it whether it sent an `SSLRequest` or a `StartupMessage` first. Nothing is
/// negotiated and the branch is not woken.
async fn refuse(mut client: TcpStream, err: ProxyError) {
    info!(error = %err, "connection refused");
    let msg = protocol::error_response(SQLSTATE_TOO_MANY_CONNECTIONS, &err.to_string());
    if client.write_all(&msg).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    // Closing with the client's startup bytes unread would send a reset that can
    // overtake the error; read (and drop) until the client closes, briefly.
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A session whose startup phase ended at `ReadyForQuery`: the compute's connection and
/// the route's count of the session.
type Started = (TcpStream, Session);

async fn handle(
    route: &Arc<LiveRoute>,
    client: &mut ClientStream,
    request: Request,
) -> Result<Option<Started>, ProxyError> {
    match request {
        Request::Cancel(key) => forward_cancel(route, key).await.map(|()| None),
        Request::Session { packet, params } => {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| v.as_str())
                    .to_owned()
            };
            debug!(user = %param("user"), database = %param("database"), tls = client.is_tls(), "startup");
            session(route, client, &packet).await
        }
    }
}

/// A failed negotiation, with the client stream when one is still usable for telling
/// the client why.
type Failed = (Option<ClientStream>, ProxyError);

/// Reads packets until a `StartupMessage` or `CancelRequest`. An `SSLRequest` is
/// answered `S` and followed by the TLS handshake when the route has a certificate,
/// else `N`; `GSSENCRequest` is always refused with `N`; each at most once, as Postgres
/// does. A plaintext `StartupMessage` is refused when the route requires TLS.
async fn negotiate(
    route: &LiveRoute,
    tls: Option<&RouteTls>,
    client: TcpStream,
) -> Result<(ClientStream, Request), Failed> {
    let mut client = ClientStream::Plain(client);
    let mut ssl_answered = false;
    let mut gss_refused = false;
    loop {
        let packet = match read_startup_packet(&mut client).await {
            Ok(p) => p,
            Err(err) => return Err((Some(client), err)),
        };
        match packet {
            FrontendStartup::SslRequest if !ssl_answered && !client.is_tls() => {
                ssl_answered = true;
                let Some(tls) = tls else {
                    if let Err(err) = client.write_all(b"N").await {
                        return Err((None, ProxyError::ClientIo(err)));
                    }
                    continue;
                };
                let mut tcp = match client {
                    ClientStream::Plain(tcp) => tcp,
                    tls @ ClientStream::Tls(_) => {
                        let err = ProxyError::Protocol {
                            reason: "SSLRequest inside TLS".to_owned(),
                        };
                        return Err((Some(tls), err));
                    }
                };
                // Every byte of the SSLRequest was consumed with read_exact and nothing
                // more: bytes a client sent after it (an injection attempt) are read by
                // the handshake, not taken as plaintext protocol.
                if let Err(err) = tcp.write_all(b"S").await {
                    return Err((None, ProxyError::ClientIo(err)));
                }
                match tls.acceptor.accept(tcp).await {
                    Ok(stream) => client = ClientStream::Tls(Box::new(stream)),
                    Err(err) => return Err((None, ProxyError::TlsHandshake(err))),
                }
            }
            FrontendStartup::GssEncRequest if !gss_refused && !client.is_tls() => {
                gss_refused = true;
                if let Err(err) = client.write_all(b"N").await {
                    return Err((None, ProxyError::ClientIo(err)));
                }
            }
            FrontendStartup::SslRequest | FrontendStartup::GssEncRequest => {
                let err = ProxyError::Protocol {
                    reason: "encryption requested twice".to_owned(),
                };
                return Err((Some(client), err));
            }
            FrontendStartup::Cancel(key) => return Ok((client, Request::Cancel(key))),
            FrontendStartup::Startup { packet, params } => {
                if tls.is_some_and(|t| t.required) && !client.is_tls() {
                    let err = ProxyError::TlsRequired {
                        branch: route.branch.clone(),
                    };
                    return Err((Some(client), err));
                }
                return Ok((client, Request::Session { packet, params }));
            }
        }
    }
}

/// Reads and classifies one startup-phase packet.
async fn read_startup_packet(client: &mut ClientStream) -> Result<FrontendStartup, ProxyError> {
    let mut len = [0u8; 4];
    client
        .read_exact(&mut len)
        .await
        .map_err(ProxyError::ClientIo)?;
    let body_len = protocol::startup_body_len(len)?;
    debug_assert!(body_len <= MAX_STARTUP_PACKET);
    let mut body = vec![0u8; body_len];
    client
        .read_exact(&mut body)
        .await
        .map_err(ProxyError::ClientIo)?;
    protocol::parse_frontend_startup(&body)
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
    connect_within(route, backend, route.opts.connect_timeout).await
}

async fn connect_within(
    route: &LiveRoute,
    backend: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, ProxyError> {
    let server = tokio::time::timeout(limit, TcpStream::connect(backend))
        .await
        .map_err(|_| unanswered_error(route, backend, format!("no answer within {limit:?}")))?
        .map_err(|source| ProxyError::BackendConnect {
            branch: route.branch.clone(),
            addr: backend,
            source,
        })?;
    let _ = server.set_nodelay(true);
    Ok(server)
}

/// The compute at `backend` did not answer in time (a `TimedOut` connect failure).
fn unanswered_error(route: &LiveRoute, backend: SocketAddr, what: String) -> ProxyError {
    ProxyError::BackendConnect {
        branch: route.branch.clone(),
        addr: backend,
        source: io::Error::new(io::ErrorKind::TimedOut, what),
    }
}

/// Admits the client, wakes the compute, replays the startup packet and follows the
/// startup phase for the cancel key. `None` when either side closed before
/// `ReadyForQuery` (failed authentication, client gone).
async fn session(
    route: &Arc<LiveRoute>,
    client: &mut ClientStream,
    startup_packet: &[u8],
) -> Result<Option<Started>, ProxyError> {
    let deadline = tokio::time::Instant::now() + route.opts.wake_timeout;
    let mut session = route.admit(deadline).await?;
    let backend = route.wake(deadline).await?;
    let (mut server, first) = start_on_compute(route, backend, startup_packet, deadline).await?;
    if !relay_startup_phase(client, &mut server, &mut session, backend, &first).await? {
        return Ok(None);
    }
    Ok(Some((server, session)))
}

/// How often a compute that is still starting is asked again.
const STARTING_RETRY: Duration = Duration::from_millis(10);
/// How long the first connection attempt to a compute that may be starting gets.
const FIRST_ATTEMPT: Duration = Duration::from_millis(100);
/// Longest first server message read before deciding whether to retry.
const MAX_FIRST_MESSAGE: usize = 64 * 1024;

/// Connects to a woken compute and replays the client's startup packet; returns the
/// connection and the server's first message, read whole. A control plane may hand out a
/// compute whose Postgres is still starting (the operator answers a wake once the Pod
/// has its IP, not when the kubelet's probe says Ready): a refused connection, an
/// unanswered SYN, or Postgres's own `57P03` ("the database system is starting up", or
/// not yet accepting connections while it replays WAL), is retried until the wake's
/// deadline. The client sees none of it — nor a half-recovered branch, which Postgres
/// refuses the same way.
async fn start_on_compute(
    route: &LiveRoute,
    backend: SocketAddr,
    startup_packet: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(TcpStream, Vec<u8>), ProxyError> {
    let began = tokio::time::Instant::now();
    let (mut refused, mut starting, mut unanswered) = (0u32, 0u32, 0u32);
    loop {
        let retry_possible = tokio::time::Instant::now() + STARTING_RETRY < deadline;
        // A SYN sent while the Pod's network is still being wired can be lost, and the
        // kernel would resend it only after a second: while retrying, an attempt gets
        // 100 ms (doubling after each silent one, up to connect_timeout).
        let attempt = if retry_possible {
            (FIRST_ATTEMPT * 2u32.saturating_pow(unanswered)).min(route.opts.connect_timeout)
        } else {
            route.opts.connect_timeout
        };
        let mut server = match connect_within(route, backend, attempt).await {
            Ok(server) => server,
            Err(ProxyError::BackendConnect { source, .. })
                if retry_possible
                    && matches!(
                        source.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
                    ) =>
            {
                if source.kind() == io::ErrorKind::ConnectionRefused {
                    refused += 1;
                    tokio::time::sleep(STARTING_RETRY).await;
                } else {
                    unanswered += 1;
                }
                continue;
            }
            Err(err) => return Err(err),
        };
        server
            .write_all(startup_packet)
            .await
            .map_err(ProxyError::BackendIo)?;
        // Postgres answers a startup packet at once (an authentication request or an
        // error); one that stays silent is not left holding the client forever.
        let limit = route.opts.connect_timeout;
        let first = tokio::time::timeout(limit, read_server_message(&mut server))
            .await
            .map_err(|_| {
                unanswered_error(
                    route,
                    backend,
                    format!("no answer to the startup packet within {limit:?}"),
                )
            })??;
        let not_yet = first[0] == b'E'
            && protocol::error_sqlstate(&first[5..]) == Some(protocol::SQLSTATE_CANNOT_CONNECT_NOW);
        if not_yet && retry_possible {
            starting += 1;
            tokio::time::sleep(STARTING_RETRY).await;
            continue;
        }
        if refused + starting + unanswered > 0 {
            info!(
                %backend,
                refused,
                starting,
                unanswered,
                elapsed = ?began.elapsed(),
                "compute accepted once it started"
            );
        }
        return Ok((server, first));
    }
}

/// One whole server message: its 5-byte header and body.
async fn read_server_message(server: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    let mut message = vec![0u8; 5];
    server
        .read_exact(&mut message)
        .await
        .map_err(ProxyError::BackendIo)?;
    let len = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
    if !(4..=MAX_FIRST_MESSAGE).contains(&len) {
        return Err(ProxyError::Protocol {
            reason: format!(
                "server's first message '{}' has length {len}",
                message[0] as char
            ),
        });
    }
    message.resize(1 + len, 0);
    server
        .read_exact(&mut message[5..])
        .await
        .map_err(ProxyError::BackendIo)?;
    Ok(message)
}

/// Forwards both directions unchanged while scanning the server's messages; registers
/// the `BackendKeyData` key and marks the session authenticated at `AuthenticationOk`.
/// The scan is of the backend side, which is plaintext whether or not the client
/// negotiated TLS. Returns `true` at the first `ReadyForQuery`, `false` when
/// either side closed first (failed authentication, client gone).
async fn relay_startup_phase(
    client: &mut ClientStream,
    server: &mut TcpStream,
    session: &mut Session,
    backend: SocketAddr,
    first: &[u8],
) -> Result<bool, ProxyError> {
    let mut scanner = BackendStartupScanner::default();
    // The server's first message, read already: a whole message, never ReadyForQuery.
    let scan = scanner.feed(first)?;
    if scan.authenticated {
        session.authenticated();
    }
    client
        .write_all(first)
        .await
        .map_err(ProxyError::ClientIo)?;
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
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
                if scan.authenticated {
                    session.authenticated();
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
