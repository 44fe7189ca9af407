//! Reset and restore: the branch keeps its name, port, role and password and is re-pointed
//! onto a new timeline forked from its parent (reset) or from its own or another branch's
//! history (restore). History is never rewritten: the timeline it leaves is deleted
//! (reset, `--no-backup`) or kept as a suspended backup branch (restore).

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ramify_api::{At, CreateTimeline, TimelineId, TimelineInfo};
use tracing::{info, warn};

use crate::core::{refuse_if_following, refuse_if_protected, Lifecycle, LifecycleError, Runtime};
use crate::model::*;
use crate::names::validate_branch_name;
use crate::password;

impl<R: Runtime> Lifecycle<R> {
    /// Makes the branch its parent's latest state. Same connection string and password;
    /// open sessions are ended (the old compute is shut down), new ones see the parent's
    /// data. The old timeline is deleted: the branch's children are timelines of their
    /// own and keep working.
    pub async fn reset(&self, name: &str) -> Result<RestoreOutcome, LifecycleError> {
        let started = Instant::now();
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        let branch = self.branch(name)?;
        refuse_if_protected(&branch, "reset")?;
        refuse_if_following(&branch, "reset")?;
        let Some(parent_name) = branch.parent.clone() else {
            return Err(LifecycleError::Invalid(format!(
                "branch {name:?} is a root: it has no parent to reset to; to go back to a point of its own history use `ramify branch restore {name} --at …`"
            )));
        };
        let parent = self.branch(&parent_name).map_err(|_| {
            LifecycleError::NotFound(format!(
                "the parent of {name:?}, {parent_name:?}, no longer exists"
            ))
        })?;
        let timeline = self
            .fork(parent.timeline, At::Latest, branch.timeline)
            .await?;
        let mut next = self
            .switch_timeline(&branch, &timeline, Leaving::Delete)
            .await?;
        // Its history now is its parent's: the timelines it had before are not its past.
        if !next.former_timelines.is_empty() {
            next.former_timelines.clear();
            self.store.put(&next)?;
        }
        if let Err(e) = self.retire_timeline(branch.timeline).await {
            warn!(branch = name, timeline = %branch.timeline, error = %e, "cannot delete the timeline a reset left");
        }
        info!(branch = name, parent = %parent_name, timeline = %next.timeline, "branch reset");
        Ok(RestoreOutcome {
            branch: self.view_of(&next, &timeline).await?,
            source: parent_name,
            point: HistoryPoint::At(At::Latest),
            previous_timeline: branch.timeline,
            backup: None,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Makes the branch itself (or `from`) as it was at a point. The state before is kept
    /// as a suspended backup branch `NAME-before-restore-<UTC time>` that expires after
    /// the restore window, unless `backup` is false. A point outside the restore window
    /// is the storage node's range error, and the branch is left as it was.
    pub async fn restore(
        &self,
        name: &str,
        req: RestoreBranch,
    ) -> Result<RestoreOutcome, LifecycleError> {
        let started = Instant::now();
        let lock = self.lock_of(name);
        let _g = lock.lock().await;
        let branch = self.branch(name)?;
        refuse_if_protected(&branch, "restored")?;
        refuse_if_following(&branch, "restored")?;
        let source = match req.from.as_deref() {
            Some(from) if from != name => self.branch(from).map_err(|_| {
                LifecycleError::NotFound(format!(
                    "unknown branch {from:?} to restore {name:?} from"
                ))
            })?,
            _ => branch.clone(),
        };
        let point = match (&req.at, &req.from) {
            (Some(p), _) => p.clone(),
            (None, Some(_)) => HistoryPoint::At(At::Latest),
            (None, None) => {
                return Err(LifecycleError::Invalid(format!(
                    "restore of {name:?} needs --at: a time (2026-01-02T03:04:05Z or -10m), an LSN (0/16B3748), snapshot:NAME or checkpoint:NAME; or --from BRANCH for another branch's state"
                )))
            }
        };
        let (from_timeline, at) = self.resolve_point(&source, &point).await?;
        // The old compute's shutdown checkpoint is written in the background, after the
        // switch: nothing here waits for it.
        let timeline = self.fork(from_timeline, at, branch.timeline).await?;
        // The backup branch is made ready first and written in the same store write as
        // the switch: a crash leaves either the branch on its old timeline, or on the new
        // one with its backup — never the old timeline without a branch.
        let backup = if req.backup {
            match self.prepare_backup(&branch).await {
                Ok(b) => Some(b),
                Err(e) => {
                    self.discard_timeline(timeline.id).await;
                    return Err(LifecycleError::Runtime(format!(
                        "{name} was not restored: its present state (timeline {}) could not be kept as a backup branch: {e}",
                        branch.timeline
                    )));
                }
            }
        } else {
            None
        };
        let leaving = match &backup {
            Some(b) => Leaving::Keep(b),
            None => Leaving::Delete,
        };
        let next = match self.switch_timeline(&branch, &timeline, leaving).await {
            Ok(next) => next,
            Err(e) => {
                if let Some(b) = &backup {
                    self.runtime.unpublish(b).await;
                }
                return Err(e);
            }
        };
        if backup.is_none() {
            if let Err(e) = self.retire_timeline(branch.timeline).await {
                warn!(branch = name, timeline = %branch.timeline, error = %e, "cannot delete the timeline a restore left");
            }
        }
        let backup = backup.map(|b| b.name);
        info!(branch = name, source = %source.name, point = %point, timeline = %next.timeline, backup = ?backup, "branch restored");
        Ok(RestoreOutcome {
            branch: self.view_of(&next, &timeline).await?,
            source: source.name,
            point,
            previous_timeline: branch.timeline,
            backup,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The timeline and storage point that `point` of `source`'s history means. A
    /// checkpoint lives on the timeline recorded with it; an LSN or time before the
    /// branch's current timeline began is looked up in the timelines it had before a
    /// restore (kept by its backup branches).
    pub async fn resolve_point(
        &self,
        source: &Branch,
        point: &HistoryPoint,
    ) -> Result<(TimelineId, At), LifecycleError> {
        match point {
            HistoryPoint::Checkpoint(cp) => {
                let Some(c) = source.checkpoints.iter().find(|c| &c.name == cp) else {
                    let names: Vec<&str> =
                        source.checkpoints.iter().map(|c| c.name.as_str()).collect();
                    return Err(LifecycleError::NotFound(format!(
                        "branch {:?} has no checkpoint {cp:?} (checkpoints: {})",
                        source.name,
                        if names.is_empty() {
                            "none; create one with `ramify checkpoint create`".to_string()
                        } else {
                            names.join(", ")
                        }
                    )));
                };
                if !self.store.all()?.iter().any(|b| b.timeline == c.timeline) {
                    return Err(LifecycleError::NotFound(format!(
                        "checkpoint {cp:?} of {:?} is gone: the backup branch holding its history was deleted",
                        source.name
                    )));
                }
                Ok((c.timeline, At::Lsn(c.lsn)))
            }
            HistoryPoint::At(at @ (At::Lsn(_) | At::Time(_)))
                if !source.former_timelines.is_empty() =>
            {
                let live: HashSet<TimelineId> =
                    self.store.all()?.into_iter().map(|b| b.timeline).collect();
                Ok((
                    timeline_holding(source, at, |id| live.contains(&id)),
                    at.clone(),
                ))
            }
            HistoryPoint::At(at) => Ok((source.timeline, at.clone())),
        }
    }

    /// A new timeline for the branch to move onto, pending until the switch is stored.
    /// It is durable (kept in the node's backup repository) when the branch's current
    /// timeline `current` is: a reset or restore never quietly drops a branch's backups.
    async fn fork(
        &self,
        parent: TimelineId,
        at: At,
        current: TimelineId,
    ) -> Result<TimelineInfo, LifecycleError> {
        let durable = self
            .storage
            .get_timeline_without_sizes(current)
            .await
            .ok()
            .and_then(|t| t.backup)
            .map(|_| true);
        let id = TimelineId::new_v4();
        self.store.set_pending(id, true)?;
        Ok(self
            .storage
            .create_timeline(&CreateTimeline {
                id: Some(id),
                parent: Some(parent),
                at: Some(at),
                follow: None,
                backup: durable,
                from_backup: None,
            })
            .await?
            .value)
    }

    /// Re-points `branch` (whose lock the caller holds) onto `timeline`: stops the old
    /// compute — its sessions end with Postgres's "terminating connection due to
    /// administrator command" — starts one on the new timeline behind the same port and
    /// gives the role the branch's password. Clients that connect meanwhile wait in the
    /// proxy (waking takes the branch's lock). On failure the new timeline is deleted and
    /// the branch stays on the old one (its compute starts again on the next connection).
    async fn switch_timeline(
        &self,
        branch: &Branch,
        timeline: &TimelineInfo,
        leaving: Leaving<'_>,
    ) -> Result<Branch, LifecycleError> {
        let mut next = branch.clone();
        next.timeline = timeline.id;
        next.at = timeline.at.clone();
        next.password_pending = false;
        if matches!(leaving, Leaving::Delete) {
            // Pending from before the branch leaves it: a crash after the switch is
            // stored leaves it to recover(), which deletes it as the caller would have.
            self.store.set_pending(branch.timeline, true)?;
        }
        let switched = async {
            // A timeline kept as a backup is stopped cleanly, so that it ends at a
            // shutdown checkpoint (its whole history stays forkable); that checkpoint is
            // written in the background while the new compute starts, since the two
            // share nothing but the branch's name. One deleted next needs no checkpoint.
            match &leaving {
                Leaving::Keep(_) => self.runtime.detach(branch).await,
                Leaving::Delete => {
                    self.end_sessions(branch).await;
                    self.runtime.stop_now(branch).await
                }
            }
            .map_err(LifecycleError::Runtime)?;
            self.runtime
                .start(&next, timeline)
                .await
                .map_err(LifecycleError::Runtime)?;
            self.set_credentials(&next).await?;
            // One write: the branch on its new timeline and, when kept, the backup
            // branch on the old one. The old timeline's history ends here: writes
            // committed on its compute until the detach above belong to it.
            match &leaving {
                Leaving::Keep(backup) => {
                    next.former_timelines.push(FormerTimeline {
                        timeline: branch.timeline,
                        left_at: Utc::now(),
                        successor_fork_lsn: timeline
                            .fork_lsn
                            .filter(|_| timeline.parent == Some(branch.timeline)),
                    });
                    self.store.put_all(&[next.clone(), (*backup).clone()])?
                }
                Leaving::Delete => self.store.put(&next)?,
            }
            Ok::<_, LifecycleError>(())
        }
        .await;
        if let Err(e) = switched {
            warn!(branch = %branch.name, error = %e, "switching timelines failed; staying on the old one");
            let _ = self.runtime.stop(&next).await;
            self.discard_timeline(timeline.id).await;
            self.settle(branch.timeline);
            return Err(e);
        }
        self.settle(timeline.id);
        Ok(next)
    }

    /// Ends every client session of the branch's running compute with a proper
    /// `FATAL 57P01 terminating connection due to administrator command` (an immediate
    /// shutdown would only warn and drop them), waiting up to a second for each.
    async fn end_sessions(&self, branch: &Branch) {
        if self.runtime.address(branch).await.is_none() {
            return;
        }
        let sql = "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity \
                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
        if let Err(e) = self.runtime.admin_sql(branch, &[sql.to_string()]).await {
            warn!(branch = %branch.name, error = %e, "cannot end the sessions before stopping");
        }
    }

    /// The backup branch that will keep `branch`'s present timeline once a restore moves
    /// it: suspended, with a fresh password (set on its first start), expiring after the
    /// restore window, and already published on its own port. Not stored: the restore
    /// writes it together with the switch.
    async fn prepare_backup(&self, branch: &Branch) -> Result<Branch, LifecycleError> {
        let now = Utc::now();
        let existing: Vec<String> = self.store.all()?.into_iter().map(|b| b.name).collect();
        let name = backup_name(&branch.name, now, |n| existing.iter().any(|e| e == n));
        validate_branch_name(&name).map_err(LifecycleError::Invalid)?;
        let window = self.storage.status().await?.restore_window_seconds;
        let mut backup = Branch {
            name: name.clone(),
            parent: branch.parent.clone(),
            timeline: branch.timeline,
            at: branch.at.clone(),
            port: 0,
            user: branch.user.clone(),
            password: password::generate().map_err(|e| LifecycleError::Random(e.to_string()))?,
            database: branch.database.clone(),
            // A backup is looked at now and then, never served for long: it always idles out.
            suspend_after_secs: match branch.suspend_after_secs {
                0 => DEFAULT_SUSPEND_AFTER_SECS,
                s => s,
            },
            created_at: now,
            protected: false,
            expires_at: Some(now + chrono::Duration::seconds(window.min(i64::MAX as u64) as i64)),
            checkpoints: vec![],
            former_timelines: vec![],
            backup_of: Some(branch.name.clone()),
            password_pending: true,
            follows: None,
        };
        backup.port = self
            .runtime
            .publish(&backup, 0)
            .await
            .map_err(LifecycleError::Runtime)?;
        Ok(backup)
    }
}

/// What happens to the timeline a branch leaves.
#[derive(Debug, Clone, Copy)]
enum Leaving<'a> {
    /// Kept, as this backup branch (written with the switch).
    Keep(&'a Branch),
    /// Deleted right after.
    Delete,
}

/// The timeline of `source`'s history that holds `at`: its current one, unless `at` is
/// before the branch moved onto it — then the timeline it left (if it still `exists`),
/// and so on back.
///
/// A time before the branch *left* a timeline happened on it (a restore rewinds the
/// branch, so the new timeline's fork time says nothing about when the branch was
/// where); an LSN before the successor's fork point is history the two share.
pub fn timeline_holding(
    source: &Branch,
    at: &At,
    exists: impl Fn(TimelineId) -> bool,
) -> TimelineId {
    let mut current = source.timeline;
    for former in source.former_timelines.iter().rev() {
        let before = match at {
            At::Lsn(l) => former.successor_fork_lsn.is_some_and(|f| *l < f),
            At::Time(t) => *t < former.left_at,
            _ => false,
        };
        if !before || !exists(former.timeline) {
            break;
        }
        current = former.timeline;
    }
    current
}

/// `NAME-before-restore-<UTC time>`, shortened to fit a 63-character name, with `-2`,
/// `-3`, … when taken.
pub fn backup_name(branch: &str, now: DateTime<Utc>, taken: impl Fn(&str) -> bool) -> String {
    backup_name_within(branch, now, 63, taken)
}

/// [`backup_name`] within `max_len` characters (at least 40; Kubernetes branch names
/// have 54).
pub fn backup_name_within(
    branch: &str,
    now: DateTime<Utc>,
    max_len: usize,
    taken: impl Fn(&str) -> bool,
) -> String {
    let suffix = format!("-before-restore-{}", now.format("%Y%m%dt%H%M%Sz"));
    let room = max_len.max(40) - suffix.len() - 3;
    let base: String = branch.chars().take(room).collect();
    let base = base.trim_end_matches('-');
    let name = format!("{base}{suffix}");
    if !taken(&name) {
        return name;
    }
    (2..)
        .map(|n| format!("{name}-{n}"))
        .find(|n| !taken(n))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ramify_api::Lsn;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 5).unwrap()
    }

    #[test]
    fn backup_names_fit_and_do_not_collide() {
        let n = backup_name("dev", now(), |_| false);
        assert_eq!(n, "dev-before-restore-20260301t120005z");
        validate_branch_name(&n).unwrap();
        let long = "a".repeat(63);
        let n = backup_name(&long, now(), |_| false);
        assert!(n.len() <= 60, "{n}");
        validate_branch_name(&n).unwrap();
        let n = backup_name("dev", now(), |n| n == "dev-before-restore-20260301t120005z");
        assert_eq!(n, "dev-before-restore-20260301t120005z-2");
        // A name cut right before a '-' does not end up with "--".
        let n = backup_name(&format!("{}-x", "a".repeat(28)), now(), |_| false);
        validate_branch_name(&n).unwrap();
        assert!(!n.contains("--"), "{n}");
    }

    #[test]
    fn earlier_history_is_found_on_former_timelines() {
        let t = |m: i64| now() - chrono::Duration::minutes(m);
        let id = uuid::Uuid::from_u128;
        // dev was on 2 until -10m (then restored onto 3, forked from 2 at 0/5000), on 3
        // until -2m (then restored onto 4, forked from 3 at 0/7000).
        let dev = Branch {
            name: "dev".into(),
            parent: Some("main".into()),
            timeline: id(4),
            at: None,
            port: 1,
            user: "app".into(),
            password: "pw".into(),
            database: "app".into(),
            suspend_after_secs: 0,
            created_at: t(60),
            protected: false,
            expires_at: None,
            checkpoints: vec![],
            former_timelines: vec![
                FormerTimeline {
                    timeline: id(2),
                    left_at: t(10),
                    successor_fork_lsn: Some(Lsn(0x5000)),
                },
                FormerTimeline {
                    timeline: id(3),
                    left_at: t(2),
                    successor_fork_lsn: Some(Lsn(0x7000)),
                },
            ],
            backup_of: None,
            password_pending: false,
            follows: None,
        };
        let find = |b: &Branch, at: At| timeline_holding(b, &at, |_| true).as_u128();
        assert_eq!(find(&dev, At::Time(t(1))), 4);
        assert_eq!(find(&dev, At::Time(t(5))), 3);
        assert_eq!(find(&dev, At::Time(t(30))), 2);
        assert_eq!(find(&dev, At::Lsn(Lsn(0x8000))), 4);
        assert_eq!(find(&dev, At::Lsn(Lsn(0x6000))), 3);
        assert_eq!(find(&dev, At::Lsn(Lsn(0x2000))), 2);
        assert_eq!(find(&dev, At::Latest), 4);
        // A former timeline deleted since (its backup branch is gone): stop there.
        let gone = |tl: TimelineId| tl != id(3);
        assert_eq!(timeline_holding(&dev, &At::Time(t(30)), gone).as_u128(), 4);
        // After a restore --from another branch, LSNs are that branch's: no walking back
        // by LSN, but the branch's past by time is still where it was.
        let mut from_other = dev.clone();
        from_other.former_timelines[1].successor_fork_lsn = None;
        assert_eq!(find(&from_other, At::Lsn(Lsn(0x6000))), 4);
        assert_eq!(find(&from_other, At::Time(t(5))), 3);
    }
}
