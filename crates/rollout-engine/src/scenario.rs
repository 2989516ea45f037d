//! Simulation scenarios: what traffic, errors, latency, data gaps, query errors and operator
//! commands a simulated rollout meets, over virtual time. Read from YAML.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::{Millis, Operator};

/// A scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of the random number generator (runs of a batch use `seed`, `seed + 1`, ...).
    #[serde(default = "one")]
    pub seed: u64,
    /// Simulated time limit.
    #[serde(default = "default_duration", deserialize_with = "duration")]
    pub duration: Millis,
    /// Requests per second to the InferenceService, split between the arms by traffic.
    pub rps: f64,
    /// Prometheus scrape interval (default: the policy's, else 15s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub scrape_interval: Option<Millis>,
    /// How long the cluster takes to apply a traffic change.
    #[serde(default = "default_settle", deserialize_with = "duration")]
    pub settle: Millis,
    /// Whether the canary revision ever becomes ready.
    #[serde(default = "yes")]
    pub canary_ready: bool,
    /// `canaryTrafficPercent` when the rollout starts.
    #[serde(default)]
    pub initial_traffic: u8,
    /// The stable revision's behaviour.
    pub stable: Behaviour,
    /// The canary's behaviour (defaults to the stable's).
    #[serde(default)]
    pub canary: Option<Behaviour>,
    /// Changes at given times.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Periods when an arm's series are missing (no data).
    #[serde(default)]
    pub gaps: Vec<Period>,
    /// Periods when an arm's series stop updating (stale data).
    #[serde(default)]
    pub stale: Vec<Period>,
    /// Periods when every query fails (Prometheus outage).
    #[serde(default)]
    pub query_errors: Vec<Period>,
    /// Operator commands.
    #[serde(default)]
    pub operator: Vec<OperatorAt>,
    /// Values of custom query metrics, by metric name, in their declared unit.
    #[serde(default)]
    pub metrics: BTreeMap<String, ArmValues>,
}

/// How a revision behaves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Probability that a request fails with a 5xx (`0.5%` or `0.005`).
    #[serde(deserialize_with = "ratio")]
    pub error_rate: f64,
    /// Latency distribution (log-normal through its median and 95th percentile).
    #[serde(default = "default_latency")]
    pub latency: Latency,
}

/// A log-normal latency distribution, given by two quantiles.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Median.
    #[serde(deserialize_with = "duration")]
    pub p50: Millis,
    /// 95th percentile.
    #[serde(deserialize_with = "duration")]
    pub p95: Millis,
}

/// A change of behaviour at a time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// When.
    #[serde(deserialize_with = "duration")]
    pub at: Millis,
    /// Which arm (`canary` or `stable`); both when absent.
    #[serde(default)]
    pub arm: Option<ArmName>,
    /// New error rate.
    #[serde(default, deserialize_with = "opt_ratio")]
    pub error_rate: Option<f64>,
    /// New latency.
    #[serde(default)]
    pub latency: Option<Latency>,
    /// New total request rate.
    #[serde(default)]
    pub rps: Option<f64>,
}

/// `canary` or `stable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmName {
    /// The new revision.
    Canary,
    /// The rolled-out revision.
    Stable,
}

/// A period, optionally for one arm.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// Start.
    #[serde(deserialize_with = "duration")]
    pub from: Millis,
    /// End (exclusive).
    #[serde(deserialize_with = "duration")]
    pub to: Millis,
    /// Which arm; both when absent.
    #[serde(default)]
    pub arm: Option<ArmName>,
}

impl Period {
    /// Whether `t` is in the period for `arm`.
    pub fn covers(&self, t: Millis, arm: ArmName) -> bool {
        t >= self.from && t < self.to && self.arm.is_none_or(|a| a == arm)
    }
}

/// An operator command at a time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorAt {
    /// When.
    #[serde(deserialize_with = "duration")]
    pub at: Millis,
    /// What.
    pub command: Operator,
}

