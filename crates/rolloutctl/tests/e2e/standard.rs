//! Standard mode (raw Deployments, KServe ≥ 0.20's `spec.canary[]`) driven end to end: the
//! runner shifts the canary entry's `trafficPercent`, promotes as KServe's own e2e test does
//! (`test_canary_raw_deployment.py`: the predictor takes the canary's name and model, the
//! canary's pods are kept) and rolls back by removing the entry; judged on Istio's metrics,
//! where each arm is its Deployment. Without the Gateway API no request would reach the canary,
//! and preflight refuses before anything is written.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use rollout_sandbox::exporter::Stack;
use serde_json::{Value, json};

use crate::stacks::policy_on;
use crate::world::*;

const ISVC: &str = "sklearn-iris";

/// The InferenceService `name` in Standard mode: `v1` as the stable predictor, and `canary`
/// entries.
pub fn standard_isvc(name: &str, canary: Value) -> Value {
    json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": name, "namespace": "kserve-test",
                        "annotations": {"serving.kserve.io/deploymentMode": "Standard",
                                        "serving.kserve.io/autoscalerClass": "none",
                                        "sandbox.rolloutctl.io/error-rate": "0.5%"}},
           "spec": {"predictor": {"minReplicas": 2,
                                  "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/1"}},
                    "canary": canary}})
}

/// The canary entry `v2` at 10%, with sandbox behaviour `annotations` on its predictor.
pub fn v2(annotations: Value) -> Value {
    json!([{"trafficPercent": 10, "predictor": {"name": "v2", "annotations": annotations,
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}}}])
}

/// A sandbox exporting Istio's metrics, its KServe with the Gateway API on or off.
async fn standard_world(on: bool) -> World {
    let w = world_on(60.0, Stack::Istio).await;
    gateway_api(&w, on).await;
    w
}

/// Turns KServe's Gateway API path on or off (`inferenceservice-config`, `ingress`).
pub async fn gateway_api(w: &World, gateway_api: bool) {
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), "kserve");
    let ingress = json!({"enableGatewayApi": gateway_api, "ingressDomain": "example.com"});
    cms.patch(
        "inferenceservice-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ingress": ingress.to_string()}})),
    )
    .await
    .expect("inferenceservice-config");
}

/// Waits until the InferenceService `name` is Ready and, with a canary entry, that canary is
/// ready at its spec's traffic.
pub async fn settled(w: &World, name: &str) {
    let target = rollout_runner::isvc::Isvc::new(w.client.clone(), "kserve-test", name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = target.get().await.expect("isvc");
        let c = rollout_runner::standard::observe(&o, None);
        let canary = rollout_runner::standard::canary_count(&o) > 0;
        if c.ready && c.observed && (!canary || c.stable_revision.is_some()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {:?}",
            o.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `v1` serving as InferenceService `name`, then the canary `v2` at 10%, and Prometheus has seen
/// both for a few seconds.
pub async fn deploy(w: &World, name: &str, canary_annotations: Value) {
    w.apply_to(name, standard_isvc(name, json!([]))).await;
    settled(w, name).await;
    w.apply_to(name, standard_isvc(name, v2(canary_annotations)))
        .await;
    settled(w, name).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// The uids of the pods of Deployment `d`.
async fn pod_uids(w: &World, d: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), "kserve-test");
    pods.list(&ListParams::default().labels(&format!("app=isvc.{d}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect()
}

/// The canary entry's traffic as each decision left it.
fn canary_traffic(r: &Runner) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    for d in r.decisions() {
        if let Some(t) = d["traffic"].as_i64()
            && out.last() != Some(&t)
        {
            out.push(t);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standard_mode_promotes_a_healthy_canary_keeping_its_pods_and_rolls_back_a_bad_one() {
    let w = standard_world(true).await;
    deploy(&w, ISVC, json!({})).await;
    let canary_pods = pod_uids(&w, "sklearn-iris-v2-predictor").await;
    assert!(!canary_pods.is_empty(), "the canary runs pods");
    let p = w.policy_file(&policy_on("istio"));
    let (code, out) = w.doctor(&p);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Standard mode, stable Deployment sklearn-iris-predictor, canary Deployment sklearn-iris-v2-predictor at 10%")
            && out.contains("routes to the canary's Service `sklearn-iris-v2-predictor`"),
        "{out}"
    );
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(120).await, 0, "healthy promoted\n{}", r.stderr());
    let traffic = canary_traffic(&r);
    for step in [25, 50] {
        assert!(traffic.contains(&step), "the steps were taken: {traffic:?}");
    }
    let o = w.obj().await;
    assert_eq!(o.data["spec"]["canary"], json!([]), "the entry is gone");
    assert_eq!(o.data["spec"]["predictor"]["name"], "v2");
    assert_eq!(
        o.data["spec"]["predictor"]["model"]["storageUri"], "gs://m/2",
        "the predictor runs the canary's model"
    );
    assert_eq!(o.data["spec"]["predictor"]["minReplicas"], 2);
    settled(&w, ISVC).await;
    let after = pod_uids(&w, "sklearn-iris-v2-predictor").await;
    assert!(
        canary_pods.is_subset(&after),
        "the canary's pods were not restarted: {canary_pods:?} then {after:?}"
    );
    w.sandbox.shutdown().await;

    let w = standard_world(true).await;
    deploy(&w, ISVC, json!({"sandbox.rolloutctl.io/error-rate": "30%"})).await;
    let p = w.policy_file(&policy_on("istio"));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(120).await, 3, "bad rolled back\n{}", r.stderr());
    let judged = r.decisions().iter().any(|d| {
        d["rules"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|x| x["rule"] == "CanaryErrors" && x["verdict"] == "fail")
        })
    });
    assert!(judged, "the error rule judged it:\n{}", r.stderr());
    let o = w.obj().await;
    assert_eq!(o.data["spec"]["canary"], json!([]), "the entry is removed");
    assert!(
        o.data["spec"]["predictor"].get("name").is_none(),
        "the stable predictor is unchanged: {}",
        o.data["spec"]["predictor"]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pod_uids(&w, "sklearn-iris-v2-predictor").await.is_empty() {
        assert!(Instant::now() < deadline, "the canary's pods are deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_gateway_api_a_standard_canary_is_refused_before_anything_is_written() {
    let w = standard_world(false).await;
    deploy(&w, ISVC, json!({})).await;
    let p = w.policy_file(&policy_on("istio"));
    let writes = w.isvc_writes();
    let (code, out) = w.doctor(&p);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("ingress.enableGatewayApi is false")
            && out.contains("there is no HTTPRoute kserve-test/sklearn-iris-predictor"),
        "{out}"
    );
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("preflight refused")
            && err.contains("HTTPRoute kserve-test/sklearn-iris-predictor")
            && err.contains("enableGatewayApi"),
        "{err}"
    );
    assert_eq!(w.isvc_writes(), writes, "nothing written");
    assert_eq!(
        w.obj().await.data["spec"]["canary"][0]["trafficPercent"],
        10
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_canary_entry_is_refused() {
    let w = standard_world(true).await;
    let mut two = v2(json!({}));
    if let Some(a) = two.as_array_mut() {
        a.push(json!({"trafficPercent": 10, "predictor": {"name": "v3",
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/3"}}}));
    }
    w.apply(standard_isvc(ISVC, two)).await;
    let p = w.policy_file(&policy_on("istio"));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5, "{}", r.stderr());
    assert!(
        r.stderr().contains("2 spec.canary[] entries"),
        "{}",
        r.stderr()
    );
    w.sandbox.shutdown().await;
}
