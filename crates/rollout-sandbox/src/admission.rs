//! KServe's admission webhooks for InferenceServices, run on every create and update (KServe
//! registers them with `failurePolicy: Fail`):
//!
//! - the defaulter (`pkg/apis/serving/v1beta1/inference_service_defaults.go`
//!   `DefaultInferenceService`): `deploymentMode` `Serverless` becomes `Knative` and
//!   `RawDeployment` becomes `Standard`; a cluster default of `Standard` is written onto new
//!   objects; a framework predictor (`sklearn:`, `tensorflow:`, …) becomes
//!   `model: {modelFormat: {name: …}, …}` (`setPredictorModelDefaults`), with the `modelFormat`
//!   annotation;
//! - the validator (`inference_service_validation.go`): on update, the mode cannot change once
//!   the status records it (`validateDeploymentMode`, 691-701) and `spec.predictor.name` may
//!   change only with the model (`validatePredictorNameChange`, 703-713); on create and update,
//!   the v0.20 `spec.canary[]` rules (`validateCanarySpecs`, 183-266), in their order and with
//!   their messages. A denial is a 403, as controller-runtime's webhook answers a validation
//!   error.

use serde_json::{Value, json};

use crate::store::ApiError;

/// Framework keys and their model formats (`setPredictorModelDefaults`).
const FRAMEWORKS: [(&str, &str); 10] = [
    ("sklearn", "sklearn"),
    ("tensorflow", "tensorflow"),
    ("xgboost", "xgboost"),
    ("pytorch", "pytorch"),
    ("triton", "triton"),
    ("onnx", "onnx"),
    ("huggingface", "huggingface"),
    ("pmml", "pmml"),
    ("lightgbm", "lightgbm"),
    ("paddle", "paddle"),
];

const MODE: &str = "serving.kserve.io/deploymentMode";

/// The defaulter. `default_mode` is the ConfigMap's `deploy.defaultDeploymentMode`.
pub fn default(obj: &mut Value, default_mode: &str) {
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    let ann = &mut meta["annotations"];
    match ann[MODE].as_str() {
        Some("RawDeployment") => ann[MODE] = json!("Standard"),
        Some("Serverless") => ann[MODE] = json!("Knative"),
        Some(_) => {}
        None => {
            if matches!(default_mode, "Standard" | "ModelMesh" | "RawDeployment") {
                ann[MODE] = json!(if default_mode == "RawDeployment" {
                    "Standard"
                } else {
                    default_mode
                });
            }
        }
    }
    if ann.as_object().is_some_and(serde_json::Map::is_empty)
        && let Some(m) = obj["metadata"].as_object_mut()
    {
        m.remove("annotations");
    }
    let Some(pred) = obj
        .pointer_mut("/spec/predictor")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (key, format) in FRAMEWORKS {
        if let Some(Value::Object(ext)) = pred.remove(key) {
            let mut model = ext;
            model.insert("modelFormat".into(), json!({"name": format}));
            pred.insert("model".into(), Value::Object(model));
            break;
        }
    }
    let format = pred
        .get("model")
        .and_then(|m| m.pointer("/modelFormat/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(f) = format {
        if !obj["metadata"]["annotations"].is_object() {
            obj["metadata"]["annotations"] = json!({});
        }
        let ann = &mut obj["metadata"]["annotations"];
        if ann.get("modelFormat").is_none() {
            ann["modelFormat"] = json!(f);
        }
    }
}

fn denied(message: String) -> ApiError {
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "admission webhook \"inferenceservice.kserve-webhook-server.validator\" denied the request: {message}"
        ),
        details: None,
        causes: Vec::new(),
    }
}

/// The model location a predictor spec names: `model.storageUri`, else an implementation's
/// `storageUri`, else empty (`validatePredictorNameChange`'s reading).
fn predictor_uri(p: &Value) -> String {
    if let Some(u) = p.pointer("/model/storageUri").and_then(Value::as_str) {
        return u.to_string();
    }
    p.as_object()
        .into_iter()
        .flatten()
        .find_map(|(_, v)| v.get("storageUri").and_then(Value::as_str))
        .unwrap_or("")
        .to_string()
}

/// The implementations a predictor spec names (`model`, a framework, or `containers`).
fn implementations(p: &Value) -> usize {
    let mut n = FRAMEWORKS
        .iter()
        .filter(|(k, _)| p.get(*k).is_some_and(Value::is_object))
        .count();
    n += usize::from(p.get("model").is_some_and(Value::is_object));
    n += usize::from(
        p.get("containers")
            .is_some_and(|c| c.as_array().is_some_and(|a| !a.is_empty())),
    );
    n
}

