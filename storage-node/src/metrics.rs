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
    fork_errors: Mutex<BTreeMap<&'static str, u64>>,
    snapshots: AtomicU64,
    http_requests: AtomicU64,
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
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        }
        s
    }
}
