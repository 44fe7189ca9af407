//! `ramify snapshot create|list|delete`.

use serde::Serialize;

use super::Context;
use crate::args::SnapshotCommand;
use crate::render;

/// `-o json|yaml` answer of `snapshot delete`.
#[derive(Debug, Serialize)]
struct Deleted<'a> {
    branch: &'a str,
    deleted: &'a str,
}

pub async fn run(ctx: &Context, cmd: SnapshotCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match cmd {
        SnapshotCommand::Create { branch, name } => {
            let s = client.create_snapshot(&branch, &name).await?;
            ctx.print(&s, || render::created_snapshot(&branch, &s))
        }
        SnapshotCommand::List { branch } => {
            let list = client.list_snapshots(&branch).await?;
            ctx.print(&list, || render::snapshot_list(&list, chrono::Utc::now()))
        }
        SnapshotCommand::Delete { branch, name } => {
            client.delete_snapshot(&branch, &name).await?;
            let report = Deleted {
                branch: &branch,
                deleted: &name,
            };
            ctx.print(&report, || format!("deleted snapshot {name} of {branch}\n"))
        }
    }
}
