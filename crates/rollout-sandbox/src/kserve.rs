//! The KServe controller, emulated for InferenceServices in Knative mode: from an
//! InferenceService and the `inferenceservice-config` ConfigMap to the desired Knative Service
//! (template and traffic), and from the Knative Service's status back to the InferenceService's
//! status. Sources (kserve/kserve v0.20):
//!
//! - annotations and labels: `pkg/controller/v1beta1/inferenceservice/components/predictor.go`
//!   `buildPredictorResources` / `buildObjectMeta` filter them through the exact-key disallow
//!   lists of `pkg/constants/constants.go:537-547` plus the ConfigMap's
//!   `serviceAnnotationDisallowedList` / `serviceLabelDisallowedList`
//!   (`pkg/apis/serving/v1beta1/configmap.go:239-252`, re-read on every reconcile); everything
//!   else goes into the revision template (`reconcilers/knative/ksvc_reconciler.go:102-205`),
//!   except `serving.knative.dev/rollout-duration`, which moves to the Knative Service itself;
//! - traffic: `ksvc_reconciler.go:134-153` (`canaryTrafficPercent` splits between the latest
//!   revision and `latestRolledoutRevision`, tagged `prev`, only once something was rolled out);
//! - status: `pkg/apis/serving/v1beta1/inference_service_status.go` `PropagateStatus`
//!   (rolled-out bookkeeping, `observedGeneration` is the Knative Service's, line 635) and
//!   `PropagateRawStatusWithMessages` (`ReconcileFailed` when Knative rejects the service,
//!   `predictor.go:242-244`); `IngressReady` follows `PredictorReady`
//!   (`reconcilers/ingress/ingress_reconciler.go:484-497`);
//! - the finalizer `inferenceservice.finalizers` (`controller.go:176-190`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::knative::{self, Cond, Service, Target};
use crate::propagation::string_map;
pub use crate::propagation::{
    DEFAULT_ANNOTATION_DISALLOWED, DEFAULT_LABEL_DISALLOWED, Disallowed, default_config_data,
    disallowed, storage_uri, template,
};

/// Annotation prefix for sandbox behaviour (error rate, latency, readiness, request rate).
pub const ANNOTATION_PREFIX: &str = "sandbox.rolloutctl.io/";
/// KServe's finalizer.
pub const FINALIZER: &str = "inferenceservice.finalizers";
/// The ingress domain (Knative's default for KServe's quick start).
pub const DOMAIN: &str = "example.com";

/// How a revision behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Behaviour {
    /// Probability that a request returns 500.
    pub error_rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            error_rate: 0.0,
            p50_ms: 40.0,
            p95_ms: 120.0,
        }
    }
}

fn behaviour_from(ann: &Map<String, Value>, default: Behaviour) -> Behaviour {
    let num = |k: &str| -> Option<f64> {
        ann.get(&format!("{ANNOTATION_PREFIX}{k}"))
            .and_then(Value::as_str)
            .and_then(|s| s.trim().trim_end_matches('%').parse().ok())
    };
    let mut b = default;
    if let Some(e) = ann
        .get(&format!("{ANNOTATION_PREFIX}error-rate"))
        .and_then(Value::as_str)
        && let Some(v) = num("error-rate")
    {
        let pct = e.trim().ends_with('%');
        b.error_rate = if pct { v / 100.0 } else { v }.clamp(0.0, 1.0);
    }
    if let Some(v) = num("latency-p50-ms") {
        b.p50_ms = v.max(0.1);
    }
    if let Some(v) = num("latency-p95-ms") {
        b.p95_ms = v.max(b.p50_ms);
    }
    b
}

/// The deployment mode of an InferenceService: the status's, else the annotation's (after the
/// defaulting webhook), else Knative.
pub fn mode(obj: &Value) -> String {
    obj.pointer("/status/deploymentMode")
        .and_then(Value::as_str)
        .or_else(|| {
            obj.pointer("/metadata/annotations/serving.kserve.io~1deploymentMode")
                .and_then(Value::as_str)
        })
        .unwrap_or("Knative")
        .to_string()
}

/// Controller state of one InferenceService.
#[derive(Clone, Debug)]
pub struct IsvcState {
    /// The object's uid: a re-created InferenceService starts afresh (revision 00001).
    pub uid: String,
    /// Its predictor's Knative Service.
    pub service: Service,
    /// Revisions forced from outside the InferenceService (ServingRuntime or config changes).
    pub retemplates: u64,
    /// Standard mode: when the Deployment became available.
    pub created: Instant,
    /// Standard mode: its Deployments and routes.
    pub standard: crate::standard::State,
}

