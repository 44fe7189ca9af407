//! The local daemon: storage node, proxy and computes in one supervised process, with a
//! small token-protected API on loopback that the `ramify` CLI talks to.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ramify_api::{ApiError, StorageClient};
use ramify_compute::{PgBin, PgUser};
use ramify_lifecycle::store::JsonFileStore;
use ramify_lifecycle::{
    CreateBranch, CreateCheckpoint, CreateSnapshotReq, Lifecycle, LifecycleError, LocalStatus,
    RestoreBranch, UpdateBranch,
};
use ramify_proxy::{Proxy, ProxyOptions, ProxyTls, ServerNames};
use ramify_storage::metrics::Metrics;
use ramify_storage::node::{Node, NodeConfig};
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::files::{self, DaemonFile};
use crate::runtime::{LocalControl, LocalRuntime};

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Everything local mode keeps lives below it.
    pub data_dir: PathBuf,
    /// Directory of the Postgres binaries (default: search).
    pub pg_bin: Option<PathBuf>,
    /// OS user for Postgres (must be the current user; the CLI switches to it).
    pub pg_user: Option<String>,
    /// Refuse plaintext sessions on branch endpoints (TLS is always offered, with the
    /// CA under `<data>/tls/`).
    pub tls_required: bool,
    /// Keep durable branches in this backup repository (and recover from it).
    pub backup: Option<crate::backup::LocalBackup>,
}

struct App {
    lifecycle: Arc<Lifecycle<LocalRuntime>>,
    storage: StorageClient,
    token: String,
    data_dir: PathBuf,
    pg_version: String,
    shutdown: Arc<Notify>,
}

type AppState = Arc<App>;

/// Runs local mode in the foreground until SIGTERM/SIGINT or `POST /v1/shutdown`.
/// Writes `daemon.json` once it serves, removes it on the way out, and stops every
/// compute it started.
/// Every branch has a listener of its own, so a thousand branches need more descriptors
/// than the usual soft limit of 1024: the soft limit goes up to the hard one (the
/// user's to give; computes inherit it, and Postgres bounds its own files anyway).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => {
                warn!(error = %e, soft, "cannot raise the open files limit: every branch listens on a port of its own")
            }
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open files limit"),
    }
}

pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let data_dir = std::fs::canonicalize(&cfg.data_dir)
        .with_context(|| format!("data directory {} is not usable", cfg.data_dir.display()))?;
    if nix::unistd::geteuid().is_root() {
        bail!("the local daemon must not run as root (Postgres refuses to); `ramify local up` switches to the Postgres user");
    }
    raise_open_files_limit();
    if let Some(d) = DaemonFile::read(&data_dir)?.filter(DaemonFile::process_alive) {
        bail!(
            "local mode is already running for {} (pid {})",
            data_dir.display(),
            d.pid
        );
    }
    let local = files::local_dir(&data_dir);
    std::fs::create_dir_all(&local)
        .with_context(|| format!("cannot create {}", local.display()))?;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", local.display()))?;
    let pg = PgBin::find(cfg.pg_bin.as_deref())?;
    let user = PgUser::resolve(cfg.pg_user.as_deref())?;
    let pg_version = pg
        .major_version()
        .map(|v| v.to_string())
        .unwrap_or_default();

    // Storage node, in process, on a loopback port of its own.
    let storage_dir = files::storage_dir(&data_dir);
    std::fs::create_dir_all(&storage_dir)
        .with_context(|| format!("cannot create {}", storage_dir.display()))?;
    let node = Arc::new(Node::open(
        NodeConfig {
            data_dir: storage_dir,
            restore_window: Duration::from_secs(7 * 24 * 3600),
            snapshot_interval: Duration::from_secs(3600),
            snapshot_wal_bytes: 256 << 20,
            waldump: pg.pg_waldump(),
            initdb: Some(pg.initdb()),
        },
        Arc::new(Metrics::default()),
    )?);
    // Its API is on a loopback port any local user can connect to: it requires its own
    // random token, kept only in the 0600 daemon file.
    let storage_token = ramify_api::ApiToken::generate()?;
    let storage_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let storage_url = format!("http://{}", storage_listener.local_addr()?);
    let router = ramify_storage::api::router(
        node.clone(),
        storage_token.clone(),
        &format!(
            "`storage_token` in {}, readable by the daemon's user only",
            DaemonFile::path(&data_dir).display()
        ),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(storage_listener, router).await {
            warn!(error = %e, "storage API stopped");
        }
    });
    // Computes archive into each timeline's inbox; move arrivals into the archive.
    node.spawn_archive_drain(Duration::from_secs(1));
    // With a backup repository: recover first when asked, then keep durable timelines
    // (and the branch records) in it.
    if let Some(b) = &cfg.backup {
        crate::backup::start(&node, &data_dir, b).await?;
    }
    // Space figures are measured in the background; `branch list`/`get` show the last.
    node.spawn_accounting(Duration::from_secs(15));
    // Keeps the default space reserve: one branch filling the disk is made read-only
    // before the others' WAL writes fail.
    node.spawn_space_guard(Duration::from_millis(500));
    // A warm standby beside each physical follower: its forks at latest replay nothing.
    if std::env::var("RAMIFY_WARM_STANDBYS").as_deref() != Ok("false") {
        node.spawn_warm_standbys();
    }
    let bg = node.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(10));
        loop {
            t.tick().await;
            if let Err(e) = bg.tick().await {
                warn!(error = %e, "storage housekeeping failed");
            }
        }
    });

    // Proxy + runtime + lifecycle.
    let control = Arc::new(LocalControl::default());
    // Branch endpoints offer TLS with certificates from the data directory's CA.
    let ca = crate::ca::load_or_create(&data_dir)?;
    info!(ca = %files::ca_cert_path(&data_dir).display(), required = cfg.tls_required, "branch endpoints offer TLS");
    let proxy = Proxy::with_tls(
        control.clone(),
        ProxyOptions::default(),
        ProxyTls {
            ca: Arc::new(ca),
            names: ServerNames::Loopback,
            required: cfg.tls_required,
        },
    )?;
    let runtime = Arc::new(LocalRuntime::new(pg, user, proxy));
    let storage = StorageClient::new(storage_url.clone()).with_token(storage_token.clone());
    let store = Arc::new(JsonFileStore::new(files::state_path(&data_dir)));
    let lifecycle = Arc::new(Lifecycle::new(
        storage.clone(),
        runtime.clone(),
        store,
        "127.0.0.1",
    ));
    control.attach(&lifecycle);
    if let Some(b) = &cfg.backup {
        if b.recover {
            crate::backup::drop_unrecovered(&lifecycle, &storage).await?;
        }
        crate::backup::spawn_branch_upload(node.clone(), &data_dir);
    }
    // An operation cut short by a crash of an earlier daemon may have left a timeline no
    // branch has (with a compute running on it), or one it was retiring: both go before
    // anything is served.
    match lifecycle.recover().await {
        Ok(r) if !r.failed.is_empty() => {
            warn!(
                failed = r.failed.len(),
                "recovery could not delete every timeline no branch has; retried at the next start"
            )
        }
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "recovery after an earlier daemon failed; retried at the next start")
        }
    }
    // Branches keep their ports across restarts; computes stay suspended until used. A
    // compute left running by a daemon that died is stopped cleanly first: nothing would
    // route to it, and it holds its PGDATA.
    // One listing: every timeline answer carries the node's space accounting, a sweep
    // over all extents, which asking per branch would repeat for each.
    let pgdata_of: std::collections::HashMap<_, _> = match storage.list_timelines().await {
        Ok(tls) => tls.into_iter().map(|t| (t.id, t.pgdata)).collect(),
        Err(e) => {
            warn!(error = %e, "cannot list timelines to find computes left running");
            Default::default()
        }
    };
    for b in lifecycle.branches()? {
        use ramify_lifecycle::Runtime;
        if let Some(pgdata) = pgdata_of.get(&b.timeline) {
            let pgdata = PathBuf::from(pgdata);
            if ramify_compute::process::is_running(&pgdata).unwrap_or(false) {
                warn!(branch = %b.name, "stopping a compute left running by an earlier daemon");
                if let Err(e) = ramify_compute::process::stop(
                    runtime.pg(),
                    runtime.user(),
                    &pgdata,
                    ramify_compute::process::StopMode::Fast,
                )
                .await
                {
                    warn!(branch = %b.name, error = %e, "cannot stop the orphaned compute");
                }
            }
        }
        if let Err(e) = runtime.publish(&b, b.port).await {
            warn!(branch = %b.name, port = b.port, error = %e, "cannot listen for branch");
        }
    }
    // A following root keeps following while the daemon runs (its source's slot, if
    // any, kept what it missed meanwhile); started in the background, so a source that
    // is down delays nothing else.
    for b in lifecycle
        .branches()?
        .into_iter()
        .filter(|b| b.follows.is_some())
    {
        let lc = lifecycle.clone();
        tokio::spawn(async move {
            match lc.wake(&b.name).await {
                Ok(_) => info!(branch = %b.name, "following root started"),
                Err(e) => warn!(branch = %b.name, error = %e, "cannot start following root"),
            }
        });
    }

    // Expired branches are deleted within about a second of their expiry.
    let reaper = lifecycle.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if let Err(e) = reaper.reap_expired(chrono::Utc::now()).await {
                warn!(error = %e, "expiry pass failed");
            }
        }
    });

    let token = random_token()?;
    let shutdown = Arc::new(Notify::new());
    let app = Arc::new(App {
        lifecycle,
        storage,
        token: token.clone(),
        data_dir: data_dir.clone(),
        pg_version,
        shutdown: shutdown.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    write_daemon_file(
        &data_dir,
        &DaemonFile {
            pid: std::process::id(),
            api: api.clone(),
            token,
            storage_url: storage_url.clone(),
            storage_token: storage_token.expose().to_string(),
        },
    )?;
    info!(%api, %storage_url, data_dir = %data_dir.display(), clone_method = %node.clone_method(), "ramify local mode ready");
    let stop = shutdown.clone();
    let served = axum::serve(listener, router_for(app.clone()))
        .with_graceful_shutdown(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = stop.notified() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        })
        .await;
    info!("stopping every compute");
    runtime.stop_all().await;
    let _ = std::fs::remove_file(DaemonFile::path(&data_dir));
    served.context("daemon API failed")?;
    Ok(())
}

fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_daemon_file(data_dir: &std::path::Path, f: &DaemonFile) -> anyhow::Result<()> {
    use std::io::Write;
    let path = DaemonFile::path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(&serde_json::to_vec_pretty(f)?)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// An error as the daemon API answers it.
struct HttpError(StatusCode, ApiError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<LifecycleError> for HttpError {
    fn from(e: LifecycleError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        HttpError(
            status,
            ApiError {
                code: e.code(),
                message: e.to_string(),
            },
        )
    }
}

impl From<ramify_api::ClientError> for HttpError {
    fn from(e: ramify_api::ClientError) -> Self {
        LifecycleError::Storage(e).into()
    }
}

fn bad(message: String) -> HttpError {
    HttpError(
        StatusCode::BAD_REQUEST,
        ApiError {
            code: "invalid_request".into(),
            message,
        },
    )
}

type Result<T> = std::result::Result<T, HttpError>;

fn router_for(app: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/branches", get(list).post(create))
        .route(
            "/v1/branches/{name}",
            get(get_one).delete(delete_one).patch(update),
        )
        .route("/v1/branches/{name}/wake", post(wake))
        .route("/v1/branches/{name}/suspend", post(suspend))
        .route("/v1/branches/{name}/reset", post(reset))
        .route("/v1/branches/{name}/restore", post(restore))
        .route(
            "/v1/branches/{name}/checkpoints",
            get(list_checkpoints).post(create_checkpoint),
        )
        .route(
            "/v1/branches/{name}/checkpoints/{checkpoint}",
            delete(delete_checkpoint),
        )
        .route(
            "/v1/branches/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/branches/{name}/snapshots/{snap}",
            delete(delete_snapshot),
        )
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                ApiError {
                    code: "not_found".into(),
                    message: "no such branch or endpoint (branch names are lowercase letters, digits and '-')".into(),
                },
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

async fn authorize(
    State(app): State<AppState>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expected = format!("Bearer {}", app.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return HttpError(
            StatusCode::UNAUTHORIZED,
            ApiError {
                code: "unauthorized".into(),
                message:
                    "missing or wrong token (it is in the daemon file, readable by its owner only)"
                        .into(),
            },
        )
        .into_response();
    }
    next.run(req).await
}

async fn status(State(app): State<AppState>) -> Result<Json<LocalStatus>> {
    let storage = app.storage.status().await?;
    let branches = app.lifecycle.branches()?.len();
    Ok(Json(LocalStatus {
        data_dir: app.data_dir.display().to_string(),
        pid: std::process::id(),
        storage_url: app.storage.base().to_string(),
        storage,
        branches,
        running_computes: app.lifecycle.runtime().running_count().await,
        postgres_version: app.pg_version.clone(),
        pg_user: app.lifecycle.runtime().user().name().to_string(),
        copies: app.storage.copies().await.unwrap_or_default(),
        following: following_roots(&app).await,
    }))
}

/// Every following root's source and replication state, for `ramify status`.
async fn following_roots(app: &AppState) -> Vec<ramify_lifecycle::FollowingRoot> {
    let mut out = Vec::new();
    for b in app.lifecycle.branches().unwrap_or_default() {
        if b.follows.is_none() {
            continue;
        }
        if let Ok(Some(follow)) = app
            .storage
            .get_timeline_without_sizes(b.timeline)
            .await
            .map(|t| t.follow)
        {
            out.push(ramify_lifecycle::FollowingRoot {
                branch: b.name,
                follow,
            });
        }
    }
    out
}

async fn shutdown(State(app): State<AppState>) -> StatusCode {
    app.shutdown.notify_one();
    StatusCode::ACCEPTED
}

async fn create(State(app): State<AppState>, body: Bytes) -> Result<Response> {
    let req: CreateBranch =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request: {e}")))?;
    let view = app.lifecycle.create(req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(app): State<AppState>) -> Result<Response> {
    Ok(Json(app.lifecycle.views().await?).into_response())
}

async fn get_one(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let b = app.lifecycle.branch(&name)?;
    Ok(Json(app.lifecycle.view(&b).await?).into_response())
}

#[derive(Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn delete_one(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Force>,
) -> Result<StatusCode> {
    app.lifecycle.delete(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wake(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    app.lifecycle.wake(&name).await?;
    let b = app.lifecycle.branch(&name)?;
    Ok(Json(app.lifecycle.view(&b).await?).into_response())
}

async fn suspend(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    app.lifecycle.suspend(&name).await?;
    let b = app.lifecycle.branch(&name)?;
    Ok(Json(app.lifecycle.view(&b).await?).into_response())
}

async fn create_snapshot(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let req: CreateSnapshotReq =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request: {e}")))?;
    let b = app.lifecycle.branch(&name)?;
    let s = app.storage.create_snapshot(b.timeline, &req.name).await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

async fn list_snapshots(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let b = app.lifecycle.branch(&name)?;
    Ok(Json(app.storage.list_snapshots(b.timeline).await?).into_response())
}

async fn delete_snapshot(
    State(app): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
) -> Result<StatusCode> {
    let b = app.lifecycle.branch(&name)?;
    app.storage.delete_snapshot(b.timeline, &snap).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let req: UpdateBranch =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request: {e}")))?;
    Ok(Json(app.lifecycle.update(&name, req).await?).into_response())
}

async fn reset(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(Json(app.lifecycle.reset(&name).await?).into_response())
}

async fn restore(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let req: RestoreBranch =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request: {e}")))?;
    Ok(Json(app.lifecycle.restore(&name, req).await?).into_response())
}

async fn create_checkpoint(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let req: CreateCheckpoint = if body.is_empty() {
        CreateCheckpoint::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request: {e}")))?
    };
    let c = app.lifecycle.create_checkpoint(&name, req).await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

async fn list_checkpoints(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(app.lifecycle.checkpoints(&name)?).into_response())
}

async fn delete_checkpoint(
    State(app): State<AppState>,
    Path((name, checkpoint)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.lifecycle.delete_checkpoint(&name, &checkpoint).await?;
    Ok(StatusCode::NO_CONTENT)
}
