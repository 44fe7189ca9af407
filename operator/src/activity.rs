//! Which proxy has clients on which branch, so that idleness is decided across every
//! proxy replica: a proxy whose own clients left may suspend a branch only while no
//! other live proxy serves it.
//!
//! Each proxy reports, every route sync (`PUT /v1/proxies/{proxy}/activity`), the
//! branches it has authenticated clients on or a wake in flight for; each report
//! replaces that proxy's previous one and holds for one lease (`--proxy-activity-lease`,
//! 15 s). A wake also counts as use by the waking proxy for one lease, which covers a
//! client that got its compute between two reports. A suspend is refused while another
//! proxy's unexpired report or wake names the branch; a proxy that died stops
//! reporting and its claims expire with the lease.
//!
//! The state lives in memory on the leader, the only replica that answers the proxy
//! (`/readyz` is 503 elsewhere, so the Service routes to the leader alone). A replica
//! that just became leader has heard nobody yet: for its first lease it refuses every
//! suspend ("unknown"), by which time every live proxy has reported to it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the operator knows about a branch's use by proxies other than the asking one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// No other live proxy reported the branch in use: it may be suspended.
    Idle,
    /// `proxy` reported clients on the branch (or woke it) `ago` before now.
    InUse { proxy: String, ago: Duration },
    /// This replica leads since less than a lease and may not have heard every proxy.
    Unknown { leading_for: Duration },
}

#[derive(Debug)]
struct Report {
    at: Instant,
    branches: BTreeSet<String>,
}

/// The proxies' reports and recent wakes; shared by the HTTP handlers.
#[derive(Debug)]
pub struct ProxyActivity {
    lease: Duration,
    since: Instant,
    state: Mutex<State>,
    refused_in_use: AtomicU64,
    refused_unknown: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    reports: HashMap<String, Report>,
    /// Per branch, per proxy: when it last woke the branch.
    wakes: HashMap<String, HashMap<String, Instant>>,
}

impl ProxyActivity {
    /// An empty record, started (for the "unknown" window) at `now`.
    pub fn new(lease: Duration, now: Instant) -> ProxyActivity {
        ProxyActivity {
            lease,
            since: now,
            state: Mutex::new(State::default()),
            refused_in_use: AtomicU64::new(0),
            refused_unknown: AtomicU64::new(0),
        }
    }

    /// How long a report or a wake holds.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `proxy` has clients on exactly `branches` (`ns/name`) now; replaces its previous
    /// report. Expired entries of every proxy are dropped on the way.
    pub fn report(&self, proxy: &str, branches: BTreeSet<String>, now: Instant) {
        let mut st = self.state();
        let lease = self.lease;
        st.reports
            .retain(|_, r| now.saturating_duration_since(r.at) < lease);
        st.wakes.retain(|_, by| {
            by.retain(|_, at| now.saturating_duration_since(*at) < lease);
            !by.is_empty()
        });
        st.reports
            .insert(proxy.to_string(), Report { at: now, branches });
    }

    /// `proxy` woke `branch`: it is in use by that proxy for one lease.
    pub fn woke(&self, proxy: &str, branch: &str, now: Instant) {
        self.state()
            .wakes
            .entry(branch.to_string())
            .or_default()
            .insert(proxy.to_string(), now);
    }

    /// Whether a proxy other than `asking` (`None`: an unnamed caller, so every proxy is
    /// "other") uses `branch` as of `now`.
    pub fn use_by_others(&self, branch: &str, asking: Option<&str>, now: Instant) -> Use {
        let leading_for = now.saturating_duration_since(self.since);
        if leading_for < self.lease {
            return Use::Unknown { leading_for };
        }
        let st = self.state();
        let other = |p: &str| asking != Some(p);
        let live = |at: Instant| now.saturating_duration_since(at) < self.lease;
        let reported = st
            .reports
            .iter()
            .filter(|(p, r)| other(p) && live(r.at) && r.branches.contains(branch))
            .map(|(p, r)| (p.clone(), r.at));
        let woken = st
            .wakes
            .get(branch)
            .into_iter()
            .flatten()
            .filter(|(p, at)| other(p) && live(**at))
            .map(|(p, at)| (p.clone(), *at));
        // The most recent claim names the proxy.
        match reported.chain(woken).max_by_key(|(_, at)| *at) {
            Some((proxy, at)) => Use::InUse {
                proxy,
                ago: now.saturating_duration_since(at),
            },
            None => Use::Idle,
        }
    }

