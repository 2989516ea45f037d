//! KServe's Standard (raw Deployment) mode, with the `spec.canary[]` list of KServe ≥ 0.20: from
//! an InferenceService to the Deployments, Services and HTTPRoute KServe's controller keeps for
//! it, the status it writes, and how the gateway splits traffic. Sources (`kserve/kserve`, the
//! v0.20 API and master `aaac4e294` for routing; see `docs/sandbox.md`):
//!
//! - names: `PredictorServiceName` (`pkg/constants/constants.go` 799-804): `{isvc}-predictor`,
//!   or `{isvc}-{predictor.name}-predictor`; a canary is `{isvc}-{canary.predictor.name}-predictor`
//!   (`components/predictor.go` 921). After a promotion (`spec.predictor.name` set to the
//!   canary's, `canary: []`) the stable predictor *is* the former canary's Deployment, and
//!   `{isvc}-predictor` is deleted as an orphan (1002-1037);
//! - labels on Deployment and pod template: `serving.kserve.io/inferenceservice`,
//!   `component: predictor`, `app: isvc.{deployment}` (`deployment_reconciler.go` 145-154);
//! - a canary is the stable predictor with the canary's fields merged over it
//!   (`buildCanaryPredictor`, 902-916), with fixed replicas: its `minReplicas`, else
//!   `ceil(stableMin × pct / 100)` (`canaryReplicaCount`, 886-895);
//! - status: `canaryStatuses[] {name, ready, trafficPercent}` in spec order, `ready` =
//!   `availableReplicas > 0`, `trafficPercent` copied from spec (960-981);
//!   `CanaryPredictorReady` `True`/`AllCanariesReady`, `False`/`CanariesNotReady` or
//!   `False`/`Stopped`, no message, cleared without canaries (983-1000), not part of `Ready`;
//!   `components.predictor.url` = `http://{deployment}-{ns}.{domain}` once ready
//!   (`raw_kube_reconciler.go` 227-235); `status.url` from the domain template
//!   `{name}-{namespace}.{domain}`; `status.address.url` the stable Service's cluster address;
//!   `observedGeneration` the stable Deployment's (`inference_service_status.go` 455-457);
//! - routing: only with `ingress.enableGatewayApi` (default `false`) does the HTTPRoute
//!   `{isvc}-predictor` split: stable at `100 − Σ(ready canaries' pct)`, each ready canary at its
//!   pct, canaries that are not ready left out (`httproute_reconciler.go` `applyCanaryWeights`
//!   684-743, added by #5912 after the v0.20.0 tag). With the default Kubernetes Ingress every
//!   request goes to the stable Service (`kube_ingress_reconciler.go` 236-329 has no canary code).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::kserve::DOMAIN;

/// The Deployment and Service name of a predictor: `{isvc}-predictor` or
/// `{isvc}-{predictor_name}-predictor`.
pub fn deployment_name(isvc: &str, predictor_name: &str) -> String {
    if predictor_name.is_empty() {
        format!("{isvc}-predictor")
    } else {
        format!("{isvc}-{predictor_name}-predictor")
    }
}

/// One predictor KServe runs for the InferenceService: the stable one or a canary.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictor {
    /// Deployment and Service name.
    pub deployment: String,
    /// The canary's `predictor.name` (`None`: the stable predictor).
    pub canary: Option<String>,
    /// The canary's `trafficPercent` as the spec says it (the stable's is the rest).
    pub percent: i64,
    /// The predictor spec it runs (a canary's merged over the stable's).
    pub spec: Value,
    /// Replicas.
    pub replicas: i64,
}

