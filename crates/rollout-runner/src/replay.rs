//! Replay: a policy evaluated against Prometheus history instead of live data, tick by tick as
//! the runner would have, for given canary and stable revisions. "Would this policy have rolled
//! back last Tuesday's bad model, and when?"

use std::collections::HashMap;

use rollout_engine::{
    Cluster, Command, Decision, Input, Machine, Observations, Outcome, QueryKey, Sample,
};
use rollout_policy::model::Policy;

use crate::metrics::{self, Prom};

/// Settings of a replay.
pub struct ReplayConfig {
    /// The checked policy.
    pub policy: Policy,
    /// Prometheus URL (the policy's, or an override).
    pub prometheus_url: String,
    /// Start (ms since the epoch).
    pub from_ms: u64,
    /// End (ms since the epoch).
    pub to_ms: u64,
    /// The canary revision.
    pub canary: String,
    /// The stable revision.
    pub stable: String,
    /// The step of range queries, seconds (1 by default: values within a second of each tick).
    pub step_s: f64,
    /// Called with every decision.
    pub on_decision: Box<dyn FnMut(&Decision) + Send>,
}

impl std::fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConfig")
            .field("policy", &self.policy.name)
            .field("from_ms", &self.from_ms)
            .field("to_ms", &self.to_ms)
            .finish()
    }
}

/// What a replay reached.
#[derive(Clone, Debug)]
pub struct ReplayResult {
    /// The outcome (`Stalled` if the period ended first).
    pub outcome: Outcome,
    /// When the machine first asked for a rollback (ms).
    pub rollback_at: Option<u64>,
    /// Range and instant queries made.
    pub queries: usize,
}

/// Replays a policy over a period of history.
pub async fn replay(mut cfg: ReplayConfig) -> Result<ReplayResult, String> {
    let policy = cfg.policy.clone();
    let machine = Machine::compile(policy.clone());
    let prom = Prom::for_policy(&policy, Some(&cfg.prometheus_url))?;
    let mut state = machine.initial_state();
    let mut traffic: u8 = 10;
    // Fixed windows: one range query per (arm, metric, window) over the whole period.
    let mut ranges: HashMap<QueryKey, Vec<(f64, f64)>> = HashMap::new();
    let mut queries = 0;
    let mut t = cfg.from_ms;
    let mut rollback_at = None;
    while t <= cfg.to_ms && !state.phase.is_terminal() {
        let cluster = Cluster {
            canary_percent: traffic,
            canary_revision: cfg.canary.clone(),
            stable_revision: (traffic < 100).then(|| cfg.stable.clone()),
            ready: true,
            observed: true,
        };
        let mut observations = Observations::default();
        for key in machine.queries(&state, t) {
            let Some(q) =
                metrics::render(&policy, &key, Default::default(), &cfg.canary, &cfg.stable)
            else {
                observations.push(key, Sample::NoData);
                continue;
            };
            let fixed = policy
                .rules
                .iter()
                .any(|r| r.statistical.is_none() && r.window.as_millis() as u64 == key.window_ms);
            let sample = if fixed {
                if let std::collections::hash_map::Entry::Vacant(slot) = ranges.entry(key) {
                    queries += 1;
                    slot.insert(prom.range(&q, cfg.from_ms, cfg.to_ms, cfg.step_s).await?);
                }
                let at = t as f64 / 1000.0;
                ranges
                    .get(&key)
                    .and_then(|s| {
                        s.iter()
                            .rev()
                            .find(|(ts, _)| *ts <= at + 1e-6 && *ts > at - cfg.step_s - 1e-6)
                    })
                    .map_or(Sample::NoData, |(_, v)| {
                        if v.is_finite() {
                            Sample::Value { value: *v, at: t }
                        } else {
                            Sample::NoData
                        }
                    })
            } else {
                queries += 1;
                prom.query_at(&q, t).await
            };
            observations.push(key, sample);
        }
        let out = machine.step(
            &mut state,
            &Input {
                now: t,
                cluster: Some(cluster),
                observations,
                operator: vec![],
            },
        );
        (cfg.on_decision)(&out.decision);
        let mut next = t + 1000;
        for c in &out.commands {
            match c {
                Command::SetTraffic { percent } => traffic = *percent,
                Command::Promote => traffic = 100,
                Command::Rollback => {
                    traffic = 0;
                    rollback_at.get_or_insert(t);
                }
                Command::WaitUntil { at } => next = *at,
                Command::Event { .. } => {}
            }
        }
        t = next.max(t + 1);
    }
    Ok(ReplayResult {
        outcome: Outcome::of(&state),
        rollback_at,
        queries,
    })
}
