//! One branch's route: who is connected, whether its compute is being woken or
//! suspended, and the background task that suspends it when idle.
//!
//! All decisions are taken under one mutex ([`RouteState`], pure logic, unit-tested
//! below) so that admitting a client and deciding to suspend cannot interleave: a
//! suspend starts only while no client is admitted and no wake is in flight, and while
//! it runs new clients wait for it before they may wake the compute again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tracing::{info, info_span, warn, Instrument};

use crate::protocol::CancelKey;
use crate::{Control, ProxyError, ProxyOptions, RouteStats, SuspendOutcome};

/// The outcome of one `Control::wake` call, shared by every client that waited for it.
type WakeOutcome = Result<SocketAddr, String>;

/// Where the route believes its compute is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Woken, never suspended by this proxy, or replaced by the control plane: it may
    /// be running.
    MaybeRunning,
    /// `Control::suspend` is in progress.
    Suspending,
    /// Suspended by this proxy and not woken since.
    Suspended,
}

/// What the suspender should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SuspendDecision {
    /// Nothing to do until the state changes.
    Wait,
    /// Re-check at this instant (the idle period ends then).
    SleepUntil(Instant),
    /// Suspend now ([`RouteState::begin_suspend`] has been called).
    Suspend,
}

/// A route's mutable state; every method is a step of the state machine, no I/O.
#[derive(Debug)]
pub(crate) struct RouteState {
    suspend_after: Option<Duration>,
    phase: Phase,
    /// Admitted sessions, authenticated or not.
    active: usize,
    /// Admitted sessions Postgres authenticated: only these hold the route busy.
    authenticated: usize,
    /// Since when no authenticated session is open.
    idle_since: Option<Instant>,
    /// A wake already restarted the idle period since the last authenticated session
    /// or suspend: further wakes (by clients that may never authenticate) do not.
    wake_extended: bool,
    /// The compute was replaced while a suspend ran, which may have stopped only the old
    /// one: the route must not end up `Suspended`.
    replaced_while_suspending: bool,
    last_activity: SystemTime,
    wake_in_flight: Option<watch::Receiver<Option<WakeOutcome>>>,
    cancel_keys: HashMap<CancelKey, SocketAddr>,
    connections: u64,
    refused: u64,
    wakes: u64,
    wake_failures: u64,
    suspends: u64,
    suspend_failures: u64,
    suspend_refusals: u64,
}

impl RouteState {
    /// A new route; its compute may already run, so it is idle from `now` on.
    pub(crate) fn new(suspend_after: Option<Duration>, now: Instant) -> Self {
        Self {
            suspend_after,
            phase: Phase::MaybeRunning,
            active: 0,
            authenticated: 0,
            idle_since: Some(now),
            wake_extended: false,
            replaced_while_suspending: false,
            last_activity: SystemTime::now(),
            wake_in_flight: None,
            cancel_keys: HashMap::new(),
            connections: 0,
            refused: 0,
            wakes: 0,
            wake_failures: 0,
            suspends: 0,
            suspend_failures: 0,
            suspend_refusals: 0,
        }
    }

    /// Counts a client session in, unless a suspend is running (then `false`: wait).
    /// The session does not hold the route busy until [`RouteState::authenticate`]:
    /// anyone who reaches the port gets this far.
    pub(crate) fn try_admit(&mut self) -> bool {
        if self.phase == Phase::Suspending {
            return false;
        }
        self.active += 1;
        self.connections += 1;
        self.last_activity = SystemTime::now();
        true
    }

    /// An admitted session was authenticated by Postgres: the route is busy while it
    /// lasts.
    pub(crate) fn authenticate(&mut self) {
        self.authenticated += 1;
        self.idle_since = None;
        self.wake_extended = false;
        self.last_activity = SystemTime::now();
    }

    /// Counts a client session out; the idle period starts when the last authenticated
    /// one closes.
    pub(crate) fn release(&mut self, now: Instant, authenticated: bool) {
        self.active = self.active.saturating_sub(1);
        self.last_activity = SystemTime::now();
        if authenticated {
            self.authenticated = self.authenticated.saturating_sub(1);
            if self.authenticated == 0 {
                self.idle_since = Some(now);
                self.wake_extended = false;
            }
        }
    }