/// A custom metric's value per arm.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmValues {
    /// Canary value.
    pub canary: f64,
    /// Stable value.
    pub stable: f64,
    /// The values are per request: the metric is the value times the arm's requests in the
    /// window (for counted events such as declines).
    #[serde(default)]
    pub per_request: bool,
}

impl Scenario {
    /// Parses a scenario from YAML.
    pub fn from_yaml(text: &str) -> Result<Scenario, String> {
        let s: Scenario = crate::yaml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.rps.is_finite() && self.rps >= 0.0) {
            return Err("`rps` must be a non-negative number".into());
        }
        if self.initial_traffic > 100 {
            return Err("`initial_traffic` must be between 0 and 100".into());
        }
        for b in std::iter::once(&self.stable).chain(self.canary.as_ref()) {
            b.latency.validate()?;
        }
        for c in &self.changes {
            if let Some(l) = c.latency {
                l.validate()?;
            }
        }
        Ok(())
    }

    /// The time of the first change: the regression onset for detection times.
    pub fn onset(&self) -> Option<Millis> {
        self.changes.iter().map(|c| c.at).min()
    }
}

impl Latency {
    fn validate(&self) -> Result<(), String> {
        if self.p50 == 0 || self.p95 < self.p50 {
            return Err("latency needs 0 < p50 <= p95".into());
        }
        Ok(())
    }
}

fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn default_duration() -> Millis {
    4 * 3600 * 1000
}
fn default_settle() -> Millis {
    5000
}
fn default_latency() -> Latency {
    Latency { p50: 40, p95: 120 }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(f64),
    Str(String),
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d` (or a number of seconds).
pub fn parse_duration(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like `30s` or `5m`"))?;
    let per = match unit.trim() {
        "ms" => 1.0,
        "s" | "" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => return Err(format!("unknown unit `{other}` in `{s}`")),
    };
    Ok((v * per).round() as Millis)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) if n >= 0.0 => Ok((n * 1000.0).round() as Millis),
        NumOrStr::Num(_) => Err(serde::de::Error::custom("durations are not negative")),
        NumOrStr::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    duration(d).map(Some)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("`{s}` is not a rate like `0.5%` or `0.005`"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is outside 0..100%"))
    }
}

fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) if (0.0..=1.0).contains(&n) => Ok(n),
        NumOrStr::Num(n) => Err(serde::de::Error::custom(format!("{n} is outside 0..1"))),
        NumOrStr::Str(s) => parse_ratio(&s).map_err(serde::de::Error::custom),
    }
}

fn opt_ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    ratio(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_scenario() {
        let s = Scenario::from_yaml(
            "seed: 7\nduration: 1h\nrps: 20\nsettle: 2s\nstable:\n  error_rate: 0.5%\ncanary:\n  error_rate: 0.005\n  latency: {p50: 40ms, p95: 120ms}\nchanges:\n  - {at: 12m, arm: canary, error_rate: 5%}\ngaps:\n  - {from: 20m, to: 22m, arm: canary}\nquery_errors:\n  - {from: 30m, to: 31m}\noperator:\n  - {at: 40m, command: approve}\n",
        )
        .expect("valid");
        assert_eq!(s.seed, 7);
        assert_eq!(s.duration, 3_600_000);
        assert_eq!(s.onset(), Some(720_000));
        assert!((s.changes[0].error_rate.unwrap_or(0.0) - 0.05).abs() < 1e-12);
        assert_eq!(s.operator[0].command, Operator::Approve);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(Scenario::from_yaml("rps: 1\nstable: {error_rate: 1%}\nfoo: 1\n").is_err());
        assert!(Scenario::from_yaml("rps: 1\nstable: {error_rate: 150%}\n").is_err());
        assert!(
            Scenario::from_yaml("rps: 1\nstable: {error_rate: 1%}\nduration: 5 minutes\n").is_err()
        );
    }
}