/// `validateCanarySpecs` (`inference_service_validation.go` 183-266).
fn validate_canaries(obj: &Value) -> Result<(), ApiError> {
    let Some(canaries) = obj.pointer("/spec/canary").and_then(Value::as_array) else {
        return Ok(());
    };
    if canaries.is_empty() {
        return Ok(());
    }
    if obj
        .pointer("/metadata/annotations/serving.kserve.io~1deploymentMode")
        .and_then(Value::as_str)
        != Some("Standard")
    {
        return Err(denied(
            "canary is only supported in Standard deployment mode".into(),
        ));
    }
    let stable = &obj["spec"]["predictor"];
    if predictor_uri(stable).is_empty() && !stable.get("model").is_some_and(Value::is_object) {
        return Err(denied(
            "canary requires a stable predictor with a model (multi-model serving is not supported with canary)".into(),
        ));
    }
    let stable_name = stable["name"].as_str().unwrap_or("");
    let stable_min = stable["minReplicas"].as_i64().unwrap_or(1);
    let mut seen: Vec<&str> = Vec::new();
    let mut sum = 0;
    for (i, c) in canaries.iter().enumerate() {
        let p = &c["predictor"];
        let name = p["name"].as_str().unwrap_or("");
        if name.is_empty() {
            return Err(denied(format!("canary[{i}] predictor.name is required")));
        }
        if seen.contains(&name) {
            return Err(denied(format!(
                "canary predictor.name {name:?} is duplicated"
            )));
        }
        seen.push(name);
        if name == stable_name {
            return Err(denied(format!(
                "canary predictor.name {name:?} conflicts with stable predictor name"
            )));
        }
        let pct = c["trafficPercent"].as_i64().unwrap_or(0);
        if !(0..=100).contains(&pct) {
            return Err(denied(format!(
                "canary {name:?} trafficPercent must be between 0 and 100, got {pct}"
            )));
        }
        if implementations(p) != 1 {
            return Err(denied(format!(
                "canary {name:?} predictor: exactly one of [SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, HuggingFace, PMML, LightGBM, Paddle, Model] must be specified in PredictorSpec"
            )));
        }
        if p.get("workerSpec").is_some() {
            return Err(denied(format!(
                "canary {name:?} must not set workerSpec (multi-node is not yet supported for canary)"
            )));
        }
        for field in ["maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"] {
            if p.get(field).is_some() {
                return Err(denied(format!(
                    "canary {name:?} must not set {field} (canary uses fixed replicas)"
                )));
            }
        }
        if let Some(min) = p["minReplicas"].as_i64()
            && min > stable_min
        {
            return Err(denied(format!(
                "canary {name:?} minReplicas ({min}) must not exceed stable predictor minReplicas ({stable_min})"
            )));
        }
        sum += pct;
    }
    if sum > 100 {
        return Err(denied(format!(
            "sum of canary trafficPercent values ({sum}) must be <= 100"
        )));
    }
    Ok(())
}