    /// Counts a connection refused over a cap.
    pub(crate) fn refuse(&mut self) {
        self.refused += 1;
    }

    /// Whether to suspend now; on `Suspend` the phase is already `Suspending`, so no
    /// client can be admitted until [`RouteState::finish_suspend`].
    pub(crate) fn decide_suspend(&mut self, now: Instant) -> SuspendDecision {
        let Some(after) = self.suspend_after.filter(|d| !d.is_zero()) else {
            return SuspendDecision::Wait;
        };
        if self.phase != Phase::MaybeRunning
            || self.authenticated > 0
            || self.wake_in_flight.is_some()
        {
            return SuspendDecision::Wait;
        }
        let Some(idle_since) = self.idle_since else {
            return SuspendDecision::Wait;
        };
        let due = idle_since + after;
        if now < due {
            return SuspendDecision::SleepUntil(due);
        }
        self.phase = Phase::Suspending;
        SuspendDecision::Suspend
    }

    /// Records the end of a suspend; a failed one is retried after another idle period,
    /// and so is one that may have missed a compute replaced meanwhile.
    pub(crate) fn finish_suspend(&mut self, ok: bool, now: Instant) {
        let replaced = std::mem::take(&mut self.replaced_while_suspending);
        if ok {
            self.phase = if replaced {
                Phase::MaybeRunning
            } else {
                Phase::Suspended
            };
            self.suspends += 1;
        } else {
            self.phase = Phase::MaybeRunning;
            self.suspend_failures += 1;
        }
        self.wake_extended = false;
        if self.authenticated == 0 {
            self.idle_since = Some(now);
        }
    }

    /// The control plane refused the suspend: the branch is in use through another
    /// proxy. Idle here still, the route waits a whole new idle period before it asks
    /// again (so it asks at most once per idle period, and stops the compute only after
    /// every proxy has been without clients for a while).
    pub(crate) fn finish_suspend_refused(&mut self, now: Instant) {
        self.replaced_while_suspending = false;
        self.phase = Phase::MaybeRunning;
        self.suspend_refusals += 1;
        self.wake_extended = false;
        if self.authenticated == 0 {
            self.idle_since = Some(now);
        }
    }

    /// The control plane replaced the compute (the branch moved to another timeline and
    /// a compute may run there that no client asked for): from here on the route is
    /// like a new one, idle from `now` unless a client is connected. Sessions with the
    /// old compute are ended by it, not by the proxy; the idle period starts when the
    /// last one closes.
    pub(crate) fn compute_replaced(&mut self, now: Instant) {
        match self.phase {
            Phase::Suspended => self.phase = Phase::MaybeRunning,
            Phase::Suspending => self.replaced_while_suspending = true,
            Phase::MaybeRunning => {}
        }
        self.wake_extended = false;
        if self.authenticated == 0 {
            self.idle_since = Some(now);
        }
    }

    /// The wake in flight to join, or `None` after registering `rx` as the new one
    /// (the caller must then run the wake and publish its outcome on the sender).
    pub(crate) fn join_or_start_wake(
        &mut self,
        rx: watch::Receiver<Option<WakeOutcome>>,
    ) -> Option<watch::Receiver<Option<WakeOutcome>>> {
        if let Some(in_flight) = &self.wake_in_flight {
            return Some(in_flight.clone());
        }
        self.wake_in_flight = Some(rx);
        self.phase = Phase::MaybeRunning;
        self.wakes += 1;
        None
    }

    /// Records the end of the wake in flight. An idle route gets a full idle period
    /// from now, so a compute just started is not stopped before its client could
    /// authenticate; but only once per idle stretch: every client triggers a wake,
    /// and clients that never authenticate must not keep the branch awake by
    /// reconnecting.
    pub(crate) fn finish_wake(&mut self, ok: bool, now: Instant) {
        self.wake_in_flight = None;
        if !ok {
            self.wake_failures += 1;
        }
        if self.authenticated == 0 && !self.wake_extended {
            self.idle_since = Some(now);
            self.wake_extended = true;
        }
    }

