//! The InferenceService as the runner sees it and the one write it ever makes to it:
//! `spec.<component>.canaryTrafficPercent`, as a JSON patch that can only replace that field of
//! a component that exists, guarded by the resourceVersion the decision was made on.
//!
//! Nothing else is written here, because KServe copies every InferenceService annotation and
//! label that is not on an exact-key disallow list into the Knative revision template
//! (`pkg/controller/v1beta1/inferenceservice/components/predictor.go`): any other write would
//! create a new revision and restart the canary it is judging.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
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

pub use rollout_policy::template::Mode;

/// The InferenceService's mode ([`deployment_mode`]).
pub fn mode(obj: &DynamicObject) -> Mode {
    match deployment_mode(obj).as_str() {
        "Standard" | "RawDeployment" => Mode::Standard,
        _ => Mode::Knative,
    }
}

/// A traffic change the engine asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// The canary at this percentage.
    Set(u8),
    /// The canary serves everything (Knative: 100%; Standard: it becomes the predictor).
    Promote,
    /// The stable serves everything (Knative: 0%; Standard: the entry is removed).
    Rollback,
}

impl Traffic {
    /// The canary's share once the change holds.
    pub fn percent(self) -> u8 {
        match self {
            Traffic::Set(p) => p,
            Traffic::Promote => 100,
            Traffic::Rollback => 0,
        }
    }
}

/// A 409 Conflict for a write whose precondition failed before it was sent.
fn conflict_error(what: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status {
            code: 409,
            reason: "Conflict".into(),
            message: what.to_string(),
            ..kube::core::Status::default()
        }
        .boxed(),
    )
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

impl Isvc {
    /// Makes the traffic change `t` in `mode`, guarded by `resource_version` (the copy the
    /// decision was made on). `Ok(false)`: nothing to write (a Standard-mode InferenceService
    /// without its canary entry). In Standard mode the write is computed from the API server's
    /// copy, since a watch's copy is slimmed; a copy newer than the decision's is a 409.
    pub async fn write(
        &self,
        mode: Mode,
        component: &str,
        resource_version: &str,
        t: Traffic,
    ) -> Result<bool, kube::Error> {
        if mode == Mode::Knative {
            self.set_traffic(component, resource_version, t.percent())
                .await?;
            return Ok(true);
        }
        let fresh = self.get().await?;
        if fresh.metadata.resource_version.as_deref() != Some(resource_version) {
            return Err(conflict_error(&format!(
                "InferenceService {}/{} changed since the decision",
                self.namespace, self.name
            )));
        }
        let patch = match t {
            Traffic::Set(p) => crate::standard::traffic_patch(&fresh, resource_version, p),
            Traffic::Promote => crate::standard::promote_patch(&fresh, resource_version),
            Traffic::Rollback => crate::standard::rollback_patch(&fresh, resource_version),
        };
        let Some(patch) = patch else {
            return Ok(false);
        };
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::<()>::Json(patch?),
            )
            .await?;
        Ok(true)
    }
}

