//! The InferenceService CustomResourceDefinition the sandbox starts with: KServe's names, scope,
//! status subresource and printer columns exactly as in
//! `config/crd/full/serving.kserve.io_inferenceservices.yaml` (kserve/kserve v0.20), with its
//! schema cut down to the fields whose types matter to a runner (`canaryTrafficPercent`,
//! `minReplicas`, `maxReplicas`: integers) and every other field kept as sent. The full schema
//! (1.9 MB) also prunes unknown fields; this one keeps them (`docs/sandbox.md`).

use serde_json::{Value, json};

fn component() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "canaryTrafficPercent": {"type": "integer", "format": "int64"},
            "minReplicas": {"type": "integer"},
            "maxReplicas": {"type": "integer"},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })
}

/// The CRD object.
pub fn crd() -> Value {
    let col =
        |name: &str, ty: &str, path: &str| json!({"name": name, "type": ty, "jsonPath": path});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "inferenceservices.serving.kserve.io",
                     "annotations": {"controller-gen.kubebuilder.io/version": "v0.19.0"}},
        "spec": {
            "group": "serving.kserve.io",
            "names": {"kind": "InferenceService", "listKind": "InferenceServiceList",
                      "plural": "inferenceservices", "shortNames": ["isvc"], "singular": "inferenceservice"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta1", "served": true, "storage": true,
                "additionalPrinterColumns": [
                    col("URL", "string", ".status.url"),
                    col("Ready", "string", ".status.conditions[?(@.type=='Ready')].status"),
                    col("Prev", "integer", ".status.components.predictor.traffic[?(@.tag=='prev')].percent"),
                    col("Latest", "integer", ".status.components.predictor.traffic[?(@.latestRevision==true)].percent"),
                    col("PrevRolledoutRevision", "string", ".status.components.predictor.traffic[?(@.tag=='prev')].revisionName"),
                    col("LatestReadyRevision", "string", ".status.components.predictor.traffic[?(@.latestRevision==true)].revisionName"),
                    col("Age", "date", ".metadata.creationTimestamp"),
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {
                                "predictor": component(),
                                "transformer": component(),
                                "explainer": component(),
                            },
                        },
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
                "subresources": {"status": {}},
            }],
        },
    })
}
