//! The checked policy: what the engine compiles and the runner executes. Built only by
//! [`crate::check`], so every value in it has been validated (names resolved, units normalised,
//! durations positive, steps ordered).
//!
//! Units are normalised when the policy is checked: times are seconds, percentages are ratios
//! (`5%` is `0.05`). Metric values observed at run time are normalised with [`Unit::scale`].

use std::time::Duration;

use rollout_diagnostics::Span;
use serde::Serialize;

use crate::template::Template;

/// What the rollout does when a rule fails or a limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send all traffic back to the stable revision.
    Rollback,
    /// Stop advancing until an operator resumes.
    Pause,
    /// Record a warning and continue.
    Warn,
}

impl Action {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Warn => "warn",
        }
    }
}

impl From<rollout_syntax::ast::Action> for Action {
    fn from(a: rollout_syntax::ast::Action) -> Self {
        match a {
            rollout_syntax::ast::Action::Rollback => Action::Rollback,
            rollout_syntax::ast::Action::Pause => Action::Pause,
            rollout_syntax::ast::Action::Warn => Action::Warn,
        }
    }
}

/// Whether a failure count resets on a passing evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// A pass resets the count.
    Consecutive,
    /// Failures accumulate over the step.
    Total,
}

/// The kinds of measurement failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Empty result, NaN or infinity.
    NoData,
    /// The newest sample is older than `stale_after`.
    StaleData,
    /// Prometheus unreachable or the query rejected.
    QueryError,
    /// A minimum-sample guard not met.
    Inconclusive,
}

impl FailureKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            FailureKind::NoData => "no_data",
            FailureKind::StaleData => "stale_data",
            FailureKind::QueryError => "query_error",
            FailureKind::Inconclusive => "inconclusive",
        }
    }
}

/// Index of a metric in [`Policy::metrics`].
pub type MetricId = usize;
/// Index of a rule in [`Policy::rules`].
pub type RuleId = usize;

/// A checked rollout policy.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    /// The rollout's name.
    pub name: String,
    /// The InferenceService it rolls out.
    pub target: Target,
    /// Where metrics come from.
    pub prometheus: PrometheusSource,
    /// Evaluation timing.
    pub evaluation: Evaluation,
    /// Every metric, presets included; referenced by [`MetricId`].
    pub metrics: Vec<Metric>,
    /// The rules, in source order.
    pub rules: Vec<Rule>,
    /// What to do when measurements fail.
    pub failure: FailurePolicy,
    /// The steps, in order; the last is [`StepKind::Promote`].
    pub steps: Vec<Step>,
}

impl Policy {
    /// Looks a metric up by name.
    pub fn metric_id(&self, name: &str) -> Option<MetricId> {
        self.metrics.iter().position(|m| m.name == name)
    }

    /// Looks a rule up by name.
    pub fn rule_id(&self, name: &str) -> Option<RuleId> {
        self.rules.iter().position(|r| r.name == name)
    }
}

/// The InferenceService and component whose canary is rolled out.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// InferenceService name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Component whose `canaryTrafficPercent` is driven.
    pub component: Component,
}

/// An InferenceService component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// `spec.predictor`
    Predictor,
    /// `spec.transformer`
    Transformer,
    /// `spec.explainer`
    Explainer,
}

impl Component {
    /// The field name in the InferenceService spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Predictor => "predictor",
            Component::Transformer => "transformer",
            Component::Explainer => "explainer",
        }
    }
}

/// The Prometheus server and how to authenticate to it (by reference only).
#[derive(Clone, Debug, Serialize)]
pub struct PrometheusSource {
    /// Base URL.
    pub url: String,
    /// Credentials, by reference.
    pub auth: Auth,
    /// The scrape interval, if declared (enables the rate-window lint).
    #[serde(with = "opt_secs")]
    pub scrape_interval: Option<Duration>,
    /// Per-query timeout.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

/// Credential references. Never the credentials themselves.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Auth {
    /// File holding a bearer token.
    pub token_file: Option<String>,
    /// Environment variable holding a bearer token.
    pub token_env: Option<String>,
    /// File holding `user:password`.
    pub basic_auth_file: Option<String>,
    /// CA bundle for TLS.
    pub ca_file: Option<String>,
    /// Skip TLS verification.
    pub insecure: bool,
}

/// Evaluation timing.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// Time between evaluations.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Default query window (`${window}`).
    #[serde(with = "secs")]
    pub window: Duration,
    /// The whole rollout must finish within this; otherwise it rolls back.
    #[serde(with = "secs")]
    pub deadline: Duration,
    /// Consecutive fresh passing evaluations needed to end a hold.
    pub passes: u32,
    /// A sample older than this is stale.
    #[serde(with = "secs")]
    pub stale_after: Duration,
    /// How long the cluster may take to apply a traffic change before the rollout rolls back.
    #[serde(with = "secs")]
    pub settle_timeout: Duration,
}

