//! The semantics the engine guarantees, one test each (issue 3, "Semantics that must hold").

mod common;

use common::*;
use rollout_engine::{
    Command, Machine, Observations, Operator, Outcome, Phase, Reason, Sample, Verdict,
};

const STEPS: &str = "    traffic 10%\n    hold 1m\n    traffic 50%\n    hold 1m\n    promote";

fn m() -> Machine {
    machine(&policy(ERROR_RULE, STEPS, ""))
}

fn healthy_box(t: u64) -> Answer {
    Box::new(healthy(t))
}

#[test]
fn healthy_canary_is_promoted_through_every_step_in_order() {
    let m = m();
    let mut s = m.initial_state();
    let outs = drive(&m, &mut s, 3_600_000, 5_000, &healthy_box);
    assert_eq!(Outcome::of(&s), Outcome::Promoted);
    assert_eq!(
        traffic(&outs),
        vec![10, 50, 100],
        "steps in order, none skipped or repeated"
    );
}

#[test]
fn traffic_never_exceeds_the_current_step() {
    let m = m();
    let mut s = m.initial_state();
    let mut pct = 0;
    let mut t = 0;
    while !s.phase.is_terminal() && t < 3_600_000 {
        let obs = observe(&m, &s, t, &healthy(t));
        let out = m.step(&mut s, &input(t, Some(cluster(pct)), obs, vec![]));
        for c in &out.commands {
            if let Command::SetTraffic { percent } = c {
                let step_pct = match &m.policy().steps[s.step].kind {
                    rollout_policy::model::StepKind::Traffic { percent } => *percent,
                    other => panic!("traffic set outside a traffic step: {other:?}"),
                };
                assert_eq!(*percent, step_pct);
                pct = *percent;
            }
            if let Command::Promote = c {
                pct = 100;
            }
        }
        t += 5_000;
    }
}

#[test]
fn a_hold_ends_only_after_its_duration_and_the_required_passes() {
    let m = m();
    let mut s = m.initial_state();
    let outs = drive(&m, &mut s, 3_600_000, 5_000, &healthy_box);
    // The 10% hold began when traffic settled and lasted at least 1m.
    let settled = outs
        .iter()
        .find(|o| o.decision.step_label == "hold 1m")
        .map(|o| o.decision.at)
        .expect("hold");
    let advanced = outs
        .iter()
        .find(|o| o.decision.action == "advance")
        .expect("advance");
    assert!(advanced.decision.at >= settled + 60_000);
    assert!(advanced.decision.passes >= 2);
}

fn stuck_with(sample: impl Fn(u64) -> Sample + 'static) -> (Machine, rollout_engine::State) {
    let m = m();
    let mut s = m.initial_state();
    let f = std::rc::Rc::new(sample);
    let outs = drive(&m, &mut s, 600_000, 5_000, &move |t| {
        let f = f.clone();
        Box::new(move |_name: &str, _canary: bool| f(t))
    });
    assert!(!traffic(&outs).contains(&100), "promoted on bad data");
    assert!(
        !outs.iter().any(|o| o.decision.action == "advance"),
        "a hold ended on bad data"
    );
    (m, s)
}

#[test]
fn no_data_never_counts_as_a_pass() {
    let (_, s) = stuck_with(|_| Sample::NoData);
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::Measurement { .. }
            }
        ),
        "{:?}",
        s.phase
    );
}

#[test]
fn nan_and_infinity_never_count_as_a_pass() {
    stuck_with(|t| Sample::Value {
        value: f64::NAN,
        at: t,
    });
    stuck_with(|t| Sample::Value {
        value: f64::INFINITY,
        at: t,
    });
    stuck_with(|t| Sample::Value {
        value: f64::NEG_INFINITY,
        at: t,
    });
}

#[test]
fn stale_data_never_counts_as_a_pass() {
    let m = m();
    let mut s = m.initial_state();
    // Healthy values, but the newest sample never moves past t = 0.
    let outs = drive(&m, &mut s, 600_000, 5_000, &|_t| Box::new(healthy(0)));
    assert!(
        !outs.iter().any(|o| o.decision.action == "advance"),
        "a hold ended on stale data"
    );
    assert!(!traffic(&outs).contains(&100));
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::Measurement {
                    kind: rollout_policy::model::FailureKind::StaleData
                }
            }
        ),
        "{:?}",
        s.phase
    );
}

