//! The space reserve: free space kept on the volume for the WAL of computes that are not
//! filling it.
//!
//! Postgres PANICs when a WAL write fails with ENOSPC, so one branch filling the volume
//! would bring down every compute on it. The node therefore keeps a reserve:
//!
//! * below it, forks, new roots and manual snapshots are refused with 507
//!   `insufficient_storage` (after restore-window GC of every timeline and a second look),
//!   and periodic snapshots are skipped with a warning;
//! * a guard ([`Node::spawn_space_guard`]) watches free space; once it falls under twice
//!   the reserve it measures, for every timeline, the bytes allocated by what its compute
//!   can write (PGDATA, archive inbox, archive), and when free space falls under the
//!   reserve it makes the timeline that grew most since then **read-only**
//!   (`ALTER SYSTEM SET default_transaction_read_only = on`, reload, its client sessions
//!   terminated), over the compute's Unix socket as the bootstrap superuser;
//! * a tenant can turn that default off in its own session, so it is a brake, not a wall:
//!   if the restricted timeline's data keeps growing while free space is under half the
//!   reserve, the node **stops its compute** (fast shutdown, the reason written to the
//!   compute's log and the node's). A compute started again is still read-only;
//! * once free space is back above the reserve plus a quarter (hysteresis), every
//!   restriction is lifted (`ALTER SYSTEM RESET`, or the setting taken out of
//!   `postgresql.auto.conf` of a compute that is not running).
//!
//! A restriction is remembered in a marker file in the timeline directory, so one the
//! node set before a restart is lifted after it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use ramify_api::SpaceReserve;

use super::*;
use crate::beneath::Kind;

/// The default reserve: 5 % of the volume, at most 2 GiB.
pub const DEFAULT_PERCENT: f64 = 5.0;
/// Upper bound of the default reserve.
pub const DEFAULT_CAP: u64 = 2 << 30;

/// Marker file in a timeline directory: the node made this timeline read-only.
const MARKER: &str = "space-restricted";
/// The Postgres setting a restriction sets.
const SETTING: &str = "default_transaction_read_only";
/// Growth below this (WAL of a DROP, a checkpoint's bookkeeping) never gets a compute
/// stopped; nor a timeline restricted, which also takes an eighth of the reserve.
const MIN_GROWTH: u64 = 16 << 20;

/// How much free space the node keeps: a share of the volume or a size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Reserve {
    /// 5 % of the volume, at most 2 GiB ([`DEFAULT_PERCENT`], [`DEFAULT_CAP`]).
    #[default]
    Default,
    /// A percentage of the volume's capacity.
    Percent(f64),
    /// A size in bytes (0 turns the reserve off).
    Bytes(u64),
}

impl Reserve {
    /// The reserve in bytes on a volume of `capacity` bytes.
    pub fn bytes(self, capacity: u64) -> u64 {
        let share = |p: f64| ((capacity as f64) * p / 100.0) as u64;
        match self {
            Reserve::Default => share(DEFAULT_PERCENT).min(DEFAULT_CAP),
            Reserve::Percent(p) => share(p),
            Reserve::Bytes(b) => b.min(capacity),
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Default => write!(f, "{DEFAULT_PERCENT}% or 2GiB, whichever is smaller"),
            Reserve::Percent(p) => write!(f, "{p}%"),
            Reserve::Bytes(b) => f.write_str(&human(*b)),
        }
    }
}

impl FromStr for Reserve {
    type Err = String;

    /// `5%`, `0.5%`, `2GiB`, `512MiB`, `100MB`, `1073741824`, `0` (off) or `default`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected = "expected a percentage of the volume (e.g. 5%) or a size (e.g. 2GiB, 512MiB, 0 for none)";
        if s.eq_ignore_ascii_case("default") {
            return Ok(Reserve::Default);
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid reserve {s:?}: {expected}"))?;
            if !(0.0..=50.0).contains(&p) {
                return Err(format!(
                    "invalid reserve {s:?}: a percentage must be between 0% and 50%"
                ));
            }
            return Ok(Reserve::Percent(p));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid reserve {s:?}: {expected}"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid reserve unit {other:?} in {s:?}: use %, B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Reserve::Bytes)
            .ok_or_else(|| format!("invalid reserve {s:?}: too large"))
    }
}

