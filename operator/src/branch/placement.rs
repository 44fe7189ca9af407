//! `spec.storageNode`: a root placed on a chosen storage node, and a fork placed on
//! another node than its parent's — a copy of the parent made by that node from the
//! backup repository (`from_backup`), since a copy-on-write clone cannot cross volumes.
//! (Moving an existing branch is in `moving.rs`.)

use ramify_api::FromBackup;

use super::*;

/// `n` if it is one of the storage StatefulSet's Pods; otherwise the branch waits (the
/// StatefulSet may be scaled up) with a condition naming the nodes there are.
pub(super) async fn known_node(ctx: &Context, n: &str) -> Result<String, Step> {
    let nodes = timeline::storage_nodes(ctx).await?;
    if nodes.iter().any(|x| x == n) {
        return Ok(n.to_string());
    }
    Err(wait(
        "UnknownStorageNode",
        format!(
            "spec.storageNode {n:?} is not a storage node of this installation ({}); waiting for it (the storage StatefulSet scaled up)",
            nodes.join(", ")
        ),
        Duration::from_secs(30),
    ))
}

/// Where the node `to` copies the parent's timeline `parent` (on `from`) from: the
/// parent's node's prefix, in the bucket both nodes use. The parent must be durable.
pub(super) async fn copy_source(
    ctx: &Context,
    spec: &ValidSpec,
    from: &str,
    parent: TimelineId,
    to: &str,
) -> Result<FromBackup, Step> {
    if spec
        .at
        .as_ref()
        .is_some_and(|a| *a != ramify_api::At::Latest)
    {
        return Err(problem("InvalidSpec", format!(
                "spec.at cannot be set for a fork on storage node {to}: its parent lives on {from}, so it is copied through the backup repository and starts at the parent's last archived WAL"
            )));
    }
    let info = ctx
        .storage(from)
        .get_timeline_without_sizes(parent)
        .await
        .map_err(storage_err(from))?;
    if info.backup.is_none() {
        return Err(problem("ParentNotDurable", format!(
                "a fork on storage node {to} is copied from its parent's backups, but the parent (on {from}) is not kept in the backup repository: create the fork on {from}, or fork a durable branch (a root, or one with spec.backup.enabled)"
            )));
    }
    Ok(FromBackup {
        prefix: shared_prefix(ctx, from, to).await?,
        timeline: parent,
        through: None,
    })
}

/// The prefix in the backup repository of node `from`, from which node `to` can copy:
/// both must keep their backups in the same bucket.
pub(super) async fn shared_prefix(ctx: &Context, from: &str, to: &str) -> Result<String, Step> {
    let src = ctx
        .storage(from)
        .status()
        .await
        .map_err(storage_err(from))?;
    let dst = ctx.storage(to).status().await.map_err(storage_err(to))?;
    let missing = if dst.backup.is_none() { to } else { from };
    match (src.backup, dst.backup) {
        (Some(s), Some(d)) if s.bucket == d.bucket && s.endpoint == d.endpoint => Ok(s.prefix),
        (Some(s), Some(d)) => Err(problem("InvalidSpec", format!(
                "storage nodes {from} and {to} keep their backups in different buckets ({} at {}, {} at {}): a copy across them needs one repository",
                s.bucket, s.endpoint, d.bucket, d.endpoint
            ))),
        _ => Err(problem("NoRepository", format!(
                "a branch is copied to another storage node through the backup repository, and {} has none (the chart's storage.backup)",
                missing
            ))),
    }
}

/// What a failed copy means for the branch.
pub(super) fn copy_failed(node: &str, e: ClientError) -> Step {
    match e.status().map(|s| s.as_u16()) {
        // Not in the repository yet (a durable parent's record is written within
        // seconds), or none of a fork's own WAL archived yet: retried.
        Some(404) | Some(409) => wait("ParentNotArchived", e.to_string(), Duration::from_secs(10)),
        Some(400) | Some(422) => Step::Problem(Problem {
            reason: "InvalidSpec",
            message: e.to_string(),
        }),
        _ => Step::Fail(storage_err(node)(e)),
    }
}

/// A refusal the user mends in the spec (or the chart), shown as the Ready condition.
fn problem(reason: &'static str, message: String) -> Step {
    Step::Problem(Problem { reason, message })
}
