//! What a cluster admin applies: `kubectl apply -k deploy/` (and `deploy/namespaced/`) with the
//! real kubectl, and a ClusterRole that allows every API call the controller makes during a
//! rollout, recorded by the sandbox.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::world::*;

fn kubectl(w: &World, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .arg("--kubeconfig")
        .arg(&w.sandbox.kubeconfig)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("kubectl (Debian package kubernetes-client) is required");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The Prometheus Operator's ServiceMonitor CRD, as a cluster with the operator has it (only
/// what `kubectl apply` needs: group, names, a version with an open schema).
fn servicemonitor_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                      "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

/// `(group, resource[/subresource], verb)` of a resource request path.
fn call(method: &str, path: &str, watch: bool) -> Option<(String, String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, mut rest) = match *segs.first()? {
        "api" => ("", segs.get(2..)?),
        "apis" => (*segs.get(1)?, segs.get(3..)?),
        _ => return None,
    };
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        rest = &rest[2..];
    }
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => (*rest.first()?).to_string(),
    };
    let named = rest.len() >= 2;
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

fn allows(rules: &Value, (group, resource, verb): &(String, String, String)) -> bool {
    rules.as_array().into_iter().flatten().any(|r| {
        let has = |k: &str, v: &str| {
            r[k].as_array()
                .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
        };
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_apply_k_deploy_and_the_clusterrole_allows_every_call_the_controller_makes() {
    // Istio's metrics name the arms in both deployment modes.
    let w = world_on(40.0, rollout_sandbox::exporter::Stack::Istio).await;
    let crd = w.dir.path().join("servicemonitor-crd.json");
    std::fs::write(&crd, servicemonitor_crd().to_string()).expect("write");
    kubectl(&w, &["apply", "-f", &crd.display().to_string()]);
    let out = kubectl(&w, &["apply", "-k", "deploy/"]);
    for what in [
        "customresourcedefinition.apiextensions.k8s.io/modelrollouts.rolloutctl.io",
        "namespace/rolloutctl-system",
        "serviceaccount/rolloutctl-controller",
        "clusterrole.rbac.authorization.k8s.io/rolloutctl-controller",
        "clusterrolebinding.rbac.authorization.k8s.io/rolloutctl-controller",
        "service/rolloutctl-controller-metrics",
        "deployment.apps/rolloutctl-controller",
        "servicemonitor.monitoring.coreos.com/rolloutctl-controller",
    ] {
        assert!(out.contains(what), "{what} not applied:\n{out}");
    }
    let again = kubectl(&w, &["apply", "-k", "deploy/"]);
    assert!(
        !again.contains("configured"),
        "applying again changes nothing:\n{again}"
    );
    let deployment: Value = serde_json::from_str(&kubectl(
        &w,
        &[
            "get",
            "deployment",
            "rolloutctl-controller",
            "-n",
            "rolloutctl-system",
            "-o",
            "json",
        ],
    ))
    .expect("json");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["image"], "ghcr.io/rolloutctl/rolloutctl:0.1.0");
    let role: Value = serde_json::from_str(&kubectl(
        &w,
        &["get", "clusterrole", "rolloutctl-controller", "-o", "json"],
    ))
    .expect("json");
    let rules = role["rules"].clone();
    // The namespaced variant: a Role with the same rules.
    let out = kubectl(&w, &["apply", "-k", "deploy/namespaced/"]);
    assert!(
        out.contains("role.rbac.authorization.k8s.io/rolloutctl-controller"),
        "{out}"
    );
    let ns_role: Value = serde_json::from_str(&kubectl(
        &w,
        &[
            "get",
            "role",
            "rolloutctl-controller",
            "-n",
            "kserve-test",
            "-o",
            "json",
        ],
    ))
    .expect("json");
    assert_eq!(
        ns_role["rules"], rules,
        "the Role and the ClusterRole grant the same"
    );

    // Rollouts driven by the controller, every call it makes recorded: one in Knative mode,
    // one in Standard mode (whose preflight reads the HTTPRoute).
    w.canary(json!({})).await;
    crate::standard::gateway_api(&w, true).await;
    crate::standard::deploy(&w, "iris-standard", json!({})).await;
    let istio = policy("", STEPS, "", ON).replace("  use knative\n", "  use istio\n");
    for (name, text_) in [
        ("sklearn-iris", istio.clone()),
        (
            "iris-standard",
            istio.replace(r#"name = "sklearn-iris""#, r#"name = "iris-standard""#),
        ),
    ] {
        let p = w.dir.path().join(format!("{name}.rollout"));
        std::fs::write(&p, text_).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
            .arg("apply")
            .arg(&p)
            .arg("--kubeconfig")
            .arg(&w.sandbox.kubeconfig)
            .output()
            .expect("rolloutctl apply");
        assert!(out.status.success(), "{}", text(&out));
    }
    let since = Instant::now();
    let mut c = w.controller("ctl", &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    for name in ["sklearn-iris", "iris-standard"] {
        loop {
            let phase = w.rollout_of(name).await.status.and_then(|s| s.phase);
            if phase.as_deref() == Some("promoted") {
                break;
            }
            assert!(Instant::now() < deadline, "{name} not promoted: {phase:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.signal("TERM");
    assert_eq!(c.exit(20).await, 143, "{}", c.stderr());
    let calls: BTreeSet<(String, String, String)> = w
        .sandbox
        .requests_since(since)
        .iter()
        .filter(|r| r.agent.starts_with("rolloutctl-controller/"))
        .filter_map(|r| call(&r.method, &r.path, r.watch))
        .collect();
    println!("the controller's calls: {calls:?}");
    for must in [
        ("rolloutctl.io", "modelrollouts/status", "update"),
        ("serving.kserve.io", "inferenceservices", "patch"),
        ("coordination.k8s.io", "leases", "update"),
        ("events.k8s.io", "events", "create"),
        ("gateway.networking.k8s.io", "httproutes", "get"),
    ] {
        let must = (must.0.to_string(), must.1.to_string(), must.2.to_string());
        assert!(calls.contains(&must), "recorded {must:?}: {calls:?}");
    }
    let denied: Vec<_> = calls.iter().filter(|c| !allows(&rules, c)).collect();
    assert!(
        denied.is_empty(),
        "the ClusterRole does not allow {denied:?}"
    );
    // Least privilege: everything the role grants was used.
    for r in rules.as_array().into_iter().flatten() {
        let list = |k: &str| -> Vec<String> {
            r[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        for g in list("apiGroups") {
            for res in list("resources") {
                for v in list("verbs") {
                    let grant = (g.clone(), res.clone(), v);
                    assert!(calls.contains(&grant), "granted but never used: {grant:?}");
                }
            }
        }
    }
    w.sandbox.shutdown().await;
}

#[test]
fn request_paths_map_to_rbac_resources_and_verbs() {
    let c = |m, p, w| call(m, p, w).expect("a resource request");
    let t = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    assert_eq!(
        c(
            "PUT",
            "/apis/rolloutctl.io/v1alpha1/namespaces/ns/modelrollouts/m/status",
            false
        ),
        t("rolloutctl.io", "modelrollouts/status", "update")
    );
    assert_eq!(
        c(
            "GET",
            "/apis/serving.kserve.io/v1beta1/inferenceservices",
            true
        ),
        t("serving.kserve.io", "inferenceservices", "watch")
    );
    assert_eq!(
        c(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            false
        ),
        t("coordination.k8s.io", "leases", "list")
    );
    assert_eq!(
        c("GET", "/api/v1/namespaces/ns", false),
        t("", "namespaces", "get")
    );
    assert_eq!(
        c("POST", "/apis/events.k8s.io/v1/namespaces/ns/events", false),
        t("events.k8s.io", "events", "create")
    );
    assert_eq!(call("GET", "/version", false), None);
}
