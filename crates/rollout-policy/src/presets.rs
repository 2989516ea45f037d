//! Metric presets: the request metrics of each serving stack, so a policy can say `use knative`
//! and refer to `requests`, `errors`, `error_rate`, `latency_p50/p95/p99` and `rps` per arm.
//!
//! Each preset names the stack it matches (which Knative, which way its metrics reach
//! Prometheus, or Istio); `docs/metrics.md` says which one a KServe version needs.

use std::sync::LazyLock;

use crate::model::Unit;
use crate::template::Template;

/// A preset's metrics with their templates split once per process (`None` for derived metrics).
pub type Parsed = Vec<(PresetMetric, Option<Template>)>;

/// Names of all presets, in [`SHAPES`] order.
pub const PRESETS: [&str; 5] = [
    "knative",
    "knative_otlp",
    "knative_1_19",
    "knative_1_18",
    "istio",
];

static PARSED: LazyLock<Vec<Parsed>> =
    LazyLock::new(|| PRESETS.iter().map(|n| parse_all(n)).collect());

fn parse_all(name: &str) -> Parsed {
    preset(name)
        .unwrap_or_default()
        .into_iter()
        .map(|(m, def)| {
            let t = if m.derived {
                None
            } else {
                Template::parse(&def).ok()
            };
            (m, t)
        })
        .collect()
}

/// A preset's metrics, templates already split.
pub fn parsed(name: &str) -> Option<&'static Parsed> {
    PRESETS
        .iter()
        .position(|p| *p == name)
        .and_then(|i| PARSED.get(i))
}

/// A preset metric definition.
#[derive(Clone, Copy, Debug)]
pub struct PresetMetric {
    /// Name.
    pub name: &'static str,
    /// Unit.
    pub unit: Unit,
    /// Whether the definition is an expression over other metrics of the preset.
    pub derived: bool,
}

/// Where a stack's request metrics are, as Prometheus stores them.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The preset's name.
    pub preset: &'static str,
    /// What it matches, for people.
    pub matches: &'static str,
    /// The counter (or histogram `_count`) of requests.
    pub count: &'static str,
    /// The latency histogram's `_bucket` series.
    pub bucket: &'static str,
    /// The latency's unit.
    pub latency_unit: Unit,
    /// Matchers on the request series themselves (namespace and revision, when they carry them).
    pub selector: &'static str,
    /// The matcher that keeps 5xx answers.
    pub errors: &'static str,
    /// When the revision is only in `target_info`: the join that keeps one revision's series.
    pub join: Option<&'static str>,
    /// The label that carries the revision (on the series, or on `target_info`).
    pub revision_label: &'static str,
}

const TARGET_INFO_JOIN: &str = r#" * on (job, instance) group_left (kn_revision_name) target_info{k8s_namespace_name="${namespace}",kn_revision_name="${revision}"}"#;

/// Every preset's shape, in [`PRESETS`] order.
pub const SHAPES: [Shape; 5] = [
    Shape {
        preset: "knative",
        matches: "Knative >= 1.21 (and 1.19.8+, 1.20.1+), the Knative KServe 0.17-0.20 install: the queue-proxy's Prometheus endpoint (`request-metrics-protocol: prometheus`), revision from `target_info`",
        count: "kn_serving_invocation_duration_seconds_count",
        bucket: "kn_serving_invocation_duration_seconds_bucket",
        latency_unit: Unit::S,
        selector: "",
        errors: r#"http_response_status_code=~"5..""#,
        join: Some(TARGET_INFO_JOIN),
        revision_label: "kn_revision_name",
    },
    Shape {
        preset: "knative_otlp",
        matches: "Knative >= 1.21 pushed over OTLP to Prometheus with the resource attributes promoted (`kn_revision_name`, `k8s_namespace_name` on every series)",
        count: "kn_serving_invocation_duration_seconds_count",
        bucket: "kn_serving_invocation_duration_seconds_bucket",
        latency_unit: Unit::S,
        selector: r#"k8s_namespace_name="${namespace}",kn_revision_name="${revision}""#,
        errors: r#"http_response_status_code=~"5..""#,
        join: None,
        revision_label: "kn_revision_name",
    },
    Shape {
        preset: "knative_1_19",
        matches: "Knative 1.19.1-1.19.7 and 1.20.0 (`kn_queueproxy_app_duration_seconds`; latencies in whole seconds until 1.19.9/1.20.2), revision from `target_info`",
        count: "kn_queueproxy_app_duration_seconds_count",
        bucket: "kn_queueproxy_app_duration_seconds_bucket",
        latency_unit: Unit::S,
        selector: "",
        errors: r#"http_response_status_code=~"5..""#,
        join: Some(TARGET_INFO_JOIN),
        revision_label: "kn_revision_name",
    },
    Shape {
        preset: "knative_1_18",
        matches: "Knative <= 1.18 (OpenCensus names; KServe <= 0.16): `revision_app_request_count`, latencies in ms",
        count: "revision_app_request_count",
        bucket: "revision_app_request_latencies_bucket",
        latency_unit: Unit::Ms,
        selector: r#"namespace_name="${namespace}",revision_name="${revision}""#,
        errors: r#"response_code_class="5xx""#,
        join: None,
        revision_label: "revision_name",
    },
    Shape {
        preset: "istio",
        matches: "Istio sidecar metrics reported by the destination (`istio_requests_total`, latencies in ms), the arm's Deployment as `destination_workload` (a Knative revision's `<revision>-deployment`, or a Standard-mode predictor's own): either deployment mode",
        count: "istio_requests_total",
        bucket: "istio_request_duration_milliseconds_bucket",
        latency_unit: Unit::Ms,
        selector: r#"reporter="destination",destination_workload_namespace="${namespace}",destination_workload="${workload}""#,
        errors: r#"response_code=~"5..""#,
        join: None,
        revision_label: "destination_workload",
    },
];

