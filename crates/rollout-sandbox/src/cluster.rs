//! The cluster's controllers at work: what is reconciled after a write, KServe's (and
//! Knative's) reconcile of every InferenceService, the data plane's tick of requests, and what
//! a cluster with KServe installed holds from the start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kserve::Timing;
use crate::store::Key;
use crate::types::ids;
use crate::{Shared, dataplane, kserve, kserve_crd, owned};

/// What is reconciled after these objects changed. KServe's controller reconciles an
/// InferenceService on its own events and those of what it owns
/// (`pkg/controller/v1beta1/inferenceservice/controller.go:624-680`, `SetupWithManager`: `For`
/// InferenceService, `Owns` Deployment, Service, Knative Service), never after a Lease, Event
/// or other custom resource (a ModelRollout) changed: neither does the sandbox. After a change
/// to a type KServe reads but does not watch (ConfigMaps, namespaces, ServingRuntimes) the
/// sandbox reconciles every InferenceService at once, where KServe waits for the next event of
/// each: a known divergence (docs/sandbox.md, "What it does not emulate").
pub(crate) fn reconcile_touched(s: &mut Shared, touched: &[Key]) {
    let affects_all = |k: &Key| {
        k.res == ids::CONFIGMAPS
            || k.res == ids::NAMESPACES
            || (k.res != ids::ISVC
                && (k.res.ends_with(".serving.kserve.io") || k.res.ends_with(".knative.dev")))
    };
    if touched.iter().any(affects_all) {
        reconcile_all(s);
        return;
    }
    let mut isvcs: Vec<Key> = touched
        .iter()
        .filter(|k| k.res == ids::ISVC)
        .cloned()
        .collect();
    isvcs.sort();
    isvcs.dedup();
    if !isvcs.is_empty() {
        reconcile(s, isvcs);
    }
}

/// The controller loop body: KServe (and Knative under it) reconciles every
/// InferenceService; its writes (finalizers, status) are not counted as client writes.
pub(crate) fn reconcile_all(s: &mut Shared) {
    let keys = s.store.keys(ids::ISVC);
    reconcile(s, keys);
}

/// [`reconcile_all`] for some InferenceServices.
fn reconcile(s: &mut Shared, keys: Vec<Key>) {
    let now = Instant::now();
    let timing = Timing {
        ready_delay: s.config.ready_delay,
        route_delay: s.config.route_delay,
        behaviour: s.config.behaviour,
    };
    let config = s
        .store
        .get(&Key::new(
            ids::CONFIGMAPS,
            "kserve",
            "inferenceservice-config",
        ))
        .ok()
        .map(|c| c["data"].clone());
    s.store.counting = false;
    for key in keys {
        let Some(obj) = s.store.peek(&key) else {
            continue;
        };
        let r = s.controller.reconcile(obj, config.as_ref(), now, timing);
        let generation = r
            .owned
            .as_ref()
            .and_then(|owned| owned::apply(&mut s.store, &key.ns, &key.name, owned));
        if r.add_finalizer || r.remove_finalizer {
            let _ = s.store.modify(&key, false, |o| {
                let mut f: Vec<Value> = o["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                f.retain(|x| x != kserve::FINALIZER);
                if r.add_finalizer {
                    f.push(json!(kserve::FINALIZER));
                }
                o["metadata"]["finalizers"] = json!(f);
                Ok(())
            });
            continue;
        }
        let mut status = r.status;
        if r.owned.is_some()
            && let Some(st) = status.as_mut()
        {
            // The stable Deployment's, as KServe reports it in Standard mode.
            st["observedGeneration"] = json!(generation.unwrap_or(0));
        }
        let status_changed = match (&status, s.store.peek(&key)) {
            (Some(st), Some(o)) => o.get("status") != Some(st),
            _ => false,
        };
        if let Some(status) = status
            && status_changed
        {
            let _ = s.store.modify(&key, true, |o| {
                o["status"] = status;
                Ok(())
            });
        }
    }
    s.store.counting = true;
}

/// One tick of the data plane: generate `dt` of requests for every InferenceService, split as
/// the ingress serves them.
pub(crate) fn generate(s: &mut Shared, dt: Duration) {
    let mut live: HashMap<(String, String), Vec<String>> = HashMap::new();
    for key in s.store.keys(ids::ISVC) {
        let Some(obj) = s.store.peek(&key) else {
            continue;
        };
        let rps = dataplane::rps(obj, s.config.rps);
        if matches!(kserve::mode(obj).as_str(), "Standard" | "RawDeployment") {
            s.metrics
                .standard
                .insert((key.ns.clone(), key.name.clone()));
        } else {
            s.metrics
                .standard
                .remove(&(key.ns.clone(), key.name.clone()));
        }
        let traffic = s.controller.serving(&key.ns, &key.name);
        live.insert(
            (key.ns.clone(), key.name.clone()),
            traffic.iter().map(|(r, _)| r.clone()).collect(),
        );
        if s.config.analytic {
            let total: f64 = traffic.iter().map(|(_, p)| *p).sum();
            for (rev, p) in &traffic {
                if total > 0.0 {
                    let b = s.controller.behaviour(rev);
                    let n = rps * dt.as_secs_f64() * p / total;
                    s.metrics.record_expected(&key.ns, &key.name, rev, &b, n);
                }
            }
            continue;
        }
        let n = dataplane::poisson(&mut s.rng, rps * dt.as_secs_f64());
        for _ in 0..n {
            let Some(rev) = dataplane::pick(&mut s.rng, &traffic).map(str::to_string) else {
                break;
            };
            let b = s.controller.behaviour(&rev);
            let o = dataplane::sample(&mut s.rng, &b);
            s.metrics.record(&key.ns, &key.name, &rev, o);
        }
    }
    s.metrics.retain(&live);
}

/// What a cluster with KServe installed has from the start: its namespaces, KServe's
/// InferenceService CRD and `inferenceservice-config`, and the configured CRDs.
pub(crate) fn seed(s: &mut Shared) {
    for ns in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "kserve",
        "kserve-test",
    ] {
        s.store.seed(
            Key::new(ids::NAMESPACES, "", ns),
            json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        );
    }
    let mut crds = vec![kserve_crd::crd()];
    crds.extend(s.config.crds.iter().cloned());
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        s.store.seed(Key::new(ids::CRDS, "", &name), crd);
    }
    s.store.seed(
        Key::new(ids::CONFIGMAPS, "kserve", "inferenceservice-config"),
        json!({"metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
               "data": kserve::default_config_data()}),
    );
    s.store.writes.clear();
}