    /// Remembers which compute issued `key`.
    pub(crate) fn register_key(&mut self, key: CancelKey, backend: SocketAddr) {
        self.cancel_keys.insert(key, backend);
    }

    /// Forgets `key` once its session ended.
    pub(crate) fn forget_key(&mut self, key: CancelKey, backend: SocketAddr) {
        if self.cancel_keys.get(&key) == Some(&backend) {
            self.cancel_keys.remove(&key);
        }
    }

    /// The compute that issued `key`, if a session with it is open.
    pub(crate) fn cancel_target(&self, key: CancelKey) -> Option<SocketAddr> {
        self.cancel_keys.get(&key).copied()
    }

    fn stats(&self, listen: SocketAddr) -> RouteStats {
        RouteStats {
            listen,
            suspend_after: self.suspend_after,
            active_connections: self.active,
            authenticated_connections: self.authenticated,
            refused_connections: self.refused,
            idle_since: self.idle_since,
            last_activity: self.last_activity,
            connections: self.connections,
            wakes: self.wakes,
            wake_failures: self.wake_failures,
            suspends: self.suspends,
            suspend_failures: self.suspend_failures,
            suspend_refusals: self.suspend_refusals,
            in_use: self.authenticated > 0 || self.wake_in_flight.is_some(),
            suspended: self.phase == Phase::Suspended,
        }
    }
}

/// A route as the connection handlers and background tasks share it.
pub(crate) struct LiveRoute {
    pub(crate) branch: String,
    pub(crate) listen: SocketAddr,
    pub(crate) opts: ProxyOptions,
    control: Arc<dyn Control>,
    /// The runtime `Control` calls run on: the one the proxy was created on, not the
    /// connection threads, so a slow wake never shares a thread with spliced bytes.
    control_rt: tokio::runtime::Handle,
    state: Mutex<RouteState>,
    /// Client connections of this route open now, from accept to close.
    open: AtomicUsize,
    /// Client connections of every route of the proxy open now.
    total: Arc<AtomicUsize>,
    /// Signalled on every state change the suspender or waiting clients care about.
    changed: Notify,
    shutdown: watch::Sender<bool>,
    /// Set when the listener should close while open connections go on (draining).
    accepting_stopped: watch::Sender<bool>,
}

impl LiveRoute {
    pub(crate) fn new(
        branch: String,
        listen: SocketAddr,
        suspend_after: Option<Duration>,
        control: Arc<dyn Control>,
        control_rt: tokio::runtime::Handle,
        opts: ProxyOptions,
        total: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            branch,
            listen,
            opts,
            control,
            control_rt,
            state: Mutex::new(RouteState::new(suspend_after, Instant::now())),
            open: AtomicUsize::new(0),
            total,
            changed: Notify::new(),
            shutdown: watch::Sender::new(false),
            accepting_stopped: watch::Sender::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, RouteState> {
        // No code path panics while holding the lock; if one did, the counters are
        // still consistent enough to keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> RouteStats {
        self.state().stats(self.listen)
    }

    pub(crate) fn set_suspend_after(&self, suspend_after: Option<Duration>) {
        self.state().suspend_after = suspend_after;
        self.changed.notify_waiters();
    }

    pub(crate) fn cancel_target(&self, key: CancelKey) -> Option<SocketAddr> {
        self.state().cancel_target(key)
    }

    pub(crate) fn compute_replaced(&self) {
        self.state().compute_replaced(Instant::now());
        self.changed.notify_waiters();
    }

    /// Asks every task of the route to stop.
    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
        self.changed.notify_waiters();
    }

    /// Closes the listener but leaves open connections alone (the proxy is draining).
    pub(crate) fn stop_accepting(&self) {
        self.accepting_stopped.send_replace(true);
    }

