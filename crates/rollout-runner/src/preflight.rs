//! Preflight, before the first traffic change (and `rolloutctl doctor` on its own): Prometheus
//! answers, and every query metric the policy reads returns a series for the stable revision,
//! in a plausible unit. A policy whose metrics do not exist there (another Knative version's
//! names, request metrics switched off, a missing scrape) would otherwise judge the canary on
//! no data at all; when they are missing, the stable revision's requests are looked for under
//! every preset, so the finding names the preset that would match.

use std::time::Duration;

use rollout_engine::{Machine, Sample};
use rollout_policy::model::{Dim, MetricKind, Origin, Policy, Unit};
use rollout_policy::presets;
use rollout_policy::template::{Mode, Vars};

use crate::Millis;
use crate::metrics::Prom;

/// What one metric's check found that stops a rollout before it starts.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    /// Prometheus did not answer (or answered with an error).
    #[error(
        "Prometheus at {url} did not answer the query of metric `{metric}`: {message}\n  query: {query}"
    )]
    QueryFailed {
        /// Prometheus.
        url: String,
        /// The metric.
        metric: String,
        /// The query, as sent.
        query: String,
        /// Prometheus's or the connection's error (credentials redacted).
        message: String,
    },
    /// The query returned nothing for the stable revision.
    #[error(
        "metric `{metric}` returns no series for the stable revision `{stable}` from Prometheus at {url}\n  query: {query}\n  {fix}"
    )]
    NoSeries {
        /// Prometheus.
        url: String,
        /// The metric.
        metric: String,
        /// The stable revision.
        stable: String,
        /// The query, as sent.
        query: String,
        /// What was found instead, and what to change.
        fix: String,
    },
    /// The value is not what its unit allows for a serving revision.
    #[error(
        "metric `{metric}` is {value} {unit} for the stable revision `{stable}`, {why}\n  query: {query}"
    )]
    Implausible {
        /// The metric.
        metric: String,
        /// The stable revision.
        stable: String,
        /// The query, as sent.
        query: String,
        /// The value, in the metric's unit.
        value: f64,
        /// The metric's unit.
        unit: &'static str,
        /// Why it is implausible and what it suggests.
        why: String,
    },
}

/// One metric that passed: its name, value and unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Passed {
    /// The metric.
    pub metric: String,
    /// Its value for the stable revision.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
}

/// The widest window a rule reads (at least 1 s): what the checks render queries with.
fn window(policy: &Policy) -> Duration {
    policy
        .rules
        .iter()
        .map(|r| r.window)
        .max()
        .unwrap_or(policy.evaluation.window)
        .max(Duration::from_secs(1))
}

/// Checks the metrics on the stable revision, stopping at the first problem; `Ok` says what
/// was checked.
pub async fn check(
    machine: &Machine,
    prom: &Prom,
    mode: Mode,
    stable: &str,
    now: Millis,
) -> Result<String, Problem> {
    let mut passed = Vec::new();
    for r in diagnose(
        machine.policy(),
        &machine.query_metrics(),
        prom,
        mode,
        stable,
        now,
        true,
    )
    .await
    {
        passed.push(r?.metric);
    }
    Ok(format!(
        "{} metrics return series for the stable revision `{stable}`: {}",
        passed.len(),
        passed.join(", ")
    ))
}

/// Checks each of `metrics` (indices into the policy's metrics; query metrics only) on the
/// stable revision; with `stop_at_first`, ends after the first problem.
pub async fn diagnose(
    policy: &Policy,
    metrics: &[usize],
    prom: &Prom,
    mode: Mode,
    stable: &str,
    now: Millis,
    stop_at_first: bool,
) -> Vec<Result<Passed, Problem>> {
    let window = window(policy);
    let vars = |revision| Vars {
        revision,
        mode,
        namespace: &policy.target.namespace,
        name: &policy.target.name,
        component: policy.target.component.as_str(),
        window,
    };
    let mut out = Vec::new();
    // Which presets have the stable revision's requests: probed once, when a metric is missing.
    let mut found: Option<Vec<&'static presets::Shape>> = None;
    for &i in metrics {
        let Some(metric) = policy.metrics.get(i) else {
            continue;
        };
        let MetricKind::Query(t) = &metric.kind else {
            continue;
        };
        let q = t.render(&vars(stable));
        let found = match prom.query(&q, now).await {
            Sample::Value { value, .. } => match implausible(metric.unit, value) {
                None => Ok(Passed {
                    metric: metric.name.clone(),
                    value,
                    unit: metric.unit.as_str(),
                }),
                Some(why) => Err(Problem::Implausible {
                    metric: metric.name.clone(),
                    stable: stable.to_string(),
                    query: q,
                    value,
                    unit: metric.unit.as_str(),
                    why,
                }),
            },
            Sample::NoData => {
                if found.is_none() {
                    found = Some(presets_with_requests(prom, &vars(stable), now).await);
                }
                let matching = found.as_deref().unwrap_or_default();
                Err(Problem::NoSeries {
                    url: prom.url.clone(),
                    metric: metric.name.clone(),
                    stable: stable.to_string(),
                    query: q,
                    fix: fix_for_missing(metric.origin, matching, stable),
                })
            }
            Sample::Error { message } => Err(Problem::QueryFailed {
                url: prom.url.clone(),
                metric: metric.name.clone(),
                query: q,
                message,
            }),
        };
        let stop = found.is_err() && stop_at_first;
        out.push(found);
        if stop {
            break;
        }
    }
    out
}

