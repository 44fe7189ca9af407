//! The proxy's own HTTP endpoints: `/metrics` (Prometheus text), `/livez`, `/readyz`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ramify_proxy::{Proxy, RouteStats};

use crate::operator::OperatorControl;
use crate::sync::SyncStatus;

/// What the endpoints read.
pub struct Endpoints {
    /// The routes' counters.
    pub proxy: Proxy,
    /// Route sync progress and the set of routes.
    pub status: Arc<SyncStatus>,
    /// Wake fallbacks.
    pub control: Arc<OperatorControl>,
}

/// The router serving `/metrics`, `/livez` and `/readyz`.
pub fn router(endpoints: Arc<Endpoints>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

async fn readyz(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    if e.status.ready() {
        (StatusCode::OK, "ready\n")
    } else if e.status.shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first route sync with the operator\n",
        )
    }
}

async fn metrics(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    let routes: Vec<(String, RouteStats)> = e
        .status
        .routes()
        .into_keys()
        .filter_map(|branch| e.proxy.route_stats(&branch).map(|s| (branch, s)))
        .collect();
    let global = Global {
        ready: e.status.ready(),
        operator_reachable: e.status.operator_reachable(),
        syncs: e.status.syncs(),
        sync_failures: e.status.sync_failures(),
        wake_fallbacks: e.control.fallbacks(),
        activity_report_failures: e.status.activity_report_failures(),
        open_connections: e.proxy.open_connections() as u64,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&global, &routes),
    )
}

/// Proxy-wide values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global {
    /// Client connections open on every route (against --max-connections).
    pub open_connections: u64,
    /// `/readyz` answers 200.
    pub ready: bool,
    /// The last route sync reached the operator.
    pub operator_reachable: bool,
    /// Route syncs attempted.
    pub syncs: u64,
    /// Route syncs that failed.
    pub sync_failures: u64,
    /// Wakes answered from the last known address while the operator was unreachable.
    pub wake_fallbacks: u64,
    /// Activity reports (branches in use here) the operator did not take.
    pub activity_report_failures: u64,
}

/// The Prometheus text exposition of the proxy-wide values and each route's counters.
pub fn render(global: &Global, routes: &[(String, RouteStats)]) -> String {
    let mut out = String::with_capacity(512 + routes.len() * 700);
    let mut scalar = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    scalar(
        "ramify_proxy_ready",
        "gauge",
        "1 once the first route sync succeeded, 0 before and while shutting down.",
        u64::from(global.ready),
    );
    scalar(
        "ramify_proxy_operator_reachable",
        "gauge",
        "1 if the last route sync reached the operator.",
        u64::from(global.operator_reachable),
    );
    scalar(
        "ramify_proxy_route_syncs_total",
        "counter",
        "Route syncs attempted.",
        global.syncs,
    );
    scalar(
        "ramify_proxy_route_sync_failures_total",
        "counter",
        "Route syncs that could not get the routes from the operator.",
        global.sync_failures,
    );
    scalar(
        "ramify_proxy_wake_fallbacks_total",
        "counter",
        "Wakes answered with the compute's last known address because the operator was unreachable.",
        global.wake_fallbacks,
    );
    scalar(
        "ramify_proxy_activity_report_failures_total",
        "counter",
        "Reports of the branches in use through this proxy that the operator did not take (while they fail, other proxies may suspend those branches once earlier reports expire).",
        global.activity_report_failures,
    );
    scalar(
        "ramify_proxy_open_connections",
        "gauge",
        "Client connections open on every route, counted against --max-connections.",
        global.open_connections,
    );
    scalar(
        "ramify_proxy_routes",
        "gauge",
        "Branches the proxy listens for.",
        routes.len() as u64,
    );
    type Field = fn(&RouteStats) -> u64;
    let per_route: [(&str, &str, &str, Field); 12] = [
        (
            "ramify_proxy_route_port",
            "gauge",
            "The port the branch's listener is bound to.",
            |s| u64::from(s.listen.port()),
        ),
        (
            "ramify_proxy_active_connections",
            "gauge",
            "Client sessions open now, including those waiting for a wake.",
            |s| s.active_connections as u64,
        ),
        (
            "ramify_proxy_authenticated_connections",
            "gauge",
            "Client sessions open now that Postgres authenticated; only these keep the branch awake.",
            |s| s.authenticated_connections as u64,
        ),
        (
            "ramify_proxy_refused_connections_total",
            "counter",
            "Client connections refused over a connection cap (SQLSTATE 53300).",
            |s| s.refused_connections,
        ),
        (
            "ramify_proxy_connections_total",
            "counter",
            "Client sessions admitted since the route was added.",
            |s| s.connections,
        ),
        (
            "ramify_proxy_wakes_total",
            "counter",
            "Wakes asked of the operator.",
            |s| s.wakes,
        ),
        (
            "ramify_proxy_wake_failures_total",
            "counter",
            "Wakes that failed.",
            |s| s.wake_failures,
        ),
        (
            "ramify_proxy_suspends_total",
            "counter",
            "Idle suspends the operator carried out.",
            |s| s.suspends,
        ),
        (
            "ramify_proxy_suspend_failures_total",
            "counter",
            "Idle suspends that failed (retried after another idle period).",
            |s| s.suspend_failures,
        ),
        (
            "ramify_proxy_suspend_refusals_total",
            "counter",
            "Idle suspends the operator refused because the branch is in use through another proxy (asked again after another idle period).",
            |s| s.suspend_refusals,
        ),
        (
            "ramify_proxy_suspended",
            "gauge",
            "1 if this proxy suspended the compute and no client has woken it since.",
            |s| u64::from(s.suspended),
        ),
        (
            "ramify_proxy_suspend_after_seconds",
            "gauge",
            "Idle time before suspend; 0 means never.",
            |s| s.suspend_after.map_or(0, |d| d.as_secs()),
        ),
    ];
    for (name, kind, help, field) in per_route {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (branch, stats) in routes {
            let _ = writeln!(
                out,
                "{name}{{branch=\"{}\"}} {}",
                escape_label(branch),
                field(stats)
            );
        }
    }
    out
}

