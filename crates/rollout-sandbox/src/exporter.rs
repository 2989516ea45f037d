//! The series each serving stack exports for a revision's requests, as a real Prometheus stores
//! them after scraping that stack: names, units, buckets, labels and `target_info`.
//!
//! One scrape of the sandbox's `/metrics` stands for the per-pod scrapes of a cluster: every
//! series carries the `job` and `instance` a per-pod scrape would give it, and Prometheus keeps
//! them (`honor_labels: true` in the generated configuration). What Prometheus stores is then
//! what it stores on a cluster; only the number of scrape targets differs.
//!
//! Sources (tags as read; details in `docs/sandbox.md`):
//!
//! * Knative ≥ 1.21 (`knative/serving` v0.48.1, KServe 0.17–0.20 pin 1.21.1): the queue-proxy's
//!   OpenTelemetry histogram `kn.serving.invocation.duration` (`pkg/queue/request_metric.go`
//!   60-65: unit `s`, 14 bounds 0.005 … 10 at line 32, one attribute `http.response.status_code`),
//!   exported by `knative/pkg` `observability/metrics/prometheus_enabled.go` 33-35 with
//!   `UnderscoreEscapingWithSuffixes` and nothing else: `kn_serving_invocation_duration_seconds_*`
//!   with the `otel_scope_*` labels on every sample, and the resource (`kn.revision.name`,
//!   `k8s.namespace.name`, …; `pkg/queue/sharedmain/otel.go` 90-135) only in `target_info`
//!   (`go.opentelemetry.io/otel/exporters/prometheus` v0.61.0 `exporter.go` 195-220). Off unless
//!   `config-observability` sets `request-metrics-protocol: prometheus`.
//! * The same pushed over OTLP to Prometheus's receiver with the resource attributes promoted
//!   (`knative-extensions/monitoring` `promstack-values.yaml` 14-47; Prometheus
//!   `storage/remote/otlptranslator/prometheusremotewrite/helper.go` 67-201): the resource on
//!   every sample, `job` = `service.name`, `instance` = `service.instance.id`, no scope labels.
//! * Knative 1.19.1–1.19.7 and 1.20.0: `kn_queueproxy_app_duration_seconds_*`, otherwise as
//!   1.21, and recorded as `latency / time.Second`, whole seconds (`request_metric.go` at v0.46.0
//!   line 106; fixed in 1.19.9 and 1.20.2).
//! * Knative ≤ 1.18 (`knative/serving` v0.45.x, OpenCensus): `revision_app_request_count` and
//!   `revision_app_request_latencies` in whole milliseconds (`pkg/queue/request_metric.go` 37-39
//!   for the 26 bounds, 50-57 and 139-200), the revision as the label `revision_name`.
//! * Istio (`istio/proxy` 1.28 `source/extensions/filters/http/istio_stats/istio_stats.cc`):
//!   `istio_requests_total` and `istio_request_duration_milliseconds`, reported by the
//!   destination sidecar with `destination_workload` = the revision's Deployment; Envoy's default
//!   buckets; no `# HELP`. With Istio and a default Knative ≥ 1.19, the queue-proxy exports no
//!   request metrics, so this stack serves only Istio's.

use std::fmt::Write as _;

mod families;

/// A serving stack whose request metrics the exporter serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stack {
    /// Knative ≥ 1.21 queue-proxy, scraped from its Prometheus endpoint (revision in
    /// `target_info`): what KServe 0.17–0.20 install.
    #[default]
    Knative121,
    /// Knative ≥ 1.21 queue-proxy, pushed over OTLP with the resource attributes promoted.
    Knative121Otlp,
    /// Knative 1.19–1.20.0 queue-proxy (`kn_queueproxy_app_duration_seconds`, whole seconds).
    Knative119,
    /// Knative ≤ 1.18 queue-proxy (OpenCensus names, milliseconds).
    Knative118,
    /// Istio's sidecar metrics.
    Istio,
}

/// The names `rolloutctl sandbox --metrics` accepts, in [`Stack`] order.
pub const STACK_NAMES: [&str; 5] = [
    "knative-1.21",
    "knative-1.21-otlp",
    "knative-1.19",
    "knative-1.18",
    "istio",
];

/// OpenTelemetry's default histogram bounds as Knative ≥ 1.19 sets them, in seconds.
const OTEL_BOUNDS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Knative ≤ 1.18's bounds, in milliseconds.
const KNATIVE_118_BOUNDS_MS: [f64; 26] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0,
    500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// Envoy's default histogram bounds (Istio's request duration), in milliseconds.
const ENVOY_BOUNDS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

impl Stack {
    /// Parses a `--metrics` name.
    pub fn parse(name: &str) -> Option<Stack> {
        Some(match name {
            "knative-1.21" | "knative" => Stack::Knative121,
            "knative-1.21-otlp" => Stack::Knative121Otlp,
            "knative-1.19" | "knative-1.20" => Stack::Knative119,
            "knative-1.18" => Stack::Knative118,
            "istio" => Stack::Istio,
            _ => return None,
        })
    }

