//! What of an InferenceService reaches the Knative revision template, as KServe builds it
//! (kserve/kserve v0.20): `pkg/controller/v1beta1/inferenceservice/components/predictor.go`
//! `buildPredictorResources` and `buildObjectMeta` filter the InferenceService's and the
//! predictor's annotations and labels through exact-key disallow lists
//! (`pkg/constants/constants.go:537-547`, plus `serviceAnnotationDisallowedList` /
//! `serviceLabelDisallowedList` of the `inferenceservice-config` ConfigMap,
//! `pkg/apis/serving/v1beta1/configmap.go:239-252`); `reconcilers/knative/ksvc_reconciler.go`
//! moves `serving.knative.dev/rollout-duration` to the Knative Service itself and puts the rest
//! in `spec.template`. Matching is `==` (`pkg/utils/collections.go` `Includes`): no prefixes.

use serde_json::{Map, Value, json};

/// Annotations never propagated to the revision (`constants.go:537-543`).
pub const DEFAULT_ANNOTATION_DISALLOWED: [&str; 5] = [
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    "internal.serving.kserve.io/storage-initializer-sourceuri",
    "kubectl.kubernetes.io/last-applied-configuration",
    "modelFormat",
];
/// Labels never propagated (`constants.go:545-547`).
pub const DEFAULT_LABEL_DISALLOWED: [&str; 1] = ["networking.knative.dev/visibility"];
/// Annotations moved to the Knative Service's own metadata (`ksvc_reconciler.go:50-54`).
const KSVC_ANNOTATIONS: [&str; 2] = [
    "serving.knative.dev/rollout-duration",
    "serving.knative.openshift.io/enablePassthrough",
];

/// The disallow lists in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Disallowed {
    /// Annotation keys.
    pub annotations: Vec<String>,
    /// Label keys.
    pub labels: Vec<String>,
}

/// The lists from the `inferenceservice-config` ConfigMap's data, as `NewInferenceServicesConfig`
/// builds them: the defaults plus the ConfigMap's entries when its `inferenceService` key is
/// there (when it is not, the lists stay empty, as there). `Err` when the key is not JSON (the
/// controller's reconcile then fails and changes nothing).
pub fn disallowed(data: &Value) -> Result<Disallowed, String> {
    let Some(text) = data["inferenceService"].as_str() else {
        return Ok(Disallowed::default());
    };
    let cfg: Value =
        serde_json::from_str(text).map_err(|e| format!("unable to parse isvc config json: {e}"))?;
    let list = |key: &str, defaults: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
        v.extend(
            cfg[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string)),
        );
        v
    };
    Ok(Disallowed {
        annotations: list(
            "serviceAnnotationDisallowedList",
            &DEFAULT_ANNOTATION_DISALLOWED,
        ),
        labels: list("serviceLabelDisallowedList", &DEFAULT_LABEL_DISALLOWED),
    })
}

/// The `inferenceservice-config` data the sandbox starts with (the `inferenceService` key of
/// KServe's `config/configmap/inferenceservice.yaml`).
pub fn default_config_data() -> Value {
    json!({
        "inferenceService": "{\n  \"resource\": {\n    \"cpuLimit\": \"1\",\n    \"memoryLimit\": \"2Gi\",\n    \"cpuRequest\": \"1\",\n    \"memoryRequest\": \"2Gi\"\n  }\n}",
        "deploy": "{\n  \"defaultDeploymentMode\": \"Serverless\"\n}",
        "ingress": "{\n  \"enableGatewayApi\": false,\n  \"ingressDomain\": \"example.com\"\n}",
    })
}

pub(crate) fn string_map(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The revision template KServe builds for the predictor: filtered annotations and labels, and
/// the predictor spec without the fields that are not part of it.
pub fn template(obj: &Value, lists: &Disallowed, retemplates: u64) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let predictor = &obj["spec"]["predictor"];
    let keep_ann =
        |k: &String| !lists.annotations.contains(k) && !KSVC_ANNOTATIONS.contains(&k.as_str());
    let mut annotations: Map<String, Value> = string_map(&obj["metadata"]["annotations"])
        .into_iter()
        .filter(|(k, _)| keep_ann(k))
        .collect();
    for (k, v) in string_map(&predictor["annotations"]) {
        if keep_ann(&k) {
            annotations.insert(k, v);
        }
    }
    // Re-derived from the spec (`SetAutoScalingAnnotations`, storage initializer).
    annotations.insert(
        "autoscaling.knative.dev/min-scale".into(),
        json!(predictor["minReplicas"].as_i64().unwrap_or(1).to_string()),
    );
    if let Some(max) = predictor["maxReplicas"].as_i64() {
        annotations.insert(
            "autoscaling.knative.dev/max-scale".into(),
            json!(max.to_string()),
        );
    }
    if let Some(uri) = storage_uri(predictor) {
        annotations.insert(
            "internal.serving.kserve.io/storage-initializer-sourceuri".into(),
            json!(uri),
        );
    }
    let mut labels: Map<String, Value> = string_map(&obj["metadata"]["labels"]);
    for (k, v) in string_map(&predictor["labels"]) {
        labels.insert(k, v);
    }
    labels.insert("serving.kserve.io/inferenceservice".into(), json!(name));
    labels.insert("component".into(), json!("predictor"));
    labels.retain(|k, _| !lists.labels.contains(k));
    let mut spec = predictor.clone();
    if let Some(m) = spec.as_object_mut() {
        for f in [
            "canaryTrafficPercent",
            "annotations",
            "labels",
            "minReplicas",
            "maxReplicas",
        ] {
            m.remove(f);
        }
        if retemplates > 0 {
            // A ServingRuntime or KServe configuration change re-renders the pod spec.
            m.insert("sandboxRuntimeGeneration".into(), json!(retemplates));
        }
    }
    json!({"metadata": {"annotations": annotations, "labels": labels}, "spec": spec})
}

/// The model URI of a predictor (`model.storageUri`, a framework's, or the predictor's own).
pub fn storage_uri(predictor: &Value) -> Option<String> {
    if let Some(u) = predictor
        .pointer("/model/storageUri")
        .and_then(Value::as_str)
    {
        return Some(u.to_string());
    }
    if let Some(m) = predictor.as_object() {
        for v in m.values() {
            if let Some(u) = v.get("storageUri").and_then(Value::as_str) {
                return Some(u.to_string());
            }
        }
    }
    predictor["storageUri"].as_str().map(str::to_string)
}
