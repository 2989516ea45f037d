//! The syntax tree of a `.rollout` file. Every node carries the [`Span`] it was parsed from.
//!
//! The tree is purely syntactic: names are not resolved and units are not checked. That is the
//! policy stage's job (`rollout-policy`), which turns this tree into a checked policy.

pub use rollout_diagnostics::Span;

/// A parsed file: one rollout and the comments found in it (kept for the formatter).
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// The `rollout "<name>" { ... }` declaration.
    pub rollout: Rollout,
    /// Comments in source order.
    pub comments: Vec<Comment>,
}

/// A `#` or `//` comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    /// The comment text including its marker (`# ...` or `// ...`), without the line end.
    pub text: String,
    /// Where.
    pub span: Span,
}

/// `rollout "<name>" { items }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// The rollout's name.
    pub name: StrLit,
    /// Declarations in source order.
    pub items: Vec<Item>,
    /// The whole declaration.
    pub span: Span,
}

/// A top-level declaration inside `rollout { ... }`.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `target { ... }`, `prometheus { ... }`, `evaluation { ... }`.
    Block(SettingsBlock),
    /// `use <preset>`.
    Use(UseDecl),
    /// `metric <name> ...`.
    Metric(MetricDecl),
    /// `rule [<name>] { ... }`.
    Rule(RuleDecl),
    /// `on <failure> <response>`.
    On(OnDecl),
    /// `steps { ... }`.
    Steps(StepsDecl),
}

impl Item {
    /// The item's span.
    pub fn span(&self) -> Span {
        match self {
            Item::Block(b) => b.span,
            Item::Use(u) => u.span,
            Item::Metric(m) => m.span,
            Item::Rule(r) => r.span,
            Item::On(o) => o.span,
            Item::Steps(s) => s.span,
        }
    }
}

/// Which settings block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// `target`: the InferenceService.
    Target,
    /// `prometheus`: where metrics come from.
    Prometheus,
    /// `evaluation`: interval, window, deadline.
    Evaluation,
}

impl BlockKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            BlockKind::Target => "target",
            BlockKind::Prometheus => "prometheus",
            BlockKind::Evaluation => "evaluation",
        }
    }
}

/// `<kind> { key = value ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingsBlock {
    /// Which block.
    pub kind: BlockKind,
    /// The keyword's span.
    pub keyword_span: Span,
    /// Settings in source order.
    pub settings: Vec<Setting>,
    /// The whole block.
    pub span: Span,
}

/// `key = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The key.
    pub key: Ident,
    /// The value.
    pub value: Value,
    /// The whole setting.
    pub span: Span,
}

/// A setting's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string.
    Str(StrLit),
    /// A number with an optional unit.
    Quantity(Quantity),
    /// `true` or `false`.
    Bool(bool, Span),
    /// A bare word such as `predictor` or `ms`.
    Ident(Ident),
}

impl Value {
    /// The value's span.
    pub fn span(&self) -> Span {
        match self {
            Value::Str(s) => s.span,
            Value::Quantity(q) => q.span,
            Value::Bool(_, s) => *s,
            Value::Ident(i) => i.span,
        }
    }
}

/// An identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// Its text.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A string literal, with escapes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrLit {
    /// The value after escape processing.
    pub value: String,
    /// Written as a `"""raw"""` string.
    pub raw: bool,
    /// Where (including quotes).
    pub span: Span,
}

/// A unit suffix as written after a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitSuffix {
    /// `ms`
    Millis,
    /// `s`
    Seconds,
    /// `m`
    Minutes,
    /// `h`
    Hours,
    /// `d`
    Days,
    /// `%`
    Percent,
    /// `x`: a factor (`detect 2x`).
    Times,
}

