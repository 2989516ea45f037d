//! The KServe controller, emulated: revisions, readiness, the canary traffic split and the
//! rolled-out bookkeeping, computed as KServe's Knative reconciler does (see
//! `docs/sandbox.md` and the field guide's §2).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Annotation prefix for sandbox behaviour (error rate, latency, readiness, request rate).
pub const ANNOTATION_PREFIX: &str = "sandbox.rolloutctl.io/";

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

/// One Knative revision.
#[derive(Clone, Debug)]
pub struct Revision {
    /// `<name>-predictor-0000N`.
    pub name: String,
    /// The template it was created from.
    pub template: String,
    /// When it becomes ready (`None`: never, it fails).
    pub ready_at: Option<Instant>,
    /// Its behaviour.
    pub behaviour: Behaviour,
}

impl Revision {
    /// Ready at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.ready_at.is_some_and(|t| t <= now)
    }
}

/// Controller state per InferenceService (namespace, name).
#[derive(Debug, Default)]
pub struct Controller {
    /// Revisions in creation order.
    pub revisions: HashMap<(String, String), Vec<Revision>>,
    /// Revisions made to fail readiness by the control interface.
    pub failing: Vec<String>,
    /// Behaviour overrides by revision name, from the control interface.
    pub overrides: HashMap<String, Behaviour>,
}

