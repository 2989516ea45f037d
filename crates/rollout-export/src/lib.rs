//! Policies as Prometheus alerting rules and Grafana dashboards, so alerts, dashboards and the
//! runner can never disagree: they are all generated from the same checked policy.
//!
//! This crate's one job is that translation (JSON values; `rolloutctl export` writes them as
//! YAML through the engine's one YAML module). It does no IO and decides nothing.

use std::time::Duration;

use rollout_policy::model::{
    Action, ArithOp, Arm, CmpOp, Expr, MetricExpr, MetricId, MetricKind, Policy, Rule,
};
use rollout_policy::template::{Vars, promql_duration};
use serde_json::{Value, json};

/// Which revisions an export is rendered for.
#[derive(Clone, Debug)]
pub struct Revisions {
    /// The canary revision (or a Grafana variable such as `$canary`).
    pub canary: String,
    /// The stable revision (or `$stable`).
    pub stable: String,
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// PromQL for a metric of an arm, normalised to the engine's units (seconds, ratios).
fn metric(p: &Policy, arm: Arm, id: MetricId, window: Duration, revs: &Revisions) -> String {
    let Some(m) = p.metrics.get(id) else {
        return "vector(0)".into();
    };
    let raw = match &m.kind {
        MetricKind::Query(t) => {
            let revision = if arm == Arm::Canary {
                &revs.canary
            } else {
                &revs.stable
            };
            // A dashboard variable (`$canary`) is interpolated by Grafana, which escapes it for
            // its context itself: render a neutral token, then put the variable in.
            let token = "rolloutctlrevisionvariable";
            let is_var = revision.starts_with('$');
            let rendered = t.render(&Vars {
                mode: Default::default(),
                revision: if is_var { token } else { revision },
                namespace: &p.target.namespace,
                name: &p.target.name,
                component: p.target.component.as_str(),
                window,
            });
            if is_var {
                rendered.replace(token, revision)
            } else {
                rendered
            }
        }
        MetricKind::Derived(e) => return metric_expr(p, arm, e, window, revs),
    };
    let scale = m.unit.scale();
    if scale == 1.0 {
        format!("({raw})")
    } else {
        format!("(({raw}) * {})", num(scale))
    }
}

fn metric_expr(p: &Policy, arm: Arm, e: &MetricExpr, window: Duration, revs: &Revisions) -> String {
    match e {
        MetricExpr::Metric(id) => metric(p, arm, *id, window, revs),
        MetricExpr::Const(v) => num(*v),
        MetricExpr::Neg(x) => format!("-{}", metric_expr(p, arm, x, window, revs)),
        MetricExpr::Arith(op, a, b) => format!(
            "({} {} {})",
            metric_expr(p, arm, a, window, revs),
            arith(*op),
            metric_expr(p, arm, b, window, revs)
        ),
    }
}

fn arith(op: ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
    }
}

fn negate(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Gt => CmpOp::Le,
        CmpOp::Ge => CmpOp::Lt,
        CmpOp::Lt => CmpOp::Ge,
        CmpOp::Le => CmpOp::Gt,
        CmpOp::Eq => CmpOp::Ne,
        CmpOp::Ne => CmpOp::Eq,
    }
}

/// PromQL for a rule expression; `negated` pushes a `not` down to the comparisons.
pub fn promql(p: &Policy, e: &Expr, window: Duration, revs: &Revisions, negated: bool) -> String {
    match e {
        Expr::Const(v) => num(*v),
        Expr::Metric { arm, metric: id } => metric(p, *arm, *id, window, revs),
        Expr::Neg(x) => format!("-{}", promql(p, x, window, revs, false)),
        Expr::Arith(op, a, b) => format!(
            "({} {} {})",
            promql(p, a, window, revs, false),
            arith(*op),
            promql(p, b, window, revs, false)
        ),
        Expr::Cmp(op, a, b) => {
            let op = if negated { negate(*op) } else { *op };
            format!(
                "({} {} {})",
                promql(p, a, window, revs, false),
                op.as_str(),
                promql(p, b, window, revs, false)
            )
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            let is_and = matches!(e, Expr::And(..)) != negated;
            format!(
                "({} {} {})",
                promql(p, a, window, revs, negated),
                if is_and { "and" } else { "or" },
                promql(p, b, window, revs, negated)
            )
        }
        Expr::Not(x) => promql(p, x, window, revs, !negated),
    }
}

