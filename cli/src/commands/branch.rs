//! `ramify branch …`: create, list, get, delete, connect, wake, suspend.

use ramify_lifecycle::{BranchView, CreateBranch};
use serde::Serialize;

use super::Context;
use crate::args::{BranchCommand, CreateArgs};
use crate::render;

/// `-o json|yaml` answer of `branch delete`.
#[derive(Debug, Serialize)]
struct Deleted<'a> {
    deleted: &'a str,
    force: bool,
}

/// `-o json|yaml` answer of `branch connect`.
#[derive(Debug, Serialize)]
struct Connection<'a> {
    name: &'a str,
    uri: &'a str,
}

/// The request `branch create` sends.
pub fn create_request(args: CreateArgs) -> CreateBranch {
    CreateBranch {
        name: args.name,
        parent: args.parent,
        at: args.at,
        suspend_after_secs: args.suspend_after,
    }
}

pub async fn run(ctx: &Context, cmd: BranchCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let now = chrono::Utc::now();
    match cmd {
        BranchCommand::Create(args) => {
            let b = client.create_branch(&create_request(args)).await?;
            ctx.print(&b, || render::created_branch(&b))
        }
        BranchCommand::List => {
            let list = client.list_branches().await?;
            ctx.print(&list, || render::branch_list(&list, now))
        }
        BranchCommand::Get { name } => {
            let b = client.get_branch(&name).await?;
            ctx.print(&b, || render::branch_details(&b, now))
        }
        BranchCommand::Delete { name, force } => {
            client.delete_branch(&name, force).await?;
            let report = Deleted {
                deleted: &name,
                force,
            };
            ctx.print(&report, || format!("deleted branch {name}\n"))
        }
        BranchCommand::Connect { name } => {
            let b = client.get_branch(&name).await?;
            let conn = Connection {
                name: &b.name,
                uri: &b.uri,
            };
            ctx.print(&conn, || format!("{}\n", b.uri))
        }
        BranchCommand::Wake { name } => {
            let b = client.wake(&name).await?;
            ctx.print(&b, || state_line(&b))
        }
        BranchCommand::Suspend { name } => {
            let b = client.suspend(&name).await?;
            ctx.print(&b, || state_line(&b))
        }
    }
}

fn state_line(b: &BranchView) -> String {
    match b.compute {
        ramify_lifecycle::ComputeStatus::Running => {
            format!("branch {} is running on port {}\n", b.name, b.port)
        }
        ramify_lifecycle::ComputeStatus::Suspended => format!(
            "branch {} is suspended; connecting to port {} wakes it\n",
            b.name, b.port
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramify_api::At;

    #[test]
    fn create_request_carries_every_flag() {
        let req = create_request(CreateArgs {
            name: "dev".into(),
            parent: Some("main".into()),
            at: Some(At::Latest),
            suspend_after: Some(0),
        });
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"name": "dev", "parent": "main", "at": "latest", "suspend_after_secs": 0})
        );
        let root = create_request(CreateArgs {
            name: "main".into(),
            parent: None,
            at: None,
            suspend_after: None,
        });
        // Unset flags are left to the daemon's defaults.
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            serde_json::json!({"name": "main"})
        );
    }
}