/// Merges `over` into `base` (objects key by key, anything else replaced), as `mergo` with
/// `WithOverride` does for the non-empty fields of a canary.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The predictors of a Standard-mode InferenceService: the stable one, then each canary in spec
/// order (an InferenceService stopped with `serving.kserve.io/stop` has none).
pub fn predictors(obj: &Value) -> Vec<Predictor> {
    let isvc = obj["metadata"]["name"].as_str().unwrap_or("");
    if stopped(obj) {
        return Vec::new();
    }
    let stable = &obj["spec"]["predictor"];
    let stable_min = stable["minReplicas"].as_i64().unwrap_or(1).max(1);
    let canaries = obj["spec"]["canary"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut canary_replicas = 0;
    for c in &canaries {
        let p = &c["predictor"];
        let name = p["name"].as_str().unwrap_or("").to_string();
        let pct = c["trafficPercent"].as_i64().unwrap_or(0);
        let mut spec = stable.clone();
        // A canary names one implementation; it replaces the stable's, it does not add to it.
        if let Some(m) = spec.as_object_mut()
            && p.get("model").is_some()
        {
            m.remove("model");
        }
        merge(&mut spec, p);
        if let Some(m) = spec.as_object_mut() {
            for k in ["maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"] {
                m.remove(k);
            }
        }
        let replicas = p["minReplicas"]
            .as_i64()
            .unwrap_or_else(|| (stable_min * pct + 99) / 100);
        canary_replicas += replicas;
        out.push(Predictor {
            deployment: deployment_name(isvc, &name),
            canary: Some(name),
            percent: pct,
            spec,
            replicas,
        });
    }
    // The stable predictor gives up the canaries' replicas, down to one, when its
    // minReplicas is set (v0.20.0 counts every canary, `predictor.go` 794-803).
    let stable_replicas = if stable["minReplicas"].is_i64() {
        (stable_min - canary_replicas).max(1)
    } else {
        stable_min
    };
    let mut all = vec![Predictor {
        deployment: deployment_name(isvc, stable["name"].as_str().unwrap_or("")),
        canary: None,
        percent: 100,
        spec: stable.clone(),
        replicas: stable_replicas,
    }];
    all.extend(out);
    all
}

/// `serving.kserve.io/stop: "true"`.
pub fn stopped(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations/serving.kserve.io~1stop")
        .and_then(Value::as_str)
        == Some("true")
}

/// Where requests to the InferenceService go: `(deployment, weight)` per backend. Only the
/// Gateway API path splits; a canary that is not available gets nothing.
pub fn routes(
    preds: &[Predictor],
    available: &dyn Fn(&str) -> bool,
    gateway_api: bool,
) -> Vec<(String, f64)> {
    let Some(stable) = preds.iter().find(|p| p.canary.is_none()) else {
        return Vec::new();
    };
    if !gateway_api {
        return vec![(stable.deployment.clone(), 100.0)];
    }
    let ready: Vec<&Predictor> = preds
        .iter()
        .filter(|p| p.canary.is_some() && available(&p.deployment))
        .collect();
    let canary_sum: i64 = ready.iter().map(|p| p.percent).sum();
    let mut out = vec![(stable.deployment.clone(), (100 - canary_sum).max(0) as f64)];
    out.extend(
        ready
            .iter()
            .map(|p| (p.deployment.clone(), p.percent as f64)),
    );
    out
}

/// The ownerReference KServe puts on what it makes (`controllerutil.SetControllerReference`):
/// what the garbage collector deletes with the InferenceService.
fn owner(obj: &Value) -> Value {
    json!([{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": true, "blockOwnerDeletion": true}])
}

fn labels(isvc: &str, deployment: &str, extra: &Map<String, Value>) -> Value {
    let mut l = extra.clone();
    l.insert("serving.kserve.io/inferenceservice".into(), json!(isvc));
    l.insert("component".into(), json!("predictor"));
    l.insert("app".into(), json!(format!("isvc.{deployment}")));
    Value::Object(l)
}

/// The Deployment KServe keeps for a predictor.
pub fn deployment(obj: &Value, p: &Predictor) -> Value {
    let isvc = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let mut extra = obj["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(own) = p.spec["labels"].as_object() {
        extra.extend(own.clone());
    }
    let l = labels(isvc, &p.deployment, &extra);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": p.deployment, "namespace": ns, "labels": l, "ownerReferences": owner(obj)},
        "spec": {
            "replicas": p.replicas,
            "selector": {"matchLabels": {"app": format!("isvc.{}", p.deployment)}},
            "template": {
                "metadata": {"labels": l},
                "spec": {"containers": [{"name": "kserve-container", "image": "kserve/sklearnserver",
                    "args": [format!("--model_name={isvc}"), format!("--model_dir=/mnt/models")],
                    "env": [{"name": "STORAGE_URI", "value": crate::propagation::storage_uri(&json!({"spec": {"predictor": p.spec}})).unwrap_or_default()}]}]}
            }
        }
    })
}

/// The Service KServe keeps for a predictor (selecting its pods only).
pub fn service(obj: &Value, p: &Predictor) -> Value {
    let isvc = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": p.deployment, "namespace": ns,
                     "labels": labels(isvc, &p.deployment, &Map::new()), "ownerReferences": owner(obj)},
        "spec": {"selector": {"app": format!("isvc.{}", p.deployment)},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    })
}