/// Why a serving revision cannot have `value` in `unit`, if it cannot.
fn implausible(unit: Unit, value: f64) -> Option<String> {
    if !value.is_finite() {
        return Some("not a number".into());
    }
    match unit.dim() {
        // A request through a proxy takes more than 10 µs and less than an hour; outside that,
        // the data is in another unit than the metric says (seconds data read as ms gives
        // values a thousand times too small, ms data read as seconds a thousand times too
        // large).
        Dim::Time => {
            let seconds = value * unit.scale();
            if seconds > 3600.0 {
                Some(format!(
                    "over an hour: the data is likely in milliseconds while the metric says `{}` (a Knative ≤ 1.18 or Istio histogram under a seconds unit?); set `unit = ms` or use the preset of your stack",
                    unit.as_str()
                ))
            } else if seconds > 0.0 && seconds < 1e-5 {
                Some(format!(
                    "under 10 µs: the data is likely in seconds while the metric says `{}` (a Knative ≥ 1.19 histogram under a milliseconds unit?); set `unit = s` or use the preset of your stack",
                    unit.as_str()
                ))
            } else if seconds < 0.0 {
                Some("a negative duration".into())
            } else {
                None
            }
        }
        Dim::Ratio if value * unit.scale() > 1.0 || value < 0.0 => Some(format!(
            "outside 0..{}: is it a percentage (`unit = percent`) or a count?",
            if unit == Unit::Percent { "100" } else { "1" }
        )),
        Dim::Count | Dim::Rate if value < 0.0 => {
            Some("negative: a counter reset or a wrong sign?".into())
        }
        _ => None,
    }
}

/// The presets whose `requests` query has data for the revision in `vars`.
async fn presets_with_requests(
    prom: &Prom,
    vars: &Vars<'_>,
    now: Millis,
) -> Vec<&'static presets::Shape> {
    let mut matching = Vec::new();
    for shape in &presets::SHAPES {
        let Some(requests) = presets::parsed(shape.preset)
            .and_then(|p| p.iter().find(|(m, _)| m.name == "requests"))
            .and_then(|(_, t)| t.as_ref())
        else {
            continue;
        };
        if let Sample::Value { .. } = prom.query(&requests.render(vars), now).await {
            matching.push(shape);
        }
    }
    matching
}

/// Where the stable revision's requests are, when a metric has none: the preset whose series
/// Prometheus has for it (`matching`), or how to turn the request metrics on.
fn fix_for_missing(origin: Origin, matching: &[&presets::Shape], stable: &str) -> String {
    let used = match origin {
        Origin::Preset(p) => Some(p),
        Origin::User => None,
    };
    match (matching.first(), used) {
        (Some(found), Some(p)) if found.preset != p => format!(
            "Prometheus has the stable revision's requests in the series of `use {}` ({}), not of `use {p}`: change the policy's `use {p}` to `use {}` (docs/metrics.md)",
            found.preset, found.matches, found.preset
        ),
        (Some(found), Some(_)) => format!(
            "the preset's request series exist for `{stable}` but this metric's do not (no latency histogram, or no samples in the window): check the scrape of the {} series",
            found.matches
        ),
        (Some(found), None) => format!(
            "Prometheus has the stable revision's requests in the series of `use {}` ({}); check this metric's names and labels against them (docs/metrics.md)",
            found.preset, found.matches
        ),
        (None, _) => format!(
            "Prometheus has no request series of any known stack for `{stable}`. On KServe 0.17+ (Knative ≥ 1.19) the queue-proxy exports none by default: enable Knative request metrics with `request-metrics-protocol: prometheus` in the `config-observability` ConfigMap (namespace knative-serving) and scrape the queue-proxy's port 9091 (`http-usermetric`); on Knative ≤ 1.18 or Istio, check that the queue-proxy or sidecar is scraped"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_in_the_wrong_unit_are_caught() {
        assert!(
            implausible(Unit::S, 250.0).is_none(),
            "250 s is slow, not impossible"
        );
        assert!(implausible(Unit::S, 120_000.0).is_some_and(|w| w.contains("milliseconds")));
        assert!(implausible(Unit::Ms, 0.004).is_some_and(|w| w.contains("in seconds")));
        assert!(implausible(Unit::Ms, 42.0).is_none());
        assert!(implausible(Unit::S, 0.042).is_none());
        assert!(
            implausible(Unit::Ms, 0.0).is_none(),
            "an idle histogram may say 0"
        );
    }

    #[test]
    fn ratios_above_one_and_negative_counts_are_caught() {
        assert!(implausible(Unit::Ratio, 0.3).is_none());
        assert!(implausible(Unit::Ratio, 3.0).is_some());
        assert!(implausible(Unit::Percent, 30.0).is_none());
        assert!(implausible(Unit::Percent, 300.0).is_some());
        assert!(implausible(Unit::Count, -1.0).is_some());
        assert!(implausible(Unit::Count, f64::NAN).is_some());
    }
}
