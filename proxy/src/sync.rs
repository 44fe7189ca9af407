//! Route sync: every `--sync-interval` the proxy asks the operator which branches it
//! should listen for and makes its routes match.
//!
//! The comparison is pure ([`desired_routes`], [`diff`]); [`Syncer`] does the I/O. While
//! the operator cannot be asked, the last known routes keep serving.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ramify_proxy::{Proxy, Route};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::operator::{split_branch, OperatorControl, OperatorError, RouteEntry};

/// A route as the operator wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Listener port.
    pub port: u16,
    /// Idle time before suspend; `None` means never (the operator's 0).
    pub suspend_after: Option<Duration>,
    /// The branch's timeline id; empty when the operator does not report it.
    pub timeline: String,
}

/// One step that brings the proxy's routes to what the operator wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Close the branch's listener and connections.
    Remove {
        /// `"namespace/name"`.
        branch: String,
    },
    /// Change the branch's idle policy in place.
    SetSuspendAfter {
        /// `"namespace/name"`.
        branch: String,
        /// The new idle time; `None` means never.
        suspend_after: Option<Duration>,
    },
    /// The branch moved to another timeline (a restore) and the operator may have
    /// started a compute there that no client uses: its idle time starts over.
    ComputeReplaced {
        /// `"namespace/name"`.
        branch: String,
        /// The new timeline id.
        timeline: String,
    },
    /// The branch's timeline became known (the operator did not report it before):
    /// only recorded, so that a later change is recognised.
    RecordTimeline {
        /// `"namespace/name"`.
        branch: String,
        /// The timeline id.
        timeline: String,
    },
    /// Start listening for the branch.
    Add {
        /// `"namespace/name"`.
        branch: String,
        /// Port, idle policy and timeline.
        spec: RouteSpec,
    },
}

/// The routes the operator asks for, and why any entry was refused. Entries are refused
/// one by one (a bad one does not stop the others): a malformed branch key, a port
/// outside 1–65535, a branch listed twice or a port claimed twice (the first wins).
pub fn desired_routes(entries: &[RouteEntry]) -> (BTreeMap<String, RouteSpec>, Vec<String>) {
    let mut routes = BTreeMap::new();
    let mut problems = Vec::new();
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    for e in entries {
        if let Err(err) = split_branch(&e.branch) {
            problems.push(format!("route refused: {err}"));
            continue;
        }
        let port = match u16::try_from(e.port) {
            Ok(p) if p != 0 => p,
            _ => {
                problems.push(format!(
                    "route for branch {} refused: port {} is not in 1-65535",
                    e.branch, e.port
                ));
                continue;
            }
        };
        if routes.contains_key(&e.branch) {
            problems.push(format!(
                "route for branch {} refused: the branch is listed twice",
                e.branch
            ));
            continue;
        }
        if let Some(owner) = ports.get(&port) {
            problems.push(format!(
                "route for branch {} refused: port {port} is already the route of branch {owner}",
                e.branch
            ));
            continue;
        }
        ports.insert(port, &e.branch);
        let suspend_after =
            (e.suspend_after_secs > 0).then(|| Duration::from_secs(e.suspend_after_secs));
        routes.insert(
            e.branch.clone(),
            RouteSpec {
                port,
                suspend_after,
                timeline: e.timeline.clone(),
            },
        );
    }
    (routes, problems)
}

/// The actions that turn `current` into `desired`: removals first (they free ports a new
/// route may want, including a moved route's own), then in-place changes (idle policy,
/// then timeline), then additions; each group in branch order. A route whose port
/// changed is removed and added again, which also makes it idle-tracked from scratch.
/// An empty timeline is unknown: it never counts as a change, in either direction.
pub fn diff(
    current: &BTreeMap<String, RouteSpec>,
    desired: &BTreeMap<String, RouteSpec>,
) -> Vec<Action> {
    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for (branch, cur) in current {
        match desired.get(branch) {
            None => removes.push(Action::Remove {
                branch: branch.clone(),
            }),
            Some(want) if want.port != cur.port => {
                removes.push(Action::Remove {
                    branch: branch.clone(),
                });
                adds.push(Action::Add {
                    branch: branch.clone(),
                    spec: want.clone(),
                });
            }
            Some(want) => {
                if want.suspend_after != cur.suspend_after {
                    updates.push(Action::SetSuspendAfter {
                        branch: branch.clone(),
                        suspend_after: want.suspend_after,
                    });
                }
                updates.extend(timeline_change(branch, &cur.timeline, &want.timeline));
            }
        }
    }
    for (branch, want) in desired {
        if !current.contains_key(branch) {
            adds.push(Action::Add {
                branch: branch.clone(),
                spec: want.clone(),
            });
        }
    }
    adds.sort_by(|a, b| action_branch(a).cmp(action_branch(b)));
    removes.into_iter().chain(updates).chain(adds).collect()
}

