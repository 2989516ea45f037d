//! The data plane: a load generator per InferenceService, requests routed by the current traffic
//! split, and the Knative queue-proxy metrics a real Prometheus scrapes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::Value;

use crate::kserve::{ANNOTATION_PREFIX, Behaviour};

/// Latency buckets (ms), as Knative's queue-proxy reports them.
pub const BUCKETS_MS: [f64; 23] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0,
    500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Counters of one revision and response code (fractional in the analytic mode).
#[derive(Clone, Debug, Default)]
struct Series {
    count: f64,
    sum_ms: f64,
    buckets: [f64; BUCKETS_MS.len()],
}

/// Where one revision's series live.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RevKey {
    ns: String,
    isvc: String,
    revision: String,
}

/// All metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    series: BTreeMap<RevKey, BTreeMap<u16, Series>>,
    /// Leave the latency histogram out of the exposition (see `Config::latency_histograms`).
    pub counts_only: bool,
}

/// The request rate of an InferenceService: its annotation, or the default.
pub fn rps(obj: &Value, default: f64) -> f64 {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(format!("{ANNOTATION_PREFIX}rps")))
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(default)
}

/// One simulated request's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// HTTP status.
    pub code: u16,
    /// Latency, ms.
    pub latency_ms: f64,
}

/// Samples a request against a behaviour.
pub fn sample(rng: &mut fastrand::Rng, b: &Behaviour) -> Outcome {
    let code = if rng.f64() < b.error_rate { 500 } else { 200 };
    let mu = b.p50_ms.max(0.01).ln();
    let sigma = ((b.p95_ms.max(b.p50_ms).max(0.01)).ln() - mu) / 1.644_853_626_951_472_2;
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Outcome {
        code,
        latency_ms: (mu + sigma.max(0.0) * z).exp(),
    }
}

/// Poisson-distributed count with mean `lambda`.
pub fn poisson(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 50.0 {
        let u1 = rng.f64().max(f64::MIN_POSITIVE);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.f64()).cos();
        return (lambda + lambda.sqrt() * z).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = rng.f64();
    while p > l {
        k += 1;
        p *= rng.f64();
    }
    k
}

/// Picks a revision by traffic share.
pub fn pick<'a>(rng: &mut fastrand::Rng, traffic: &'a [(String, f64)]) -> Option<&'a str> {
    let total: f64 = traffic.iter().map(|(_, p)| p).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = rng.f64() * total;
    for (r, p) in traffic {
        if x < *p {
            return Some(r);
        }
        x -= p;
    }
    traffic.last().map(|(r, _)| r.as_str())
}

impl Metrics {
    /// No series yet; `counts_only` leaves the latency histogram out of the exposition.
    pub fn counting(counts_only: bool) -> Metrics {
        Metrics {
            counts_only,
            ..Metrics::default()
        }
    }

