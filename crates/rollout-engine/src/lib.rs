//! The engine: a checked policy compiled into a deterministic state machine, and the tools built
//! on it (plan, simulation, policy tests).
//!
//! This crate's one job is deciding. It performs no IO: no network, no clock, no files. Time
//! comes in with every [`Input`]; the runner (or the simulator, on virtual time) feeds it
//! observations and carries out its [`Command`]s. Its [`State`] is plain data, serialised into the
//! ModelRollout's status so a restarted runner resumes exactly where it was.
//!
//! ```
//! use rollout_diagnostics::SourceFile;
//! use rollout_engine::{Machine, Input, Cluster, Command};
//!
//! let src = SourceFile::new("p", std::fs::read_to_string(
//!     concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/sklearn-iris-canary.rollout")).unwrap());
//! let machine = Machine::compile(rollout_policy::check_source(&src).policy.unwrap());
//! let mut state = machine.initial_state();
//! let cluster = Cluster { canary_percent: 0, canary_revision: "iris-00002".into(),
//!     stable_revision: Some("iris-00001".into()), ready: true, observed: true };
//! let out = machine.step(&mut state, &Input { now: 0, cluster: Some(cluster), ..Input::default() });
//! assert!(out.commands.contains(&Command::SetTraffic { percent: 10 }));
//! ```

mod eval;
mod machine;
pub mod plan;
pub mod policytest;
mod rng;
pub mod scenario;
pub mod sequential;
pub mod sim;
pub mod stats;
pub mod yaml;

pub use eval::{Comparison, Missing, Observations, QueryKey, Sample};
pub use machine::{
    Cluster, Command, Decision, Input, Machine, Operator, Output, Phase, Reason, RuleRecord,
    RuleState, STATE_VERSION, State, TestRecord, Verdict,
};

/// Milliseconds: since the Unix epoch for the runner, since the start for simulations.
pub type Millis = u64;

/// How a rollout ended, for exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The canary serves all traffic.
    Promoted,
    /// Rolled back by the policy (a rule, a failure handler, a limit or the deadline).
    RolledBack,
    /// Rolled back because an operator aborted.
    Aborted,
    /// Could not complete (infrastructure, preflight).
    Failed,
    /// Not over (yet): paused, waiting, or out of simulated time.
    Stalled,
}

impl Outcome {
    /// The outcome of a state.
    pub fn of(state: &State) -> Outcome {
        match &state.phase {
            Phase::Promoted => Outcome::Promoted,
            Phase::RolledBack {
                reason: Reason::Aborted,
            } => Outcome::Aborted,
            Phase::RolledBack { .. } => Outcome::RolledBack,
            Phase::Failed { .. } => Outcome::Failed,
            _ => Outcome::Stalled,
        }
    }

    /// The name used in reports and test files.
    /// The outcome named `name` (as [`Outcome::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Outcome> {
        [
            Outcome::Promoted,
            Outcome::RolledBack,
            Outcome::Aborted,
            Outcome::Failed,
            Outcome::Stalled,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
            Outcome::Stalled => "stalled",
        }
    }
}
