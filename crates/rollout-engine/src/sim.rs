//! The simulator: runs the machine against a simulated KServe and Prometheus on virtual time.
//!
//! Traffic is generated per scrape interval (Poisson requests, binomial errors) and split between
//! the arms by the traffic the simulated cluster applies, `settle` after the machine asks. Queries
//! are answered as Prometheus would: counts over the query window, quantiles from a log-normal
//! latency with the sampling noise of the window's request count, no data for an arm without
//! traffic, gaps, stale samples and query errors where the scenario says.

use rollout_policy::model::{Arm, MetricKind};

use crate::rng::Rng;
use crate::scenario::{ArmName, Behaviour, Scenario};
use crate::stats::normal_quantile;
use crate::{
    Cluster, Command, Decision, Input, Machine, Millis, Observations, Operator, Outcome, QueryKey,
    Sample,
};

/// One scrape interval of generated traffic for one arm.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    requests: u64,
    errors: u64,
    /// Log-normal parameters of the latency in this interval (ms).
    mu: f64,
    sigma: f64,
    /// Whether the arm received traffic in this interval.
    present: bool,
}

/// Something that happened in a simulated rollout.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Event {
    /// When.
    pub at: Millis,
    /// What, e.g. `traffic 25%`, `rollback`, `promoted`.
    pub what: String,
}

/// The result of one simulated rollout.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// When the simulation stopped.
    pub end: Millis,
    /// The regression onset (the scenario's first change), if any.
    pub onset: Option<Millis>,
    /// When the machine first asked for a rollback.
    pub rollback_at: Option<Millis>,
    /// When the machine first paused.
    pub pause_at: Option<Millis>,
    /// The highest canary traffic the machine asked for before the end (100 on promotion).
    pub max_traffic: u8,
    /// Milestones: traffic changes, pauses, promotion, rollback, the end.
    pub events: Vec<Event>,
    /// Why the rollout ended (or paused), in a sentence.
    pub end_reason: Option<String>,
    /// Every decision (only when recording).
    pub decisions: Vec<Decision>,
}

impl RunResult {
    /// Time from the regression onset to the first rollback (or pause) command.
    pub fn detection(&self) -> Option<Millis> {
        let onset = self.onset?;
        let acted = match (self.rollback_at, self.pause_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        (acted >= onset).then(|| acted - onset)
    }

    /// The canary traffic the machine had asked for when it first asked for a rollback.
    pub fn traffic_at_rollback(&self) -> Option<u8> {
        let at = self.rollback_at?;
        self.events
            .iter()
            .filter(|e| e.at <= at)
            .filter_map(|e| {
                e.what
                    .strip_prefix("traffic ")
                    .and_then(|p| p.trim_end_matches('%').parse().ok())
            })
            .next_back()
    }
}

/// A simulation of one rollout.
#[derive(Debug)]
pub struct Simulation<'a> {
    machine: &'a Machine,
    scenario: &'a Scenario,
    rng: Rng,
    scrape_ms: Millis,
    buckets: [Vec<Bucket>; 2],
    /// Traffic the cluster applies: (percent, from time).
    applied: Vec<(u8, Millis)>,
    pending: Option<(u8, Millis)>,
    behaviour: [Behaviour; 2],
    rps: f64,
    change_idx: usize,
    record: bool,
}

fn arm_idx(a: Arm) -> usize {
    match a {
        Arm::Canary => 0,
        Arm::Stable => 1,
    }
}

fn arm_name(a: Arm) -> ArmName {
    match a {
        Arm::Canary => ArmName::Canary,
        Arm::Stable => ArmName::Stable,
    }
}

/// Log-normal parameters through a median and a 95th percentile.
fn lognormal(b: &Behaviour) -> (f64, f64) {
    let mu = (b.latency.p50 as f64).ln();
    let sigma = ((b.latency.p95 as f64).ln() - mu) / 1.644_853_626_951_472_2;
    (mu, sigma.max(1e-9))
}

