//! `rolloutctl`: declarative canary rollouts for KServe. See `rolloutctl --help`.

mod cli;
mod commands;
mod files;
mod live;
mod render;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Logs go to standard error (`RUST_LOG=info` for more); decisions go to standard output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .try_init();
    commands::run(cli).into()
}
