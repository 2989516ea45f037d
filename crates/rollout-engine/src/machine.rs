//! The rollout state machine: a checked policy compiled into transitions over a plain,
//! serialisable [`State`]. No IO and no clock: every [`Input`] carries the time.

use std::sync::Arc;

use rollout_policy::model::{
    Action, Arm, FailureKind, FailureMode, Policy, Response, Rule, StatBaseline, StepKind,
};
use serde::{Deserialize, Serialize};

use crate::eval::{Comparison, Ctx, Missing, Observations, QueryKey, base_queries, expand};
use crate::{Millis, sequential, stats};

/// Version of the serialised [`State`]. Bump on any incompatible change.
pub const STATE_VERSION: u32 = 1;

/// Operator commands, from `rolloutctl approve|pause|resume|abort|promote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Pass the current approval gate.
    Approve,
    /// Stop advancing.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Roll back now. Always wins.
    Abort,
    /// Promote now, skipping the remaining steps.
    PromoteNow,
}

/// What the runner observed of the InferenceService.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Percent of traffic on the `latestRevision: true` entry (100 when promoted).
    pub canary_percent: u8,
    /// Revision of the `latestRevision: true` entry.
    pub canary_revision: String,
    /// Revision of the `prev`-tagged entry, when there is one.
    pub stable_revision: Option<String>,
    /// `Ready` is True and `latestReadyRevision == latestCreatedRevision`.
    pub ready: bool,
    /// `status.observedGeneration >= metadata.generation`.
    pub observed: bool,
}

/// One input to the machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Input {
    /// The time (ms; virtual in simulations).
    pub now: Millis,
    /// The InferenceService as last read; `None` when it could not be read.
    pub cluster: Option<Cluster>,
    /// Answers to the queries [`Machine::queries`] asked for.
    pub observations: Observations,
    /// Operator commands received since the last input.
    pub operator: Vec<Operator>,
}

/// What the runner must do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Set `canaryTrafficPercent` to a step's percentage.
    SetTraffic {
        /// Percent (1..=99).
        percent: u8,
    },
    /// Send all traffic to the canary (`canaryTrafficPercent: 100`).
    Promote,
    /// Send all traffic back to the stable revision (`canaryTrafficPercent: 0`).
    Rollback,
    /// Call again at this time (or earlier, on a cluster change or operator command).
    WaitUntil {
        /// When.
        at: Millis,
    },
    /// Record a Kubernetes Event and a log line.
    Event {
        /// Warning rather than Normal.
        warning: bool,
        /// Short CamelCase reason.
        reason: String,
        /// What happened.
        message: String,
    },
}

/// Why a rollout was rolled back, failed or paused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
pub enum Reason {
    /// A rule acted.
    Rule {
        /// The rule.
        rule: String,
        /// Its line in the policy.
        line: usize,
    },
    /// A measurement failure lasted too long (or acts at once).
    Measurement {
        /// Which kind.
        kind: FailureKind,
    },
    /// A `hold until` reached its `max`.
    HoldLimit,
    /// An `approval max` passed without approval.
    ApprovalLimit,
    /// The policy's deadline passed.
    Deadline,
    /// The cluster did not apply a traffic change within `settle_timeout`.
    SettleTimeout,
    /// The canary or stable revision changed during the rollout.
    RevisionChanged {
        /// What changed.
        detail: String,
    },
    /// An operator aborted.
    Aborted,
    /// An operator paused.
    Operator,
    /// The cluster is not in a state the rollout can start from.
    Preflight {
        /// Why.
        detail: String,
    },
    /// A traffic change the machine asked for was never confirmed.
    Unconfirmed {
        /// What.
        detail: String,
    },
    /// The policy changed in a way that does not keep the rollout where it is.
    PolicyChanged {
        /// What changed.
        detail: String,
    },
    /// A hold reached its `max` before `detect` rules could exclude their regression: not
    /// evidence against the canary, so a person decides.
    Undecided {
        /// The rules.
        rules: String,
    },
}

impl Reason {
    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Reason::Rule { rule, line } => format!("rule `{rule}` (line {line}) acted"),
            Reason::Measurement { kind } => {
                format!("measurement failure `{}` lasted too long", kind.keyword())
            }
            Reason::HoldLimit => "the hold's `max` passed before its condition".into(),
            Reason::ApprovalLimit => "the approval's `max` passed without approval".into(),
            Reason::Deadline => "the rollout's deadline passed".into(),
            Reason::SettleTimeout => "the cluster did not settle within `settle_timeout`".into(),
            Reason::RevisionChanged { detail } => format!("revision changed: {detail}"),
            Reason::Aborted => "aborted by an operator".into(),
            Reason::Operator => "paused by an operator".into(),
            Reason::Preflight { detail } => format!("cannot start: {detail}"),
            Reason::Unconfirmed { detail } => format!("not confirmed by the cluster: {detail}"),
            Reason::PolicyChanged { detail } => format!("the policy changed: {detail}"),
            Reason::Undecided { rules } => format!(
                "the hold's `max` passed before {rules} measured enough to exclude the `detect` regression (no evidence against the canary either): `rolloutctl resume` holds on, `rolloutctl promote` accepts the step unmeasured, `rolloutctl abort` rolls back"
            ),
        }
    }
}

/// Where the rollout is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Not started: waiting for a ready canary distinct from the stable revision.
    Starting {
        /// First input time.
        since: Millis,
    },
    /// A traffic change was requested; waiting for the cluster to report it.
    ShiftingTraffic {
        /// Requested percent.
        target: u8,
        /// When requested.
        since: Millis,
    },
    /// Measuring the canary.
    Holding {
        /// When the hold began (traffic settled).
        since: Millis,
    },
    /// Waiting for an operator's approval.
    AwaitingApproval {
        /// When the gate was reached.
        since: Millis,
    },
    /// Stopped by a rule, a failure handler or an operator.
    Paused {
        /// When.
        since: Millis,
        /// Why.
        reason: Reason,
        /// Where to continue on resume.
        resume: Box<Phase>,
    },
    /// Promotion requested; waiting for the cluster.
    Promoting {
        /// When requested.
        since: Millis,
    },
    /// Done: the canary is the new stable revision.
    Promoted,
    /// Rollback requested; waiting for the cluster.
    RollingBack {
        /// When requested.
        since: Millis,
        /// Why.
        reason: Reason,
    },
    /// Done: all traffic on the stable revision.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// Done: the rollout could not be completed safely (infrastructure).
    Failed {
        /// Why.
        reason: Reason,
    },
}

impl Phase {
    /// The phase's name.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting { .. } => "starting",
            Phase::ShiftingTraffic { .. } => "shifting_traffic",
            Phase::Holding { .. } => "holding",
            Phase::AwaitingApproval { .. } => "awaiting_approval",
            Phase::Paused { .. } => "paused",
            Phase::Promoting { .. } => "promoting",
            Phase::Promoted => "promoted",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Failed { .. } => "failed",
        }
    }

    /// Whether the rollout is over.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Promoted | Phase::RolledBack { .. } | Phase::Failed { .. }
        )
    }
}