impl<'a> Simulation<'a> {
    /// A simulation with the scenario's seed plus `run`.
    pub fn new(machine: &'a Machine, scenario: &'a Scenario, run: u64, record: bool) -> Self {
        let scrape_ms = scenario
            .scrape_interval
            .or_else(|| {
                machine
                    .policy()
                    .prometheus
                    .scrape_interval
                    .map(|d| d.as_millis() as Millis)
            })
            .unwrap_or(15_000)
            .max(100);
        let stable = scenario.stable.clone();
        let canary = scenario.canary.clone().unwrap_or_else(|| stable.clone());
        Simulation {
            machine,
            scenario,
            rng: Rng::new(scenario.seed.wrapping_add(run)),
            scrape_ms,
            buckets: [Vec::new(), Vec::new()],
            applied: vec![(scenario.initial_traffic, 0)],
            pending: None,
            behaviour: [canary, stable],
            rps: scenario.rps,
            change_idx: 0,
            record,
        }
    }

    fn canary_percent_at(&self, t: Millis) -> u8 {
        self.applied
            .iter()
            .rev()
            .find(|(_, from)| *from <= t)
            .map_or(0, |(p, _)| *p)
    }

    /// Generates traffic up to time `t`.
    fn generate_until(&mut self, t: Millis) {
        let target = (t / self.scrape_ms) as usize;
        while self.buckets[0].len() < target {
            let k = self.buckets[0].len() as Millis;
            let start = k * self.scrape_ms;
            // Apply behaviour changes that start in this interval.
            while let Some(c) = self.scenario.changes.get(self.change_idx) {
                if c.at > start {
                    break;
                }
                for (i, name) in [(0, ArmName::Canary), (1, ArmName::Stable)] {
                    if c.arm.is_none_or(|a| a == name) {
                        if let Some(e) = c.error_rate {
                            self.behaviour[i].error_rate = e;
                        }
                        if let Some(l) = c.latency {
                            self.behaviour[i].latency = l;
                        }
                    }
                }
                if let Some(r) = c.rps {
                    self.rps = r;
                }
                self.change_idx += 1;
            }
            let canary_pct = if self.scenario.canary_ready {
                self.canary_percent_at(start)
            } else {
                0
            };
            let secs = self.scrape_ms as f64 / 1000.0;
            for i in 0..2 {
                let share = if i == 0 {
                    f64::from(canary_pct)
                } else {
                    f64::from(100 - canary_pct)
                } / 100.0;
                let requests = self.rng.poisson(self.rps * share * secs);
                let errors = self.rng.binomial(requests, self.behaviour[i].error_rate);
                let (mu, sigma) = lognormal(&self.behaviour[i]);
                self.buckets[i].push(Bucket {
                    requests,
                    errors,
                    mu,
                    sigma,
                    present: share > 0.0,
                });
            }
        }
    }

