//! Warm standbys: forks of a physical follower at latest without replaying its source's
//! WAL since its last checkpoint.
//!
//! A hot standby can restart only from its source's last checkpoint, so any copy of a
//! follower — a backup, a snapshot — replays everything the source wrote since (up to its
//! `checkpoint_timeout`) before its first query: seconds under load. The node therefore
//! keeps, next to each physical follower, a second standby it runs itself: a clone of the
//! follower's newest snapshot that replays the same WAL, fed by the node from the
//! follower's own files. A fork at latest promotes it — it replays only what arrived in
//! the last second — shuts it down cleanly and takes its PGDATA as the fork's, whose
//! first start then replays nothing. The node builds the next one in the background; a
//! fork that finds none ready (still catching up, or failed) is served as before.
//!
//! It runs in the node, so it is kept from everything else there:
//! * its configuration is the node's own, never a file of the cloned PGDATA (which a
//!   superuser of the source can write through the follower's compute): the settings a
//!   standby must match are read back as integers only;
//! * no connection ever reaches it (`hot_standby = off`, sockets in a 0700 directory of
//!   its own): the node controls it with signals, `pg_control` and its process title,
//!   never SQL, so no function the source's catalog redefines runs here;
//! * it writes only beneath its own directory, its socket directory and `/dev/shm`
//!   (Landlock, [`crate::sandbox`]) and dies with the node (`PR_SET_PDEATHSIG`);
//! * it reads WAL only from its own `pg_wal`, which the node fills through the no-follow
//!   handles of [`crate::beneath`].
//!
//! Its cost: one more Postgres per physical follower (32 MB of shared buffers), replaying
//! the follower's WAL a second time, and the blocks it rewrites (bounded by rebuilding it
//! from a newer snapshot after every fork).

use std::collections::HashMap;

use ramify_compute::{ComputeSettings, PgBin, PgUser, RunningCompute, StopMode};

use super::super::fork::Fork;
use super::super::*;
use super::physical::{write_standby_conf, STANDBY_MINIMUMS};

/// How often the keeper feeds WAL to each warm standby and builds missing ones.
pub const KEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a failed build waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a fork at latest waits for a warm standby the keeper is feeding (or that is
/// replaying what it was just fed) before it replays the follower's WAL instead: a feed
/// takes tens of milliseconds, once a second.
const FORK_WAITS_FOR_FEED: Duration = Duration::from_secs(1);
/// How long a warm standby's start and promotion may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const PROMOTE_TIMEOUT_SECS: u32 = 60;

/// The warm standby's own settings, after the minimums its source requires.
const WARM_SETTINGS: &str = "\
# A warm standby of the storage node: nobody connects, it only replays.\n\
hot_standby = off\n\
shared_buffers = '32MB'\n\
wal_retrieve_retry_interval = '200ms'\n\
checkpoint_timeout = '30s'\n\
log_checkpoints = off\n\
# What replay writes goes to disk as it is written, not all at the fork's shutdown\n\
# checkpoint (which fsyncs every file replay touched since the last restartpoint).\n\
backend_flush_after = '1MB'\n";

/// One follower's warm standby, as the keeper tracks it.
pub(in crate::node) enum Slot {
    /// Being built (or promoted for a fork): nobody else touches it.
    Busy,
    /// Taken by the keeper to feed it the newest WAL, for a moment; whether it had caught
    /// up before. A fork waits for it to come back.
    Feeding { caught_up: bool },
    /// Running and fed.
    Ready(Box<Warm>),
    /// The last build failed; the next waits until then.
    Failed(Instant),
}

/// A running warm standby.
pub(in crate::node) struct Warm {
    /// `<data>/warm/<follower>`: `pgdata/` and `archive-inbox/`.
    dir: PathBuf,
    /// Its socket directory (and server log), 0700, outside the data directory.
    sockets: tempfile::TempDir,
    running: RunningCompute,
    /// The last segment fed (it may have been partial, so it is fed again).
    fed: u64,
    /// The newest Postgres timeline among the history files fed: after a failover of the
    /// source, the one the follower went on to, which it must switch to as well.
    fed_tli: u32,
    minimums: Vec<(String, String)>,
    /// Whether it had caught up when the keeper last began to feed it. Back from that
    /// feed, it replays what the feed brought for a moment: a fork that finds it so
    /// waits, as it does for one being fed.
    caught_up_at_feed: bool,
}

/// What a warm standby reports of itself through its startup process's title.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// Replaying (or waiting for) this segment of this Postgres timeline.
    At {
        tli: u32,
        segno: u64,
    },
    Unknown,
}

