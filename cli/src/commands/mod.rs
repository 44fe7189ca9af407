//! One module per command group; each prints its own results.

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

use anyhow::Context as _;
use ramify_local::DaemonClient;
use serde::Serialize;

use crate::args::{Cli, Command, LocalCommand, OutputFormat};
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
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completion { shell } = cli.command {
        completion::print(shell);
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Context {
        data_dir: crate::data_dir::resolve(cli.data_dir)?,
        output: cli.output,
    };
    // `local up` decides itself which runtime it needs, after dropping privileges.
    if let Command::Local(LocalCommand::Up(up)) = cli.command {
        local::up(&ctx, up)?;
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
        match cli.command {
            Command::Local(LocalCommand::Down) => local::down(&ctx).await,
            Command::Local(LocalCommand::Status) => local::status(&ctx).await,
            Command::Local(LocalCommand::Up(_))
            | Command::Completion { .. }
            | Command::Demo { .. } => {
                unreachable!("handled above")
            }
            Command::Branch(cmd) => branch::run(&ctx, cmd).await,
            Command::Checkpoint(cmd) => checkpoint::run(&ctx, cmd).await,
            // The command's own status is ours.
            Command::Run(args) => return run::run(&ctx, args).await,
            // Exit 1 means "differ" (--exit-code); errors exit 2 and are printed there.
            Command::Diff(args) => return Ok(diff::run(&ctx, args).await),
            Command::Snapshot(cmd) => snapshot::run(&ctx, cmd).await,
            Command::Psql { name, args } => psql::run(&ctx, &name, &args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    })
}
