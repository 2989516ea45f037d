//! The objects KServe's controller owns for a Standard-mode InferenceService, kept in the store
//! as the controller and Kubernetes' own controllers would: Deployments (with their status and
//! pods, as the Deployment and ReplicaSet controllers keep them), Services and the HTTPRoute,
//! created or updated in place (an object keeps its uid), and anything else labelled for the
//! InferenceService deleted as an orphan (`components/predictor.go` 1002-1037).

use serde_json::{Value, json};

use crate::store::{Key, Store};
use crate::types::id;

/// What one reconcile wants to exist.
#[derive(Clone, Debug, Default)]
pub struct Owned {
    /// Deployments, Services and an HTTPRoute.
    pub objects: Vec<Value>,
    /// The stable Deployment.
    pub stable: Option<String>,
    /// Each Deployment's replicas and whether it is available.
    pub available: Vec<(String, i64, bool)>,
    /// The HTTPRoute made before is left as it is (see [`crate::standard::Outcome::keep_route`]).
    pub keep_route: bool,
}

const INFERENCESERVICE: &str = "serving.kserve.io/inferenceservice";

fn res_of(obj: &Value) -> Option<String> {
    Some(match obj["kind"].as_str()? {
        "Deployment" => id("apps", "deployments"),
        "Service" => id("", "services"),
        "HTTPRoute" => id("gateway.networking.k8s.io", "httproutes"),
        "Pod" => id("", "pods"),
        _ => return None,
    })
}

/// The resources an InferenceService's owned objects live in.
fn owned_resources() -> [String; 4] {
    [
        id("apps", "deployments"),
        id("", "services"),
        id("gateway.networking.k8s.io", "httproutes"),
        id("", "pods"),
    ]
}

/// A stable short hash (FNV-1a) of a pod template, as the ReplicaSet's pod-template-hash.
fn template_hash(t: &Value) -> String {
    let h = t
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{:x}", h & 0xff_ffff_ffff)
}

/// Creates `want`, or updates its labels and spec in place.
fn upsert(store: &mut Store, res: &str, want: &Value) {
    let ns = want["metadata"]["namespace"].as_str().unwrap_or("");
    let name = want["metadata"]["name"].as_str().unwrap_or("");
    let key = Key::new(res, ns, name);
    match store.peek(&key) {
        None => {
            let _ = store.create(key, want.clone());
        }
        Some(have)
            if have["spec"] != want["spec"]
                || have["metadata"]["labels"] != want["metadata"]["labels"] =>
        {
            let _ = store.modify(&key, false, |o| {
                o["spec"] = want["spec"].clone();
                o["metadata"]["labels"] = want["metadata"]["labels"].clone();
                Ok(())
            });
        }
        Some(_) => {}
    }
}

/// Applies what a reconcile of `isvc` (namespace `ns`) wants; returns the stable Deployment's
/// generation (KServe reports it as the InferenceService's `observedGeneration`).
pub fn apply(store: &mut Store, ns: &str, isvc: &str, owned: &Owned) -> Option<i64> {
    let mut keep: Vec<(String, String)> = Vec::new();
    if owned.keep_route {
        keep.push((
            id("gateway.networking.k8s.io", "httproutes"),
            format!("{isvc}-predictor"),
        ));
    }
    for o in &owned.objects {
        let Some(res) = res_of(o) else { continue };
        upsert(store, &res, o);
        keep.push((
            res,
            o["metadata"]["name"].as_str().unwrap_or("").to_string(),
        ));
    }
    // Deployment status and pods, as the Deployment and ReplicaSet controllers keep them.
    let deployments = id("apps", "deployments");
    let pods = id("", "pods");
    for (name, replicas, available) in &owned.available {
        let key = Key::new(&deployments, ns, name);
        let Some(d) = store.peek(&key).cloned() else {
            continue;
        };
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let status = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": if *available { *replicas } else { 0 },
            "availableReplicas": if *available { *replicas } else { 0 },
            "conditions": [{"type": "Available", "status": if *available { "True" } else { "False" },
                            "reason": if *available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}]
        });
        if d["status"] != status {
            let _ = store.modify(&key, true, |o| {
                o["status"] = status.clone();
                Ok(())
            });
        }
        let template = &d["spec"]["template"];
        let hash = template_hash(template);
        let prefix = format!("{name}-{hash}-");
        for i in 0..(*replicas).max(0) {
            let pod = format!("{prefix}{i}");
            if store.peek(&Key::new(&pods, ns, &pod)).is_none() {
                let _ = store.create(
                    Key::new(&pods, ns, &pod),
                    json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": pod, "namespace": ns, "labels": template["metadata"]["labels"]},
                           "spec": template["spec"],
                           "status": {"phase": if *available { "Running" } else { "Pending" }}}),
                );
            }
            keep.push((pods.clone(), pod));
        }
    }
    // Orphans: anything labelled for this InferenceService that is not wanted.
    for res in owned_resources() {
        for o in store.list(&res, Some(ns)) {
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            if o["metadata"]["labels"][INFERENCESERVICE] == isvc
                && !keep.iter().any(|(r, n)| *r == res && *n == name)
            {
                let _ = store.delete(&Key::new(&res, ns, &name));
            }
        }
    }
    let stable = owned.stable.as_ref()?;
    store
        .peek(&Key::new(&deployments, ns, stable))
        .and_then(|d| d["metadata"]["generation"].as_i64())
}
