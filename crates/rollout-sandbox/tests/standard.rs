//! KServe's Standard-mode canary (`spec.canary[]`, KServe ≥ 0.20), driven with the real kubectl
//! the way KServe's own e2e test drives it (`test/e2e/predictor/test_canary_raw_deployment.py`
//! on master: create, promote without restarting the canary's pods, roll back, stop), and the
//! validating webhook's rules.

mod common;

use common::*;
use serde_json::{Value, json};

const ISVC: &str = "isvc-canary";

fn manifest(
    canary: Value,
    stable_name: &str,
    stable_uri: &str,
    extra_annotations: Value,
) -> String {
    let mut ann = json!({
        "serving.kserve.io/deploymentMode": "Standard",
        "serving.kserve.io/autoscalerClass": "none",
    });
    if let (Some(a), Some(e)) = (ann.as_object_mut(), extra_annotations.as_object()) {
        a.extend(e.clone());
    }
    let mut predictor = json!({"minReplicas": 2, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": stable_uri}});
    if !stable_name.is_empty() {
        predictor["name"] = json!(stable_name);
    }
    json!({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": ISVC, "namespace": "kserve-test", "annotations": ann},
        "spec": {"predictor": predictor, "canary": canary}
    })
    .to_string()
}

const V1: &str = "gs://kfserving-examples/models/sklearn/1.0/model";
const V2: &str = "gs://kfserving-examples/models/sklearn/1.3/mixedtype";

/// The canary of the upstream test: `v2`, 20%, a model that answers 500 (here: a sandbox
/// behaviour on the canary's own predictor annotations).
fn v2_canary(pct: i64) -> Value {
    json!([{"trafficPercent": pct, "predictor": {"name": "v2",
        "annotations": {"sandbox.rolloutctl.io/error-rate": "100%"},
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": V2}}}])
}

fn apply(k: &Kubectl, dir: &std::path::Path, text: &str) -> std::process::Output {
    let path = dir.join("isvc.json");
    std::fs::write(&path, text).expect("write");
    k.run(&["apply", "-f", path.to_str().expect("path")])
}

fn get(k: &Kubectl, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let out = k.run(&args);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn available(k: &Kubectl, deployment: &str) -> bool {
    get(k, &["deployment", deployment])
        .and_then(|d| d["status"]["availableReplicas"].as_i64())
        .is_some_and(|n| n > 0)
}

fn condition(k: &Kubectl, t: &str) -> Option<(String, String)> {
    get(k, &["isvc", ISVC]).and_then(|o| {
        o["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter().find(|c| c["type"] == t).map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
        })
    })
}

fn backends(k: &Kubectl) -> Vec<(String, i64)> {
    get(k, &["httproute", &format!("{ISVC}-predictor")])
        .and_then(|r| r["spec"]["rules"][0]["backendRefs"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["weight"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn pod_uids(k: &Kubectl, deployment: &str) -> Vec<String> {
    get(k, &["pods", "-l", &format!("app=isvc.{deployment}")])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
        .collect()
}

/// 100 predictions through the gateway: how many answered 500.
async fn five_hundreds(s: &rollout_sandbox::Sandbox) -> usize {
    let client = reqwest::Client::new();
    let mut n = 0;
    for _ in 0..100 {
        let r = client
            .post(format!(
                "{}/v1/models/{ISVC}:predict?namespace=kserve-test",
                s.exporter_url
            ))
            .body(r#"{"instances": [[6.8, 2.8, 4.8, 1.4]]}"#)
            .send()
            .await
            .expect("predict");
        n += usize::from(r.status().as_u16() == 500);
    }
    n
}

fn enable_gateway_api(k: &Kubectl) {
    k.ok(&[
        "patch", "configmap", "inferenceservice-config", "-n", "kserve", "--type", "merge", "-p",
        r#"{"data": {"ingress": "{\"enableGatewayApi\": true, \"ingressDomain\": \"example.com\"}"}}"#,
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_then_promote_keeps_the_canary_s_pods() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().expect("dir");
    enable_gateway_api(&k);
    let out = apply(&k, dir.path(), &manifest(v2_canary(20), "", V1, json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stable, canary) = (format!("{ISVC}-predictor"), format!("{ISVC}-v2-predictor"));
    eventually(20, "both Deployments available", || {
        available(&k, &stable) && available(&k, &canary)
    })
    .await;
    eventually(10, "CanaryPredictorReady", || {
        condition(&k, "CanaryPredictorReady") == Some(("True".into(), "AllCanariesReady".into()))
    })
    .await;
    let st = get(&k, &["isvc", ISVC]).expect("isvc");
    assert_eq!(st["status"]["canaryStatuses"][0]["name"], "v2");
    assert_eq!(st["status"]["canaryStatuses"][0]["trafficPercent"], 20);
    assert!(
        st["status"]["components"]["predictor"]["traffic"].is_null(),
        "no Knative traffic in Standard mode"
    );
    assert!(st["status"]["components"]["predictor"]["latestCreatedRevision"].is_null());
    eventually(10, "HTTPRoute weights 80/20", || {
        backends(&k) == [(stable.clone(), 80), (canary.clone(), 20)]
    })
    .await;
    let errors = five_hundreds(&s).await;
    assert!(
        (10..=30).contains(&errors),
        "20% to the failing canary: {errors} of 100 answered 500"
    );

    // Promote: the stable predictor becomes v2 with the canary's model; canary: [].
    let before = pod_uids(&k, &canary);
    assert!(!before.is_empty());
    let out = apply(&k, dir.path(), &manifest(json!([]), "v2", V2, json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(20, "the old stable Deployment deleted", || {
        get(&k, &["deployment", &stable]).is_none()
    })
    .await;
    assert!(
        available(&k, &canary),
        "the former canary serves as the stable predictor"
    );
    let after = pod_uids(&k, &canary);
    assert!(
        before.iter().all(|u| after.contains(u)),
        "promotion restarted the canary's pods: {before:?} → {after:?}"
    );
    eventually(10, "one backend", || {
        backends(&k) == [(canary.clone(), 100)]
    })
    .await;
    assert!(
        condition(&k, "CanaryPredictorReady").is_none(),
        "cleared without canaries"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_and_stop_delete_the_canary() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().expect("dir");
    let (stable, canary) = (format!("{ISVC}-predictor"), format!("{ISVC}-v2-predictor"));
    let out = apply(&k, dir.path(), &manifest(v2_canary(20), "", V1, json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(20, "both available", || {
        available(&k, &stable) && available(&k, &canary)
    })
    .await;
    // Without the Gateway API (KServe's default) nothing splits: every request goes to stable.
    assert!(
        get(&k, &["httproute", &stable]).is_none(),
        "no HTTPRoute without enableGatewayApi"
    );
    assert_eq!(
        five_hundreds(&s).await,
        0,
        "the default Kubernetes Ingress sends nothing to a canary"
    );
    // Roll back: canary: [].
    let out = apply(&k, dir.path(), &manifest(json!([]), "", V1, json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(20, "the canary deleted", || {
        get(&k, &["deployment", &canary]).is_none()
    })
    .await;
    assert!(available(&k, &stable));
    assert!(condition(&k, "CanaryPredictorReady").is_none());
    // Stop with a canary: it is deleted, and CanaryPredictorReady says Stopped.
    let out = apply(&k, dir.path(), &manifest(v2_canary(20), "", V1, json!({})));
    assert!(out.status.success());
    eventually(20, "the canary back", || available(&k, &canary)).await;
    let out = apply(
        &k,
        dir.path(),
        &manifest(
            v2_canary(20),
            "",
            V1,
            json!({"serving.kserve.io/stop": "true"}),
        ),
    );
    assert!(out.status.success());
    eventually(20, "stopped", || {
        get(&k, &["deployment", &canary]).is_none()
            && condition(&k, "CanaryPredictorReady") == Some(("False".into(), "Stopped".into()))
    })
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_refuses_what_kserve_refuses() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().expect("dir");
    let knative = manifest(
        v2_canary(20),
        "",
        V1,
        json!({"serving.kserve.io/deploymentMode": "Knative"}),
    );
    let out = apply(&k, dir.path(), &knative);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("canary is only supported in Standard deployment mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let too_much = manifest(
        json!([{"trafficPercent": 60, "predictor": {"name": "v2", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": V2}}},
               {"trafficPercent": 50, "predictor": {"name": "v3", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": V2}}}]),
        "",
        V1,
        json!({}),
    );
    let out = apply(&k, dir.path(), &too_much);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("sum of canary trafficPercent values (110) must be <= 100")
    );
    // Renaming the stable predictor without a new model is refused.
    assert!(
        apply(&k, dir.path(), &manifest(json!([]), "", V1, json!({})))
            .status
            .success()
    );
    let out = apply(&k, dir.path(), &manifest(json!([]), "v9", V1, json!({})));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("predictor.name change requires a model change")
    );
    s.shutdown().await;
}
