//! `rolloutctl doctor`: whether a policy can drive its InferenceService on this cluster and
//! Prometheus, without changing anything. The same checks as the preflight (every metric has a
//! series for the stable revision, in a plausible unit), all of them rather than the first
//! failure, plus the InferenceService's mode and component and the misplaced fields of public
//! manifests.

use kube::Client;
use rollout_engine::{Machine, Sample};
use serde_json::Value;

use crate::metrics::Prom;
use crate::{Millis, isvc, preflight, standard};

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, but likely not as meant.
    Warn,
    /// The rollout would not start, or would judge on nothing.
    Fail,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`InferenceService`, `Prometheus`, `metric requests`, a manifest path).
    pub subject: String,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found, and for anything but a pass, what to change.
    pub detail: String,
}

impl Check {
    fn new(subject: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            subject: subject.into(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// Where to look.
pub struct Inputs<'a> {
    /// The checked policy.
    pub machine: &'a Machine,
    /// The cluster, if one is reachable (its error otherwise).
    pub client: Result<Client, String>,
    /// Prometheus URL overriding the policy's.
    pub prometheus_url: Option<&'a str>,
    /// Manifests to check for misplaced fields: (where it came from, the document).
    pub manifests: &'a [(String, Value)],
    /// Now.
    pub now: Millis,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("policy", &self.machine.policy().name)
            .field("cluster", &self.client.as_ref().map(|_| "a client"))
            .field("prometheus_url", &self.prometheus_url)
            .field("manifests", &self.manifests.len())
            .field("now", &self.now)
            .finish()
    }
}

/// Runs every check; the report lists them in order.
pub async fn run(inputs: Inputs<'_>) -> Vec<Check> {
    let policy = inputs.machine.policy();
    let key = format!("{}/{}", policy.target.namespace, policy.target.name);
    let component = policy.target.component.as_str();
    let mut out = Vec::new();
    for (origin, doc) in inputs.manifests {
        for (field, why) in misplaced(doc) {
            out.push(Check::new(
                format!("manifest {origin}"),
                Verdict::Fail,
                format!("{field}: {why}"),
            ));
        }
    }
    if !inputs.manifests.is_empty() && out.is_empty() {
        out.push(Check::new(
            "manifests",
            Verdict::Pass,
            format!(
                "{} documents, no misplaced canary fields",
                inputs.manifests.len()
            ),
        ));
    }
    let mut stable = None;
    let mut serving_mode = isvc::Mode::Knative;
    match &inputs.client {
        Err(e) => out.push(Check::new(
            "cluster",
            Verdict::Fail,
            format!("cannot reach the cluster: {e}"),
        )),
        Ok(client) => match isvc::Isvc::new(
            client.clone(),
            &policy.target.namespace,
            &policy.target.name,
        )
        .get()
        .await
        {
            Err(e) if isvc::not_found(&e) => out.push(Check::new(
                "InferenceService",
                Verdict::Fail,
                format!("{key} does not exist (target.name, target.namespace)"),
            )),
            Err(e) => out.push(Check::new(
                "InferenceService",
                Verdict::Fail,
                format!("cannot read {key}: {e}"),
            )),
            Ok(obj) => {
                let live = serde_json::to_value(&obj).unwrap_or(Value::Null);
                for (field, why) in misplaced(&live) {
                    out.push(Check::new(
                        format!("InferenceService {key}"),
                        Verdict::Warn,
                        format!("{field}: {why}"),
                    ));
                }
                let mode = isvc::deployment_mode(&obj);
                if isvc::mode(&obj) == isvc::Mode::Standard {
                    serving_mode = isvc::Mode::Standard;
                    stable = standard_target(&mut out, client, &obj, &key, component).await;
                } else if !isvc::has_component(&obj, component) {
                    out.push(Check::new(
                        "InferenceService",
                        Verdict::Fail,
                        format!("{key} has no spec.{component} (the policy's target.component)"),
                    ));
                } else {
                    let seen = isvc::observe(&obj, component);
                    // Before a canary, the revision serving everything is the stable one.
                    let serving = seen.stable_revision.clone().or_else(|| {
                        (!seen.canary_revision.is_empty()).then(|| seen.canary_revision.clone())
                    });
                    match &serving {
                        Some(s) => {
                            let canary = match &seen.stable_revision {
                                Some(_) => format!(
                                    ", canary revision {} at {}%",
                                    seen.canary_revision, seen.canary_percent
                                ),
                                None => ", no canary yet".to_string(),
                            };
                            out.push(Check::new(
                                "InferenceService",
                                Verdict::Pass,
                                format!(
                                    "{key}: {} mode, spec.{component}, stable revision {s}{canary}",
                                    if mode.is_empty() { "Knative" } else { mode.as_str() },
                                ),
                            ));
                            stable = Some(s.clone());
                        }
                        None => out.push(Check::new(
                            "InferenceService",
                            Verdict::Fail,
                            format!("{key} has no ready revision serving traffic yet: the metrics cannot be checked against the stable revision"),
                        )),
                    }
                }
            }
        },
    }
    let prom = match Prom::for_policy(policy, inputs.prometheus_url) {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::new("Prometheus", Verdict::Fail, e));
            return out;
        }
    };
    match prom.query("vector(1)", inputs.now).await {
        Sample::Value { .. } => out.push(Check::new(
            "Prometheus",
            Verdict::Pass,
            format!("{} answers", prom.url),
        )),
        Sample::NoData => out.push(Check::new(
            "Prometheus",
            Verdict::Fail,
            format!(
                "{} answered `vector(1)` with nothing: is it Prometheus?",
                prom.url
            ),
        )),
        Sample::Error { message } => {
            out.push(Check::new(
                "Prometheus",
                Verdict::Fail,
                format!("{} does not answer: {message}", prom.url),
            ));
            return out;
        }
    }
    let Some(stable) = stable else {
        return out;
    };
    let metrics = inputs.machine.query_metrics();
    for r in preflight::diagnose(
        policy,
        &metrics,
        &prom,
        serving_mode,
        &stable,
        inputs.now,
        false,
    )
    .await
    {
        out.push(match r {
            Ok(p) => Check::new(
                format!("metric {}", p.metric),
                Verdict::Pass,
                format!("{} {} for {stable}", round(p.value), p.unit),
            ),
            Err(problem) => Check::new(
                format!("metric {}", metric_of(&problem)),
                Verdict::Fail,
                problem.to_string(),
            ),
        });
    }
    out
}

