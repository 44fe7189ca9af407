//! `ramify`: local mode, branches and snapshots from the command line.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod data_dir;
mod privileges;
mod render;
mod value_parsers;
mod xfs_image;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
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