/// What a timeline reported as `want` means for a route on `cur`. Learning the first
/// one is no replacement; an operator that stops reporting it (a rollback) leaves the
/// last known one in place, so a restore meanwhile is still noticed later.
fn timeline_change(branch: &str, cur: &str, want: &str) -> Option<Action> {
    if want.is_empty() || want == cur {
        None
    } else if cur.is_empty() {
        Some(Action::RecordTimeline {
            branch: branch.to_owned(),
            timeline: want.to_owned(),
        })
    } else {
        Some(Action::ComputeReplaced {
            branch: branch.to_owned(),
            timeline: want.to_owned(),
        })
    }
}

fn action_branch(a: &Action) -> &str {
    match a {
        Action::Remove { branch }
        | Action::SetSuspendAfter { branch, .. }
        | Action::ComputeReplaced { branch, .. }
        | Action::RecordTimeline { branch, .. }
        | Action::Add { branch, .. } => branch,
    }
}

/// How often a draining proxy looks whether its last session has ended.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What the sync loop has achieved, shared with `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct SyncStatus {
    routes: Mutex<BTreeMap<String, RouteSpec>>,
    synced_once: AtomicBool,
    shutting_down: AtomicBool,
    operator_reachable: AtomicBool,
    syncs: AtomicU64,
    sync_failures: AtomicU64,
    activity_report_failures: AtomicU64,
}

impl SyncStatus {
    /// The routes being served.
    pub fn routes(&self) -> BTreeMap<String, RouteSpec> {
        self.lock_routes().clone()
    }

    /// Ready: a sync has succeeded and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.synced_once.load(Ordering::Relaxed) && !self.shutting_down()
    }

    /// Whether SIGTERM/SIGINT was received.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Marks the proxy as going away (readiness fails from now on).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether the last route sync reached the operator.
    pub fn operator_reachable(&self) -> bool {
        self.operator_reachable.load(Ordering::Relaxed)
    }

    /// Route syncs attempted.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Route syncs that failed to get the routes from the operator.
    pub fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Relaxed)
    }

    /// Activity reports the operator did not take.
    pub fn activity_report_failures(&self) -> u64 {
        self.activity_report_failures.load(Ordering::Relaxed)
    }

    fn lock_routes(&self) -> MutexGuard<'_, BTreeMap<String, RouteSpec>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An operator outage in progress.
struct Outage {
    since: Instant,
    /// The error variant last warned about: a different kind of failure (e.g. refused
    /// connections turning into a rejected token) is worth a new warning.
    kind: &'static str,
}

/// Applies the operator's routes to the proxy.
pub struct Syncer {
    proxy: Proxy,
    control: Arc<OperatorControl>,
    listen_address: IpAddr,
    status: Arc<SyncStatus>,
    outage: Option<Outage>,
    /// Problems already warned about and still present (so each is logged once).
    warned: HashSet<String>,
    /// The last activity report failed (and was warned about).
    activity_failing: bool,
}

impl Syncer {
    /// A syncer that listens on `listen_address` for each route.
    pub fn new(
        proxy: Proxy,
        control: Arc<OperatorControl>,
        listen_address: IpAddr,
        status: Arc<SyncStatus>,
    ) -> Self {
        Self {
            proxy,
            control,
            listen_address,
            status,
            outage: None,
            warned: HashSet::new(),
            activity_failing: false,
        }
    }

