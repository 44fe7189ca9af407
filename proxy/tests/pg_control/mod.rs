//! A `Control` over one real Postgres: `wake` starts (or restarts after a crash) the
//! compute, `suspend` stops it with a fast shutdown. It records what happened so tests
//! can assert on wakes, starts and suspends, and on their order.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch};
use tokio::sync::watch;

/// What the control plane was asked to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `wake` was called.
    Wake,
    /// `wake` found Postgres down and started it.
    Start,
    /// `suspend` was called.
    SuspendBegin,
    /// `suspend` stopped Postgres.
    SuspendEnd,
}

/// The test control plane; the compute is initialised and stopped by [`PgControl::new`],
/// so the first client really wakes it.
pub struct PgControl {
    // Declared before `_scratch`: Postgres is stopped before its directory goes.
    compute: tokio::sync::Mutex<Compute>,
    bin: PgBin,
    user: PgUser,
    pgdata: PathBuf,
    run: PathBuf,
    events: Mutex<Vec<Event>>,
    wakes: AtomicUsize,
    /// `wake` waits until this is true (tests hold wakes to pile clients up).
    wake_gate: watch::Sender<bool>,
    /// `suspend` sleeps this long before stopping (tests race clients against it).
    suspend_delay: Mutex<Duration>,
    _scratch: Scratch,
}

impl PgControl {
    /// initdb, a password role `app` (superuser, for pgbench -i), then stop.
    pub async fn new() -> Arc<Self> {
        let bin = PgBin::find(None).expect("Postgres installed (apt-get install postgresql-15)");
        let user = PgUser::resolve(None).expect("a user to run Postgres as");
        let scratch = Scratch::plain().unwrap();
        let pgdata = scratch.path().join("pgdata");
        let run = scratch.path().join("run");
        for dir in [&pgdata, &run] {
            std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
            user.chown(dir).unwrap();
        }
        let mut compute = Compute::start(&bin, &user, &pgdata, &run, "true", true, &[])
            .await
            .unwrap();
        compute
            .execute("CREATE ROLE app LOGIN SUPERUSER PASSWORD 'secret'")
            .await
            .unwrap();
        compute.stop().await.unwrap();
        Arc::new(Self {
            compute: tokio::sync::Mutex::new(compute),
            bin,
            user,
            pgdata,
            run,
            events: Mutex::new(Vec::new()),
            wakes: AtomicUsize::new(0),
            wake_gate: watch::Sender::new(true),
            suspend_delay: Mutex::new(Duration::ZERO),
            _scratch: scratch,
        })
    }

    /// Events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// How often `event` happened.
    pub fn count(&self, event: Event) -> usize {
        self.events().iter().filter(|&&e| e == event).count()
    }

    /// Whether a postmaster runs on the data directory.
    pub fn postgres_running(&self) -> bool {
        ramify_compute::process::is_running(&self.pgdata).unwrap()
    }

    /// Holds (`false`) or releases (`true`) every `wake`.
    pub fn set_wake_gate(&self, open: bool) {
        self.wake_gate.send_replace(open);
    }

    /// Makes `suspend` wait this long before stopping Postgres.
    pub fn set_suspend_delay(&self, delay: Duration) {
        *self.suspend_delay.lock().unwrap() = delay;
    }

    /// The last lines of the Postgres log, for assertion messages.
    pub async fn log_tail(&self) -> String {
        self.compute.lock().await.log_tail()
    }

    /// SIGKILLs Postgres behind the proxy's back, as a crash would.
    pub async fn kill9(&self) {
        self.compute.lock().await.kill9().unwrap();
    }

    /// Runs SQL as the superuser over the socket (Postgres must run).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        self.compute.lock().await.query_i64(sql).await.unwrap()
    }

    /// `wake` calls so far.
    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

#[async_trait::async_trait]
impl ramify_proxy::Control for PgControl {
    async fn wake(&self, _branch: &str) -> Result<SocketAddr, String> {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.record(Event::Wake);
        let mut gate = self.wake_gate.subscribe();
        gate.wait_for(|&open| open)
            .await
            .map_err(|e| e.to_string())?;
        let mut compute = self.compute.lock().await;
        if !self.postgres_running() {
            self.record(Event::Start);
            // Covers stopped (suspended) and killed computes alike. A fresh port each
            // time, as a rescheduled pod gets a new address: the proxy must follow it,
            // and no other process can have taken the old port meanwhile.
            compute.kill9().map_err(|e| e.to_string())?;
            *compute = Compute::start(
                &self.bin,
                &self.user,
                &self.pgdata,
                &self.run,
                "true",
                false,
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(SocketAddr::from(([127, 0, 0, 1], compute.port())))
    }

    async fn suspend(&self, _branch: &str) -> Result<(), String> {
        self.record(Event::SuspendBegin);
        let delay = *self.suspend_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.compute
            .lock()
            .await
            .stop()
            .await
            .map_err(|e| e.to_string())?;
        self.record(Event::SuspendEnd);
        Ok(())
    }
}
