//! `rolloutctl`: declarative canary rollouts for KServe. See `rolloutctl --help`.

mod cli;
mod commands;
mod files;
mod render;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    commands::run(cli).into()
}
