"""KServe's own canary material, run through the `kserve` Python SDK (0.20.0, with
kubernetes 32.0.1) against the sandbox:

1. the walkthrough of kserve/kserve `docs/samples/v1beta1/rollout/README.md` (default,
   canary, promotion, pinned, tag-based routing), asserting what the README shows;
2. the flow of `test/e2e/predictor/test_canary.py` (`test_canary_rollout` with a
   `tensorflow:` predictor and `test_canary_rollout_runtime` with `model:`), asserting what
   that test asserts;
3. the Standard-mode canary of `test/e2e/predictor/test_canary_raw_deployment.py` (KServe
   master; `spec.canary[]`): create, promote without restarting the canary's pods, roll back,
   force-stop, asserting what that test asserts except the HTTP split (the Gateway API is off,
   KServe's default; the kubectl test covers the split).

The manifests are the walkthrough's (names, storage URIs, percentages), written as SDK
objects. KUBECONFIG points at the sandbox. Exits non-zero on the first failed assertion.
"""

import os
import sys
import time

from kubernetes import client
from kubernetes.client import V1ResourceRequirements

from kserve import (
    KServeClient,
    V1beta1CanarySpec,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
    V1beta1TFServingSpec,
    constants,
)

KSERVE_TEST_NAMESPACE = "kserve-test"
FLOWERS = "gs://kfserving-examples/models/tensorflow/flowers"
FLOWERS_2 = "gs://kfserving-examples/models/tensorflow/flowers-2"

kserve_client = KServeClient(config_file=os.environ["KUBECONFIG"])


def isvc(name, namespace, predictor, annotations=None):
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, annotations=annotations),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def tf(uri, canary=None):
    return V1beta1PredictorSpec(
        canary_traffic_percent=canary, tensorflow=V1beta1TFServingSpec(storage_uri=uri)
    )


def predictor_status(name, namespace):
    return kserve_client.get(name, namespace=namespace)["status"]["components"]["predictor"]


def traffic(name, namespace):
    return [
        (t["revisionName"], t["percent"], t.get("tag", ""), t.get("latestRevision"))
        for t in predictor_status(name, namespace)["traffic"]
    ]


def eventually(what, check, seconds=20):
    deadline = time.time() + seconds
    while True:
        try:
            if check():
                return
        except (KeyError, TypeError):
            pass
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.2)


def walkthrough():
    name, ns = "my-model", "default"
    rev = lambda n: "my-model-predictor-%05d" % n
    # default.yaml: 100% to revision 1.
    kserve_client.create(isvc(name, ns, tf(FLOWERS)))
    kserve_client.wait_isvc_ready(name, namespace=ns, polling_interval=1, timeout_seconds=60)
    assert traffic(name, ns) == [(rev(1), 100, "", True)], traffic(name, ns)
    # canary.yaml: 10% to the latest ready revision 2, 90% to the previously rolled out one.
    kserve_client.replace(name, isvc(name, ns, tf(FLOWERS_2, canary=10)), namespace=ns)
    eventually("10/90", lambda: traffic(name, ns) == [(rev(2), 10, "", True), (rev(1), 90, "prev", False)])
    st = predictor_status(name, ns)
    assert st["latestRolledoutRevision"] == rev(1), st
    assert st["latestReadyRevision"] == rev(2), st
    # promotion.yaml: no canaryTrafficPercent, all traffic to revision 2.
    kserve_client.replace(name, isvc(name, ns, tf(FLOWERS_2)), namespace=ns)
    eventually("promoted", lambda: traffic(name, ns) == [(rev(2), 100, "", True)])
    st = predictor_status(name, ns)
    assert st["latestRolledoutRevision"] == rev(2), st
    assert st["previousRolledoutRevision"] == rev(1), st
    # pinned.yaml: canaryTrafficPercent 0, all traffic back to the previous good revision 1.
    kserve_client.replace(name, isvc(name, ns, tf(FLOWERS_2, canary=0)), namespace=ns)
    eventually("pinned", lambda: traffic(name, ns) == [(rev(2), 0, "", True), (rev(1), 100, "prev", False)])
    assert predictor_status(name, ns)["latestRolledoutRevision"] == rev(1)
    # Tag based routing: the annotation alone makes revision 3; tagged URLs for both.
    tagged = isvc(name, ns, tf(FLOWERS_2, canary=10), {"serving.kserve.io/enable-tag-routing": "true"})
    kserve_client.replace(name, tagged, namespace=ns)
    eventually("tag routing", lambda: predictor_status(name, ns)["latestReadyRevision"] == rev(3))
    st = predictor_status(name, ns)
    assert st["latestCreatedRevision"] == rev(3), st
    assert st["latestRolledoutRevision"] == rev(1) and st["previousRolledoutRevision"] == rev(1), st
    t = st["traffic"]
    assert t[0] == {
        "latestRevision": True, "percent": 10, "revisionName": rev(3), "tag": "latest",
        "url": "http://latest-my-model-predictor.default.example.com",
    }, t
    assert t[1]["percent"] == 90 and t[1]["revisionName"] == rev(1) and t[1]["tag"] == "prev", t
    assert t[1]["url"] == "http://prev-my-model-predictor.default.example.com", t
    kserve_client.delete(name, namespace=ns)
    print("PASS walkthrough docs/samples/v1beta1/rollout")