    /// Answers one query at time `t`.
    fn answer(&mut self, key: &QueryKey, t: Millis) -> Sample {
        let arm = arm_name(key.arm);
        if self.scenario.query_errors.iter().any(|p| p.covers(t, arm)) {
            return Sample::Error {
                message: "simulated Prometheus outage".into(),
            };
        }
        if self.scenario.gaps.iter().any(|p| p.covers(t, arm)) {
            return Sample::NoData;
        }
        // A stale period freezes the arm's series at its start.
        let (at_t, sample_at) = match self.scenario.stale.iter().find(|p| p.covers(t, arm)) {
            Some(p) => (p.from, p.from - p.from % self.scrape_ms),
            None => (t, t - t % self.scrape_ms),
        };
        let machine = self.machine;
        let Some(metric) = machine.policy().metrics.get(key.metric) else {
            return Sample::NoData;
        };
        let name = metric.name.as_str();
        let buckets = &self.buckets[arm_idx(key.arm)];
        let end = (at_t / self.scrape_ms) as usize;
        let n_buckets = ((key.window_ms / self.scrape_ms).max(1)) as usize;
        let start = end.saturating_sub(n_buckets);
        let window = &buckets[start.min(buckets.len())..end.min(buckets.len())];
        let present = window.iter().any(|b| b.present);
        let requests: u64 = window.iter().map(|b| b.requests).sum();
        let errors: u64 = window.iter().map(|b| b.errors).sum();
        if let Some(v) = self.scenario.metrics.get(name) {
            let value = if key.arm == Arm::Canary {
                v.canary
            } else {
                v.stable
            };
            if !present {
                return Sample::NoData;
            }
            let value = if v.per_request {
                (value * requests as f64).round()
            } else {
                value
            };
            return Sample::Value {
                value,
                at: sample_at,
            };
        }
        let value = match name {
            "requests" if present => requests as f64,
            // The preset's `or (requests * 0)`: 0 with requests, no data without.
            "errors" if present => errors as f64,
            "rps" if present => requests as f64 / (key.window_ms as f64 / 1000.0),
            q if q.starts_with("latency_p") && present && requests > 0 => {
                let quantile = match q {
                    "latency_p50" => 0.5,
                    "latency_p95" => 0.95,
                    "latency_p99" => 0.99,
                    _ => return Sample::NoData,
                };
                // Request-weighted mixture parameters, and the sampling noise of the quantile.
                let (mut mu, mut sigma) = (0.0, 0.0);
                for b in window {
                    mu += b.mu * b.requests as f64;
                    sigma += b.sigma * b.requests as f64;
                }
                mu /= requests as f64;
                sigma /= requests as f64;
                let sd = (quantile * (1.0 - quantile) / requests as f64).sqrt();
                let noisy = (quantile + sd * self.rng.normal()).clamp(0.0005, 0.9995);
                (mu + sigma * normal_quantile(noisy)).exp()
            }
            _ => return Sample::NoData,
        };
        match metric.kind {
            MetricKind::Query(_) => Sample::Value {
                value,
                at: sample_at,
            },
            MetricKind::Derived(_) => Sample::NoData,
        }
    }

    fn cluster(&self, t: Millis) -> Cluster {
        let pct = self.canary_percent_at(t);
        Cluster {
            canary_percent: pct,
            canary_revision: if self.scenario.canary_ready {
                "canary-00002".into()
            } else {
                "stable-00001".into()
            },
            stable_revision: (pct < 100).then(|| "stable-00001".into()),
            ready: self.scenario.canary_ready,
            observed: self.pending.is_none_or(|(_, at)| at <= t),
        }
    }

    /// Runs the rollout to its end or the scenario's time limit.
    pub fn run(mut self) -> RunResult {
        let m = self.machine;
        let mut state = m.initial_state();
        let mut t: Millis = 0;
        let mut op_idx = 0;
        let mut ops: Vec<_> = self.scenario.operator.clone();
        ops.sort_by_key(|o| o.at);
        let mut result = RunResult {
            outcome: Outcome::Stalled,
            end: 0,
            onset: self.scenario.onset(),
            rollback_at: None,
            pause_at: None,
            max_traffic: 0,
            events: Vec::new(),
            end_reason: None,
            decisions: Vec::new(),
        };
        let mut last_phase = String::new();
        loop {
            // The cluster applies a pending change once it has settled.
            if let Some((p, at)) = self.pending
                && at <= t
            {
                self.applied.push((p, at));
                self.pending = None;
            }
            self.generate_until(t);
            let mut operator: Vec<Operator> = Vec::new();
            while let Some(o) = ops.get(op_idx) {
                if o.at > t {
                    break;
                }
                operator.push(o.command);
                op_idx += 1;
            }
            let mut observations = Observations::default();
            for key in m.queries(&state, t) {
                let sample = self.answer(&key, t);
                observations.push(key, sample);
            }
            let input = Input {
                now: t,
                cluster: Some(self.cluster(t)),
                observations,
                operator,
            };
            let out = m.step(&mut state, &input);
            let mut wake = t + 1000;
            for c in &out.commands {
                let target = match c {
                    Command::SetTraffic { percent } => Some(*percent),
                    Command::Promote => Some(100),
                    Command::Rollback => Some(0),
                    Command::WaitUntil { at } => {
                        wake = *at;
                        None
                    }
                    Command::Event { .. } => None,
                };
                if let Some(p) = target {
                    let current = self
                        .pending
                        .map_or_else(|| self.canary_percent_at(t), |(p, _)| p);
                    if p != current {
                        let label = match c {
                            Command::Promote => "promote".to_string(),
                            Command::Rollback => "rollback".to_string(),
                            _ => format!("traffic {p}%"),
                        };
                        result.events.push(Event { at: t, what: label });
                        self.pending = Some((p, t + self.scenario.settle));
                    }
                    if p > 0 {
                        result.max_traffic = result.max_traffic.max(p);
                    }
                    if matches!(c, Command::Rollback) && result.rollback_at.is_none() {
                        result.rollback_at = Some(t);
                    }
                }
            }
            let phase = out.decision.to.clone();
            if phase != last_phase {
                if phase == "paused" && result.pause_at.is_none() {
                    result.pause_at = Some(t);
                }
                if matches!(
                    phase.as_str(),
                    "paused" | "promoted" | "rolled_back" | "failed" | "awaiting_approval"
                ) {
                    result.events.push(Event {
                        at: t,
                        what: phase.clone(),
                    });
                }
                last_phase = phase;
            }
            if self.record {
                result.decisions.push(out.decision);
            }
            if state.phase.is_terminal() || t >= self.scenario.duration {
                break;
            }
            // Wake for the machine, or when the cluster applies a change (a watch event).
            let mut next = wake.max(t + 1);
            if let Some((_, at)) = self.pending
                && at > t
            {
                next = next.min(at);
            }
            if let Some(o) = ops.get(op_idx) {
                next = next.min(o.at.max(t + 1));
            }
            t = next.min(self.scenario.duration.max(t + 1));
        }
        result.outcome = Outcome::of(&state);
        result.end = t;
        result.end_reason = match &state.phase {
            crate::Phase::RolledBack { reason }
            | crate::Phase::Failed { reason }
            | crate::Phase::Paused { reason, .. } => Some(reason.describe()),
            crate::Phase::Promoted => Some("promoted".into()),
            _ => None,
        };
        result
    }
}

