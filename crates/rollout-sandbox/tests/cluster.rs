//! The sandbox as a Kubernetes API server, judged by the machine's kubectl: real namespaces,
//! CustomResourceDefinitions applied with `kubectl apply` and then served (discovery, OpenAPI,
//! schema, status subresource, printer columns, watch, describe), garbage collection.

mod common;

use common::*;
use serde_json::Value;

const MRO: &str = r#"apiVersion: rolloutctl.io/v1alpha1
kind: ModelRollout
metadata:
  name: sklearn-iris
  namespace: kserve-test
spec:
  policy: "rollout \"x\" {}"
  notAField: 1
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_are_real() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let ns = k.ok(&["get", "ns"]);
    for n in ["default", "kube-system", "kserve-test", "kserve"] {
        assert!(ns.contains(n), "namespace {n} missing:\n{ns}");
    }
    assert!(ns.contains("Active"), "{ns}");
    // A write to a missing namespace is a 404, as on a real API server.
    let out = k.run(&[
        "apply",
        "-n",
        "team-a",
        "-f",
        "examples/kserve/sklearn-iris-v1.yaml",
    ]);
    assert!(!out.status.success());
    let out = k.run(&["create", "configmap", "c", "-n", "team-a"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespaces \"team-a\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        "team-a",
        "--from-literal=a=b",
    ]);
    assert_eq!(
        k.ok(&["get", "cm", "c", "-n", "team-a", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    // Deleting the namespace deletes what is in it.
    k.ok(&["delete", "namespace", "team-a"]);
    assert!(!k.run(&["get", "cm", "c", "-n", "team-a"]).status.success());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_applied_crd_is_served_with_its_schema_status_columns_and_watch() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().expect("dir");
    // Not served before the CRD is applied.
    assert!(!k.run(&["get", "modelrollouts"]).status.success());
    k.ok(&["apply", "-f", "deploy/crd.yaml"]);
    assert_eq!(
        k.ok(&[
            "get",
            "crd",
            "modelrollouts.rolloutctl.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        ]),
        "True"
    );
    let resources = k.ok(&["api-resources", "--api-group=rolloutctl.io"]);
    assert!(
        resources.contains("modelrollouts") && resources.contains("mro"),
        "{resources}"
    );
    // Created through the CRD's schema: unknown fields pruned, defaults applied.
    let file = write(&dir, "mro.yaml", MRO);
    k.ok(&["apply", "-f", &file]);
    let obj: Value = serde_json::from_str(&k.ok(&[
        "get",
        "mro",
        "sklearn-iris",
        "-n",
        "kserve-test",
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(obj["spec"]["policy"], "rollout \"x\" {}");
    assert_eq!(
        obj["spec"].get("notAField"),
        None,
        "pruned as the API server prunes"
    );
    assert_eq!(obj["metadata"]["generation"], 1);
    // A wrong type is a 422 that changes nothing.
    let out = k.run(&[
        "patch",
        "mro",
        "sklearn-iris",
        "-n",
        "kserve-test",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":"yes"}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.paused in body must be of type boolean"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The status subresource: a write to the main resource keeps it; /status changes only it.
    k.ok(&["patch", "mro", "sklearn-iris", "-n", "kserve-test", "--subresource=status", "--type=merge",
        "-p", r#"{"status":{"phase":"holding","stepProgress":"2/7","traffic":10,"canaryRevision":"a-00002","stableRevision":"a-00001",
                 "conditions":[{"type":"Progressing","status":"True","reason":"Holding","message":"step 2","lastTransitionTime":"2026-12-01T00:00:00Z"}]}}"#]);
    let table = k.ok(&["get", "mro", "-n", "kserve-test"]);
    for col in [
        "PHASE", "STEP", "TRAFFIC", "CANARY", "STABLE", "AGE", "holding", "2/7", "a-00002",
        "a-00001",
    ] {
        assert!(table.contains(col), "{col} missing:\n{table}");
    }
    assert_eq!(
        k.ok(&[
            "get",
            "mro",
            "sklearn-iris",
            "-n",
            "kserve-test",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "1",
        "status writes leave the generation"
    );
    k.ok(&[
        "patch",
        "mro",
        "sklearn-iris",
        "-n",
        "kserve-test",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":true},"status":{"phase":"ignored"}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "mro",
            "sklearn-iris",
            "-n",
            "kserve-test",
            "-o",
            "jsonpath={.status.phase}/{.metadata.generation}"
        ]),
        "holding/2"
    );
    let describe = k.ok(&["describe", "mro", "sklearn-iris", "-n", "kserve-test"]);
    assert!(
        describe.contains("Conditions") && describe.contains("Progressing"),
        "{describe}"
    );
    // A watch through the CRD's printer columns.
    let watcher = std::process::Command::new("timeout")
        .args([
            "6",
            "kubectl",
            "get",
            "mro",
            "-n",
            "kserve-test",
            "-w",
            "--output-watch-events",
        ])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    k.ok(&[
        "patch",
        "mro",
        "sklearn-iris",
        "-n",
        "kserve-test",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"promoted"}}"#,
    ]);
    let watched = watcher.wait_with_output().expect("watch");
    let watched = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.contains("MODIFIED") && watched.contains("promoted"),
        "{watched}"
    );
    // Deleting the CRD removes its resources.
    k.ok(&["delete", "crd", "modelrollouts.rolloutctl.io"]);
    assert!(!k.run(&["get", "mro", "-n", "kserve-test"]).status.success());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependents_are_garbage_collected_with_their_owner() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let dir = tempfile::tempdir().expect("dir");
    k.ok(&["apply", "-f", "deploy/crd.yaml"]);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    let uid = k.jsonpath("sklearn-iris", "{.metadata.uid}");
    let owned = MRO.replace(
        "  namespace: kserve-test\n",
        &format!("  namespace: kserve-test\n  ownerReferences:\n  - apiVersion: serving.kserve.io/v1beta1\n    kind: InferenceService\n    name: sklearn-iris\n    uid: {uid}\n"),
    );
    k.ok(&["apply", "-f", &write(&dir, "owned.yaml", &owned)]);
    // KServe's finalizer holds the InferenceService until its controller lets go of it.
    assert_eq!(
        k.jsonpath("sklearn-iris", "{.metadata.finalizers[0]}"),
        "inferenceservice.finalizers"
    );
    k.ok(&["delete", "isvc", "sklearn-iris"]);
    eventually(10, "the ModelRollout collected", || {
        !k.run(&["get", "mro", "sklearn-iris", "-n", "kserve-test"])
            .status
            .success()
    })
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shipped_crd_and_run_rbac_apply_with_kubectl() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    let out = k.ok(&[
        "apply",
        "-f",
        "deploy/crd.yaml",
        "-f",
        "deploy/rbac-run.yaml",
    ]);
    for what in [
        "customresourcedefinition.apiextensions.k8s.io/modelrollouts.rolloutctl.io",
        "serviceaccount/rolloutctl",
        "role.rbac.authorization.k8s.io/rolloutctl-run",
        "rolebinding.rbac.authorization.k8s.io/rolloutctl-run",
    ] {
        assert!(out.contains(what), "{what} not applied:\n{out}");
    }
    // Applying again changes nothing.
    let again = k.ok(&[
        "apply",
        "-f",
        "deploy/crd.yaml",
        "-f",
        "deploy/rbac-run.yaml",
    ]);
    assert!(again.contains("unchanged"), "{again}");
    // The Role grants every call `rolloutctl run` makes (crates/rollout-runner: isvc.rs,
    // reconcile.rs, run.rs, lease.rs) and nothing cluster-wide.
    let role: Value = serde_json::from_str(&k.ok(&[
        "get",
        "role",
        "rolloutctl-run",
        "-n",
        "kserve-test",
        "-o",
        "json",
    ]))
    .expect("json");
    let allows = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().into_iter().flatten().any(|r| {
            let has = |k: &str, v: &str| r[k].as_array().is_some_and(|a| a.iter().any(|x| x == v));
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    for (group, resource, verbs) in [
        (
            "serving.kserve.io",
            "inferenceservices",
            &["get", "list", "watch", "patch"][..],
        ),
        (
            "rolloutctl.io",
            "modelrollouts",
            &["get", "list", "watch", "create", "patch"][..],
        ),
        ("rolloutctl.io", "modelrollouts/status", &["update"][..]),
        (
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"][..],
        ),
        ("events.k8s.io", "events", &["create"][..]),
        ("gateway.networking.k8s.io", "httproutes", &["get"][..]),
    ] {
        for v in verbs {
            assert!(
                allows(group, resource, v),
                "{group} {resource} {v} not granted"
            );
        }
    }
    assert!(
        !allows("serving.kserve.io", "inferenceservices", "update"),
        "no whole-object writes"
    );
    assert!(!allows("", "secrets", "get"), "no secrets");
    s.shutdown().await;
}
