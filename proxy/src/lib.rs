//! The Postgres-aware TCP front door of Ramify branches.
//!
//! One listener port per branch ([`Route`]). On a client's `StartupMessage` the proxy
//! asks the [`Control`] plane to wake the branch's compute (one wake in flight per
//! branch, however many clients arrive), holds the client until Postgres accepts the
//! connection, then splices bytes both ways. `SSLRequest`/`GSSENCRequest` are refused
//! with `N` so `prefer` clients continue in plaintext; `CancelRequest`s reach the
//! compute that issued the key. A branch with no client for its `suspend_after` is
//! suspended through [`Control::suspend`]; clients arriving meanwhile wait for the
//! suspend to finish and then wake it again. Failures reach the client as a Postgres
//! `ErrorResponse` (SQLSTATE 57P03 or 08006), never as a bare reset.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod error;
pub mod protocol;
mod route;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, info_span, warn, Instrument};

pub use error::ProxyError;
use route::LiveRoute;
pub use tls::{CertificateAuthority, ProxyTls, ServerNames, TlsError};
use tls::{LeafCache, RouteTls};

/// What the proxy asks of the control plane (the local runtime now, the operator later).
#[async_trait::async_trait]
pub trait Control: Send + Sync + 'static {
    /// Ensures the branch's compute runs (starting it if suspended or crashed) and returns
    /// the address its Postgres accepts TCP connections on once it does. Called for every
    /// new client that finds no wake in flight, so it must be cheap when the compute runs.
    /// The proxy never cancels a call; the error text is shown to clients.
    async fn wake(&self, branch: &str) -> Result<SocketAddr, String>;

    /// No client was connected for the route's `suspend_after`: stops the compute cleanly
    /// (fast shutdown). Never called concurrently with `wake` for the same branch; may
    /// find the compute already stopped (a new route, a failed wake, a replaced compute)
    /// and should then succeed as a no-op.
    async fn suspend(&self, branch: &str) -> Result<(), String>;

    /// [`Control::suspend`], with a third outcome: the control plane refused because the
    /// branch is in use elsewhere (through another proxy replica). The route then starts
    /// a new idle period instead of counting a failure. The default never refuses.
    async fn try_suspend(&self, branch: &str) -> SuspendOutcome {
        match self.suspend(branch).await {
            Ok(()) => SuspendOutcome::Suspended,
            Err(reason) => SuspendOutcome::Failed(reason),
        }
    }
}

/// What became of a suspend the route asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// The compute is stopped (or was not running).
    Suspended,
    /// The control plane kept the compute because the branch is in use elsewhere; the
    /// text says where. Not a failure: the route is idle only here.
    InUseElsewhere(String),
    /// The suspend failed; retried after another idle period.
    Failed(String),
}

/// One branch's listener and its idle policy.
#[derive(Debug, Clone)]
pub struct Route {
    /// The branch name, passed to [`Control`] and shown in errors.
    pub branch: String,
    /// Where to listen (port 0 picks a free port; see [`Proxy::add_route`]).
    pub listen: SocketAddr,
    /// Suspend after this long without clients; `None` or zero means never.
    pub suspend_after: Option<Duration>,
}

/// Timeouts of the proxy.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// How long a client waits for a suspend in progress plus the wake (default 30 s).
    pub wake_timeout: Duration,
    /// How long a client may take to send its startup packet (default 10 s).
    pub startup_timeout: Duration,
    /// How long connecting to a woken compute may take (default 10 s).
    pub connect_timeout: Duration,
    /// Client connections one branch may have open at once, counted from the accept
    /// (default 100); more are refused with SQLSTATE 53300 before anything is read.
    pub max_connections_per_branch: usize,
    /// Client connections the whole proxy may have open at once (default 1000).
    pub max_connections: usize,
    /// Threads that carry client connections (default 1). One thread serves every
    /// connection of every route without cross-thread wake-ups, which measured cheaper
    /// per query than a work-stealing pool on a node whose cores Postgres is busy on;
    /// more threads only help when one is saturated.
    pub io_threads: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            wake_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connections_per_branch: 100,
            max_connections: 1000,
            io_threads: 1,
        }
    }
}

/// A snapshot of one route's counters, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStats {
    /// The bound listener address.
    pub listen: SocketAddr,
    /// The current idle policy.
    pub suspend_after: Option<Duration>,
    /// Client sessions currently open (including those waiting for a wake).
    pub active_connections: usize,
    /// Of those, the sessions Postgres authenticated (it sent `AuthenticationOk`): only
    /// these keep the branch awake.
    pub authenticated_connections: usize,
    /// Connections refused because a connection cap was reached.
    pub refused_connections: u64,
    /// Since when no session is open (`None` while one is).
    pub idle_since: Option<Instant>,
    /// When a session last opened or closed (wall clock, for status output).
    pub last_activity: SystemTime,
    /// Client sessions admitted since the route was added.
    pub connections: u64,
    /// `Control::wake` calls made.
    pub wakes: u64,
    /// `Control::wake` calls that failed.
    pub wake_failures: u64,
    /// Successful `Control::suspend` calls.
    pub suspends: u64,
    /// `Control::suspend` calls that failed.
    pub suspend_failures: u64,
    /// Suspends the control plane refused because the branch is in use elsewhere.
    pub suspend_refusals: u64,
    /// Whether the branch is in use here: an authenticated session is open or a wake
    /// is in flight (what this proxy reports to the control plane).
    pub in_use: bool,
    /// The proxy suspended the compute and no client has woken it since.
    pub suspended: bool,
}

