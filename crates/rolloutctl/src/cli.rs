//! The command-line interface: every subcommand and flag, with help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  0  success (lint: no problems; fmt --check: already formatted)
  1  the command ran and found problems (lint errors, or warnings with --deny-warnings;
     files that fmt --check would change)
  2  the command could not run (bad arguments, unreadable file)

Examples:
  rolloutctl lint policies/
  rolloutctl lint --format sarif policies/ > rolloutctl.sarif
  rolloutctl fmt --check policies/
  rolloutctl explain R2001
  rolloutctl completions bash > /etc/bash_completion.d/rolloutctl";

/// Declarative canary rollouts for KServe InferenceServices.
///
/// A `.rollout` policy says how to move traffic to a new model revision (10% -> 25% -> 50% ->
/// 100%), which metrics judge it against the stable revision, and when to roll back.
#[derive(Debug, Parser)]
#[command(name = "rolloutctl", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check policies for errors and lint warnings (for CI)
    #[command(
        after_help = "Examples:\n  rolloutctl lint policies/\n  rolloutctl lint --deny-warnings --format github policies/ examples/"
    )]
    Lint(LintArgs),
    /// Format policies in the canonical layout (comments are kept)
    #[command(
        after_help = "Examples:\n  rolloutctl fmt policies/\n  rolloutctl fmt --check policies/\n  cat p.rollout | rolloutctl fmt -"
    )]
    Fmt(FmtArgs),
    /// Explain a diagnostic code, with an example and the fix
    #[command(after_help = "Examples:\n  rolloutctl explain R1003\n  rolloutctl explain --list")]
    Explain(ExplainArgs),
    /// Print shell completions
    Completions(CompletionsArgs),
}

/// `lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Policy files or directories (searched recursively for `*.rollout`)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = LintFormat::Human)]
    pub format: LintFormat,
    /// Exit 1 when there are warnings, not only errors
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Output formats of `lint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LintFormat {
    /// Rendered diagnostics with source snippets
    Human,
    /// One JSON document
    Json,
    /// SARIF 2.1.0, for code scanning
    Sarif,
    /// GitHub Actions workflow annotations
    Github,
}

/// `fmt`.
#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    /// Policy files or directories; `-` reads standard input and writes standard output
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Do not write; exit 1 if any file is not formatted
    #[arg(long)]
    pub check: bool,
}

/// `explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A diagnostic code such as R1003
    #[arg(required_unless_present = "list")]
    pub code: Option<String>,
    /// List every code with its title
    #[arg(long)]
    pub list: bool,
}

/// `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
