//! Lint rules (`R2xxx` warnings) that need the whole checked policy.

use std::collections::HashSet;

use rollout_diagnostics::{Code, Diagnostic};
use rollout_syntax::ast;

use crate::check::{Checker, human};
use crate::model::*;

pub(crate) fn run(
    c: &mut Checker<'_>,
    p: &Policy,
    file: &ast::File,
    steps: Option<&ast::StepsDecl>,
) {
    let rule_decls: Vec<&ast::RuleDecl> = file
        .rollout
        .items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Rule(r) => Some(r),
            _ => None,
        })
        .collect();
    min_samples(c, p, &rule_decls);
    for_longer_than_hold(c, p, &rule_decls);
    if let Some(steps) = steps {
        unmeasured_steps(c, steps);
    }
    unused_metrics(c, p);
    no_rollback(c, p, file);
    short_windows(c, p, file, &rule_decls);
}

/// R2003 for `${window}`: the evaluation window and rule windows must cover two scrapes.
fn short_windows(c: &mut Checker<'_>, p: &Policy, file: &ast::File, decls: &[&ast::RuleDecl]) {
    let Some(scrape) = p.prometheus.scrape_interval else {
        return;
    };
    let uses_window = p.metrics.iter().any(|m| match &m.kind {
        MetricKind::Query(t) => t.vars().any(|(v, _, _)| v == crate::template::Var::Window),
        MetricKind::Derived(_) => false,
    });
    if !uses_window {
        return;
    }
    let setting = |kind: ast::BlockKind, key: &str| {
        file.rollout.items.iter().find_map(|i| match i {
            ast::Item::Block(b) if b.kind == kind => b
                .settings
                .iter()
                .find(|s| s.key.name == key)
                .map(|s| s.value.span()),
            _ => None,
        })
    };
    let warn = |c: &mut Checker<'_>, window: std::time::Duration, span, what: &str| {
        c.diags.push(Diagnostic::new(
            Code::RateWindowTooShort,
            format!(
                "{what} {} is less than twice the {} scrape interval; `[${{window}}]` ranges see too few samples",
                human(window),
                human(scrape)
            ),
            span,
            "window too short for the scrape interval",
        ));
    };
    if p.evaluation.window < scrape * 2 {
        let span = setting(ast::BlockKind::Evaluation, "window")
            .or_else(|| setting(ast::BlockKind::Prometheus, "scrape_interval"))
            .unwrap_or(file.rollout.name.span);
        warn(c, p.evaluation.window, span, "the evaluation window");
    }
    for (rule, decl) in p.rules.iter().zip(decls) {
        let span = decl.stmts.iter().find_map(|s| match s {
            ast::RuleStmt::Window(_, sp) => Some(*sp),
            _ => None,
        });
        if let Some(span) = span
            && rule.window < scrape * 2
        {
            warn(
                c,
                rule.window,
                span,
                &format!("the window of rule `{}`", rule.name),
            );
        }
    }
}

/// R2001: a non-statistical rule without `require` can be decided by a handful of requests.
fn min_samples(c: &mut Checker<'_>, p: &Policy, decls: &[&ast::RuleDecl]) {
    for (rule, decl) in p.rules.iter().zip(decls) {
        if rule.guards.is_empty() && rule.statistical.is_none() {
            let span = decl.name.as_ref().map_or(decl.span, |n| n.span);
            // R1058: a canary count with no guard passes on no traffic at all (0 errors of 0
            // requests), so it can promote a canary nothing was sent to.
            if let Some(m) = rule.condition.metrics().into_iter().find_map(|(arm, m)| {
                p.metrics
                    .get(m)
                    .filter(|x| arm == Arm::Canary && x.dim == Dim::Count)
            }) {
                c.diags.push(
                    Diagnostic::new(
                        Code::UnguardedCount,
                        format!(
                            "rule `{}` judges the count `canary.{}` with no minimum-sample guard",
                            rule.name, m.name
                        ),
                        span,
                        "passes when the canary receives no traffic at all",
                    )
                    .with_help(format!(
                        "add `require canary.requests >= 100` (or any minimum the count needs), or judge a ratio such as `canary.error_rate`: a canary without requests has no `{}` and would pass",
                        m.name
                    )),
                );
                continue;
            }
            c.diags.push(
                Diagnostic::new(
                    Code::NoMinSamples,
                    format!("rule `{}` has no minimum-sample guard", rule.name),
                    span,
                    "judged even on a handful of requests",
                )
                .with_help("add `require canary.requests >= 100` (or a statistical `with confidence` form), so noise cannot decide the rollout"),
            );
        }
    }
}

