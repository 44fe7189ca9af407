//! Where a branch's storage timeline comes from: taken over from a restore (adopted),
//! or created on a storage node the operator chooses — a root, a fork of the parent it
//! dereferences across namespaces, or a follower of an external Postgres.

use super::*;

/// Annotation of a branch created to take over an existing timeline (a restore's backup
/// branch): the timeline id. It is adopted only once the operator handed that timeline's
/// `Timeline` object over to this branch's uid, so the annotation alone grants nothing.
pub const ADOPT_TIMELINE_ANNOTATION: &str = "ramify.dev/adopt-timeline";
/// With [`ADOPT_TIMELINE_ANNOTATION`]: the branch's Secret was written with the password
/// its role already has on that timeline, so no compute must start to set it.
pub const ADOPT_CREDENTIALS_ANNOTATION: &str = "ramify.dev/adopt-credentials";

/// Takes over timeline `id` (see [`ADOPT_TIMELINE_ANNOTATION`]).
pub(super) async fn adopt_timeline(
    b: &DatabaseBranch,
    ctx: &Context,
    id: &str,
    status: &mut DatabaseBranchStatus,
) -> Result<(TimelineRef, TimelineInfo), Step> {
    let tl_name = build::timeline_name(id);
    let tl = Api::<Timeline>::namespaced(ctx.client.clone(), &ctx.config.namespace)
        .get_opt(&tl_name)
        .await
        .map_err(Error::from)?;
    let handed_over = tl
        .as_ref()
        .is_some_and(|t| Some(&t.spec.branch.uid) == b.metadata.uid.as_ref());
    let Some(tl) = tl.filter(|_| handed_over) else {
        return Err(wait(
            "TimelineHandover",
            format!("waiting for timeline {id} to be handed over to this branch"),
            Duration::from_secs(2),
        ));
    };
    let tid: TimelineId = id.parse().map_err(|_| {
        Step::Problem(Problem {
            reason: "InvalidSpec",
            message: format!("annotation {ADOPT_TIMELINE_ANNOTATION} {id:?} is not a UUID"),
        })
    })?;
    let node = tl.spec.storage_node.clone();
    let info = ctx
        .storage(&node)
        .get_timeline(tid)
        .await
        .map_err(storage_err(&node))?;
    if b.annotations()
        .get(ADOPT_CREDENTIALS_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        status.credentials_timeline = Some(id.to_string());
    }
    info!(timeline = %id, node = %node, "timeline adopted");
    Ok((
        TimelineRef {
            id: id.to_string(),
            name: tl_name,
            storage_node: node,
        },
        info,
    ))
}

/// Creates (or finds: the id is the branch's uid) the branch's storage timeline.
pub(super) async fn create_timeline(
    b: &DatabaseBranch,
    ctx: &Context,
    spec: &ValidSpec,
    uid: &str,
) -> Result<(TimelineRef, TimelineInfo), Step> {
    let id: TimelineId = uid.parse().map_err(|_| {
        Step::Problem(Problem {
            reason: "InvalidSpec",
            message: format!("metadata.uid {uid:?} is not a UUID"),
        })
    })?;
    let follow = if spec.following {
        match crate::source::read(&ctx.client, b, &ctx.config.follow_allowed_hosts)
            .await
            .map_err(Error::from)?
        {
            Ok(f) => Some(f),
            Err(SourceProblem::Missing(m)) => {
                return Err(wait("SourceSecretNotFound", m, Duration::from_secs(10)))
            }
            Err(SourceProblem::Invalid(m)) => {
                return Err(Step::Problem(Problem {
                    reason: "InvalidSource",
                    message: m,
                }))
            }
            Err(SourceProblem::NotAllowed(m)) => {
                return Err(Step::Problem(Problem {
                    reason: "SourceNotAllowed",
                    message: m,
                }))
            }
        }
    } else {
        None
    };
    let wanted = match &b.spec.storage_node {
        Some(n) => Some(placement::known_node(ctx, n).await?),
        None => None,
    };
    let (node, parent) = match &b.spec.parent {
        None => match wanted.clone() {
            Some(n) => (n, None),
            None => (choose_node(ctx).await?, None),
        },
        Some(p) => {
            let (parent_ns, parent) = dereference_parent(b, ctx, &p.name).await?;
            let ptl = parent
                .status
                .as_ref()
                .and_then(|s| Some((s.timeline.clone()?, s.credentials_timeline.clone()?)))
                .filter(|(t, c)| &t.id == c)
                .map(|(t, _)| t)
                .ok_or_else(|| {
                    wait(
                        "ParentNotReady",
                        format!(
                            "waiting for parent branch {parent_ns}/{} to be ready",
                            p.name
                        ),
                        Duration::from_secs(3),
                    )
                })?;
            let pid: TimelineId = ptl.id.parse().map_err(|_| {
                wait(
                    "ParentNotReady",
                    "parent has no valid timeline yet",
                    Duration::from_secs(3),
                )
            })?;
            (ptl.storage_node, Some(pid))
        }
    };
    // A fork placed on another node than its parent's: a copy through the repository.
    let (node, parent, from_backup) = match (wanted, parent) {
        (Some(n), Some(pid)) if n != node => {
            let from = placement::copy_source(ctx, spec, &node, pid, &n).await?;
            (n, None, Some(from))
        }
        (_, parent) => (node, parent, None),
    };
    let copied = from_backup.is_some();
    let req = CreateTimeline {
        id: Some(id),
        parent,
        // A copy starts where its parent's archive ends: no point to choose.
        at: if copied { None } else { spec.at.clone() },
        follow,
        // A copy is a root on its node; like any fork it is durable only when asked.
        backup: if copied {
            spec.backup.or(Some(false))
        } else {
            spec.backup
        },
        from_backup,
    };
    if req.follow.is_some() {
        info!(timeline = %id, node = %node, "copying the source (pg_basebackup) for a following branch");
    }
    match ctx.storage(&node).create_timeline(&req).await {
        Ok(created) => {
            if created.created {
                info!(timeline = %id, node = %node, "timeline created");
                publish(
                    ctx,
                    b,
                    EventType::Normal,
                    "TimelineCreated",
                    format!(
                        "timeline {id} on storage node {node}{}",
                        match (&req.from_backup, created.value.fork_lsn) {
                            (Some(f), _) => format!(
                                ", a copy of its parent's timeline {} as of its last archived WAL (through the backup repository)",
                                f.timeline
                            ),
                            (None, Some(l)) => format!(", forked at {l}"),
                            (None, None) => String::new(),
                        }
                    ),
                )
                .await;
            }
            Ok((
                TimelineRef {
                    id: id.to_string(),
                    name: build::timeline_name(&id.to_string()),
                    storage_node: node,
                },
                created.value,
            ))
        }
        Err(e) if req.follow.is_some() => Err(following::create_failed(&node, e)),
        Err(e) if copied => Err(placement::copy_failed(&node, e)),
        Err(e) => match e.status().map(|s| s.as_u16()) {
            Some(400) | Some(422) => Err(Step::Problem(Problem {
                reason: "InvalidForkPoint",
                message: e.to_string(),
            })),
            Some(409) => Err(wait(
                "ParentNotReady",
                e.to_string(),
                Duration::from_secs(3),
            )),
            // The node is short of space: retried (space may be freed), with the way out.
            Some(507) => Err(wait(
                "InsufficientStorage",
                format!(
                    "{e}{}",
                    if req.parent.is_some() {
                        "; a fork can live on another storage node: spec.storageNode (copied there through the backup repository; its parent must be kept)"
                    } else {
                        ""
                    }
                ),
                Duration::from_secs(30),
            )),
            _ => Err(storage_err(&node)(e).into()),
        },
    }
}

