//! `ramify checkpoint create|list|delete`.

use serde::Serialize;

use super::Context;
use crate::args::CheckpointCommand;
use crate::render;

/// `-o json|yaml` answer of `checkpoint delete`.
#[derive(Debug, Serialize)]
struct Deleted<'a> {
    branch: &'a str,
    deleted: &'a str,
}

pub async fn run(ctx: &Context, cmd: CheckpointCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match cmd {
        CheckpointCommand::Create { branch, name } => {
            let c = client.create_checkpoint(&branch, name.as_deref()).await?;
            ctx.print(&c, || render::created_checkpoint(&branch, &c))
        }
        CheckpointCommand::List { branch } => {
            let list = client.list_checkpoints(&branch).await?;
            ctx.print(&list, || {
                render::checkpoint_list(&branch, &list, chrono::Utc::now())
            })
        }
        CheckpointCommand::Delete { branch, name } => {
            client.delete_checkpoint(&branch, &name).await?;
            let report = Deleted {
                branch: &branch,
                deleted: &name,
            };
            ctx.print(&report, || {
                format!("deleted checkpoint {name} of {branch}\n")
            })
        }
    }
}
