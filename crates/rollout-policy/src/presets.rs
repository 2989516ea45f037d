//! Metric presets: the common metric families, so a policy can say `use knative` and refer to
//! `requests`, `errors`, `error_rate`, `latency_p50/p95/p99` and `rps` per arm.

use crate::model::Unit;

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

/// Names of all presets.
pub const PRESETS: [&str; 2] = ["knative", "istio"];

const KNATIVE_SEL: &str = r#"namespace_name="${namespace}",revision_name="${revision}""#;
const ISTIO_SEL: &str = r#"reporter="destination",destination_workload_namespace="${namespace}",destination_workload="${revision}-deployment""#;

fn fill(template: &str, sel: &str) -> String {
    template.replace("SEL", sel)
}

/// The metrics a preset defines, with their PromQL template (or, when derived, expression).
pub fn preset(name: &str) -> Option<Vec<(PresetMetric, String)>> {
    let (sel, count, latency) = match name {
        "knative" => (
            KNATIVE_SEL,
            "revision_app_request_count",
            "revision_app_request_latencies_bucket",
        ),
        "istio" => (
            ISTIO_SEL,
            "istio_requests_total",
            "istio_request_duration_milliseconds_bucket",
        ),
        _ => return None,
    };
    let errors_sel = if name == "knative" {
        format!(r#"{sel},response_code_class="5xx""#)
    } else {
        format!(r#"{sel},response_code=~"5..""#)
    };
    let m = |name: &'static str, unit: Unit, derived: bool| PresetMetric {
        name,
        unit,
        derived,
    };
    let latency_q = |quantile: &str| {
        fill("histogram_quantile(QQ, sum by (le) (rate(LAT{SEL}[${window}])))", sel)
            .replace("QQ", quantile)
            .replace("LAT", latency)
    };
    Some(vec![
        (
            m("requests", Unit::Count, false),
            fill("sum(increase(CNT{SEL}[${window}]))", sel).replace("CNT", count),
        ),
        (
            m("errors", Unit::Count, false),
            fill("sum(increase(CNT{SEL}[${window}]))", &errors_sel).replace("CNT", count),
        ),
        (m("error_rate", Unit::Ratio, true), "errors / requests".to_string()),
        (m("latency_p50", Unit::Ms, false), latency_q("0.5")),
        (m("latency_p95", Unit::Ms, false), latency_q("0.95")),
        (m("latency_p99", Unit::Ms, false), latency_q("0.99")),
        (
            m("rps", Unit::Rps, false),
            fill("sum(rate(CNT{SEL}[${window}]))", sel).replace("CNT", count),
        ),
    ])
}
