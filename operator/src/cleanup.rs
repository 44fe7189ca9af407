//! The finalizer's side of a branch: deleting it with its compute, its storage timeline
//! and its connection objects — after its children, and never while it is protected.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use ramify_api::TimelineId;
use ramify_crd::{DatabaseBranch, Phase, Timeline};
use tracing::{info, warn};

use crate::branch::{publish, storage_err, storage_nodes, write_status, Error};
use crate::build;
use crate::compute;
use crate::conditions::{self, READY};
use crate::context::Context;
use crate::ownership;
use crate::sharing;

pub async fn cleanup(b: &DatabaseBranch, ctx: &Context) -> Result<Action, Error> {
    let name = b.name_any();
    let ns = b.namespace().unwrap_or_default();
    if b.is_protected() {
        // The chart's ValidatingAdmissionPolicy refuses this deletion; a server without
        // it (Kubernetes < 1.30, or the policy turned off) lets it through, and the
        // finalizer holds it until the flag is cleared.
        let old = b.status.clone().unwrap_or_default();
        let mut status = old.clone();
        status.phase = Some(Phase::Deleting);
        let message = format!(
            "not deleted: spec.protected is true; set it to false to let the deletion finish (kubectl patch databasebranch {name} -n {ns} --type merge -p '{{\"spec\":{{\"protected\":false}}}}')"
        );
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "Protected",
            &message,
            b.metadata.generation,
        );
        write_status(b, ctx, &old, &status).await?;
        return Err(Error::Protected(message));
    }
    let claimed: Vec<Arc<DatabaseBranch>> = ctx
        .branches
        .state()
        .into_iter()
        .filter(|c| {
            c.spec.parent.as_ref().is_some_and(|p| p.name == name)
                && c.parent_namespace().as_deref() == Some(ns.as_str())
        })
        .collect();
    // Only children the parent shares with count: a branch in a namespace it does not
    // share with never got its data, and must neither hold nor be deleted with it.
    let mut children = Vec::new();
    let mut foreign = Vec::new();
    for c in claimed {
        let cns = c.namespace().unwrap_or_default();
        if sharing::shares_with(&ctx.client, b, &cns).await? {
            children.push(c);
        } else {
            foreign.push(format!("{cns}/{}", c.name_any()));
        }
    }
    if !foreign.is_empty() {
        info!(
            children = %foreign.join(", "),
            "left alone: they name this branch as parent from namespaces it does not share with"
        );
    }
    if !children.is_empty() {
        let list: Vec<String> = children
            .iter()
            .map(|c| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()))
            .collect();
        if b.deletes_children() {
            for c in &children {
                let api: Api<DatabaseBranch> =
                    Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
                delete_if_exists(&api, &c.name_any()).await?;
            }
            let left = if foreign.is_empty() {
                String::new()
            } else {
                format!(
                    " (left alone, in namespaces this branch does not share with: {})",
                    foreign.join(", ")
                )
            };
            return Err(Error::HasChildren(format!(
                "deleting child branches first: {}{left}",
                list.join(", ")
            )));
        }
        let old = b.status.clone().unwrap_or_default();
        let mut status = old.clone();
        status.phase = Some(Phase::Deleting);
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "HasChildren",
            format!(
                "not deleted while child branches exist ({}); delete them first, or annotate this branch {}=true to delete them with it",
                list.join(", "),
                ramify_crd::DELETE_CHILDREN_ANNOTATION
            ),
            b.metadata.generation,
        );
        write_status(b, ctx, &old, &status).await?;
        return Err(Error::HasChildren(list.join(", ")));
    }

    let timeline = b.status.as_ref().and_then(|s| s.timeline.clone());
    let uid = b.uid().unwrap_or_default();
    let timeline_id = timeline
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_else(|| uid.clone());
    compute::suspend(ctx, &timeline_id, Duration::from_secs(90)).await?;
    // The timeline's node; when the status never recorded it, every node is asked (the
    // id is the uid, so a create that succeeded unrecorded is still found).
    let mut nodes = match &timeline {
        Some(t) => vec![t.storage_node.clone()],
        None => storage_nodes(ctx).await.unwrap_or_default(),
    };
    // A move under way holds a copy on a second node too.
    if let Some(m) = b.status.as_ref().and_then(|s| s.moving.as_ref()) {
        for n in [&m.from, &m.to] {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
    }
    if let Ok(id) = timeline_id.parse::<TimelineId>() {
        for node in nodes {
            match ctx.storage(&node).delete_timeline(id, false).await {
                Ok(()) => info!(timeline = %id, node = %node, "timeline deleted"),
                Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
                // The node cannot delete it (gone, or failing): only an admin's annotation
                // lets the deletion go on without it; a node that answers deletes it.
                Err(e) if b.forgets_storage() && e.status().is_none_or(|s| s.is_server_error()) => {
                    let message = format!(
                        "timeline {id} left behind on storage node {node}, which cannot delete \
                         it ({e}): {}=true; reclaim it on that node's volume if the node comes back",
                        ramify_crd::FORGET_STORAGE_ANNOTATION
                    );
                    warn!(timeline = %id, node = %node, "{message}");
                    publish(ctx, b, EventType::Warning, "StorageForgotten", message).await;
                }
                Err(e) => {
                    let old = b.status.clone().unwrap_or_default();
                    let mut status = old.clone();
                    status.phase = Some(Phase::Deleting);
                    conditions::set(
                        &mut status.conditions,
                        READY,
                        false,
                        "StorageUnreachable",
                        format!(
                            "cannot delete timeline {id} on storage node {node}: {e}; the deletion \
                             retries. If that node is gone for good, let it go: kubectl annotate \
                             databasebranch {name} -n {ns} {}=true",
                            ramify_crd::FORGET_STORAGE_ANNOTATION
                        ),
                        b.metadata.generation,
                    );
                    write_status(b, ctx, &old, &status).await?;
                    return Err(storage_err(&node)(e));
                }
            }
        }
    }
    let client = &ctx.client;
    let storage_ns = &ctx.config.namespace;
    let tl_name = build::timeline_name(&timeline_id);
    let conn = build::connection_name(&name);
    delete_if_exists(
        &Api::<Timeline>::namespaced(client.clone(), storage_ns),
        &tl_name,
    )
    .await?;
    let slice = build::endpoint_slice_name(&name);
    // Only what this branch owns: a Secret or Service of the same name that someone else
    // made (the branch then never became Ready, with reason Conflict) is left alone.
    let mut left = Vec::new();
    if ownership::delete_owned(
        &Api::<EndpointSlice>::namespaced(client.clone(), &ns),
        &slice,
        &uid,
    )
    .await?
    {
        left.push(format!("EndpointSlice {ns}/{slice}"));
    }
    if ownership::delete_owned(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &conn,
        &uid,
    )
    .await?
    {
        left.push(format!("Service {ns}/{conn}"));
    }
    if ownership::delete_owned(&Api::<Secret>::namespaced(client.clone(), &ns), &conn, &uid).await?
    {
        left.push(format!("Secret {ns}/{conn}"));
    }
    if !left.is_empty() {
        info!(objects = %left.join(", "), "left alone: not created for this branch");
    }
    // The one object a physical follower made on its source: Ramify does not touch the
    // source again, and a slot nobody reads keeps WAL there until its disk fills. (The
    // storage node drops a logical follower's slot itself when it deletes the timeline.)
    let slot = b
        .external_source()
        .filter(|e| e.mode.unwrap_or_default() == ramify_crd::ReplicationMode::Physical)
        .and_then(|e| e.slot.clone())
        .map(|s| {
            format!(
                "; replication slot {s} is left on the source: drop it there (SELECT pg_drop_replication_slot('{s}')) or it keeps WAL for a follower that is gone"
            )
        })
        .unwrap_or_default();
    publish(
        ctx,
        b,
        if slot.is_empty() {
            EventType::Normal
        } else {
            EventType::Warning
        },
        "Deleted",
        format!("compute, timeline {timeline_id} and connection objects deleted{slot}"),
    )
    .await;
    info!("branch deleted");
    Ok(Action::await_change())
}

/// Deletes an object; one already gone is fine.
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
