//! The controller's own metrics (prometheus-client), in the OpenMetrics text format. The names
//! and labels are a contract: alerts and dashboards join on them to follow a live canary
//! (`docs/controller.md` lists them).
//!
//! Per rollout (labels `namespace`, `modelrollout`): `rolloutctl_rollout_info` (= 1, with
//! `inferenceservice`, `canary_revision`, `stable_revision`, `phase`),
//! `rolloutctl_rollout_traffic_percent`, `rolloutctl_rollout_step`. Counters:
//! `rolloutctl_decisions_total{rule, verdict}`, `rolloutctl_rollbacks_total{reason}`,
//! `rolloutctl_promotions_total`, `rolloutctl_prometheus_query_errors_total`,
//! `rolloutctl_reconcile_errors_total`. Histograms: `rolloutctl_prometheus_query_duration_seconds`,
//! `rolloutctl_reconcile_duration_seconds`, `rolloutctl_evaluation_delay_seconds` (a rollout's
//! due time to the start of its reconcile). Gauges: `rolloutctl_workqueue_depth` (rollouts due
//! and not yet reconciled), `rolloutctl_rollouts` (rollouts this process drives),
//! `rolloutctl_leader` (1 while this replica holds the leader Lease).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rollout_engine::Decision;

/// A rollout's identity in the per-rollout series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// The ModelRollout's namespace.
    pub namespace: String,
    /// The ModelRollout's name.
    pub modelrollout: String,
}

/// `rolloutctl_rollout_info`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// The ModelRollout's namespace.
    pub namespace: String,
    /// The ModelRollout's name.
    pub modelrollout: String,
    /// The InferenceService it rolls out.
    pub inferenceservice: String,
    /// The canary's Knative revision (empty before it is known).
    pub canary_revision: String,
    /// The stable revision (empty before it is known).
    pub stable_revision: String,
    /// The phase (`holding`, `paused`, `promoted`, `rolled_back`, ...).
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The metrics of one controller process.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    info: Family<InfoLabels, Gauge>,
    traffic: Family<RolloutLabels, Gauge>,
    step: Family<RolloutLabels, Gauge>,
    decisions: Family<DecisionLabels, Counter>,
    rollbacks: Family<ReasonLabels, Counter>,
    promotions: Counter,
    query_duration: Histogram,
    query_errors: Counter,
    reconcile_duration: Histogram,
    reconcile_errors: Counter,
    evaluation_delay: Histogram,
    /// The work-queue depth: rollouts due and not yet reconciled.
    pub queue_depth: Gauge<i64, AtomicI64Compat>,
    /// The rollouts this process drives.
    pub rollouts: Gauge,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
    /// The info series last set per rollout (so a phase change replaces it).
    last_info: Mutex<HashMap<RolloutLabels, InfoLabels>>,
    /// Each rollout's phase after its last decision.
    phases: Mutex<HashMap<RolloutLabels, String>>,
}

