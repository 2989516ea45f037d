//! Evaluating rule conditions against observations: values, verdicts and the record of how each
//! verdict was reached. Pure functions of the policy, the observations and the time.

use rollout_policy::model::{ArithOp, Arm, CmpOp, Expr, MetricExpr, MetricId, MetricKind, Policy};

use serde::{Deserialize, Serialize};

use crate::Millis;

/// One query the machine needs answered: a metric of an arm over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueryKey {
    /// Which revision.
    pub arm: Arm,
    /// Which (query) metric.
    pub metric: MetricId,
    /// The window substituted for `${window}`, in milliseconds.
    pub window_ms: u64,
}

/// What a query returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Sample {
    /// A value, in the metric's declared unit, and the time of the newest sample behind it.
    Value {
        /// The value.
        value: f64,
        /// When it was sampled (ms).
        at: Millis,
    },
    /// An empty result.
    NoData,
    /// The query failed.
    Error {
        /// Why (never contains credentials: the runner redacts).
        message: String,
    },
}

/// The status of a value that is not usable, worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Older than `stale_after`.
    Stale,
    /// Empty, NaN or infinite.
    NoData,
    /// The query failed.
    Error,
}

/// A value or why there is none.
pub type Val = Result<f64, Missing>;

/// The observations of one evaluation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Observations {
    /// Answers, by query.
    pub samples: Vec<(QueryKey, Sample)>,
}

impl Observations {
    /// The answer for a query, if given.
    pub fn get(&self, key: &QueryKey) -> Option<&Sample> {
        self.samples.iter().find(|(k, _)| k == key).map(|(_, s)| s)
    }

    /// Adds an answer.
    pub fn push(&mut self, key: QueryKey, sample: Sample) {
        self.samples.push((key, sample));
    }
}

/// Context for evaluating values at one instant.
pub(crate) struct Ctx<'a> {
    pub policy: &'a Policy,
    pub obs: &'a Observations,
    pub now: Millis,
    pub stale_after_ms: u64,
}

impl Ctx<'_> {
    /// A query metric's normalised value.
    fn query_value(&self, arm: Arm, metric: MetricId, window_ms: u64) -> Val {
        let key = QueryKey {
            arm,
            metric,
            window_ms,
        };
        match self.obs.get(&key) {
            None => Err(Missing::NoData),
            Some(Sample::NoData) => Err(Missing::NoData),
            Some(Sample::Error { .. }) => Err(Missing::Error),
            Some(Sample::Value { value, at }) => {
                if !value.is_finite() {
                    Err(Missing::NoData)
                } else if self.now.saturating_sub(*at) > self.stale_after_ms {
                    Err(Missing::Stale)
                } else {
                    let scale = self
                        .policy
                        .metrics
                        .get(metric)
                        .map_or(1.0, |m| m.unit.scale());
                    Ok(value * scale)
                }
            }
        }
    }

    /// A metric's normalised value (derived metrics computed from their inputs).
    pub fn metric(&self, arm: Arm, metric: MetricId, window_ms: u64) -> Val {
        match self.policy.metrics.get(metric).map(|m| &m.kind) {
            Some(MetricKind::Query(_)) => self.query_value(arm, metric, window_ms),
            Some(MetricKind::Derived(e)) => finite(self.metric_expr(arm, e, window_ms)),
            None => Err(Missing::NoData),
        }
    }

    fn metric_expr(&self, arm: Arm, e: &MetricExpr, window_ms: u64) -> Val {
        match e {
            MetricExpr::Metric(m) => self.metric(arm, *m, window_ms),
            MetricExpr::Const(v) => Ok(*v),
            MetricExpr::Neg(x) => self.metric_expr(arm, x, window_ms).map(|v| -v),
            MetricExpr::Arith(op, a, b) => {
                let (a, b) = both(
                    self.metric_expr(arm, a, window_ms),
                    self.metric_expr(arm, b, window_ms),
                )?;
                finite(Ok(arith(*op, a, b)))
            }
        }
    }

    /// A numeric expression's value.
    pub fn num(&self, e: &Expr, window_ms: u64) -> Val {
        match e {
            Expr::Const(v) => Ok(*v),
            Expr::Metric { arm, metric } => self.metric(*arm, *metric, window_ms),
            Expr::Neg(x) => self.num(x, window_ms).map(|v| -v),
            Expr::Arith(op, a, b) => {
                let (a, b) = both(self.num(a, window_ms), self.num(b, window_ms))?;
                finite(Ok(arith(*op, a, b)))
            }
            // Conditions are not numbers; the checker never produces this.
            Expr::Cmp(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(..) => Err(Missing::NoData),
        }
    }

    /// A condition's truth, recording every comparison it makes. No short-circuit: a missing
    /// value anywhere makes the whole condition missing.
    pub fn cond(
        &self,
        e: &Expr,
        window_ms: u64,
        out: &mut Vec<Comparison>,
    ) -> Result<bool, Missing> {
        match e {
            Expr::Cmp(op, a, b) => {
                let (l, r) =
                    both(self.num(a, window_ms), self.num(b, window_ms)).inspect_err(|m| {
                        out.push(Comparison {
                            lhs: None,
                            op: *op,
                            rhs: None,
                            holds: None,
                            missing: Some(*m),
                        })
                    })?;
                let holds = match op {
                    CmpOp::Gt => l > r,
                    CmpOp::Ge => l >= r,
                    CmpOp::Lt => l < r,
                    CmpOp::Le => l <= r,
                    CmpOp::Eq => l == r,
                    CmpOp::Ne => l != r,
                };
                out.push(Comparison {
                    lhs: Some(l),
                    op: *op,
                    rhs: Some(r),
                    holds: Some(holds),
                    missing: None,
                });
                Ok(holds)
            }
            Expr::And(a, b) => {
                let (x, y) = both_bool(self.cond(a, window_ms, out), self.cond(b, window_ms, out))?;
                Ok(x && y)
            }
            Expr::Or(a, b) => {
                let (x, y) = both_bool(self.cond(a, window_ms, out), self.cond(b, window_ms, out))?;
                Ok(x || y)
            }
            Expr::Not(x) => self.cond(x, window_ms, out).map(|v| !v),
            Expr::Const(_) | Expr::Metric { .. } | Expr::Neg(_) | Expr::Arith(..) => {
                Err(Missing::NoData)
            }
        }
    }
}

