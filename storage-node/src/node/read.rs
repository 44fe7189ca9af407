//! The read side: a timeline's restore window, space figures, and the API views.

use super::*;

/// Timelines a list reads at once (each running compute costs a connection).
const LIST_CONCURRENCY: usize = 16;

impl Node {
    pub(super) async fn window(
        &self,
        rec: &TimelineRecord,
        running: Option<&Running>,
    ) -> Result<RestoreWindow, NodeError> {
        let usable = window::usable(&rec.snapshots, self.wal_kept_from(rec));
        let base = usable.first();
        let (to_lsn, to_time) = match running {
            Some(r) => match self.connect_compute(rec.id, r.port).await {
                // A compute still in recovery (a fork replaying to its point) has no
                // flush LSN yet and no history of its own beyond its fork point: one
                // such compute must not fail the listing of every timeline.
                Ok(c) => match self.position(rec, &c).await {
                    Ok(lsn) => (Some(lsn), Some(Utc::now())),
                    Err(e) => {
                        tracing::debug!(timeline = %rec.id, error = %e, "no flush LSN yet (in recovery?)");
                        (rec.fork_lsn, rec.fork_time)
                    }
                },
                Err(_) => (None, None),
            },
            None => match self.read_pg_control(&self.dir(rec.id).pgdata()) {
                Ok(c) if !self.pg_has(rec.id, "recovery.signal") => {
                    (Some(c.checkpoint), Some(c.time))
                }
                _ => (rec.fork_lsn, rec.fork_time),
            },
        };
        Ok(RestoreWindow {
            from_lsn: base.map(|s| s.info.end_lsn),
            from_time: base.map(|s| s.info.time),
            to_lsn,
            to_time,
        })
    }

    /// The newest position of `rec`'s running compute: its flushed WAL, or for a
    /// following root (a hot standby) what it has replayed.
    pub(super) async fn position(
        &self,
        rec: &TimelineRecord,
        c: &tokio_postgres::Client,
    ) -> Result<Lsn, ControlError> {
        if super::follow::is_standby(rec) {
            control::replay_lsn(c).await
        } else {
            control::flush_lsn(c).await
        }
    }

    /// [`Node::position`] of timeline `id`, `None` when it cannot be read.
    pub(super) async fn position_of(
        &self,
        id: TimelineId,
        c: &tokio_postgres::Client,
    ) -> Option<Lsn> {
        let rec = self.record(id).ok()?;
        self.position(&rec, c).await.ok()
    }

    /// Space figures of every timeline, from one pass over the whole node (a timeline's
    /// exclusive bytes depend on what every other timeline shares with it). Only the
    /// background accountant calls it ([`Node::spawn_accounting`]); API calls answer
    /// from its last pass.
    async fn measure_all(&self) -> Result<HashMap<TimelineId, Usage>, NodeError> {
        let ids: Vec<TimelineId> = self
            .meta
            .all()?
            .into_iter()
            .filter(|r| r.phase == Phase::Ready)
            .map(|r| r.id)
            .collect();
        let scopes: Vec<Scope> = ids
            .iter()
            .map(|id| {
                let d = self.dir(*id);
                Scope {
                    pgdata: d.pgdata(),
                    history: vec![d.archive(), d.inbox(), d.rejected(), d.snapshots()],
                }
            })
            .collect();
        let cache = self.extent_cache.clone();
        let (data, root) = (self.data.clone(), self.layout.root().to_path_buf());
        let usage = tokio::task::spawn_blocking(move || {
            crate::failpoint::hit("accounting.pass");
            accounting::account(&data, &root, &scopes, &cache)
        })
        .await??;
        Ok(ids.into_iter().zip(usage).collect())
    }