/// What one reconcile decided.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The new status (`None`: leave it).
    pub status: Option<Value>,
    /// Add KServe's finalizer.
    pub add_finalizer: bool,
    /// Remove KServe's finalizer (the object is being deleted).
    pub remove_finalizer: bool,
    /// Standard mode: the objects KServe keeps (Deployments, Services, HTTPRoute) and the
    /// stable Deployment; `None` in Knative mode.
    pub owned: Option<crate::owned::Owned>,
}

/// Settings of the emulation.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a new revision takes to become ready.
    pub ready_delay: Duration,
    /// How long the ingress takes to program a traffic change.
    pub route_delay: Duration,
    /// Behaviour of revisions without behaviour annotations.
    pub behaviour: Behaviour,
}

/// Controller state per InferenceService (namespace, name).
#[derive(Debug, Default)]
pub struct Controller {
    /// Per InferenceService.
    pub isvcs: HashMap<(String, String), IsvcState>,
    /// Revisions made to fail readiness by the control interface.
    pub failing: Vec<String>,
    /// Behaviour overrides by revision name, from the control interface.
    pub overrides: HashMap<String, Behaviour>,
    /// Behaviour by revision name, from the template the revision was created from.
    pub behaviours: HashMap<String, Behaviour>,
    /// The disallow lists parsed from the last `inferenceService` config text seen (parsed
    /// again only when the text changes).
    disallowed: Option<(String, Disallowed)>,
}

