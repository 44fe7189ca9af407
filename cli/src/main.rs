//! `ramify`: local mode, branches and snapshots from the command line.
#![forbid(unsafe_code)]

mod args;
mod backend;
mod commands;
mod data_dir;
mod follow;
mod privileges;
mod render;
mod value_parsers;
mod xfs_image;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let plugin = backend::invoked_as_plugin(&argv0);
    let mut command = args::Cli::command();
    if plugin {
        // Help and usage errors name the command the way it was typed.
        command = command.bin_name("kubectl ramify");
    }
    let cli = match args::Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match commands::run(cli, plugin) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error as one line: the whole cause chain, joined.
pub fn error_line(e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}
