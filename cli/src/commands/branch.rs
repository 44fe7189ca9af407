//! `ramify branch …`: create, list, get, delete, connect, wake, suspend, reset, restore,
//! protect, unprotect, expire.

use chrono::{DateTime, Utc};
use ramify_lifecycle::{BranchView, CreateBranch, Expiry, RestoreBranch, UpdateBranch};
use serde::Serialize;

use super::Context;
use crate::args::{BranchCommand, CreateArgs, ExpireArgs, RestoreArgs};
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

/// The request `branch create` sends; a relative expiry counts from `now`.
pub fn create_request(args: CreateArgs, now: DateTime<Utc>) -> CreateBranch {
    CreateBranch {
        name: args.name,
        parent: args.parent,
        at: args.at,
        suspend_after_secs: args.suspend_after,
        expires_at: args
            .expires_at
            .or_else(|| args.expires_in.map(|s| now + seconds(s))),
        protected: args.protected,
    }
}

/// The request `branch restore` sends.
pub fn restore_request(args: &RestoreArgs) -> RestoreBranch {
    RestoreBranch {
        at: args.at.clone(),
        from: args.from.clone(),
        backup: !args.no_backup,
    }
}

/// The request `branch expire` sends; `--in` counts from `now`.
pub fn expire_request(args: &ExpireArgs, now: DateTime<Utc>) -> UpdateBranch {
    let expiry = match (args.in_, args.at) {
        (Some(s), _) => Expiry::At(now + seconds(s)),
        (None, Some(t)) => Expiry::At(t),
        (None, None) => Expiry::Never,
    };
    UpdateBranch {
        protected: None,
        expiry: Some(expiry),
    }
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

pub async fn run(ctx: &Context, cmd: BranchCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let now = chrono::Utc::now();
    match cmd {
        BranchCommand::Create(args) => {
            let b = client.create_branch(&create_request(args, now)).await?;
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
        BranchCommand::Reset { name } => {
            let o = client.reset(&name).await?;
            ctx.print(&o, || render::reset_done(&o))
        }
        BranchCommand::Restore(args) => {
            let o = client.restore(&args.name, &restore_request(&args)).await?;
            ctx.print(&o, || render::restore_done(&o))
        }
        BranchCommand::Protect { name } => {
            let before = client.get_branch(&name).await?;
            let b = client
                .update_branch(
                    &name,
                    &UpdateBranch {
                        protected: Some(true),
                        expiry: None,
                    },
                )
                .await?;
            ctx.print(&b, || render::protection_changed(&b, before.expires_at))
        }
        BranchCommand::Unprotect { name } => {
            let b = client
                .update_branch(
                    &name,
                    &UpdateBranch {
                        protected: Some(false),
                        expiry: None,
                    },
                )
                .await?;
            ctx.print(&b, || render::protection_changed(&b, None))
        }
        BranchCommand::Expire(args) => {
            let b = client
                .update_branch(&args.name, &expire_request(&args, now))
                .await?;
            ctx.print(&b, || render::expiry_changed(&b, now))
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
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let req = create_request(
            CreateArgs {
                name: "dev".into(),
                parent: Some("main".into()),
                at: Some(At::Latest.into()),
                suspend_after: Some(0),
                expires_in: Some(3),
                expires_at: None,
                protected: false,
            },
            now,
        );
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"name": "dev", "parent": "main", "at": "latest", "suspend_after_secs": 0, "expires_at": "2026-03-01T12:00:03Z"})
        );
        let root = create_request(
            CreateArgs {
                name: "main".into(),
                parent: None,
                at: None,
                suspend_after: None,
                expires_in: None,
                expires_at: None,
                protected: true,
            },
            now,
        );
        // Unset flags are left to the daemon's defaults.
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            serde_json::json!({"name": "main", "protected": true})
        );
    }

    #[test]
    fn restore_and_expire_requests() {
        let req = restore_request(&RestoreArgs {
            name: "dev".into(),
            at: Some(ramify_lifecycle::HistoryPoint::Checkpoint("step-3".into())),
            from: None,
            no_backup: true,
        });
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"at": {"checkpoint": "step-3"}, "backup": false})
        );
        let now = Utc::now();
        let never = expire_request(
            &ExpireArgs {
                name: "x".into(),
                in_: None,
                at: None,
                never: true,
            },
            now,
        );
        assert_eq!(never.expiry, Some(Expiry::Never));
        let soon = expire_request(
            &ExpireArgs {
                name: "x".into(),
                in_: Some(60),
                at: None,
                never: false,
            },
            now,
        );
        assert_eq!(
            soon.expiry,
            Some(Expiry::At(now + chrono::Duration::seconds(60)))
        );
    }
}