fn condition(t: &str, c: &knative::Condition, info: bool, now: &str) -> Value {
    let mut v = json!({"type": t, "status": c.status.as_str(), "lastTransitionTime": now});
    if !c.reason.is_empty() {
        v["reason"] = json!(c.reason);
    }
    if !c.message.is_empty() {
        v["message"] = json!(c.message);
    }
    if info {
        v["severity"] = json!("Info");
    }
    v
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn keep_times(old: &Value, status: &mut Value) {
    if let Some(old_conds) = old.pointer("/status/conditions").and_then(Value::as_array)
        && let Some(new_conds) = status["conditions"].as_array_mut()
    {
        for c in new_conds {
            if let Some(o) = old_conds
                .iter()
                .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
            {
                c["lastTransitionTime"] = o["lastTransitionTime"].clone();
            }
        }
    }
}

/// The overall `Ready` of KServe's living condition set: `PredictorReady` and `IngressReady`.
fn ready_of(deps: &[&knative::Condition]) -> knative::Condition {
    deps.iter()
        .find(|c| c.status == Cond::False)
        .or_else(|| deps.iter().find(|c| c.status == Cond::Unknown))
        .map(|c| (*c).clone())
        .unwrap_or(knative::Condition {
            status: Cond::True,
            reason: String::new(),
            message: String::new(),
        })
}

impl Controller {
    /// One reconcile of an InferenceService. `config` is the `inferenceservice-config`
    /// ConfigMap's data (`None`: the ConfigMap is missing and the reconcile fails).
    pub fn reconcile(
        &mut self,
        obj: &Value,
        config: Option<&Value>,
        now: Instant,
        timing: Timing,
    ) -> Reconciled {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let key = (ns.clone(), name.clone());
        let finalizers: Vec<&str> = obj["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if obj["metadata"]["deletionTimestamp"].is_string() {
            self.isvcs.remove(&key);
            return Reconciled {
                remove_finalizer: finalizers.contains(&FINALIZER),
                // The garbage collector deletes what the InferenceService owned (its
                // Deployments, Services, pods and HTTPRoute carry an ownerReference to it).
                owned: Some(crate::owned::Owned::default()),
                ..Reconciled::default()
            };
        }
        if !finalizers.contains(&FINALIZER) {
            return Reconciled {
                add_finalizer: true,
                ..Reconciled::default()
            };
        }
        let Some(lists) = config.and_then(|c| self.lists(c)) else {
            return Reconciled::default();
        };
        let service_name = format!("{name}-predictor");
        if self.isvcs.get(&key).is_none_or(|s| s.uid != uid) {
            self.isvcs.insert(
                key.clone(),
                IsvcState {
                    uid: uid.clone(),
                    service: Service::new(&service_name, now),
                    retemplates: 0,
                    created: now,
                    standard: crate::standard::State::default(),
                },
            );
        }
        let now_ts = crate::store::now_rfc3339();
        let standard = matches!(mode(obj).as_str(), "Standard" | "RawDeployment");
        let failing = self.failing.clone();
        let Some(st) = self.isvcs.get_mut(&key) else {
            return Reconciled::default();
        };
        if standard {
            let out = crate::standard::reconcile(
                obj,
                &mut st.standard,
                config,
                now,
                timing.ready_delay,
                &failing,
                &now_ts,
            );
            for (deployment, ann) in &out.annotations {
                self.behaviours
                    .insert(deployment.clone(), behaviour_from(ann, timing.behaviour));
            }
            let mut status = out.status;
            keep_times(obj, &mut status);
            return Reconciled {
                status: Some(status),
                owned: Some(crate::owned::Owned {
                    objects: out.objects,
                    stable: out.stable,
                    available: out.available,
                    keep_route: out.keep_route,
                }),
                ..Reconciled::default()
            };
        }
        let old_pred = obj
            .pointer("/status/components/predictor")
            .cloned()
            .unwrap_or(json!({}));
        let rolled = old_pred["latestRolledoutRevision"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let ann = string_map(&obj["metadata"]["annotations"]);
        let tag_latest = ann
            .get("serving.kserve.io/enable-tag-routing")
            .and_then(Value::as_str)
            == Some("true");
        let percent = obj
            .pointer("/spec/predictor/canaryTrafficPercent")
            .and_then(Value::as_i64);
        let latest_tag = tag_latest.then(|| "latest".to_string());
        let traffic = match percent {
            Some(p) if !rolled.is_empty() => {
                let mut t = vec![Target {
                    latest: true,
                    revision: None,
                    percent: p,
                    tag: latest_tag,
                }];
                if p < 100 {
                    t.push(Target {
                        latest: false,
                        revision: Some(rolled.clone()),
                        percent: 100 - p,
                        tag: Some("prev".into()),
                    });
                }
                t
            }
            _ => vec![Target {
                latest: true,
                revision: None,
                percent: 100,
                tag: latest_tag,
            }],
        };
        let tpl = template(obj, &lists, st.retemplates);
        let tpl_ann = string_map(&tpl["metadata"]["annotations"]);
        let fails = tpl_ann
            .get(&format!("{ANNOTATION_PREFIX}fail-readiness"))
            .and_then(Value::as_str)
            == Some("true");
        let rejected = match st
            .service
            .update(tpl, traffic, now, timing.ready_delay, fails)
        {
            Ok(created) => {
                if created && let Some(r) = st.service.revisions.last() {
                    self.behaviours
                        .insert(r.name.clone(), behaviour_from(&tpl_ann, timing.behaviour));
                }
                None
            }
            Err(e) => Some(format!(
                "fails to reconcile predictor: fails to update knative service: admission webhook \"validation.webhook.serving.knative.dev\" denied the request: validation failed: {e}"
            )),
        };
        let Some(st) = self.isvcs.get_mut(&key) else {
            return Reconciled::default();
        };
        st.service.tick(now, timing.route_delay, &failing);
        if let Some(message) = rejected {
            // PropagateRawStatusWithMessages: PredictorReady (and so Ready) False, the rest as it was.
            let mut status = obj.get("status").cloned().unwrap_or(json!({}));
            let failed = knative::Condition {
                status: Cond::False,
                reason: "ReconcileFailed".into(),
                message,
            };
            let mut conds: Vec<Value> = status["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c["type"] != "PredictorReady" && c["type"] != "Ready")
                .collect();
            conds.push(condition("PredictorReady", &failed, false, &now_ts));
            conds.push(condition("Ready", &failed, false, &now_ts));
            conds.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
            status["conditions"] = json!(conds);
            status["deploymentMode"] = json!("Knative");
            keep_times(obj, &mut status);
            return Reconciled {
                status: Some(status),
                ..Reconciled::default()
            };
        }
        let ks = st.service.status(now, &failing);
        // PropagateStatus: the rolled-out bookkeeping.
        let mut rolled = rolled;
        let mut previous = old_pred["previousRolledoutRevision"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut by_revision: HashMap<&str, i64> = HashMap::new();
        for t in &ks.traffic {
            *by_revision.entry(t.revision.as_str()).or_default() += t.percent;
        }
        for t in &ks.traffic {
            if Some(&t.revision) == ks.latest_ready.as_ref() && t.latest {
                if rolled != t.revision {
                    if t.percent == 100 {
                        previous = rolled.clone();
                        rolled = t.revision.clone();
                    }
                } else if ks.latest_ready.as_deref() == Some(ks.latest_created.as_str())
                    && t.percent < 100
                    && by_revision.get(t.revision.as_str()) == Some(&100)
                    && !previous.is_empty()
                {
                    // The latest ready revision was rolled out at 100% and is being rolled back.
                    rolled = previous.clone();
                }
            }
        }
        let mut predictor = json!({
            "latestCreatedRevision": ks.latest_created,
            "traffic": knative::traffic_json(&ks.traffic, &service_name, &ns, DOMAIN),
        });
        if let Some(r) = &ks.latest_ready {
            predictor["latestReadyRevision"] = json!(r);
        }
        if !rolled.is_empty() {
            predictor["latestRolledoutRevision"] = json!(rolled);
        }
        if !previous.is_empty() {
            predictor["previousRolledoutRevision"] = json!(previous);
        }
        // The component URL and address appear once the service has been Ready.
        let ever_ready = ks.ready.status == Cond::True || old_pred.get("url").is_some();
        if ever_ready {
            predictor["url"] = json!(format!("http://{service_name}.{ns}.{DOMAIN}"));
            predictor["address"] =
                json!({"url": format!("http://{service_name}.{ns}.svc.cluster.local")});
        }
        let ingress = if ks.ready.status == Cond::True {
            ks.ready.clone()
        } else {
            knative::Condition {
                status: ks.ready.status,
                reason: "Predictor ingress not created".into(),
                message: String::new(),
            }
        };
        let ready = ready_of(&[&ks.ready, &ingress]);
        let mut status = json!({
            "observedGeneration": ks.observed_generation,
            "deploymentMode": "Knative",
            "components": {"predictor": predictor},
            "conditions": [
                condition("IngressReady", &ingress, false, &now_ts),
                condition("PredictorConfigurationReady", &ks.configurations_ready, true, &now_ts),
                condition("PredictorReady", &ks.ready, false, &now_ts),
                condition("PredictorRouteReady", &ks.routes_ready, true, &now_ts),
                condition("Ready", &ready, false, &now_ts),
            ],
            "modelStatus": {
                "states": {"activeModelState": if ks.latest_ready.is_some() { "Loaded" } else { "Pending" }, "targetModelState": "Loaded"},
                "transitionStatus": if ready.status == Cond::True { "UpToDate" } else { "InProgress" },
                "copies": {"failedCopies": 0, "totalCopies": 1},
            },
        });
        if ever_ready {
            status["url"] = json!(format!("http://{name}.{ns}.{DOMAIN}"));
            status["address"] = json!({"url": format!("http://{name}.{ns}.svc.cluster.local")});
        }
        keep_times(obj, &mut status);
        Reconciled {
            status: Some(status),
            ..Reconciled::default()
        }
    }

    /// The disallow lists of `inferenceservice-config`'s data (cached by its text).
    fn lists(&mut self, config: &Value) -> Option<Disallowed> {
        let text = config["inferenceService"].as_str().unwrap_or("");
        if let Some((t, d)) = &self.disallowed
            && t == text
        {
            return Some(d.clone());
        }
        let d = disallowed(config).ok()?;
        self.disallowed = Some((text.to_string(), d.clone()));
        Some(d)
    }

    /// The split the data plane serves for an InferenceService now: (revision, percent).
    pub fn serving(&self, ns: &str, name: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        let Some(st) = self.isvcs.get(&(ns.to_string(), name.to_string())) else {
            return out;
        };
        if !st.standard.ready_at.is_empty() {
            return st
                .standard
                .routes
                .iter()
                .filter(|(_, w)| *w > 0.0)
                .cloned()
                .collect();
        }
        for r in st.service.serving() {
            if r.percent <= 0 {
                continue;
            }
            match out.iter_mut().find(|(n, _)| *n == r.revision) {
                Some(e) => e.1 += r.percent as f64,
                None => out.push((r.revision.clone(), r.percent as f64)),
            }
        }
        out
    }

    /// Forces a new revision of an InferenceService from outside it, as a ServingRuntime or
    /// KServe configuration change does. Returns false if it is unknown.
    pub fn retemplate(&mut self, ns: &str, name: &str) -> bool {
        match self.isvcs.get_mut(&(ns.to_string(), name.to_string())) {
            Some(st) => {
                st.retemplates += 1;
                true
            }
            None => false,
        }
    }

    /// The behaviour of a revision (overrides first).
    pub fn behaviour(&self, revision: &str) -> Behaviour {
        self.overrides
            .get(revision)
            .or_else(|| self.behaviours.get(revision))
            .copied()
            .unwrap_or_default()
    }

    /// Every revision with its readiness now.
    pub fn revisions(&self, now: Instant) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for st in self.isvcs.values() {
            for r in &st.service.revisions {
                out.push((
                    r.name.clone(),
                    r.ready_at.is_some_and(|t| t <= now) && !self.failing.contains(&r.name),
                ));
            }
        }
        out
    }

    /// Whether any service waits on time (so the loop keeps reconciling).
    pub fn pending(&self, now: Instant) -> bool {
        self.isvcs
            .values()
            .any(|s| s.service.pending(now) || s.standard.ready_at.values().any(|t| *t > now))
    }
}