/// The checks of a Standard-mode InferenceService (one canary entry at most, on the predictor;
/// the cluster's routing; a canary's HTTPRoute backend): its stable Deployment when it can be
/// judged.
async fn standard_target(
    out: &mut Vec<Check>,
    client: &Client,
    obj: &kube::api::DynamicObject,
    key: &str,
    component: &str,
) -> Option<String> {
    let stable = standard::stable(obj);
    let n = standard::canary_count(obj);
    if component != "predictor" || n > 1 {
        out.push(Check::new(
            "InferenceService",
            Verdict::Fail,
            if n > 1 {
                format!("{key} has {n} spec.canary[] entries; rolloutctl judges one canary at a time (remove all but one)")
            } else {
                format!("{key} is in Standard mode, where canaries (spec.canary[]) are predictors only; the policy targets the {component}")
            },
        ));
        return None;
    }
    let canary = standard::canary(obj);
    let detail = match (&canary, standard::spec_percent(obj)) {
        (Some((_, d)), Some(p)) => format!(", canary Deployment {d} at {p}% (spec.canary[0])"),
        _ => ", no spec.canary[] entry yet".to_string(),
    };
    out.push(Check::new(
        "InferenceService",
        Verdict::Pass,
        format!("{key}: Standard mode, stable Deployment {stable}{detail}"),
    ));
    out.push(standard_routing(client).await);
    if let Some((_, d)) = canary {
        let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
        let isvc = obj.metadata.name.as_deref().unwrap_or_default();
        out.push(match standard::routed(client, ns, isvc, &d).await {
            Ok(m) => Check::new("canary routing", Verdict::Pass, m),
            Err(m) => Check::new("canary routing", Verdict::Fail, m),
        });
    }
    Some(stable)
}

/// Whether a Standard-mode canary would receive traffic at all: only KServe's Gateway API
/// path splits (`ingress.enableGatewayApi` in `inferenceservice-config`, default false;
/// `httproute_reconciler.go` `applyCanaryWeights`, after the v0.20.0 tag); the Kubernetes
/// Ingress sends everything to the stable predictor.
async fn standard_routing(client: &Client) -> Check {
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), "kserve");
    match cms.get("inferenceservice-config").await {
        Err(e) => Check::new(
            "Standard-mode routing",
            Verdict::Warn,
            format!(
                "cannot read kserve/inferenceservice-config ({e}): whether canaries get traffic depends on its `ingress.enableGatewayApi`"
            ),
        ),
        Ok(cm) => {
            let enabled = cm
                .data
                .as_ref()
                .and_then(|d| d.get("ingress"))
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|i| i["enableGatewayApi"].as_bool())
                .unwrap_or(false);
            if enabled {
                Check::new(
                    "Standard-mode routing",
                    Verdict::Pass,
                    "ingress.enableGatewayApi is true: KServe releases after v0.20.0 weigh the HTTPRoute `{isvc}-predictor` by spec.canary[].trafficPercent (v0.20.0 itself splits nothing)",
                )
            } else {
                Check::new(
                    "Standard-mode routing",
                    Verdict::Fail,
                    "ingress.enableGatewayApi is false in kserve/inferenceservice-config: KServe's Kubernetes Ingress sends every request to the stable predictor, so a spec.canary[] entry gets no traffic and nothing could be measured; enable the Gateway API (`\"enableGatewayApi\": true`)",
                )
            }
        }
    }
}

fn metric_of(p: &preflight::Problem) -> &str {
    match p {
        preflight::Problem::QueryFailed { metric, .. }
        | preflight::Problem::NoSeries { metric, .. }
        | preflight::Problem::Implausible { metric, .. } => metric,
    }
}