/// The HTTPRoute `{isvc}-predictor` (Gateway API only) with the weights of [`routes`].
pub fn http_route(obj: &Value, backends: &[(String, f64)], domain: &str) -> Value {
    let isvc = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let refs: Vec<Value> = backends
        .iter()
        .map(|(name, w)| json!({"group": "", "kind": "Service", "name": name, "namespace": ns, "port": 80, "weight": *w as i64}))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": format!("{isvc}-predictor"), "namespace": ns,
                     "labels": {"serving.kserve.io/inferenceservice": isvc, "component": "predictor"},
                     "ownerReferences": owner(obj)},
        "spec": {
            "hostnames": [format!("{isvc}-predictor-{ns}.{domain}")],
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "kserve-ingress-gateway", "namespace": "kserve"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}]
        }
    })
}

/// The canary part of the status: `canaryStatuses` and the `CanaryPredictorReady` condition
/// (`None`: cleared, no canaries).
pub fn canary_status(
    obj: &Value,
    preds: &[Predictor],
    available: &dyn Fn(&str) -> bool,
    now_ts: &str,
) -> (Option<Value>, Option<Value>) {
    let canaries: Vec<&Value> = obj["spec"]["canary"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if canaries.is_empty() {
        return (None, None);
    }
    let statuses: Vec<Value> = canaries
        .iter()
        .map(|c| {
            let name = c["predictor"]["name"].as_str().unwrap_or("");
            let ready = !stopped(obj)
                && preds
                    .iter()
                    .any(|p| p.canary.as_deref() == Some(name) && available(&p.deployment));
            json!({"name": name, "ready": ready, "trafficPercent": c["trafficPercent"].as_i64().unwrap_or(0)})
        })
        .collect();
    let all_ready = statuses.iter().all(|s| s["ready"] == true);
    let (status, reason) = if stopped(obj) {
        ("False", "Stopped")
    } else if all_ready {
        ("True", "AllCanariesReady")
    } else {
        ("False", "CanariesNotReady")
    };
    (
        Some(Value::Array(statuses)),
        Some(
            json!({"type": "CanaryPredictorReady", "status": status, "reason": reason,
                    "severity": "Info", "lastTransitionTime": now_ts}),
        ),
    )
}

/// Controller state of one Standard-mode InferenceService.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// When each Deployment, first made, becomes available (a ready delay later).
    pub ready_at: HashMap<String, Instant>,
    /// Where requests go now: (Deployment, weight).
    pub routes: Vec<(String, f64)>,
}

/// What one reconcile of a Standard-mode InferenceService decided.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The new status (its `observedGeneration` is set from the stored stable Deployment when
    /// the objects are applied).
    pub status: Value,
    /// The objects KServe keeps for it; any other Deployment, Service, HTTPRoute or pod
    /// labelled for this InferenceService is deleted.
    pub objects: Vec<Value>,
    /// Each Deployment with its replicas and whether it is available now.
    pub available: Vec<(String, i64, bool)>,
    /// The stable Deployment (`None` when stopped).
    pub stable: Option<String>,
    /// Whether the HTTPRoute made before is left as it is (the predictor is not ready).
    pub keep_route: bool,
    /// Each predictor's annotations (the InferenceService's, then the predictor spec's), by
    /// Deployment: where the sandbox reads its behaviour.
    pub annotations: Vec<(String, Map<String, Value>)>,
}

/// The `inferenceservice-config` setting `ingress.enableGatewayApi` (default false).
pub fn gateway_api(config: Option<&Value>) -> bool {
    config
        .and_then(|c| c["ingress"].as_str())
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|i| i["enableGatewayApi"].as_bool())
        .unwrap_or(false)
}

fn cond(t: &str, status: &str, reason: &str, now_ts: &str) -> Value {
    let mut c = json!({"type": t, "status": status, "lastTransitionTime": now_ts});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    c
}

