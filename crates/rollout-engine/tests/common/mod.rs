//! Shared helpers for engine tests: compiling policy text and building inputs.

#![allow(dead_code)]

use rollout_diagnostics::SourceFile;
use rollout_engine::{Cluster, Input, Machine, Observations, Operator, QueryKey, Sample, State};

/// Answers a query from (metric name, is canary).
pub type Answer = Box<dyn Fn(&str, bool) -> Sample>;

/// Compiles policy text; panics with the diagnostics if it does not check.
pub fn machine(text: &str) -> Machine {
    let checked = rollout_policy::check_source(&SourceFile::new("test.rollout", text.to_string()));
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity() == rollout_diagnostics::Severity::Error)
        .map(|d| format!("{} {}", d.code(), d.message()))
        .collect();
    match checked.policy {
        Some(p) => Machine::compile(p),
        None => panic!("policy does not check:\n{}\n{text}", errors.join("\n")),
    }
}

/// A policy with one rule on the preset error rate, the given steps and settings.
pub fn policy(rule: &str, steps: &str, extra: &str) -> String {
    format!(
        "rollout \"t\" {{\n  target {{\n    name = \"iris\"\n    namespace = \"ns\"\n  }}\n  prometheus {{\n    url = \"http://127.0.0.1:9090\"\n  }}\n  evaluation {{\n    interval = 10s\n    window = 1m\n    passes = 2\n  }}\n  use knative\n  {rule}\n  {extra}\n  steps {{\n{steps}\n  }}\n}}\n"
    )
}

/// The standard error-rate rule.
pub const ERROR_RULE: &str = "rule Errors {\n    when canary.error_rate > 0.05\n    require canary.requests >= 10\n    action rollback\n  }";

/// A settled cluster at `pct` percent.
pub fn cluster(pct: u8) -> Cluster {
    Cluster {
        canary_percent: pct,
        canary_revision: "iris-00002".into(),
        stable_revision: (pct < 100).then(|| "iris-00001".into()),
        ready: true,
        observed: true,
    }
}

/// Observations answering every wanted query from `f(metric name, arm is canary)`.
pub fn observe(
    m: &Machine,
    state: &State,
    now: u64,
    f: &dyn Fn(&str, bool) -> Sample,
) -> Observations {
    let mut obs = Observations::default();
    for k in m.queries(state, now) {
        let name = m.policy().metrics[k.metric].name.clone();
        obs.push(k, f(&name, k.arm == rollout_policy::model::Arm::Canary));
    }
    obs
}

/// Healthy values: 1000 requests, 1 error, 100 ms.
pub fn healthy(now: u64) -> impl Fn(&str, bool) -> Sample {
    move |name, _| Sample::Value {
        value: match name {
            "requests" => 1000.0,
            "errors" => 1.0,
            _ => 100.0,
        },
        at: now,
    }
}

/// An input.
pub fn input(
    now: u64,
    cluster: Option<Cluster>,
    observations: Observations,
    operator: Vec<Operator>,
) -> Input {
    Input {
        now,
        cluster,
        observations,
        operator,
    }
}

/// Drives the machine: at each tick the cluster follows the last traffic command at once, and
/// queries are answered by `f(now)`. Returns every output.
pub fn drive(
    m: &Machine,
    state: &mut State,
    until: u64,
    step_ms: u64,
    f: &dyn Fn(u64) -> Answer,
) -> Vec<rollout_engine::Output> {
    let mut outs = Vec::new();
    let mut pct = 0u8;
    let mut t = 0;
    while t <= until && !state.phase.is_terminal() {
        let obs = observe(m, state, t, &*f(t));
        let out = m.step(state, &input(t, Some(cluster(pct)), obs, vec![]));
        for c in &out.commands {
            match c {
                rollout_engine::Command::SetTraffic { percent } => pct = *percent,
                rollout_engine::Command::Promote => pct = 100,
                rollout_engine::Command::Rollback => pct = 0,
                _ => {}
            }
        }
        outs.push(out);
        t += step_ms;
    }
    // Let the cluster confirm a final promotion or rollback.
    if !state.phase.is_terminal() {
        let out = m.step(
            state,
            &input(t, Some(cluster(pct)), Observations::default(), vec![]),
        );
        outs.push(out);
    }
    outs
}

/// Every traffic-setting command in order, as percentages (promote = 100, rollback = 0).
pub fn traffic(outs: &[rollout_engine::Output]) -> Vec<u8> {
    let mut v = Vec::new();
    for o in outs {
        for c in &o.commands {
            let p = match c {
                rollout_engine::Command::SetTraffic { percent } => *percent,
                rollout_engine::Command::Promote => 100,
                rollout_engine::Command::Rollback => 0,
                _ => continue,
            };
            if v.last() != Some(&p) {
                v.push(p);
            }
        }
    }
    v
}

/// A query key, for hand-built observations.
pub fn key(m: &Machine, name: &str, canary: bool, window_ms: u64) -> QueryKey {
    QueryKey {
        arm: if canary {
            rollout_policy::model::Arm::Canary
        } else {
            rollout_policy::model::Arm::Stable
        },
        metric: m.policy().metric_id(name).expect("metric"),
        window_ms,
    }
}