#[test]
fn query_errors_never_count_as_a_pass() {
    let (_, s) = stuck_with(|_| Sample::Error {
        message: "boom".into(),
    });
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::Measurement {
                    kind: rollout_policy::model::FailureKind::QueryError
                }
            }
        ),
        "{:?}",
        s.phase
    );
}

#[test]
fn a_revision_change_pauses_at_the_same_traffic_and_resume_judges_the_new_revision() {
    let m = m();
    let mut s = m.initial_state();
    let mut t = 0;
    let mut c = cluster(0);
    for _ in 0..4 {
        let obs = observe(&m, &s, t, &healthy(t));
        let out = m.step(&mut s, &input(t, Some(c.clone()), obs, vec![]));
        if out.commands.contains(&Command::SetTraffic { percent: 10 }) {
            c = cluster(10);
        }
        t += 10_000;
    }
    assert!(matches!(s.phase, Phase::Holding { .. }));
    c.canary_revision = "iris-00003".into();
    let obs = observe(&m, &s, t, &healthy(t));
    let out = m.step(&mut s, &input(t, Some(c.clone()), obs, vec![]));
    // Not measured, not shown worse: neither a pass nor a rollback.
    assert!(!out.commands.iter().any(|c| matches!(
        c,
        Command::Rollback | Command::Promote | Command::SetTraffic { .. }
    )));
    assert!(matches!(
        s.phase,
        Phase::Paused {
            reason: Reason::RevisionChanged { .. },
            ..
        }
    ));
    assert_eq!(s.traffic, 10);
    // Still paused while nothing is said.
    t += 10_000;
    let out = m.step(
        &mut s,
        &input(t, Some(c.clone()), Observations::default(), vec![]),
    );
    assert!(matches!(s.phase, Phase::Paused { .. }));
    assert!(!out.decision.evaluated);
    // Resume: the new revision is the canary now, judged from this step with fresh evidence.
    t += 10_000;
    m.step(
        &mut s,
        &input(
            t,
            Some(c.clone()),
            Observations::default(),
            vec![Operator::Resume],
        ),
    );
    assert!(matches!(s.phase, Phase::Holding { .. }), "{:?}", s.phase);
    assert_eq!(s.canary_revision.as_deref(), Some("iris-00003"));
    assert_eq!(s.passes, 0);
}

#[test]
fn persistence_is_measured_on_the_virtual_clock() {
    let rule = "rule Errors {\n    when canary.error_rate > 0.05\n    require canary.requests >= 10\n    for 1m\n    action rollback\n  }";
    let m = machine(&policy(
        rule,
        "    traffic 10%\n    hold 10m\n    promote",
        "",
    ));
    let mut s = m.initial_state();
    let bad = |t: u64| -> Answer {
        Box::new(move |name: &str, canary: bool| Sample::Value {
            value: match name {
                "requests" => 1000.0,
                "errors" if canary => 100.0,
                "errors" => 1.0,
                _ => 100.0,
            },
            at: t,
        })
    };
    let outs = drive(&m, &mut s, 3_600_000, 10_000, &bad);
    let first_fail = outs
        .iter()
        .find(|o| o.decision.rules.iter().any(|r| r.verdict == Verdict::Fail))
        .map(|o| o.decision.at)
        .expect("a failing evaluation");
    let acted = outs
        .iter()
        .find(|o| o.decision.rules.iter().any(|r| r.acted))
        .map(|o| o.decision.at)
        .expect("acted");
    assert!(
        acted - first_fail >= 60_000,
        "acted {}ms after the first failure",
        acted - first_fail
    );
    assert!(acted - first_fail <= 70_000);
    assert_eq!(Outcome::of(&s), Outcome::RolledBack);
}

fn failures_policy(mode: &str) -> Machine {
    let rule = format!(
        "rule Errors {{\n    when canary.error_rate > 0.05\n    require canary.requests >= 10\n    failures 3{mode}\n    action rollback\n  }}"
    );
    machine(&policy(
        &rule,
        "    traffic 10%\n    hold 10m\n    promote",
        "",
    ))
}

