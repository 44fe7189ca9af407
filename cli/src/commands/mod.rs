//! One module per command group; each prints its own results.

pub mod backup;
pub mod branch;
pub mod checkpoint;
pub mod completion;
pub mod demo;
pub mod diff;
pub mod local;
pub mod psql;
pub mod run;
pub mod snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use ramify_local::DaemonClient;
use serde::Serialize;

use crate::args::{Cli, Command, KubeArgs, LocalCommand, OutputFormat};
use crate::backend::{self, Backend, BackendKind, Shown};
use crate::render;

/// What every command knows: where local mode lives and how to print.
#[derive(Debug, Clone)]
pub struct Context {
    pub data_dir: PathBuf,
    pub output: OutputFormat,
}

impl Context {
    /// The running daemon's client, or the "not running: start it with …" error.
    pub fn client(&self) -> anyhow::Result<DaemonClient> {
        Ok(DaemonClient::for_data_dir(&self.data_dir)?)
    }

    /// Prints `value` as JSON/YAML, or `table()` for the table format.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = match render::structured(self.output, value)? {
            Some(s) => s,
            None => table(),
        };
        print!("{text}");
        Ok(())
    }

    /// Prints what a backend answered, in the chosen format.
    pub fn show(&self, shown: Shown) -> anyhow::Result<()> {
        print!("{}", shown.render(self.output)?);
        Ok(())
    }
}

/// Runs the parsed command line; `plugin` when started as `kubectl-ramify`.
pub fn run(cli: Cli, plugin: bool) -> anyhow::Result<ExitCode> {
    if let Command::Completion { shell } = cli.command {
        completion::print(shell, plugin);
        return Ok(ExitCode::SUCCESS);
    }
    let kind = backend::select(plugin, &cli.kube).map_err(|e| anyhow!(e))?;
    if kind == BackendKind::Kubernetes {
        if let Some(what) = local_only(&cli.command) {
            bail!(
                "`{what}` is local-mode only: run it as `ramify` without --kube, --context or --kubeconfig (on a cluster, `{} status` shows Ramify's state)",
                if plugin { "kubectl ramify" } else { "ramify --kube" }
            );
        }
    }
    let data_dir = match kind {
        BackendKind::Local => crate::data_dir::resolve(cli.data_dir)?,
        // Not used on a cluster (and $HOME may be unset where kubectl runs plugins).
        BackendKind::Kubernetes => cli.data_dir.unwrap_or_default(),
    };
    let ctx = Context {
        data_dir,
        output: cli.output,
    };
    // `local up` decides itself which runtime it needs, after dropping privileges.
    if let Command::Local(LocalCommand::Up(up)) = cli.command {
        local::up(&ctx, *up)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Demo { keep } = cli.command {
        demo::run(&ctx, keep)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let backend: Box<dyn Backend> = match kind {
            BackendKind::Local => Box::new(backend::local::Local {
                data_dir: ctx.data_dir.clone(),
            }),
            BackendKind::Kubernetes => Box::new(
                backend::kubernetes::Kube::connect(&cli.kube, &cluster_program(plugin, &cli.kube))
                    .await?,
            ),
        };
        let b = backend.as_ref();
        match cli.command {
            Command::Local(LocalCommand::Down) => local::down(&ctx).await,
            Command::Local(LocalCommand::Status) => local::status(&ctx).await,
            Command::Local(LocalCommand::Up(_))
            | Command::Completion { .. }
            | Command::Demo { .. } => {
                unreachable!("handled above")
            }
            Command::Status => ctx.show(b.status().await?),
            Command::Branch(cmd) => branch::run(&ctx, b, cmd).await,
            Command::Checkpoint(cmd) => checkpoint::run(&ctx, b, cmd).await,
            // The command's own status is ours.
            Command::Run(args) => return run::run(b, args).await,
            // Exit 1 means "differ" (--exit-code); errors exit 2 and are printed there.
            Command::Diff(args) => return Ok(diff::run(&ctx, b, args).await),
            Command::Snapshot(cmd) => snapshot::run(&ctx, cmd).await,
            Command::Backup(cmd) => backup::run(&ctx, cmd).await,
            Command::Psql { name, args } => return psql::run(b, &name, &args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    })
}

/// The verbs that only exist in local mode, as typed.
fn local_only(command: &Command) -> Option<&'static str> {
    match command {
        Command::Local(LocalCommand::Up(_)) => Some("local up"),
        Command::Local(LocalCommand::Down) => Some("local down"),
        Command::Local(LocalCommand::Status) => Some("local status"),
        Command::Demo { .. } => Some("demo"),
        Command::Snapshot(_) => Some("snapshot"),
        Command::Backup(_) => Some("backup"),
        _ => None,
    }
}

/// How hints name the CLI on a cluster, so that a copied command reaches the same one.
pub fn cluster_program(plugin: bool, k: &KubeArgs) -> String {
    if plugin {
        return "kubectl ramify".to_string();
    }
    let mut p = "ramify".to_string();
    if let Some(kc) = &k.kubeconfig {
        p.push_str(&format!(" --kubeconfig {}", kc.display()));
    }
    if let Some(c) = &k.context {
        p.push_str(&format!(" --context {c}"));
    }
    if k.kubeconfig.is_none() && k.context.is_none() {
        p.push_str(" --kube");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn local_only_verbs_refuse_a_cluster_in_one_line() {
        for args in [
            &["kubectl-ramify", "local", "up"][..],
            &["kubectl-ramify", "demo"],
            &["ramify", "--kube", "snapshot", "list", "main"],
        ] {
            let plugin = args[0] == "kubectl-ramify";
            let e = run(cli(args), plugin).unwrap_err().to_string();
            assert!(e.contains("is local-mode only"), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_namespace_in_local_mode_is_refused_before_anything_runs() {
        let e = run(cli(&["ramify", "branch", "list", "-n", "team-a"]), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kube"), "{e}");
    }

    #[test]
    fn hints_name_the_same_cluster() {
        let k = |ctx: Option<&str>| KubeArgs {
            context: ctx.map(Into::into),
            ..KubeArgs::default()
        };
        assert_eq!(cluster_program(true, &k(None)), "kubectl ramify");
        assert_eq!(cluster_program(false, &k(None)), "ramify --kube");
        assert_eq!(
            cluster_program(false, &k(Some("prod"))),
            "ramify --context prod"
        );
    }
}
