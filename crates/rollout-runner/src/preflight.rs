//! Preflight, before the first traffic change: Prometheus answers, and every query metric the
//! policy reads returns a series for the stable revision. A policy whose metrics do not exist
//! there (another Knative version's names, a missing scrape) would otherwise judge the canary
//! on no data at all.

use std::time::Duration;

use rollout_engine::{Machine, Sample};
use rollout_policy::model::MetricKind;
use rollout_policy::template::Vars;

use crate::Millis;
use crate::metrics::Prom;

/// Checks the metrics on the stable revision; `Ok` says what was checked.
pub async fn check(
    machine: &Machine,
    prom: &Prom,
    stable: &str,
    now: Millis,
) -> Result<String, String> {
    let policy = machine.policy();
    let mut checked = Vec::new();
    for m in machine.query_metrics() {
        let Some(metric) = policy.metrics.get(m) else {
            continue;
        };
        let MetricKind::Query(t) = &metric.kind else {
            continue;
        };
        let window = policy
            .rules
            .iter()
            .map(|r| r.window)
            .max()
            .unwrap_or(policy.evaluation.window)
            .max(Duration::from_secs(1));
        let q = t.render(&Vars {
            revision: stable,
            namespace: &policy.target.namespace,
            name: &policy.target.name,
            component: policy.target.component.as_str(),
            window,
        });
        match prom.query(&q, now).await {
            Sample::Value { .. } => checked.push(metric.name.clone()),
            Sample::NoData => {
                return Err(format!(
                    "metric `{}` returns no series for the stable revision `{stable}` from Prometheus at {}: {q}\n  the metric's names or labels do not match what Prometheus has (check the preset for your Knative version and that the queue-proxy is scraped)",
                    metric.name, prom.url
                ));
            }
            Sample::Error { message } => {
                return Err(format!(
                    "Prometheus at {} did not answer the query of metric `{}`: {message}\n  query: {q}",
                    prom.url, metric.name
                ));
            }
        }
    }
    Ok(format!(
        "{} metrics return series for the stable revision `{stable}`: {}",
        checked.len(),
        checked.join(", ")
    ))
}