/// Alternates fail, fail, pass, fail, ... and reports whether the rule acted.
fn alternating(m: &Machine) -> bool {
    let mut s = m.initial_state();
    let pattern = [true, true, false];
    let outs = drive(m, &mut s, 600_000, 10_000, &|t| {
        let bad = pattern[(t / 10_000) as usize % 3];
        Box::new(move |name: &str, canary: bool| Sample::Value {
            value: match name {
                "requests" => 1000.0,
                "errors" if canary && bad => 100.0,
                "errors" => 1.0,
                _ => 100.0,
            },
            at: t,
        })
    });
    outs.iter()
        .any(|o| o.decision.rules.iter().any(|r| r.acted))
}

#[test]
fn consecutive_failures_reset_on_a_pass_and_total_failures_accumulate() {
    assert!(
        !alternating(&failures_policy("")),
        "two fails then a pass never makes three consecutive"
    );
    assert!(!alternating(&failures_policy(" consecutive")));
    assert!(
        alternating(&failures_policy(" total")),
        "total failures accumulate across passes"
    );
}

#[test]
fn a_minimum_sample_guard_gives_inconclusive_and_the_declared_action() {
    let m = machine(&policy(
        ERROR_RULE,
        STEPS,
        "on inconclusive hold 1m then rollback",
    ));
    let mut s = m.initial_state();
    let outs = drive(&m, &mut s, 600_000, 5_000, &|t| {
        Box::new(move |name: &str, _c: bool| Sample::Value {
            value: if name == "requests" { 3.0 } else { 0.0 },
            at: t,
        })
    });
    assert!(outs.iter().any(|o| {
        o.decision
            .rules
            .iter()
            .any(|r| r.verdict == Verdict::Inconclusive)
    }));
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::Measurement {
                    kind: rollout_policy::model::FailureKind::Inconclusive
                }
            }
        ),
        "{:?}",
        s.phase
    );
    let first = outs
        .iter()
        .find(|o| {
            o.decision
                .failures
                .contains(&rollout_policy::model::FailureKind::Inconclusive)
        })
        .map(|o| o.decision.at)
        .unwrap_or(0);
    let rb = outs
        .iter()
        .find(|o| o.decision.action == "rollback")
        .map(|o| o.decision.at)
        .unwrap_or(0);
    assert!(
        rb >= first + 60_000 && rb <= first + 70_000,
        "rolled back {}ms after inconclusive began",
        rb - first
    );
}

#[test]
fn abort_wins_from_every_non_terminal_state() {
    let m = machine(&policy(
        ERROR_RULE,
        "    approval\n    traffic 10%\n    hold 1m\n    promote",
        "",
    ));
    // Reach each phase, then abort (together with other commands, which must lose).
    for stop_after in 0..12 {
        let mut s = m.initial_state();
        let mut pct = 0;
        let mut t = 0;
        for i in 0..stop_after {
            let ops = if i == 2 {
                vec![Operator::Approve]
            } else {
                vec![]
            };
            let obs = observe(&m, &s, t, &healthy(t));
            let out = m.step(&mut s, &input(t, Some(cluster(pct)), obs, ops));
            for c in &out.commands {
                match c {
                    Command::SetTraffic { percent } => pct = *percent,
                    Command::Promote => pct = 100,
                    Command::Rollback => pct = 0,
                    _ => {}
                }
            }
            t += 10_000;
        }
        if s.phase.is_terminal() {
            continue;
        }
        let before = s.phase.name();
        let out = m.step(
            &mut s,
            &input(
                t,
                Some(cluster(pct)),
                Observations::default(),
                vec![
                    Operator::PromoteNow,
                    Operator::Approve,
                    Operator::Abort,
                    Operator::Resume,
                ],
            ),
        );
        assert!(
            matches!(
                s.phase,
                Phase::RollingBack {
                    reason: Reason::Aborted,
                    ..
                } | Phase::RolledBack {
                    reason: Reason::Aborted
                }
            ),
            "abort from {before} gave {:?}",
            s.phase
        );
        assert!(
            !out.commands
                .iter()
                .any(|c| matches!(c, Command::Promote | Command::SetTraffic { .. })),
            "abort from {before}"
        );
        let out = m.step(
            &mut s,
            &input(
                t + 1000,
                Some(cluster(0)),
                Observations::default(),
                vec![Operator::PromoteNow],
            ),
        );
        assert!(
            !out.commands
                .iter()
                .any(|c| matches!(c, Command::Promote | Command::SetTraffic { .. }))
        );
        assert!(
            matches!(s.phase, Phase::RolledBack { .. }),
            "from {before}: {:?}",
            s.phase
        );
    }
}