/// One comparison made while evaluating a condition: the numbers behind a verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Left value (normalised: seconds, ratios).
    pub lhs: Option<f64>,
    /// The operator.
    pub op: CmpOp,
    /// Right value: the threshold.
    pub rhs: Option<f64>,
    /// Whether it held.
    pub holds: Option<bool>,
    /// Why a value was missing.
    pub missing: Option<Missing>,
}

fn arith(op: ArithOp, a: f64, b: f64) -> f64 {
    match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => a / b,
    }
}

fn finite(v: Val) -> Val {
    match v {
        Ok(x) if !x.is_finite() => Err(Missing::NoData),
        other => other,
    }
}

/// Both values, or the worse of the two reasons one is missing.
fn both(a: Val, b: Val) -> Result<(f64, f64), Missing> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(x), Err(y)) => Err(x.max(y)),
        (Err(x), _) | (_, Err(x)) => Err(x),
    }
}

fn both_bool(a: Result<bool, Missing>, b: Result<bool, Missing>) -> Result<(bool, bool), Missing> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(x), Err(y)) => Err(x.max(y)),
        (Err(x), _) | (_, Err(x)) => Err(x),
    }
}

/// The query metrics (with arms) an expression reads, derived metrics expanded.
pub(crate) fn base_queries(policy: &Policy, e: &Expr, out: &mut Vec<(Arm, MetricId)>) {
    for (arm, m) in e.metrics() {
        expand(policy, arm, m, out);
    }
}

/// Expands a metric into the query metrics it is computed from.
pub(crate) fn expand(policy: &Policy, arm: Arm, m: MetricId, out: &mut Vec<(Arm, MetricId)>) {
    match policy.metrics.get(m).map(|x| &x.kind) {
        Some(MetricKind::Query(_)) if !out.contains(&(arm, m)) => out.push((arm, m)),
        Some(MetricKind::Query(_)) => {}
        Some(MetricKind::Derived(e)) => {
            let mut ids = Vec::new();
            metric_expr_ids(e, &mut ids);
            for id in ids {
                expand(policy, arm, id, out);
            }
        }
        None => {}
    }
}

fn metric_expr_ids(e: &MetricExpr, out: &mut Vec<MetricId>) {
    match e {
        MetricExpr::Metric(m) => out.push(*m),
        MetricExpr::Const(_) => {}
        MetricExpr::Neg(x) => metric_expr_ids(x, out),
        MetricExpr::Arith(_, a, b) => {
            metric_expr_ids(a, out);
            metric_expr_ids(b, out);
        }
    }
}
