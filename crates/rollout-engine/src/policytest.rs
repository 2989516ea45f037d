//! Policy unit tests (`rolloutctl test`): a YAML file names a policy and, per test, a scenario and
//! what must happen. This module parses the file and judges simulated runs; the CLI reads files.
//!
//! ```yaml
//! policy: ../../policies/sklearn-iris-canary.rollout
//! tests:
//!   - name: a 5xx regression at 10% is rolled back before 25%
//!     scenario: ../scenarios/error-regression-10.yaml
//!     expect:
//!       outcome: rolled_back
//!       before_traffic: 25
//!       within: 3m
//!       timeline: [traffic 10%, rollback, rolled_back]
//! ```

use serde::Deserialize;

use crate::scenario::{Scenario, parse_duration};
use crate::sim::{RunResult, Simulation};
use crate::{Machine, Millis};

/// A test file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Path of the policy, relative to the test file.
    pub policy: String,
    /// The tests.
    pub tests: Vec<TestCase>,
}

/// One test.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What it checks.
    pub name: String,
    /// A scenario: a path relative to the test file, or inline.
    pub scenario: ScenarioRef,
    /// What must happen.
    pub expect: Expect,
    /// Monte Carlo: every one of this many runs (seeds `seed`, `seed + 1`, ...) must pass.
    #[serde(default = "one")]
    pub runs: usize,
}

fn one() -> usize {
    1
}

/// A scenario by path or inline.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ScenarioRef {
    /// A path relative to the test file.
    Path(String),
    /// An inline scenario (YAML mapping).
    Inline(crate::yaml::Value),
}

/// Expectations; every field given must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `promoted`, `rolled_back`, `aborted`, `failed` or `stalled`.
    pub outcome: Option<String>,
    /// Rolled back (or paused) before the canary was asked for this much traffic.
    pub before_traffic: Option<u8>,
    /// The canary was asked for at most this much traffic.
    pub max_traffic: Option<u8>,
    /// Rolled back or paused within this long of the scenario's first change.
    pub within: Option<String>,
    /// The rollout ended (or the simulation stopped) within this long.
    pub ends_within: Option<String>,
    /// The reason of the end contains this text, e.g. `CanaryHigherErrorRate`.
    pub reason: Option<String>,
    /// The milestones, in order: `traffic 10%`, `promote`, `rollback`, `paused`, `promoted`, ...
    pub timeline: Option<Vec<String>>,
}

/// The verdict of one test.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// Test name.
    pub name: String,
    /// Problems; empty means passed.
    pub failures: Vec<String>,
    /// The first failing run's timeline, for the report.
    pub timeline: Vec<String>,
    /// A line diff of expected and actual milestones, when the timeline was wrong.
    pub diff: Option<String>,
    /// Runs made.
    pub runs: usize,
}

impl TestFile {
    /// Parses a test file.
    pub fn from_yaml(text: &str) -> Result<TestFile, String> {
        crate::yaml::from_str(text)
    }
}

impl ScenarioRef {
    /// Loads the scenario; `read` resolves a path relative to the test file.
    pub fn load(&self, read: &dyn Fn(&str) -> Result<String, String>) -> Result<Scenario, String> {
        match self {
            ScenarioRef::Path(p) => Scenario::from_yaml(&read(p)?).map_err(|e| format!("{p}: {e}")),
            ScenarioRef::Inline(v) => {
                let text = crate::yaml::to_string(v)?;
                Scenario::from_yaml(&text)
            }
        }
    }
}

fn fmt_time(ms: Millis) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The milestones of a run, one per line with its time.
pub fn timeline(r: &RunResult) -> Vec<String> {
    r.events
        .iter()
        .map(|e| format!("{} {}", fmt_time(e.at), e.what))
        .collect()
}

/// Runs one test case against a machine.
pub fn run_case(machine: &Machine, case: &TestCase, scenario: &Scenario) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        failures: Vec::new(),
        timeline: Vec::new(),
        diff: None,
        runs: case.runs.max(1),
    };
    for run in 0..result.runs {
        let r = Simulation::new(machine, scenario, run as u64, false).run();
        let (failures, diff) = judge(&case.expect, &r, scenario);
        if !failures.is_empty() {
            result.failures = failures
                .into_iter()
                .map(|f| {
                    if result.runs > 1 {
                        format!("run {} (seed {}): {f}", run + 1, scenario.seed + run as u64)
                    } else {
                        f
                    }
                })
                .collect();
            result.timeline = timeline(&r);
            result.diff = diff;
            break;
        }
    }
    result
}