    /// The `--metrics` name.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Knative121 => STACK_NAMES[0],
            Stack::Knative121Otlp => STACK_NAMES[1],
            Stack::Knative119 => STACK_NAMES[2],
            Stack::Knative118 => STACK_NAMES[3],
            Stack::Istio => STACK_NAMES[4],
        }
    }

    /// The histogram's upper bounds, in milliseconds (without `+Inf`).
    pub fn bounds_ms(self) -> Vec<f64> {
        match self {
            Stack::Knative121 | Stack::Knative121Otlp | Stack::Knative119 => {
                OTEL_BOUNDS_S.iter().map(|s| s * 1000.0).collect()
            }
            Stack::Knative118 => KNATIVE_118_BOUNDS_MS.to_vec(),
            Stack::Istio => ENVOY_BOUNDS_MS.to_vec(),
        }
    }

    /// The resolution a latency is recorded at, in milliseconds (`None`: exact). Knative ≤ 1.18
    /// records `latency.Milliseconds()`, 1.19–1.20.0 `latency / time.Second`.
    pub fn truncation_ms(self) -> Option<f64> {
        match self {
            Stack::Knative118 => Some(1.0),
            Stack::Knative119 => Some(1000.0),
            _ => None,
        }
    }

    /// A latency as this stack records it, in milliseconds.
    pub fn observe_ms(self, latency_ms: f64) -> f64 {
        match self.truncation_ms() {
            Some(t) => (latency_ms / t).floor() * t,
            None => latency_ms,
        }
    }
}

/// One revision's pod, as the scrape of its metrics port names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `<revision>-deployment-<replicaset hash>-<suffix>`, as the Deployment's ReplicaSet names it.
    pub name: String,
    /// Its IP, handed out in order as a cluster's IPAM would (unique while the pod lives).
    pub ip: String,
}

/// FNV-1a, for stable made-up names.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const POD_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn suffix(mut h: u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            let c = POD_CHARS[(h % POD_CHARS.len() as u64) as usize] as char;
            h /= POD_CHARS.len() as u64;
            c
        })
        .collect()
}

impl Pod {
    /// The pod of `revision` in namespace `ns`, the `index`-th pod the sandbox started.
    pub fn new(ns: &str, revision: &str, index: u32) -> Pod {
        let h = fnv(&format!("{ns}/{revision}"));
        Pod {
            name: format!(
                "{revision}-deployment-{}-{}",
                suffix(h, 10),
                suffix(h >> 32, 5)
            ),
            ip: format!(
                "10.{}.{}.{}",
                index / 62_500 % 256,
                index / 250 % 250,
                index % 250 + 2
            ),
        }
    }

    /// `<ip>:<port>`: the `instance` of a scrape of `port`.
    pub fn instance(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }
}

/// One revision's requests with one status code: what a histogram holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Requests (fractional in the analytic mode).
    pub count: f64,
    /// Their latencies' sum, ms.
    pub sum_ms: f64,
    /// Cumulative count per bound of [`Stack::bounds_ms`].
    pub buckets: Vec<f64>,
}

/// A revision with a pod.
#[derive(Clone, Debug)]
pub struct Revision<'a> {
    /// Namespace.
    pub ns: &'a str,
    /// InferenceService.
    pub isvc: &'a str,
    /// Knative revision name.
    pub name: &'a str,
    /// Its pod.
    pub pod: &'a Pod,
    /// A Standard-mode predictor (`name` is its Deployment): no queue-proxy, so no Knative
    /// series; Istio names the Deployment as the workload.
    pub standard: bool,
    /// Its requests by status code (empty before the first request).
    pub codes: Vec<(u16, &'a Counts)>,
}

/// Escapes a label value for the text exposition format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name="value",…` from pairs, values escaped (names as given, already sorted).
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

/// A bound as Go's `%g` prints it (what both Go exporters and Envoy's `{:.32g}` give for these
/// values): `0.005`, `1`, `100000`.
fn bound(v: f64) -> String {
    format!("{v}")
}