def canary_flow(service_name, implementation):
    """test_canary.py: create, wait ready, patch to a 10% canary, wait for the patched
    generation, assert the latest revision's percent, delete."""
    resources = V1ResourceRequirements(
        requests={"cpu": "10m", "memory": "128Mi"}, limits={"cpu": "100m", "memory": "256Mi"}
    )
    default_spec = V1beta1PredictorSpec(min_replicas=1, **implementation(FLOWERS, resources))
    kserve_client.create(isvc(service_name, KSERVE_TEST_NAMESPACE, default_spec))
    kserve_client.wait_isvc_ready(service_name, namespace=KSERVE_TEST_NAMESPACE, polling_interval=1, timeout_seconds=60)
    canary_spec = V1beta1PredictorSpec(canary_traffic_percent=10, **implementation(FLOWERS_2, resources))
    patch_response = kserve_client.patch(
        service_name, isvc(service_name, KSERVE_TEST_NAMESPACE, canary_spec), namespace=KSERVE_TEST_NAMESPACE
    )
    kserve_client.wait_isvc_ready(
        service_name,
        namespace=KSERVE_TEST_NAMESPACE,
        expected_generation=patch_response["metadata"]["generation"],
        polling_interval=1,
        timeout_seconds=60,
    )
    canary_isvc = kserve_client.get(service_name, namespace=KSERVE_TEST_NAMESPACE)
    latest = [t for t in canary_isvc["status"]["components"]["predictor"]["traffic"] if t["latestRevision"]]
    assert latest and all(t["percent"] == 10 for t in latest), canary_isvc["status"]
    kserve_client.delete(service_name, namespace=KSERVE_TEST_NAMESPACE)
    print("PASS test_canary.py flow:", service_name)


def tensorflow(uri, resources):
    return {"tensorflow": V1beta1TFServingSpec(storage_uri=uri, resources=resources)}


def runtime(uri, resources):
    return {
        "model": V1beta1ModelSpec(
            model_format=V1beta1ModelFormat(name="tensorflow"), storage_uri=uri, resources=resources
        )
    }


SKLEARN_1 = "gs://kfserving-examples/models/sklearn/1.0/model"
SKLEARN_MIXED = "gs://kfserving-examples/models/sklearn/1.3/mixedtype"
RAW = {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "none"}


def sklearn(uri):
    return V1beta1ModelSpec(model_format=V1beta1ModelFormat(name="sklearn"), storage_uri=uri)


def raw_isvc(name, predictor, canary, annotations=None):
    o = isvc(name, KSERVE_TEST_NAMESPACE, predictor, {**RAW, **(annotations or {})})
    o.spec.canary = canary
    return o


def deployment(name):
    try:
        return client.AppsV1Api(kserve_client.api_instance.api_client).read_namespaced_deployment(
            name, KSERVE_TEST_NAMESPACE
        )
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return None
        raise


def available(name):
    d = deployment(name)
    return d is not None and (d.status.available_replicas or 0) > 0