/// The proxy: a set of routes sharing one [`Control`]; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<dyn Control>,
    /// The runtime the proxy was created on: `Control` calls and idle suspends run there.
    control_rt: tokio::runtime::Handle,
    /// The connection threads: listeners, client sessions, splicing.
    io: IoRuntime,
    opts: ProxyOptions,
    routes: Mutex<HashMap<String, RouteTasks>>,
    tls: Option<(ProxyTls, Arc<LeafCache>)>,
    /// Client connections open on every route, against `opts.max_connections`.
    open: Arc<AtomicUsize>,
}

/// A route and the tasks serving it.
struct RouteTasks {
    route: Arc<LiveRoute>,
    acceptor: JoinHandle<()>,
    suspender: JoinHandle<()>,
}

impl Proxy {
    /// A proxy without routes. It starts its connection threads (`opts.io_threads`) and
    /// must be created inside the Tokio runtime its [`Control`] calls are to run on.
    pub fn new(control: Arc<dyn Control>, opts: ProxyOptions) -> Result<Self, ProxyError> {
        Self::build(control, opts, None)
    }

    /// A proxy without routes whose listeners offer TLS: each branch gets a server
    /// certificate for its names, signed by `tls.ca`. Otherwise as [`Proxy::new`].
    pub fn with_tls(
        control: Arc<dyn Control>,
        opts: ProxyOptions,
        tls: ProxyTls,
    ) -> Result<Self, ProxyError> {
        let cache = Arc::new(LeafCache::new(Arc::clone(&tls.ca)));
        Self::build(control, opts, Some((tls, cache)))
    }

    fn build(
        control: Arc<dyn Control>,
        opts: ProxyOptions,
        tls: Option<(ProxyTls, Arc<LeafCache>)>,
    ) -> Result<Self, ProxyError> {
        Ok(Self {
            inner: Arc::new(Inner {
                control,
                control_rt: tokio::runtime::Handle::try_current().map_err(|e| {
                    ProxyError::IoRuntime(std::io::Error::other(format!(
                        "a proxy is created inside the Tokio runtime its control calls run on: {e}"
                    )))
                })?,
                io: IoRuntime::start(opts.io_threads)?,
                opts,
                routes: Mutex::new(HashMap::new()),
                tls,
                open: Arc::new(AtomicUsize::new(0)),
            }),
        })
    }