/// The validator: on update, the deployment mode the status records and the model behind
/// `spec.predictor.name`; then the canary rules.
pub fn validate(old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    if let Some(old) = old {
        validate_mode(old, new)?;
        let name = |o: &Value| {
            o.pointer("/spec/predictor/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if name(old) != name(new)
            && predictor_uri(&old["spec"]["predictor"]) == predictor_uri(&new["spec"]["predictor"])
        {
            return Err(denied(
                "predictor.name change requires a model change (e.g. storageUri)".into(),
            ));
        }
    }
    validate_canaries(new)
}

fn validate_mode(old: &Value, new: &Value) -> Result<(), ApiError> {
    let Some(recorded) = old
        .pointer("/status/deploymentMode")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return Ok(());
    };
    let recorded = match recorded {
        "Serverless" => "Knative",
        "RawDeployment" => "Standard",
        other => other,
    };
    if let Some(wanted) = new
        .pointer("/metadata/annotations/serving.kserve.io~1deploymentMode")
        .and_then(Value::as_str)
        && wanted != recorded
    {
        return Err(denied(format!(
            "update rejected: deploymentMode cannot be changed from '{recorded}' to '{wanted}'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaulter_rewrites_modes_and_frameworks() {
        let mut o = json!({"metadata": {"annotations": {MODE: "Serverless"}},
            "spec": {"predictor": {"tensorflow": {"storageUri": "gs://x"}, "minReplicas": 1}}});
        default(&mut o, "Serverless");
        assert_eq!(o["metadata"]["annotations"][MODE], "Knative");
        assert_eq!(
            o["spec"]["predictor"]["model"]["modelFormat"]["name"],
            "tensorflow"
        );
        assert_eq!(o["spec"]["predictor"]["model"]["storageUri"], "gs://x");
        assert_eq!(o["spec"]["predictor"].get("tensorflow"), None);
        assert_eq!(o["metadata"]["annotations"]["modelFormat"], "tensorflow");
        let mut o = json!({"metadata": {}, "spec": {"predictor": {}}});
        default(&mut o, "Standard");
        assert_eq!(o["metadata"]["annotations"][MODE], "Standard");
    }

    #[test]
    fn the_mode_is_immutable_once_recorded() {
        let old = json!({"status": {"deploymentMode": "Standard"}});
        let new = json!({"metadata": {"annotations": {MODE: "Knative"}}});
        assert_eq!(validate(Some(&old), &new).map_err(|e| e.code), Err(403));
        assert!(validate(None, &new).is_ok());
        let same = json!({"metadata": {"annotations": {MODE: "Standard"}}});
        assert!(validate(Some(&old), &same).is_ok());
    }

    fn standard(canary: Value) -> Value {
        json!({"metadata": {"annotations": {MODE: "Standard"}},
            "spec": {"predictor": {"minReplicas": 2, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/1"}},
                     "canary": canary}})
    }

    fn message(r: Result<(), ApiError>) -> String {
        r.err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn canary_rules_in_kserve_s_order_and_words() {
        let v2 = json!({"name": "v2", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}});
        assert!(
            validate(
                None,
                &standard(json!([{"trafficPercent": 20, "predictor": v2}]))
            )
            .is_ok()
        );
        let mut knative = standard(json!([{"trafficPercent": 20, "predictor": v2}]));
        knative["metadata"]["annotations"][MODE] = json!("Knative");
        assert!(
            message(validate(None, &knative))
                .ends_with("canary is only supported in Standard deployment mode")
        );
        for (canary, want) in [
            (
                json!([{"trafficPercent": 20, "predictor": {"model": {}}}]),
                "canary[0] predictor.name is required",
            ),
            (
                json!([{"trafficPercent": 20, "predictor": v2}, {"trafficPercent": 20, "predictor": v2}]),
                "canary predictor.name \"v2\" is duplicated",
            ),
            (
                json!([{"trafficPercent": 120, "predictor": v2}]),
                "canary \"v2\" trafficPercent must be between 0 and 100, got 120",
            ),
            (
                json!([{"trafficPercent": 20, "predictor": {"name": "v2"}}]),
                "must be specified in PredictorSpec",
            ),
            (
                json!([{"trafficPercent": 20, "predictor": {"name": "v2", "model": {}, "maxReplicas": 3}}]),
                "canary \"v2\" must not set maxReplicas (canary uses fixed replicas)",
            ),
            (
                json!([{"trafficPercent": 20, "predictor": {"name": "v2", "model": {}, "minReplicas": 3}}]),
                "canary \"v2\" minReplicas (3) must not exceed stable predictor minReplicas (2)",
            ),
            (
                json!([{"trafficPercent": 60, "predictor": v2}, {"trafficPercent": 50, "predictor": {"name": "v3", "model": {}}}]),
                "sum of canary trafficPercent values (110) must be <= 100",
            ),
        ] {
            let m = message(validate(None, &standard(canary)));
            assert!(m.contains(want), "{want}: {m}");
            assert!(m.starts_with("admission webhook \"inferenceservice.kserve-webhook-server.validator\" denied the request: "));
        }
        let mut same_name = standard(json!([{"trafficPercent": 20, "predictor": v2}]));
        same_name["spec"]["predictor"]["name"] = json!("v2");
        assert!(
            message(validate(None, &same_name)).contains("conflicts with stable predictor name")
        );
    }

    #[test]
    fn renaming_the_stable_predictor_needs_a_new_model() {
        let old = standard(json!([]));
        let mut renamed = old.clone();
        renamed["spec"]["predictor"]["name"] = json!("v2");
        assert!(
            message(validate(Some(&old), &renamed))
                .ends_with("predictor.name change requires a model change (e.g. storageUri)")
        );
        renamed["spec"]["predictor"]["model"]["storageUri"] = json!("gs://m/2");
        assert!(validate(Some(&old), &renamed).is_ok());
    }
}