impl UnitSuffix {
    /// The suffix as written.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitSuffix::Millis => "ms",
            UnitSuffix::Seconds => "s",
            UnitSuffix::Minutes => "m",
            UnitSuffix::Hours => "h",
            UnitSuffix::Days => "d",
            UnitSuffix::Percent => "%",
            UnitSuffix::Times => "x",
        }
    }

    /// Parses a suffix.
    pub fn parse(s: &str) -> Option<UnitSuffix> {
        Some(match s {
            "ms" => UnitSuffix::Millis,
            "s" => UnitSuffix::Seconds,
            "m" => UnitSuffix::Minutes,
            "h" => UnitSuffix::Hours,
            "d" => UnitSuffix::Days,
            "%" => UnitSuffix::Percent,
            "x" => UnitSuffix::Times,
            _ => return None,
        })
    }

    /// Milliseconds per unit, for time suffixes.
    pub fn millis(self) -> Option<u64> {
        Some(match self {
            UnitSuffix::Millis => 1,
            UnitSuffix::Seconds => 1_000,
            UnitSuffix::Minutes => 60_000,
            UnitSuffix::Hours => 3_600_000,
            UnitSuffix::Days => 86_400_000,
            UnitSuffix::Percent | UnitSuffix::Times => return None,
        })
    }
}

/// A number with an optional unit: `1.5`, `2000`, `50%`, `200ms`, `2m`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    /// The digits as written (kept so the formatter does not change `0.50` to `0.5`).
    pub digits: String,
    /// The numeric value of the digits (unit not applied).
    pub value: f64,
    /// The unit suffix.
    pub unit: Option<UnitSuffix>,
    /// Where.
    pub span: Span,
}

impl Quantity {
    /// The value in milliseconds, if this is a duration that fits.
    pub fn as_millis(&self) -> Option<u64> {
        let per = self.unit?.millis()?;
        let ms = self.value * per as f64;
        (ms.is_finite() && ms >= 0.0 && ms <= u64::MAX as f64 / 2.0).then_some(ms.round() as u64)
    }

    /// The text as written, e.g. `5m`.
    pub fn text(&self) -> String {
        format!(
            "{}{}",
            self.digits,
            self.unit.map_or("", UnitSuffix::as_str)
        )
    }
}

/// `use <preset>`.
#[derive(Clone, Debug, PartialEq)]
pub struct UseDecl {
    /// The preset's name.
    pub preset: Ident,
    /// Where.
    pub span: Span,
}

/// `metric <name> { settings }` or `metric <name> = <expr>`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricDecl {
    /// The metric's name.
    pub name: Ident,
    /// Its definition.
    pub def: MetricDef,
    /// Where.
    pub span: Span,
}

/// How a metric is defined.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricDef {
    /// A PromQL template with settings (`query`, `unit`).
    Query(Vec<Setting>),
    /// Derived from other metrics: `errors / requests`.
    Derived(Expr),
}

/// `rule [<name>] { statements }`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleDecl {
    /// The optional name, e.g. `CanaryHigherErrorRate`.
    pub name: Option<Ident>,
    /// Statements in source order.
    pub stmts: Vec<RuleStmt>,
    /// Where.
    pub span: Span,
}

/// A statement inside a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleStmt {
    /// `when <condition> [with confidence <p>]`: the breach condition.
    When {
        /// The condition that means "the canary is worse".
        cond: Expr,
        /// `with confidence 95%`: judge with a statistical test at this confidence.
        confidence: Option<Quantity>,
        /// `detect 2x`: the smallest regression that matters; a step advances only once the
        /// test has excluded it.
        detect: Option<Quantity>,
        /// Where.
        span: Span,
    },
    /// `for <duration>`: the breach must persist this long.
    For(Quantity, Span),
    /// `failures <n> [consecutive|total]`.
    Failures {
        /// How many failing evaluations.
        count: Quantity,
        /// Whether a pass resets the count.
        mode: Option<FailureMode>,
        /// Where.
        span: Span,
    },
    /// `require <condition>`: minimum-sample guard; false means inconclusive.
    Require(Expr, Span),
    /// `action rollback|pause|warn`.
    Action(ActionKw, Span),
    /// `window <duration>`: the query window for this rule.
    Window(Quantity, Span),
}