fn judge(e: &Expect, r: &RunResult, scenario: &Scenario) -> (Vec<String>, Option<String>) {
    let mut f = Vec::new();
    if let Some(o) = &e.outcome
        && o != r.outcome.as_str()
    {
        f.push(format!(
            "expected outcome `{o}`, got `{}`",
            r.outcome.as_str()
        ));
    }
    let acted = match (r.rollback_at, r.pause_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(limit) = e.before_traffic {
        let reached = r.events.iter().any(|ev| {
            ev.what
                .strip_prefix("traffic ")
                .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
                .is_some_and(|p| p >= limit && acted.is_none_or(|a| ev.at <= a))
        }) || (limit <= 100 && r.events.iter().any(|ev| ev.what == "promote"));
        if acted.is_none() {
            f.push(format!(
                "expected a rollback or pause before traffic {limit}%, but there was none"
            ));
        } else if reached {
            f.push(format!(
                "expected a rollback or pause before traffic {limit}%, but traffic reached it first"
            ));
        }
    }
    if let Some(max) = e.max_traffic
        && r.max_traffic > max
    {
        f.push(format!(
            "expected traffic at most {max}%, but the canary was asked for {}%",
            r.max_traffic
        ));
    }
    if let Some(w) = &e.within {
        match parse_duration(w) {
            Err(err) => f.push(format!("`within`: {err}")),
            Ok(limit) => match (scenario.onset(), r.detection()) {
                (None, _) => {
                    f.push("`within` needs a scenario with a change (the regression onset)".into())
                }
                (Some(_), None) => f.push(format!(
                    "expected a rollback or pause within {w} of the regression, but there was none"
                )),
                (Some(_), Some(d)) if d > limit => f.push(format!(
                    "expected a rollback or pause within {w} of the regression, it took {}",
                    rollout_policy::human_duration(std::time::Duration::from_millis(d))
                )),
                _ => {}
            },
        }
    }
    if let Some(w) = &e.ends_within {
        match parse_duration(w) {
            Err(err) => f.push(format!("`ends_within`: {err}")),
            Ok(limit) if r.end > limit => f.push(format!(
                "expected the rollout to end within {w}, it ran {}",
                rollout_policy::human_duration(std::time::Duration::from_millis(r.end))
            )),
            Ok(_) => {}
        }
    }
    let mut diff = None;
    if let Some(expected) = &e.timeline {
        let actual: Vec<String> = r.events.iter().map(|e| e.what.clone()).collect();
        if &actual != expected {
            f.push("the timeline differs".into());
            diff = Some(line_diff(expected, &actual));
        }
    }
    if let Some(reason) = &e.reason
        && !reason_of(r).contains(reason.as_str())
    {
        f.push(format!(
            "expected the reason to mention `{reason}`, it was `{}`",
            reason_of(r)
        ));
    }
    (f, diff)
}

fn reason_of(r: &RunResult) -> String {
    r.end_reason.clone().unwrap_or_default()
}

/// A unified-style diff of two line lists (`-` expected only, `+` actual only).
pub fn line_diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out.push_str(&format!("  {}\n", expected[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", actual[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_missing_and_extra_lines() {
        let e: Vec<String> = ["traffic 10%", "traffic 25%", "promote"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a: Vec<String> = ["traffic 10%", "rollback"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            line_diff(&e, &a),
            "  traffic 10%\n- traffic 25%\n- promote\n+ rollback\n"
        );
    }

    #[test]
    fn parses_a_test_file() {
        let t = TestFile::from_yaml(
            "policy: p.rollout\ntests:\n  - name: x\n    scenario: s.yaml\n    expect: {outcome: promoted}\n  - name: y\n    runs: 5\n    scenario:\n      rps: 10\n      stable: {error_rate: 1%}\n    expect: {outcome: rolled_back, within: 2m}\n",
        )
        .expect("valid");
        assert_eq!(t.tests.len(), 2);
        assert!(matches!(t.tests[0].scenario, ScenarioRef::Path(_)));
        assert!(matches!(t.tests[1].scenario, ScenarioRef::Inline(_)));
        assert_eq!(t.tests[1].runs, 5);
    }
}