fn round(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Canary fields in places KServe does not read them (seen in public manifests and old
/// tutorials): `(field, why)` for each.
pub fn misplaced(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind != "InferenceService" {
        return out;
    }
    if api.starts_with("serving.kubeflow.org/") {
        out.push((
            format!("apiVersion: {api}"),
            "KFServing's old API group, which KServe does not serve: use `serving.kserve.io/v1beta1`".into(),
        ));
    }
    let spec = &doc["spec"];
    if spec.get("canaryTrafficPercent").is_some() {
        out.push((
            "spec.canaryTrafficPercent".into(),
            "the v1alpha2 place; KServe v1beta1 reads it per component, `spec.predictor.canaryTrafficPercent`, and prunes it here".into(),
        ));
    }
    if spec.get("default").is_some() {
        out.push((
            "spec.default".into(),
            "the v1alpha2 layout (`default`/`canary` predictors); v1beta1 has one `spec.predictor`, and a canary is a new predictor spec with `canaryTrafficPercent`".into(),
        ));
    }
    find_key(doc, "canaryPredictor", "", &mut |path| {
        out.push((
            path,
            "not a KServe field: a canary is the new `spec.predictor` with `canaryTrafficPercent` (Knative mode), or a `spec.canary[]` entry (Standard mode, KServe ≥ 0.20)".into(),
        ));
    });
    match spec.get("canary") {
        Some(Value::Object(_)) => out.push((
            "spec.canary".into(),
            "an object is the v1alpha2 canary predictor; KServe ≥ 0.20's `spec.canary` is a list of `{trafficPercent, predictor}` entries, for Standard mode only".into(),
        )),
        Some(Value::Array(_)) => {
            let mode = doc
                .pointer("/metadata/annotations/serving.kserve.io~1deploymentMode")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !matches!(mode, "Standard" | "RawDeployment") {
                out.push((
                    "spec.canary".into(),
                    format!("KServe validates and reconciles `spec.canary[]` only in Standard mode (annotation `serving.kserve.io/deploymentMode: Standard`); this InferenceService is in {} mode, where a canary is `spec.predictor.canaryTrafficPercent`", if mode.is_empty() { "the cluster's default (Knative unless configured)" } else { mode }),
                ));
            }
        }
        _ => {}
    }
    for c in ["predictor", "transformer", "explainer"] {
        let p = &spec[c];
        if p.get("trafficPercent").is_some() {
            out.push((
                format!("spec.{c}.trafficPercent"),
                format!("KServe reads `spec.{c}.canaryTrafficPercent`; `trafficPercent` belongs to a `spec.canary[]` entry"),
            ));
        }
    }
    out
}

fn find_key(v: &Value, key: &str, path: &str, hit: &mut impl FnMut(String)) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k == key {
                    hit(p.clone());
                }
                find_key(child, key, &p, hit);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                find_key(child, key, &format!("{path}[{i}]"), hit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(doc: Value) -> Vec<String> {
        misplaced(&doc).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn the_misplacements_of_public_manifests_are_named() {
        let old = json!({
            "apiVersion": "serving.kubeflow.org/v1alpha2",
            "kind": "InferenceService",
            "spec": {
                "canaryTrafficPercent": 10,
                "default": {"predictor": {"sklearn": {"storageUri": "gs://a"}}},
                "canary": {"predictor": {"sklearn": {"storageUri": "gs://b"}}}
            }
        });
        assert_eq!(
            fields(old),
            [
                "apiVersion: serving.kubeflow.org/v1alpha2",
                "spec.canaryTrafficPercent",
                "spec.default",
                "spec.canary"
            ]
        );
        let invented = json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "spec": {"predictor": {"trafficPercent": 10, "canaryPredictor": {"model": {}}}}
        });
        assert_eq!(
            fields(invented),
            [
                "spec.predictor.canaryPredictor",
                "spec.predictor.trafficPercent"
            ]
        );
        let canary_list_in_knative_mode = json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "spec": {"predictor": {"model": {}}, "canary": [{"trafficPercent": 10}]}
        });
        assert_eq!(fields(canary_list_in_knative_mode), ["spec.canary"]);
    }

    #[test]
    fn correct_manifests_have_nothing_misplaced() {
        let knative = json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": "gs://b"}}}
        });
        assert!(fields(knative).is_empty());
        let standard = json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
            "spec": {"predictor": {"name": "v1", "model": {}}, "canary": [{"trafficPercent": 20, "predictor": {"name": "v2"}}]}
        });
        assert!(fields(standard).is_empty());
        assert!(
            fields(json!({"kind": "Deployment", "spec": {"canaryTrafficPercent": 1}})).is_empty()
        );
    }

    #[test]
    fn values_are_rounded_for_people() {
        assert_eq!(round(1200.0), "1200");
        assert_eq!(round(0.04210), "0.0421");
        assert_eq!(round(3.0), "3");
    }
}
