//! One module per subcommand; each returns an [`Exit`].

mod apply;
mod completions;
mod controller;
mod crd;
#[cfg(feature = "sandbox")]
mod demo;
mod doctor;
mod explain;
mod export;
mod fmt;
mod follow;
mod lint;
mod operator;
mod plan;
mod replay;
mod run;
#[cfg(feature = "sandbox")]
mod sandbox;
mod simulate;
mod test;

use std::process::ExitCode;

use crate::cli::{Cli, Command, OperatorVerb};

/// Exit statuses shared by all subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The command ran and found problems.
    Problems = 1,
    /// The command could not run.
    Usage = 2,
    /// The canary was rolled back.
    RolledBack = 3,
    /// An operator aborted.
    Aborted = 4,
    /// The rollout failed (infrastructure).
    Failed = 5,
    /// The rollout did not end.
    Stalled = 6,
    /// The InferenceService was deleted during the rollout.
    TargetGone = 7,
    /// Stopped by SIGINT (after releasing the Lease).
    Interrupted = 130,
    /// Stopped by SIGTERM (after releasing the Lease).
    Terminated = 143,
}

impl From<rollout_engine::Outcome> for Exit {
    fn from(o: rollout_engine::Outcome) -> Self {
        match o {
            rollout_engine::Outcome::Promoted => Exit::Ok,
            rollout_engine::Outcome::RolledBack => Exit::RolledBack,
            rollout_engine::Outcome::Aborted => Exit::Aborted,
            rollout_engine::Outcome::Failed => Exit::Failed,
            rollout_engine::Outcome::Stalled => Exit::Stalled,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The async runtime of the commands that talk to a cluster or Prometheus (two workers: the
/// machines this runs on have two cores). Prints the error and returns `Err(Exit::Usage)` if it
/// cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            Exit::Usage
        })
}

/// A Kubernetes client for the commands that talk to a cluster, with this command's
/// `User-Agent`; prints why not and returns `Err(Exit::Failed)` when it cannot connect.
pub async fn connect_as(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    agent: &str,
) -> Result<kube::Client, Exit> {
    rollout_runner::client_as(kubeconfig, context, agent)
        .await
        .map_err(|e| {
            eprintln!("error: cannot connect to Kubernetes: {e}");
            Exit::Failed
        })
}

/// Runs `f` with a Kubernetes client (sending `User-Agent: <agent>/<version>`) on the commands'
/// runtime: its exit status, or why it could not start.
pub fn on_cluster(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    agent: &str,
    f: impl AsyncFnOnce(kube::Client) -> Exit,
) -> Exit {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        match connect_as(kubeconfig, context, agent).await {
            Ok(client) => f(client).await,
            Err(e) => e,
        }
    })
}

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Lint(a) => lint::run(&a),
        Command::Fmt(a) => fmt::run(&a),
        Command::Explain(a) => explain::run(&a),
        Command::Plan(a) => plan::run(&a),
        Command::Simulate(a) => simulate::run(&a),
        Command::Test(a) => test::run(&a),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(a) => sandbox::run(&a),
        #[cfg(not(feature = "sandbox"))]
        Command::Sandbox(_) | Command::Demo(_) => {
            eprintln!(
                "error: this rolloutctl was built without the sandbox (cargo feature `sandbox`); `sandbox` and `demo` need a developer build"
            );
            Exit::Usage
        }
        Command::Run(a) => run::run(&a),
        Command::Controller(a) => controller::run(&a),
        Command::Apply(a) => apply::run(&a),
        Command::Export(a) => export::run(&a),
        Command::Replay(a) => replay::run(&a),
        Command::Doctor(a) => doctor::run(&a),
        #[cfg(feature = "sandbox")]
        Command::Demo(a) => demo::run(&a),
        Command::Status(a) => operator::run(OperatorVerb::Status, &a, None, 0),
        Command::Approve(a) => operator::run(OperatorVerb::Approve, &a.target, a.step, 0),
        Command::Pause(a) => operator::run(OperatorVerb::Pause, &a, None, 0),
        Command::Resume(a) => operator::run(OperatorVerb::Resume, &a, None, 0),
        Command::Abort(a) => operator::run(OperatorVerb::Abort, &a.target, None, a.timeout),
        Command::Promote(a) => operator::run(OperatorVerb::Promote, &a, None, 0),
        Command::Retry(a) => operator::run(OperatorVerb::Retry, &a, None, 0),
        Command::Crd => crd::run(),
        Command::Completions(a) => completions::run(&a),
    }
}