fn severity(a: Action) -> &'static str {
    match a {
        Action::Rollback => "critical",
        Action::Pause => "warning",
        Action::Warn => "info",
    }
}

/// The alerting rule of one policy rule.
fn alert(p: &Policy, r: &Rule, revs: &Revisions) -> Value {
    let mut expr = promql(p, &r.condition, r.window, revs, false);
    for g in &r.guards {
        expr = format!("{expr}\nand\n{}", promql(p, g, r.window, revs, false));
    }
    let mut notes = vec![format!(
        "Generated by rolloutctl from policy `{}` (rule at line {}).",
        p.name, r.location.line
    )];
    if r.failures > 1 {
        notes.push(format!(
            "The policy also needs {} failing evaluations, which an alert cannot count.",
            r.failures
        ));
    }
    if let Some(s) = &r.statistical {
        notes.push(format!(
            "The policy judges this rule with a statistical test at {:.2}% confidence; the alert uses the plain comparison.",
            s.confidence * 100.0
        ));
    }
    let mut rule = json!({
        "alert": r.name,
        "expr": expr,
        "labels": {
            "severity": severity(r.action),
            "rollout": p.name,
            "namespace": p.target.namespace,
            "inferenceservice": p.target.name,
            "canary_revision": revs.canary,
            "stable_revision": revs.stable,
        },
        "annotations": {
            "summary": format!("{} on canary {} of {}/{} (policy action: {})", r.name, revs.canary, p.target.namespace, p.target.name, r.action.keyword()),
            "description": notes.join(" "),
        },
    });
    if !r.persistence.is_zero() {
        rule["for"] = json!(promql_duration(r.persistence));
    }
    rule
}

/// The rule groups of a policy (one group, one alert per rule).
pub fn rule_groups(p: &Policy, revs: &Revisions) -> Value {
    let rules: Vec<Value> = p.rules.iter().map(|r| alert(p, r, revs)).collect();
    json!({"groups": [{"name": format!("rolloutctl-{}", p.name), "interval": promql_duration(p.evaluation.interval), "rules": rules}]})
}

/// A `PrometheusRule` custom resource (Prometheus Operator).
pub fn prometheus_rule(p: &Policy, revs: &Revisions) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": format!("rolloutctl-{}", p.name), "namespace": p.target.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "rolloutctl"}},
        "spec": rule_groups(p, revs),
    })
}

