//! The local runtime: computes are Postgres processes of this machine, published through
//! the in-process proxy on one loopback port per branch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use ramify_api::{TimelineInfo, TimelineState};
use ramify_compute::process::{self, RunningCompute, StopMode};
use ramify_compute::{ComputeSettings, PgBin, PgUser};
use ramify_lifecycle::locks::KeyedLocks;
use ramify_lifecycle::{Branch, Lifecycle, Runtime};
use ramify_proxy::{Control, Proxy, Route};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// How long a compute may take to start (recovery of a fork included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Postgres processes plus proxy routes.
pub struct LocalRuntime {
    pg: PgBin,
    user: PgUser,
    proxy: Proxy,
    computes: Mutex<HashMap<String, RunningCompute>>,
    /// Per-branch start/stop serialisation.
    locks: KeyedLocks<String>,
    /// Per-PGDATA: held while a detached compute shuts down, taken by every start.
    pgdata_locks: KeyedLocks<PathBuf>,
    /// Shutdowns of detached computes still under way.
    stopping: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LocalRuntime {
    pub fn new(pg: PgBin, user: PgUser, proxy: Proxy) -> LocalRuntime {
        LocalRuntime {
            pg,
            user,
            proxy,
            computes: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            pgdata_locks: KeyedLocks::default(),
            stopping: Mutex::new(Vec::new()),
        }
    }

    pub fn pg(&self) -> &PgBin {
        &self.pg
    }

    pub fn user(&self) -> &PgUser {
        &self.user
    }

    fn lock_of(&self, name: &str) -> Arc<Mutex<()>> {
        self.locks.of(&name.to_string())
    }

    /// Number of computes running now.
    pub async fn running_count(&self) -> usize {
        let mut n = 0;
        for c in self.computes.lock().await.values() {
            if process::is_running(c.pgdata()).unwrap_or(false) {
                n += 1;
            }
        }
        n
    }

    /// Stops every compute (daemon shutdown), detached ones included.
    pub async fn stop_all(&self) {
        let all: Vec<(String, RunningCompute)> = self.computes.lock().await.drain().collect();
        for (name, c) in all {
            if let Err(e) = c.stop(&self.pg, &self.user, StopMode::Fast).await {
                warn!(branch = %name, error = %e, "stopping compute failed");
            }
        }
        let stopping: Vec<_> = self.stopping.lock().await.drain(..).collect();
        for task in stopping {
            let _ = task.await;
        }
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    async fn start(&self, branch: &Branch, tl: &TimelineInfo) -> Result<SocketAddr, String> {
        let lock = self.lock_of(&branch.name);
        let _g = lock.lock().await;
        let mut computes = self.computes.lock().await;
        if let Some(c) = computes.get(&branch.name) {
            if process::is_running(c.pgdata()).unwrap_or(false) {
                return Ok(SocketAddr::from(([127, 0, 0, 1], c.port())));
            }
            warn!(branch = %branch.name, "compute died; starting it again");
            computes.remove(&branch.name);
        }
        drop(computes);
        let pgdata = PathBuf::from(&tl.pgdata);
        // A compute detached from this timeline may still be shutting down.
        let pgdata_lock = self.pgdata_locks.of(&pgdata);
        let _pg = pgdata_lock.lock().await;
        // The storage node initialises every new root; only one an older release (or a
        // node without initdb) created empty is initialised here, on its first start.
        if tl.state == TimelineState::Empty {
            process::initdb(&self.pg, &self.user, &pgdata)
                .await
                .map_err(|e| e.to_string())?;
        }
        let settings = ComputeSettings {
            port: free_port().map_err(|e| format!("no free port: {e}"))?,
            listen_addresses: "127.0.0.1".into(),
            run_dir: PathBuf::from(&tl.run_dir),
            archive_command: tl.archive_command.clone(),
            parameters: Default::default(),
            // A durable branch's WAL reaches the backup repository segment by segment: a
            // quiet one switches segments at least this often, which bounds what losing
            // the data directory loses (its RPO).
            archive_timeout_secs: tl
                .backup
                .as_ref()
                .map(|_| ramify_compute::DURABLE_ARCHIVE_TIMEOUT_SECS),
            // A physical following root runs as a hot standby of its source (a logical
            // one is an ordinary primary applying its subscription).
            standby: tl
                .follow
                .as_ref()
                .filter(|f| f.mode.is_physical())
                .map(|f| ramify_compute::Standby {
                    conninfo: f.conninfo.clone(),
                    passfile: PathBuf::from(&tl.run_dir).join(&f.passfile),
                    slot: f.slot.clone(),
                }),
        };
        let running = process::start(&self.pg, &self.user, &pgdata, &settings, START_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        info!(branch = %branch.name, port = running.port(), "compute started");
        let addr = SocketAddr::from(([127, 0, 0, 1], running.port()));
        self.computes
            .lock()
            .await
            .insert(branch.name.clone(), running);
        Ok(addr)
    }

    async fn stop(&self, branch: &Branch) -> Result<(), String> {
        let lock = self.lock_of(&branch.name);
        let _g = lock.lock().await;
        let Some(c) = self.computes.lock().await.remove(&branch.name) else {
            return Ok(());
        };
        c.stop(&self.pg, &self.user, StopMode::Fast)
            .await
            .map_err(|e| e.to_string())?;
        info!(branch = %branch.name, "compute stopped");
        Ok(())
    }

    async fn detach(&self, branch: &Branch) -> Result<(), String> {
        let lock = self.lock_of(&branch.name);
        let _g = lock.lock().await;
        let Some(c) = self.computes.lock().await.remove(&branch.name) else {
            return Ok(());
        };
        // Held until Postgres has exited: a start on this PGDATA waits for it.
        let pgdata = self
            .pgdata_locks
            .of(&c.pgdata().to_path_buf())
            .lock_owned()
            .await;
        let (pg, user, name) = (self.pg.clone(), self.user.clone(), branch.name.clone());
        let task = tokio::spawn(async move {
            match c.stop(&pg, &user, StopMode::Fast).await {
                Ok(()) => info!(branch = %name, "detached compute stopped"),
                Err(e) => warn!(branch = %name, error = %e, "stopping a detached compute failed"),
            }
            drop(pgdata);
        });
        let mut stopping = self.stopping.lock().await;
        stopping.retain(|t| !t.is_finished());
        stopping.push(task);
        Ok(())
    }

    async fn stop_now(&self, branch: &Branch) -> Result<(), String> {
        let lock = self.lock_of(&branch.name);
        let _g = lock.lock().await;
        let Some(c) = self.computes.lock().await.remove(&branch.name) else {
            return Ok(());
        };
        c.stop(&self.pg, &self.user, StopMode::Immediate)
            .await
            .map_err(|e| e.to_string())?;
        info!(branch = %branch.name, "compute stopped (immediate)");
        Ok(())
    }

    async fn is_running(&self, branch: &Branch) -> bool {
        match self.computes.lock().await.get(&branch.name) {
            Some(c) => process::is_running(c.pgdata()).unwrap_or(false),
            None => false,
        }
    }

    async fn address(&self, branch: &Branch) -> Option<SocketAddr> {
        match self.computes.lock().await.get(&branch.name) {
            Some(c) if process::is_running(c.pgdata()).unwrap_or(false) => {
                Some(SocketAddr::from(([127, 0, 0, 1], c.port())))
            }
            _ => None,
        }
    }

    async fn admin_sql(&self, branch: &Branch, statements: &[String]) -> Result<(), String> {
        let (run_dir, port) = {
            let computes = self.computes.lock().await;
            let c = computes
                .get(&branch.name)
                .ok_or_else(|| format!("compute of {} is not running", branch.name))?;
            (c.socket_dir().to_path_buf(), c.port())
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&run_dir)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .application_name("ramify");
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
            format!(
                "cannot connect to the compute of {}: {}",
                branch.name,
                pg_error(&e)
            )
        })?;
        tokio::spawn(conn);
        for sql in statements {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| format!("setting up {}: {}", branch.name, pg_error(&e)))?;
        }
        Ok(())
    }