/// The parent branch, if it exists and shares itself with the branch's namespace.
async fn dereference_parent(
    b: &DatabaseBranch,
    ctx: &Context,
    parent_name: &str,
) -> Result<(String, DatabaseBranch), Step> {
    let ns = b.namespace().unwrap_or_default();
    let parent_ns = b.parent_namespace().unwrap_or_else(|| ns.clone());
    let api: Api<DatabaseBranch> = Api::namespaced(ctx.client.clone(), &parent_ns);
    let Some(parent) = api.get_opt(parent_name).await.map_err(Error::from)? else {
        return Err(wait(
            "ParentNotFound",
            format!("parent branch {parent_ns}/{parent_name} does not exist"),
            Duration::from_secs(10),
        ));
    };
    if !sharing::shares_with(&ctx.client, &parent, &ns)
        .await
        .map_err(Error::from)?
    {
        return Err(Step::Problem(Problem {
            reason: "ParentNotShared",
            message: sharing::not_shared(&parent_ns, parent_name, &ns),
        }));
    }
    if parent.metadata.deletion_timestamp.is_some() {
        return Err(wait(
            "ParentNotFound",
            format!("parent branch {parent_ns}/{parent_name} is being deleted"),
            Duration::from_secs(10),
        ));
    }
    Ok((parent_ns, parent))
}

/// The storage nodes: the Pods of the storage StatefulSet.
pub(crate) async fn storage_nodes(ctx: &Context) -> Result<Vec<String>, Error> {
    let cfg = &ctx.config;
    let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), &cfg.namespace)
        .get_opt(&cfg.storage_service)
        .await?
        .ok_or_else(|| {
            Error::NoStorageNode(format!(
                "storage StatefulSet {}/{} does not exist",
                cfg.namespace, cfg.storage_service
            ))
        })?;
    let replicas = sts.spec.replicas.unwrap_or(1).max(0);
    Ok((0..replicas)
        .map(|i| format!("{}-{i}", cfg.storage_service))
        .collect())
}

/// The storage node with the most free space among those answering.
async fn choose_node(ctx: &Context) -> Result<String, Error> {
    let mut best: Option<(u64, String)> = None;
    let mut errors = Vec::new();
    for node in storage_nodes(ctx).await? {
        match ctx.storage(&node).status().await {
            Ok(s) => {
                let free = s.capacity_bytes.saturating_sub(s.used_bytes);
                if best.as_ref().is_none_or(|(f, _)| free > *f) {
                    best = Some((free, node));
                }
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        Error::NoStorageNode(format!(
            "no storage node answers ({})",
            if errors.is_empty() {
                "the StatefulSet has no replicas".to_string()
            } else {
                errors.join("; ")
            }
        ))
    })
}