/// A Grafana dashboard: per metric a time series with canary, stable and the thresholds of the
/// rules that compare it, plus the canary's share of requests. `$canary` and `$stable` are
/// dashboard variables listing the InferenceService's revisions.
pub fn grafana(p: &Policy) -> Value {
    let revs = Revisions {
        canary: "$canary".into(),
        stable: "$stable".into(),
    };
    let mut panels = Vec::new();
    let mut y = 0;
    let mut id = 1;
    let mut metrics: Vec<MetricId> = Vec::new();
    for r in &p.rules {
        for (_, m) in r.condition.metrics() {
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
    }
    let window = p.evaluation.window;
    for m in &metrics {
        let name = &p.metrics[*m].name;
        let mut targets = vec![
            json!({"refId": "A", "expr": metric(p, Arm::Canary, *m, window, &revs), "legendFormat": "canary $canary", "datasource": {"type": "prometheus", "uid": "${datasource}"}}),
            json!({"refId": "B", "expr": metric(p, Arm::Stable, *m, window, &revs), "legendFormat": "stable $stable", "datasource": {"type": "prometheus", "uid": "${datasource}"}}),
        ];
        // Thresholds: the right-hand side of each rule comparison whose left side is this metric.
        let mut letter = b'C';
        for r in &p.rules {
            let mut cmps = Vec::new();
            comparisons(&r.condition, &mut cmps);
            for (lhs, rhs) in cmps {
                if matches!(lhs, Expr::Metric { arm: Arm::Canary, metric } if metric == m) {
                    targets.push(json!({"refId": (letter as char).to_string(), "expr": promql(p, rhs, r.window, &revs, false),
                                        "legendFormat": format!("{} threshold", r.name), "datasource": {"type": "prometheus", "uid": "${datasource}"}}));
                    letter += 1;
                }
            }
        }
        let unit = match p.metrics[*m].dim {
            rollout_policy::model::Dim::Ratio => "percentunit",
            rollout_policy::model::Dim::Time => "s",
            rollout_policy::model::Dim::Rate => "reqps",
            _ => "short",
        };
        panels.push(json!({
            "id": id, "type": "timeseries", "title": format!("{name}: canary vs stable"),
            "gridPos": {"h": 8, "w": 12, "x": if id % 2 == 1 { 0 } else { 12 }, "y": y},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": targets,
        }));
        if id % 2 == 0 {
            y += 8;
        }
        id += 1;
    }
    // The canary's share of requests, as the data plane sees it (the traffic split in effect).
    if let Some(req) = p.metric_id("rps").or_else(|| p.metric_id("requests")) {
        let c = metric(p, Arm::Canary, req, window, &revs);
        let s = metric(p, Arm::Stable, req, window, &revs);
        panels.push(json!({
            "id": id, "type": "timeseries", "title": "canary share of requests",
            "gridPos": {"h": 8, "w": 24, "x": 0, "y": y + 8},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1}, "overrides": []},
            "targets": [{"refId": "A", "expr": format!("{c} / ({c} + {s})"), "legendFormat": "canary share", "datasource": {"type": "prometheus", "uid": "${datasource}"}}],
        }));
    }
    let (revision_query, revision_regex) = revision_variable(p);
    json!({
        "title": format!("rolloutctl: {}", p.name),
        "uid": format!("rolloutctl-{}", p.name).chars().take(40).collect::<String>(),
        "tags": ["rolloutctl", "kserve", "canary"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": true, "hide": true,
                                  "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "canary", "type": "query", "label": "canary revision", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": revision_query, "refId": "canary"}, "regex": revision_regex, "refresh": 2, "sort": 2},
            {"name": "stable", "type": "query", "label": "stable revision", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": revision_query, "refId": "stable"}, "regex": revision_regex, "refresh": 2, "sort": 2},
        ]},
        "panels": panels,
    })
}

/// The Grafana query listing the target's revisions, and the regex that keeps the revision
/// part of each value, in the names of the policy's preset (Knative ≥ 1.19 has the revision
/// only on `target_info`; Istio names the revision's Deployment). A policy without a preset
/// lists them as `use knative` would.
fn revision_variable(p: &Policy) -> (String, &'static str) {
    let preset = p.metrics.iter().find_map(|m| match m.origin {
        rollout_policy::model::Origin::Preset(name) => Some(name),
        rollout_policy::model::Origin::User => None,
    });
    let ns = &p.target.namespace;
    let config = format!("{}-{}", p.target.name, p.target.component.as_str());
    match preset {
        Some("knative_1_18") => (
            format!(
                "label_values(revision_app_request_count{{namespace_name=\"{ns}\", configuration_name=\"{config}\"}}, revision_name)"
            ),
            "",
        ),
        Some("knative_otlp") => (
            format!(
                "label_values(kn_serving_invocation_duration_seconds_count{{k8s_namespace_name=\"{ns}\", kn_configuration_name=\"{config}\"}}, kn_revision_name)"
            ),
            "",
        ),
        Some("istio") => (
            format!(
                "label_values(istio_requests_total{{reporter=\"destination\", destination_workload_namespace=\"{ns}\", destination_workload=~\"{config}-.*-deployment\"}}, destination_workload)"
            ),
            "/^(.*)-deployment$/",
        ),
        _ => (
            format!(
                "label_values(target_info{{k8s_namespace_name=\"{ns}\", kn_configuration_name=\"{config}\"}}, kn_revision_name)"
            ),
            "",
        ),
    }
}

fn comparisons<'e>(e: &'e Expr, out: &mut Vec<(&'e Expr, &'e Expr)>) {
    match e {
        Expr::Cmp(_, a, b) => out.push((a, b)),
        Expr::And(a, b) | Expr::Or(a, b) => {
            comparisons(a, out);
            comparisons(b, out);
        }
        Expr::Not(x) => comparisons(x, out),
        _ => {}
    }
}