#[test]
fn terminal_states_are_final() {
    let m = m();
    let mut s = m.initial_state();
    drive(&m, &mut s, 3_600_000, 5_000, &healthy_box);
    assert!(s.phase.is_terminal());
    let before = s.clone();
    for ops in [
        vec![],
        vec![Operator::Abort],
        vec![Operator::PromoteNow, Operator::Resume],
    ] {
        let out = m.step(
            &mut s,
            &input(9_999_999, Some(cluster(0)), Observations::default(), ops),
        );
        assert!(out.commands.is_empty(), "{:?}", out.commands);
        assert_eq!(s, before);
    }
}

#[test]
fn pause_and_resume_restart_the_hold() {
    let m = m();
    let mut s = m.initial_state();
    let mut t = 0;
    let mut pct = 0;
    for i in 0..30 {
        let ops = match i {
            6 => vec![Operator::Pause],
            20 => vec![Operator::Resume],
            _ => vec![],
        };
        let obs = observe(&m, &s, t, &healthy(t));
        let out = m.step(&mut s, &input(t, Some(cluster(pct)), obs, ops));
        for c in &out.commands {
            if let Command::SetTraffic { percent } = c {
                pct = *percent;
            }
        }
        if (7..20).contains(&i) {
            assert!(
                matches!(s.phase, Phase::Paused { .. }),
                "tick {i}: {:?}",
                s.phase
            );
            assert!(
                out.commands
                    .iter()
                    .all(|c| matches!(c, Command::WaitUntil { .. } | Command::Event { .. }))
            );
        }
        t += 5_000;
    }
    assert!(matches!(s.phase, Phase::Holding { .. }));
}

#[test]
fn approval_waits_for_an_operator_and_times_out_by_policy() {
    let m = machine(&policy(
        ERROR_RULE,
        "    traffic 10%\n    hold 1m\n    approval max 10m else rollback\n    promote",
        "",
    ));
    let mut s = m.initial_state();
    let outs = drive(&m, &mut s, 3_600_000, 10_000, &healthy_box);
    assert!(outs.iter().any(|o| o.decision.to == "awaiting_approval"));
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::ApprovalLimit
            }
        ),
        "{:?}",
        s.phase
    );
    assert!(!traffic(&outs).contains(&100));
}

#[test]
fn a_canary_that_never_settles_is_rolled_back_at_the_settle_timeout() {
    let m = m();
    let mut s = m.initial_state();
    let mut t = 0;
    let stuck = cluster(0);
    while !s.phase.is_terminal() && t < 3_600_000 {
        m.step(
            &mut s,
            &input(t, Some(stuck.clone()), Observations::default(), vec![]),
        );
        t += 10_000;
    }
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::SettleTimeout
            }
        ),
        "{:?}",
        s.phase
    );
    assert!(t <= 11 * 60_000);
}

#[test]
fn the_deadline_rolls_back() {
    let m = machine(
        &policy(
            ERROR_RULE,
            "    traffic 10%\n    hold 1m\n    approval\n    promote",
            "",
        )
        .replace("passes = 2", "passes = 2\n    deadline = 30m"),
    );
    let mut s = m.initial_state();
    drive(&m, &mut s, 3_600_000, 10_000, &healthy_box);
    assert!(
        matches!(
            s.phase,
            Phase::RolledBack {
                reason: Reason::Deadline
            }
        ),
        "{:?}",
        s.phase
    );
}

