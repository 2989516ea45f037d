//! KServe's admission webhooks for InferenceServices, run on every create and update (KServe
//! registers them with `failurePolicy: Fail`):
//!
//! - the defaulter (`pkg/apis/serving/v1beta1/inference_service_defaults.go`
//!   `DefaultInferenceService`): `deploymentMode` `Serverless` becomes `Knative` and
//!   `RawDeployment` becomes `Standard`; a cluster default of `Standard` is written onto new
//!   objects; a framework predictor (`sklearn:`, `tensorflow:`, …) becomes
//!   `model: {modelFormat: {name: …}, …}` (`setPredictorModelDefaults`), with the `modelFormat`
//!   annotation;
//! - the validator (`inference_service_validation.go` `validateDeploymentMode`, lines 691-701):
//!   the mode cannot change once the status records it. A denial is a 403, as
//!   controller-runtime's webhook answers a validation error.

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

/// The validator: an update may not change the deployment mode the status records.
pub fn validate(old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let Some(recorded) = old
        .and_then(|o| o.pointer("/status/deploymentMode"))
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
        return Err(ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "admission webhook \"inferenceservice.kserve-webhook-server.validator\" denied the request: update rejected: deploymentMode cannot be changed from '{recorded}' to '{wanted}'"
            ),
            details: None,
            causes: Vec::new(),
        });
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
}
