//! The InferenceService as the runner sees it and the one write it ever makes to it:
//! `spec.<component>.canaryTrafficPercent`, as a JSON patch that can only replace that field of
//! a component that exists, guarded by the resourceVersion the decision was made on.
//!
//! Nothing else is written here, because KServe copies every InferenceService annotation and
//! label that is not on an exact-key disallow list into the Knative revision template
//! (`pkg/controller/v1beta1/inferenceservice/components/predictor.go`): any other write would
//! create a new revision and restart the canary it is judging.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use rollout_engine::Cluster;
use serde_json::Value;

/// The field manager of the traffic write (what `kubectl get -o yaml --show-managed-fields`
/// and GitOps tools see).
pub const FIELD_MANAGER: &str = "rolloutctl";

/// Access to one InferenceService.
#[derive(Clone)]
pub struct Isvc {
    /// The namespaced API.
    pub api: Api<DynamicObject>,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Isvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Isvc({}/{})", self.namespace, self.name)
    }
}

/// The InferenceService resource.
pub fn resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService");
    ApiResource::from_gvk_with_plural(&gvk, "inferenceservices")
}

/// Whether a kube error is worth retrying (transport, 5xx, 429).
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || s.code == 409,
        _ => true,
    }
}

/// Whether a kube error is a 409 Conflict.
pub fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether a kube error is a 404 Not Found.
pub fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Isvc {
    /// Access to `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Isvc {
        Isvc {
            api: Api::namespaced_with(client, namespace, &resource()),
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// Reads the object.
    pub async fn get(&self) -> Result<DynamicObject, kube::Error> {
        self.api.get(&self.name).await
    }

    /// Sets `spec.<component>.canaryTrafficPercent`. The patch sets `metadata.resourceVersion`
    /// to the version the decision was made on, which the API server treats as a precondition
    /// (409 Conflict if the object changed since), and `add`s the one field: a JSON patch
    /// `add` fails (422) when the component does not exist, so this write never creates one.
    pub async fn set_traffic(
        &self,
        component: &str,
        resource_version: &str,
        percent: u8,
    ) -> Result<DynamicObject, kube::Error> {
        let ops = serde_json::json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "add", "path": format!("/spec/{component}/canaryTrafficPercent"), "value": percent},
        ]);
        let patch: json_patch::Patch =
            serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::<()>::Json(patch),
            )
            .await
    }
}

/// The deployment mode from the status or the annotation.
pub fn deployment_mode(obj: &DynamicObject) -> String {
    obj.data
        .pointer("/status/deploymentMode")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            obj.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("serving.kserve.io/deploymentMode").cloned())
        })
        .unwrap_or_else(|| "Knative".into())
}

/// Whether the InferenceService has the component (`spec.<component>` is an object).
pub fn has_component(obj: &DynamicObject, component: &str) -> bool {
    obj.data
        .pointer(&format!("/spec/{component}"))
        .is_some_and(Value::is_object)
}

/// The component's model (`model.storageUri`, a framework's `storageUri`, or its own).
pub fn storage_uri(obj: &DynamicObject, component: &str) -> Option<String> {
    let c = obj.data.pointer(&format!("/spec/{component}"))?;
    if let Some(u) = c.pointer("/model/storageUri").and_then(Value::as_str) {
        return Some(u.to_string());
    }
    if let Some(u) = c.get("storageUri").and_then(Value::as_str) {
        return Some(u.to_string());
    }
    c.as_object()?.values().find_map(|v| {
        v.get("storageUri")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// What the engine needs to know about the cluster, for `component`.
///
/// `observed` means KServe has caught up with the spec: the status's `latestRevision` entry
/// carries the spec's percentage (100 without one). The InferenceService's
/// `status.observedGeneration` cannot tell: it is the Knative Service's generation
/// (`inference_service_status.go:635`), a different counter.
pub fn observe(obj: &DynamicObject, component: &str) -> Cluster {
    let status = &obj.data["status"];
    let comp = &status["components"][component];
    let traffic = comp["traffic"].as_array().cloned().unwrap_or_default();
    let latest = traffic.iter().find(|t| t["latestRevision"] == true);
    let prev = traffic.iter().find(|t| t["tag"] == "prev");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    let latest_ready = comp["latestReadyRevision"].as_str();
    let latest_created = comp["latestCreatedRevision"].as_str();
    let status_percent = latest.and_then(|t| t["percent"].as_i64());
    let spec_percent = obj
        .data
        .pointer(&format!("/spec/{component}/canaryTrafficPercent"))
        .and_then(Value::as_i64);
    let observed = match (spec_percent, status_percent) {
        (Some(s), Some(p)) => s == p || (prev.is_none() && p == 100),
        (None, Some(p)) => p == 100,
        (_, None) => false,
    };
    Cluster {
        canary_percent: status_percent.map_or(0, |p| p.clamp(0, 100) as u8),
        canary_revision: latest
            .and_then(|t| t["revisionName"].as_str())
            .unwrap_or("")
            .to_string(),
        stable_revision: prev
            .and_then(|t| t["revisionName"].as_str())
            .map(str::to_string),
        // Judge only a settled cluster: Ready, and the latest created revision is the ready one.
        ready: ready && latest_ready.is_some() && latest_ready == latest_created,
        observed,
    }
}
