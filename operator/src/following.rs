//! Following branches (`spec.source.external`): a root the storage node copied from an
//! external Postgres with `pg_basebackup`, whose compute runs as a hot standby of it and
//! archives what it receives, so that its history is forkable like any other. What the
//! branch controller does differently for one, and for the forks that descend from one:
//!
//! * its compute always runs (it must stay connected to keep up): started again when its
//!   Pod is gone, never suspended — not by the proxy (its route says never), not on
//!   request;
//! * it has no role of its own: no credentials call, and a Secret that names no user or
//!   password (its logins are its source's roles);
//! * its status shows the source (without the password) and how far behind it is, and a
//!   `Following` condition whether it streams, with the node's reason when not;
//! * its history is its source's: reset, restore and checkpoints are refused;
//! * a fork descending from one connects to the source's database, and its role is made
//!   a member of the source's roles (`Credentials::adopt_objects`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use ramify_api::{ClientError, FollowInfo, TimelineInfo};
use ramify_crd::{
    DatabaseBranch, DatabaseBranchStatus, FollowingStatus, SUSPEND_REQUEST_ANNOTATION,
};
use serde_json::json;
use tracing::info;

use crate::branch::{publish, storage_err, wait, Error, Step};
use crate::conditions::{self, FOLLOWING};
use crate::context::Context;
use crate::validate::{Problem, ValidSpec};

/// How often a following branch is reconciled, refreshing its replication figures.
pub const STATUS_EVERY: Duration = Duration::from_secs(15);
/// Figures younger than this are kept as they are: the status write a refresh causes
/// triggers a reconcile of its own, which must not write again.
const REFRESH_AFTER: Duration = Duration::from_secs(10);
/// How far up the parent chain a branch's ancestry is followed.
const MAX_ANCESTRY: usize = 64;

/// The replication figures of `f` as the branch's status shows them; `old` is kept while
/// younger than [`REFRESH_AFTER`] and nothing but the figures changed.
pub fn following_status(
    old: Option<&FollowingStatus>,
    f: &FollowInfo,
    now: DateTime<Utc>,
) -> FollowingStatus {
    let st = f.status.as_ref();
    let fresh = FollowingStatus {
        source: f.conninfo.clone(),
        slot: f.slot.clone(),
        mode: Some(f.mode.into()),
        publication: f.publication.clone(),
        streaming: st.map(|s| s.streaming),
        received_lsn: st.and_then(|s| s.received_lsn).map(|l| l.to_string()),
        replayed_lsn: st.and_then(|s| s.replayed_lsn).map(|l| l.to_string()),
        lag_bytes: st
            .and_then(|s| s.lag_bytes)
            .and_then(|b| i64::try_from(b).ok()),
        // Tenths of a second: finer would only make the status churn.
        lag_seconds: st
            .and_then(|s| s.lag_seconds)
            .filter(|s| s.is_finite())
            .map(|s| (s * 10.0).round() / 10.0),
        last_received_at: st.and_then(|s| s.last_received_at),
        warm_standby: f.warm_standby.clone(),
        checked_at: Some(now),
    };
    match old {
        Some(o)
            if o.source == fresh.source
                && o.slot == fresh.slot
                && o.mode == fresh.mode
                && o.publication == fresh.publication
                && o.streaming == fresh.streaming
                && o.warm_standby == fresh.warm_standby
                && o.checked_at
                    .is_some_and(|t| (now - t).to_std().unwrap_or_default() < REFRESH_AFTER) =>
        {
            o.clone()
        }
        _ => fresh,
    }
}

/// The `Following` condition for `f`: status, reason, message.
pub fn condition(f: &FollowInfo) -> (bool, &'static str, String) {
    let slot = f
        .slot
        .as_ref()
        .map(|s| format!(" (slot {s})"))
        .unwrap_or_default();
    match &f.status {
        None => (
            false,
            "ComputeNotRunning",
            format!(
                "the compute is not answering yet; it streams from {}{slot} once it runs",
                f.conninfo
            ),
        ),
        Some(s) if s.streaming => (
            true,
            "Streaming",
            format!("streaming from {}{slot}", f.conninfo),
        ),
        Some(s) => (
            false,
            "NotStreaming",
            s.problem.clone().unwrap_or_else(|| {
                format!(
                    "not streaming from {}{slot}; the compute retries",
                    f.conninfo
                )
            }),
        ),
    }
}