/// Per-rule evidence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// Failing evaluations in a row (passes reset it).
    pub consecutive: u32,
    /// Failing evaluations at this step.
    pub total: u32,
    /// First failing evaluation since the last pass.
    pub breach_since: Option<Millis>,
    /// Statistical looks taken in this rollout (never reset: alpha is spent once).
    pub looks: u32,
    /// Canary trials at the last statistical look at this step.
    pub last_look_n: u64,
    /// A `detect` rule's sequential evidence, pooled over the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<sequential::Evidence>,
}

/// The machine's whole state: plain data, serialisable, versioned. The runner stores it in the
/// ModelRollout's status and resumes from it after a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Where the rollout is.
    pub phase: Phase,
    /// Index of the current step.
    pub step: usize,
    /// When the first step began.
    pub started_at: Option<Millis>,
    /// The canary revision being rolled out, once seen.
    pub canary_revision: Option<String>,
    /// The stable revision, once seen.
    pub stable_revision: Option<String>,
    /// Traffic of the canary as last requested.
    pub traffic: u8,
    /// Evidence per rule, by rule index.
    pub rules: Vec<RuleState>,
    /// Since when each measurement failure kind has been present, by [`FailureKind`] order.
    pub failing_since: [Option<Millis>; 4],
    /// Consecutive fresh passing evaluations in the current hold.
    pub passes: u32,
    /// Time of the last evaluation.
    pub last_eval: Option<Millis>,
    /// Since when the cluster has been unreadable or the canary not ready, during a measured step.
    pub unready_since: Option<Millis>,
    /// Evaluations made.
    pub evaluations: u64,
}

/// The verdict of one rule at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The condition is false.
    Pass,
    /// The condition is true: a breach.
    Fail,
    /// A minimum-sample guard is not met.
    Inconclusive,
    /// A needed value is missing, NaN or infinite.
    NoData,
    /// A needed value is older than `stale_after`.
    StaleData,
    /// A needed query failed.
    QueryError,
}

impl Verdict {
    /// The failure kind of a non-pass, non-fail verdict.
    pub fn failure_kind(self) -> Option<FailureKind> {
        match self {
            Verdict::Inconclusive => Some(FailureKind::Inconclusive),
            Verdict::NoData => Some(FailureKind::NoData),
            Verdict::StaleData => Some(FailureKind::StaleData),
            Verdict::QueryError => Some(FailureKind::QueryError),
            Verdict::Pass | Verdict::Fail => None,
        }
    }

    fn from_missing(m: Missing) -> Verdict {
        match m {
            Missing::Stale => Verdict::StaleData,
            Missing::NoData => Verdict::NoData,
            Missing::Error => Verdict::QueryError,
        }
    }
}

/// The statistical test behind a verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// Canary events and trials.
    pub canary: (u64, u64),
    /// Stable events and trials (relative tests).
    pub stable: Option<(u64, u64)>,
    /// The one-sided p-value.
    pub p_value: f64,
    /// The level of this look.
    pub alpha: f64,
    /// Which look (1-based, over the rollout).
    pub look: u32,
    /// `detect` rules: the anytime-valid p-value of "the canary is at least the `detect`
    /// regression" (the breach's is `p_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_p_value: Option<f64>,
    /// `detect` rules: whether that regression is excluded at the rule's confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<bool>,
}

/// How one rule was judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// Rule name.
    pub rule: String,
    /// Line in the policy.
    pub line: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// The comparisons of the `when` condition (normalised values: seconds, ratios).
    pub when: Vec<Comparison>,
    /// The comparisons of the `require` guards.
    pub require: Vec<Comparison>,
    /// The statistical test, for `with confidence` rules.
    pub test: Option<TestRecord>,
    /// The query window used, in seconds.
    pub window_s: f64,
    /// Failing evaluations counted towards `failures`.
    pub failures: u32,
    /// `failures` needed.
    pub failures_needed: u32,
    /// How long the breach has lasted, in seconds.
    pub breach_s: Option<f64>,
    /// Whether the rule acted at this evaluation.
    pub acted: bool,
    /// The rule's action (after step overrides).
    pub action: Action,
}

/// The record of one call to [`Machine::step`]: what was seen, judged and done, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Time (ms).
    pub at: Millis,
    /// Phase before.
    pub from: String,
    /// Phase after.
    pub to: String,
    /// Step index after (0-based) and a label such as `traffic 25%`.
    pub step: usize,
    /// The step's label.
    pub step_label: String,
    /// Canary traffic as last requested.
    pub traffic: u8,
    /// Whether rules were evaluated.
    pub evaluated: bool,
    /// Rule verdicts.
    pub rules: Vec<RuleRecord>,
    /// Measurement failure kinds present.
    pub failures: Vec<FailureKind>,
    /// Consecutive passing evaluations in the hold.
    pub passes: u32,
    /// Passes needed to end a hold.
    pub passes_needed: u32,
    /// Time left in the current hold's minimum duration, in seconds.
    pub remaining_s: Option<f64>,
    /// What the machine did, in a word: `wait`, `evaluate`, `advance`, `rollback`, ...
    pub action: String,
    /// Why, in a sentence.
    pub reason: String,
}

/// What one step of the machine produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Commands for the runner, in order.
    pub commands: Vec<Command>,
    /// The decision record.
    pub decision: Decision,
}

/// Query metrics with their arms.
type Queries = Vec<(Arm, usize)>;

/// A compiled policy: immutable, cheap to clone, shared by every state it drives.
#[derive(Clone, Debug)]
pub struct Machine {
    policy: Arc<Policy>,
    /// Per rule: the query metrics its condition, guards and test read (derived expanded).
    rule_queries: Arc<[Vec<(Arm, usize)>]>,
    /// Per rule: (hold step, queries of that step's `require` override).
    override_queries: Arc<[Vec<(usize, Queries)>]>,
    /// Per step: the queries of a hold's `until` condition.
    until_queries: Arc<[Vec<(Arm, usize)>]>,
    /// Per step (and one past the end): its label.
    labels: Arc<[String]>,
}

/// The effective settings of a rule at the current step (overrides applied).
struct Effective<'a> {
    rule: &'a Rule,
    persistence_ms: u64,
    failures: u32,
    mode: FailureMode,
    window_ms: u64,
    guards: &'a [rollout_policy::model::Expr],
    action: Action,
}