/// The exposition of `revisions` in `stack`'s shape; without the histogram's buckets when
/// `counts_only`.
pub fn exposition(stack: Stack, revisions: &[Revision<'_>], counts_only: bool) -> String {
    let mut out = String::new();
    let knative: Vec<Revision<'_>> = revisions.iter().filter(|r| !r.standard).cloned().collect();
    match stack {
        Stack::Knative118 => families::knative_118(&mut out, &knative, counts_only),
        Stack::Knative121 | Stack::Knative119 | Stack::Knative121Otlp => {
            families::otel(&mut out, stack, &knative, counts_only)
        }
        Stack::Istio => families::istio(&mut out, revisions, counts_only),
    }
    out
}

/// Writes one histogram's `_bucket`, `_sum`, `_count` lines; `scale` turns ms into the unit.
fn histogram(
    out: &mut String,
    family: &str,
    l: &str,
    bounds_ms: &[f64],
    c: &Counts,
    scale: f64,
    counts_only: bool,
) {
    let sep = if l.is_empty() { "" } else { "," };
    if !counts_only {
        for (b, n) in bounds_ms.iter().zip(&c.buckets) {
            let _ = writeln!(
                out,
                "{family}_bucket{{{l}{sep}le=\"{}\"}} {n}",
                bound(b * scale)
            );
        }
        let _ = writeln!(out, "{family}_bucket{{{l}{sep}le=\"+Inf\"}} {}", c.count);
    }
    let _ = writeln!(out, "{family}_sum{{{l}}} {}", c.sum_ms * scale);
    let _ = writeln!(out, "{family}_count{{{l}}} {}", c.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(stack: Stack) -> String {
        let c = Counts {
            count: 12.0,
            sum_ms: 3210.0,
            buckets: stack.bounds_ms().iter().map(|_| 1.0).collect(),
        };
        let pod = Pod::new("kserve-test", "iris-predictor-00001", 0);
        exposition(
            stack,
            &[Revision {
                ns: "kserve-test",
                isvc: "iris",
                name: "iris-predictor-00001",
                pod: &pod,
                standard: false,
                codes: vec![(200, &c)],
            }],
            false,
        )
    }

    #[test]
    fn names_parse_back() {
        for n in STACK_NAMES {
            assert_eq!(Stack::parse(n).map(Stack::name), Some(n));
        }
        assert_eq!(Stack::parse("knative-2.0"), None);
    }

    #[test]
    fn knative_1_21_puts_the_revision_only_in_target_info() {
        let text = one(Stack::Knative121);
        let sample = text
            .lines()
            .find(|l| l.starts_with("kn_serving_invocation_duration_seconds_count{"))
            .expect("count");
        assert!(!sample.contains("iris-predictor-00001"), "{sample}");
        assert!(sample.contains(r#"http_response_status_code="200""#));
        assert!(text.contains(r#"le="0.005""#) && text.contains(r#"le="10""#));
        assert!(
            text.contains("kn_serving_invocation_duration_seconds_sum{") && text.contains("} 3.21")
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("target_info{"))
            .expect("target_info");
        assert!(
            info.contains(r#"kn_revision_name="iris-predictor-00001""#),
            "{info}"
        );
        assert!(info.contains(r#"k8s_namespace_name="kserve-test""#));
        let instance = |l: &str| {
            l.split("instance=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        assert_eq!(
            instance(sample),
            instance(info),
            "joined on job and instance"
        );
    }

    #[test]
    fn otlp_promotes_the_revision_onto_every_sample() {
        let text = one(Stack::Knative121Otlp);
        let sample = text
            .lines()
            .find(|l| l.starts_with("kn_serving_invocation_duration_seconds_bucket{"))
            .expect("bucket");
        assert!(sample.contains(r#"kn_revision_name="iris-predictor-00001""#));
        assert!(sample.contains(r#"k8s_namespace_name="kserve-test""#));
        assert!(!sample.contains("otel_scope"));
    }

    #[test]
    fn knative_1_18_and_istio_keep_their_names_units_and_bounds() {
        let text = one(Stack::Knative118);
        assert!(text.contains(r#"revision_name="iris-predictor-00001""#));
        assert!(text.contains(r#"container_name="queue-proxy""#));
        assert!(text.contains(r#"le="100000""#));
        assert!(text.contains("revision_app_request_latencies_sum{") && text.contains("} 3210"));
        let text = one(Stack::Istio);
        assert!(text.contains(r#"destination_workload="iris-predictor-00001-deployment""#));
        assert!(text.contains(r#"le="3600000""#) && text.contains(r#"le="0.5""#));
        assert!(!text.contains("# HELP"), "Envoy writes no HELP");
    }

    #[test]
    fn knative_1_19_records_whole_seconds() {
        assert_eq!(Stack::Knative119.observe_ms(999.0), 0.0);
        assert_eq!(Stack::Knative119.observe_ms(2500.0), 2000.0);
        assert_eq!(Stack::Knative118.observe_ms(12.7), 12.0);
        assert_eq!(Stack::Knative121.observe_ms(12.7), 12.7);
    }

    #[test]
    fn pods_have_stable_names_and_distinct_addresses() {
        let a = Pod::new("ns", "m-predictor-00001", 0);
        let b = Pod::new("ns", "m-predictor-00002", 1);
        assert_eq!(a.name, Pod::new("ns", "m-predictor-00001", 7).name);
        assert_ne!(a.name, b.name);
        let ips: std::collections::HashSet<String> =
            (0..100_000).map(|i| Pod::new("ns", "r", i).ip).collect();
        assert_eq!(ips.len(), 100_000);
        assert!(a.name.starts_with("m-predictor-00001-deployment-"));
    }
}