    /// Syncs now and then every `interval` until `stop` resolves. A sync in progress is
    /// finished first, so routes are never half-applied.
    pub async fn run(&mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                _ = ticks.tick() => self.sync_once().await,
            }
        }
    }

    /// While the proxy drains (no longer accepting clients): reports the branches still
    /// in use here every `interval`, so no other replica suspends them under the open
    /// sessions, until every session has ended or `stop` resolves. Routes are not
    /// synced any more (a new route would accept clients). Returns the client
    /// connections still open.
    pub async fn drain(
        &mut self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> usize {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first look comes one poll after the listeners closed: a client accepted
        // just before is counted by its own task, which has run by then.
        let start = tokio::time::Instant::now() + DRAIN_POLL;
        let mut poll = tokio::time::interval_at(start, DRAIN_POLL);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return self.proxy.open_connections(),
                _ = ticks.tick() => self.report_activity().await,
                _ = poll.tick() => {
                    if self.proxy.open_connections() == 0 {
                        return 0;
                    }
                }
            }
        }
    }

    /// Tells the operator which branches have clients through this proxy, so that no
    /// other proxy replica suspends them (see docs/architecture.md, "Proxy replicas").
    /// Every sync, so a report is at most one --sync-interval old.
    pub async fn report_activity(&mut self) {
        let client = self.control.client();
        if client.proxy_name().is_none() {
            return;
        }
        let in_use = self.proxy.branches_in_use();
        match client.report_activity(&in_use).await {
            Ok(()) => {
                if std::mem::take(&mut self.activity_failing) {
                    info!("the operator takes this proxy's activity reports again");
                }
            }
            Err(err) => {
                self.status
                    .activity_report_failures
                    .fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.activity_failing, true) {
                    warn!(error = %err, branches = in_use.len(), "the operator did not take this proxy's activity report; other proxies may suspend branches in use here once earlier reports expire");
                }
            }
        }
    }

    /// One round: fetch the routes, apply the difference; on failure keep everything.
    pub async fn sync_once(&mut self) {
        self.status.syncs.fetch_add(1, Ordering::Relaxed);
        let entries = match self.control.client().routes().await {
            Ok(entries) => entries,
            Err(err) => {
                self.status.sync_failures.fetch_add(1, Ordering::Relaxed);
                self.status
                    .operator_reachable
                    .store(false, Ordering::Relaxed);
                self.report_outage(&err);
                return;
            }
        };
        self.status
            .operator_reachable
            .store(true, Ordering::Relaxed);
        if let Some(outage) = self.outage.take() {
            info!(
                after = ?outage.since.elapsed(),
                "operator reachable again: syncing routes"
            );
        }
        self.report_activity().await;
        let (desired, mut problems) = desired_routes(&entries);
        let current = self.status.routes();
        for action in diff(&current, &desired) {
            if let Err(problem) = self.apply(action).await {
                problems.push(problem);
            }
        }
        self.report_problems(problems);
        if !self.status.synced_once.swap(true, Ordering::Relaxed) {
            info!(
                routes = self.status.lock_routes().len(),
                "first route sync done: ready"
            );
        }
    }

    async fn apply(&self, action: Action) -> Result<(), String> {
        match action {
            Action::Remove { branch } => {
                self.proxy.remove_route(&branch).await;
                self.control.forget(&branch);
                self.status.lock_routes().remove(&branch);
                Ok(())
            }
            Action::SetSuspendAfter {
                branch,
                suspend_after,
            } => {
                self.proxy.set_suspend_after(&branch, suspend_after);
                if let Some(spec) = self.status.lock_routes().get_mut(&branch) {
                    spec.suspend_after = suspend_after;
                }
                info!(%branch, ?suspend_after, "idle time changed");
                Ok(())
            }
            Action::ComputeReplaced { branch, timeline } => {
                self.proxy.compute_replaced(&branch);
                // The last address is the old compute's, useless as a fallback now.
                self.control.forget(&branch);
                self.record_timeline(&branch, &timeline);
                info!(%branch, %timeline, "the control plane replaced or started the branch's compute (a restore or a wake request): it is idle-tracked like a new route's");
                Ok(())
            }
            Action::RecordTimeline { branch, timeline } => {
                self.record_timeline(&branch, &timeline);
                debug!(%branch, %timeline, "timeline known");
                Ok(())
            }
            Action::Add { branch, spec } => {
                let route = Route {
                    branch: branch.clone(),
                    listen: SocketAddr::new(self.listen_address, spec.port),
                    suspend_after: spec.suspend_after,
                };
                match self.proxy.add_route(route).await {
                    Ok(_) => {
                        self.status.lock_routes().insert(branch, spec);
                        Ok(())
                    }
                    // Retried on the next sync, which finds the route still missing.
                    Err(err) => Err(format!("route for branch {branch} not added: {err}")),
                }
            }
        }
    }

    fn record_timeline(&self, branch: &str, timeline: &str) {
        if let Some(spec) = self.status.lock_routes().get_mut(branch) {
            timeline.clone_into(&mut spec.timeline);
        }
    }

    fn report_outage(&mut self, err: &OperatorError) {
        let kind = error_kind(err);
        let routes = self.status.lock_routes().len();
        match &mut self.outage {
            Some(outage) if outage.kind == kind => {
                debug!(error = %err, "route sync failed (operator still unavailable)");
            }
            Some(outage) => {
                outage.kind = kind;
                warn!(error = %err, routes, "route sync still failing, differently now; keeping the last known routes");
            }
            None => {
                self.outage = Some(Outage {
                    since: Instant::now(),
                    kind,
                });
                if self.status.synced_once.load(Ordering::Relaxed) {
                    warn!(error = %err, routes, "operator unavailable: keeping the last known routes until it answers");
                } else {
                    warn!(error = %err, "operator unavailable: no routes yet, not ready until it answers");
                }
            }
        }
    }

    /// Warns once about each problem while it lasts.
    fn report_problems(&mut self, problems: Vec<String>) {
        let now: HashSet<String> = problems.into_iter().collect();
        for p in now.difference(&self.warned) {
            warn!("{p}");
        }
        self.warned = now;
    }

    /// Closes every route (on shutdown); waits until every port is free.
    pub async fn remove_all(&self) {
        let branches: Vec<String> = self.status.routes().into_keys().collect();
        let mut removals = JoinSet::new();
        for branch in branches {
            let proxy = self.proxy.clone();
            removals.spawn(async move { proxy.remove_route(&branch).await });
        }
        while removals.join_next().await.is_some() {}
        self.status.lock_routes().clear();
    }
}