/// Runs one rollout (recording every decision).
pub fn run_one(machine: &Machine, scenario: &Scenario) -> RunResult {
    Simulation::new(machine, scenario, 0, true).run()
}

/// Summary of a Monte Carlo batch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BatchSummary {
    /// Runs.
    pub runs: usize,
    /// Promoted.
    pub promoted: usize,
    /// Rolled back (by the policy).
    pub rolled_back: usize,
    /// Aborted by an (simulated) operator.
    pub aborted: usize,
    /// Failed.
    pub failed: usize,
    /// Neither: paused, waiting, or out of time.
    pub stalled: usize,
    /// Detection times (onset to rollback/pause), seconds, sorted.
    pub detection_s: Vec<f64>,
    /// Runs that acted (rolled back or paused) before the onset: false alarms.
    pub acted_before_onset: usize,
}

impl BatchSummary {
    /// A percentile of the detection times (0..=100), if any.
    pub fn detection_percentile(&self, p: f64) -> Option<f64> {
        if self.detection_s.is_empty() {
            return None;
        }
        let idx = ((p / 100.0) * (self.detection_s.len() - 1) as f64).round() as usize;
        self.detection_s.get(idx).copied()
    }
}

/// Runs `runs` rollouts with seeds `seed`, `seed + 1`, ... (decisions not recorded).
pub fn run_batch(machine: &Machine, scenario: &Scenario, runs: usize) -> BatchSummary {
    let mut s = BatchSummary {
        runs,
        promoted: 0,
        rolled_back: 0,
        aborted: 0,
        failed: 0,
        stalled: 0,
        detection_s: Vec::new(),
        acted_before_onset: 0,
    };
    for run in 0..runs {
        let r = Simulation::new(machine, scenario, run as u64, false).run();
        match r.outcome {
            Outcome::Promoted => s.promoted += 1,
            Outcome::RolledBack => s.rolled_back += 1,
            Outcome::Aborted => s.aborted += 1,
            Outcome::Failed => s.failed += 1,
            Outcome::Stalled => s.stalled += 1,
        }
        if let Some(d) = r.detection() {
            s.detection_s.push(d as f64 / 1000.0);
        }
        let acted = match (r.rollback_at, r.pause_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let (Some(a), Some(o)) = (acted, r.onset)
            && a < o
        {
            s.acted_before_onset += 1;
        }
    }
    s.detection_s.sort_by(f64::total_cmp);
    s
}