#[test]
fn the_same_inputs_give_the_same_outputs_through_serialisation() {
    let m = m();
    let run = |restore_at: Option<usize>| {
        let mut s = m.initial_state();
        let mut outs = Vec::new();
        let mut pct = 0;
        for i in 0..60u64 {
            if Some(i as usize) == restore_at {
                let json = serde_json::to_string(&s).expect("serialise");
                s = serde_json::from_str(&json).expect("restore");
            }
            let t = i * 7_000;
            let obs = observe(&m, &s, t, &healthy(t));
            let out = m.step(&mut s, &input(t, Some(cluster(pct)), obs, vec![]));
            for c in &out.commands {
                if let Command::SetTraffic { percent } = c {
                    pct = *percent;
                }
            }
            outs.push(serde_json::to_string(&out).expect("json"));
        }
        outs
    };
    let base = run(None);
    assert_eq!(base, run(None));
    for at in [0, 1, 5, 17, 33, 59] {
        assert_eq!(base, run(Some(at)), "restored at {at}");
    }
}

#[test]
fn state_carries_its_version() {
    let m = m();
    let s = m.initial_state();
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["version"], rollout_engine::STATE_VERSION);
}

#[test]
fn a_policy_change_pauses_and_resume_enters_the_same_step_of_the_new_policy() {
    let m = m();
    let mut s = m.initial_state();
    let mut t = 0;
    let mut c = cluster(0);
    for _ in 0..4 {
        let obs = observe(&m, &s, t, &healthy(t));
        let out = m.step(&mut s, &input(t, Some(c.clone()), obs, vec![]));
        if out.commands.contains(&Command::SetTraffic { percent: 10 }) {
            c = cluster(10);
        }
        t += 10_000;
    }
    assert_eq!(s.step, 1, "holding at 10%");
    // The new policy has another first step: the rollout pauses, traffic unchanged.
    let m2 = machine(&policy(
        ERROR_RULE,
        "    traffic 5%\n    traffic 20%\n    hold 1m\n    promote",
        "",
    ));
    let out = m2.pause_for_policy_change(&mut s, t, "step 1 changed".into());
    assert!(matches!(
        s.phase,
        Phase::Paused {
            reason: Reason::PolicyChanged { .. },
            ..
        }
    ));
    assert!(!out.commands.iter().any(|c| matches!(
        c,
        Command::SetTraffic { .. } | Command::Rollback | Command::Promote
    )));
    // Resume: step 2 of the new policy (traffic 20%) is entered afresh.
    t += 1_000;
    let out = m2.step(
        &mut s,
        &input(t, Some(c), Observations::default(), vec![Operator::Resume]),
    );
    assert!(
        out.commands.contains(&Command::SetTraffic { percent: 20 }),
        "{:?}",
        out.commands
    );
    assert_eq!(s.step, 1);
}

#[test]
fn stored_states_that_do_not_fit_the_policy_are_refused_and_evidence_moves_by_rule_name() {
    let m = m();
    let mut s = m.initial_state();
    assert!(m.check_state(&s).is_ok());
    s.step = 99;
    assert!(
        m.check_state(&s)
            .expect_err("refused")
            .contains("out of range")
    );
    s.step = 0;
    s.version = 0;
    assert!(m.check_state(&s).is_err());
    s.version = rollout_engine::STATE_VERSION;
    s.rules.push(Default::default());
    assert!(m.check_state(&s).is_err());
    // Two rules in the new policy, the old one second: its evidence follows its name.
    let two = machine(&policy(
        &format!(
            "rule Latency {{\n    when canary.latency_p95 > 2 * stable.latency_p95\n    require canary.requests >= 10\n    action pause\n  }}\n  {ERROR_RULE}"
        ),
        STEPS,
        "",
    ));
    let mut s = m.initial_state();
    s.rules[0].total = 3;
    two.remap_rules(&mut s, &["Errors".to_string()]);
    assert_eq!(s.rules.len(), 2);
    assert_eq!((s.rules[0].total, s.rules[1].total), (0, 3));
    assert!(two.check_state(&s).is_ok());
}

