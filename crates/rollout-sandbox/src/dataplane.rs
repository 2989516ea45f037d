//! The data plane: a load generator per InferenceService, requests routed by the current traffic
//! split, and the counters behind the request metrics a real Prometheus scrapes (their shape per
//! serving stack is [`crate::exporter`]'s).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::exporter::{self, Counts, Pod, Stack};
use crate::kserve::{ANNOTATION_PREFIX, Behaviour};

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
    series: BTreeMap<RevKey, BTreeMap<u16, Counts>>,
    /// The pod of every revision that serves (its `target_info` exists before its first
    /// request, as on a cluster, where the pod is up before traffic reaches it).
    pods: BTreeMap<RevKey, Pod>,
    started_pods: u32,
    /// Leave the latency histogram out of the exposition (see `Config::latency_histograms`).
    pub counts_only: bool,
    /// Whose metrics these are.
    pub stack: Stack,
    /// The InferenceServices in Standard mode (namespace, name).
    pub standard: std::collections::HashSet<(String, String)>,
    bounds_ms: Vec<f64>,
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
    /// No series yet, in `stack`'s shape; `counts_only` leaves the latency histogram out of the
    /// exposition.
    pub fn counting(stack: Stack, counts_only: bool) -> Metrics {
        Metrics {
            counts_only,
            stack,
            bounds_ms: stack.bounds_ms(),
            ..Metrics::default()
        }
    }

    fn pod(&mut self, key: &RevKey) {
        if !self.pods.contains_key(key) {
            let pod = Pod::new(&key.ns, &key.revision, self.started_pods);
            self.started_pods = self.started_pods.wrapping_add(1);
            self.pods.insert(key.clone(), pod);
        }
    }

    fn counts(&mut self, ns: &str, isvc: &str, revision: &str) -> &mut BTreeMap<u16, Counts> {
        let key = RevKey {
            ns: ns.into(),
            isvc: isvc.into(),
            revision: revision.into(),
        };
        self.pod(&key);
        self.series.entry(key).or_default()
    }

    /// Records one request, at the resolution the stack records latencies at.
    pub fn record(&mut self, ns: &str, isvc: &str, revision: &str, o: Outcome) {
        let n = self.bounds_ms.len();
        let latency = self.stack.observe_ms(o.latency_ms);
        // Cumulative buckets: every bound from the first one at or above the latency counts it.
        let first = self.bounds_ms.partition_point(|b| *b < latency);
        let s = self.counts(ns, isvc, revision).entry(o.code).or_default();
        s.buckets.resize(n, 0.0);
        s.count += 1.0;
        s.sum_ms += latency;
        for b in &mut s.buckets[first..] {
            *b += 1.0;
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
        // A latency recorded at resolution t is floor(L / t) * t: it is at most an edge e
        // when L < (floor(e / t) + 1) * t. Truncation lowers the mean by about t / 2.
        let trunc = self.stack.truncation_ms();
        let below = |e: f64| match trunc {
            Some(t) => cdf(((e / t).floor() + 1.0) * t),
            None => cdf(e),
        };
        let mean = ((mu + sigma * sigma / 2.0).exp() - trunc.unwrap_or(0.0) / 2.0).max(0.0);
        let shares: Vec<f64> = self.bounds_ms.iter().map(|e| below(*e)).collect();
        let series = self.counts(ns, isvc, revision);
        let er = b.error_rate.clamp(0.0, 1.0);
        for (code, m) in [(200u16, n * (1.0 - er)), (500, n * er)] {
            if m <= 0.0 {
                continue;
            }
            let s = series.entry(code).or_default();
            s.buckets.resize(shares.len(), 0.0);
            s.count += m;
            s.sum_ms += m * mean;
            for (i, share) in shares.iter().enumerate() {
                s.buckets[i] += m * share;
            }
        }
    }

    /// Forgets the series and pods of revisions that no longer receive traffic (they disappear
    /// from the exposition, so Prometheus marks them stale), and starts a pod for every revision
    /// that does.
    pub fn retain(&mut self, live: &HashMap<(String, String), Vec<String>>) {
        let is_live = |k: &RevKey| {
            live.get(&(k.ns.clone(), k.isvc.clone()))
                .is_some_and(|revs| revs.contains(&k.revision))
        };
        self.series.retain(|k, _| is_live(k));
        self.pods.retain(|k, _| is_live(k));
        for ((ns, isvc), revs) in live {
            for r in revs {
                self.pod(&RevKey {
                    ns: ns.clone(),
                    isvc: isvc.clone(),
                    revision: r.clone(),
                });
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of the live revisions, in the stack's shape.
    pub fn exposition(&self) -> String {
        let revisions: Vec<exporter::Revision<'_>> = self
            .pods
            .iter()
            .map(|(k, pod)| exporter::Revision {
                ns: &k.ns,
                isvc: &k.isvc,
                name: &k.revision,
                pod,
                standard: self.standard.contains(&(k.ns.clone(), k.isvc.clone())),
                codes: self
                    .series
                    .get(k)
                    .map(|c| c.iter().map(|(code, s)| (*code, s)).collect())
                    .unwrap_or_default(),
            })
            .collect();
        exporter::exposition(self.stack, &revisions, self.counts_only)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(m: &Metrics, code: u16) -> Counts {
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
    fn the_analytic_counters_are_what_sampling_converges_to_in_every_stack() {
        let b = Behaviour {
            error_rate: 0.1,
            p50_ms: 50.0,
            p95_ms: 200.0,
        };
        for name in exporter::STACK_NAMES {
            let stack = Stack::parse(name).expect("stack");
            let mut sampled = Metrics::counting(stack, false);
            let mut rng = fastrand::Rng::with_seed(7);
            let n = 200_000;
            for _ in 0..n {
                sampled.record("ns", "m", "r", sample(&mut rng, &b));
            }
            let mut expected = Metrics::counting(stack, false);
            expected.record_expected("ns", "m", "r", &b, n as f64);
            for code in [200, 500] {
                let (s, e) = (counts(&sampled, code), counts(&expected, code));
                assert!(
                    (s.count - e.count).abs() / e.count < 0.02,
                    "{name} {code}: {} vs {}",
                    s.count,
                    e.count
                );
                for (i, edge) in stack.bounds_ms().iter().enumerate() {
                    let tol = 0.01 * e.count + 3.0 * s.buckets[i].sqrt();
                    assert!(
                        (s.buckets[i] - e.buckets[i]).abs() <= tol,
                        "{name} {code} le={edge}: sampled {} expected {}",
                        s.buckets[i],
                        e.buckets[i]
                    );
                }
                // Whole seconds make the sum small and noisy; 3% of the mean latency elsewhere.
                let tol = if stack == Stack::Knative119 {
                    0.01 * e.count * 1000.0
                } else {
                    0.03 * e.sum_ms
                };
                assert!(
                    (s.sum_ms - e.sum_ms).abs() <= tol,
                    "{name} {code} sum {} vs {}",
                    s.sum_ms,
                    e.sum_ms
                );
            }
        }
        // The median and p95 sit where the behaviour puts them (Knative 1.21 bounds, seconds).
        let mut expected = Metrics::counting(Stack::Knative121, false);
        expected.record_expected("ns", "m", "r", &b, 1000.0);
        let ok = counts(&expected, 200);
        let bounds = Stack::Knative121.bounds_ms();
        let at = |ms: f64| {
            ok.buckets[bounds
                .iter()
                .position(|b| (*b - ms).abs() < 1e-9)
                .expect("edge")]
                / ok.count
        };
        assert!((at(50.0) - 0.5).abs() < 1e-6, "{}", at(50.0));
        assert!(at(100.0) < 0.95 && at(250.0) > 0.95);
        // Knative 1.19 records 0 s for every request under a second.
        let mut whole = Metrics::counting(Stack::Knative119, false);
        whole.record_expected("ns", "m", "r", &b, 1000.0);
        let first = counts(&whole, 200);
        assert!(
            first.buckets[0] / first.count > 0.99,
            "{}",
            first.buckets[0] / first.count
        );
    }

    #[test]
    fn a_revision_has_a_pod_and_target_info_before_its_first_request() {
        let mut m = Metrics::counting(Stack::Knative121, false);
        let live = HashMap::from([(
            ("ns".to_string(), "m".to_string()),
            vec!["m-predictor-00001".to_string()],
        )]);
        m.retain(&live);
        let text = m.exposition();
        assert!(
            text.contains(r#"kn_revision_name="m-predictor-00001""#),
            "{text}"
        );
        assert!(
            !text.contains("kn_serving_invocation_duration_seconds_count{"),
            "{text}"
        );
        m.retain(&HashMap::new());
        assert!(!m.exposition().contains("target_info{"));
    }
}