/// The declared unit of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A fraction in 0..1.
    Ratio,
    /// A fraction in 0..100.
    Percent,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
    /// A count of events in the window.
    Count,
    /// Events per second.
    Rps,
}

impl Unit {
    /// Parses a unit name.
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s {
            "ratio" => Unit::Ratio,
            "percent" => Unit::Percent,
            "ms" => Unit::Ms,
            "s" => Unit::S,
            "count" => Unit::Count,
            "rps" => Unit::Rps,
            _ => return None,
        })
    }

    /// The unit's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ratio => "ratio",
            Unit::Percent => "percent",
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::Count => "count",
            Unit::Rps => "rps",
        }
    }

    /// Multiply an observed value by this to normalise it (ms to s, percent to ratio).
    pub fn scale(self) -> f64 {
        match self {
            Unit::Percent => 0.01,
            Unit::Ms => 0.001,
            _ => 1.0,
        }
    }

    /// The kind of quantity.
    pub fn dim(self) -> Dim {
        match self {
            Unit::Ratio | Unit::Percent => Dim::Ratio,
            Unit::Ms | Unit::S => Dim::Time,
            Unit::Count => Dim::Count,
            Unit::Rps => Dim::Rate,
        }
    }
}

/// The kind of a value in an expression (after normalisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    /// A plain number.
    Scalar,
    /// A fraction (0..1).
    Ratio,
    /// A duration in seconds.
    Time,
    /// A count.
    Count,
    /// Events per second.
    Rate,
    /// True or false.
    Bool,
}

impl Dim {
    /// How the kind is named in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Dim::Scalar => "a plain number",
            Dim::Ratio => "a ratio",
            Dim::Time => "a duration",
            Dim::Count => "a count",
            Dim::Rate => "a rate (per second)",
            Dim::Bool => "a condition",
        }
    }
}

/// Where a metric definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `use <preset>`.
    Preset(&'static str),
    /// A `metric` declaration.
    User,
}

/// A metric: a PromQL template per arm, or an expression over other metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    /// Name.
    pub name: String,
    /// Declared or inferred unit.
    pub unit: Unit,
    /// Kind after normalisation.
    pub dim: Dim,
    /// How it is computed.
    pub kind: MetricKind,
    /// Where it was defined.
    pub origin: Origin,
    /// Where (the `use` or `metric` declaration).
    pub span: Span,
}

/// How a metric is computed.
#[derive(Clone, Debug, Serialize)]
pub enum MetricKind {
    /// Queried from Prometheus, once per arm.
    Query(Template),
    /// Computed from other metrics of the same arm (values already normalised).
    Derived(MetricExpr),
}

/// Arithmetic over metrics of one arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MetricExpr {
    /// Another metric.
    Metric(MetricId),
    /// A constant (normalised).
    Const(f64),
    /// Negation.
    Neg(Box<MetricExpr>),
    /// Arithmetic.
    Arith(ArithOp, Box<MetricExpr>, Box<MetricExpr>),
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// Which revision a metric is read from.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    /// The new revision (`latestRevision: true`).
    Canary,
    /// The last rolled-out revision (tag `prev`).
    Stable,
}

impl Arm {
    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Canary => "canary",
            Arm::Stable => "stable",
        }
    }
}

/// A typed condition or value in a rule (values normalised).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Expr {
    /// A constant.
    Const(f64),
    /// A metric of one arm.
    Metric {
        /// Which revision.
        arm: Arm,
        /// Which metric.
        metric: MetricId,
    },
    /// Negation.
    Neg(Box<Expr>),
    /// Arithmetic.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// Comparison.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Negation of a condition.
    Not(Box<Expr>),
}

impl Expr {
    /// Every (arm, metric) the expression reads, in first-use order, without duplicates.
    pub fn metrics(&self) -> Vec<(Arm, MetricId)> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<(Arm, MetricId)>) {
        match self {
            Expr::Const(_) => {}
            Expr::Metric { arm, metric } => {
                if !out.contains(&(*arm, *metric)) {
                    out.push((*arm, *metric));
                }
            }
            Expr::Neg(x) | Expr::Not(x) => x.collect(out),
            Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }
}

/// A statistical breach test on counts: the canary's ratio `numerator / denominator` is
/// greater than `factor ×` the stable's (or than `threshold`) with the given confidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Statistical {
    /// The ratio metric (e.g. `error_rate`).
    pub ratio: MetricId,
    /// The counted events (e.g. `errors`).
    pub numerator: MetricId,
    /// The counted trials (e.g. `requests`).
    pub denominator: MetricId,
    /// The comparison.
    pub baseline: StatBaseline,
    /// Confidence, e.g. `0.95`.
    pub confidence: f64,
    /// `detect`: the smallest regression that matters, as a factor of the stable's ratio
    /// (relative) or a ratio (absolute). With it the rule is judged by always-valid sequential
    /// tests pooled over the rollout, and a step advances only once this regression is
    /// excluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<f64>,
}