/// One reconcile: the predictors, their objects, the routes and the status.
pub fn reconcile(
    obj: &Value,
    st: &mut State,
    config: Option<&Value>,
    now: Instant,
    ready_delay: Duration,
    failing: &[String],
    now_ts: &str,
) -> Outcome {
    let isvc = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let preds = predictors(obj);
    st.ready_at
        .retain(|d, _| preds.iter().any(|p| p.deployment == *d));
    for p in &preds {
        st.ready_at
            .entry(p.deployment.clone())
            .or_insert(now + ready_delay);
    }
    let available =
        |d: &str| !failing.iter().any(|f| f == d) && st.ready_at.get(d).is_some_and(|t| now >= *t);
    let gateway = gateway_api(config);
    let mut objects = Vec::new();
    for p in &preds {
        objects.push(deployment(obj, p));
        objects.push(service(obj, p));
    }
    let stable = preds.iter().find(|p| p.canary.is_none());
    let stable_ready = stable.is_some_and(|p| available(&p.deployment));
    // While the predictor is not ready KServe builds no HTTPRoute and leaves the one it made
    // before as it is (`createRawPredictorHTTPRoute` returns nil, `reconcilePredictorHTTPRoute`
    // then does nothing: `httproute_reconciler.go` 258-265, 812-814); stopping deletes it.
    let keep_route = gateway && !stable_ready && !stopped(obj);
    if stable_ready {
        st.routes = routes(&preds, &available, gateway);
    } else if !keep_route {
        st.routes = Vec::new();
    }
    if gateway && stable_ready {
        objects.push(http_route(obj, &st.routes, DOMAIN));
    }
    let mut status = json!({"deploymentMode": "Standard", "components": {"predictor": {}}});
    let (pred_c, reason) = if stopped(obj) {
        ("False", "Stopped")
    } else if stable_ready {
        ("True", "")
    } else {
        ("Unknown", "")
    };
    let mut conditions = vec![
        cond("IngressReady", pred_c, reason, now_ts),
        cond("PredictorReady", pred_c, reason, now_ts),
        cond("Ready", pred_c, reason, now_ts),
    ];
    if let Some(p) = stable
        && stable_ready
    {
        status["components"]["predictor"]["url"] =
            json!(format!("http://{}-{ns}.{DOMAIN}", p.deployment));
        status["url"] = json!(format!("http://{isvc}-{ns}.{DOMAIN}"));
        status["address"] =
            json!({"url": format!("http://{}.{ns}.svc.cluster.local", p.deployment)});
    }
    let (statuses, canary_cond) = canary_status(obj, &preds, &available, now_ts);
    if let Some(s) = statuses {
        status["canaryStatuses"] = s;
    }
    if let Some(c) = canary_cond {
        conditions.push(c);
    }
    status["conditions"] = Value::Array(conditions);
    let base = obj["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let annotations = preds
        .iter()
        .map(|p| {
            let mut a = base.clone();
            if let Some(own) = p.spec["annotations"].as_object() {
                a.extend(own.clone());
            }
            (p.deployment.clone(), a)
        })
        .collect();
    Outcome {
        status,
        objects,
        available: preds
            .iter()
            .map(|p| (p.deployment.clone(), p.replicas, available(&p.deployment)))
            .collect(),
        stable: stable.map(|p| p.deployment.clone()),
        keep_route,
        annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isvc(canary: Value, stable_name: &str) -> Value {
        json!({"metadata": {"name": "iris", "namespace": "ns", "labels": {"team": "a"},
                            "annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
               "spec": {"predictor": {"name": stable_name, "minReplicas": 2,
                                      "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/1"}},
                        "canary": canary}})
    }

    fn v2(pct: i64) -> Value {
        json!([{"trafficPercent": pct, "predictor": {"name": "v2", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}}}])
    }

    #[test]
    fn names_follow_predictor_service_name() {
        let ps = predictors(&isvc(v2(20), ""));
        let names: Vec<&str> = ps.iter().map(|p| p.deployment.as_str()).collect();
        assert_eq!(names, ["iris-predictor", "iris-v2-predictor"]);
        // Promoted: the stable predictor is the former canary's Deployment.
        let promoted = predictors(&isvc(json!([]), "v2"));
        assert_eq!(promoted.len(), 1);
        assert_eq!(promoted[0].deployment, "iris-v2-predictor");
    }

    #[test]
    fn a_canary_runs_its_model_over_the_stable_spec_with_fixed_replicas() {
        let ps = predictors(&isvc(v2(20), ""));
        assert_eq!(ps[1].spec["model"]["storageUri"], "gs://m/2");
        assert_eq!(
            ps[1].spec["minReplicas"], 2,
            "inherited from the stable spec"
        );
        assert_eq!(ps[1].replicas, 1, "ceil(2 × 20 / 100)");
        assert_eq!(
            ps[0].replicas, 1,
            "the stable gives up the canary's replica"
        );
    }

    #[test]
    fn only_the_gateway_api_splits_and_only_to_ready_canaries() {
        let ps = predictors(&isvc(v2(20), ""));
        let all = |_: &str| true;
        assert_eq!(
            routes(&ps, &all, false),
            [("iris-predictor".to_string(), 100.0)]
        );
        assert_eq!(
            routes(&ps, &all, true),
            [
                ("iris-predictor".to_string(), 80.0),
                ("iris-v2-predictor".to_string(), 20.0)
            ]
        );
        let stable_only = |d: &str| d == "iris-predictor";
        assert_eq!(
            routes(&ps, &stable_only, true),
            [("iris-predictor".to_string(), 100.0)]
        );
    }

    #[test]
    fn canary_status_is_copied_from_spec_and_cleared_without_canaries() {
        let o = isvc(v2(20), "");
        let ps = predictors(&o);
        let (st, cond) = canary_status(&o, &ps, &|_| true, "t");
        assert_eq!(
            st,
            Some(json!([{"name": "v2", "ready": true, "trafficPercent": 20}]))
        );
        assert_eq!(
            cond.as_ref().map(|c| c["reason"].clone()),
            Some(json!("AllCanariesReady"))
        );
        let (_, cond) = canary_status(&o, &ps, &|d| d == "iris-predictor", "t");
        assert_eq!(
            cond.map(|c| c["reason"].clone()),
            Some(json!("CanariesNotReady"))
        );
        let none = isvc(json!([]), "");
        assert_eq!(
            canary_status(&none, &predictors(&none), &|_| true, "t"),
            (None, None)
        );
        let mut stopped = o.clone();
        stopped["metadata"]["annotations"]["serving.kserve.io/stop"] = json!("true");
        assert!(predictors(&stopped).is_empty());
        let (_, cond) = canary_status(&stopped, &[], &|_| true, "t");
        assert_eq!(
            cond.map(|c| (c["status"].clone(), c["reason"].clone())),
            Some((json!("False"), json!("Stopped")))
        );
    }

    #[test]
    fn an_unready_predictor_keeps_the_route_it_had_and_stopping_deletes_it() {
        let o = isvc(v2(20), "");
        let config = json!({"ingress": "{\"enableGatewayApi\": true}"});
        let mut st = State::default();
        let t0 = Instant::now();
        let ready = reconcile(&o, &mut st, Some(&config), t0, Duration::ZERO, &[], "t");
        assert!(!ready.keep_route);
        assert!(ready.objects.iter().any(|x| x["kind"] == "HTTPRoute"));
        let before = st.routes.clone();
        assert_eq!(before.len(), 2);
        let failing = ["iris-predictor".to_string()];
        let out = reconcile(
            &o,
            &mut st,
            Some(&config),
            t0,
            Duration::ZERO,
            &failing,
            "t",
        );
        assert!(
            out.keep_route,
            "KServe builds no route and leaves the old one"
        );
        assert!(!out.objects.iter().any(|x| x["kind"] == "HTTPRoute"));
        assert_eq!(
            st.routes, before,
            "requests follow the route that is still there"
        );
        let mut stopped = o.clone();
        stopped["metadata"]["annotations"]["serving.kserve.io/stop"] = json!("true");
        let out = reconcile(
            &stopped,
            &mut st,
            Some(&config),
            t0,
            Duration::ZERO,
            &[],
            "t",
        );
        assert!(
            !out.keep_route && st.routes.is_empty(),
            "stopping deletes it"
        );
    }

    #[test]
    fn deployments_carry_kserve_s_labels_and_select_their_own_pods() {
        let o = isvc(v2(20), "");
        let ps = predictors(&o);
        let d = deployment(&o, &ps[1]);
        assert_eq!(d["metadata"]["labels"]["app"], "isvc.iris-v2-predictor");
        assert_eq!(
            d["metadata"]["labels"]["serving.kserve.io/inferenceservice"],
            "iris"
        );
        assert_eq!(d["metadata"]["labels"]["team"], "a");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({"app": "isvc.iris-v2-predictor"})
        );
        assert_eq!(
            service(&o, &ps[0])["spec"]["selector"],
            json!({"app": "isvc.iris-predictor"})
        );
        let r = http_route(&o, &routes(&ps, &|_| true, true), "example.com");
        assert_eq!(r["metadata"]["name"], "iris-predictor");
        assert_eq!(r["spec"]["rules"][0]["backendRefs"][1]["weight"], 20);
    }
}