    /// The proxies with an unexpired report, and how many branches each has in use.
    pub fn live_proxies(&self, now: Instant) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .state()
            .reports
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.at) < self.lease)
            .map(|(p, r)| (p.clone(), r.branches.len()))
            .collect();
        out.sort();
        out
    }
}

impl ProxyActivity {
    /// A suspend was refused for this answer of [`ProxyActivity::use_by_others`].
    pub fn refused(&self, why: &Use) {
        let counter = match why {
            Use::Idle => return,
            Use::InUse { .. } => &self.refused_in_use,
            Use::Unknown { .. } => &self.refused_unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `ramify_operator_suspends_refused_total{reason}` and
    /// `ramify_operator_proxies_reporting`, in the text exposition format.
    pub fn render(&self, now: Instant) -> String {
        let mut s = String::from(
            "# HELP ramify_operator_suspends_refused_total Suspends a proxy asked for and the operator refused: another proxy has clients on the branch (in_use), or this leader has not heard every proxy yet (unknown).\n# TYPE ramify_operator_suspends_refused_total counter\n",
        );
        for (reason, c) in [
            ("in_use", &self.refused_in_use),
            ("unknown", &self.refused_unknown),
        ] {
            let _ = writeln!(
                s,
                "ramify_operator_suspends_refused_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP ramify_operator_proxies_reporting Proxies whose last activity report is younger than the lease.\n# TYPE ramify_operator_proxies_reporting gauge\nramify_operator_proxies_reporting {}",
            self.live_proxies(now).len()
        );
        s
    }
}

/// Whether `name` can be a proxy's name (a Pod name: a DNS subdomain).
pub fn valid_proxy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A record whose "unknown" window is over at `t0`.
    fn record() -> (ProxyActivity, Instant) {
        let start = Instant::now();
        (ProxyActivity::new(LEASE, start), start + LEASE)
    }

    #[test]
    fn another_proxys_clients_keep_the_branch() {
        let (a, t0) = record();
        a.report("proxy-b", set(&["dev/x"]), t0);
        a.report("proxy-a", set(&[]), t0);
        let s = Duration::from_secs;
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(3)),
            Use::InUse {
                proxy: "proxy-b".into(),
                ago: s(3)
            }
        );
        // Its own report does not stop the asking proxy, nor does a report of another branch.
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-b"), t0 + s(3)),
            Use::Idle
        );
        assert_eq!(
            a.use_by_others("dev/y", Some("proxy-a"), t0 + s(3)),
            Use::Idle
        );
        // An unnamed caller: every proxy is another one.
        assert!(matches!(
            a.use_by_others("dev/x", None, t0 + s(3)),
            Use::InUse { .. }
        ));
    }

    #[test]
    fn a_new_report_replaces_the_old_and_a_dead_proxy_expires() {
        let (a, t0) = record();
        let s = Duration::from_secs;
        a.report("proxy-b", set(&["dev/x"]), t0);
        a.report("proxy-b", set(&[]), t0 + s(2));
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(3)),
            Use::Idle
        );
        // proxy-c reports once and dies: its claim holds for one lease, then not.
        a.report("proxy-c", set(&["dev/x"]), t0 + s(4));
        assert!(matches!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(18)),
            Use::InUse { .. }
        ));
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(19)),
            Use::Idle
        );
        assert_eq!(a.live_proxies(t0 + s(19)), vec![]);
    }

    #[test]
    fn a_wake_by_another_proxy_counts_as_use_until_the_lease_ends() {
        let (a, t0) = record();
        let s = Duration::from_secs;
        a.report("proxy-b", set(&[]), t0);
        a.woke("proxy-b", "dev/x", t0 + s(1));
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(2)),
            Use::InUse {
                proxy: "proxy-b".into(),
                ago: s(1)
            }
        );
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-b"), t0 + s(2)),
            Use::Idle
        );
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), t0 + s(16)),
            Use::Idle
        );
    }

    #[test]
    fn a_new_leader_knows_nothing_for_one_lease() {
        let start = Instant::now();
        let a = ProxyActivity::new(LEASE, start);
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), start + Duration::from_secs(5)),
            Use::Unknown {
                leading_for: Duration::from_secs(5)
            }
        );
        assert_eq!(
            a.use_by_others("dev/x", Some("proxy-a"), start + LEASE),
            Use::Idle
        );
    }

    #[test]
    fn proxy_names_are_pod_names() {
        assert!(valid_proxy_name("ramify-proxy-7d9f-abcde"));
        assert!(!valid_proxy_name(""));
        assert!(!valid_proxy_name("Proxy A"));
        assert!(!valid_proxy_name("a/b"));
    }
}
