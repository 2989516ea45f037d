//! One module per subcommand; each returns an [`Exit`].

mod completions;
mod explain;
mod fmt;
mod lint;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Exit statuses shared by all subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The command ran and found problems.
    Problems = 1,
    /// The command could not run.
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Lint(a) => lint::run(&a),
        Command::Fmt(a) => fmt::run(&a),
        Command::Explain(a) => explain::run(&a),
        Command::Completions(a) => completions::run(&a),
    }
}
