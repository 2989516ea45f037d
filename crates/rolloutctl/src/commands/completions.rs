use clap::CommandFactory as _;

use super::Exit;
use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) -> Exit {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "rolloutctl", &mut std::io::stdout());
    Exit::Ok
}
