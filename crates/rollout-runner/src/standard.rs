//! KServe's Standard (raw Deployment) mode, as the runner reads and writes it: one
//! `spec.canary[]` entry (KServe ≥ 0.20, `pkg/apis/serving/v1beta1/inference_service.go`
//! `CanarySpec`) is the canary, its Deployment `{isvc}-{name}-predictor` against the stable
//! predictor's `{isvc}-predictor` (or `{isvc}-{predictor.name}-predictor`,
//! `pkg/constants/constants.go` `PredictorServiceName`); those Deployment names are the arms'
//! revisions.
//!
//! Three writes, each computed from the API server's current copy and guarded by the
//! resourceVersion the decision was made on:
//! - traffic: the whole `spec.canary` list with the entry's `trafficPercent` changed (the list
//!   is atomic: it is replaced, never merged);
//! - promotion, as KServe's e2e test promotes (`test/e2e/predictor/test_canary_raw_deployment.py`
//!   `test_canary_promote`): `spec.predictor` becomes what the canary runs (the stable predictor
//!   with the canary's fields over it, `buildCanaryPredictor` in `components/predictor.go`) with
//!   the canary's `name`, so its Deployment and pods are kept, and `canary: []`;
//! - rollback: `canary: []`, which deletes the canary's Deployment.

use rollout_engine::{Cluster, Phase, State};
use serde_json::{Value, json};

/// The Deployment (and Service) of a predictor: `{isvc}-predictor`, or
/// `{isvc}-{name}-predictor` for a named one.
pub fn deployment_name(isvc: &str, predictor_name: &str) -> String {
    if predictor_name.is_empty() {
        format!("{isvc}-predictor")
    } else {
        format!("{isvc}-{predictor_name}-predictor")
    }
}