/// What the canary's ratio is compared with in a statistical rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatBaseline {
    /// `factor × stable`.
    Relative {
        /// The factor (1.0 for `canary.m > stable.m`).
        factor: f64,
    },
    /// A fixed ratio.
    Absolute {
        /// The threshold.
        threshold: f64,
    },
}

/// A checked rule.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// The declared name, or `rule-<n>` (1-based) for an anonymous rule.
    pub name: String,
    /// The breach condition.
    pub condition: Expr,
    /// Present for `with confidence` rules: judged by a test on counts instead of `condition`.
    pub statistical: Option<Statistical>,
    /// Minimum-sample guards; any false means inconclusive.
    pub guards: Vec<Expr>,
    /// How long a breach must persist.
    #[serde(with = "secs")]
    pub persistence: Duration,
    /// Failing evaluations needed.
    pub failures: u32,
    /// Whether a pass resets the failure count.
    pub failure_mode: FailureMode,
    /// Query window.
    #[serde(with = "secs")]
    pub window: Duration,
    /// What a breach does.
    pub action: Action,
    /// Source location.
    pub location: Location,
}

/// A place in the policy file, for runtime messages ("rule at line 24").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Byte span.
    pub span: Span,
    /// 1-based line.
    pub line: usize,
}

/// How to respond to a measurement failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Act at once.
    Act(Action),
    /// Keep holding (without counting passes); after `limit`, act.
    Hold {
        /// How long the failure may last, and the action after it. `None`: until the step's own
        /// limits or the deadline.
        #[serde(with = "opt_limit")]
        limit: Option<(Duration, Action)>,
    },
}

/// Responses to each kind of measurement failure.
#[derive(Clone, Debug, Serialize)]
pub struct FailurePolicy {
    /// Empty result or NaN.
    pub no_data: Response,
    /// Sample older than `stale_after`.
    pub stale_data: Response,
    /// Prometheus unreachable or the query rejected.
    pub query_error: Response,
    /// A minimum-sample guard not met.
    pub inconclusive: Response,
}

impl FailurePolicy {
    /// The response for a kind.
    pub fn get(&self, kind: FailureKind) -> Response {
        match kind {
            FailureKind::NoData => self.no_data,
            FailureKind::StaleData => self.stale_data,
            FailureKind::QueryError => self.query_error,
            FailureKind::Inconclusive => self.inconclusive,
        }
    }
}

/// A checked step with its location.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What the step does.
    pub kind: StepKind,
    /// Where.
    pub location: Location,
}

/// What a step does.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Set the canary's traffic share (1..=99).
    Traffic {
        /// Percent.
        percent: u8,
    },
    /// Measure the canary.
    Hold(Hold),
    /// Wait for an operator.
    Approval {
        /// Time limit.
        #[serde(with = "opt_secs")]
        max: Option<Duration>,
        /// What to do at the limit.
        otherwise: Action,
    },
    /// Send all traffic to the canary.
    Promote,
}

/// A checked hold.
#[derive(Clone, Debug, Serialize)]
pub struct Hold {
    /// Minimum duration (zero when only a traffic condition is given).
    #[serde(with = "secs")]
    pub min: Duration,
    /// Traffic condition.
    pub until: Option<HoldUntil>,
    /// Per-step rule overrides.
    pub overrides: Vec<RuleOverride>,
}

/// `until <cond> max <d> else <action>`.
#[derive(Clone, Debug, Serialize)]
pub struct HoldUntil {
    /// The condition.
    pub condition: Expr,
    /// The time limit.
    #[serde(with = "secs")]
    pub max: Duration,
    /// What to do at the limit (rollback or pause).
    pub otherwise: Action,
}

/// A per-step change to a rule.
#[derive(Clone, Debug, Serialize)]
pub struct RuleOverride {
    /// Which rule.
    pub rule: RuleId,
    /// New persistence.
    #[serde(with = "opt_secs")]
    pub persistence: Option<Duration>,
    /// New failure count and mode.
    pub failures: Option<(u32, FailureMode)>,
    /// New window.
    #[serde(with = "opt_secs")]
    pub window: Option<Duration>,
    /// Extra guards.
    pub guards: Vec<Expr>,
    /// New action.
    pub action: Option<Action>,
}

mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

mod opt_limit {
    use std::time::Duration;

    use super::Action;
    pub fn serialize<S: serde::Serializer>(
        d: &Option<(Duration, Action)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some((d, a)) => s.serialize_some(&(d.as_secs_f64(), a.keyword())),
            None => s.serialize_none(),
        }
    }
}
