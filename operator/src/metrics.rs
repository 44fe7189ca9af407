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
    suspends: u64,
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
            let e = c.wakes.entry(if ok { "ok" } else { "error" }).or_default();
            e.0 += 1;
            e.1 += took.as_secs_f64();
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
                "summary",
                "Wake requests from the proxy, by outcome, and their time to a ready compute.",
            );
            for (outcome, (n, secs)) in &c.wakes {
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
}