    async fn publish(&self, branch: &Branch, port: u16) -> Result<u16, String> {
        let route = Route {
            branch: branch.name.clone(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            suspend_after: (branch.suspend_after_secs > 0)
                .then(|| Duration::from_secs(branch.suspend_after_secs)),
        };
        self.proxy
            .add_route(route)
            .await
            .map(|a| a.port())
            .map_err(|e| e.to_string())
    }

    async fn unpublish(&self, branch: &Branch) {
        self.proxy.remove_route(&branch.name).await;
    }
}

/// The server's own message when there is one (tokio-postgres prints just "db error").
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the proxy asks of local mode: wake and suspend through the lifecycle.
#[derive(Default)]
pub struct LocalControl {
    lifecycle: OnceLock<Weak<Lifecycle<LocalRuntime>>>,
}

impl LocalControl {
    /// Connects the control to the lifecycle once both exist.
    pub fn attach(&self, lifecycle: &Arc<Lifecycle<LocalRuntime>>) {
        let _ = self.lifecycle.set(Arc::downgrade(lifecycle));
    }

    fn lifecycle(&self) -> Result<Arc<Lifecycle<LocalRuntime>>, String> {
        self.lifecycle
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "local mode is shutting down".to_string())
    }
}

#[async_trait]
impl Control for LocalControl {
    async fn wake(&self, branch: &str) -> Result<SocketAddr, String> {
        self.lifecycle()?
            .wake(branch)
            .await
            .map_err(|e| e.to_string())
    }

    async fn suspend(&self, branch: &str) -> Result<(), String> {
        self.lifecycle()?
            .suspend(branch)
            .await
            .map_err(|e| e.to_string())
    }
}