/// Sets `status.following` and the `Following` condition from what the storage node
/// reports, with an Event when streaming starts or stops.
pub async fn update(
    ctx: &Context,
    b: &DatabaseBranch,
    info: &TimelineInfo,
    status: &mut DatabaseBranchStatus,
) {
    let Some(f) = &info.follow else {
        // The node does not know the timeline as a follower (it predates the feature, or
        // was replaced): nothing to show.
        status.following = None;
        return;
    };
    let now = Utc::now();
    let next = following_status(status.following.as_ref(), f, now);
    let refreshed = status.following.as_ref() != Some(&next);
    status.following = Some(next);
    let known = status
        .conditions
        .iter()
        .find(|c| c.type_ == FOLLOWING)
        .cloned();
    if !refreshed && known.is_some() {
        return;
    }
    let (ok, reason, message) = condition(f);
    let was = known
        .as_ref()
        .map(|c| (c.status == "True", c.reason.clone()));
    conditions::set(
        &mut status.conditions,
        FOLLOWING,
        ok,
        reason,
        &message,
        b.metadata.generation,
    );
    if was.as_ref().map(|(s, r)| (*s, r.as_str())) != Some((ok, reason)) {
        // A compute that is only starting is not news; anything else is a transition.
        if reason != "ComputeNotRunning" {
            let type_ = if ok {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(ctx, b, type_, reason, message).await;
        }
    }
}

/// The branch's parent, when the branch's data comes from a following branch (its parent
/// or an ancestor follows an external Postgres); `None` for any other branch. Read from
/// the watch cache, and from the API server for a parent not in it yet.
pub async fn follower_parent(
    ctx: &Context,
    b: &DatabaseBranch,
) -> Result<Option<DatabaseBranch>, Error> {
    let mut next = b
        .spec
        .parent
        .as_ref()
        .map(|p| (b.parent_namespace().unwrap_or_default(), p.name.clone()));
    let mut parent = None;
    for _ in 0..MAX_ANCESTRY {
        let Some((ns, name)) = next else {
            return Ok(None);
        };
        let branch = match ctx.branch(&ns, &name) {
            Some(c) => (*c).clone(),
            None => match Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&name)
                .await?
            {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        if parent.is_none() {
            parent = Some(branch.clone());
        }
        if branch.external_source().is_some() {
            return Ok(parent);
        }
        next = branch.spec.parent.as_ref().map(|p| {
            (
                branch.parent_namespace().unwrap_or_default(),
                p.name.clone(),
            )
        });
    }
    Ok(None)
}

/// The database a branch's Secret names (and its credentials are set in):
/// `spec.connection.database` when given; for a follower, the one its source's
/// connection string names (`postgres` when none); for a fork descending from a follower,
/// its parent's (where the source's data is); `app` otherwise.
pub fn database(
    spec: &ValidSpec,
    info: &TimelineInfo,
    follower_parent: Option<&DatabaseBranch>,
) -> String {
    if spec.database_given {
        return spec.database.clone();
    }
    if spec.following {
        return info
            .follow
            .as_ref()
            .and_then(|f| crate::source::parse(&f.conninfo).ok())
            .map(|c| c.database())
            .unwrap_or_else(|| "postgres".into());
    }
    match follower_parent.and_then(|p| p.status.as_ref()?.connection.as_ref()) {
        Some(c) if !c.database.is_empty() => c.database.clone(),
        _ if follower_parent.is_some() => "postgres".into(),
        _ => spec.database.clone(),
    }
}

/// A suspend asked of a follower through its annotation: refused with a Warning event,
/// and the annotation removed (the request is answered).
pub async fn refuse_suspend(ctx: &Context, b: &DatabaseBranch) -> Result<(), Error> {
    publish(
        ctx,
        b,
        EventType::Warning,
        "SuspendRefused",
        format!(
            "branch {} follows an external Postgres and never suspends: it must stay connected to keep up; delete it to stop following",
            b.name_any()
        ),
    )
    .await;
    Api::<DatabaseBranch>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {SUSPEND_REQUEST_ANNOTATION: null}}})),
        )
        .await?;
    info!("suspend of a following branch refused");
    Ok(())
}

