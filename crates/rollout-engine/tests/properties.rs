//! Property tests over random policies and random input sequences: the machine's invariants hold
//! whatever the cluster, Prometheus and operators do.

mod common;

use common::machine;
use proptest::prelude::*;
use rollout_engine::{
    Cluster, Command, Input, Machine, Observations, Operator, Output, Phase, Sample, State, Verdict,
};
use rollout_policy::model::{Action, StepKind};

/// A random valid policy.
fn policy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(1u8..=99, 1..4),
        prop::collection::vec((1u64..8, prop::option::of(100u32..3000)), 3),
        (0u64..3, 1u32..4, any::<bool>(), prop::sample::select(vec!["rollback", "pause", "warn"])),
        (1u32..4, prop::sample::select(vec![10u64, 15, 30, 60])),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec!["hold 2m then rollback", "rollback", "pause", "hold", "warn"]),
    )
        .prop_map(|(mut pcts, holds, (for_m, failures, total, action), (passes, interval), approval, stat, on)| {
            pcts.sort_unstable();
            pcts.dedup();
            let mut steps = String::new();
            for (i, p) in pcts.iter().enumerate() {
                steps.push_str(&format!("    traffic {p}%\n"));
                let (d, until) = holds[i % holds.len()];
                match until {
                    Some(n) => steps.push_str(&format!("    hold {d}m until canary.requests >= {n} max {}m\n", d + 10)),
                    None => steps.push_str(&format!("    hold {d}m\n")),
                }
            }
            if approval {
                steps.push_str("    approval max 30m else pause\n");
            }
            steps.push_str("    promote");
            let mode = if total { " total" } else { "" };
            let for_stmt = if for_m == 0 { String::new() } else { format!("    for {for_m}m\n") };
            let stat_rule = if stat {
                "\n  rule Stat {\n    when canary.error_rate > 1.5 * stable.error_rate with confidence 95%\n  }\n"
            } else {
                ""
            };
            format!(
                "rollout \"p\" {{\n  target {{\n    name = \"iris\"\n    namespace = \"ns\"\n  }}\n  prometheus {{\n    url = \"http://127.0.0.1:9090\"\n  }}\n  evaluation {{\n    interval = {interval}s\n    passes = {passes}\n    deadline = 6h\n  }}\n  use knative\n  rule Errors {{\n    when canary.error_rate > 1.5 * stable.error_rate and canary.error_rate > 1%\n    require canary.requests >= 50\n{for_stmt}    failures {failures}{mode}\n    action {action}\n  }}\n  rule Latency {{\n    when canary.latency_p95 > 1.3 * stable.latency_p95\n    require canary.requests >= 50\n    action pause\n  }}\n{stat_rule}  on no_data {on}\n  steps {{\n{steps}\n  }}\n}}\n"
            )
        })
}

/// What the world does at one tick.
#[derive(Clone, Debug)]
struct Tick {
    advance_ms: u64,
    /// 0: follow the last command; 1: not ready; 2: unreadable; 3: lagging (not observed);
    /// 4: revision change.
    cluster: u8,
    /// Per query: 0 healthy, 1 bad, 2 no data, 3 NaN, 4 +Inf, 5 error, 6 stale, 7 negative.
    samples: Vec<u8>,
    operator: Option<Operator>,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        1_000u64..90_000,
        prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
        prop::collection::vec(
            prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]),
            12,
        ),
        prop::option::weighted(
            0.05,
            prop::sample::select(vec![
                Operator::Approve,
                Operator::Pause,
                Operator::Resume,
                Operator::Abort,
                Operator::PromoteNow,
            ]),
        ),
    )
        .prop_map(|(advance_ms, cluster, samples, operator)| Tick {
            advance_ms,
            cluster,
            samples,
            operator,
        })
}

fn sample(kind: u8, name: &str, canary: bool, now: u64) -> Sample {
    let healthy = match name {
        "requests" => 500.0,
        "errors" => 1.0,
        _ => 100.0,
    };
    let bad = match name {
        "errors" if canary => 100.0,
        n if n.starts_with("latency") && canary => 900.0,
        _ => healthy,
    };
    match kind {
        0 => Sample::Value {
            value: healthy,
            at: now,
        },
        1 => Sample::Value {
            value: bad,
            at: now,
        },
        2 => Sample::NoData,
        3 => Sample::Value {
            value: f64::NAN,
            at: now,
        },
        4 => Sample::Value {
            value: f64::INFINITY,
            at: now,
        },
        5 => Sample::Error {
            message: "injected".into(),
        },
        6 => Sample::Value {
            value: healthy,
            at: now.saturating_sub(3_600_000),
        },
        _ => Sample::Value {
            value: -healthy,
            at: now,
        },
    }
}