#[test]
fn passes_separated_by_a_gap_are_not_consecutive() {
    // A 1 m hold with 2 passes and a 10 s interval: a pass after a 30 s silence starts
    // counting again, so the hold cannot end on passes taken on both sides of the gap.
    let m = m();
    let mut s = m.initial_state();
    let mut t = 0;
    let mut c = cluster(0);
    // Into the 10% hold.
    for _ in 0..3 {
        let obs = observe(&m, &s, t, &healthy(t));
        let out = m.step(&mut s, &input(t, Some(c.clone()), obs, vec![]));
        if out.commands.contains(&Command::SetTraffic { percent: 10 }) {
            c = cluster(10);
        }
        t += 10_000;
    }
    assert!(matches!(s.phase, Phase::Holding { .. }));
    let obs = observe(&m, &s, t, &healthy(t));
    m.step(&mut s, &input(t, Some(c.clone()), obs, vec![]));
    let before = s.passes;
    assert!(before >= 1);
    // 30 s of nothing (the runner could not read the cluster), then one passing evaluation.
    t += 30_000;
    let obs = observe(&m, &s, t, &healthy(t));
    let out = m.step(&mut s, &input(t, Some(c), obs, vec![]));
    assert!(out.decision.evaluated);
    assert_eq!(s.passes, 1, "the gap broke the run of passes");
}

const DETECT_RULE: &str = "rule Errors {\n    when canary.error_rate > stable.error_rate with confidence 95% detect 2x\n    action rollback\n  }";

/// Counts since the start, as Prometheus would give them: canary 10 requests a second, stable 90,
/// both failing `canary_rate` and 0.5% of them.
fn steady(canary_rate: f64) -> impl Fn(u64) -> Answer {
    move |t| {
        let secs = t as f64 / 1000.0;
        Box::new(move |name: &str, canary: bool| {
            let n = if canary { 10.0 * secs } else { 90.0 * secs };
            let value = match name {
                "requests" => n,
                "errors" => n * if canary { canary_rate } else { 0.005 },
                _ => 100.0,
            };
            Sample::Value { value, at: t }
        })
    }
}

#[test]
fn a_detect_rule_holds_past_the_hold_until_its_regression_is_excluded() {
    let m = machine(&policy(
        DETECT_RULE,
        "    traffic 10%\n    hold 1m until canary.requests >= 1 max 2h\n    promote",
        "",
    ));
    let mut s = m.initial_state();
    let outs = drive(&m, &mut s, 7_200_000, 10_000, &steady(0.005));
    assert_eq!(Outcome::of(&s), Outcome::Promoted);
    let waited = outs
        .iter()
        .filter(|o| {
            o.decision
                .reason
                .contains("excluded the `detect` regression")
        })
        .count();
    assert!(
        waited > 6,
        "held past the 1m hold for the evidence: {waited} decisions"
    );
    let excluded = outs.iter().rev().find_map(|o| {
        o.decision
            .rules
            .iter()
            .find_map(|r| r.test.as_ref().and_then(|t| t.excluded))
    });
    assert_eq!(excluded, Some(true), "the last look excluded 2x");
}

#[test]
fn a_detect_rule_rolls_back_a_regression_it_shows() {
    let m = machine(&policy(
        DETECT_RULE,
        "    traffic 10%\n    hold 1m until canary.requests >= 1 max 2h\n    promote",
        "",
    ));
    let mut s = m.initial_state();
    drive(&m, &mut s, 7_200_000, 10_000, &steady(0.02));
    assert!(
        matches!(&s.phase, Phase::RolledBack { reason: Reason::Rule { rule, .. } } if rule == "Errors"),
        "{:?}",
        s.phase
    );
}

#[test]
fn undecided_at_the_hold_s_max_pauses_and_the_deadline_does_not_roll_it_back() {
    // The same counts at every look: one look's evidence, never enough to decide.
    let m = machine(
        &policy(
            DETECT_RULE,
            "    traffic 10%\n    hold 1m until canary.requests >= 1 max 10m\n    promote",
            "",
        )
        .replace("passes = 2", "passes = 2\n    deadline = 30m"),
    );
    let mut s = m.initial_state();
    drive(&m, &mut s, 3_600_000, 10_000, &healthy_box);
    assert!(
        matches!(
            &s.phase,
            Phase::Paused {
                reason: Reason::Undecided { .. },
                ..
            }
        ),
        "an hour in, past the 30m deadline, it waits for a person: {:?}",
        s.phase
    );
}