/// What a failed create of a following root means for the branch: the node's message
/// names the cause and what to do (it never holds the password).
pub(crate) fn create_failed(node: &str, e: ClientError) -> Step {
    let code = e.code().unwrap_or_default().to_string();
    match e.status().map(|s| s.as_u16()) {
        // The source answered and refused (password, REPLICATION attribute, pg_hba,
        // version, settings): the user fixes the source or the Secret. Retried every 30 s.
        Some(422) | Some(400) => Step::Problem(Problem {
            reason: if code == "source_refused" {
                "SourceRefused"
            } else {
                "InvalidSource"
            },
            message: e.to_string(),
        }),
        // Not reachable (yet): retried.
        Some(502) => wait("SourceUnreachable", e.to_string(), Duration::from_secs(15)),
        // The copy is still running (a create asked again after the first timed out).
        Some(409) => wait("CopyingSource", e.to_string(), Duration::from_secs(10)),
        _ => Step::Fail(storage_err(node)(e)),
    }
}

/// The refusal of what would rewrite a following branch's history (`what`: "reset",
/// "restored", "checkpointed").
pub fn refusal(b: &DatabaseBranch, what: &str) -> String {
    let source = b
        .status
        .as_ref()
        .and_then(|s| s.following.as_ref())
        .map(|f| f.source.clone())
        .unwrap_or_else(|| "an external Postgres".into());
    format!(
        "branch {}/{} follows {source}: its history is its source's, so it cannot be {what}; fork it (a DatabaseBranch with spec.parent naming it, and spec.at for a point of its history) and work on the fork",
        b.namespace().unwrap_or_default(),
        b.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramify_api::{FollowStatus, Lsn};

    fn info(status: Option<FollowStatus>) -> FollowInfo {
        FollowInfo {
            conninfo: "postgresql://replicator@prod-db.prod.svc:5432/bank".into(),
            slot: Some("ramify".into()),
            passfile: "source.pass".into(),
            mode: Default::default(),
            publication: None,
            status,
            warm_standby: None,
        }
    }

    fn streaming(lag: f64) -> FollowStatus {
        FollowStatus {
            streaming: true,
            received_lsn: Some(Lsn(0x300_0000)),
            replayed_lsn: Some(Lsn(0x2FF_FF00)),
            source_lsn: Some(Lsn(0x300_0000)),
            lag_bytes: Some(256),
            lag_seconds: Some(lag),
            last_received_at: Some(Utc::now()),
            problem: None,
        }
    }

    #[test]
    fn figures_refresh_at_most_every_ten_seconds() {
        let t0 = Utc::now();
        let first = following_status(None, &info(Some(streaming(0.123))), t0);
        assert_eq!(first.lag_seconds, Some(0.1));
        assert_eq!(first.lag_bytes, Some(256));
        assert_eq!(first.replayed_lsn.as_deref(), Some("0/2FFFF00"));
        assert_eq!(first.streaming, Some(true));
        assert_eq!(first.checked_at, Some(t0));
        // A reconcile caused by the status write itself: nothing changes.
        let again = following_status(
            Some(&first),
            &info(Some(streaming(2.0))),
            t0 + chrono::Duration::seconds(1),
        );
        assert_eq!(again, first);
        // Later: the new figures.
        let later = following_status(
            Some(&first),
            &info(Some(streaming(2.0))),
            t0 + chrono::Duration::seconds(15),
        );
        assert_eq!(later.lag_seconds, Some(2.0));
        // Streaming stopping is shown at once.
        let stopped = FollowStatus {
            streaming: false,
            problem: Some("the source refused the password".into()),
            ..streaming(0.0)
        };
        let now = following_status(
            Some(&first),
            &info(Some(stopped)),
            t0 + chrono::Duration::seconds(1),
        );
        assert_eq!(now.streaming, Some(false));
    }

    #[test]
    fn the_condition_says_why_it_is_not_streaming() {
        let (ok, reason, msg) = condition(&info(Some(streaming(0.0))));
        assert!(ok);
        assert_eq!(reason, "Streaming");
        assert_eq!(
            msg,
            "streaming from postgresql://replicator@prod-db.prod.svc:5432/bank (slot ramify)"
        );
        let (ok, reason, msg) = condition(&info(Some(FollowStatus {
            streaming: false,
            problem: Some(
                "replication slot \"ramify\" does not exist on the source: it was dropped on the source; …"
                    .into(),
            ),
            ..streaming(0.0)
        })));
        assert!(!ok);
        assert_eq!(reason, "NotStreaming");
        assert!(msg.contains("dropped on the source"), "{msg}");
        let (ok, reason, _) = condition(&info(None));
        assert!(!ok);
        assert_eq!(reason, "ComputeNotRunning");
    }
}