fn error_kind(err: &OperatorError) -> &'static str {
    match err {
        OperatorError::InvalidUrl { .. } => "InvalidUrl",
        OperatorError::InvalidToken { .. } => "InvalidToken",
        OperatorError::InvalidBranch { .. } => "InvalidBranch",
        OperatorError::InvalidProxyName { .. } => "InvalidProxyName",
        OperatorError::Client(_) => "Client",
        OperatorError::Unauthorized { .. } => "Unauthorized",
        OperatorError::Api { .. } => "Api",
        OperatorError::Unreachable { .. } => "Unreachable",
        OperatorError::Timeout { .. } => "Timeout",
        OperatorError::Transport { .. } => "Transport",
        OperatorError::Decode { .. } => "Decode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(branch: &str, port: u32, secs: u64) -> RouteEntry {
        RouteEntry {
            branch: branch.to_owned(),
            port,
            suspend_after_secs: secs,
            timeline: "t1".into(),
        }
    }

    /// A route on timeline `t1`.
    fn spec(port: u16, secs: u64) -> RouteSpec {
        RouteSpec {
            port,
            suspend_after: (secs > 0).then(|| Duration::from_secs(secs)),
            timeline: "t1".into(),
        }
    }

    /// `routes` with `branch` on `timeline` ("" = not reported).
    fn on(
        mut routes: BTreeMap<String, RouteSpec>,
        branch: &str,
        timeline: &str,
    ) -> BTreeMap<String, RouteSpec> {
        if let Some(spec) = routes.get_mut(branch) {
            spec.timeline = timeline.to_owned();
        }
        routes
    }

    fn replaced(branch: &str, timeline: &str) -> Action {
        Action::ComputeReplaced {
            branch: branch.to_owned(),
            timeline: timeline.to_owned(),
        }
    }

    fn routes(list: &[(&str, u16, u64)]) -> BTreeMap<String, RouteSpec> {
        list.iter()
            .map(|&(b, p, s)| (b.to_owned(), spec(p, s)))
            .collect()
    }

    fn add(branch: &str, port: u16, secs: u64) -> Action {
        Action::Add {
            branch: branch.to_owned(),
            spec: spec(port, secs),
        }
    }

    fn remove(branch: &str) -> Action {
        Action::Remove {
            branch: branch.to_owned(),
        }
    }

    #[test]
    fn nothing_to_do_when_routes_match() {
        let r = routes(&[("dev/alice", 20001, 300), ("dev/bob", 20002, 0)]);
        assert_eq!(diff(&r, &r), []);
        assert_eq!(diff(&BTreeMap::new(), &BTreeMap::new()), []);
    }

    #[test]
    fn new_branches_are_added_and_vanished_ones_removed() {
        let current = routes(&[("dev/alice", 20001, 300), ("dev/carol", 20003, 300)]);
        let desired = routes(&[("dev/alice", 20001, 300), ("dev/bob", 20002, 60)]);
        assert_eq!(
            diff(&current, &desired),
            [remove("dev/carol"), add("dev/bob", 20002, 60)]
        );
    }

    #[test]
    fn suspend_after_changes_in_place_and_zero_means_never() {
        let current = routes(&[("dev/alice", 20001, 300), ("dev/bob", 20002, 0)]);
        let desired = routes(&[("dev/alice", 20001, 0), ("dev/bob", 20002, 60)]);
        assert_eq!(
            diff(&current, &desired),
            [
                Action::SetSuspendAfter {
                    branch: "dev/alice".into(),
                    suspend_after: None
                },
                Action::SetSuspendAfter {
                    branch: "dev/bob".into(),
                    suspend_after: Some(Duration::from_secs(60))
                },
            ]
        );
    }

    #[test]
    fn a_new_timeline_replaces_the_compute_in_place() {
        let current = routes(&[("dev/alice", 20001, 300), ("dev/bob", 20002, 300)]);
        let desired = on(current.clone(), "dev/bob", "t2");
        assert_eq!(diff(&current, &desired), [replaced("dev/bob", "t2")]);
    }

    #[test]
    fn a_new_timeline_with_a_new_idle_time_does_both() {
        let current = routes(&[("dev/alice", 20001, 300)]);
        let desired = on(routes(&[("dev/alice", 20001, 60)]), "dev/alice", "t2");
        assert_eq!(
            diff(&current, &desired),
            [
                Action::SetSuspendAfter {
                    branch: "dev/alice".into(),
                    suspend_after: Some(Duration::from_secs(60))
                },
                replaced("dev/alice", "t2"),
            ]
        );
        // With a new port the route is added afresh, on the new timeline.
        let desired = on(routes(&[("dev/alice", 20003, 60)]), "dev/alice", "t2");
        let mut fresh = spec(20003, 60);
        fresh.timeline = "t2".into();
        assert_eq!(
            diff(&current, &desired),
            [
                remove("dev/alice"),
                Action::Add {
                    branch: "dev/alice".into(),
                    spec: fresh
                }
            ]
        );
    }

    #[test]
    fn an_unknown_timeline_never_replaces_a_compute() {
        let known = routes(&[("dev/alice", 20001, 300)]);
        let unknown = on(known.clone(), "dev/alice", "");
        // An operator that does not report timelines.
        assert_eq!(diff(&unknown, &unknown), []);
        // It starts reporting them: recorded, nothing else.
        assert_eq!(
            diff(&unknown, &known),
            [Action::RecordTimeline {
                branch: "dev/alice".into(),
                timeline: "t1".into()
            }]
        );
        // It stops again (a rollback): the last known one stays, so that a restore
        // meanwhile is noticed once it reports them again.
        assert_eq!(diff(&known, &unknown), []);
        assert_eq!(
            diff(&known, &on(known.clone(), "dev/alice", "t2")),
            [replaced("dev/alice", "t2")]
        );
    }

    #[test]
    fn a_moved_route_is_re_added_after_every_removal() {
        // bob takes the port alice leaves: alice's removal must come first.
        let current = routes(&[("dev/alice", 20001, 300), ("dev/bob", 20002, 300)]);
        let desired = routes(&[("dev/alice", 20003, 60), ("dev/bob", 20001, 300)]);
        assert_eq!(
            diff(&current, &desired),
            [
                remove("dev/alice"),
                remove("dev/bob"),
                add("dev/alice", 20003, 60),
                add("dev/bob", 20001, 300),
            ]
        );
    }

    #[test]
    fn an_empty_list_removes_everything() {
        let current = routes(&[("dev/alice", 20001, 300), ("prod/main", 20000, 0)]);
        assert_eq!(
            diff(&current, &BTreeMap::new()),
            [remove("dev/alice"), remove("prod/main")]
        );
    }

    #[test]
    fn operator_entries_become_routes() {
        let (r, problems) =
            desired_routes(&[entry("dev/alice", 20001, 300), entry("prod/main", 20000, 0)]);
        assert_eq!(
            r,
            routes(&[("dev/alice", 20001, 300), ("prod/main", 20000, 0)])
        );
        assert_eq!(r["prod/main"].suspend_after, None);
        assert_eq!(r["prod/main"].timeline, "t1");
        assert!(problems.is_empty());
    }

    #[test]
    fn bad_entries_are_refused_one_by_one() {
        let (r, problems) = desired_routes(&[
            entry("dev/alice", 20001, 300),
            entry("alice", 20002, 300),
            entry("dev/bob", 0, 300),
            entry("dev/carol", 70_000, 300),
            entry("dev/alice", 20004, 300),
            entry("dev/dave", 20001, 300),
            entry("dev/erin", 20005, 300),
        ]);
        assert_eq!(
            r,
            routes(&[("dev/alice", 20001, 300), ("dev/erin", 20005, 300)])
        );
        assert_eq!(
            problems,
            [
                "route refused: branch key \"alice\" is not \"namespace/name\" (lowercase letters, digits, '-' and '.')",
                "route for branch dev/bob refused: port 0 is not in 1-65535",
                "route for branch dev/carol refused: port 70000 is not in 1-65535",
                "route for branch dev/alice refused: the branch is listed twice",
                "route for branch dev/dave refused: port 20001 is already the route of branch dev/alice",
            ]
        );
    }
}