impl Node {
    /// Keeps a warm standby beside every physical follower whose compute runs: builds
    /// missing ones, feeds them, and stops those whose follower is gone.
    pub fn spawn_warm_standbys(self: &Arc<Self>) {
        {
            let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            w.get_or_insert_with(HashMap::new);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(KEEP_EVERY);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                if let Err(e) = node.keep_warm().await {
                    warn!(error = %e, "keeping warm standbys failed");
                }
            }
        });
    }

    async fn keep_warm(self: &Arc<Self>) -> Result<(), NodeError> {
        let followers: Vec<TimelineId> = self
            .meta
            .all()?
            .into_iter()
            .filter(|r| r.phase == Phase::Ready && super::is_standby(r))
            .map(|r| r.id)
            .collect();
        // Warm standbys of followers that are gone.
        let orphans: Vec<(TimelineId, Slot)> = {
            let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            let Some(m) = w.as_mut() else { return Ok(()) };
            let gone: Vec<TimelineId> = m
                .keys()
                .filter(|id| !followers.contains(id))
                .copied()
                .collect();
            gone.into_iter()
                .filter_map(|id| match m.get(&id) {
                    Some(Slot::Busy | Slot::Feeding { .. }) => None,
                    _ => m.remove(&id).map(|s| (id, s)),
                })
                .collect()
        };
        for (id, slot) in orphans {
            if let Slot::Ready(w) = slot {
                self.discard_warm(id, *w, "its follower is gone").await;
            }
        }
        for id in followers {
            let Some(port) = self.running(id).await.map(|r| r.port) else {
                continue;
            };
            let taken = {
                let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                let Some(m) = w.as_mut() else { return Ok(()) };
                match m.get(&id) {
                    Some(Slot::Busy | Slot::Feeding { .. }) => continue,
                    Some(Slot::Failed(at)) if at.elapsed() < RETRY_AFTER => continue,
                    _ => {}
                }
                match m.remove(&id) {
                    Some(Slot::Ready(mut w)) => {
                        let caught_up = w.caught_up();
                        w.caught_up_at_feed = caught_up;
                        m.insert(id, Slot::Feeding { caught_up });
                        Some(w)
                    }
                    _ => {
                        m.insert(id, Slot::Busy);
                        None
                    }
                }
            };
            let slot = match taken {
                Some(mut w) => match self.feed_warm(id, port, &mut w).await {
                    Ok(()) => Slot::Ready(w),
                    Err(e) => {
                        self.discard_warm(id, *w, &format!("feeding it failed: {e}"))
                            .await;
                        Slot::Failed(Instant::now())
                    }
                },
                None => {
                    let node = self.clone();
                    // Built in its own task: a long catch-up never delays feeding the
                    // others. The slot stays Busy until it is done.
                    tokio::spawn(async move {
                        let slot = match node.build_warm(id, port).await {
                            Ok(w) => Slot::Ready(Box::new(w)),
                            Err(e) => {
                                warn!(timeline = %id, error = %e, "cannot build a warm standby for fast forks of this follower; forks replay its WAL instead (retrying in 30 s)");
                                let _ = node.remove_tree(&node.layout.warm(id));
                                Slot::Failed(Instant::now())
                            }
                        };
                        node.put_warm(id, slot);
                    });
                    continue;
                }
            };
            self.put_warm(id, slot);
        }
        Ok(())
    }

    fn put_warm(&self, id: TimelineId, slot: Slot) {
        let mut w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = w.as_mut() {
            m.insert(id, slot);
        }
    }

    /// Whether follower `id` has a warm standby that has caught up ("ready"), one on its
    /// way ("catching up", "starting") or none; `None` when the node keeps none.
    pub(in crate::node) fn warm_state(&self, id: TimelineId) -> Option<String> {
        let w = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        let m = w.as_ref()?;
        Some(
            match m.get(&id) {
                Some(Slot::Ready(w)) if w.caught_up() => "ready",
                Some(Slot::Ready(_)) => "catching up",
                // Fed once a second: it serves a fork as soon as that is done.
                Some(Slot::Feeding { caught_up: true }) => "ready",
                Some(Slot::Feeding { caught_up: false }) => "catching up",
                Some(Slot::Busy) => "busy",
                Some(Slot::Failed(_)) => "failed",
                None => "none",
            }
            .into(),
        )
    }

    /// A clone of the follower's newest snapshot and the WAL since, started as a standby
    /// that reads only its own `pg_wal`.
    async fn build_warm(&self, id: TimelineId, port: u16) -> Result<Warm, NodeError> {
        // It writes as much as its follower replays: never into the space reserve.
        self.ensure_reserve("a warm standby").await?;
        let (bin, _) = self.follow_bin()?;
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        let dir = self.layout.warm(id);
        self.remove_tree(&dir)?;
        std::fs::create_dir_all(self.layout.warm_root())
            .map_err(io_op("create the warm standbys' directory"))?;
        set_mode(&self.layout.warm_root(), 0o700)?;
        let warm = self
            .open_dir(&self.layout.warm_root())?
            .create_dir(id.to_string(), 0o700)
            .map_err(CloneError::from)?;
        warm.create_dir("archive-inbox", 0o700)
            .map_err(CloneError::from)?;
        let pdir = self.dir(id);
        let received = received_segment(&self.follower_status(id, port).await?)?;
        let t0 = Instant::now();
        let base = {
            // Held while the snapshot and WAL are cloned: GC removes neither meanwhile.
            let _history = self.history_of(id).read_owned().await;
            let rec = self.record(id)?;
            let base = rec
                .snapshots
                .iter()
                .max_by_key(|s| s.info.end_lsn)
                .cloned()
                .ok_or_else(|| NodeError::Conflict(format!("follower {id} has no snapshot")))?;
            let src = self.open_dir(&pdir.snapshot_pgdata(&base.info.name))?;
            let (method, dst) = (self.clone_method, self.open_dir(&dir)?);
            tokio::task::spawn_blocking(move || {
                clone::clone_tree_whole(&src, &dst, "pgdata", method, &|_: &Path, _| false)
            })
            .await??;
            self.gather_for_warm(
                &pdir,
                &dir,
                base.info.start_lsn.segment(SEGMENT_SIZE),
                received,
            )
            .await?;
            base
        };
        let pgdata = dir.join("pgdata");
        let minimums = read_minimums(&self.open_dir(&pgdata)?);
        write_standby_conf(&pgdata, &minimums, WARM_SETTINGS, &user)?;
        let pg = self.open_dir(&pgdata)?;
        for f in ["recovery.signal", "postmaster.pid", pgdata::RECOVERY_CONF] {
            pg.remove_file_if_exists(f).map_err(CloneError::from)?;
        }
        pg.write("standby.signal", b"", false)
            .map_err(CloneError::from)?;
        let sockets = tempfile::Builder::new()
            .prefix("ramify-warm-")
            .tempdir()
            .map_err(io_op("make a warm standby's socket directory"))?;
        user.chown(sockets.path())
            .map_err(ramify_compute::ProcessError::from)?;
        let running = start_confined(&bin, &user, &dir, sockets.path()).await?;
        info!(
            timeline = %id, base = %base.info.name, from = %base.info.start_lsn,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "started a warm standby for fast forks of this follower"
        );
        let fed_tli = newest_fed_timeline(&self.open_dir(&pgdata)?);
        Ok(Warm {
            dir,
            sockets,
            running,
            fed: received,
            fed_tli,
            minimums,
            caught_up_at_feed: false,
        })
    }

    /// Feeds the warm standby the follower's WAL from the last segment fed to the one it
    /// receives now.
    async fn feed_warm(&self, id: TimelineId, port: u16, w: &mut Warm) -> Result<(), NodeError> {
        let status = self.follower_status(id, port).await?;
        self.feed_warm_to(id, w, &status).await
    }

    /// Feeds the warm standby up to the segment of what the follower reported receiving.
    async fn feed_warm_to(
        &self,
        id: TimelineId,
        w: &mut Warm,
        status: &ramify_api::FollowStatus,
    ) -> Result<(), NodeError> {
        // A zombie or a stale pid file counts as exited.
        if !ramify_compute::process::is_running(&w.dir.join("pgdata"))? {
            return Err(NodeError::Conflict("its Postgres exited".into()));
        }
        let received = received_segment(status)?;
        self.gather_for_warm(&self.dir(id), &w.dir, w.fed, received)
            .await?;
        w.fed = w.fed.max(received);
        w.fed_tli = newest_fed_timeline(&self.open_dir(&w.dir.join("pgdata"))?);
        Ok(())
    }

    async fn follower_status(
        &self,
        id: TimelineId,
        port: u16,
    ) -> Result<ramify_api::FollowStatus, NodeError> {
        let c = self.connect_compute(id, port).await?;
        Ok(control::follow_status(&c).await?)
    }

    /// Clones segments `from..=to` (and every history file) of the follower in `pdir`
    /// into the warm standby's `pg_wal`, its own newest copy first.
    async fn gather_for_warm(
        &self,
        pdir: &TimelineDir,
        warm: &Path,
        from: u64,
        to: u64,
    ) -> Result<(), NodeError> {
        let pw = self
            .open_dir(&warm.join("pgdata"))?
            .ensure_dir("pg_wal", 0o700)
            .map_err(CloneError::from)?;
        let sources = self.wal_sources(&[pdir.pg_wal(), pdir.archive(), pdir.inbox()])?;
        let method = self.clone_method;
        tokio::task::spawn_blocking(move || {
            let sources: Vec<&Dir> = sources.iter().collect();
            wal::gather_as(
                &pw,
                &sources,
                from..=to.max(from),
                method,
                wal::Existing::Rewrite,
            )
        })
        .await??;
        Ok(())
    }

    /// Serves a fork at latest of follower `parent` from its warm standby, if one has
    /// caught up: the newest WAL is fed, the standby promoted and shut down cleanly, and
    /// its PGDATA (and what it archived) moved into the fork's staging directory `dir`.
    /// Returns the fork and its point on the follower's history; `None` (the fork is
    /// then served as before) when there is no such standby or any step fails.
    pub(in crate::node) async fn fork_from_warm(
        &self,
        parent: TimelineId,
        port: u16,
        dir: &TimelineDir,
    ) -> Option<(Fork, Lsn)> {
        let t0 = Instant::now();
        // One being fed, or replaying what it was just fed, is waited for a moment: the
        // keeper feeds every second, and a fork that missed it by chance would otherwise
        // replay the follower's WAL.
        // Only one that had caught up before its feed is waited for: one still catching
        // up after its build may take minutes, and the fork replays instead.
        let mut fed_caught_up = false;
        let w = loop {
            {
                let mut g = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                let m = g.as_mut()?;
                match m.remove(&parent) {
                    Some(Slot::Ready(w)) if w.caught_up() => {
                        m.insert(parent, Slot::Busy);
                        break w;
                    }
                    Some(s @ Slot::Feeding { caught_up: true })
                        if t0.elapsed() < FORK_WAITS_FOR_FEED =>
                    {
                        fed_caught_up = true;
                        m.insert(parent, s);
                    }
                    // Back from its feed, replaying what it was fed (the fork may have
                    // come after the feed and never seen it).
                    Some(Slot::Ready(w))
                        if (fed_caught_up || w.caught_up_at_feed)
                            && t0.elapsed() < FORK_WAITS_FOR_FEED =>
                    {
                        fed_caught_up = true;
                        m.insert(parent, Slot::Ready(w));
                    }
                    Some(other) => {
                        m.insert(parent, other);
                        return None;
                    }
                    None => return None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let result = self.promote_warm(parent, port, *w, dir).await;
        // The next one is built by the keeper from a newer snapshot.
        // No slot: the keeper builds the next one at its next tick.
        if let Some(m) = self.warm.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            m.remove(&parent);
        }
        match result {
            Ok((fork, at)) => {
                info!(timeline = %parent, fork_lsn = %at, elapsed_ms = t0.elapsed().as_millis() as u64, "fork served by the follower's warm standby");
                Some((fork, at))
            }
            Err(e) => {
                warn!(timeline = %parent, error = %e, "the warm standby could not serve this fork; it replays the follower's WAL instead");
                let _ = self.remove_tree(&self.layout.warm(parent));
                let _ = self.remove_tree(&dir.pgdata());
                None
            }
        }
    }

    async fn promote_warm(
        &self,
        parent: TimelineId,
        port: u16,
        mut w: Warm,
        dir: &TimelineDir,
    ) -> Result<(Fork, Lsn), NodeError> {
        let (bin, _) = self.follow_bin()?;
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        // What the follower had replayed when the fork was asked for: the fork must hold
        // at least that (a warm standby that did not follow the source's switch to a new
        // timeline would stop short of it).
        // One reading of the follower serves both: the floor, and how far to feed.
        let t_feed = Instant::now();
        let fed: Result<Lsn, NodeError> = async {
            let s = self
                .follower_status(parent, port)
                .await
                .map_err(|_| NodeError::Conflict("the follower did not answer".into()))?;
            let floor = s.replayed_lsn.ok_or_else(|| {
                NodeError::Conflict("the follower did not report its replay position".into())
            })?;
            self.feed_warm_to(parent, &mut w, &s).await?;
            Ok(floor)
        }
        .await;
        let floor = match fed {
            Ok(floor) => floor,
            Err(e) => {
                let _ = w.running.kill9();
                return Err(e);
            }
        };
        // Just fed the history file of the source's new timeline: promoted before it
        // switches, it would end on the old one.
        if !w.on_newest_timeline(Duration::from_secs(3)).await {
            let _ = w.running.kill9();
            return Err(NodeError::Conflict(format!(
                "it did not switch to timeline {} within 3 s",
                w.fed_tli
            )));
        }
        let pgdata = w.dir.join("pgdata");
        let t_promote = Instant::now();
        let promoted = promote(&bin, &user, &pgdata).await;
        let t_stop = Instant::now();
        let stopped = w.running.stop(&bin, &user, StopMode::Fast).await;
        promoted?;
        stopped?;
        info!(
            timeline = %parent,
            feed_ms = (t_promote - t_feed).as_millis() as u64,
            promote_ms = (t_stop - t_promote).as_millis() as u64,
            stop_ms = t_stop.elapsed().as_millis() as u64,
            "promoted and stopped the warm standby"
        );
        let pg = self.open_dir(&pgdata)?;
        let c = self.read_pg_control(&pgdata)?;
        let history = pg
            .open_dir("pg_wal")
            .and_then(|d| d.read(format!("{:08X}.history", c.timeline)))
            .map_err(CloneError::from)?;
        let at = switch_point(&String::from_utf8_lossy(&history)).ok_or_else(|| {
            NodeError::Conflict(format!(
                "timeline {} has no history file after promotion",
                c.timeline
            ))
        })?;
        if at < floor {
            return Err(NodeError::Conflict(format!(
                "it ended recovery at {at}, before the {floor} the follower had replayed (a timeline it did not follow?)"
            )));
        }
        if c.state != pgcontrol::ClusterState::ShutDown || pg.has_file("standby.signal") {
            return Err(NodeError::Conflict(
                "it did not promote and shut down cleanly".into(),
            ));
        }
        // The fork runs with the follower's own settings.
        write_standby_conf(&pgdata, &w.minimums, "", &user)?;
        pg.remove_file_if_exists(ramify_compute::process::SERVER_LOG)
            .map_err(CloneError::from)?;
        drop(pg);
        // Its PGDATA becomes the fork's, and what it archived (the new timeline's history
        // file, the old timeline's partial segment) the fork's to archive.
        let warm = self.open_dir(&w.dir)?;
        let staging = self.open_dir(&dir.0)?;
        warm.rename("pgdata", &staging, "pgdata")
            .map_err(CloneError::from)?;
        let (from, to) = (
            warm.open_dir("archive-inbox").map_err(CloneError::from)?,
            self.open_dir(&dir.inbox())?,
        );
        for e in from.entries().map_err(CloneError::from)? {
            from.rename(&e.name, &to, &e.name)
                .map_err(CloneError::from)?;
        }
        drop((warm, from, to, w.sockets));
        self.remove_tree(&w.dir)?;
        Ok((
            Fork {
                start_lsn: c.redo,
                lsn: c.checkpoint,
                consistent_lsn: c.checkpoint,
                time: c.time,
                pg_timeline: c.timeline,
                recovery: RecoveryTarget::None,
                plain_start: true,
            },
            at,
        ))
    }

    async fn discard_warm(&self, id: TimelineId, w: Warm, why: &str) {
        info!(timeline = %id, why, "stopping a warm standby");
        let _ = w.running.kill9();
        drop(w.sockets);
        if let Err(e) = self.remove_tree(&w.dir) {
            warn!(timeline = %id, error = %e, "cannot remove a warm standby's directory");
        }
    }

    /// At start-up: a warm standby left by an earlier run (its Postgres died with that
    /// node, or is killed here) is removed; the keeper builds a new one.
    pub(in crate::node) fn remove_leftover_warm(&self) -> Result<(), NodeError> {
        let root = self.layout.warm_root();
        let Ok(d) = self.open_dir(&root) else {
            return Ok(());
        };
        for e in d.entries().map_err(CloneError::from)? {
            let pgdata = root.join(&e.name).join("pgdata");
            if let Err(err) = ramify_compute::process::kill9(&pgdata) {
                warn!(dir = %pgdata.display(), error = %err, "cannot stop a leftover warm standby");
            }
            self.remove_tree(&root.join(&e.name))?;
        }
        Ok(())
    }
}

impl Warm {
    /// Caught up when its startup process replays (or waits for) the segment before the
    /// last one fed or a later one, on the newest timeline fed: promoting it replays at
    /// most two segments. (A standby promoted before it switched to a newer timeline
    /// would end on the old one, short of what the follower replayed.)
    fn caught_up(&self) -> bool {
        match replay_of(self.running.pid()) {
            Replay::At { tli, segno } => tli >= self.fed_tli && segno + 1 >= self.fed,
            Replay::Unknown => false,
        }
    }

    /// Waits up to `limit` for it to switch to the newest timeline fed: it rescans for a
    /// new history file whenever it runs out of WAL (every `wal_retrieve_retry_interval`).
    async fn on_newest_timeline(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if matches!(replay_of(self.running.pid()), Replay::At { tli, .. } if tli >= self.fed_tli)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts the warm standby in `dir` confined to its directories, dying with the node.
async fn start_confined(
    bin: &PgBin,
    user: &PgUser,
    dir: &Path,
    sockets: &Path,
) -> Result<RunningCompute, NodeError> {
    let settings = ComputeSettings {
        port: 5432,
        listen_addresses: String::new(),
        run_dir: sockets.to_path_buf(),
        archive_command: wal::archive_command(),
        parameters: Default::default(),
        standby: None,
        archive_timeout_secs: None,
    };
    let shm = Path::new("/dev/shm");
    let mut writable = vec![dir, sockets];
    if shm.is_dir() {
        writable.push(shm);
    }
    let jail = crate::sandbox::WriteJail::beneath_all(&writable)
        .map_err(io_op("confine a warm standby"))?;
    if jail.is_none() {
        warn!("this kernel has no Landlock: a warm standby runs unconfined");
    }
    let running = ramify_compute::process::start_with(
        bin,
        user,
        &dir.join("pgdata"),
        &settings,
        START_TIMEOUT,
        |cmd| {
            if let Some(j) = &jail {
                j.confine(cmd);
            }
            crate::sandbox::die_with_parent(cmd, libc::SIGQUIT);
        },
    )
    .await?;
    Ok(running)
}

/// `pg_ctl promote -w`: returns once the server is in production.
async fn promote(bin: &PgBin, user: &PgUser, pgdata: &Path) -> Result<(), NodeError> {
    let pg_ctl = bin
        .tool("pg_ctl")
        .ok_or_else(|| NodeError::Conflict("pg_ctl not found next to initdb".into()))?;
    let mut cmd = tokio::process::Command::new(pg_ctl);
    cmd.args([
        "promote",
        "-w",
        "-t",
        &PROMOTE_TIMEOUT_SECS.to_string(),
        "-D",
    ])
    .arg(pgdata)
    .stdin(std::process::Stdio::null());
    user.apply_tokio(&mut cmd);
    let out = cmd.output().await.map_err(io_op("run pg_ctl promote"))?;
    if !out.status.success() {
        return Err(NodeError::Conflict(format!(
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The settings a standby must match, read from the node-written `postgresql.conf` of a
/// follower's snapshot: only those names, only whole numbers (anything else in the file
/// is ignored — it may have been written by whoever controls the source).
fn read_minimums(pgdata: &Dir) -> Vec<(String, String)> {
    let text = pgdata.read("postgresql.conf").unwrap_or_default();
    parse_minimums(&String::from_utf8_lossy(&text))
}

fn parse_minimums(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim().trim_matches('\'');
        if STANDBY_MINIMUMS.contains(&name)
            && !value.is_empty()
            && value.len() < 10
            && value.bytes().all(|b| b.is_ascii_digit())
        {
            out.retain(|(n, _)| n != name);
            out.push((name.to_owned(), value.to_owned()));
        }
    }
    out
}

/// The segment holding the WAL the follower reports as received.
fn received_segment(s: &ramify_api::FollowStatus) -> Result<u64, NodeError> {
    let lsn = s
        .received_lsn
        .or(s.replayed_lsn)
        .ok_or_else(|| NodeError::Conflict("the follower reports no WAL position".into()))?;
    Ok(Lsn(lsn.0.saturating_sub(1)).segment(SEGMENT_SIZE))
}

/// The newest Postgres timeline with a history file in a warm standby's `pg_wal`.
fn newest_fed_timeline(pgdata: &Dir) -> u32 {
    pgdata
        .open_dir("pg_wal")
        .map(|d| wal::newest_timeline(&d))
        .unwrap_or(1)
}

/// The point where the newest timeline of a history file branched off its parent.
fn switch_point(history: &str) -> Option<Lsn> {
    history
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|s| s.parse::<Lsn>().ok())
        .next_back()
}

/// The segment the startup process of the postmaster `pid` replays, from its process
/// title (`postgres: startup recovering 000000010000000000000003` or `… waiting for …`).
fn replay_of(pid: i32) -> Replay {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Replay::Unknown;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so parse after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid != Some(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{child}/cmdline")) else {
            continue;
        };
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if let Some(r) = parse_title(&title) {
            return r;
        }
    }
    Replay::Unknown
}

fn parse_title(title: &str) -> Option<Replay> {
    let rest = title.trim().strip_prefix("postgres: ")?;
    let rest = rest.split_once("startup ")?.1;
    let seg = rest
        .strip_prefix("recovering ")
        .or_else(|| rest.strip_prefix("waiting for "))?;
    match wal::parse_name(seg.split_whitespace().next()?) {
        Some(wal::WalFile::Segment { tli, segno }) => Some(Replay::At { tli, segno }),
        _ => Some(Replay::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_standby_minimums_as_whole_numbers_are_read_back() {
        let conf = "# comment\nmax_connections = '100'\nmax_wal_senders = 10\n\
                    archive_command = 'rm -rf /'\nmax_worker_processes = '8; shared_preload_libraries=x'\n\
                    include '/etc/passwd'\nmax_connections = '200'\n";
        assert_eq!(
            parse_minimums(conf),
            vec![
                ("max_wal_senders".to_owned(), "10".to_owned()),
                ("max_connections".to_owned(), "200".to_owned()),
            ]
        );
    }

    #[test]
    fn the_switch_point_is_the_newest_timelines() {
        let h = "1\t0/3000000\tno recovery target specified\n\n2\t0/5A000A0\tno recovery target specified\n";
        assert_eq!(switch_point(h), Some(Lsn(0x5A0_00A0)));
        assert_eq!(switch_point(""), None);
    }

    #[test]
    fn the_startup_process_title_names_its_segment() {
        assert_eq!(
            parse_title("postgres: startup recovering 000000010000000200000003"),
            Some(Replay::At {
                tli: 1,
                segno: 2 * 256 + 3
            })
        );
        assert_eq!(
            parse_title("postgres: main: startup waiting for 00000002000000000000000A   "),
            Some(Replay::At { tli: 2, segno: 10 })
        );
        assert_eq!(parse_title("postgres: checkpointer"), None);
        assert_eq!(parse_title("postgres: startup "), None);
    }
}