/// Escapes a label value as the exposition format requires.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn stats(active: usize, wakes: u64, suspended: bool) -> RouteStats {
        RouteStats {
            listen: "0.0.0.0:20001".parse().unwrap(),
            suspend_after: Some(Duration::from_secs(300)),
            active_connections: active,
            authenticated_connections: active,
            refused_connections: 3,
            idle_since: None,
            last_activity: SystemTime::now(),
            connections: 7,
            wakes,
            wake_failures: 1,
            suspends: 2,
            suspend_failures: 0,
            suspend_refusals: 0,
            in_use: active > 0,
            suspended,
        }
    }

    #[test]
    fn every_route_gets_every_series_under_one_help_line() {
        let text = render(
            &Global {
                ready: true,
                operator_reachable: true,
                syncs: 10,
                sync_failures: 3,
                wake_fallbacks: 0,
                activity_report_failures: 0,
                open_connections: 2,
            },
            &[
                ("dev/alice".into(), stats(2, 5, false)),
                ("prod/main".into(), stats(0, 1, true)),
            ],
        );
        for line in [
            "ramify_proxy_ready 1",
            "ramify_proxy_route_sync_failures_total 3",
            "ramify_proxy_routes 2",
            "ramify_proxy_open_connections 2",
            "ramify_proxy_authenticated_connections{branch=\"dev/alice\"} 2",
            "ramify_proxy_refused_connections_total{branch=\"prod/main\"} 3",
            "ramify_proxy_active_connections{branch=\"dev/alice\"} 2",
            "ramify_proxy_active_connections{branch=\"prod/main\"} 0",
            "ramify_proxy_connections_total{branch=\"dev/alice\"} 7",
            "ramify_proxy_wakes_total{branch=\"dev/alice\"} 5",
            "ramify_proxy_wake_failures_total{branch=\"prod/main\"} 1",
            "ramify_proxy_suspends_total{branch=\"prod/main\"} 2",
            "ramify_proxy_suspended{branch=\"prod/main\"} 1",
            "ramify_proxy_suspend_after_seconds{branch=\"dev/alice\"} 300",
            "ramify_proxy_route_port{branch=\"dev/alice\"} 20001",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE ramify_proxy_wakes_total counter")
                .count(),
            1
        );
        // Every non-comment line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("bad line {line:?}"));
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
