//! Prometheus metrics of the storage node, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ramify_api::At;

/// Counters the node keeps; rendered by `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    forks: Mutex<BTreeMap<&'static str, (u64, f64)>>,
    /// Successful creates' durations by kind of fork, in [`CREATE_BUCKETS`].
    create_durations: Mutex<BTreeMap<&'static str, Histogram>>,
    fork_errors: Mutex<BTreeMap<&'static str, u64>>,
    snapshots: AtomicU64,
    http_requests: AtomicU64,
    /// The space reserve in bytes (see `node::reserve`).
    reserve_bytes: AtomicU64,
    /// 1 while free space is below the reserve.
    below_reserve: AtomicU64,
    /// Timelines made read-only because they were filling the volume.
    space_read_only: AtomicU64,
    /// Computes stopped because they kept filling the volume while read-only.
    space_computes_stopped: AtomicU64,
    /// Forks, new roots and snapshots refused for lack of space.
    reserve_refusals: AtomicU64,
}

/// Upper bounds (seconds) of the create-duration histogram's buckets: a reflink fork takes
/// milliseconds, a fork at an LSN replays WAL for seconds, a copy (no reflinks) minutes.
pub const CREATE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A Prometheus histogram over [`CREATE_BUCKETS`]: observations counted per bucket
/// (not cumulative; [`Histogram::render`] accumulates), their count and sum.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; CREATE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = CREATE_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The `_bucket` (cumulative, `+Inf` last), `_sum` and `_count` lines of one series.
    fn render(&self, s: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, n) in CREATE_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(s, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(s, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(s, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(s, "{name}_count{{{labels}}} {}", self.count);
    }
}

fn at_label(at: Option<&At>) -> &'static str {
    match at {
        None => "root",
        Some(At::Latest) => "latest",
        Some(At::Lsn(_)) => "lsn",
        Some(At::Time(_)) => "time",
        Some(At::Snapshot(_)) => "snapshot",
    }
}