    /// Resolves once [`LiveRoute::stop_accepting`] or [`LiveRoute::shut_down`] was called.
    pub(crate) async fn accepting_stopped(&self) {
        let mut stopped = self.accepting_stopped.subscribe();
        tokio::select! {
            _ = stopped.wait_for(|&stop| stop) => {}
            () = self.shutdown_requested() => {}
        }
    }

    /// Resolves once [`LiveRoute::shut_down`] was called.
    pub(crate) async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        // An error means the sender is gone, which also means shutting down.
        let _ = rx.wait_for(|&stop| stop).await;
    }

    /// Counts an accepted connection against the per-branch and the total cap; over
    /// either it is refused (and counted as refused) before anything else happens.
    pub(crate) fn try_open(self: &Arc<Self>) -> Result<ConnectionSlot, ProxyError> {
        let below = |limit: usize| move |n: usize| (n < limit).then_some(n + 1);
        let per_branch = self.opts.max_connections_per_branch;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, below(per_branch))
            .is_err()
        {
            self.state().refuse();
            return Err(ProxyError::TooManyBranchConnections {
                branch: self.branch.clone(),
                limit: per_branch,
            });
        }
        let total = self.opts.max_connections;
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, below(total))
            .is_err()
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.state().refuse();
            return Err(ProxyError::TooManyConnections { limit: total });
        }
        Ok(ConnectionSlot {
            route: Arc::clone(self),
        })
    }

    /// Counts a client session in, waiting (until `deadline`) for a running suspend.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Session, ProxyError> {
        loop {
            let notified = self.changed.notified();
            if self.state().try_admit() {
                return Ok(Session {
                    route: Arc::clone(self),
                    key: None,
                    authenticated: false,
                });
            }
            info!(branch = %self.branch, "waiting for the compute's suspend to finish");
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.wake_timeout());
            }
        }
    }

    /// The compute's address: joins the wake in flight or starts one. The wake itself
    /// runs in its own task and is never cancelled (a half-started compute is worse than
    /// a slow one); only this client's wait is bounded by `deadline`.
    pub(crate) async fn wake(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<SocketAddr, ProxyError> {
        let (tx, rx) = watch::channel(None);
        let mut rx = match self.state().join_or_start_wake(rx.clone()) {
            Some(in_flight) => in_flight,
            None => {
                self.spawn_wake(tx);
                rx
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Err(_elapsed) => return Err(self.wake_timeout()),
            Ok(Err(_closed)) => Err("the wake task ended without a result".to_owned()),
            Ok(Ok(outcome)) => outcome.clone().unwrap_or_else(|| Err(String::new())),
        };
        outcome.map_err(|reason| ProxyError::WakeFailed {
            branch: self.branch.clone(),
            reason,
        })
    }

    fn spawn_wake(self: &Arc<Self>, tx: watch::Sender<Option<WakeOutcome>>) {
        let route = Arc::clone(self);
        let span = info_span!("wake", branch = %self.branch);
        self.control_rt.spawn(
            async move {
                let started = Instant::now();
                let outcome = route.control.wake(&route.branch).await;
                match &outcome {
                    Ok(addr) => info!(%addr, elapsed = ?started.elapsed(), "compute awake"),
                    Err(reason) => warn!(%reason, elapsed = ?started.elapsed(), "wake failed"),
                }
                {
                    let mut state = route.state();
                    state.finish_wake(outcome.is_ok(), Instant::now());
                    // Published under the lock: a client arriving now either joins this
                    // outcome or starts a fresh wake, never waits on a finished one.
                    tx.send_replace(Some(outcome));
                }
                route.changed.notify_waiters();
            }
            .instrument(span),
        );
    }

    fn wake_timeout(&self) -> ProxyError {
        ProxyError::WakeTimeout {
            branch: self.branch.clone(),
            timeout: self.opts.wake_timeout,
        }
    }

    /// Suspends the compute whenever the route has been idle for `suspend_after`; ends
    /// after [`LiveRoute::shut_down`] (a suspend in progress is finished first).
    pub(crate) async fn run_suspender(self: Arc<Self>) {
        let shutdown = self.shutdown_requested();
        tokio::pin!(shutdown);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            let decision = self.state().decide_suspend(Instant::now());
            match decision {
                SuspendDecision::Suspend => self.suspend().await,
                SuspendDecision::SleepUntil(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        () = &mut notified => {}
                        () = &mut shutdown => return,
                    }
                }
                SuspendDecision::Wait => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = &mut shutdown => return,
                    }
                }
            }
        }
    }

    async fn suspend(&self) {
        let span = info_span!("suspend", branch = %self.branch);
        let started = Instant::now();
        let outcome = self
            .control
            .try_suspend(&self.branch)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match &outcome {
            SuspendOutcome::Suspended => info!(elapsed = ?started.elapsed(), "compute suspended"),
            SuspendOutcome::InUseElsewhere(reason) => {
                info!(%reason, "not suspended: in use elsewhere; asking again after another idle period")
            }
            SuspendOutcome::Failed(reason) => {
                warn!(%reason, "suspend failed; retrying after another idle period")
            }
        });
        let now = Instant::now();
        match outcome {
            SuspendOutcome::Suspended => self.state().finish_suspend(true, now),
            SuspendOutcome::InUseElsewhere(_) => self.state().finish_suspend_refused(now),
            SuspendOutcome::Failed(_) => self.state().finish_suspend(false, now),
        }
        self.changed.notify_waiters();
    }
}