    /// Records one request.
    pub fn record(&mut self, ns: &str, isvc: &str, revision: &str, o: Outcome) {
        let s = self
            .series
            .entry(RevKey {
                ns: ns.into(),
                isvc: isvc.into(),
                revision: revision.into(),
            })
            .or_default()
            .entry(o.code)
            .or_default();
        s.count += 1.0;
        s.sum_ms += o.latency_ms;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if o.latency_ms <= *b {
                s.buckets[i] += 1.0;
            }
        }
    }

    /// Adds the expected outcome of `n` requests against `b`: `n × error_rate` 500s, the rest
    /// 200s, each latency bucket by the log-normal [`sample`] draws from (same median and p95).
    pub fn record_expected(&mut self, ns: &str, isvc: &str, revision: &str, b: &Behaviour, n: f64) {
        if n <= 0.0 || !n.is_finite() {
            return;
        }
        let mu = b.p50_ms.max(0.01).ln();
        let sigma =
            (((b.p95_ms.max(b.p50_ms).max(0.01)).ln() - mu) / 1.644_853_626_951_472_2).max(0.0);
        let cdf = |x: f64| {
            if sigma == 0.0 {
                return if x >= b.p50_ms.max(0.01) { 1.0 } else { 0.0 };
            }
            0.5 * (1.0 + erf((x.ln() - mu) / (sigma * std::f64::consts::SQRT_2)))
        };
        let mean = (mu + sigma * sigma / 2.0).exp();
        let series = self
            .series
            .entry(RevKey {
                ns: ns.into(),
                isvc: isvc.into(),
                revision: revision.into(),
            })
            .or_default();
        let er = b.error_rate.clamp(0.0, 1.0);
        for (code, m) in [(200u16, n * (1.0 - er)), (500, n * er)] {
            if m <= 0.0 {
                continue;
            }
            let s = series.entry(code).or_default();
            s.count += m;
            s.sum_ms += m * mean;
            for (i, edge) in BUCKETS_MS.iter().enumerate() {
                s.buckets[i] += m * cdf(*edge);
            }
        }
    }

    /// Forgets the series of revisions that no longer receive traffic (they disappear from the
    /// exposition, so Prometheus marks them stale).
    pub fn retain(&mut self, live: &HashMap<(String, String), Vec<String>>) {
        self.series.retain(|k, _| {
            live.get(&(k.ns.clone(), k.isvc.clone()))
                .is_some_and(|revs| revs.contains(&k.revision))
        });
    }

    /// The Prometheus text exposition (format 0.0.4) of the live revisions.
    pub fn exposition(&self) -> String {
        let mut out = String::new();
        let labels = |k: &RevKey, code: u16| {
            format!(
                "configuration_name=\"{c}\",namespace_name=\"{ns}\",pod_name=\"{r}-deployment-0\",response_code=\"{code}\",response_code_class=\"{class}xx\",revision_name=\"{r}\",service_name=\"{c}\"",
                c = escape(&format!("{}-predictor", k.isvc)),
                ns = escape(&k.ns),
                r = escape(&k.revision),
                class = code / 100
            )
        };
        out.push_str("# HELP revision_app_request_count The number of requests that are routed to user-container\n");
        out.push_str("# TYPE revision_app_request_count counter\n");
        for (k, codes) in &self.series {
            for (code, s) in codes {
                let _ = writeln!(
                    out,
                    "revision_app_request_count{{{}}} {}",
                    labels(k, *code),
                    s.count
                );
            }
        }
        if self.counts_only {
            return out;
        }
        out.push_str("# HELP revision_app_request_latencies The response time in millisecond\n");
        out.push_str("# TYPE revision_app_request_latencies histogram\n");
        for (k, codes) in &self.series {
            for (code, s) in codes {
                let l = labels(k, *code);
                for (i, b) in BUCKETS_MS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "revision_app_request_latencies_bucket{{{l},le=\"{b}\"}} {}",
                        s.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "revision_app_request_latencies_bucket{{{l},le=\"+Inf\"}} {}",
                    s.count
                );
                let _ = writeln!(
                    out,
                    "revision_app_request_latencies_sum{{{l}}} {}",
                    s.sum_ms
                );
                let _ = writeln!(
                    out,
                    "revision_app_request_latencies_count{{{l}}} {}",
                    s.count
                );
            }
        }
        out
    }
}

/// The error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

/// Escapes a label value for the text exposition format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(m: &Metrics, code: u16) -> Series {
        m.series
            .values()
            .next()
            .and_then(|c| c.get(&code))
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn erf_matches_tabulated_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 2e-7);
        }
    }

    #[test]
    fn the_analytic_counters_are_what_sampling_converges_to() {
        let b = Behaviour {
            error_rate: 0.1,
            p50_ms: 40.0,
            p95_ms: 120.0,
        };
        let mut sampled = Metrics::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 200_000;
        for _ in 0..n {
            sampled.record("ns", "m", "r", sample(&mut rng, &b));
        }
        let mut expected = Metrics::default();
        expected.record_expected("ns", "m", "r", &b, n as f64);
        for code in [200, 500] {
            let (s, e) = (counts(&sampled, code), counts(&expected, code));
            assert!(
                (s.count - e.count).abs() / e.count < 0.02,
                "{code}: {} vs {}",
                s.count,
                e.count
            );
            for (i, edge) in BUCKETS_MS.iter().enumerate() {
                let tol = 0.01 * e.count + 3.0 * s.buckets[i].sqrt();
                assert!(
                    (s.buckets[i] - e.buckets[i]).abs() <= tol,
                    "{code} le={edge}: sampled {} expected {}",
                    s.buckets[i],
                    e.buckets[i]
                );
            }
            assert!((s.sum_ms - e.sum_ms).abs() / e.sum_ms < 0.03, "{code} sum");
        }
        // The median and p95 sit where the behaviour puts them.
        let ok = counts(&expected, 200);
        let at = |ms: f64| {
            ok.buckets[BUCKETS_MS.iter().position(|b| *b == ms).expect("edge")] / ok.count
        };
        assert!((at(40.0) - 0.5).abs() < 1e-6, "{}", at(40.0));
        assert!(at(100.0) < 0.95 && at(150.0) > 0.95);
    }
}
