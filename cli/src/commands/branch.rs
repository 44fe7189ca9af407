//! `ramify branch …`: create, list, get, delete, connect, wake, suspend, reset, restore,
//! protect, unprotect, expire.

use chrono::{DateTime, Utc};
use ramify_api::FollowSource;
use ramify_lifecycle::{CreateBranch, Expiry, RestoreBranch, UpdateBranch};
use serde::Serialize;

use anyhow::Context as _;

use super::Context;
use crate::args::{BranchCommand, CreateArgs, ExpireArgs, RestoreArgs};
use crate::backend::Backend;
use crate::render;

/// `-o json|yaml` answer of `branch connect`.
#[derive(Debug, Serialize)]
struct Connection<'a> {
    name: &'a str,
    uri: &'a str,
}

/// The request `branch create` sends; a relative expiry counts from `now`.
pub fn create_request(args: CreateArgs, now: DateTime<Utc>) -> anyhow::Result<CreateBranch> {
    if let Some(n) = &args.storage_node {
        anyhow::bail!(
            "--storage-node {n} places a branch on one of a cluster's storage nodes (kubectl ramify); local mode has one"
        );
    }
    let follow = match &args.follow {
        Some(uri) => Some(FollowSource {
            mode: args.mode,
            publication: args.publication.clone(),
            ..crate::follow::source(uri, args.slot.clone(), args.password_file.as_deref())?
        }),
        None => None,
    };
    Ok(CreateBranch {
        name: args.name,
        parent: args.parent,
        at: args.at,
        suspend_after_secs: args.suspend_after,
        expires_at: args
            .expires_at
            .or_else(|| args.expires_in.map(|s| now + seconds(s))),
        protected: args.protected,
        follow,
        backup: args.backup.then_some(true),
    })
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

pub async fn run(ctx: &Context, backend: &dyn Backend, cmd: BranchCommand) -> anyhow::Result<()> {
    match cmd {
        BranchCommand::Create(args) => ctx.show(backend.create_branch(args).await?),
        BranchCommand::List => {
            let list = backend.list_branches().await?;
            let text = if ctx.output == crate::args::OutputFormat::Wide {
                render::branch_list_wide(&list.rows, chrono::Utc::now(), &list.empty)
            } else {
                render::branch_list(&list.rows, chrono::Utc::now(), &list.empty)
            };
            ctx.show(list.shown.with_text(text))
        }
        BranchCommand::Get { name } => ctx.show(backend.get_branch(&name).await?),
        BranchCommand::Delete { name, force, wait } => {
            ctx.show(backend.delete_branch(&name, force, wait).await?)
        }
        BranchCommand::Connect {
            name,
            port_forward,
            local_port,
        } => {
            if port_forward {
                return connect_forwarded(ctx, backend, &name, local_port).await;
            }
            let c = backend.connection(&name).await?;
            let conn = Connection {
                name: &c.name,
                uri: &c.uri,
            };
            ctx.print(&conn, || format!("{}\n", c.uri))
        }
        BranchCommand::Wake { name, timeout } => ctx.show(backend.wake(&name, timeout).await?),
        BranchCommand::Suspend { name, timeout } => {
            ctx.show(backend.suspend(&name, timeout).await?)
        }
        BranchCommand::Reset { name, timeout } => ctx.show(backend.reset(&name, timeout).await?),
        BranchCommand::Restore(args) => ctx.show(backend.restore(&args).await?),
        BranchCommand::Protect { name } => ctx.show(backend.protect(&name, true).await?),
        BranchCommand::Unprotect { name } => ctx.show(backend.protect(&name, false).await?),
        BranchCommand::Expire(args) => ctx.show(backend.expire(&args).await?),
        BranchCommand::Move(args) => ctx.show(backend.move_branch(&args).await?),
    }
}

/// `branch connect --port-forward`: the URI on stdout, then forwarding until Ctrl-C (local
/// mode's URI is on this machine already: printed, nothing to forward).
async fn connect_forwarded(
    ctx: &Context,
    backend: &dyn Backend,
    name: &str,
    local_port: u16,
) -> anyhow::Result<()> {
    let reach = backend.reach(name, local_port).await?;
    let conn = Connection {
        name: &reach.conn.name,
        uri: &reach.conn.uri,
    };
    ctx.print(&conn, || format!("{}\n", reach.conn.uri))?;
    let Some(forward) = &reach.forward else {
        return Ok(());
    };
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    eprintln!(
        "forwarding {} to branch {name} through proxy Pod {} (via the API server); Ctrl-C stops",
        forward.local, forward.pod
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("stopped forwarding");
    Ok(())
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
                backup: true,
                storage_node: None,
                follow: None,
                slot: None,
                mode: Default::default(),
                publication: None,
                password_file: None,
                wait: crate::args::WaitArgs {
                    wait: false,
                    timeout: 300,
                },
            },
            now,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"name": "dev", "parent": "main", "at": "latest", "suspend_after_secs": 0, "expires_at": "2026-03-01T12:00:03Z", "backup": true})
        );
        use clap::Parser as _;
        let placed = crate::args::Cli::try_parse_from([
            "ramify",
            "branch",
            "create",
            "dev",
            "--storage-node",
            "ramify-storage-1",
        ])
        .unwrap();
        let crate::args::Command::Branch(BranchCommand::Create(args)) = placed.command else {
            panic!("not a create")
        };
        let err = create_request(args, now).unwrap_err().to_string();
        assert!(err.contains("local mode has one"), "{err}");
        let root = create_request(
            CreateArgs {
                name: "main".into(),
                parent: None,
                at: None,
                suspend_after: None,
                expires_in: None,
                expires_at: None,
                protected: true,
                backup: false,
                storage_node: None,
                follow: Some("postgresql://rep:pw@db/postgres".into()),
                slot: Some("s1".into()),
                mode: Default::default(),
                publication: None,
                password_file: None,
                wait: crate::args::WaitArgs {
                    wait: false,
                    timeout: 300,
                },
            },
            now,
        )
        .unwrap();
        // Unset flags are left to the daemon's defaults.
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            serde_json::json!({"name": "main", "protected": true,
                "follow": {"conninfo": "postgresql://rep@db/postgres", "password": "pw", "slot": "s1"}})
        );
    }

    #[test]
    fn restore_and_expire_requests() {
        let req = restore_request(&RestoreArgs {
            name: "dev".into(),
            at: Some(ramify_lifecycle::HistoryPoint::Checkpoint("step-3".into())),
            from: None,
            no_backup: true,
            timeout: 300,
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
