//! Which queries many rollouts can share, and the one query that answers for all of them.
//!
//! A policy's query asks about one revision: its template holds `${revision}` as a label value,
//! as in `revision_name="${revision}"`. The controller asks Prometheus once for every revision
//! instead: the matcher becomes `revision_name=~".+"` (keeping any text around the revision,
//! `destination_workload=~".+-deployment"`), every aggregation keeps that label
//! (`sum(…)` becomes `sum by (revision_name) (…)`), and the answer is split by it.
//!
//! That is only the same answer when no step of the query combines series of two revisions.
//! The rule, checked on the parsed query (promql-parser), is:
//!
//! * the revision appears only as `LABEL="prefix${revision}suffix"`, one label for the whole
//!   query, and every selector has that matcher;
//! * aggregations are `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar` (without
//!   a parameter; `by` gains the label, `without` must not drop it);
//! * functions are ones that keep every label of each series (`rate`, `increase`,
//!   `histogram_quantile`, `clamp_min`, `*_over_time`, …); `label_replace`, `vector`, `absent`,
//!   `scalar`, `sort`, `time` and the like are not shared;
//! * vector matching (`on`/`ignoring`) keeps the label, and `and`/`or`/`unless` then match
//!   revision by revision;
//! * or the matching is a join that copies the label from its "one" side, which selects by
//!   revision: `x * on (job, instance) group_left (kn_revision_name) target_info{kn_revision_name="${revision}"}`
//!   (Knative ≥ 1.19 keeps the revision only in `target_info`). Each series of `x` matches at
//!   most one `target_info` series (more is an error in either form) and takes its revision
//!   from it, so `x` itself need not select by revision.
//!
//! Every series of the shared answer then carries the label, and the series with the value of
//! revision `r` are exactly the series the rollout's own query for `r` returns. A query outside
//! the rule is asked per rollout, as before.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier};

/// A revision value that never occurs in a real query: the template is rendered with it, and
/// the parsed query is searched for it.
pub const SENTINEL: &str = "rolloutctl0revision0sentinel";

/// The query that answers one template for every revision at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedQuery {
    /// PromQL returning one series per revision (or none for a revision without data).
    pub promql: String,
    /// The label carrying the revision.
    pub label: String,
    prefix: String,
    suffix: String,
}

impl SharedQuery {
    /// The revision a series belongs to, from its value of [`SharedQuery::label`].
    pub fn revision_of<'a>(&self, value: &'a str) -> Option<&'a str> {
        let r = value
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!r.is_empty()).then_some(r)
    }
}

/// Why a query is asked per rollout rather than shared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotShared {
    /// The query does not parse (the checker reports this; here it is only not shared).
    #[error("the query does not parse: {0}")]
    Parse(String),
    /// `${revision}` is not an exact label value, or more than one label carries it.
    #[error("the revision is not one exact label value (`LABEL=\"${{revision}}\"`)")]
    RevisionMatcher,
    /// A selector without the revision matcher would mix every revision's series.
    #[error("a selector does not select by revision")]
    SelectorWithoutRevision,
    /// An aggregation that compares or ranks series (`topk`, `quantile`, …) or drops the label.
    #[error("aggregation `{0}` combines revisions")]
    Aggregation(String),
    /// A function that adds, drops or rewrites labels.
    #[error("function `{0}` changes labels")]
    Function(String),
    /// Vector matching that ignores the revision label.
    #[error("vector matching ignores the revision label")]
    Matching,
    /// Something else this rule does not cover.
    #[error("{0} is not shared")]
    Other(&'static str),
}

/// Aggregations that keep a `by` label's groups apart and need no parameter.
const AGGREGATIONS: [&str; 8] = [
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
];

/// Functions that map each series to a series with the same labels (or, for
/// `histogram_quantile`, the same labels without `le`).
const FUNCTIONS: [&str; 43] = [
    "abs",
    "ceil",
    "floor",
    "round",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "sgn",
    "clamp",
    "clamp_min",
    "clamp_max",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "resets",
    "changes",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    "timestamp",
    "double_exponential_smoothing",
    "holt_winters",
];

/// The shared form of a query that was rendered with `render(revision)`, or why there is none.
pub fn shared(render: impl Fn(&str) -> String) -> Result<SharedQuery, NotShared> {
    shared_text(&render(SENTINEL))
}

