//! `rolloutctl plan`: what a compiled policy will do — steps, rules, durations, worst-case
//! detection time and exposure per step — as text, JSON or a Mermaid state diagram.

use std::fmt::Write as _;
use std::time::Duration;

use rollout_policy::human_duration;
use rollout_policy::model::{Action, Response, StepKind};
use serde::Serialize;

use crate::Machine;

/// The plan of a policy.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Policy name.
    pub name: String,
    /// `namespace/name` of the InferenceService.
    pub target: String,
    /// Evaluation interval, seconds.
    pub interval_s: f64,
    /// Default window, seconds.
    pub window_s: f64,
    /// Scrape interval assumed, seconds (declared, or 15 s).
    pub scrape_s: f64,
    /// Deadline, seconds.
    pub deadline_s: f64,
    /// Steps in order.
    pub steps: Vec<PlanStep>,
    /// Rules.
    pub rules: Vec<PlanRule>,
    /// Shortest possible rollout, seconds (settling not counted).
    pub min_total_s: f64,
    /// Longest rollout, seconds: the deadline unless every step is bounded earlier.
    pub max_total_s: f64,
}

/// One step of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanStep {
    /// 1-based.
    pub number: usize,
    /// Label, e.g. `hold 5m`.
    pub label: String,
    /// Canary traffic during the step.
    pub traffic: u8,
    /// Shortest time in the step, seconds.
    pub min_s: f64,
    /// Longest time in the step, seconds (`None`: bounded only by the deadline).
    pub max_s: Option<f64>,
    /// Canary exposure over the shortest step: percent × minutes.
    pub exposure_pct_min: f64,
    /// Worst-case time from a breach to the rule's action, per rule (`None`: statistical, data-dependent).
    pub detection: Vec<(String, Option<f64>)>,
    /// Canary exposure to a bad revision until the fastest rollback rule acts: percent × minutes.
    pub bad_exposure_pct_min: Option<f64>,
}