fn annotations(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Whether an annotation is propagated to the revision (and so part of its template).
fn propagated(key: &str) -> bool {
    !key.starts_with("kubectl.kubernetes.io/") && !key.starts_with("rolloutctl.io/")
}

/// The component spec without `canaryTrafficPercent`, plus propagated annotations and labels:
/// what makes a new revision.
fn template(obj: &Value) -> String {
    let mut predictor = obj.pointer("/spec/predictor").cloned().unwrap_or(json!({}));
    if let Some(m) = predictor.as_object_mut() {
        m.remove("canaryTrafficPercent");
    }
    let ann: serde_json::Map<String, Value> = annotations(obj)
        .into_iter()
        .filter(|(k, _)| propagated(k))
        .collect();
    let labels = obj
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    json!({"predictor": predictor, "annotations": ann, "labels": labels}).to_string()
}

fn behaviour_from(ann: &serde_json::Map<String, Value>, default: Behaviour) -> Behaviour {
    let num = |k: &str| -> Option<f64> {
        ann.get(&format!("{ANNOTATION_PREFIX}{k}")).and_then(|v| {
            v.as_str()
                .and_then(|s| s.trim().trim_end_matches('%').parse().ok())
                .or_else(|| v.as_f64())
        })
    };
    let mut b = default;
    if let Some(e) = ann
        .get(&format!("{ANNOTATION_PREFIX}error-rate"))
        .and_then(Value::as_str)
    {
        let pct = e.trim().ends_with('%');
        if let Some(v) = num("error-rate") {
            b.error_rate = if pct { v / 100.0 } else { v }.clamp(0.0, 1.0);
        }
    }
    if let Some(v) = num("latency-p50-ms") {
        b.p50_ms = v.max(0.1);
    }
    if let Some(v) = num("latency-p95-ms") {
        b.p95_ms = v.max(b.p50_ms);
    }
    b
}

/// Whether the InferenceService is in Standard/RawDeployment mode.
pub fn standard_mode(obj: &Value) -> bool {
    matches!(
        annotations(obj)
            .get("serving.kserve.io/deploymentMode")
            .and_then(Value::as_str),
        Some("Standard" | "RawDeployment")
    )
}

impl Controller {
    /// Computes the status the InferenceService should have now, creating a revision when its
    /// template changed. Returns the new status.
    pub fn reconcile(
        &mut self,
        obj: &Value,
        now: Instant,
        ready_delay: Duration,
        default: Behaviour,
    ) -> Value {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ann = annotations(obj);
        let standard = standard_mode(obj);
        let tpl = template(obj);
        let revs = self
            .revisions
            .entry((ns.clone(), name.clone()))
            .or_default();
        if revs.last().is_none_or(|r| r.template != tpl) {
            let n = revs.len() + 1;
            let rev_name = format!("{name}-predictor-{n:05}");
            let fails = ann
                .get(&format!("{ANNOTATION_PREFIX}fail-readiness"))
                .and_then(Value::as_str)
                .is_some_and(|v| v == "true");
            revs.push(Revision {
                name: rev_name,
                template: tpl,
                ready_at: (!fails).then(|| now + ready_delay),
                behaviour: behaviour_from(&ann, default),
            });
        }
        let failing = &self.failing;
        let ready = |r: &Revision| r.ready(now) && !failing.contains(&r.name);
        let latest_created = revs.last().map(|r| r.name.clone()).unwrap_or_default();
        let latest_ready = revs.iter().rev().find(|r| ready(r)).map(|r| r.name.clone());
        let created_failed = revs
            .last()
            .is_some_and(|r| r.ready_at.is_none() || failing.contains(&r.name));
        let old = obj
            .pointer("/status/components/predictor")
            .cloned()
            .unwrap_or(json!({}));
        let mut rolled = old["latestRolledoutRevision"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut previous = old["previousRolledoutRevision"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let percent = obj
            .pointer("/spec/predictor/canaryTrafficPercent")
            .and_then(Value::as_i64)
            .map(|p| p.clamp(0, 100));
        let tag_routing = ann
            .get("serving.kserve.io/enable-tag-routing")
            .and_then(Value::as_str)
            == Some("true");
        let domain = format!("{ns}.example.com");
        let traffic_for = |rolled: &str| -> Vec<Value> {
            let Some(latest) = &latest_ready else {
                return vec![];
            };
            let mut latest_entry = json!({"latestRevision": true, "revisionName": latest});
            if tag_routing {
                latest_entry["tag"] = json!("latest");
                latest_entry["url"] = json!(format!("http://latest-{name}-predictor.{domain}"));
            }
            match percent {
                Some(p) if !standard && !rolled.is_empty() => {
                    latest_entry["percent"] = json!(p);
                    let mut t = vec![latest_entry];
                    if p < 100 {
                        t.push(json!({
                            "latestRevision": false, "percent": 100 - p, "revisionName": rolled,
                            "tag": "prev", "url": format!("http://prev-{name}-predictor.{domain}"),
                        }));
                    }
                    t
                }
                _ => {
                    latest_entry["percent"] = json!(100);
                    vec![latest_entry]
                }
            }
        };
        let mut traffic = traffic_for(&rolled);
        // Bookkeeping (PropagateStatus): the rolled-out fields move only at 100%.
        if let Some(latest) = &latest_ready {
            let latest_pct = traffic
                .first()
                .and_then(|t| t["percent"].as_i64())
                .unwrap_or(0);
            if latest_pct == 100 && rolled != *latest {
                previous = rolled.clone();
                rolled = latest.clone();
            } else if !standard
                && latest_pct < 100
                && *latest == latest_created
                && rolled == *latest
                && !previous.is_empty()
                && traffic
                    .iter()
                    .all(|t| t["revisionName"].as_str() == Some(latest.as_str()))
            {
                // Rolling back a revision that was already rolled out.
                rolled = previous.clone();
                traffic = traffic_for(&rolled);
            }
        }
        let is_ready = latest_ready.as_deref() == Some(latest_created.as_str()) && !created_failed;
        let now_ts = crate::store::now_rfc3339();
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now_ts});
            if let Some(r) = reason.filter(|_| !ok) {
                c["reason"] = json!(r);
            }
            c
        };
        let failed_reason = if created_failed {
            Some("RevisionFailed")
        } else {
            Some("RevisionMissing")
        };
        let url = format!("http://{name}.{domain}");
        let mut predictor = json!({
            "latestCreatedRevision": latest_created,
            "traffic": traffic,
            "url": format!("http://{name}-predictor.{domain}"),
            "address": {"url": format!("http://{name}-predictor.{ns}.svc.cluster.local")},
        });
        if let Some(r) = &latest_ready {
            predictor["latestReadyRevision"] = json!(r);
        }
        if !rolled.is_empty() {
            predictor["latestRolledoutRevision"] = json!(rolled);
        }
        if !previous.is_empty() {
            predictor["previousRolledoutRevision"] = json!(previous);
        }
        let mut status = json!({
            "observedGeneration": obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "deploymentMode": if standard { "Standard" } else { "Knative" },
            "components": {"predictor": predictor},
            "conditions": [
                cond("IngressReady", latest_ready.is_some(), Some("IngressNotReady")),
                cond("PredictorConfigurationReady", is_ready, failed_reason),
                cond("PredictorReady", is_ready, failed_reason),
                cond("PredictorRouteReady", latest_ready.is_some(), Some("RouteNotReady")),
                cond("Ready", is_ready, failed_reason),
            ],
            "modelStatus": {
                "states": {"activeModelState": if latest_ready.is_some() { "Loaded" } else { "Pending" }, "targetModelState": "Loaded"},
                "transitionStatus": if is_ready { "UpToDate" } else { "InProgress" },
            },
        });
        if latest_ready.is_some() {
            status["url"] = json!(url);
            status["address"] = json!({"url": format!("http://{name}.{ns}.svc.cluster.local")});
        }
        // Keep condition timestamps stable when nothing changed, so reconciling is idempotent.
        if let Some(old_conds) = obj.pointer("/status/conditions").and_then(Value::as_array)
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
        status
    }

    /// The behaviour of a revision (overrides first).
    pub fn behaviour(&self, revision: &str) -> Behaviour {
        if let Some(b) = self.overrides.get(revision) {
            return *b;
        }
        self.revisions
            .values()
            .flatten()
            .find(|r| r.name == revision)
            .map(|r| r.behaviour)
            .unwrap_or_default()
    }

    /// The earliest time a revision becomes ready, if any is pending (to schedule a reconcile).
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        self.revisions
            .values()
            .flatten()
            .filter_map(|r| r.ready_at)
            .filter(|t| *t > now)
            .min()
    }
}