/// A preset's shape.
pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.preset == name)
}

impl Shape {
    /// `metric{matchers}` with the preset's selector and `extra` (either may be empty).
    fn select(&self, metric: &str, extra: &str) -> String {
        let m = [self.selector, extra]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        if m.is_empty() {
            metric.to_string()
        } else {
            format!("{metric}{{{m}}}")
        }
    }

    /// `f(metric{…}[${window}])`, joined to the revision's `target_info` when needed.
    fn over_window(&self, f: &str, metric: &str, extra: &str) -> String {
        format!(
            "{f}({}[${{window}}]){}",
            self.select(metric, extra),
            self.join.unwrap_or("")
        )
    }
}

/// The metrics a preset defines, with their PromQL template (or, when derived, expression).
pub fn preset(name: &str) -> Option<Vec<(PresetMetric, String)>> {
    let sh = shape(name)?;
    let m = |name: &'static str, unit: Unit, derived: bool| PresetMetric {
        name,
        unit,
        derived,
    };
    let latency_q = |quantile: &str| {
        format!(
            "histogram_quantile({quantile}, sum by (le) ({}))",
            sh.over_window("rate", sh.bucket, "")
        )
    };
    let requests = format!("sum({})", sh.over_window("increase", sh.count, ""));
    let five_xx = format!("sum({})", sh.over_window("increase", sh.count, sh.errors));
    Some(vec![
        (m("requests", Unit::Count, false), requests.clone()),
        (
            m("errors", Unit::Count, false),
            // A 5xx series exists only after the first 5xx: "no errors yet" is 0 when the
            // revision has requests (`or` the requests times 0), and no data when it has none —
            // no traffic is no evidence, never 0 errors.
            format!("{five_xx} or ({requests} * 0)"),
        ),
        (
            m("error_rate", Unit::Ratio, true),
            "errors / requests".to_string(),
        ),
        (m("latency_p50", sh.latency_unit, false), latency_q("0.5")),
        (m("latency_p95", sh.latency_unit, false), latency_q("0.95")),
        (m("latency_p99", sh.latency_unit, false), latency_q("0.99")),
        (
            m("rps", Unit::Rps, false),
            format!("sum({})", sh.over_window("rate", sh.count, "")),
        ),
    ])
}

#[cfg(all(test, feature = "promql"))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::template::{Template, Vars};

    /// The checker trusts preset templates without parsing them; this is why it may.
    #[test]
    fn every_preset_template_is_valid_promql_returning_a_vector() {
        for name in PRESETS {
            for (m, def) in preset(name).expect("preset") {
                if m.derived {
                    continue;
                }
                let t = Template::parse(&def).expect("template");
                let q = t.render(&Vars {
                    mode: Default::default(),
                    revision: "sklearn-iris-predictor-00002",
                    namespace: "kserve-test",
                    name: "sklearn-iris",
                    component: "predictor",
                    window: Duration::from_secs(60),
                });
                let e = promql_parser::parser::parse(&q)
                    .unwrap_or_else(|err| panic!("{name}.{}: {err}\n{q}", m.name));
                assert_eq!(
                    e.value_type(),
                    promql_parser::parser::value::ValueType::Vector,
                    "{name}.{}",
                    m.name
                );
            }
        }
    }
}