/// The InferenceServices as a controller's watches have them, per watched namespace (`""`:
/// all), each reduced to what the runner reads ([`slim`]; who last set a field is read from
/// the API server itself).
///
/// A cached copy may lag the API server by a watch event. That is safe for the one write made
/// from it: the traffic patch carries the copy's resourceVersion, so a stale copy earns a 409,
/// never a write on outdated facts ([`Isvc::set_traffic`]).
#[derive(Clone, Default)]
pub struct Cache {
    scopes: HashMap<String, Store<DynamicObject>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("scopes", &self.scopes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Cache {
    /// Adds the store of one watched namespace (`""`: all namespaces).
    pub fn insert(&mut self, scope: &str, store: Store<DynamicObject>) {
        self.scopes.insert(scope.to_string(), store);
    }

    /// The cached `namespace/name`, if the watch has it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let store = self.scopes.get(namespace).or_else(|| self.scopes.get(""))?;
        store.get(&ObjectRef::new_with(name, resource()).within(namespace))
    }

    /// Every store, to wait until each has listed its objects.
    pub fn stores(&self) -> impl Iterator<Item = &Store<DynamicObject>> {
        self.scopes.values()
    }
}

/// Keeps of an InferenceService only what the runner reads from a cached copy (what
/// [`deployment_mode`], [`has_component`], [`storage_uri`] and [`observe`] read, the
/// components' revisions and `canaryTrafficPercent`, and the identity and resourceVersion the
/// traffic write is guarded by). A controller caches every InferenceService in its scope, and
/// a real one carries containers, resources, environment and URLs the runner never looks at.
pub fn slim(o: &mut DynamicObject) {
    let m = &mut o.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.finalizers = None;
    m.owner_references = None;
    m.creation_timestamp = None;
    m.annotations = m
        .annotations
        .take()
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k == "serving.kserve.io/deploymentMode")
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    let pick = |v: &Value, keys: &[&str]| -> Value {
        let mut out = serde_json::Map::new();
        for k in keys {
            if let Some(x) = v.get(*k) {
                out.insert((*k).to_string(), x.clone());
            }
        }
        Value::Object(out)
    };
    // A component: its name, traffic and model location (of `model` or a framework block).
    let component = |c: &serde_json::Map<String, Value>| {
        let mut kept = serde_json::Map::new();
        for (k, v) in c {
            if matches!(k.as_str(), "canaryTrafficPercent" | "storageUri" | "name") {
                kept.insert(k.clone(), v.clone());
            } else if let Some(u) = v.get("storageUri") {
                kept.insert(k.clone(), serde_json::json!({ "storageUri": u }));
            }
        }
        Value::Object(kept)
    };
    let mut spec = serde_json::Map::new();
    for (name, c) in o.data["spec"].as_object().into_iter().flatten() {
        if let Some(c) = c.as_object() {
            spec.insert(name.clone(), component(c));
        } else if name == "canary"
            && let Some(entries) = c.as_array()
        {
            // Standard mode's canaries: each one's traffic and predictor (the writes are made
            // from the API server's full copy, never from this one).
            let entries = entries
                .iter()
                .map(|e| {
                    let mut kept = pick(e, &["trafficPercent"]);
                    if let (Some(k), Some(p)) = (kept.as_object_mut(), e["predictor"].as_object()) {
                        k.insert("predictor".into(), component(p));
                    }
                    kept
                })
                .collect();
            spec.insert(name.clone(), Value::Array(entries));
        }
    }
    let st = &o.data["status"];
    let mut status = serde_json::Map::new();
    if let Some(m) = st.get("deploymentMode") {
        status.insert("deploymentMode".into(), m.clone());
    }
    if let Some(c) = st["conditions"].as_array() {
        let ready: Vec<Value> = c
            .iter()
            .filter(|c| c["type"] == "Ready")
            .map(|c| pick(c, &["type", "status"]))
            .collect();
        status.insert("conditions".into(), Value::Array(ready));
    }
    if let Some(c) = st.get("canaryStatuses") {
        status.insert("canaryStatuses".into(), c.clone());
    }
    let mut comps = serde_json::Map::new();
    for (name, c) in st["components"].as_object().into_iter().flatten() {
        let mut kept = pick(
            c,
            &[
                "latestCreatedRevision",
                "latestReadyRevision",
                "latestRolledoutRevision",
            ],
        );
        if let (Some(t), Some(k)) = (c["traffic"].as_array(), kept.as_object_mut()) {
            let t = t
                .iter()
                .map(|t| pick(t, &["tag", "revisionName", "percent", "latestRevision"]))
                .collect();
            k.insert("traffic".into(), Value::Array(t));
        }
        comps.insert(name.clone(), kept);
    }
    status.insert("components".into(), Value::Object(comps));
    o.data = serde_json::json!({ "spec": spec, "status": status });
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
    model_location(obj.data.pointer(&format!("/spec/{component}"))?)
}