/// `1.5 GiB`, `300 MiB`, `12 KiB`, `512 B`.
pub fn human(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (u, m) in UNITS {
        if b >= m {
            let v = b as f64 / m as f64;
            return if v >= 100.0 {
                format!("{v:.0} {u}")
            } else {
                format!("{v:.1} {u}")
            };
        }
    }
    format!("{b} B")
}

/// What the guard does to a timeline this pass; pure, from the figures it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Make this timeline read-only: it grew most while free space fell.
    Restrict(TimelineId),
    /// Terminate the sessions of this restricted timeline that write anyway (they turned
    /// the read-only default off).
    Terminate(TimelineId),
    /// Stop this restricted timeline's compute: it keeps writing under half the reserve.
    Stop(TimelineId),
    /// Lift every restriction: free space is back above the reserve plus hysteresis.
    LiftAll,
}

/// One timeline as the guard sees it in a pass.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub id: TimelineId,
    pub running: bool,
    /// Bytes allocated by everything its compute can write (PGDATA, inbox, archive).
    pub total: u64,
    /// Client sessions holding a transaction id (writing) though the timeline is
    /// read-only; counted for restricted timelines only.
    pub writers: u64,
}

/// Decides the guard's actions from free space, the reserve, what was measured and the
/// state kept between passes.
pub(super) fn plan(
    available: u64,
    reserve: u64,
    seen: &[Seen],
    baseline: &HashMap<TimelineId, u64>,
    restricted: &HashMap<TimelineId, Restriction>,
) -> Vec<Action> {
    let mut out = Vec::new();
    if reserve == 0 {
        if !restricted.is_empty() {
            out.push(Action::LiftAll);
        }
        return out;
    }
    if available >= lift_threshold(reserve) {
        if !restricted.is_empty() {
            out.push(Action::LiftAll);
        }
        return out;
    }
    if available < reserve {
        for s in seen.iter().filter(|s| s.running) {
            let Some(r) = restricted.get(&s.id) else {
                continue;
            };
            // A write needs a transaction id, which a read-only transaction never gets;
            // growth after the restriction settled catches what takes none (temporary
            // files of a big sort).
            let evading = s.writers > 0;
            let grew = r.settled && s.total >= r.total_at.saturating_add(MIN_GROWTH);
            if available < reserve / 2 && (evading || grew) {
                out.push(Action::Stop(s.id));
            } else if evading {
                out.push(Action::Terminate(s.id));
            }
        }
    }
    // One restriction at a time: until the last one has settled, the growth seen since may
    // still be its own.
    if available < reserve && restricted.values().all(|r| r.settled) {
        let min_growth = MIN_GROWTH.max(reserve / 8);
        let grower = seen
            .iter()
            .filter(|s| s.running && !restricted.contains_key(&s.id))
            .map(|s| {
                (
                    s.total
                        .saturating_sub(*baseline.get(&s.id).unwrap_or(&s.total)),
                    s.id,
                )
            })
            .filter(|(growth, _)| *growth >= min_growth)
            .max();
        if let Some((_, id)) = grower {
            out.push(Action::Restrict(id));
        }
    }
    out
}

/// Free space at which restrictions are lifted: the reserve plus a quarter, so a timeline
/// is not restricted and lifted over and over around one value.
pub(super) fn lift_threshold(reserve: u64) -> u64 {
    reserve.saturating_add(reserve / 4)
}

/// A timeline the node made read-only.
#[derive(Debug, Clone)]
pub(super) struct Restriction {
    /// Its total bytes once the restriction settled (or when last stopped): growth beyond
    /// is evasion.
    pub total_at: u64,
    /// When it was made read-only.
    pub since: Instant,
    /// Whether `total_at` was measured [`SETTLE`] after the restriction: the WAL its
    /// compute archives after it, and what its terminated transactions had in flight,
    /// are no evasion.
    pub settled: bool,
}

/// Refusals run GC over every timeline at most this often.
const GC_EVERY: Duration = Duration::from_secs(10);

/// How long after a restriction its baseline is taken.
const SETTLE: Duration = Duration::from_secs(2);

/// State of the reserve and its guard, kept by the node.
pub(super) struct SpaceGuard {
    reserve: StdMutex<Reserve>,
    reserve_bytes: AtomicU64,
    available: AtomicU64,
    /// The restricted timelines, as `GET /v1/status` shows them (the guard holds `state`
    /// through a whole pass).
    read_only: StdMutex<Vec<TimelineId>>,
    /// When refusals last ran GC over every timeline.
    last_gc: StdMutex<Option<Instant>>,
    state: Mutex<GuardState>,
}