/// The shared form of a query rendered with [`SENTINEL`] as its revision.
pub fn shared_text(text: &str) -> Result<SharedQuery, NotShared> {
    let mut expr = parser::parse(text).map_err(NotShared::Parse)?;
    let mut found: Option<(String, String, String)> = None;
    rewrite(&mut expr, &mut found)?;
    let Some((label, prefix, suffix)) = found else {
        return Err(NotShared::RevisionMatcher);
    };
    // Aggregations were given the label during the walk only once it was known; a second pass
    // adds it to every aggregation.
    add_label(&mut expr, &label)?;
    Ok(SharedQuery {
        promql: expr.to_string(),
        label,
        prefix,
        suffix,
    })
}

/// Replaces the revision matcher in every selector and checks every node against the rule.
fn rewrite(e: &mut Expr, found: &mut Option<(String, String, String)>) -> Result<(), NotShared> {
    if filtered(e, found)? {
        Ok(())
    } else {
        Err(NotShared::SelectorWithoutRevision)
    }
}

/// The labels a `group_left (…)`/`group_right (…)` join copies from its "one" side, and
/// whether that side is the right one, for `on (…)` matching.
fn join_labels(b: &parser::BinaryExpr) -> Option<(&[String], bool)> {
    let m = b.modifier.as_ref()?;
    if !matches!(m.matching, Some(LabelModifier::Include(_))) {
        return None;
    }
    match &m.card {
        parser::VectorMatchCardinality::ManyToOne(ls) => Some((&ls.labels, true)),
        parser::VectorMatchCardinality::OneToMany(ls) => Some((&ls.labels, false)),
        _ => None,
    }
}

/// Whether `e`'s series are each one revision's (every selector below filters on the revision,
/// or a join copies the revision label from a side that does); rewrites the matchers.
fn filtered(e: &mut Expr, found: &mut Option<(String, String, String)>) -> Result<bool, NotShared> {
    match e {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if a.param.is_some() || !AGGREGATIONS.contains(&op.as_str()) {
                return Err(NotShared::Aggregation(op));
            }
            filtered(&mut a.expr, found)
        }
        Expr::Unary(u) => filtered(&mut u.expr, found),
        Expr::Binary(b) => {
            let join = join_labels(b).map(|(ls, right)| (ls.to_vec(), right));
            let l = filtered(&mut b.lhs, found)?;
            let r = filtered(&mut b.rhs, found)?;
            // `x * on (job, instance) group_left (rev) info{rev="r"}`: each series of x
            // matches at most one info series (more is an error in either form), and takes
            // its revision from it; so the joined series are r's exactly when the "one" side
            // selects r.
            if let Some((labels, one_is_right)) = join
                && let Some((label, _, _)) = found.as_ref()
                && labels.iter().any(|l| l == label)
            {
                return Ok(if one_is_right { r } else { l });
            }
            Ok(l && r)
        }
        Expr::Paren(p) => filtered(&mut p.expr, found),
        Expr::Subquery(s) => filtered(&mut s.expr, found),
        Expr::NumberLiteral(_) => Ok(true),
        Expr::StringLiteral(s) if s.val.contains(SENTINEL) => Err(NotShared::RevisionMatcher),
        Expr::StringLiteral(_) => Ok(true),
        Expr::VectorSelector(v) => selector(v, found),
        Expr::MatrixSelector(m) => selector(&mut m.vs, found),
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return Err(NotShared::Function(c.func.name.to_string()));
            }
            let mut all = true;
            for a in &mut c.args.args {
                all &= filtered(a, found)?;
            }
            Ok(all)
        }
        Expr::Extension(_) => Err(NotShared::Other("an extension node")),
    }
}

/// Rewrites a selector's revision matcher; whether it has one.
fn selector(
    v: &mut parser::VectorSelector,
    found: &mut Option<(String, String, String)>,
) -> Result<bool, NotShared> {
    if !v.matchers.or_matchers.is_empty() {
        return Err(NotShared::Other("a selector with `or` matchers"));
    }
    if v.name.as_deref().is_some_and(|n| n.contains(SENTINEL)) {
        return Err(NotShared::RevisionMatcher);
    }
    let mut here = 0;
    for m in &mut v.matchers.matchers {
        if m.name.contains(SENTINEL) {
            return Err(NotShared::RevisionMatcher);
        }
        if !m.value.contains(SENTINEL) {
            continue;
        }
        if !matches!(m.op, MatchOp::Equal) || m.name == "__name__" {
            return Err(NotShared::RevisionMatcher);
        }
        let Some((prefix, suffix)) = m.value.split_once(SENTINEL) else {
            return Err(NotShared::RevisionMatcher);
        };
        if suffix.contains(SENTINEL) {
            return Err(NotShared::RevisionMatcher);
        }
        let this = (m.name.clone(), prefix.to_string(), suffix.to_string());
        match found {
            Some(f) if *f != this => return Err(NotShared::RevisionMatcher),
            _ => *found = Some(this),
        }
        let pattern = format!("{}.+{}", regex::escape(prefix), regex::escape(suffix));
        let re = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|_| NotShared::RevisionMatcher)?;
        *m = Matcher {
            op: MatchOp::Re(re),
            name: m.name.clone(),
            value: pattern,
        };
        here += 1;
    }
    Ok(here > 0)
}