impl Metrics {
    pub fn fork_ok(&self, at: Option<&At>, took: Duration) {
        let mut m = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(at_label(at)).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
        drop(m);
        self.create_durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(at_label(at))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn fork_failed(&self, code: &'static str) {
        *self
            .fork_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub fn snapshot_taken(&self) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The reserve in bytes and whether free space is below it, as last measured.
    pub fn space_reserve(&self, reserve_bytes: u64, below: bool) {
        self.reserve_bytes.store(reserve_bytes, Ordering::Relaxed);
        self.below_reserve
            .store(u64::from(below), Ordering::Relaxed);
    }

    /// How many timelines are read-only for lack of space now.
    pub fn space_restricted(&self, timelines: u64) {
        self.space_read_only.store(timelines, Ordering::Relaxed);
    }

    pub fn space_compute_stopped(&self) {
        self.space_computes_stopped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reserve_refusal(&self) {
        self.reserve_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders every metric plus the gauges passed in (timelines, filesystem bytes).
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP ramify_storage_timelines_created_total Timelines created, by kind of fork."
        );
        let _ = writeln!(s, "# TYPE ramify_storage_timelines_created_total counter");
        let forks = self.forks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (at, (n, _)) in &forks {
            let _ = writeln!(
                s,
                "ramify_storage_timelines_created_total{{at=\"{at}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP ramify_storage_create_seconds_sum Time spent creating timelines, by kind."
        );
        let _ = writeln!(s, "# TYPE ramify_storage_create_seconds_sum counter");
        for (at, (_, secs)) in &forks {
            let _ = writeln!(s, "ramify_storage_create_seconds_sum{{at=\"{at}\"}} {secs}");
        }
        let _ = writeln!(
            s,
            "# HELP ramify_storage_create_duration_seconds Time to create a timeline (fork or new root), by kind."
        );
        let _ = writeln!(s, "# TYPE ramify_storage_create_duration_seconds histogram");
        for (at, h) in self
            .create_durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.render(
                &mut s,
                "ramify_storage_create_duration_seconds",
                &format!("at=\"{at}\""),
            );
        }
        let _ = writeln!(
            s,
            "# HELP ramify_storage_create_errors_total Failed creates, by error code."
        );
        let _ = writeln!(s, "# TYPE ramify_storage_create_errors_total counter");
        for (code, n) in self
            .fork_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "ramify_storage_create_errors_total{{code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(s, "# TYPE ramify_storage_snapshots_total counter");
        let _ = writeln!(
            s,
            "ramify_storage_snapshots_total {}",
            self.snapshots.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "# TYPE ramify_storage_http_requests_total counter");
        let _ = writeln!(
            s,
            "ramify_storage_http_requests_total {}",
            self.http_requests.load(Ordering::Relaxed)
        );
        let space: [(&str, &str, &str, &AtomicU64); 5] = [
            (
                "ramify_storage_reserve_bytes",
                "gauge",
                "Free space the node keeps for running computes' WAL (--reserve).",
                &self.reserve_bytes,
            ),
            (
                "ramify_storage_below_reserve",
                "gauge",
                "1 while the node is short of space (below the reserve, or not yet back above it plus a quarter while timelines are read-only): forks and snapshots are refused.",
                &self.below_reserve,
            ),
            (
                "ramify_storage_read_only_timelines",
                "gauge",
                "Timelines made read-only because they were filling the volume.",
                &self.space_read_only,
            ),
            (
                "ramify_storage_computes_stopped_for_space_total",
                "counter",
                "Computes stopped because they kept filling the volume while read-only.",
                &self.space_computes_stopped,
            ),
            (
                "ramify_storage_reserve_refusals_total",
                "counter",
                "Forks, new roots and snapshots refused because free space was below the reserve.",
                &self.reserve_refusals,
            ),
        ];
        for (name, kind, help, v) in space {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        }
        s
    }
}

/// One following root's replication state as `GET /metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerSample {
    pub timeline: String,
    /// `physical` or `logical`.
    pub mode: &'static str,
    /// `None` when its compute did not answer (stopped, starting, or overloaded).
    pub status: Option<ramify_api::FollowStatus>,
}

/// The followers' gauges: streaming (0 also when the state could not be read), lag in
/// bytes and seconds, and the time of the last message from the source; a figure the
/// compute did not report is left out rather than shown as 0. The families are there
/// (without samples) on a node with no follower, so dashboards and rules can name them.
pub fn render_followers(samples: &[FollowerSample]) -> String {
    let mut s = String::new();
    type Figure = fn(&ramify_api::FollowStatus) -> Option<f64>;
    let figures: [(&str, &str, Figure); 4] = [
        (
            "ramify_storage_follower_streaming",
            "1 while a following root receives from its source (0 also when its state could not be read).",
            |st| Some(st.streaming as u8 as f64),
        ),
        (
            "ramify_storage_follower_lag_bytes",
            "Bytes between the source's end of WAL (as it last reported it) and what the follower has applied.",
            |st| st.lag_bytes.map(|b| b as f64),
        ),
        (
            "ramify_storage_follower_lag_seconds",
            "Seconds the follower's newest applied commit is behind while it has WAL still to apply (0 when caught up).",
            |st| st.lag_seconds,
        ),
        (
            "ramify_storage_follower_last_received_timestamp_seconds",
            "Unix time of the last message from the source.",
            |st| st.last_received_at.map(|t| t.timestamp_millis() as f64 / 1000.0),
        ),
    ];
    for (i, (name, help, figure)) in figures.iter().enumerate() {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for f in samples {
            let labels = format!("timeline=\"{}\",mode=\"{}\"", f.timeline, f.mode);
            let v = match &f.status {
                Some(st) => figure(st),
                None if i == 0 => Some(0.0),
                None => None,
            };
            if let Some(v) = v {
                let _ = writeln!(s, "{name}{{{labels}}} {v}");
            }
        }
    }
    s
}

/// The durable timelines' archiving to the backup repository: healthy (0 while pushing
/// WAL or the last base backup fails), bytes waiting on the node, when the newest WAL
/// file reached the bucket, and the newest base backup's time. The families are there
/// without samples on a node with no durable timeline.
pub fn render_backups(samples: &[(String, ramify_api::BackupStatus)]) -> String {
    let mut s = String::new();
    type Figure = fn(&ramify_api::BackupStatus) -> Option<f64>;
    let figures: [(&str, &str, Figure); 4] = [
        (
            "ramify_storage_backup_healthy",
            "1 while a durable timeline's WAL and base backups reach the backup repository.",
            |b| Some(b.healthy as u8 as f64),
        ),
        (
            "ramify_storage_backup_backlog_bytes",
            "Bytes of a durable timeline's archived WAL on the node not yet in the backup repository.",
            |b| Some(b.backlog_bytes as f64),
        ),
        (
            "ramify_storage_backup_archived_timestamp_seconds",
            "Unix time the newest WAL file of a durable timeline reached the backup repository.",
            |b| b.archived_at.map(|t| t.timestamp_millis() as f64 / 1000.0),
        ),
        (
            "ramify_storage_backup_base_timestamp_seconds",
            "Unix time of the snapshot a durable timeline's newest base backup was taken of.",
            |b| b.newest_backup.as_ref().map(|n| n.time.timestamp() as f64),
        ),
    ];
    for (name, help, figure) in figures {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (timeline, b) in samples {
            if let Some(v) = figure(b) {
                let _ = writeln!(s, "{name}{{timeline=\"{timeline}\"}} {v}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_show_health_backlog_and_times() {
        let b = ramify_api::BackupStatus {
            repository: "s3://b/p at h:443".into(),
            healthy: false,
            error: Some("unreachable".into()),
            archived_to: Some("000000010000000000000003".into()),
            archived_at: Some(
                chrono::DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap(),
            ),
            backlog_bytes: 16777216,
            newest_backup: None,
            backups: Vec::new(),
        };
        let text = render_backups(&[("a".into(), b)]);
        for line in [
            "ramify_storage_backup_healthy{timeline=\"a\"} 0",
            "ramify_storage_backup_backlog_bytes{timeline=\"a\"} 16777216",
            "ramify_storage_backup_archived_timestamp_seconds{timeline=\"a\"} 1700000000.5",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("ramify_storage_backup_base_timestamp_seconds{"));
        assert!(render_backups(&[]).contains("# TYPE ramify_storage_backup_healthy gauge"));
    }

    #[test]
    fn followers_show_what_their_computes_reported() {
        let caught_up = ramify_api::FollowStatus {
            streaming: true,
            lag_bytes: Some(4096),
            lag_seconds: Some(0.0),
            last_received_at: chrono::DateTime::from_timestamp(1_700_000_000, 500_000_000),
            ..Default::default()
        };
        let text = render_followers(&[
            FollowerSample {
                timeline: "a".into(),
                mode: "physical",
                status: Some(caught_up),
            },
            FollowerSample {
                timeline: "b".into(),
                mode: "logical",
                status: None,
            },
        ]);
        for line in [
            "ramify_storage_follower_streaming{timeline=\"a\",mode=\"physical\"} 1",
            "ramify_storage_follower_streaming{timeline=\"b\",mode=\"logical\"} 0",
            "ramify_storage_follower_lag_bytes{timeline=\"a\",mode=\"physical\"} 4096",
            "ramify_storage_follower_lag_seconds{timeline=\"a\",mode=\"physical\"} 0",
            "ramify_storage_follower_last_received_timestamp_seconds{timeline=\"a\",mode=\"physical\"} 1700000000.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("lag_bytes{timeline=\"b\""), "{text}");
        let none = render_followers(&[]);
        assert!(
            none.contains("# TYPE ramify_storage_follower_lag_bytes gauge"),
            "{none}"
        );
        assert!(none.lines().all(|l| l.starts_with('#')), "{none}");
    }

    #[test]
    fn create_durations_are_a_cumulative_histogram_by_kind() {
        let m = Metrics::default();
        m.fork_ok(Some(&At::Latest), Duration::from_millis(30));
        m.fork_ok(Some(&At::Latest), Duration::from_secs(3));
        m.fork_ok(None, Duration::from_secs(500));
        let text = m.render(&[]);
        for line in [
            "# TYPE ramify_storage_create_duration_seconds histogram",
            "ramify_storage_create_duration_seconds_bucket{at=\"latest\",le=\"0.025\"} 0",
            "ramify_storage_create_duration_seconds_bucket{at=\"latest\",le=\"0.05\"} 1",
            "ramify_storage_create_duration_seconds_bucket{at=\"latest\",le=\"2.5\"} 1",
            "ramify_storage_create_duration_seconds_bucket{at=\"latest\",le=\"5\"} 2",
            "ramify_storage_create_duration_seconds_bucket{at=\"latest\",le=\"+Inf\"} 2",
            "ramify_storage_create_duration_seconds_count{at=\"latest\"} 2",
            "ramify_storage_create_duration_seconds_sum{at=\"latest\"} 3.03",
            // Slower than the last bound: only in +Inf.
            "ramify_storage_create_duration_seconds_bucket{at=\"root\",le=\"120\"} 0",
            "ramify_storage_create_duration_seconds_bucket{at=\"root\",le=\"+Inf\"} 1",
            "ramify_storage_timelines_created_total{at=\"latest\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }
}