impl Default for SpaceGuard {
    fn default() -> Self {
        SpaceGuard {
            reserve: StdMutex::new(Reserve::Default),
            reserve_bytes: AtomicU64::new(0),
            available: AtomicU64::new(u64::MAX),
            read_only: StdMutex::new(Vec::new()),
            last_gc: StdMutex::new(None),
            state: Mutex::new(GuardState::default()),
        }
    }
}

#[derive(Default)]
struct GuardState {
    /// Markers of an earlier run read.
    loaded: bool,
    /// Each timeline's total bytes when free space first fell under twice the reserve.
    baseline: HashMap<TimelineId, u64>,
    restricted: HashMap<TimelineId, Restriction>,
}

impl Node {
    /// Sets the reserve (default: [`Reserve::Default`]).
    pub fn set_reserve(&self, reserve: Reserve) {
        *self.space.reserve.lock().unwrap_or_else(|p| p.into_inner()) = reserve;
    }

    /// The reserve as configured.
    pub fn reserve(&self) -> Reserve {
        *self.space.reserve.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free space, the reserve in bytes and the capacity, measured now.
    fn space_now(&self) -> Result<(u64, u64, u64), NodeError> {
        let fs = clone::fs_info(self.layout.root())?;
        let reserve = self.reserve().bytes(fs.capacity);
        self.space.reserve_bytes.store(reserve, Ordering::Relaxed);
        self.space.available.store(fs.available, Ordering::Relaxed);
        self.metrics
            .space_reserve(reserve, self.short_of_space(fs.available, reserve));
        Ok((fs.available, reserve, fs.capacity))
    }

    /// The reserve as `GET /v1/status` shows it.
    pub fn reserve_status(&self) -> Option<SpaceReserve> {
        let (available, reserve, _) = self.space_now().ok()?;
        let read_only = self
            .space
            .read_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(SpaceReserve {
            configured: self.reserve().to_string(),
            reserve_bytes: reserve,
            below_reserve: self.short_of_space(available, reserve),
            read_only_timelines: read_only,
        })
    }

    /// Refuses `what` (a fork, a new root, a snapshot) with 507 when free space is under
    /// the reserve, after restore-window GC of every timeline has had its chance.
    pub(super) async fn ensure_reserve(&self, what: &str) -> Result<(), NodeError> {
        let (available, reserve, _) = self.space_now()?;
        if !self.short_of_space(available, reserve) {
            return Ok(());
        }
        // GC over every timeline at most every GC_EVERY: a client retrying a refused fork
        // must not make the node sweep a thousand timelines per request.
        let gc_due = {
            let mut last = self.space.last_gc.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= GC_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let timelines = if gc_due { self.meta.all()? } else { Vec::new() };
        for rec in timelines {
            if rec.phase != Phase::Ready {
                continue;
            }
            if let Err(e) = self.gc(rec.id).await {
                warn!(timeline = %rec.id, error = %e, "restore-window GC before refusing for lack of space failed");
            }
        }
        let (available, reserve, capacity) = self.space_now()?;
        if !self.short_of_space(available, reserve) {
            info!(
                available,
                reserve, "restore-window GC brought free space back above the reserve"
            );
            return Ok(());
        }
        self.metrics.reserve_refusal();
        let configured = match self.reserve() {
            Reserve::Bytes(_) => String::new(),
            r => format!(" ({r})"),
        };
        let state = if available < reserve {
            format!("below the reserve of {}{configured}", human(reserve))
        } else {
            format!(
                "not yet back above {} (the reserve of {}{configured} plus a quarter) since it fell below it, and branches are read-only until it is",
                human(lift_threshold(reserve)),
                human(reserve)
            )
        };
        Err(NodeError::InsufficientStorage(format!(
            "{what} refused: only {} of {} is free on the storage node's volume, {state}; the reserve is kept so that running branches can keep writing WAL. Free space by deleting branches or snapshots, shortening the restore window (--restore-window), or growing the volume",
            human(available),
            human(capacity),
        )))
    }

    /// Whether the node is short of space: under the reserve, or, while branches are
    /// read-only for lack of it, not yet back above the level that lifts them.
    fn short_of_space(&self, available: u64, reserve: u64) -> bool {
        let restricted = !self
            .space
            .read_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        available < reserve || (restricted && available < lift_threshold(reserve))
    }

    /// Whether a periodic snapshot of `id` should be skipped for lack of space (warns).
    pub(super) fn skip_snapshot_below_reserve(&self, id: TimelineId) -> bool {
        match self.space_now() {
            Ok((available, reserve, _)) if self.short_of_space(available, reserve) => {
                warn!(timeline = %id, available, reserve, "periodic snapshot skipped: free space is below the reserve");
                true
            }
            _ => false,
        }
    }

    /// Runs [`Node::guard_space`] every `every` in a task of its own, for the life of the
    /// process.
    pub fn spawn_space_guard(self: &Arc<Self>, every: Duration) {
        let node = Arc::clone(self);
        let every = every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                if let Err(e) = node.guard_space().await {
                    warn!(error = %e, "space guard failed");
                }
            }
        });
    }

    /// One pass of the guard (see the module's documentation).
    pub async fn guard_space(&self) -> Result<(), NodeError> {
        let pass = Instant::now();
        let mut st = self.space.state.lock().await;
        if !st.loaded {
            self.load_markers(&mut st)?;
            st.loaded = true;
        }
        let (available, reserve, _) = self.space_now()?;
        let watching = reserve > 0 && available < reserve.saturating_mul(2);
        if !watching && st.restricted.is_empty() {
            st.baseline.clear();
            return Ok(());
        }
        let mut seen = Vec::new();
        if watching {
            for rec in self.meta.all()? {
                if rec.phase != Phase::Ready {
                    continue;
                }
                let running = self.running(rec.id).await;
                let sizes = match self.open_dir(&self.dir(rec.id).0) {
                    Ok(tl) => tokio::task::spawn_blocking(move || measure(&tl)).await?,
                    Err(e) => Err(e),
                };
                let total = match sizes {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(timeline = %rec.id, error = %e, "cannot measure the timeline's growth");
                        continue;
                    }
                };
                st.baseline.entry(rec.id).or_insert(total);
                let writers = match (&running, st.restricted.contains_key(&rec.id)) {
                    (Some(r), true) => self.writing_sessions(rec.id, r.port).await.unwrap_or_else(|e| {
                        warn!(timeline = %rec.id, error = %e, "cannot count the sessions writing to a read-only timeline");
                        0
                    }),
                    _ => 0,
                };
                seen.push(Seen {
                    id: rec.id,
                    running: running.is_some(),
                    total,
                    writers,
                });
            }
        }
        for s in &seen {
            if let Some(r) = st.restricted.get_mut(&s.id) {
                if !r.settled && r.since.elapsed() >= SETTLE {
                    r.total_at = s.total;
                    r.settled = true;
                }
            }
        }
        // The filler is stopped first and GC is left to housekeeping: at hundreds of MB/s
        // the reserve lasts seconds, and GC (which drains archive inboxes) can take longer.
        let actions = plan(available, reserve, &seen, &st.baseline, &st.restricted);
        tracing::debug!(
            available, reserve, ?actions, elapsed_ms = pass.elapsed().as_millis() as u64,
            seen = ?seen.iter().map(|s| (s.id, s.running, s.total >> 20, s.writers)).collect::<Vec<_>>(),
            "space guard pass"
        );
        for a in actions {
            let (available, reserve) = (
                self.space.available.load(Ordering::Relaxed),
                self.space.reserve_bytes.load(Ordering::Relaxed),
            );
            match a {
                Action::Restrict(id) => {
                    let s = seen.iter().find(|s| s.id == id);
                    let growth = s.map_or(0, |s| {
                        s.total
                            .saturating_sub(*st.baseline.get(&id).unwrap_or(&s.total))
                    });
                    // Published before the compute turns read-only, so no client sees
                    // the refusal while the status still lists the timeline writable.
                    st.restricted.insert(
                        id,
                        Restriction {
                            total_at: s.map_or(0, |s| s.total),
                            since: Instant::now(),
                            settled: false,
                        },
                    );
                    self.publish(&st);
                    if let Err(e) = self.restrict(id, available, reserve, growth).await {
                        warn!(timeline = %id, error = %e, "cannot make the timeline filling the volume read-only");
                        st.restricted.remove(&id);
                        self.publish(&st);
                    }
                }
                Action::Terminate(id) => {
                    if let Err(e) = self.terminate_writers(id).await {
                        warn!(timeline = %id, error = %e, "cannot end the sessions writing to a read-only timeline");
                    }
                }
                Action::Stop(id) => {
                    let total = seen.iter().find(|s| s.id == id).map_or(0, |s| s.total);
                    if let Some(r) = st.restricted.get_mut(&id) {
                        r.total_at = total;
                    }
                    if let Err(e) = self.stop_compute(id, available, reserve).await {
                        warn!(timeline = %id, error = %e, "cannot stop the compute filling the volume");
                    }
                }
                Action::LiftAll => {
                    let ids: Vec<TimelineId> = st.restricted.keys().copied().collect();
                    for id in ids {
                        match self.lift(id).await {
                            Ok(()) => {
                                st.restricted.remove(&id);
                                info!(timeline = %id, available, reserve, "free space is back above the reserve: the timeline is writable again");
                            }
                            Err(e) => {
                                warn!(timeline = %id, error = %e, "cannot lift the read-only restriction; retrying")
                            }
                        }
                    }
                    st.baseline.clear();
                }
            }
        }
        self.publish(&st);
        Ok(())
    }

    /// Makes the set of restricted timelines visible to status and metrics.
    fn publish(&self, st: &GuardState) {
        let mut ids: Vec<TimelineId> = st.restricted.keys().copied().collect();
        ids.sort();
        self.metrics.space_restricted(ids.len() as u64);
        *self
            .space
            .read_only
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Restrictions an earlier run of the node set, from their markers.
    fn load_markers(&self, st: &mut GuardState) -> Result<(), NodeError> {
        for rec in self.meta.all()? {
            if rec.phase != Phase::Ready {
                continue;
            }
            if self
                .open_dir(&self.dir(rec.id).0)
                .is_ok_and(|d| d.has_file(MARKER))
            {
                let total = self
                    .open_dir(&self.dir(rec.id).0)
                    .and_then(|tl| measure(&tl))
                    .unwrap_or(0);
                st.restricted.insert(
                    rec.id,
                    Restriction {
                        total_at: total,
                        since: Instant::now(),
                        settled: true,
                    },
                );
            }
        }
        Ok(())
    }

    /// Makes timeline `id` read-only: the default for every new transaction, its client
    /// sessions (which may have set their own) terminated.
    async fn restrict(
        &self,
        id: TimelineId,
        available: u64,
        reserve: u64,
        growth: u64,
    ) -> Result<(), NodeError> {
        let Some(r) = self.running(id).await else {
            return Err(NodeError::Conflict(format!(
                "timeline {id} has no running compute"
            )));
        };
        // The marker first: a restriction the node forgets could never be lifted.
        self.open_dir(&self.dir(id).0)?
            .write(
                MARKER,
                format!("{}\n", Utc::now().to_rfc3339()).as_bytes(),
                true,
            )
            .map_err(CloneError::from)?;
        let c = self.connect_compute(id, r.port).await?;
        let q = |source| ControlError::Query {
            what: "making the timeline read-only",
            source,
        };
        let reason = format!(
            "ramify-storage: the volume has {} free, below the reserve of {}, and this branch grew {} meanwhile: it is READ-ONLY until space is freed (drop or truncate data in a session with SET default_transaction_read_only = off, or delete other branches)",
            human(available),
            human(reserve),
            human(growth)
        );
        c.batch_execute(&format!("ALTER SYSTEM SET {SETTING} = on"))
            .await
            .map_err(q)?;
        c.batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(q)?;
        log_in_compute(&c, &reason).await;
        let terminated = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(q)?
            .try_get::<_, i64>(0)
            .unwrap_or(0);
        warn!(
            timeline = %id, available, reserve, growth, terminated_sessions = terminated,
            "free space fell below the reserve: made the timeline that grew most read-only"
        );
        Ok(())
    }

    /// Client sessions of `id`'s compute that hold a transaction id: writing, although
    /// the timeline is read-only.
    async fn writing_sessions(&self, id: TimelineId, port: u16) -> Result<u64, NodeError> {
        let c = self.connect_compute(id, port).await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND backend_xid IS NOT NULL \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|source| ControlError::Query {
                what: "counting writing sessions",
                source,
            })?;
        Ok(n as u64)
    }

    /// Terminates the sessions writing to read-only timeline `id` (see
    /// [`Node::writing_sessions`]).
    async fn terminate_writers(&self, id: TimelineId) -> Result<(), NodeError> {
        let Some(r) = self.running(id).await else {
            return Ok(());
        };
        let c = self.connect_compute(id, r.port).await?;
        log_in_compute(
            &c,
            "ramify-storage: this branch is READ-ONLY because the volume is nearly full; ending the sessions that write anyway (if they go on under half the reserve, the compute is stopped)",
        )
        .await;
        let n: i64 = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND backend_xid IS NOT NULL \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|source| ControlError::Query {
                what: "terminating writing sessions",
                source,
            })?;
        warn!(timeline = %id, sessions = n, "ended sessions that wrote to a read-only timeline");
        Ok(())
    }

    /// Fast shutdown of timeline `id`'s compute, which kept writing while read-only.
    async fn stop_compute(
        &self,
        id: TimelineId,
        available: u64,
        reserve: u64,
    ) -> Result<(), NodeError> {
        let Some(r) = self.running(id).await else {
            return Ok(());
        };
        let c = self.connect_compute(id, r.port).await?;
        let reason = format!(
            "ramify-storage: the volume has {} free, under half the reserve of {}, and this READ-ONLY branch kept writing (a session turned default_transaction_read_only off): stopping this compute; it starts read-only again",
            human(available),
            human(reserve),
        );
        log_in_compute(&c, &reason).await;
        warn!(timeline = %id, available, reserve, "a read-only timeline kept filling the volume under half the reserve: stopping its compute");
        self.metrics.space_compute_stopped();
        // SIGINT to the postmaster is a fast shutdown. The compute may run in another PID
        // namespace (a Pod), so the signal is sent from inside it: a backend's working
        // directory is PGDATA, whose postmaster.pid starts with the postmaster's pid.
        // The connection goes down with the compute, so the statement's error is expected.
        let _ = c
            .batch_execute(
                "COPY (SELECT 1) TO PROGRAM 'read pid < postmaster.pid && kill -INT \"$pid\"'",
            )
            .await;
        Ok(())
    }

    /// Makes timeline `id` writable again, running or not.
    async fn lift(&self, id: TimelineId) -> Result<(), NodeError> {
        let dir = self.dir(id);
        if self.record(id).is_err() {
            return Ok(()); // deleted meanwhile
        }
        match self.running(id).await {
            Some(r) => {
                let c = self.connect_compute(id, r.port).await?;
                let q = |source| ControlError::Query {
                    what: "lifting the read-only restriction",
                    source,
                };
                c.batch_execute(&format!("ALTER SYSTEM RESET {SETTING}"))
                    .await
                    .map_err(q)?;
                c.batch_execute("SELECT pg_reload_conf()")
                    .await
                    .map_err(q)?;
                log_in_compute(
                    &c,
                    "ramify-storage: free space is back above the reserve: this branch is writable again",
                )
                .await;
            }
            None => {
                let pg = self.open_dir(&dir.pgdata())?;
                tokio::task::spawn_blocking(move || reset_auto_conf(&pg)).await??;
            }
        }
        self.open_dir(&dir.0)?
            .remove_file_if_exists(MARKER)
            .map_err(CloneError::from)?;
        Ok(())
    }
}