/// Keeps `label` through every aggregation and every vector matching.
fn add_label(e: &mut Expr, label: &str) -> Result<(), NotShared> {
    match e {
        Expr::Aggregate(a) => {
            match &mut a.modifier {
                None => {
                    a.modifier = Some(LabelModifier::Include(promql_parser::label::Labels::new(
                        vec![label],
                    )));
                }
                Some(LabelModifier::Include(ls)) => {
                    if !ls.labels.iter().any(|l| l == label) {
                        ls.labels.push(label.to_string());
                    }
                }
                Some(LabelModifier::Exclude(ls)) => {
                    if ls.labels.iter().any(|l| l == label) {
                        return Err(NotShared::Aggregation(format!("{} without", a.op)));
                    }
                }
            }
            add_label(&mut a.expr, label)
        }
        Expr::Binary(b) => {
            let copies = join_labels(b).is_some_and(|(ls, _)| ls.iter().any(|l| l == label));
            if !copies && let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                let keeps = match m {
                    LabelModifier::Include(ls) => ls.labels.iter().any(|l| l == label),
                    LabelModifier::Exclude(ls) => !ls.labels.iter().any(|l| l == label),
                };
                if !keeps {
                    return Err(NotShared::Matching);
                }
            }
            add_label(&mut b.lhs, label)?;
            add_label(&mut b.rhs, label)
        }
        Expr::Unary(u) => add_label(&mut u.expr, label),
        Expr::Paren(p) => add_label(&mut p.expr, label),
        Expr::Subquery(s) => add_label(&mut s.expr, label),
        Expr::Call(c) => {
            for a in &mut c.args.args {
                add_label(a, label)?;
            }
            Ok(())
        }
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(q: &str) -> Result<SharedQuery, NotShared> {
        shared(|r| q.replace("REV", r))
    }

    #[test]
    fn a_preset_count_query_groups_by_the_revision_label() {
        let s = share(
            r#"sum(increase(revision_app_request_count{namespace_name="ns",revision_name="REV"}[1m]))"#,
        )
        .expect("shared");
        assert_eq!(s.label, "revision_name");
        assert_eq!(
            s.promql,
            r#"sum by (revision_name) (increase(revision_app_request_count{namespace_name="ns",revision_name=~".+"}[1m]))"#
        );
        assert_eq!(
            s.revision_of("iris-predictor-00002"),
            Some("iris-predictor-00002")
        );
    }

    #[test]
    fn a_target_info_join_takes_the_revision_from_target_info() {
        let s = share(
            r#"sum(increase(x_count[1m]) * on (job, instance) group_left (kn_revision_name) target_info{k8s_namespace_name="ns",kn_revision_name="REV"})"#,
        )
        .expect("shared");
        assert_eq!(s.label, "kn_revision_name");
        assert!(
            s.promql.starts_with("sum by (kn_revision_name) ("),
            "{}",
            s.promql
        );
        assert!(
            s.promql.contains(r#"kn_revision_name=~".+""#),
            "{}",
            s.promql
        );
        parser::parse(&s.promql).expect("the shared query parses");
        // Without the revision label in group_left, or with the revision on the "many" side
        // only, the answer could mix revisions: not shared.
        for q in [
            r#"sum(increase(x_count[1m]) * on (job, instance) group_left () target_info{kn_revision_name="REV"})"#,
            r#"sum(increase(x_count{kn_revision_name="REV"}[1m]) * on (job, instance) group_left (kn_revision_name) target_info)"#,
            r#"sum(increase(x_count[1m]) * on (job, instance) target_info{kn_revision_name="REV"})"#,
        ] {
            assert!(share(q).is_err(), "{q}");
        }
    }

    #[test]
    fn a_histogram_quantile_keeps_le_and_adds_the_revision() {
        let s = share(
            r#"histogram_quantile(0.95, sum by (le) (rate(lat_bucket{revision_name="REV"}[30s])))"#,
        )
        .expect("shared");
        assert!(
            s.promql.contains("sum by (le, revision_name) ("),
            "{}",
            s.promql
        );
        parser::parse(&s.promql).expect("the shared query parses");
    }

    #[test]
    fn or_between_two_aggregations_matches_revision_by_revision() {
        let s = share(
            r#"sum(increase(c{rev="REV",code="5xx"}[1m])) or (sum(increase(c{rev="REV"}[1m])) * 0)"#,
        )
        .expect("shared");
        assert_eq!(s.promql.matches("sum by (rev)").count(), 2, "{}", s.promql);
    }

    #[test]
    fn text_around_the_revision_is_kept_and_stripped_again() {
        let s =
            share(r#"sum(rate(istio_requests_total{destination_workload="REV-deployment"}[1m]))"#)
                .expect("shared");
        assert!(
            s.promql
                .contains(r#"destination_workload=~".+\\-deployment""#),
            "{}",
            s.promql
        );
        assert_eq!(s.revision_of("iris-00002-deployment"), Some("iris-00002"));
        assert_eq!(s.revision_of("iris-00002"), None);
        assert_eq!(s.revision_of("-deployment"), None);
    }

    #[test]
    fn queries_that_would_mix_revisions_are_not_shared() {
        let cases = [
            (
                r#"sum(rate(a{r="REV"}[1m])) / sum(rate(a[1m]))"#,
                NotShared::SelectorWithoutRevision,
            ),
            (
                r#"topk(1, rate(a{r="REV"}[1m]))"#,
                NotShared::Aggregation("topk".into()),
            ),
            (
                r#"sum without (r) (rate(a{r="REV"}[1m]))"#,
                NotShared::Aggregation("sum without".into()),
            ),
            (
                r#"label_replace(rate(a{r="REV"}[1m]), "r", "x", "", "")"#,
                NotShared::Function("label_replace".into()),
            ),
            (
                r#"sum(rate(a{r="REV"}[1m])) or vector(0)"#,
                NotShared::Function("vector".into()),
            ),
            (
                r#"rate(a{r="REV"}[1m]) / ignoring(r) rate(b{r="REV"}[1m])"#,
                NotShared::Matching,
            ),
            (r#"rate(a{r=~"REV"}[1m])"#, NotShared::RevisionMatcher),
            (
                r#"rate(a{r="REV", s="REV"}[1m])"#,
                NotShared::RevisionMatcher,
            ),
            (r#"rate(a{r="REV-REV"}[1m])"#, NotShared::RevisionMatcher),
            (
                r#"sum(rate(a{n="x"}[1m]))"#,
                NotShared::SelectorWithoutRevision,
            ),
            (
                r#"sum(rate(a{r="x"}[1m]))"#,
                NotShared::SelectorWithoutRevision,
            ),
        ];
        for (q, why) in cases {
            assert_eq!(share(q), Err(why), "{q}");
        }
    }

    #[test]
    fn vector_matching_on_the_revision_label_is_shared() {
        let s = share(r#"rate(a{r="REV"}[1m]) / on(r) rate(b{r="REV"}[1m])"#).expect("shared");
        parser::parse(&s.promql).expect("parses");
        let s = share(r#"sum without (le) (rate(a{r="REV"}[1m]))"#).expect("shared");
        assert!(s.promql.starts_with("sum without (le)"), "{}", s.promql);
    }

    #[test]
    fn regex_metacharacters_around_the_revision_are_escaped() {
        let s = share(r#"rate(a{w="REV.v1"}[1m])"#).expect("shared");
        assert!(s.promql.contains(r#"w=~".+\\.v1""#), "{}", s.promql);
        assert_eq!(s.revision_of("r1.v1"), Some("r1"));
    }

    #[test]
    fn every_preset_query_is_shared_and_parses_again() {
        use rollout_policy::model::MetricKind;
        for preset in rollout_policy::presets::PRESETS {
            for (m, def) in rollout_policy::presets::preset(preset).expect("preset") {
                if m.derived {
                    continue;
                }
                let t = rollout_policy::template::Template::parse(&def).expect("template");
                let _ = MetricKind::Query(t.clone());
                let s = shared(|r| {
                    t.render(&rollout_policy::template::Vars {
                        mode: Default::default(),
                        revision: r,
                        namespace: "ns",
                        name: "iris",
                        component: "predictor",
                        window: std::time::Duration::from_secs(60),
                    })
                })
                .unwrap_or_else(|e| panic!("{preset} {}: {e}", m.name));
                let again = parser::parse(&s.promql)
                    .unwrap_or_else(|e| panic!("{preset} {}: {e}: {}", m.name, s.promql));
                assert_eq!(again.to_string(), s.promql, "printing is stable");
            }
        }
    }
}