/// R2002: a `for` longer than a fixed hold can never fire during that hold.
fn for_longer_than_hold(c: &mut Checker<'_>, p: &Policy, decls: &[&ast::RuleDecl]) {
    for (id, (rule, decl)) in p.rules.iter().zip(decls).enumerate() {
        let for_span = decl.stmts.iter().find_map(|s| match s {
            ast::RuleStmt::For(_, sp) => Some(*sp),
            _ => None,
        });
        for step in &p.steps {
            let StepKind::Hold(h) = &step.kind else {
                continue;
            };
            if h.until.is_some() {
                continue;
            }
            let persistence = h
                .overrides
                .iter()
                .find(|o| o.rule == id)
                .and_then(|o| o.persistence)
                .unwrap_or(rule.persistence);
            if persistence > h.min {
                let span = for_span.unwrap_or(rule.location.span);
                c.diags.push(
                    Diagnostic::new(
                        Code::ForLongerThanHold,
                        format!(
                            "rule `{}` must breach for {}, longer than the {} hold at line {}",
                            rule.name,
                            human(persistence),
                            human(h.min),
                            step.location.line
                        ),
                        span,
                        "longer than the hold",
                    )
                    .with_label(step.location.span, "this hold ends first"),
                );
                break;
            }
        }
    }
}

/// R2004: every traffic step is followed by a hold before the next traffic change or promotion.
fn unmeasured_steps(c: &mut Checker<'_>, steps: &ast::StepsDecl) {
    let mut pending: Option<&ast::Step> = None;
    for step in &steps.steps {
        match step {
            ast::Step::Traffic(..) | ast::Step::Promote(_) => {
                if let Some(t) = pending.take() {
                    c.diags.push(
                        Diagnostic::new(
                            Code::UnmeasuredStep,
                            "this traffic step is never measured",
                            t.span(),
                            "no `hold` follows",
                        )
                        .with_label(step.span(), "traffic changes again here"),
                    );
                }
                if matches!(step, ast::Step::Traffic(..)) {
                    pending = Some(step);
                }
            }
            ast::Step::Hold(_) => pending = None,
            ast::Step::Approval { .. } => {}
        }
    }
}

/// R2006: user-defined metrics nothing reads.
fn unused_metrics(c: &mut Checker<'_>, p: &Policy) {
    let mut used: HashSet<MetricId> = HashSet::new();
    let mut mark = |e: &Expr| {
        for (_, m) in e.metrics() {
            used.insert(m);
        }
    };
    for r in &p.rules {
        mark(&r.condition);
        r.guards.iter().for_each(&mut mark);
    }
    for s in &p.steps {
        if let StepKind::Hold(h) = &s.kind {
            if let Some(u) = &h.until {
                mark(&u.condition);
            }
            for o in &h.overrides {
                o.guards.iter().for_each(&mut mark);
            }
        }
    }
    for r in &p.rules {
        if let Some(s) = &r.statistical {
            used.insert(s.numerator);
            used.insert(s.denominator);
        }
    }
    // Metrics read by used derived metrics are used too.
    let mut stack: Vec<MetricId> = used.iter().copied().collect();
    while let Some(m) = stack.pop() {
        if let Some(MetricKind::Derived(e)) = p.metrics.get(m).map(|m| &m.kind) {
            let mut deps = Vec::new();
            metric_deps(e, &mut deps);
            for d in deps {
                if used.insert(d) {
                    stack.push(d);
                }
            }
        }
    }
    for (id, m) in p.metrics.iter().enumerate() {
        if m.origin == Origin::User && !used.contains(&id) {
            c.diags.push(
                Diagnostic::new(
                    Code::UnusedMetric,
                    format!("metric `{}` is never used", m.name),
                    m.span,
                    "defined but not used",
                )
                .with_help("use it in a rule, or remove it"),
            );
        }
    }
}

fn metric_deps(e: &MetricExpr, out: &mut Vec<MetricId>) {
    match e {
        MetricExpr::Metric(m) => out.push(*m),
        MetricExpr::Const(_) => {}
        MetricExpr::Neg(x) => metric_deps(x, out),
        MetricExpr::Arith(_, a, b) => {
            metric_deps(a, out);
            metric_deps(b, out);
        }
    }
}

/// R2007: no rule can roll back.
fn no_rollback(c: &mut Checker<'_>, p: &Policy, file: &ast::File) {
    let rule_rolls_back = p.rules.iter().any(|r| r.action == Action::Rollback);
    let override_rolls_back = p.steps.iter().any(|s| match &s.kind {
        StepKind::Hold(h) => h
            .overrides
            .iter()
            .any(|o| o.action == Some(Action::Rollback)),
        _ => false,
    });
    if !rule_rolls_back && !override_rolls_back {
        c.diags.push(Diagnostic::new(
            Code::NoRollbackRule,
            "no rule rolls back a bad canary",
            file.rollout.name.span,
            "this rollout can only pause or warn",
        ));
    }
}