def pod_uids(name):
    d = deployment(name)
    selector = ",".join(f"{k}={v}" for k, v in d.spec.selector.match_labels.items())
    pods = client.CoreV1Api(kserve_client.api_instance.api_client).list_namespaced_pod(
        KSERVE_TEST_NAMESPACE, label_selector=selector
    )
    return {p.metadata.uid for p in pods.items}


def canary_condition(name):
    status = kserve_client.get(name, namespace=KSERVE_TEST_NAMESPACE)["status"]
    return next((c for c in status.get("conditions", []) if c["type"] == "CanaryPredictorReady"), None)


def raw_canary_flow():
    """test_canary_raw_deployment.py: create with a 20% canary v2, promote, roll back, stop."""
    name = "isvc-raw-canary"
    stable = V1beta1PredictorSpec(min_replicas=2, model=sklearn(SKLEARN_1))
    canary = [V1beta1CanarySpec(traffic_percent=20, predictor=V1beta1PredictorSpec(name="v2", model=sklearn(SKLEARN_MIXED)))]
    kserve_client.create(raw_isvc(name, stable, canary))
    kserve_client.wait_isvc_ready(name, namespace=KSERVE_TEST_NAMESPACE, polling_interval=1, timeout_seconds=60)
    eventually("both Deployments available", lambda: available(f"{name}-predictor") and available(f"{name}-v2-predictor"))
    cond = canary_condition(name)
    assert cond and cond["status"] == "True" and cond["reason"] == "AllCanariesReady", cond
    status = kserve_client.get(name, namespace=KSERVE_TEST_NAMESPACE)["status"]
    assert status["canaryStatuses"][0]["name"] == "v2", status
    # Promote: the stable predictor becomes v2 with the canary's model; the canary list is emptied.
    before = pod_uids(f"{name}-v2-predictor")
    promoted = V1beta1PredictorSpec(name="v2", min_replicas=2, model=sklearn(SKLEARN_MIXED))
    r = kserve_client.patch(name, raw_isvc(name, promoted, []), namespace=KSERVE_TEST_NAMESPACE)
    kserve_client.wait_isvc_ready(
        name, namespace=KSERVE_TEST_NAMESPACE, expected_generation=r["metadata"]["generation"],
        polling_interval=1, timeout_seconds=60,
    )
    eventually("the old stable Deployment gone", lambda: deployment(f"{name}-predictor") is None)
    assert available(f"{name}-v2-predictor")
    after = pod_uids(f"{name}-v2-predictor")
    assert before <= after, (before, after)
    kserve_client.delete(name, namespace=KSERVE_TEST_NAMESPACE)
    eventually("deleted", lambda: deployment(f"{name}-v2-predictor") is None)
    # Roll back: the original stable spec and `canary: []`.
    kserve_client.create(raw_isvc(name, stable, canary))
    kserve_client.wait_isvc_ready(name, namespace=KSERVE_TEST_NAMESPACE, polling_interval=1, timeout_seconds=60)
    eventually("the canary available", lambda: available(f"{name}-v2-predictor"))
    kserve_client.patch(name, raw_isvc(name, stable, []), namespace=KSERVE_TEST_NAMESPACE)
    eventually("the canary Deployment deleted", lambda: deployment(f"{name}-v2-predictor") is None)
    assert available(f"{name}-predictor")
    eventually("CanaryPredictorReady cleared", lambda: canary_condition(name) is None)
    # Force stop with a canary.
    kserve_client.patch(name, raw_isvc(name, stable, canary), namespace=KSERVE_TEST_NAMESPACE)
    eventually("the canary back", lambda: available(f"{name}-v2-predictor"))
    kserve_client.patch(
        name, raw_isvc(name, stable, canary, {"serving.kserve.io/stop": "true"}), namespace=KSERVE_TEST_NAMESPACE
    )
    eventually(
        "stopped",
        lambda: deployment(f"{name}-v2-predictor") is None
        and (canary_condition(name) or {}).get("reason") == "Stopped",
    )
    kserve_client.delete(name, namespace=KSERVE_TEST_NAMESPACE)
    print("PASS test_canary_raw_deployment.py flow:", name)


if __name__ == "__main__":
    walkthrough()
    canary_flow("isvc-canary", tensorflow)
    canary_flow("isvc-canary-runtime", runtime)
    raw_canary_flow()
    sys.exit(0)