/// The result of evaluating every rule once.
struct Evaluation {
    records: Vec<RuleRecord>,
    /// The strongest action a rule took, with the rule.
    acted: Option<(Action, usize)>,
    kinds: Vec<FailureKind>,
    passing: bool,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn kind_index(k: FailureKind) -> usize {
    match k {
        FailureKind::NoData => 0,
        FailureKind::StaleData => 1,
        FailureKind::QueryError => 2,
        FailureKind::Inconclusive => 3,
    }
}

const KINDS: [FailureKind; 4] = [
    FailureKind::NoData,
    FailureKind::StaleData,
    FailureKind::QueryError,
    FailureKind::Inconclusive,
];

fn severity(a: Action) -> u8 {
    match a {
        Action::Warn => 1,
        Action::Pause => 2,
        Action::Rollback => 3,
    }
}

/// A step's label.
fn label(policy: &Policy, step: usize) -> String {
    match policy.steps.get(step).map(|s| &s.kind) {
        Some(StepKind::Traffic { percent }) => format!("traffic {percent}%"),
        Some(StepKind::Hold(h)) => {
            let mut s = "hold".to_string();
            if !h.min.is_zero() {
                s.push(' ');
                s.push_str(&rollout_policy::human_duration(h.min));
            }
            if let Some(u) = &h.until {
                s.push_str(&format!(
                    " until ... max {}",
                    rollout_policy::human_duration(u.max)
                ));
            }
            s
        }
        Some(StepKind::Approval { .. }) => "approval".into(),
        Some(StepKind::Promote) => "promote".into(),
        None => "end".into(),
    }
}

/// Rounds a cumulative window to whole seconds (at least one), so queries stay tidy.
fn cumulative_window(now: Millis, since: Millis) -> u64 {
    (now.saturating_sub(since) / 1000).max(1) * 1000
}

impl Machine {
    /// Compiles a checked policy.
    pub fn compile(policy: Policy) -> Machine {
        let rule_queries: Vec<Vec<(Arm, usize)>> = policy
            .rules
            .iter()
            .map(|r| {
                let mut base = Vec::new();
                base_queries(&policy, &r.condition, &mut base);
                for g in &r.guards {
                    base_queries(&policy, g, &mut base);
                }
                if let Some(s) = &r.statistical {
                    for arm in [Arm::Canary, Arm::Stable] {
                        expand(&policy, arm, s.numerator, &mut base);
                        expand(&policy, arm, s.denominator, &mut base);
                    }
                }
                base
            })
            .collect();
        let override_queries: Vec<Vec<(usize, Queries)>> = (0..policy.rules.len())
            .map(|ri| {
                policy
                    .steps
                    .iter()
                    .enumerate()
                    .filter_map(|(si, s)| match &s.kind {
                        StepKind::Hold(h) => h
                            .overrides
                            .iter()
                            .find(|o| o.rule == ri && !o.guards.is_empty())
                            .map(|o| {
                                let mut base = Vec::new();
                                for g in &o.guards {
                                    base_queries(&policy, g, &mut base);
                                }
                                (si, base)
                            }),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let until_queries: Vec<Vec<(Arm, usize)>> = policy
            .steps
            .iter()
            .map(|s| {
                let mut base = Vec::new();
                if let StepKind::Hold(h) = &s.kind
                    && let Some(u) = &h.until
                {
                    base_queries(&policy, &u.condition, &mut base);
                }
                base
            })
            .collect();
        let labels: Vec<String> = (0..=policy.steps.len())
            .map(|i| label(&policy, i))
            .collect();
        Machine {
            policy: Arc::new(policy),
            rule_queries: rule_queries.into(),
            override_queries: override_queries.into(),
            until_queries: until_queries.into(),
            labels: labels.into(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The state before the first input.
    pub fn initial_state(&self) -> State {
        State {
            version: STATE_VERSION,
            phase: Phase::Starting { since: 0 },
            step: 0,
            started_at: None,
            canary_revision: None,
            stable_revision: None,
            traffic: 0,
            rules: vec![RuleState::default(); self.policy.rules.len()],
            failing_since: [None; 4],
            passes: 0,
            last_eval: None,
            unready_since: None,
            evaluations: 0,
        }
    }

    /// A label for a step, such as `traffic 25%` or `hold 5m`.
    pub fn step_label(&self, step: usize) -> String {
        self.labels
            .get(step)
            .cloned()
            .unwrap_or_else(|| "end".into())
    }

    fn is_due(&self, state: &State, now: Millis) -> bool {
        matches!(
            state.phase,
            Phase::Holding { .. } | Phase::AwaitingApproval { .. }
        ) && state.traffic > 0
            && state
                .last_eval
                .is_none_or(|t| now >= t + ms(self.policy.evaluation.interval))
    }

    fn effective(&self, state: &State, rule: usize) -> Effective<'_> {
        let r = &self.policy.rules[rule];
        let mut e = Effective {
            rule: r,
            persistence_ms: ms(r.persistence),
            failures: r.failures,
            mode: r.failure_mode,
            window_ms: ms(r.window),
            guards: &r.guards,
            action: r.action,
        };
        if let Some(StepKind::Hold(h)) = self.policy.steps.get(state.step).map(|s| &s.kind)
            && matches!(state.phase, Phase::Holding { .. })
            && let Some(o) = h.overrides.iter().find(|o| o.rule == rule)
        {
            if let Some(p) = o.persistence {
                e.persistence_ms = ms(p);
            }
            if let Some((n, m)) = o.failures {
                e.failures = n;
                e.mode = m;
            }
            if let Some(w) = o.window {
                e.window_ms = ms(w);
            }
            if !o.guards.is_empty() {
                e.guards = &o.guards;
            }
            if let Some(a) = o.action {
                e.action = a;
            }
        }
        e
    }

    /// The start of the current measured period (hold or approval), for cumulative windows.
    fn period_start(state: &State) -> Option<Millis> {
        match state.phase {
            Phase::Holding { since } | Phase::AwaitingApproval { since } => Some(since),
            _ => None,
        }
    }

    /// The queries the next [`Machine::step`] at `now` will read; empty when no evaluation is due.
    pub fn queries(&self, state: &State, now: Millis) -> Vec<QueryKey> {
        let mut out = Vec::new();
        if !self.is_due(state, now) {
            return out;
        }
        let since = Self::period_start(state).unwrap_or(now);
        let cumulative = cumulative_window(now, since);
        let mut push = |arm: Arm, metric: usize, window_ms: u64| {
            let k = QueryKey {
                arm,
                metric,
                window_ms,
            };
            if !out.contains(&k) {
                out.push(k);
            }
        };
        let holding = matches!(state.phase, Phase::Holding { .. });
        for (i, rule) in self.policy.rules.iter().enumerate() {
            let e = self.effective(state, i);
            let window = if rule.statistical.is_some() {
                cumulative
            } else {
                e.window_ms
            };
            for &(arm, m) in &self.rule_queries[i] {
                push(arm, m, window);
            }
            if holding
                && let Some((_, qs)) = self.override_queries[i]
                    .iter()
                    .find(|(si, _)| *si == state.step)
            {
                for &(arm, m) in qs {
                    push(arm, m, window);
                }
            }
        }
        if holding && let Some(qs) = self.until_queries.get(state.step) {
            for &(arm, m) in qs {
                push(arm, m, cumulative);
            }
        }
        out
    }

    /// The query metrics the policy reads (indexes into `policy.metrics`), each once: what a
    /// preflight must find in Prometheus before any traffic moves.
    pub fn query_metrics(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let all = self
            .rule_queries
            .iter()
            .flatten()
            .chain(
                self.override_queries
                    .iter()
                    .flatten()
                    .flat_map(|(_, q)| q.iter()),
            )
            .chain(self.until_queries.iter().flatten());
        for &(_, m) in all {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Whether a stored state can be driven by this policy: a known version, a step in range,
    /// one evidence record per rule. A state that does not fit is never acted on.
    pub fn check_state(&self, state: &State) -> Result<(), String> {
        if state.version != STATE_VERSION {
            return Err(format!(
                "state version {} is not {STATE_VERSION}, the version this rolloutctl writes",
                state.version
            ));
        }
        if state.step > self.policy.steps.len() {
            return Err(format!(
                "step {} is out of range: the policy has {} steps",
                state.step + 1,
                self.policy.steps.len()
            ));
        }
        if state.rules.len() != self.policy.rules.len() {
            return Err(format!(
                "the state has evidence for {} rules, the policy has {}",
                state.rules.len(),
                self.policy.rules.len()
            ));
        }
        Ok(())
    }

    /// Re-keys a state's per-rule evidence from the rules of an earlier version of the policy
    /// (`old_rules`, by name) to this policy's rules; new rules start without evidence.
    pub fn remap_rules(&self, state: &mut State, old_rules: &[String]) {
        let old = std::mem::take(&mut state.rules);
        state.rules = self
            .policy
            .rules
            .iter()
            .map(|r| {
                old_rules
                    .iter()
                    .position(|n| *n == r.name)
                    .and_then(|i| old.get(i).cloned())
                    .unwrap_or_default()
            })
            .collect();
    }

    /// Pauses a rollout because its policy changed (`detail` says how), wherever it is: on
    /// resume it continues at the same step number of the new policy (the last one at most).
    pub fn pause_for_policy_change(
        &self,
        state: &mut State,
        now: Millis,
        detail: String,
    ) -> Output {
        let from = state.phase.name().to_string();
        let mut cx = Step {
            m: self,
            commands: Vec::new(),
            records: Vec::new(),
            kinds: Vec::new(),
            evaluated: false,
            passes: None,
            action: "wait",
            reason: String::new(),
        };
        if !state.phase.is_terminal() {
            state.step = state.step.min(self.policy.steps.len().saturating_sub(1));
            cx.pause(state, now, Reason::PolicyChanged { detail });
        }
        if let Some(at) = self.wake_at(state, now) {
            cx.commands.push(Command::WaitUntil { at });
        }
        let decision = Decision {
            at: now,
            from,
            to: state.phase.name().to_string(),
            step: state.step,
            step_label: self.step_label(state.step),
            traffic: state.traffic,
            evaluated: false,
            rules: Vec::new(),
            failures: Vec::new(),
            passes: state.passes,
            passes_needed: self.policy.evaluation.passes,
            remaining_s: None,
            action: cx.action.to_string(),
            reason: cx.reason,
        };
        Output {
            commands: cx.commands,
            decision,
        }
    }

    /// Feeds one input; returns the commands to carry out and the decision record.
    pub fn step(&self, state: &mut State, input: &Input) -> Output {
        let now = input.now;
        let from = state.phase.name().to_string();
        let mut cx = Step {
            m: self,
            commands: Vec::new(),
            records: Vec::new(),
            kinds: Vec::new(),
            evaluated: false,
            passes: None,
            action: "wait",
            reason: String::new(),
        };
        cx.run(state, input);
        let wake = self.wake_at(state, now);
        if let Some(at) = wake {
            cx.commands.push(Command::WaitUntil { at });
        }
        let decision = Decision {
            at: now,
            from,
            to: state.phase.name().to_string(),
            step: state.step,
            step_label: self.step_label(state.step),
            traffic: state.traffic,
            evaluated: cx.evaluated,
            rules: cx.records,
            failures: cx.kinds,
            passes: cx.passes.unwrap_or(state.passes),
            passes_needed: self.policy.evaluation.passes,
            remaining_s: match (
                &state.phase,
                self.policy.steps.get(state.step).map(|s| &s.kind),
            ) {
                (Phase::Holding { since }, Some(StepKind::Hold(h))) => {
                    Some(ms(h.min).saturating_sub(now.saturating_sub(*since)) as f64 / 1000.0)
                }
                _ => None,
            },
            action: cx.action.to_string(),
            reason: cx.reason,
        };
        Output {
            commands: cx.commands,
            decision,
        }
    }

    fn wake_at(&self, state: &State, now: Millis) -> Option<Millis> {
        let interval = ms(self.policy.evaluation.interval);
        match &state.phase {
            Phase::Promoted | Phase::RolledBack { .. } | Phase::Failed { .. } => None,
            Phase::Holding { .. } | Phase::AwaitingApproval { .. } => Some(
                state
                    .last_eval
                    .map_or(now + interval, |t| (t + interval).max(now + 1)),
            ),
            Phase::Paused { .. } => Some(now + interval),
            Phase::Starting { .. }
            | Phase::ShiftingTraffic { .. }
            | Phase::Promoting { .. }
            | Phase::RollingBack { .. } => Some(now + interval.min(1000)),
        }
    }
}

/// Working data of one call to `step`.
struct Step<'m> {
    m: &'m Machine,
    commands: Vec<Command>,
    records: Vec<RuleRecord>,
    kinds: Vec<FailureKind>,
    evaluated: bool,
    /// Passes counted at this evaluation (before a step change resets them).
    passes: Option<u32>,
    action: &'static str,
    reason: String,
}

impl<'m> Step<'m> {
    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.commands.push(Command::Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn policy(&self) -> &'m Policy {
        &self.m.policy
    }

    fn run(&mut self, state: &mut State, input: &Input) {
        let now = input.now;
        if state.phase.is_terminal() {
            self.action = "done";
            self.reason = format!("the rollout is over ({})", state.phase.name());
            return;
        }
        if let Phase::Starting { since: 0 } = state.phase
            && state.started_at.is_none()
        {
            state.phase = Phase::Starting { since: now };
        }
        // Operator commands. Abort always wins, whatever else arrived with it.
        if input.operator.contains(&Operator::Abort) {
            if !matches!(state.phase, Phase::RollingBack { .. }) {
                self.rollback(state, now, Reason::Aborted);
            }
            return self.confirm(state, input);
        }
        for op in &input.operator {
            self.operator(state, input, *op);
        }
        // The deadline covers everything but the final confirmation of a promotion or rollback,
        // and a pause for want of evidence (undecided tests, inconclusive rules): nothing was
        // shown against that canary, so it waits for a person instead of being rolled back.
        if let Some(start) = state.started_at {
            let deadline = ms(self.policy().evaluation.deadline);
            let no_evidence = matches!(
                &state.phase,
                Phase::Paused {
                    reason: Reason::Undecided { .. }
                        | Reason::Measurement {
                            kind: FailureKind::Inconclusive
                        },
                    ..
                }
            );
            if now >= start.saturating_add(deadline)
                && !no_evidence
                && !matches!(
                    state.phase,
                    Phase::RollingBack { .. } | Phase::Promoting { .. }
                )
            {
                self.rollback(state, now, Reason::Deadline);
                return self.confirm(state, input);
            }
        }
        // Revisions: the rollout judges one canary against one stable revision. A revision that
        // changes under it (a new model, or KServe re-templating the service after a
        // ServingRuntime or configuration change) has not been measured and has not been shown
        // worse: the rollout pauses for a person, at the traffic it has.
        if let Some(c) = &input.cluster
            && c.ready
            && !matches!(
                state.phase,
                Phase::RollingBack { .. }
                    | Phase::Promoting { .. }
                    | Phase::Starting { .. }
                    | Phase::Paused { .. }
            )
        {
            let changed = match (&state.canary_revision, &state.stable_revision) {
                (Some(canary), _) if *canary != c.canary_revision => Some(format!(
                    "canary was `{canary}`, is now `{}`",
                    c.canary_revision
                )),
                (_, Some(stable)) if c.stable_revision.as_ref().is_some_and(|s| s != stable) => {
                    Some(format!(
                        "stable was `{stable}`, is now `{}`",
                        c.stable_revision.clone().unwrap_or_default()
                    ))
                }
                _ => None,
            };
            if let Some(detail) = changed {
                self.event(
                    true,
                    "RevisionChanged",
                    format!(
                        "{detail}; the new revision has not been measured: `rolloutctl resume` judges it from this step, `rolloutctl retry` starts over at step 1, `rolloutctl abort` rolls back"
                    ),
                );
                return self.pause(state, now, Reason::RevisionChanged { detail });
            }
        }
        match state.phase.clone() {
            Phase::Starting { since } => self.starting(state, input, since),
            Phase::ShiftingTraffic { target, since } => self.shifting(state, input, target, since),
            Phase::Holding { since } => self.measured(state, input, since, false),
            Phase::AwaitingApproval { since } => self.measured(state, input, since, true),
            Phase::Paused { .. } => {
                self.action = "paused";
                self.reason = "paused; waiting for `resume` or `abort`".into();
            }
            Phase::Promoting { .. } | Phase::RollingBack { .. } => self.confirm(state, input),
            Phase::Promoted | Phase::RolledBack { .. } | Phase::Failed { .. } => {}
        }
    }

    fn operator(&mut self, state: &mut State, input: &Input, op: Operator) {
        let now = input.now;
        if state.phase.is_terminal() || matches!(state.phase, Phase::RollingBack { .. }) {
            return;
        }
        match op {
            Operator::Abort => {}
            Operator::PromoteNow => {
                if !matches!(state.phase, Phase::Promoting { .. }) {
                    self.event(
                        true,
                        "PromotedByOperator",
                        "an operator promoted the canary, skipping the remaining steps".into(),
                    );
                    self.promote(state, now);
                }
            }
            Operator::Pause => {
                if !matches!(state.phase, Phase::Paused { .. } | Phase::Promoting { .. }) {
                    self.pause(state, now, Reason::Operator);
                }
            }
            Operator::Resume => {
                if let Phase::Paused { resume, reason, .. } = state.phase.clone() {
                    if let (Reason::RevisionChanged { .. }, Some(c)) = (&reason, &input.cluster) {
                        // The operator accepts the new revision: it is judged from here on.
                        state.canary_revision = Some(c.canary_revision.clone());
                        if c.stable_revision.is_some() {
                            state.stable_revision = c.stable_revision.clone();
                        }
                    }
                    if let Reason::PolicyChanged { .. } = reason {
                        // Continue at this step number of the new policy, entered afresh.
                        self.event(
                            false,
                            "Resumed",
                            format!(
                                "resumed under the changed policy at step {}",
                                state.step + 1
                            ),
                        );
                        let step = state.step;
                        self.enter_step(state, now, step);
                        return;
                    }
                    let resumed = match *resume {
                        Phase::Holding { .. } => Phase::Holding { since: now },
                        Phase::AwaitingApproval { .. } => Phase::AwaitingApproval { since: now },
                        Phase::ShiftingTraffic { target, .. } => {
                            Phase::ShiftingTraffic { target, since: now }
                        }
                        other => other,
                    };
                    state.phase = resumed;
                    self.reset_evidence(state);
                    self.event(
                        false,
                        "Resumed",
                        format!("resumed at {}", self.m.step_label(state.step)),
                    );
                    self.action = "resume";
                    self.reason = "an operator resumed the rollout".into();
                }
            }
            Operator::Approve => {
                if matches!(state.phase, Phase::AwaitingApproval { .. }) {
                    self.event(
                        false,
                        "Approved",
                        format!("approval at step {} given", state.step + 1),
                    );
                    self.action = "approve";
                    self.reason = "an operator approved".into();
                    self.next_step(state, now);
                }
            }
        }
    }

    fn starting(&mut self, state: &mut State, input: &Input, since: Millis) {
        let now = input.now;
        let Some(c) = &input.cluster else {
            self.action = "wait";
            self.reason = "waiting to read the InferenceService".into();
            return self.settle_timeout(state, now, since);
        };
        if !c.ready || !c.observed {
            self.action = "wait";
            self.reason = "waiting for the canary revision to become ready".into();
            return self.settle_timeout(state, now, since);
        }
        if c.stable_revision.as_deref() == Some(c.canary_revision.as_str())
            || c.stable_revision.is_none()
        {
            if c.canary_percent == 100 || c.stable_revision.is_none() {
                state.phase = Phase::Failed {
                    reason: Reason::Preflight {
                        detail: format!(
                            "no canary: `{}` already serves all traffic",
                            c.canary_revision
                        ),
                    },
                };
                self.event(
                    true,
                    "NoCanary",
                    "there is no canary revision distinct from the rolled-out one".into(),
                );
                self.action = "fail";
                self.reason = "there is no canary revision to roll out".into();
                return;
            }
            self.action = "wait";
            self.reason = "waiting for a canary revision distinct from the stable one".into();
            return self.settle_timeout(state, now, since);
        }
        state.canary_revision = Some(c.canary_revision.clone());
        state.stable_revision = c.stable_revision.clone();
        state.started_at = Some(now);
        state.traffic = c.canary_percent.min(99);
        self.event(
            false,
            "RolloutStarted",
            format!(
                "rolling out `{}` against `{}` with policy `{}`",
                c.canary_revision,
                c.stable_revision.clone().unwrap_or_default(),
                self.policy().name
            ),
        );
        self.enter_step(state, now, 0);
    }

    fn settle_timeout(&mut self, state: &mut State, now: Millis, since: Millis) {
        if now.saturating_sub(since) >= ms(self.policy().evaluation.settle_timeout) {
            self.rollback(state, now, Reason::SettleTimeout);
        }
    }

    fn enter_step(&mut self, state: &mut State, now: Millis, step: usize) {
        state.step = step;
        state.passes = 0;
        state.last_eval = None;
        state.unready_since = None;
        state.failing_since = [None; 4];
        let Some(s) = self.policy().steps.get(step) else {
            return self.promote(state, now);
        };
        match &s.kind {
            StepKind::Traffic { percent } => {
                self.reset_evidence(state);
                state.phase = Phase::ShiftingTraffic {
                    target: *percent,
                    since: now,
                };
                state.traffic = *percent;
                self.commands
                    .push(Command::SetTraffic { percent: *percent });
                self.event(
                    false,
                    "TrafficShifted",
                    format!("canary traffic set to {percent}% (step {})", step + 1),
                );
                self.action = "shift";
                self.reason = format!("step {}: traffic {percent}%", step + 1);
            }
            StepKind::Hold(_) => {
                state.phase = Phase::Holding { since: now };
                self.action = "hold";
                self.reason = format!("step {}: {}", step + 1, self.m.step_label(step));
            }
            StepKind::Approval { .. } => {
                state.phase = Phase::AwaitingApproval { since: now };
                self.event(
                    false,
                    "AwaitingApproval",
                    format!("step {}: waiting for `rolloutctl approve`", step + 1),
                );
                self.action = "await_approval";
                self.reason = format!("step {}: waiting for approval", step + 1);
            }
            StepKind::Promote => self.promote(state, now),
        }
    }

    fn next_step(&mut self, state: &mut State, now: Millis) {
        let next = state.step + 1;
        self.enter_step(state, now, next);
    }

    fn reset_evidence(&mut self, state: &mut State) {
        for r in &mut state.rules {
            r.consecutive = 0;
            r.total = 0;
            r.breach_since = None;
            r.last_look_n = 0;
        }
        state.passes = 0;
        state.failing_since = [None; 4];
        state.last_eval = None;
    }

    fn shifting(&mut self, state: &mut State, input: &Input, target: u8, since: Millis) {
        let now = input.now;
        let settled = input
            .cluster
            .as_ref()
            .is_some_and(|c| c.ready && c.observed && c.canary_percent == target);
        if settled {
            self.event(
                false,
                "TrafficSettled",
                format!("the cluster serves {target}% to the canary"),
            );
            return self.next_step(state, now);
        }
        if now.saturating_sub(since) >= ms(self.policy().evaluation.settle_timeout) {
            return self.rollback(state, now, Reason::SettleTimeout);
        }
        if input
            .cluster
            .as_ref()
            .is_some_and(|c| c.canary_percent != target)
        {
            // Idempotent: a merge patch to the same value changes nothing.
            self.commands.push(Command::SetTraffic { percent: target });
        }
        self.action = "wait";
        self.reason = format!("waiting for the cluster to serve {target}% to the canary");
    }

    fn confirm(&mut self, state: &mut State, input: &Input) {
        let now = input.now;
        let settle = ms(self.policy().evaluation.settle_timeout);
        match state.phase.clone() {
            Phase::Promoting { since } => {
                if input
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.canary_percent == 100 && c.ready && c.observed)
                {
                    state.phase = Phase::Promoted;
                    state.traffic = 100;
                    self.event(
                        false,
                        "Promoted",
                        format!(
                            "`{}` serves all traffic",
                            state.canary_revision.clone().unwrap_or_default()
                        ),
                    );
                    self.action = "promoted";
                    self.reason = "the cluster confirmed the promotion".into();
                } else if now.saturating_sub(since) >= settle {
                    state.phase = Phase::Failed {
                        reason: Reason::Unconfirmed {
                            detail: "promotion".into(),
                        },
                    };
                    self.event(
                        true,
                        "PromotionNotConfirmed",
                        "the cluster did not confirm the promotion in time".into(),
                    );
                    self.action = "fail";
                    self.reason = "the promotion was not confirmed within `settle_timeout`".into();
                } else {
                    if input
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.canary_percent != 100)
                    {
                        self.commands.push(Command::Promote);
                    }
                    self.action = "wait";
                    self.reason = "waiting for the cluster to confirm the promotion".into();
                }
            }
            Phase::RollingBack { since, reason } => {
                if input
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.canary_percent == 0 && c.observed)
                {
                    self.event(
                        true,
                        "RolledBack",
                        format!(
                            "all traffic is back on the stable revision: {}",
                            reason.describe()
                        ),
                    );
                    state.phase = Phase::RolledBack { reason };
                    state.traffic = 0;
                    self.action = "rolled_back";
                    self.reason = "the cluster confirmed the rollback".into();
                } else if now.saturating_sub(since) >= settle {
                    state.phase = Phase::Failed {
                        reason: Reason::Unconfirmed {
                            detail: "rollback".into(),
                        },
                    };
                    self.event(
                        true,
                        "RollbackNotConfirmed",
                        "the cluster did not confirm the rollback in time".into(),
                    );
                    self.action = "fail";
                    self.reason = "the rollback was not confirmed within `settle_timeout`".into();
                } else {
                    if input.cluster.as_ref().is_none_or(|c| c.canary_percent != 0) {
                        self.commands.push(Command::Rollback);
                    }
                    if self.action == "wait" {
                        self.action = "rollback";
                        self.reason = reason.describe();
                    }
                }
            }
            _ => {}
        }
    }

    fn promote(&mut self, state: &mut State, now: Millis) {
        state.phase = Phase::Promoting { since: now };
        state.traffic = 100;
        self.commands.push(Command::Promote);
        self.event(
            false,
            "Promoting",
            "sending all traffic to the canary".into(),
        );
        self.action = "promote";
        self.reason = format!("step {}: promote", state.step + 1);
    }

    fn rollback(&mut self, state: &mut State, now: Millis, reason: Reason) {
        self.event(
            true,
            "RollingBack",
            format!("rolling back: {}", reason.describe()),
        );
        self.action = "rollback";
        self.reason = reason.describe();
        state.phase = Phase::RollingBack { since: now, reason };
        state.traffic = 0;
        self.commands.push(Command::Rollback);
    }

    fn pause(&mut self, state: &mut State, now: Millis, reason: Reason) {
        self.event(true, "Paused", format!("paused: {}", reason.describe()));
        self.action = "pause";
        self.reason = reason.describe();
        let resume = Box::new(state.phase.clone());
        state.phase = Phase::Paused {
            since: now,
            reason,
            resume,
        };
    }

    fn act(&mut self, state: &mut State, now: Millis, action: Action, reason: Reason) {
        match action {
            Action::Rollback => self.rollback(state, now, reason),
            Action::Pause => self.pause(state, now, reason),
            Action::Warn => {
                self.event(true, "Warning", reason.describe());
            }
        }
    }

    /// Holding or awaiting approval: evaluate when due, act, and advance when done.
    fn measured(&mut self, state: &mut State, input: &Input, since: Millis, approval: bool) {
        let now = input.now;
        // The cluster must stay readable and the canary ready while it is judged.
        let ok = input
            .cluster
            .as_ref()
            .is_some_and(|c| c.ready && c.observed && c.canary_percent == state.traffic);
        if !ok && state.traffic > 0 {
            let unready = *state.unready_since.get_or_insert(now);
            state.passes = 0;
            if now.saturating_sub(unready) >= ms(self.policy().evaluation.settle_timeout) {
                return self.rollback(state, now, Reason::SettleTimeout);
            }
            if let Some(idx) = input
                .cluster
                .as_ref()
                .map_or(Some(kind_index(FailureKind::QueryError)), |_| None)
            {
                // Unreadable cluster: handled like a failed query.
                let since_err = *state.failing_since[idx].get_or_insert(now);
                if let Response::Hold {
                    limit: Some((d, a)),
                } = self.policy().failure.query_error
                {
                    if now.saturating_sub(since_err) >= ms(d) {
                        return self.act(
                            state,
                            now,
                            a,
                            Reason::Measurement {
                                kind: FailureKind::QueryError,
                            },
                        );
                    }
                } else if let Response::Act(a) = self.policy().failure.query_error {
                    return self.act(
                        state,
                        now,
                        a,
                        Reason::Measurement {
                            kind: FailureKind::QueryError,
                        },
                    );
                }
            }
            self.action = "wait";
            self.reason = "the cluster is unreadable, not ready, or not at the requested traffic; nothing is judged".into();
            return;
        }
        state.unready_since = None;
        if self.m.is_due(state, now) {
            let ev = self.evaluate(state, input);
            self.evaluated = true;
            // Consecutive means consecutive: passes separated by a gap of more than one and a
            // half intervals (an outage, a stopped runner) do not add up.
            let interval = ms(self.policy().evaluation.interval);
            let gap = state
                .last_eval
                .is_some_and(|t| now.saturating_sub(t) > interval.saturating_add(interval / 2));
            if gap {
                state.passes = 0;
            }
            state.last_eval = Some(now);
            state.evaluations += 1;
            self.records = ev.records;
            self.kinds = ev.kinds.clone();
            state.passes = if ev.passing { state.passes + 1 } else { 0 };
            self.passes = Some(state.passes);
            self.action = "evaluate";
            self.reason = if ev.passing {
                format!(
                    "passing evaluation ({} in a row, {} needed)",
                    state.passes,
                    self.policy().evaluation.passes
                )
            } else {
                "not a passing evaluation".into()
            };
            // Rules first: the strongest action wins.
            if let Some((action, rule)) = ev.acted {
                let r = &self.policy().rules[rule];
                let reason = Reason::Rule {
                    rule: r.name.clone(),
                    line: r.location.line,
                };
                if action == Action::Warn {
                    self.act(state, now, action, reason);
                } else {
                    return self.act(state, now, action, reason);
                }
            }
            // Then measurement failures.
            let mut strongest: Option<(Action, FailureKind)> = None;
            for kind in KINDS {
                let i = kind_index(kind);
                if !ev.kinds.contains(&kind) {
                    state.failing_since[i] = None;
                    continue;
                }
                let first = state.failing_since[i].is_none();
                let since_k = *state.failing_since[i].get_or_insert(now);
                let act = match self.policy().failure.get(kind) {
                    Response::Act(a) => Some(a),
                    Response::Hold {
                        limit: Some((d, a)),
                    } if now.saturating_sub(since_k) >= ms(d) => Some(a),
                    Response::Hold { .. } => None,
                };
                if let Some(a) = act {
                    if a == Action::Warn && !first {
                        continue;
                    }
                    if strongest.is_none_or(|(s, _)| severity(a) > severity(s)) {
                        strongest = Some((a, kind));
                    }
                }
            }
            if let Some((a, kind)) = strongest {
                let reason = Reason::Measurement { kind };
                if a == Action::Warn {
                    self.act(state, now, a, reason);
                } else {
                    return self.act(state, now, a, reason);
                }
            }
        }
        if approval {
            if let Some(StepKind::Approval {
                max: Some(max),
                otherwise,
            }) = self.policy().steps.get(state.step).map(|s| s.kind.clone())
                && now.saturating_sub(since) >= ms(max)
            {
                return self.act(state, now, otherwise, Reason::ApprovalLimit);
            }
            if self.action == "wait" {
                self.action = "await_approval";
                self.reason = "waiting for `rolloutctl approve`".into();
            }
            return;
        }
        self.hold_progress(state, input, since);
    }

    fn hold_progress(&mut self, state: &mut State, input: &Input, since: Millis) {
        let now = input.now;
        let Some(StepKind::Hold(h)) = self.policy().steps.get(state.step).map(|s| &s.kind) else {
            return;
        };
        let elapsed = now.saturating_sub(since);
        let until_ok = match &h.until {
            None => true,
            Some(u) => {
                let ctx = Ctx {
                    policy: self.policy(),
                    obs: &input.observations,
                    now,
                    stale_after_ms: ms(self.policy().evaluation.stale_after),
                };
                let mut scratch = Vec::new();
                self.evaluated
                    && ctx.cond(&u.condition, cumulative_window(now, since), &mut scratch)
                        == Ok(true)
            }
        };
        let min_ok = elapsed >= ms(h.min);
        let passes_ok = state.passes >= self.policy().evaluation.passes;
        // `detect` rules: the step advances only once each has excluded its regression.
        let undecided: Vec<String> = self
            .policy()
            .rules
            .iter()
            .zip(&state.rules)
            .filter(|(r, rs)| {
                r.statistical.as_ref().is_some_and(|s| s.detect.is_some())
                    && !rs.evidence.as_ref().is_some_and(|e| e.excluded)
            })
            .map(|(r, _)| format!("`{}`", r.name))
            .collect();
        if min_ok && until_ok && passes_ok && !undecided.is_empty() {
            let rules = undecided.join(", ");
            let max = h.until.as_ref().map(|u| u.max);
            if let Some(max) = max
                && elapsed >= ms(max)
            {
                return self.pause(state, now, Reason::Undecided { rules });
            }
            self.action = "wait";
            self.reason = format!(
                "holding until {rules} {} excluded the `detect` regression at the rule's confidence",
                if undecided.len() == 1 { "has" } else { "have" }
            );
            return;
        }
        if min_ok && until_ok && passes_ok {
            self.event(
                false,
                "HoldPassed",
                format!(
                    "{} passed with {} fresh passing evaluations",
                    self.m.step_label(state.step),
                    state.passes
                ),
            );
            let done = format!(
                "{} done: {} elapsed, {} consecutive passing evaluations{}",
                self.m.step_label(state.step),
                rollout_policy::human_duration(std::time::Duration::from_millis(elapsed)),
                state.passes,
                if h.until.is_some() {
                    ", condition met"
                } else {
                    ""
                }
            );
            self.passes = Some(state.passes);
            self.next_step(state, now);
            self.reason = format!("{done}; next: {}", self.reason);
            self.action = "advance";
            return;
        }
        if let Some(u) = &h.until
            && elapsed >= ms(u.max)
        {
            let otherwise = u.otherwise;
            self.act(state, now, otherwise, Reason::HoldLimit)
        }
    }

    fn evaluate(&mut self, state: &mut State, input: &Input) -> Evaluation {
        let now = input.now;
        let policy = self.policy();
        let ctx = Ctx {
            policy,
            obs: &input.observations,
            now,
            stale_after_ms: ms(policy.evaluation.stale_after),
        };
        let cumulative = cumulative_window(now, Machine::period_start(state).unwrap_or(now));
        let mut ev = Evaluation {
            records: Vec::with_capacity(policy.rules.len()),
            acted: None,
            kinds: Vec::new(),
            passing: true,
        };
        let mut any_pass = false;
        for i in 0..policy.rules.len() {
            let e = self.m.effective(state, i);
            let window = if e.rule.statistical.is_some() {
                cumulative
            } else {
                e.window_ms
            };
            let mut record = RuleRecord {
                rule: e.rule.name.clone(),
                line: e.rule.location.line,
                verdict: Verdict::Pass,
                when: Vec::new(),
                require: Vec::new(),
                test: None,
                window_s: window as f64 / 1000.0,
                failures: 0,
                failures_needed: e.failures,
                breach_s: None,
                acted: false,
                action: e.action,
            };
            let period = Machine::period_start(state).unwrap_or(now);
            let verdict = self.judge(&ctx, &e, (window, period), &mut state.rules[i], &mut record);
            record.verdict = verdict;
            let rs = &mut state.rules[i];
            match verdict {
                Verdict::Fail => {
                    rs.consecutive += 1;
                    rs.total += 1;
                    let since = *rs.breach_since.get_or_insert(now);
                    let count = if e.mode == FailureMode::Total {
                        rs.total
                    } else {
                        rs.consecutive
                    };
                    record.failures = count;
                    record.breach_s = Some(now.saturating_sub(since) as f64 / 1000.0);
                    if count >= e.failures && now.saturating_sub(since) >= e.persistence_ms {
                        record.acted = true;
                        if ev
                            .acted
                            .is_none_or(|(a, _)| severity(e.action) > severity(a))
                        {
                            ev.acted = Some((e.action, i));
                        }
                        // A warning starts the count again; a rollback or pause ends the hold anyway.
                        rs.consecutive = 0;
                        rs.total = 0;
                        rs.breach_since = None;
                    }
                    if e.action != Action::Warn {
                        ev.passing = false;
                    }
                }
                Verdict::Pass => {
                    rs.consecutive = 0;
                    rs.breach_since = None;
                    record.failures = if e.mode == FailureMode::Total {
                        rs.total
                    } else {
                        0
                    };
                    any_pass = true;
                }
                other => {
                    ev.passing = false;
                    if let Some(k) = other.failure_kind()
                        && !ev.kinds.contains(&k)
                    {
                        ev.kinds.push(k);
                    }
                    record.failures = if e.mode == FailureMode::Total {
                        rs.total
                    } else {
                        rs.consecutive
                    };
                }
            }
            ev.records.push(record);
        }
        // Never pass on nothing: at least one rule must have judged the canary.
        ev.passing = ev.passing && any_pass;
        ev
    }

    /// One rule's verdict, in the documented order: query error, guards' data, guards, the
    /// condition's data, the condition.
    fn judge(
        &self,
        ctx: &Ctx<'_>,
        e: &Effective<'_>,
        (window, period): (u64, Millis),
        rs: &mut RuleState,
        record: &mut RuleRecord,
    ) -> Verdict {
        let mut guard_results = Vec::new();
        for g in e.guards {
            guard_results.push(ctx.cond(g, window, &mut record.require));
        }
        let when = ctx.cond(&e.rule.condition, window, &mut record.when);
        let stat = e.rule.statistical.as_ref().map(|s| {
            let count = |arm, m| ctx.metric(arm, m, window);
            (
                s,
                count(Arm::Canary, s.numerator),
                count(Arm::Canary, s.denominator),
                count(Arm::Stable, s.numerator),
                count(Arm::Stable, s.denominator),
            )
        });
        let mut all: Vec<Result<(), Missing>> =
            guard_results.iter().map(|r| r.map(|_| ())).collect();
        all.push(when.map(|_| ()));
        if let Some((s, a, b, c, d)) = &stat {
            all.push(a.map(|_| ()));
            all.push(b.map(|_| ()));
            if matches!(s.baseline, StatBaseline::Relative { .. }) {
                all.push(c.map(|_| ()));
                all.push(d.map(|_| ()));
            }
        }
        if all.contains(&Err(Missing::Error)) {
            return Verdict::QueryError;
        }
        for g in &guard_results {
            if let Err(m) = g {
                return Verdict::from_missing(*m);
            }
        }
        if guard_results.contains(&Ok(false)) {
            return Verdict::Inconclusive;
        }
        let Some((s, x1, n1, x2, n2)) = stat else {
            return match when {
                Ok(true) => Verdict::Fail,
                Ok(false) => Verdict::Pass,
                Err(m) => Verdict::from_missing(m),
            };
        };
        // Statistical rules: counts of this period.
        let rel = matches!(s.baseline, StatBaseline::Relative { .. });
        if let Some(d) = s.detect {
            return sequential_verdict(s, d, (x1, n1, x2, n2), period, rs, record);
        }
        let vals = if rel {
            vec![x1, n1, x2, n2]
        } else {
            vec![x1, n1]
        };
        if let Some(m) = vals.iter().filter_map(|v| v.err()).max() {
            return Verdict::from_missing(m);
        }
        let to_count = |v: Result<f64, Missing>| v.map_or(0, |x| x.max(0.0).round() as u64);
        let (x1, n1, x2, n2) = (to_count(x1), to_count(n1), to_count(x2), to_count(n2));
        if n1 == 0 || (rel && n2 == 0) {
            return Verdict::NoData;
        }
        let x1 = x1.min(n1);
        let x2 = x2.min(n2);
        // A new look only when the canary's trials grew by a quarter: the number of looks grows
        // with the logarithm of the sample, so the alpha spent per look stays useful.
        let new_look =
            rs.looks == 0 || rs.last_look_n == 0 || n1 as f64 >= rs.last_look_n as f64 * 1.25;
        if !new_look {
            // Between looks the last decision stands: no new evidence of a breach.
            return Verdict::Pass;
        }
        rs.looks += 1;
        rs.last_look_n = n1;
        let alpha = stats::alpha_for_look(1.0 - s.confidence, rs.looks);
        let p = match s.baseline {
            StatBaseline::Relative { factor } => stats::rate_ratio_p_value(x1, n1, x2, n2, factor),
            StatBaseline::Absolute { threshold } => stats::proportion_p_value(x1, n1, threshold),
        };
        record.test = Some(TestRecord {
            canary: (x1, n1),
            stable: rel.then_some((x2, n2)),
            p_value: p,
            alpha,
            look: rs.looks,
            safe_p_value: None,
            excluded: None,
        });
        if p <= alpha {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    }
}
/// A statistical rule's four counts as measured: canary events and trials, stable events and
/// trials.
type Counts4 = (
    Result<f64, Missing>,
    Result<f64, Missing>,
    Result<f64, Missing>,
    Result<f64, Missing>,
);

/// The verdict of a `detect` rule: its sequential evidence, pooled over the rollout, updated
/// with the counts of this period ([`sequential::Evidence::look`]). A canary without requests
/// yet, or without a series for them, is no evidence either way: it passes, undecided.
fn sequential_verdict(
    s: &rollout_policy::model::Statistical,
    detect: f64,
    (x1, n1, x2, n2): Counts4,
    period: Millis,
    rs: &mut RuleState,
    record: &mut RuleRecord,
) -> Verdict {
    let (model, rel) = match s.baseline {
        StatBaseline::Relative { factor } => (
            sequential::Model::Relative {
                k: factor,
                d: detect,
            },
            true,
        ),
        StatBaseline::Absolute { threshold } => (
            sequential::Model::Absolute {
                p0: threshold,
                d: detect,
            },
            false,
        ),
    };
    // The stable's series must be there (preflight saw them); the canary's appear with its
    // first request.
    if rel && let Some(m) = [x2, n2].iter().filter_map(|v| v.err()).max() {
        return Verdict::from_missing(m);
    }
    let count = |v: Result<f64, Missing>| v.map_or(0, |x| x.max(0.0).round() as u64);
    let cumulative = [count(x1), count(n1), count(x2), count(n2)];
    let alpha = 1.0 - s.confidence;
    let look = rs
        .evidence
        .get_or_insert_with(sequential::Evidence::default)
        .look(model, period, cumulative, alpha);
    rs.looks += 1;
    record.test = Some(TestRecord {
        canary: (cumulative[0].min(cumulative[1]), cumulative[1]),
        stable: rel.then_some((cumulative[2].min(cumulative[3]), cumulative[3])),
        p_value: look.p_breach(),
        alpha,
        look: rs.looks,
        safe_p_value: Some(look.p_safe()),
        excluded: Some(look.excluded),
    });
    if look.breach {
        Verdict::Fail
    } else {
        Verdict::Pass
    }
}