/// One rule of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanRule {
    /// Name.
    pub name: String,
    /// Line.
    pub line: usize,
    /// Action.
    pub action: Action,
    /// `for`, seconds.
    pub for_s: f64,
    /// `failures`.
    pub failures: u32,
    /// Window, seconds.
    pub window_s: f64,
    /// Confidence of a statistical rule.
    pub confidence: Option<f64>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Plan {
    /// Computes the plan of a machine.
    pub fn of(m: &Machine) -> Plan {
        let p = m.policy();
        let interval = secs(p.evaluation.interval);
        let scrape = p.prometheus.scrape_interval.map_or(15.0, secs);
        let deadline = secs(p.evaluation.deadline);
        let passes_time = f64::from(p.evaluation.passes.saturating_sub(1)) * interval;
        let rules: Vec<PlanRule> = p
            .rules
            .iter()
            .map(|r| PlanRule {
                name: r.name.clone(),
                line: r.location.line,
                action: r.action,
                for_s: secs(r.persistence),
                failures: r.failures,
                window_s: secs(r.window),
                confidence: r.statistical.as_ref().map(|s| s.confidence),
            })
            .collect();
        let mut steps = Vec::new();
        let mut traffic = 0u8;
        let (mut min_total, mut max_total, mut bounded) = (0.0, 0.0, true);
        for (i, s) in p.steps.iter().enumerate() {
            let (min_s, max_s) = match &s.kind {
                StepKind::Traffic { percent } => {
                    traffic = *percent;
                    (0.0, Some(secs(p.evaluation.settle_timeout)))
                }
                StepKind::Hold(h) => {
                    let min = secs(h.min).max(passes_time);
                    // A plain hold ends only with `passes` clean evaluations: unbounded if they
                    // never come, except by the deadline (or a failure handler).
                    (min, h.until.as_ref().map(|u| secs(u.max)))
                }
                StepKind::Approval { max, .. } => (0.0, max.map(secs)),
                StepKind::Promote => {
                    traffic = 100;
                    (0.0, Some(secs(p.evaluation.settle_timeout)))
                }
            };
            min_total += min_s;
            match max_s {
                Some(m) => max_total += m,
                None => bounded = false,
            }
            let measured = matches!(s.kind, StepKind::Hold(_) | StepKind::Approval { .. })
                && traffic > 0
                && traffic < 100;
            let detection: Vec<(String, Option<f64>)> = if measured {
                p.rules
                    .iter()
                    .enumerate()
                    .map(|(ri, r)| {
                        let (persistence, failures, window) = match &s.kind {
                            StepKind::Hold(h) => h.overrides.iter().find(|o| o.rule == ri).map_or(
                                (secs(r.persistence), r.failures, secs(r.window)),
                                |o| {
                                    (
                                        o.persistence.map_or(secs(r.persistence), secs),
                                        o.failures.map_or(r.failures, |f| f.0),
                                        o.window.map_or(secs(r.window), secs),
                                    )
                                },
                            ),
                            _ => (secs(r.persistence), r.failures, secs(r.window)),
                        };
                        let d = r.statistical.is_none().then(|| {
                            let ticks_for = (persistence / interval).ceil() * interval;
                            let ticks_fail = f64::from(failures.saturating_sub(1)) * interval;
                            scrape + window + interval + ticks_for.max(ticks_fail)
                        });
                        (r.name.clone(), d)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let fastest_rollback = p
                .rules
                .iter()
                .zip(&detection)
                .filter(|(r, _)| r.action == Action::Rollback)
                .filter_map(|(_, (_, d))| *d)
                .reduce(f64::min);
            steps.push(PlanStep {
                number: i + 1,
                label: m.step_label(i),
                traffic,
                min_s,
                max_s,
                exposure_pct_min: if measured {
                    f64::from(traffic) * min_s / 60.0
                } else {
                    0.0
                },
                detection,
                bad_exposure_pct_min: fastest_rollback.map(|d| f64::from(traffic) * d / 60.0),
            });
        }
        Plan {
            name: p.name.clone(),
            target: format!("{}/{}", p.target.namespace, p.target.name),
            interval_s: interval,
            window_s: secs(p.evaluation.window),
            scrape_s: scrape,
            deadline_s: deadline,
            steps,
            rules,
            min_total_s: min_total.min(deadline),
            max_total_s: if bounded {
                max_total.min(deadline)
            } else {
                deadline
            },
        }
    }

    /// Human-readable text.
    pub fn text(&self, m: &Machine) -> String {
        let d = |s: f64| human_duration(Duration::from_secs_f64(s.max(0.0)));
        let mut o = String::new();
        let _ = writeln!(o, "rollout {} → {}", self.name, self.target);
        let _ = writeln!(
            o,
            "evaluation every {}, window {}, scrape {}, deadline {}\n",
            d(self.interval_s),
            d(self.window_s),
            d(self.scrape_s),
            d(self.deadline_s)
        );
        let _ = writeln!(
            o,
            "{:<4} {:<28} {:>7} {:>9} {:>9} {:>12}  worst-case detection",
            "step", "", "traffic", "min", "max", "exposure"
        );
        for s in &self.steps {
            let det = s
                .detection
                .iter()
                .map(|(r, v)| format!("{r} {}", v.map_or("data-dependent".to_string(), d)))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "{:<4} {:<28} {:>6}% {:>9} {:>9} {:>12}  {}",
                s.number,
                s.label,
                s.traffic,
                d(s.min_s),
                s.max_s.map_or("deadline".into(), d),
                if s.exposure_pct_min > 0.0 {
                    format!("{:.0} %·min", s.exposure_pct_min)
                } else {
                    "-".into()
                },
                det
            );
        }
        let _ = writeln!(
            o,
            "\nduration: at least {}, at most {}",
            d(self.min_total_s),
            d(self.max_total_s)
        );
        let _ = writeln!(o, "\nrules:");
        for r in &self.rules {
            let _ = writeln!(
                o,
                "  {} (line {}): {}{}, for {}, failures {}, window {}",
                r.name,
                r.line,
                r.action.keyword(),
                r.confidence.map_or(String::new(), |c| format!(
                    ", statistical at {:.2}% confidence",
                    c * 100.0
                )),
                d(r.for_s),
                r.failures,
                d(r.window_s)
            );
        }
        let f = &m.policy().failure;
        let resp = |r: Response| match r {
            Response::Act(a) => a.keyword().to_string(),
            Response::Hold { limit: None } => "hold".into(),
            Response::Hold {
                limit: Some((t, a)),
            } => format!("hold {} then {}", human_duration(t), a.keyword()),
        };
        let _ = writeln!(
            o,
            "\non no_data: {}; stale_data: {}; query_error: {}; inconclusive: {}",
            resp(f.no_data),
            resp(f.stale_data),
            resp(f.query_error),
            resp(f.inconclusive)
        );
        let _ = writeln!(
            o,
            "\nworst-case detection = scrape + window + interval + max(for, (failures-1) x interval), for a breach\nthat shows fully in one window; statistical rules depend on the data (see docs/statistics.md)."
        );
        o
    }

    /// A Mermaid state diagram.
    pub fn mermaid(&self, m: &Machine) -> String {
        let p = m.policy();
        let mut o = String::from("stateDiagram-v2\n");
        let _ = writeln!(o, "    [*] --> s1");
        let has_pause = p.rules.iter().any(|r| r.action == Action::Pause);
        for s in &self.steps {
            let id = format!("s{}", s.number);
            let _ = writeln!(o, "    {id} : {} ({}%)", s.label, s.traffic);
            let next = if s.number < self.steps.len() {
                format!("s{}", s.number + 1)
            } else {
                "Promoted".into()
            };
            let label = match &p.steps[s.number - 1].kind {
                StepKind::Traffic { .. } => "settled".to_string(),
                StepKind::Hold(_) => format!("{} passing evaluations", p.evaluation.passes),
                StepKind::Approval { .. } => "approve".to_string(),
                StepKind::Promote => "confirmed".to_string(),
            };
            let _ = writeln!(o, "    {id} --> {next} : {label}");
            if !s.detection.is_empty() {
                for r in p.rules.iter().filter(|r| r.action == Action::Rollback) {
                    let _ = writeln!(o, "    {id} --> RolledBack : {}", r.name);
                }
                if has_pause {
                    let _ = writeln!(o, "    {id} --> Paused : pause rule");
                }
            }
        }
        if has_pause {
            let _ = writeln!(o, "    Paused --> RolledBack : abort");
        }
        let _ = writeln!(o, "    Promoted --> [*]\n    RolledBack --> [*]");
        o
    }
}