impl RuleStmt {
    /// The statement's span.
    pub fn span(&self) -> Span {
        match self {
            RuleStmt::When { span, .. }
            | RuleStmt::For(_, span)
            | RuleStmt::Failures { span, .. }
            | RuleStmt::Require(_, span)
            | RuleStmt::Action(_, span)
            | RuleStmt::Window(_, span) => *span,
        }
    }
}

/// Whether a failure count resets on a passing evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// A pass resets the count (the default).
    Consecutive,
    /// Failures accumulate over the step.
    Total,
}

/// An action keyword with its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionKw {
    /// Which action.
    pub action: Action,
    /// Where.
    pub span: Span,
}

/// What the rollout does when a rule fails or a failure limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// `on <kind> <response>`.
#[derive(Clone, Debug, PartialEq)]
pub struct OnDecl {
    /// Which failure.
    pub kind: FailureKind,
    /// The keyword's span.
    pub kind_span: Span,
    /// What to do.
    pub response: OnResponse,
    /// Where.
    pub span: Span,
}

/// The kinds of measurement failure a policy can handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The query returned no series, or NaN.
    NoData,
    /// The newest sample is older than allowed.
    StaleData,
    /// Prometheus could not be reached or rejected the query.
    QueryError,
    /// A minimum-sample guard was not met.
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

/// The response to a measurement failure.
#[derive(Clone, Debug, PartialEq)]
pub enum OnResponse {
    /// Act at once.
    Act(ActionKw),
    /// `hold [<limit> then <action>]`: keep holding; after the limit, act.
    Hold {
        /// How long the failure may last, and what to do then.
        limit: Option<(Quantity, ActionKw)>,
        /// Where.
        span: Span,
    },
}

/// `steps { ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepsDecl {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The keyword's span.
    pub keyword_span: Span,
    /// Where.
    pub span: Span,
}

/// One step of the rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `traffic <n>%`: set the canary's share of traffic.
    Traffic(Quantity, Span),
    /// `hold ...`: measure the canary at the current traffic.
    Hold(Hold),
    /// `approval [max <d> [else <action>]]`: wait for an operator.
    Approval {
        /// Time limit and what to do when it passes.
        max: Option<(Quantity, Option<ActionKw>)>,
        /// Where.
        span: Span,
    },
    /// `promote`: send all traffic to the canary.
    Promote(Span),
}

impl Step {
    /// The step's span.
    pub fn span(&self) -> Span {
        match self {
            Step::Traffic(_, s) | Step::Promote(s) | Step::Approval { span: s, .. } => *s,
            Step::Hold(h) => h.span,
        }
    }
}

/// `hold [<d>] [until <cond> max <d> [else <action>]] [{ overrides }]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// Minimum duration.
    pub duration: Option<Quantity>,
    /// Traffic condition with its time limit.
    pub until: Option<HoldUntil>,
    /// Per-step rule overrides.
    pub overrides: Vec<RuleDecl>,
    /// Where.
    pub span: Span,
}

/// `until <cond> max <d> [else <action>]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldUntil {
    /// The condition that ends the hold, e.g. `canary.requests >= 2000`.
    pub cond: Expr,
    /// The time limit.
    pub max: Quantity,
    /// What to do when the limit passes without the condition (default: rollback).
    pub otherwise: Option<ActionKw>,
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What kind of expression.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number with an optional unit.
    Number(Quantity),
    /// A dotted name: `canary.error_rate`, `errors`.
    Path(Vec<Ident>),
    /// `-x`, `not x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `(x)`, kept so formatting preserves the author's grouping.
    Paren(Box<Expr>),
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-`
    Neg,
    /// `not`
    Not,
}

/// Infix operators, loosest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `or`
    Or,
    /// `and`
    And,
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
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl BinaryOp {
    /// Binding power: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Eq
            | BinaryOp::Ne => 3,
            BinaryOp::Add | BinaryOp::Sub => 4,
            BinaryOp::Mul | BinaryOp::Div => 5,
        }
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }

    /// Whether this is a comparison.
    pub fn is_comparison(self) -> bool {
        self.precedence() == 3
    }
}
