//! Metric presets: the common metric families, so a policy can say `use knative` and refer to
//! `requests`, `errors`, `error_rate`, `latency_p50/p95/p99` and `rps` per arm.

use std::sync::LazyLock;

use crate::model::Unit;
use crate::template::Template;

/// A preset's metrics with their templates split once per process (`None` for derived metrics).
pub type Parsed = Vec<(PresetMetric, Option<Template>)>;

static KNATIVE: LazyLock<Parsed> = LazyLock::new(|| parse_all("knative"));
static ISTIO: LazyLock<Parsed> = LazyLock::new(|| parse_all("istio"));

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
    match name {
        "knative" => Some(&KNATIVE),
        "istio" => Some(&ISTIO),
        _ => None,
    }
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
        fill(
            "histogram_quantile(QQ, sum by (le) (rate(LAT{SEL}[${window}])))",
            sel,
        )
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
            // A 5xx series exists only after the first 5xx: "no errors yet" is 0 when the
            // revision has requests (`or` the requests times 0), and no data when it has none —
            // no traffic is no evidence, never 0 errors.
            format!(
                "{} or ({} * 0)",
                fill("sum(increase(CNT{SEL}[${window}]))", &errors_sel),
                fill("sum(increase(CNT{SEL}[${window}]))", sel)
            )
            .replace("CNT", count),
        ),
        (
            m("error_rate", Unit::Ratio, true),
            "errors / requests".to_string(),
        ),
        (m("latency_p50", Unit::Ms, false), latency_q("0.5")),
        (m("latency_p95", Unit::Ms, false), latency_q("0.95")),
        (m("latency_p99", Unit::Ms, false), latency_q("0.99")),
        (
            m("rps", Unit::Rps, false),
            fill("sum(rate(CNT{SEL}[${window}]))", sel).replace("CNT", count),
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