    /// Starts the background accountant: a pass over every timeline, then a pause of
    /// twice its duration and at most `every` (earlier when a timeline without figures is
    /// asked for, at once when a caller waits for fresh figures).
    pub fn spawn_accounting(self: &Arc<Self>, every: Duration) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let accountant = node.accountant.clone();
            accountant
                .run(every, || {
                    let node = node.clone();
                    async move { node.measure_all().await.map_err(|e| e.to_string()) }
                })
                .await;
        });
    }

    /// The last accounting pass (for benchmarks and metrics).
    pub fn accounting_pass(&self) -> accounting::PassInfo {
        self.accountant.last_pass()
    }

    /// Every timeline's space figures summed (for metrics), as of the last accounting
    /// pass; `None` before the first one.
    pub fn space_totals(&self) -> Option<Usage> {
        let (usage, at) = self.accountant.all();
        at?;
        Some(usage.values().fold(Usage::default(), |sum, u| Usage {
            logical: sum.logical + u.logical,
            exclusive: sum.exclusive + u.exclusive,
            history: sum.history + u.history,
        }))
    }

    /// Waits for an accounting pass that started after this call.
    async fn fresh_sizes(&self) -> Result<(), NodeError> {
        self.accountant.fresh().await.map_err(|e| NodeError::Io {
            op: "space accounting".into(),
            source: io::Error::other(e.to_string()),
        })
    }

    /// The figures of `id` from the last pass; asks for a pass if it has none yet (a
    /// timeline created since).
    fn sizes_of(&self, id: TimelineId) -> Option<(Usage, DateTime<Utc>)> {
        let sizes = self.accountant.figures(id);
        if sizes.is_none() {
            self.accountant.poke();
        }
        sizes
    }

    /// The API view of a timeline, with the figures of the last accounting pass.
    pub(super) async fn info(&self, rec: &TimelineRecord) -> Result<TimelineInfo, NodeError> {
        self.info_with(rec, self.sizes_of(rec.id)).await
    }

    /// The API view of a timeline with `sizes` (figures and when they were measured;
    /// `None`: not measured, figures 0).
    pub(super) async fn info_with(
        &self,
        rec: &TimelineRecord,
        sizes: Option<(Usage, DateTime<Utc>)>,
    ) -> Result<TimelineInfo, NodeError> {
        let dir = self.dir(rec.id);
        let running = self.running(rec.id).await;
        let restore_window = self.window(rec, running.as_ref()).await?;
        let state = if self.pg_has(rec.id, "PG_VERSION") {
            TimelineState::Ready
        } else {
            TimelineState::Empty
        };
        let (usage, measured_at) = match sizes {
            Some((u, at)) => (u, Some(at)),
            None => (Usage::default(), None),
        };
        Ok(TimelineInfo {
            id: rec.id,
            parent: rec.parent,
            at: rec.at.clone(),
            fork_lsn: rec.fork_lsn,
            fork_time: rec.fork_time,
            state,
            compute: if running.is_some() {
                ComputeState::Running
            } else {
                ComputeState::Stopped
            },
            created_at: rec.created_at,
            pgdata: path_str(&dir.pgdata()),
            archive: path_str(&dir.archive()),
            run_dir: path_str(&dir.run()),
            archive_command: wal::archive_command(),
            logical_bytes: usage.logical,
            exclusive_bytes: usage.exclusive,
            history_bytes: usage.history,
            sizes_measured_at: measured_at,
            restore_window,
            snapshots: rec.snapshots.iter().map(|s| s.info.clone()).collect(),
            follow: self.follow_info(rec, running.as_ref()).await,
            backup: self.backup_status(rec),
        })
    }

    /// `GET /v1/timelines/{id}`: space figures of the last accounting pass, with the
    /// time it started (`sizes_measured_at`).
    pub async fn get(&self, id: TimelineId) -> Result<TimelineInfo, NodeError> {
        let rec = self.record(id)?;
        self.info(&rec).await
    }

    /// `GET /v1/timelines/{id}?sizes=fresh`: waits for an accounting pass that started
    /// after the call, so the figures include everything written before it.
    pub async fn get_fresh(&self, id: TimelineId) -> Result<TimelineInfo, NodeError> {
        self.record(id)?;
        self.fresh_sizes().await?;
        self.get(id).await
    }

    /// `GET /v1/timelines/{id}?sizes=false`: everything but the space figures (left 0),
    /// what starting a compute needs, on every wake.
    pub async fn get_without_sizes(&self, id: TimelineId) -> Result<TimelineInfo, NodeError> {
        let rec = self.record(id)?;
        self.info_with(&rec, None).await
    }

    /// `GET /v1/timelines`: space figures of the last accounting pass. Timelines are
    /// read a few at a time, so the queries to running computes (for their restore
    /// window) overlap instead of adding up.
    pub async fn list(&self) -> Result<Vec<TimelineInfo>, NodeError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let (usage, at) = self.accountant.all();
        let recs: Vec<TimelineRecord> = self
            .meta
            .all()?
            .into_iter()
            .filter(|r| r.phase == Phase::Ready)
            .collect();
        let views = recs.into_iter().map(|rec| {
            let sizes = at.and_then(|at| Some((*usage.get(&rec.id)?, at)));
            if sizes.is_none() {
                self.accountant.poke();
            }
            async move { self.info_with(&rec, sizes).await }
        });
        stream::iter(views)
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await
    }

    /// `GET /v1/timelines?sizes=fresh`: [`Node::list`] after a pass that started after
    /// the call.
    pub async fn list_fresh(&self) -> Result<Vec<TimelineInfo>, NodeError> {
        self.fresh_sizes().await?;
        self.list().await
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let fs = clone::fs_info(self.layout.root())?;
        let timelines = self
            .meta
            .all()?
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .count();
        Ok(NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: path_str(self.layout.root()),
            clone_method: self.clone_method,
            filesystem: fs.fs_type,
            capacity_bytes: fs.capacity,
            used_bytes: fs.used,
            available_bytes: fs.available,
            timelines,
            restore_window_seconds: self.cfg.restore_window.as_secs(),
            snapshot_interval_seconds: self.cfg.snapshot_interval.as_secs(),
            snapshot_wal_bytes: self.cfg.snapshot_wal_bytes,
            reserve: self.reserve_status(),
            backup: self.backups().map(|b| {
                let r = b.repo();
                ramify_api::NodeBackupRepo {
                    endpoint: format!("{}:{}", r.endpoint, r.port),
                    bucket: r.bucket.clone(),
                    prefix: r.prefix.clone(),
                }
            }),
        })
    }
}