/// An accepted connection counted against the caps; freed on drop.
pub(crate) struct ConnectionSlot {
    route: Arc<LiveRoute>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.route.open.fetch_sub(1, Ordering::AcqRel);
        self.route.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted client session; counted out (and its cancel key forgotten) on drop.
pub(crate) struct Session {
    route: Arc<LiveRoute>,
    key: Option<(CancelKey, SocketAddr)>,
    authenticated: bool,
}

impl Session {
    /// Postgres accepted the client's credentials: from now on the session keeps the
    /// branch awake.
    pub(crate) fn authenticated(&mut self) {
        if std::mem::replace(&mut self.authenticated, true) {
            return;
        }
        self.route.state().authenticate();
        self.route.changed.notify_waiters();
    }

    /// Makes `CancelRequest`s with `key` reach `backend` while this session lasts.
    pub(crate) fn register_key(&mut self, key: CancelKey, backend: SocketAddr) {
        let mut state = self.route.state();
        if let Some((old, old_backend)) = self.key.take() {
            state.forget_key(old, old_backend);
        }
        state.register_key(key, backend);
        self.key = Some((key, backend));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        {
            let mut state = self.route.state();
            if let Some((key, backend)) = self.key.take() {
                state.forget_key(key, backend);
            }
            state.release(Instant::now(), self.authenticated);
        }
        self.route.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn rx() -> watch::Receiver<Option<WakeOutcome>> {
        watch::channel(None).1
    }

    #[test]
    fn never_suspends_without_suspend_after_or_with_zero() {
        let t0 = Instant::now();
        for after in [None, Some(Duration::ZERO)] {
            let mut s = RouteState::new(after, t0);
            assert_eq!(s.decide_suspend(t0 + 3600 * SEC), SuspendDecision::Wait);
        }
    }

    #[test]
    fn suspends_after_the_idle_period_and_not_again_until_woken() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(10 * SEC), t0);
        assert!(s.try_admit());
        s.authenticate();
        assert_eq!(s.decide_suspend(t0 + 60 * SEC), SuspendDecision::Wait);
        s.release(t0 + 5 * SEC, true);
        assert_eq!(
            s.decide_suspend(t0 + 6 * SEC),
            SuspendDecision::SleepUntil(t0 + 15 * SEC)
        );
        assert_eq!(s.decide_suspend(t0 + 15 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 16 * SEC);
        assert!(s.stats(addr()).suspended);
        assert_eq!(s.decide_suspend(t0 + 100 * SEC), SuspendDecision::Wait);
        // The next client wakes it; then it is idle-tracked again.
        assert!(s.try_admit());
        assert!(s.join_or_start_wake(rx()).is_none());
        s.finish_wake(true, t0 + 101 * SEC);
        s.authenticate();
        s.release(t0 + 102 * SEC, true);
        assert_eq!(
            s.decide_suspend(t0 + 103 * SEC),
            SuspendDecision::SleepUntil(t0 + 112 * SEC)
        );
        let stats = s.stats(addr());
        assert_eq!((stats.suspends, stats.wakes, stats.connections), (1, 1, 2));
    }