/// A component spec's model: `model.storageUri`, a framework's `storageUri`, or its own.
pub fn model_location(c: &Value) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An InferenceService as KServe reports it (the sandbox's shape, plus what a real one
    /// carries besides: resources, containers, labels, URLs, model status).
    fn full(canary: Option<i64>, mode: Option<&str>, ready: &str) -> DynamicObject {
        let mut spec = serde_json::json!({
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2",
                      "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                      "env": [{"name": "A", "value": "b"}]},
        });
        if let Some(p) = canary {
            spec["canaryTrafficPercent"] = serde_json::json!(p);
        }
        let mut annotations =
            serde_json::json!({"team": "fraud", "sidecar.istio.io/inject": "true"});
        if let Some(m) = mode {
            annotations["serving.kserve.io/deploymentMode"] = serde_json::json!(m);
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                         "generation": 3, "labels": {"app": "m"}, "finalizers": ["inferenceservice.finalizers"],
                         "annotations": annotations},
            "spec": {"predictor": spec, "transformer": {"containers": [{"image": "t"}]}},
            "status": {
                "address": {"url": "http://m.ns.svc"}, "url": "http://m.ns.example.com",
                "conditions": [
                    {"type": "IngressReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "modelStatus": {"states": {"activeModelState": "Loaded"}},
                "components": {"predictor": {
                    "address": {"url": "http://x"}, "url": "http://y",
                    "latestCreatedRevision": "m-predictor-00002",
                    "latestReadyRevision": "m-predictor-00002",
                    "latestRolledoutRevision": "m-predictor-00001",
                    "traffic": [
                        {"latestRevision": true, "percent": 10, "revisionName": "m-predictor-00002"},
                        {"latestRevision": false, "percent": 90, "revisionName": "m-predictor-00001",
                         "tag": "prev", "url": "http://prev"}]}}
            }
        }))
        .expect("an InferenceService")
    }

    #[test]
    fn a_slim_standard_mode_copy_reads_as_the_full_object() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "9",
                         "annotations": {"serving.kserve.io/deploymentMode": "Standard", "team": "a"}},
            "spec": {"predictor": {"name": "v1", "minReplicas": 2,
                                   "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/1",
                                             "resources": {"limits": {"cpu": "1"}}}},
                     "canary": [{"trafficPercent": 20, "predictor": {"name": "v2",
                        "containers": [{"name": "c", "env": [{"name": "A", "value": "b"}]}],
                        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}}}]},
            "status": {"deploymentMode": "Standard",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t"},
                                      {"type": "CanaryPredictorReady", "status": "True"}],
                       "canaryStatuses": [{"name": "v2", "ready": true, "trafficPercent": 20}],
                       "components": {"predictor": {"url": "http://m-v1-predictor-ns.example.com"}}}
        }))
        .expect("an InferenceService");
        let mut s = o.clone();
        slim(&mut s);
        use crate::standard;
        assert_eq!(mode(&s), Mode::Standard);
        assert_eq!(standard::observe(&s, None), standard::observe(&o, None));
        assert_eq!(standard::revisions(&s), standard::revisions(&o));
        assert_eq!(standard::model_uri(&s), standard::model_uri(&o));
        assert_eq!(standard::spec_percent(&s), Some(20));
        assert_eq!(standard::canary_count(&s), 1);
    }

    #[test]
    fn a_slim_copy_reads_as_the_full_object() {
        for (canary, mode, ready) in [
            (Some(10), None, "True"),
            (None, Some("Knative"), "False"),
            (Some(0), Some("Standard"), "True"),
        ] {
            let o = full(canary, mode, ready);
            let mut s = o.clone();
            slim(&mut s);
            for component in ["predictor", "transformer", "explainer"] {
                assert_eq!(
                    observe(&s, component),
                    observe(&o, component),
                    "{component}"
                );
                assert_eq!(has_component(&s, component), has_component(&o, component));
                assert_eq!(storage_uri(&s, component), storage_uri(&o, component));
            }
            assert_eq!(deployment_mode(&s), deployment_mode(&o));
            let pointer = "/spec/predictor/canaryTrafficPercent";
            assert_eq!(s.data.pointer(pointer), o.data.pointer(pointer));
            assert_eq!(s.metadata.resource_version, o.metadata.resource_version);
            let rev =
                |d: &DynamicObject, f: &str| d.data["status"]["components"]["predictor"][f].clone();
            for f in ["latestCreatedRevision", "latestRolledoutRevision"] {
                assert_eq!(rev(&s, f), rev(&o, f));
            }
            let len = |d: &DynamicObject| serde_json::to_string(d).map_or(0, |t| t.len());
            assert!(len(&s) * 10 < len(&o) * 6, "{} of {}", len(&s), len(&o));
        }
    }
}