/// Writes `msg` into the compute's log, so whoever reads it sees why.
async fn log_in_compute(c: &tokio_postgres::Client, msg: &str) {
    let quoted = msg.replace('\'', "''");
    let _ = c
        .batch_execute(&format!("DO $$ BEGIN RAISE LOG '%', '{quoted}'; END $$"))
        .await;
}

/// Takes the restriction's setting out of `postgresql.auto.conf` of a stopped compute, as
/// `ALTER SYSTEM RESET` would: a new file with the old one's owner, renamed over it.
fn reset_auto_conf(pg: &Dir) -> Result<(), NodeError> {
    const FILE: &str = "postgresql.auto.conf";
    let Some(st) = pg.lstat(FILE).map_err(CloneError::from)? else {
        return Ok(());
    };
    let old = pg.read(FILE).map_err(CloneError::from)?;
    let old = String::from_utf8_lossy(&old);
    let ours = |l: &str| l.trim_start().starts_with(SETTING);
    if !old.lines().any(ours) {
        return Ok(());
    }
    let kept: String = old
        .lines()
        .filter(|l| !ours(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = format!("{FILE}.ramify-tmp");
    pg.remove_file_if_exists(&tmp).map_err(CloneError::from)?;
    let mut f = pg.create_file(&tmp, 0o600).map_err(CloneError::from)?;
    use std::io::Write as _;
    f.write_all(kept.as_bytes())
        .and_then(|()| std::os::unix::fs::fchown(&f, Some(st.st_uid), Some(st.st_gid)))
        .and_then(|()| f.sync_all())
        .map_err(io_op(format!("write {FILE} of a stopped compute")))?;
    pg.rename(&tmp, pg, FILE).map_err(CloneError::from)?;
    pg.fsync().map_err(CloneError::from)?;
    Ok(())
}

/// Bytes allocated under the timeline directory `tl` by what its compute writes: PGDATA
/// (temporary files included), the archive inbox and the archive. By `st_blocks`, so
/// XFS's speculative preallocation counts as soon as it is taken, as it does in free
/// space. Resolved beneath the directory (no link followed); what vanishes meanwhile is
/// left out.
fn measure(tl: &Dir) -> Result<u64, NodeError> {
    let mut total = 0;
    for name in ["pgdata", crate::inbox::INBOX, crate::inbox::ARCHIVE] {
        if let Some(d) = tl.open_dir_if_exists(name).map_err(CloneError::from)? {
            total += allocated(&d)?;
        }
    }
    Ok(total)
}

/// Bytes allocated below `dir`.
fn allocated(dir: &Dir) -> Result<u64, NodeError> {
    let mut total = 0u64;
    for e in dir.entries().map_err(CloneError::from)? {
        total += e.stat.st_blocks as u64 * 512;
        if e.kind != Kind::Dir {
            continue;
        }
        match dir.open_dir(Path::new(&e.name)) {
            Ok(d) => total += allocated(&d)?,
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(CloneError::from(err).into()),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn reserve_forms() {
        assert_eq!("5%".parse::<Reserve>().unwrap(), Reserve::Percent(5.0));
        assert_eq!("0.5%".parse::<Reserve>().unwrap(), Reserve::Percent(0.5));
        assert_eq!("2GiB".parse::<Reserve>().unwrap(), Reserve::Bytes(2 * GIB));
        assert_eq!(
            "512MiB".parse::<Reserve>().unwrap(),
            Reserve::Bytes(512 * MIB)
        );
        assert_eq!("0".parse::<Reserve>().unwrap(), Reserve::Bytes(0));
        assert_eq!("default".parse::<Reserve>().unwrap(), Reserve::Default);
        let e = "lots".parse::<Reserve>().unwrap_err();
        assert!(e.contains("5%") && e.contains("2GiB"), "{e}");
        assert!("80%"
            .parse::<Reserve>()
            .unwrap_err()
            .contains("between 0% and 50%"));
        assert!("3 parsecs"
            .parse::<Reserve>()
            .unwrap_err()
            .contains("use %"));
    }

    #[test]
    fn default_is_five_percent_at_most_two_gib() {
        assert_eq!(Reserve::Default.bytes(10 * GIB), GIB / 2);
        assert_eq!(Reserve::Default.bytes(1000 * GIB), 2 * GIB);
        assert_eq!(Reserve::Percent(10.0).bytes(10 * GIB), GIB);
        assert_eq!(Reserve::Bytes(5 * GIB).bytes(GIB), GIB);
    }

    fn seen(id: TimelineId, running: bool, total: u64, writers: u64) -> Seen {
        Seen {
            id,
            running,
            total,
            writers,
        }
    }

    fn restriction(total_at: u64, settled: bool) -> Restriction {
        Restriction {
            total_at,
            since: Instant::now(),
            settled,
        }
    }

    #[test]
    fn the_biggest_running_grower_is_restricted() {
        let (a, b, c) = (
            TimelineId::new_v4(),
            TimelineId::new_v4(),
            TimelineId::new_v4(),
        );
        let base: HashMap<_, _> = [(a, 100 * MIB), (b, 100 * MIB), (c, 100 * MIB)].into();
        let now = [
            seen(a, true, 130 * MIB, 0),
            seen(b, true, 900 * MIB, 0),
            // grew most, but nothing runs on it to stop
            seen(c, false, 2000 * MIB, 0),
        ];
        let none = HashMap::new();
        // above the reserve: nothing
        assert_eq!(plan(600 * MIB, 500 * MIB, &now, &base, &none), vec![]);
        assert_eq!(
            plan(400 * MIB, 500 * MIB, &now, &base, &none),
            vec![Action::Restrict(b)]
        );
        // a little growth (WAL segments of a small writer) is not filling the volume
        let small = [seen(a, true, 150 * MIB, 0)];
        assert_eq!(plan(400 * MIB, 500 * MIB, &small, &base, &none), vec![]);
        // one restriction at a time: the next waits until the last has settled
        let b_fresh: HashMap<_, _> = [(b, restriction(900 * MIB, false))].into();
        let a_grew = [seen(a, true, 400 * MIB, 0), seen(b, true, 900 * MIB, 0)];
        assert_eq!(plan(400 * MIB, 500 * MIB, &a_grew, &base, &b_fresh), vec![]);
        let b_settled: HashMap<_, _> = [(b, restriction(900 * MIB, true))].into();
        assert_eq!(
            plan(400 * MIB, 500 * MIB, &a_grew, &base, &b_settled),
            vec![Action::Restrict(a)]
        );
    }

    #[test]
    fn evasion_is_ended_and_under_half_the_reserve_stops_the_compute() {
        let a = TimelineId::new_v4();
        let base: HashMap<_, _> = [(a, 100 * MIB)].into();
        let restricted: HashMap<_, _> = [(a, restriction(1000 * MIB, true))].into();
        // a session writes anyway: ended under the reserve, the compute stopped under half
        let writing = [seen(a, true, 1001 * MIB, 1)];
        assert_eq!(
            plan(300 * MIB, 500 * MIB, &writing, &base, &restricted),
            vec![Action::Terminate(a)]
        );
        assert_eq!(
            plan(200 * MIB, 500 * MIB, &writing, &base, &restricted),
            vec![Action::Stop(a)]
        );
        // growth with no transaction id (temporary files) under half the reserve
        let grew = [seen(a, true, 1100 * MIB, 0)];
        assert_eq!(
            plan(300 * MIB, 500 * MIB, &grew, &base, &restricted),
            vec![]
        );
        assert_eq!(
            plan(200 * MIB, 500 * MIB, &grew, &base, &restricted),
            vec![Action::Stop(a)]
        );
        // just restricted: what it archives and had in flight is no evasion
        let fresh: HashMap<_, _> = [(a, restriction(1000 * MIB, false))].into();
        assert_eq!(plan(200 * MIB, 500 * MIB, &grew, &base, &fresh), vec![]);
        // a stopped compute is left alone
        let stopped = [seen(a, false, 1100 * MIB, 0)];
        assert_eq!(
            plan(200 * MIB, 500 * MIB, &stopped, &base, &restricted),
            vec![]
        );
    }

    #[test]
    fn lifted_only_above_the_reserve_plus_hysteresis() {
        let a = TimelineId::new_v4();
        let restricted: HashMap<_, _> = [(a, restriction(0, true))].into();
        let base = HashMap::new();
        assert_eq!(plan(550 * MIB, 500 * MIB, &[], &base, &restricted), vec![]);
        assert_eq!(
            plan(630 * MIB, 500 * MIB, &[], &base, &restricted),
            vec![Action::LiftAll]
        );
        // a reserve turned off lifts what an earlier one set
        assert_eq!(plan(0, 0, &[], &base, &restricted), vec![Action::LiftAll]);
    }

    #[test]
    fn a_stopped_computes_setting_is_taken_out_of_its_auto_conf() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("postgresql.auto.conf");
        std::fs::write(
            &conf,
            "# Do not edit this file manually!\nwork_mem = '8MB'\ndefault_transaction_read_only = 'on'\n",
        )
        .unwrap();
        let dir = Dir::open_root(tmp.path()).unwrap();
        reset_auto_conf(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
        // nothing to take out: left as it is
        reset_auto_conf(&dir).unwrap();
        assert!(!dir.has_file("postgresql.auto.conf.ramify-tmp"));
        // no file at all (a compute never started)
        std::fs::remove_file(&conf).unwrap();
        reset_auto_conf(&dir).unwrap();
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(300 * MIB), "300 MiB");
        assert_eq!(human(3 * GIB / 2), "1.5 GiB");
    }
}