    #[test]
    fn clients_wait_while_suspending() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(SEC), t0);
        assert_eq!(s.decide_suspend(t0 + SEC), SuspendDecision::Suspend);
        assert!(
            !s.try_admit(),
            "no client may reach a compute being stopped"
        );
        s.finish_suspend(true, t0 + 2 * SEC);
        assert!(s.try_admit());
        assert_eq!(s.stats(addr()).active_connections, 1);
    }

    #[test]
    fn no_suspend_while_a_wake_is_in_flight() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(SEC), t0);
        assert!(s.try_admit());
        assert!(s.join_or_start_wake(rx()).is_none());
        // Its client gave up (wake timeout) but the wake still runs.
        s.release(t0, false);
        assert_eq!(s.decide_suspend(t0 + 60 * SEC), SuspendDecision::Wait);
        s.finish_wake(true, t0 + 60 * SEC);
        assert_eq!(
            s.decide_suspend(t0 + 60 * SEC),
            SuspendDecision::SleepUntil(t0 + 61 * SEC)
        );
    }

    #[test]
    fn concurrent_clients_share_one_wake() {
        let t0 = Instant::now();
        let mut s = RouteState::new(None, t0);
        let (tx, first) = watch::channel(None);
        assert!(s.join_or_start_wake(first).is_none());
        let joined: Vec<_> = (0..19).map(|_| s.join_or_start_wake(rx())).collect();
        assert!(joined.iter().all(Option::is_some));
        tx.send_replace(Some(Ok(addr())));
        assert!(joined
            .iter()
            .flatten()
            .all(|r| *r.borrow() == Some(Ok(addr()))));
        s.finish_wake(true, t0);
        assert!(
            s.join_or_start_wake(rx()).is_none(),
            "a finished wake is not reused"
        );
        assert_eq!(s.stats(addr()).wakes, 2);
    }

    #[test]
    fn failed_suspend_is_retried_after_another_idle_period() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(SEC), t0);
        assert_eq!(s.decide_suspend(t0 + SEC), SuspendDecision::Suspend);
        s.finish_suspend(false, t0 + 2 * SEC);
        assert_eq!(
            s.decide_suspend(t0 + 2 * SEC),
            SuspendDecision::SleepUntil(t0 + 3 * SEC)
        );
        assert_eq!(s.stats(addr()).suspend_failures, 1);
    }

    /// A restore moved the branch after this proxy suspended it, and the operator
    /// started a compute on the new timeline: it is suspended after the idle period.
    #[test]
    fn a_replaced_compute_is_suspended_again_after_the_idle_period() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(10 * SEC), t0);
        assert_eq!(s.decide_suspend(t0 + 10 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 11 * SEC);
        assert_eq!(s.decide_suspend(t0 + 100 * SEC), SuspendDecision::Wait);

        s.compute_replaced(t0 + 100 * SEC);
        assert!(!s.stats(addr()).suspended);
        assert_eq!(
            s.decide_suspend(t0 + 101 * SEC),
            SuspendDecision::SleepUntil(t0 + 110 * SEC)
        );
        assert_eq!(s.decide_suspend(t0 + 110 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 111 * SEC);
        let stats = s.stats(addr());
        assert!(stats.suspended);
        assert_eq!((stats.suspends, stats.wakes), (2, 0));
    }

    #[test]
    fn a_replaced_compute_waits_for_connected_clients() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(10 * SEC), t0);
        assert!(s.try_admit());
        assert!(s.join_or_start_wake(rx()).is_none());
        s.finish_wake(true, t0 + SEC);
        s.authenticate();
        s.compute_replaced(t0 + 50 * SEC);
        assert_eq!(s.decide_suspend(t0 + 100 * SEC), SuspendDecision::Wait);
        // The old compute ends the session; the idle period starts then.
        s.release(t0 + 120 * SEC, true);
        assert_eq!(
            s.decide_suspend(t0 + 121 * SEC),
            SuspendDecision::SleepUntil(t0 + 130 * SEC)
        );
    }

    #[test]
    fn a_compute_replaced_during_a_suspend_is_suspended_too() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(SEC), t0);
        assert_eq!(s.decide_suspend(t0 + SEC), SuspendDecision::Suspend);
        // The suspend may have stopped the old compute only.
        s.compute_replaced(t0 + 2 * SEC);
        s.finish_suspend(true, t0 + 3 * SEC);
        assert!(!s.stats(addr()).suspended);
        assert_eq!(
            s.decide_suspend(t0 + 3 * SEC),
            SuspendDecision::SleepUntil(t0 + 4 * SEC)
        );
        assert_eq!(s.decide_suspend(t0 + 4 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 5 * SEC);
        assert!(s.stats(addr()).suspended);
    }

    /// Anyone reaching the port gets admitted and woken, but only a session Postgres
    /// authenticated keeps the compute up.
    #[test]
    fn unauthenticated_sessions_do_not_hold_the_route_busy() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(10 * SEC), t0);
        assert!(s.try_admit());
        assert_eq!(
            s.decide_suspend(t0 + SEC),
            SuspendDecision::SleepUntil(t0 + 10 * SEC)
        );
        assert_eq!(s.decide_suspend(t0 + 10 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 11 * SEC);
        s.release(t0 + 12 * SEC, false);
        let stats = s.stats(addr());
        assert_eq!(
            (stats.active_connections, stats.authenticated_connections),
            (0, 0)
        );
    }

    /// Every client triggers a wake; clients that never authenticate may restart the
    /// idle period once, not on every reconnect.
    #[test]
    fn wakes_restart_the_idle_period_once_per_idle_stretch() {
        let t0 = Instant::now();
        let mut s = RouteState::new(Some(10 * SEC), t0);
        for i in 1..=5 {
            assert!(s.try_admit());
            assert!(s.join_or_start_wake(rx()).is_none());
            s.finish_wake(true, t0 + i * SEC);
            s.release(t0 + i * SEC, false);
        }
        // Only the first wake (at t0 + 1 s) restarted the period.
        assert_eq!(
            s.decide_suspend(t0 + 6 * SEC),
            SuspendDecision::SleepUntil(t0 + 11 * SEC)
        );
        assert_eq!(s.decide_suspend(t0 + 11 * SEC), SuspendDecision::Suspend);
        s.finish_suspend(true, t0 + 12 * SEC);
        // After the suspend a wake starts the compute again: one full period for it.
        assert!(s.try_admit());
        assert!(s.join_or_start_wake(rx()).is_none());
        s.finish_wake(true, t0 + 20 * SEC);
        s.release(t0 + 20 * SEC, false);
        assert_eq!(
            s.decide_suspend(t0 + 21 * SEC),
            SuspendDecision::SleepUntil(t0 + 30 * SEC)
        );
        // An authenticated session ends the stretch: after it, a wake may restart again.
        assert!(s.try_admit());
        s.authenticate();
        s.release(t0 + 25 * SEC, true);
        assert!(s.join_or_start_wake(rx()).is_none());
        s.finish_wake(true, t0 + 27 * SEC);
        assert_eq!(
            s.decide_suspend(t0 + 28 * SEC),
            SuspendDecision::SleepUntil(t0 + 37 * SEC)
        );
    }

    #[test]
    fn cancel_keys_are_forgotten_only_for_their_backend() {
        let mut s = RouteState::new(None, Instant::now());
        let key = CancelKey { pid: 1, secret: 2 };
        let other: SocketAddr = "127.0.0.1:2".parse().unwrap();
        s.register_key(key, addr());
        s.forget_key(key, other);
        assert_eq!(s.cancel_target(key), Some(addr()));
        s.forget_key(key, addr());
        assert_eq!(s.cancel_target(key), None);
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }
}