    /// Whether this proxy offers TLS, and whether it requires it.
    pub fn tls(&self) -> Option<&ProxyTls> {
        self.inner.tls.as_ref().map(|(tls, _)| tls)
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<String, RouteTasks>> {
        self.inner
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts listening for `route.branch` and returns the bound address. The compute
    /// may already run: without clients it is suspended after `suspend_after`.
    pub async fn add_route(&self, route: Route) -> Result<SocketAddr, ProxyError> {
        let exists = || ProxyError::RouteExists {
            branch: route.branch.clone(),
        };
        if self.routes().contains_key(&route.branch) {
            return Err(exists());
        }
        let tls = match &self.inner.tls {
            Some((tls, cache)) => Some(RouteTls::for_branch(tls, cache, &route.branch).map_err(
                |source| ProxyError::Certificate {
                    branch: route.branch.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let bind_err = |source| ProxyError::Bind {
            branch: route.branch.clone(),
            addr: route.listen,
            source,
        };
        // Bound here, registered with the connection threads' reactor by the acceptor.
        let listener = std::net::TcpListener::bind(route.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listen = listener.local_addr().map_err(bind_err)?;
        let live = Arc::new(LiveRoute::new(
            route.branch.clone(),
            listen,
            route.suspend_after,
            Arc::clone(&self.inner.control),
            self.inner.control_rt.clone(),
            self.inner.opts,
            Arc::clone(&self.inner.open),
        ));
        let mut routes = self.routes();
        if routes.contains_key(&route.branch) {
            return Err(exists());
        }
        let span = info_span!("route", branch = %route.branch, %listen);
        let acceptor = self
            .inner
            .io
            .handle()
            .spawn(accept_loop(Arc::clone(&live), tls, listener).instrument(span.clone()));
        let suspender = self
            .inner
            .control_rt
            .spawn(Arc::clone(&live).run_suspender().instrument(span.clone()));
        span.in_scope(|| info!(suspend_after = ?route.suspend_after, "route added"));
        routes.insert(
            route.branch,
            RouteTasks {
                route: live,
                acceptor,
                suspender,
            },
        );
        Ok(listen)
    }

    /// Closes the branch's listener and every client connection of it; when this returns
    /// the port is free and no further `Control` call is made for the branch (a suspend
    /// in progress is awaited). The compute itself is left as it is.
    pub async fn remove_route(&self, branch: &str) {
        let Some(tasks) = self.routes().remove(branch) else {
            return;
        };
        tasks.route.shut_down();
        for (task, name) in [(tasks.acceptor, "acceptor"), (tasks.suspender, "suspender")] {
            if let Err(err) = task.await {
                warn!(branch, task = name, error = %err, "route task failed");
            }
        }
        info!(branch, "route removed");
    }

    /// Closes every route's listener (new clients are refused by the kernel) while the
    /// connections already open go on: the first step of a graceful shutdown. Routes
    /// added later still accept; [`Proxy::remove_route`] still closes everything.
    pub fn stop_accepting(&self) {
        for tasks in self.routes().values() {
            tasks.route.stop_accepting();
        }
    }

    /// Client connections open on every route now (against `max_connections`).
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// The route's counters, or `None` for an unknown branch.
    pub fn route_stats(&self, branch: &str) -> Option<RouteStats> {
        self.routes().get(branch).map(|t| t.route.stats())
    }

    /// Tells the route that its compute was replaced or started without this proxy (the
    /// control plane moved the branch to another timeline): like the compute of a new
    /// route, it is suspended after `suspend_after` without clients, even if this proxy
    /// had suspended the branch before.
    pub fn compute_replaced(&self, branch: &str) {
        if let Some(tasks) = self.routes().get(branch) {
            tasks.route.compute_replaced();
        }
    }

    /// The branches in use through this proxy now: with an authenticated session or a
    /// wake in flight. Sorted.
    pub fn branches_in_use(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .routes()
            .iter()
            .filter(|(_, t)| t.route.stats().in_use)
            .map(|(b, _)| b.clone())
            .collect();
        out.sort();
        out
    }

    /// Changes the branch's idle policy (`None` or zero: never suspend); takes effect at once.
    pub fn set_suspend_after(&self, branch: &str, suspend_after: Option<Duration>) {
        if let Some(tasks) = self.routes().get(branch) {
            tasks.route.set_suspend_after(suspend_after);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: nobody could remove these routes any more.
        let routes = self
            .routes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for tasks in routes.values() {
            tasks.route.shut_down();
        }
    }
}

/// The proxy's own runtime for client connections. One thread is a current-thread
/// runtime driven by a thread of its own: no work stealing, no cross-thread wake-ups and
/// no scheduler statistics per poll, which measured cheapest per relayed query. More
/// threads are a work-stealing pool. Stopped without waiting when the proxy goes
/// (dropping a runtime may not block inside another one).
struct IoRuntime {
    handle: tokio::runtime::Handle,
    /// The pool, for more than one thread.
    pool: Option<tokio::runtime::Runtime>,
    /// Ends the single thread's `block_on` (dropped: the thread drops the runtime).
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl IoRuntime {
    const THREAD_NAME: &'static str = "ramify-proxy-io";

    fn start(threads: usize) -> Result<Self, ProxyError> {
        if threads > 1 {
            let pool = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(Self::THREAD_NAME)
                .enable_all()
                .build()
                .map_err(ProxyError::IoRuntime)?;
            return Ok(Self {
                handle: pool.handle().clone(),
                pool: Some(pool),
                _stop: None,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::IoRuntime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(Self::THREAD_NAME.to_owned())
            .spawn(move || {
                // Runs the connections until the proxy is dropped, then drops them.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(ProxyError::IoRuntime)?;
        Ok(Self {
            handle,
            pool: None,
            _stop: Some(stop),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shutdown_background();
        }
    }
}

/// Accepts clients until the route stops accepting (draining) or is shut down, then
/// closes the listener. Open connections go on until they end or the route is shut down,
/// which aborts (closes) them.
async fn accept_loop(
    route: Arc<LiveRoute>,
    tls: Option<RouteTls>,
    listener: std::net::TcpListener,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(error = %err, "cannot watch the listener; the route does not accept");
            return;
        }
    };
    let mut connections = JoinSet::new();
    let shutdown = route.shutdown_requested();
    tokio::pin!(shutdown);
    let stop_accepting = route.accepting_stopped();
    tokio::pin!(stop_accepting);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let span = info_span!("client", branch = %route.branch, %peer);
                    connections.spawn(connection::serve(Arc::clone(&route), tls.clone(), client, span));
                }
                Err(err) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop_accepting => break,
        }
    }
    drop(listener);
    // Draining: the sessions still open finish on their own unless the route is shut down.
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            () = &mut shutdown => break,
        }
    }
    connections.shutdown().await;
}