/// The stable predictor's Deployment.
pub fn stable(obj: &kube::api::DynamicObject) -> String {
    let isvc = obj.metadata.name.as_deref().unwrap_or_default();
    let name = obj
        .data
        .pointer("/spec/predictor/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    deployment_name(isvc, name)
}

/// The `spec.canary` entries.
fn entries(obj: &kube::api::DynamicObject) -> &[Value] {
    obj.data
        .pointer("/spec/canary")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The number of `spec.canary` entries (the runner judges one canary at a time).
pub fn canary_count(obj: &kube::api::DynamicObject) -> usize {
    entries(obj).len()
}

/// The canary entry's predictor name and Deployment, if there is one.
pub fn canary(obj: &kube::api::DynamicObject) -> Option<(String, String)> {
    let isvc = obj.metadata.name.as_deref().unwrap_or_default();
    let e = entries(obj).first()?;
    let name = e
        .pointer("/predictor/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let d = deployment_name(isvc, &name);
    Some((name, d))
}

/// The canary entry's `trafficPercent` as the spec has it.
pub fn spec_percent(obj: &kube::api::DynamicObject) -> Option<i64> {
    entries(obj)
        .first()
        .map(|e| e["trafficPercent"].as_i64().unwrap_or(0))
}

/// The candidate and the rolled-out "revision" (Deployment) for the rollout's lifecycle: the
/// canary's Deployment when there is a canary, else the stable one for both.
pub fn revisions(obj: &kube::api::DynamicObject) -> (String, String) {
    let stable = stable(obj);
    let candidate = canary(obj).map_or_else(|| stable.clone(), |(_, d)| d);
    (candidate, stable)
}

/// The model the candidate runs: the canary's (over the stable's, as KServe merges them), else
/// the stable's.
pub fn model_uri(obj: &kube::api::DynamicObject) -> Option<String> {
    use crate::isvc::model_location;
    entries(obj)
        .first()
        .and_then(|e| model_location(&e["predictor"]))
        .or_else(|| obj.data.pointer("/spec/predictor").and_then(model_location))
}

fn ready(obj: &kube::api::DynamicObject) -> bool {
    obj.data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True")
}

/// What the engine needs to know: the canary entry's traffic as KServe reports it
/// (`status.canaryStatuses[].trafficPercent`, copied from the spec when KServe reconciles it),
/// ready when the InferenceService is Ready and the canary's Deployment is available
/// (`canaryStatuses[].ready`).
///
/// Without an entry the view depends on the rollout: one that is rolling back (or rolled back)
/// sees its canary at 0% once KServe has cleared `canaryStatuses`; anything else sees the
/// stable Deployment serving everything, which after a promotion is the former canary's.
pub fn observe(obj: &kube::api::DynamicObject, state: Option<&State>) -> Cluster {
    let stable = stable(obj);
    let statuses = obj
        .data
        .pointer("/status/canaryStatuses")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let ready = ready(obj);
    if let Some((name, deployment)) = canary(obj) {
        let reported = statuses.iter().find(|s| s["name"] == name.as_str());
        let status_percent = reported.and_then(|s| s["trafficPercent"].as_i64());
        return Cluster {
            canary_percent: status_percent.map_or(0, |p| p.clamp(0, 100) as u8),
            canary_revision: deployment,
            stable_revision: Some(stable),
            ready: ready && reported.is_some_and(|s| s["ready"] == true),
            observed: status_percent.is_some() && status_percent == spec_percent(obj),
        };
    }
    // KServe clears `canaryStatuses` (and `CanaryPredictorReady`) when it reconciles a spec
    // without canaries (`components/predictor.go` 983-1000).
    let settled = statuses.is_empty();
    let ending = state.is_some_and(|s| {
        matches!(
            s.phase,
            Phase::RollingBack { .. } | Phase::RolledBack { .. }
        )
    });
    match state.and_then(|s| s.canary_revision.clone()) {
        Some(c) if ending && c != stable => Cluster {
            canary_percent: 0,
            canary_revision: c,
            stable_revision: Some(stable),
            ready,
            observed: settled,
        },
        _ => Cluster {
            canary_percent: 100,
            canary_revision: stable,
            stable_revision: None,
            ready,
            observed: settled,
        },
    }
}

/// A JSON patch: the resourceVersion precondition, then `ops`.
fn guarded(resource_version: &str, mut ops: Vec<Value>) -> Result<json_patch::Patch, kube::Error> {
    ops.insert(
        0,
        json!({"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}),
    );
    serde_json::from_value(Value::Array(ops)).map_err(kube::Error::SerdeError)
}

/// The patch that sets the canary entry's `trafficPercent` (`None`: there is no entry).
pub fn traffic_patch(
    obj: &kube::api::DynamicObject,
    resource_version: &str,
    percent: u8,
) -> Option<Result<json_patch::Patch, kube::Error>> {
    let mut list = entries(obj).to_vec();
    let first = list.first_mut()?.as_object_mut()?;
    first.insert("trafficPercent".into(), json!(percent));
    Some(guarded(
        resource_version,
        vec![json!({"op": "replace", "path": "/spec/canary", "value": list})],
    ))
}

/// What `spec.predictor` becomes on promotion: the stable predictor with the canary's fields
/// over it (one implementation: the canary's model replaces the stable's), its name the
/// canary's, the stable's own replica settings kept.
pub fn promoted_predictor(stable: &Value, canary: &Value) -> Value {
    let mut out = stable.clone();
    let implementation = |m: &serde_json::Map<String, Value>| -> Vec<String> {
        m.iter()
            .filter(|(k, v)| *k == "model" || v.get("storageUri").is_some())
            .map(|(k, _)| k.clone())
            .collect()
    };
    if let (Some(o), Some(c)) = (out.as_object_mut(), canary.as_object())
        && !implementation(c).is_empty()
    {
        for k in implementation(o) {
            o.remove(&k);
        }
    }
    merge(&mut out, canary, true);
    out
}

/// Merges `over` into `base`, objects key by key; at the top, the canary's replica count is
/// its own (`canaryReplicaCount`), not the stable's.
fn merge(base: &mut Value, over: &Value, top: bool) {
    let (Value::Object(b), Value::Object(o)) = (&mut *base, over) else {
        *base = over.clone();
        return;
    };
    for (k, v) in o {
        if top && k == "minReplicas" {
            continue;
        }
        match b.get_mut(k) {
            Some(slot) if slot.is_object() && v.is_object() => merge(slot, v, false),
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The promotion patch (`None`: there is no canary entry).
pub fn promote_patch(
    obj: &kube::api::DynamicObject,
    resource_version: &str,
) -> Option<Result<json_patch::Patch, kube::Error>> {
    let canary = entries(obj).first()?.get("predictor")?;
    let stable = obj.data.pointer("/spec/predictor")?;
    let next = promoted_predictor(stable, canary);
    Some(guarded(
        resource_version,
        vec![
            json!({"op": "replace", "path": "/spec/predictor", "value": next}),
            json!({"op": "replace", "path": "/spec/canary", "value": []}),
        ],
    ))
}

/// The rollback patch (`None`: there is no canary entry).
pub fn rollback_patch(
    obj: &kube::api::DynamicObject,
    resource_version: &str,
) -> Option<Result<json_patch::Patch, kube::Error>> {
    entries(obj).first()?;
    Some(guarded(
        resource_version,
        vec![json!({"op": "replace", "path": "/spec/canary", "value": []})],
    ))
}

/// The HTTPRoute resource (`gateway.networking.k8s.io/v1`).
fn http_routes() -> kube::core::ApiResource {
    let gvk = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    kube::core::ApiResource::from_gvk_with_plural(&gvk, "httproutes")
}

/// Whether requests will reach the canary: KServe splits Standard-mode traffic only on its
/// Gateway API path, in the HTTPRoute `{isvc}-predictor` (`httproute_reconciler.go`
/// `applyCanaryWeights`, after the v0.20.0 tag), where a ready canary is a backend of its own;
/// with the Kubernetes Ingress every request goes to the stable Service
/// (`kube_ingress_reconciler.go`). `Ok` says what was found; `Err` what is missing and the fix.
pub async fn routed(
    client: &kube::Client,
    namespace: &str,
    isvc: &str,
    canary: &str,
) -> Result<String, String> {
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), namespace, &http_routes());
    let name = format!("{isvc}-predictor");
    let route = match api.get_opt(&name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(format!(
                "there is no HTTPRoute {namespace}/{name}: KServe weighs Standard-mode canaries only through the Gateway API; with its Kubernetes Ingress every request goes to the stable predictor and the canary `{canary}` could never be measured. Enable it in the `inferenceservice-config` ConfigMap (`ingress`: `\"enableGatewayApi\": true`)"
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read HTTPRoute {namespace}/{name} ({e}), so whether the canary `{canary}` gets any traffic is unknown; the runner's role needs `get` on `httproutes.gateway.networking.k8s.io`"
            ));
        }
    };
    let backends: Vec<String> = route
        .data
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r["backendRefs"].as_array())
        .flatten()
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .collect();
    if backends.iter().any(|b| b == canary) {
        Ok(format!(
            "HTTPRoute {namespace}/{name} routes to the canary's Service `{canary}`"
        ))
    } else {
        Err(format!(
            "HTTPRoute {namespace}/{name} has no backend for the canary's Service `{canary}` (backends: {}): this KServe does not weigh the route by spec.canary[].trafficPercent (KServe v0.20.0 does not; releases after it do), so the canary would get no traffic",
            backends.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_engine::Reason;

    fn isvc(canary: Value, statuses: Option<Value>, stable_name: &str) -> kube::api::DynamicObject {
        let mut predictor = json!({"minReplicas": 2, "resources": {"limits": {"cpu": "1"}},
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/1"}});
        if !stable_name.is_empty() {
            predictor["name"] = json!(stable_name);
        }
        let mut status = json!({"deploymentMode": "Standard",
            "conditions": [{"type": "Ready", "status": "True"}]});
        if let Some(s) = statuses {
            status["canaryStatuses"] = s;
        }
        serde_json::from_value(json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"predictor": predictor, "canary": canary},
            "status": status,
        }))
        .expect("an InferenceService")
    }

    fn v2(pct: i64) -> Value {
        json!([{"trafficPercent": pct, "predictor": {"name": "v2", "minReplicas": 1,
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}}}])
    }

    fn state(phase: Phase) -> State {
        crate::testing::state(phase, 0, ("iris-v2-predictor", "iris-predictor"), 10)
    }

    #[test]
    fn a_canary_entry_is_judged_against_the_stable_deployment_at_the_traffic_kserve_reports() {
        let o = isvc(
            v2(20),
            Some(json!([{"name": "v2", "ready": true, "trafficPercent": 10}])),
            "",
        );
        let c = observe(&o, None);
        assert_eq!(c.canary_revision, "iris-v2-predictor");
        assert_eq!(c.stable_revision.as_deref(), Some("iris-predictor"));
        assert_eq!(c.canary_percent, 10);
        assert!(c.ready);
        assert!(!c.observed, "the spec's 20% is not reported yet");
        let o = isvc(
            v2(20),
            Some(json!([{"name": "v2", "ready": false, "trafficPercent": 20}])),
            "",
        );
        let c = observe(&o, None);
        assert!(
            c.observed && !c.ready,
            "the canary's Deployment is not available"
        );
        assert_eq!(
            revisions(&o),
            ("iris-v2-predictor".into(), "iris-predictor".into())
        );
        assert_eq!(model_uri(&o).as_deref(), Some("gs://m/2"));
    }

    #[test]
    fn without_an_entry_a_rollback_sees_its_canary_at_zero_and_anything_else_the_stable_at_100() {
        let rolling_back = state(Phase::RollingBack {
            since: 0,
            reason: Reason::Operator,
        });
        let stale = isvc(
            json!([]),
            Some(json!([{"name": "v2", "ready": true, "trafficPercent": 10}])),
            "",
        );
        let c = observe(&stale, Some(&rolling_back));
        assert_eq!(
            (c.canary_percent, c.observed),
            (0, false),
            "not reconciled yet"
        );
        let done = isvc(json!([]), None, "");
        let c = observe(&done, Some(&rolling_back));
        assert_eq!(c.canary_revision, "iris-v2-predictor");
        assert_eq!((c.canary_percent, c.observed), (0, true));
        // Promoted: the stable predictor is the former canary's Deployment.
        let promoted = isvc(json!([]), None, "v2");
        let c = observe(&promoted, Some(&state(Phase::Promoting { since: 0 })));
        assert_eq!(c.canary_revision, "iris-v2-predictor");
        assert_eq!((c.canary_percent, c.stable_revision), (100, None));
        assert!(c.observed && c.ready);
        // Holding, the entry removed by someone: the stable serves all (a changed revision).
        let c = observe(&done, Some(&state(Phase::Holding { since: 0 })));
        assert_eq!(c.canary_revision, "iris-predictor");
        assert_eq!(
            revisions(&done),
            ("iris-predictor".into(), "iris-predictor".into())
        );
    }

    #[test]
    fn promotion_runs_what_the_canary_ran_under_its_name_with_the_stable_s_replicas() {
        let o = isvc(v2(50), None, "");
        let stable = &o.data["spec"]["predictor"];
        let p = promoted_predictor(stable, &o.data["spec"]["canary"][0]["predictor"]);
        assert_eq!(
            p,
            json!({"name": "v2", "minReplicas": 2, "resources": {"limits": {"cpu": "1"}},
                   "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}})
        );
        // A framework block replaces the stable's `model`.
        let framework = json!({"name": "v3", "sklearn": {"storageUri": "gs://m/3"}});
        let p = promoted_predictor(stable, &framework);
        assert!(p.get("model").is_none(), "{p}");
        assert_eq!(p["sklearn"]["storageUri"], "gs://m/3");
        let patch = promote_patch(&o, "7").expect("an entry").expect("a patch");
        let text = serde_json::to_string(&patch).expect("json");
        assert!(
            text.contains(r#""path":"/metadata/resourceVersion","value":"7""#),
            "{text}"
        );
        assert!(
            text.contains(r#""path":"/spec/canary","value":[]"#),
            "{text}"
        );
    }

    #[test]
    fn traffic_replaces_the_whole_list_and_nothing_is_written_without_an_entry() {
        let o = isvc(v2(10), None, "");
        let patch = traffic_patch(&o, "7", 25)
            .expect("an entry")
            .expect("a patch");
        let v = serde_json::to_value(&patch).expect("json");
        assert_eq!(v[1]["path"], "/spec/canary");
        assert_eq!(v[1]["value"][0]["trafficPercent"], 25);
        assert_eq!(
            v[1]["value"][0]["predictor"]["model"]["storageUri"],
            "gs://m/2"
        );
        let none = isvc(json!([]), None, "");
        assert!(traffic_patch(&none, "7", 25).is_none());
        assert!(promote_patch(&none, "7").is_none());
        assert!(rollback_patch(&none, "7").is_none());
    }
}
