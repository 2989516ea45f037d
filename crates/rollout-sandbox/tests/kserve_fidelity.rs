//! KServe's and Knative's behaviours a canary runner depends on, each as their source
//! implements it (the sandbox's modules cite the files), driven with the machine's kubectl.

mod common;

use std::time::Duration;

use common::*;

const ISVC: &str = "sklearn-iris";

fn rev(n: u32) -> String {
    format!("sklearn-iris-predictor-{n:05}")
}

fn latest_created(k: &Kubectl) -> String {
    k.jsonpath(ISVC, "{.status.components.predictor.latestCreatedRevision}")
}

fn ready(k: &Kubectl) -> String {
    k.jsonpath(ISVC, "{.status.conditions[?(@.type=='Ready')].status}")
}

async fn v1_then_v2(k: &Kubectl) {
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "isvc/sklearn-iris",
        "--timeout=20s",
    ]);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v2.yaml"]);
    eventually(20, "v2 ready at 10%", || {
        ready(k) == "True" && latest_created(k) == rev(2)
    })
    .await;
}

fn annotate(k: &Kubectl, kv: &str) {
    k.ok(&["annotate", "--overwrite", "isvc", ISVC, kv]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn annotations_and_labels_propagate_by_exact_key_as_kserve_filters_them() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    v1_then_v2(&k).await;
    // kubectl apply wrote last-applied-configuration (disallowed); the defaulter wrote
    // modelFormat (disallowed): still two revisions.
    assert_eq!(latest_created(&k), rev(2));
    let mut n = 2;
    for (kv, creates) in [
        ("rolloutctl.io/state={\"phase\":\"holding\"}", true),
        (
            "kubectl.kubernetes.io/restartedAt=2026-12-02T10:00:00Z",
            true,
        ),
        ("autoscaling.knative.dev/min-scale=3", false),
        (
            "internal.serving.kserve.io/storage-initializer-sourceuri=gs://x",
            false,
        ),
        ("serving.knative.dev/rollout-duration=60s", false),
        ("example.com/owner=team-a", true),
    ] {
        annotate(&k, kv);
        if creates {
            n += 1;
        }
        assert_eq!(latest_created(&k), rev(n), "after annotation {kv}");
    }
    k.ok(&["label", "isvc", ISVC, "team=a"]);
    assert_eq!(
        latest_created(&k),
        rev(n + 1),
        "a label is part of the template"
    );
    k.ok(&[
        "label",
        "isvc",
        ISVC,
        "networking.knative.dev/visibility=cluster-local",
    ]);
    assert_eq!(
        latest_created(&k),
        rev(n + 1),
        "the visibility label is disallowed"
    );
    // A cluster admin extends the list in inferenceservice-config: removing the key from the
    // template is one more revision, then the annotation changes nothing.
    k.ok(&["patch", "configmap", "inferenceservice-config", "-n", "kserve", "--type=merge", "-p",
        r#"{"data":{"inferenceService":"{\"serviceAnnotationDisallowedList\":[\"rolloutctl.io/state\"]}"}}"#]);
    // (KServe re-reads the ConfigMap at its next reconcile; the sandbox reconciles every 100 ms.)
    annotate(&k, "example.com/touch=1");
    let after: u32 = latest_created(&k)
        .rsplit('-')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("revision number");
    assert!(
        after > n + 1,
        "the template lost rolloutctl.io/state: {after}"
    );
    annotate(&k, "rolloutctl.io/state={\"phase\":\"promoted\"}");
    assert_eq!(latest_created(&k), rev(after), "exempted by exact key");
    annotate(&k, "rolloutctl.io/phase=promoted");
    assert_eq!(
        latest_created(&k),
        rev(after + 1),
        "no prefix match: another key propagates"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observed_generation_is_the_knative_services_and_readiness_is_unknown_while_programming() {
    let s = sandbox_with(rollout_sandbox::Config {
        route_delay: Duration::from_secs(3),
        ready_delay: Duration::from_secs(2),
        ..fast()
    })
    .await;
    let k = Kubectl::new(&s);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    eventually(5, "a status", || !ready(&k).is_empty()).await;
    assert_eq!(
        ready(&k),
        "Unknown",
        "a revision that is not ready yet is Unknown, not False"
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "isvc/sklearn-iris",
        "--timeout=20s",
    ]);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v2.yaml"]);
    eventually(20, "v2 ready", || {
        ready(&k) == "True" && latest_created(&k) == rev(2)
    })
    .await;
    // An annotation raises the Knative Service's generation, not the InferenceService's.
    annotate(&k, "example.com/x=1");
    assert_eq!(k.jsonpath(ISVC, "{.metadata.generation}"), "2");
    assert_eq!(k.jsonpath(ISVC, "{.status.observedGeneration}"), "3");
    eventually(20, "ready again", || ready(&k) == "True").await;
    // A traffic change: status.traffic shows the new split at once, Ready is Unknown until the
    // ingress is programmed.
    k.ok(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"predictor":{"canaryTrafficPercent":25}}}"#,
    ]);
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.components.predictor.traffic[?(@.latestRevision==true)].percent}"
        ),
        "25"
    );
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.conditions[?(@.type=='PredictorRouteReady')].reason}"
        ),
        "IngressNotConfigured"
    );
    assert_eq!(ready(&k), "Unknown");
    eventually(10, "the route programmed", || ready(&k) == "True").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_validates_what_kserve_and_knative_validate() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    v1_then_v2(&k).await;
    // The defaulting webhook rewrites the legacy mode name (the validator accepts it: it is the
    // mode the status records).
    annotate(&k, "serving.kserve.io/deploymentMode=Serverless");
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.metadata.annotations.serving\\.kserve\\.io/deploymentMode}"
        ),
        "Knative"
    );
    // The CRD schema: canaryTrafficPercent is an integer.
    let out = k.run(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"predictor":{"canaryTrafficPercent":"50"}}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be of type integer"),
        "{out:?}"
    );
    // Annotations are strings.
    let out = k.run(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"n":5}}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot unmarshal number"),
        "{out:?}"
    );
    // Out of range: the InferenceService takes it, Knative's webhook refuses the service, KServe
    // reports ReconcileFailed and the traffic stays where it was (no clamping).
    k.ok(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"predictor":{"canaryTrafficPercent":150}}}"#,
    ]);
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.conditions[?(@.type=='PredictorReady')].reason}"
        ),
        "ReconcileFailed"
    );
    assert!(
        k.jsonpath(
            ISVC,
            "{.status.conditions[?(@.type=='PredictorReady')].message}"
        )
        .contains("expected 0 <= 150 <= 100")
    );
    assert_eq!(ready(&k), "False");
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.components.predictor.traffic[?(@.latestRevision==true)].percent}"
        ),
        "10"
    );
    k.ok(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"predictor":{"canaryTrafficPercent":-5}}}"#,
    ]);
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.components.predictor.latestRolledoutRevision}"
        ),
        rev(1),
        "not rolled back"
    );
    k.ok(&[
        "patch",
        "isvc",
        ISVC,
        "--type=merge",
        "-p",
        r#"{"spec":{"predictor":{"canaryTrafficPercent":10}}}"#,
    ]);
    eventually(10, "ready", || ready(&k) == "True").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_restart_at_one_when_recreated_and_can_come_from_outside_the_inferenceservice() {
    let s = sandbox().await;
    let k = Kubectl::new(&s);
    v1_then_v2(&k).await;
    // A ServingRuntime or KServe config change re-templates the service: revision 00003 takes
    // over the canary's share once ready, prev stays on 00001.
    assert!(s.retemplate("kserve-test", ISVC));
    assert_eq!(latest_created(&k), rev(3));
    eventually(20, "00003 serves the canary share", || {
        k.jsonpath(
            ISVC,
            "{.status.components.predictor.traffic[?(@.latestRevision==true)].revisionName}",
        ) == rev(3)
    })
    .await;
    assert_eq!(
        k.jsonpath(
            ISVC,
            "{.status.components.predictor.traffic[?(@.tag=='prev')].revisionName}"
        ),
        rev(1)
    );
    assert_eq!(
        k.jsonpath(ISVC, "{.metadata.generation}"),
        "2",
        "nothing written to the InferenceService"
    );
    k.ok(&["delete", "isvc", ISVC]);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    // (The first reconcile adds KServe's finalizer; the status follows.)
    eventually(10, "a revision", || !latest_created(&k).is_empty()).await;
    assert_eq!(
        latest_created(&k),
        rev(1),
        "numbering restarts with the object"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown().await;
}
