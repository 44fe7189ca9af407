//! Prometheus metrics of the operator, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Counters the operator keeps; rendered by `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    reconciles: u64,
    reconcile_seconds: f64,
    /// By error kind (the error variant's name).
    errors: BTreeMap<&'static str, u64>,
    /// By outcome: ok, error.
    wakes: BTreeMap<&'static str, (u64, f64)>,
    /// Wakes per bucket of [`WAKE_BUCKETS`] (not cumulative), by outcome.
    wake_buckets: BTreeMap<&'static str, [u64; WAKE_BUCKETS.len()]>,
    suspends: u64,
}

/// Upper bounds (seconds) of the wake-duration histogram's buckets: a compute that is
/// running answers at once, a cold start of Postgres takes a second or a few, a crash
/// recovery or an image pull much longer.
pub const WAKE_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// The phases a DatabaseBranch can be in (`status.phase`), and `Unknown` for one the
/// operator has not given a status yet: every one is rendered, zero or not.
pub const BRANCH_PHASES: [&str; 6] = [
    "Pending", "Creating", "Ready", "Failed", "Deleting", "Unknown",
];

/// `ramify_operator_branches_by_phase`, from the number of branches in each phase: every
/// one of [`BRANCH_PHASES`], and any other phase counted.
pub fn render_branch_phases(counts: &BTreeMap<String, usize>) -> String {
    let mut s = String::from(
        "# HELP ramify_operator_branches_by_phase DatabaseBranch objects known, by status.phase (Unknown: no status yet).\n# TYPE ramify_operator_branches_by_phase gauge\n",
    );
    let mut all: BTreeMap<&str, usize> = BRANCH_PHASES.iter().map(|p| (*p, 0)).collect();
    for (phase, n) in counts {
        *all.entry(phase.as_str()).or_default() += n;
    }
    for (phase, n) in all {
        let _ = writeln!(
            s,
            "ramify_operator_branches_by_phase{{phase=\"{phase}\"}} {n}"
        );
    }
    s
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A reconcile finished (successfully or not) after `took`.
    pub fn reconciled(&self, took: Duration) {
        self.with(|c| {
            c.reconciles += 1;
            c.reconcile_seconds += took.as_secs_f64();
        });
    }

    /// A reconcile failed with an error of this kind.
    pub fn reconcile_failed(&self, kind: &'static str) {
        self.with(|c| *c.errors.entry(kind).or_default() += 1);
    }

    /// A wake request finished.
    pub fn woke(&self, ok: bool, took: Duration) {
        self.with(|c| {
            let outcome = if ok { "ok" } else { "error" };
            let e = c.wakes.entry(outcome).or_default();
            e.0 += 1;
            e.1 += took.as_secs_f64();
            let secs = took.as_secs_f64();
            if let Some(i) = WAKE_BUCKETS.iter().position(|le| secs <= *le) {
                c.wake_buckets.entry(outcome).or_default()[i] += 1;
            }
        });
    }

    /// A compute was suspended.
    pub fn suspended(&self) {
        self.with(|c| c.suspends += 1);
    }

    /// The text exposition.
    pub fn render(&self, leader: bool, branches: usize) -> String {
        self.with(|c| {
            let mut s = String::new();
            let metric = |s: &mut String, name: &str, kind: &str, help: &str| {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            };
            metric(&mut s, "ramify_operator_reconciles_total", "counter", "DatabaseBranch reconciles run.");
            let _ = writeln!(s, "ramify_operator_reconciles_total {}", c.reconciles);
            metric(
                &mut s,
                "ramify_operator_reconcile_duration_seconds",
                "summary",
                "Time spent in DatabaseBranch reconciles.",
            );
            let _ = writeln!(
                s,
                "ramify_operator_reconcile_duration_seconds_sum {}\nramify_operator_reconcile_duration_seconds_count {}",
                c.reconcile_seconds, c.reconciles
            );
            metric(
                &mut s,
                "ramify_operator_reconcile_errors_total",
                "counter",
                "Failed reconciles, by kind of error.",
            );
            for (kind, n) in &c.errors {
                let _ = writeln!(s, "ramify_operator_reconcile_errors_total{{kind=\"{kind}\"}} {n}");
            }
            metric(
                &mut s,
                "ramify_operator_wake_duration_seconds",
                "histogram",
                "Wake requests from the proxy, by outcome, and their time until the compute Pod has its address (or is Ready, for callers that ask for that).",
            );
            for (outcome, (n, secs)) in &c.wakes {
                let buckets = c.wake_buckets.get(outcome).copied().unwrap_or_default();
                let mut cumulative = 0;
                for (le, k) in WAKE_BUCKETS.iter().zip(buckets) {
                    cumulative += k;
                    let _ = writeln!(
                        s,
                        "ramify_operator_wake_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    s,
                    "ramify_operator_wake_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"+Inf\"}} {n}"
                );
                let _ = writeln!(
                    s,
                    "ramify_operator_wake_duration_seconds_sum{{outcome=\"{outcome}\"}} {secs}\nramify_operator_wake_duration_seconds_count{{outcome=\"{outcome}\"}} {n}"
                );
            }
            metric(&mut s, "ramify_operator_suspends_total", "counter", "Computes suspended.");
            let _ = writeln!(s, "ramify_operator_suspends_total {}", c.suspends);
            metric(&mut s, "ramify_operator_leader", "gauge", "1 while this replica holds the lease.");
            let _ = writeln!(s, "ramify_operator_leader {}", leader as u8);
            metric(&mut s, "ramify_operator_branches", "gauge", "DatabaseBranch objects known.");
            let _ = writeln!(s, "ramify_operator_branches {branches}");
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_label() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(500));
        m.reconcile_failed("Storage");
        m.reconcile_failed("Storage");
        m.woke(true, Duration::from_secs(2));
        let text = m.render(true, 3);
        assert!(
            text.contains("ramify_operator_reconciles_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ramify_operator_reconcile_errors_total{kind=\"Storage\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ramify_operator_wake_duration_seconds_count{outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ramify_operator_leader 1\n"), "{text}");
        assert!(text.contains("ramify_operator_branches 3\n"), "{text}");
    }

    #[test]
    fn wake_durations_are_a_cumulative_histogram() {
        let m = Metrics::default();
        m.woke(true, Duration::from_millis(300));
        m.woke(true, Duration::from_millis(2500));
        m.woke(true, Duration::from_secs(600));
        m.woke(false, Duration::from_secs(30));
        let text = m.render(true, 0);
        for line in [
            "# TYPE ramify_operator_wake_duration_seconds histogram",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"ok\",le=\"0.25\"} 0",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"ok\",le=\"0.5\"} 1",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"ok\",le=\"3\"} 2",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"ok\",le=\"120\"} 2",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"ok\",le=\"+Inf\"} 3",
            "ramify_operator_wake_duration_seconds_count{outcome=\"ok\"} 3",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"error\",le=\"20\"} 0",
            "ramify_operator_wake_duration_seconds_bucket{outcome=\"error\",le=\"30\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn every_phase_is_rendered() {
        let text = render_branch_phases(&BTreeMap::from([("Ready".to_string(), 4)]));
        assert!(
            text.contains("ramify_operator_branches_by_phase{phase=\"Ready\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("ramify_operator_branches_by_phase{phase=\"Unknown\"} 0\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            BRANCH_PHASES.len()
        );
    }
}