/// Runs a tick sequence; returns (outputs with the operator command given at each, final state).
fn run(
    m: &Machine,
    ticks: &[Tick],
    restore_at: Option<usize>,
) -> (Vec<(Output, Option<Operator>)>, State) {
    let mut s = m.initial_state();
    let mut t = 0u64;
    let mut pct = 0u8;
    let mut outs = Vec::new();
    for (i, tk) in ticks.iter().enumerate() {
        if Some(i) == restore_at {
            let json = serde_json::to_string(&s).expect("serialise");
            s = serde_json::from_str(&json).expect("restore");
        }
        let mut cluster = Some(Cluster {
            canary_percent: pct,
            canary_revision: "iris-00002".into(),
            stable_revision: (pct < 100).then(|| "iris-00001".into()),
            ready: true,
            observed: true,
        });
        match tk.cluster {
            1 => {
                if let Some(c) = cluster.as_mut() {
                    c.ready = false;
                }
            }
            2 => cluster = None,
            3 => {
                if let Some(c) = cluster.as_mut() {
                    c.observed = false;
                }
            }
            4 => {
                if let Some(c) = cluster.as_mut() {
                    c.canary_revision = "iris-00003".into();
                }
            }
            _ => {}
        }
        let mut obs = Observations::default();
        for (j, k) in m.queries(&s, t).into_iter().enumerate() {
            let name = m.policy().metrics[k.metric].name.clone();
            let canary = k.arm == rollout_policy::model::Arm::Canary;
            obs.push(
                k,
                sample(tk.samples[j % tk.samples.len()], &name, canary, t),
            );
        }
        let input = Input {
            now: t,
            cluster,
            observations: obs,
            operator: tk.operator.into_iter().collect(),
        };
        let out = m.step(&mut s, &input);
        for c in &out.commands {
            match c {
                Command::SetTraffic { percent } => pct = *percent,
                Command::Promote => pct = 100,
                Command::Rollback => pct = 0,
                _ => {}
            }
        }
        outs.push((out, tk.operator));
        t += tk.advance_ms;
    }
    (outs, s)
}

fn ok_verdict(r: &rollout_engine::RuleRecord) -> bool {
    r.verdict == Verdict::Pass || (r.verdict == Verdict::Fail && r.action == Action::Warn)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_random_policies_and_inputs(text in policy(), ticks in prop::collection::vec(tick(), 1..120)) {
        let m = machine(&text);
        let (outs, _) = run(&m, &ticks, None);
        let steps = &m.policy().steps;
        let mut last_step = 0usize;
        let mut max_traffic_step = 0u8;
        let mut aborted = false;
        let mut terminal = false;
        let mut evaluated: Vec<&rollout_engine::Decision> = Vec::new();
        for (out, op) in &outs {
            let d = &out.decision;
            // Terminal states are final.
            if terminal {
                prop_assert!(out.commands.is_empty(), "commands after the end: {:?}", out.commands);
            }
            // Abort always wins, and nothing raises traffic afterwards.
            if *op == Some(Operator::Abort) && !terminal {
                prop_assert!(matches!(d.to.as_str(), "rolling_back" | "rolled_back"), "abort gave {}", d.to);
                aborted = true;
            }
            if aborted {
                prop_assert!(!out.commands.iter().any(|c| matches!(c, Command::Promote | Command::SetTraffic { .. })), "traffic raised after an abort");
            }
            // Steps are taken in order: never back, at most one forward per input.
            prop_assert!(d.step >= last_step && d.step <= last_step + 1, "step {} after {}", d.step, last_step);
            for c in &out.commands {
                match c {
                    // Traffic never above the current step's percentage.
                    Command::SetTraffic { percent } => {
                        prop_assert!(matches!(steps[d.step].kind, StepKind::Traffic { percent: p } if p == *percent), "traffic {} at step {}", percent, d.step);
                        prop_assert!(*percent >= max_traffic_step, "traffic went down without a rollback");
                        max_traffic_step = *percent;
                    }
                    // Promotion: only by an operator, or on reaching the last step (every hold
                    // before it ended with passing evaluations, checked below).
                    Command::Promote if *op != Some(Operator::PromoteNow) => {
                        prop_assert!(matches!(steps[d.step].kind, StepKind::Promote), "promote at step {}", d.step);
                    }
                    _ => {}
                }
            }
            if d.evaluated {
                evaluated.push(d);
            }
            // A hold ends only with enough consecutive fresh passing evaluations.
            if d.action == "advance" {
                let needed = d.passes_needed as usize;
                prop_assert!(d.passes as usize >= needed);
                let recent: Vec<_> = evaluated.iter().rev().take(needed).collect();
                prop_assert_eq!(recent.len(), needed);
                for e in recent {
                    prop_assert!(e.failures.is_empty(), "advanced after a failure: {:?}", e.failures);
                    prop_assert!(e.rules.iter().all(ok_verdict), "advanced after {:?}", e.rules.iter().map(|r| r.verdict).collect::<Vec<_>>());
                    prop_assert!(e.rules.iter().any(|r| r.verdict == Verdict::Pass));
                }
                evaluated.clear();
            }
            if d.step != last_step {
                evaluated.clear();
            }
            last_step = d.step;
            terminal = matches!(d.to.as_str(), "promoted" | "rolled_back" | "failed");
        }
    }

    #[test]
    fn bad_data_never_promotes(text in policy(), mut ticks in prop::collection::vec(tick(), 1..150), kinds in prop::collection::vec(prop::sample::select(vec![2u8, 3, 4, 5, 6, 7]), 12)) {
        let m = machine(&text);
        for t in &mut ticks {
            t.samples = kinds.clone();
            if t.operator == Some(Operator::PromoteNow) {
                t.operator = None;
            }
        }
        let (outs, state) = run(&m, &ticks, None);
        prop_assert!(!matches!(state.phase, Phase::Promoted | Phase::Promoting { .. }), "promoted on bad data");
        for (out, _) in &outs {
            prop_assert!(!out.commands.contains(&Command::Promote));
            prop_assert!(out.decision.action != "advance", "a hold ended on bad data");
        }
    }

    #[test]
    fn same_inputs_same_outputs_through_serialisation(text in policy(), ticks in prop::collection::vec(tick(), 1..80), at in 0usize..80) {
        let m = machine(&text);
        let (a, sa) = run(&m, &ticks, None);
        let (b, sb) = run(&m, &ticks, Some(at % ticks.len()));
        prop_assert_eq!(sa, sb);
        for ((x, _), (y, _)) in a.iter().zip(&b) {
            prop_assert_eq!(x, y);
        }
    }
}