/// The atomic behind the integer gauges.
pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// The metrics, registered.
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("rolloutctl");
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "rollout_info",
            "A rollout this process drives, with its InferenceService, revisions and phase (always 1)",
            info.clone(),
        );
        let traffic = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_traffic_percent",
            "The canary traffic percent the rollout last set",
            traffic.clone(),
        );
        let step = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_step",
            "The rollout's current step (0-based)",
            step.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Rule verdicts at evaluations",
            decisions.clone(),
        );
        let rollbacks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rollbacks",
            "Rollbacks, by the rule or failure kind that caused them",
            rollbacks.clone(),
        );
        let promotions = Counter::default();
        registry.register("promotions", "Canaries promoted", promotions.clone());
        let query_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "prometheus_query_duration_seconds",
            "Prometheus instant query latency",
            query_duration.clone(),
        );
        let query_errors = Counter::default();
        registry.register(
            "prometheus_query_errors",
            "Prometheus queries that failed",
            query_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            reconcile_errors.clone(),
        );
        let evaluation_delay = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "evaluation_delay_seconds",
            "From a rollout's due time to the start of its reconcile",
            evaluation_delay.clone(),
        );
        let queue_depth = Gauge::<i64, AtomicI64Compat>::default();
        registry.register(
            "workqueue_depth",
            "Rollouts due and not yet reconciled",
            queue_depth.clone(),
        );
        let rollouts = Gauge::default();
        registry.register("rollouts", "Rollouts this process drives", rollouts.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Telemetry {
            registry,
            info,
            traffic,
            step,
            decisions,
            rollbacks,
            promotions,
            query_duration,
            query_errors,
            reconcile_duration,
            reconcile_errors,
            evaluation_delay,
            queue_depth,
            rollouts,
            leader,
            last_info: Mutex::new(HashMap::new()),
            phases: Mutex::new(HashMap::new()),
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records a decision of the rollout `labels`.
    pub fn decision(&self, labels: &RolloutLabels, d: &Decision) {
        if let Ok(mut p) = self.phases.lock() {
            p.insert(labels.clone(), d.to.clone());
        }
        self.traffic.get_or_create(labels).set(i64::from(d.traffic));
        self.step
            .get_or_create(labels)
            .set(i64::try_from(d.step).unwrap_or(i64::MAX));
        if d.evaluated {
            for r in &d.rules {
                self.decisions
                    .get_or_create(&DecisionLabels {
                        rule: r.rule.clone(),
                        verdict: crate::status::verdict_name(r.verdict).into(),
                    })
                    .inc();
            }
        }
        // A rollback is counted where it starts (the decision that names its cause).
        if d.to != d.from {
            match d.to.as_str() {
                "promoted" => {
                    self.promotions.inc();
                }
                "rolling_back" | "rolled_back" if d.from != "rolling_back" => {
                    self.rollbacks
                        .get_or_create(&ReasonLabels {
                            reason: rollback_reason(d),
                        })
                        .inc();
                }
                _ => {}
            }
        }
    }

    /// Sets the rollout's info series (replacing the one with another phase or revisions).
    pub fn info(&self, info: InfoLabels) {
        let key = RolloutLabels {
            namespace: info.namespace.clone(),
            modelrollout: info.modelrollout.clone(),
        };
        if let Ok(mut last) = self.last_info.lock() {
            if let Some(old) = last.get(&key)
                && *old != info
            {
                self.info.remove(old);
            }
            self.info.get_or_create(&info).set(1);
            last.insert(key, info);
        }
    }

    /// The rollout's phase after its last decision.
    pub fn phase(&self, key: &RolloutLabels) -> Option<String> {
        self.phases.lock().ok().and_then(|p| p.get(key).cloned())
    }

    /// Drops every series of a rollout that is gone (or that another process drives).
    pub fn forget(&self, key: &RolloutLabels) {
        if let Ok(mut last) = self.last_info.lock()
            && let Some(old) = last.remove(key)
        {
            self.info.remove(&old);
        }
        if let Ok(mut p) = self.phases.lock() {
            p.remove(key);
        }
        self.traffic.remove(key);
        self.step.remove(key);
    }

    /// A Prometheus query took `secs`; `failed` when it was an error.
    pub fn query(&self, secs: f64, failed: bool) {
        self.query_duration.observe(secs);
        if failed {
            self.query_errors.inc();
        }
    }

    /// A reconcile took `secs`; `failed` when it returned an error.
    pub fn reconciled(&self, secs: f64, failed: bool) {
        self.reconcile_duration.observe(secs);
        if failed {
            self.reconcile_errors.inc();
        }
    }

    /// A rollout was reconciled `secs` after it was due.
    pub fn delay(&self, secs: f64) {
        self.evaluation_delay.observe(secs.max(0.0));
    }
}

/// Why a rollout rolled back, as a low-cardinality label: the acting rule's name, else the
/// measurement failure that ended the hold, else the machine's action (`abort`, `deadline`).
fn rollback_reason(d: &Decision) -> String {
    if let Some(r) = d.rules.iter().find(|r| r.acted) {
        return r.rule.clone();
    }
    if let Some(f) = d.failures.first()
        && let Ok(serde_json::Value::String(s)) = serde_json::to_value(f)
    {
        return s;
    }
    d.action.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(from: &str, to: &str, acted: Option<&str>) -> Decision {
        let rules: Vec<serde_json::Value> = acted
            .into_iter()
            .map(|r| {
                serde_json::json!({"rule": r, "line": 3, "verdict": "fail", "when": [], "require": [],
                    "test": null, "window_s": 5.0, "failures": 1, "failures_needed": 1,
                    "breach_s": 0.0, "acted": true, "action": "rollback"})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "at": 0, "from": from, "to": to, "step": 1, "step_label": "hold 6s", "traffic": 0,
            "evaluated": acted.is_some(), "rules": rules, "failures": [], "passes": 0,
            "passes_needed": 2, "remaining_s": null, "action": "rollback", "reason": "r"
        }))
        .expect("a decision")
    }

    #[test]
    fn a_rollback_is_counted_once_under_the_rule_that_caused_it() {
        let t = Telemetry::new();
        let key = RolloutLabels {
            namespace: "ns".into(),
            modelrollout: "m".into(),
        };
        t.decision(&key, &decision("holding", "rolling_back", Some("Errors")));
        t.decision(&key, &decision("rolling_back", "rolled_back", None));
        let m = t.encode();
        assert!(
            m.contains("rolloutctl_rollbacks_total{reason=\"Errors\"} 1"),
            "{m}"
        );
        assert!(!m.contains("reason=\"rollback\""), "{m}");
        assert!(
            m.contains("rolloutctl_decisions_total{rule=\"Errors\",verdict=\"fail\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("rolloutctl_rollout_traffic_percent{namespace=\"ns\",modelrollout=\"m\"} 0"),
            "{m}"
        );
    }

    #[test]
    fn the_info_series_follows_the_phase_and_goes_with_the_rollout() {
        let t = Telemetry::new();
        let info = |phase: &str| InfoLabels {
            namespace: "ns".into(),
            modelrollout: "m".into(),
            inferenceservice: "m".into(),
            canary_revision: "m-00002".into(),
            stable_revision: "m-00001".into(),
            phase: phase.into(),
        };
        t.info(info("holding"));
        t.info(info("promoted"));
        let m = t.encode();
        assert!(m.contains("phase=\"promoted\"} 1"), "{m}");
        assert!(
            !m.contains("phase=\"holding\""),
            "one series per rollout: {m}"
        );
        t.forget(&RolloutLabels {
            namespace: "ns".into(),
            modelrollout: "m".into(),
        });
        assert!(!t.encode().contains("modelrollout=\"m\""));
    }
}
