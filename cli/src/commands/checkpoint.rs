//! `ramify checkpoint create|list|delete`.

use super::Context;
use crate::args::CheckpointCommand;
use crate::backend::Backend;

pub async fn run(
    ctx: &Context,
    backend: &dyn Backend,
    cmd: CheckpointCommand,
) -> anyhow::Result<()> {
    let shown = match cmd {
        CheckpointCommand::Create {
            branch,
            name,
            timeout,
        } => {
            backend
                .create_checkpoint(&branch, name.as_deref(), timeout)
                .await?
        }
        CheckpointCommand::List { branch } => backend.list_checkpoints(&branch).await?,
        CheckpointCommand::Delete { branch, name } => {
            backend.delete_checkpoint(&branch, &name).await?
        }
    };
    ctx.show(shown)
}
