//! Knative Serving, emulated for one Knative Service: its Configuration (revisions), its Route
//! (traffic) and the status the KServe controller reads back.
//!
//! As in `knative/serving`:
//! - the Service's `metadata.generation` rises on every spec change (template or traffic), and
//!   `status.observedGeneration` follows it once reconciled (`pkg/reconciler/service`);
//! - a new Revision `<name>-<Configuration generation, 5 digits>` is created for every template
//!   change, and only then (`pkg/reconciler/configuration/resources/revision.go:42`);
//! - the Configuration is Ready `Unknown` while its latest created revision is not ready, `False`
//!   (`RevisionFailed`) when it failed (`pkg/apis/serving/v1/configuration_lifecycle.go:76-82`);
//! - a `latestRevision: true` target follows the latest *ready* revision
//!   (`pkg/apis/serving/v1/route_types.go:88-93`);
//! - every change of the resolved traffic gives the Route a new generation that is
//!   `IngressNotConfigured` (Unknown) until the ingress is programmed, while `status.traffic`
//!   already shows the new split (`pkg/reconciler/route/route.go:110-117, 171-175, 484-490`);
//!   the data plane keeps the old split until then;
//! - the webhook rejects percentages outside 0..=100 and splits that do not sum to 100
//!   (`pkg/apis/serving/v1/route_validation.go:85-88, 151-155`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A spec traffic target.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Follow the latest ready revision.
    pub latest: bool,
    /// A named revision.
    pub revision: Option<String>,
    /// Percent.
    pub percent: i64,
    /// A tag (`prev`, `latest`).
    pub tag: Option<String>,
}

/// A resolved traffic target (as in `status.traffic`).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The revision.
    pub revision: String,
    /// Percent.
    pub percent: i64,
    /// Whether it came from a `latestRevision: true` target.
    pub latest: bool,
    /// Its tag.
    pub tag: Option<String>,
}

/// A Revision.
#[derive(Clone, Debug)]
pub struct Revision {
    /// `<service>-0000N`.
    pub name: String,
    /// The template it was created from.
    pub template: Value,
    /// When it becomes ready; `None`: it fails.
    pub ready_at: Option<Instant>,
}

impl Revision {
    fn ready(&self, now: Instant, failing: &[String]) -> bool {
        self.ready_at.is_some_and(|t| t <= now) && !failing.contains(&self.name)
    }

    fn failed(&self, failing: &[String]) -> bool {
        self.ready_at.is_none() || failing.contains(&self.name)
    }
}

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// True.
    True,
    /// False.
    False,
    /// Unknown.
    Unknown,
}

impl Cond {
    /// `True`, `False`, `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::True => "True",
            Cond::False => "False",
            Cond::Unknown => "Unknown",
        }
    }
}

/// A condition with its reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// Status.
    pub status: Cond,
    /// Reason (empty when none).
    pub reason: String,
    /// Message.
    pub message: String,
}

impl Condition {
    fn new(status: Cond, reason: &str, message: &str) -> Condition {
        Condition {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What the Service reports (`ServiceStatus`).
#[derive(Clone, Debug)]
pub struct Status {
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `latestCreatedRevisionName`.
    pub latest_created: String,
    /// `latestReadyRevisionName`.
    pub latest_ready: Option<String>,
    /// `status.traffic`.
    pub traffic: Vec<Resolved>,
    /// `Ready`.
    pub ready: Condition,
    /// `ConfigurationsReady`.
    pub configurations_ready: Condition,
    /// `RoutesReady`.
    pub routes_ready: Condition,
}

/// One Knative Service.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name (`<isvc>-predictor`).
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `spec.template`.
    pub template: Value,
    /// `spec.traffic`.
    pub traffic: Vec<Target>,
    /// The Configuration's generation (revision numbering).
    pub config_generation: i64,
    /// Revisions in creation order.
    pub revisions: Vec<Revision>,
    /// The resolved traffic the Route was last given.
    resolved: Vec<Resolved>,
    /// The traffic the ingress serves (the data plane's split).
    programmed: Vec<Resolved>,
    /// When the ingress will have programmed `resolved`.
    programmed_at: Instant,
}

/// Knative's traffic validation (the webhook), as its messages read.
fn validate(traffic: &[Target]) -> Result<(), String> {
    for (i, t) in traffic.iter().enumerate() {
        if !(0..=100).contains(&t.percent) {
            return Err(format!(
                "expected 0 <= {} <= 100: spec.traffic[{i}].percent",
                t.percent
            ));
        }
    }
    let sum: i64 = traffic.iter().map(|t| t.percent).sum();
    if sum != 100 {
        return Err(format!(
            "Traffic targets sum to {sum}, want 100: spec.traffic"
        ));
    }
    Ok(())
}

impl Service {
    /// A new Service (no revision yet; the first `update` creates one).
    pub fn new(name: &str, now: Instant) -> Service {
        Service {
            name: name.to_string(),
            generation: 0,
            template: Value::Null,
            traffic: Vec::new(),
            config_generation: 0,
            revisions: Vec::new(),
            resolved: Vec::new(),
            programmed: Vec::new(),
            programmed_at: now,
        }
    }

    /// Updates the spec as KServe's `reconcileKsvc` does. The webhook may reject it, and then
    /// nothing changes. Returns whether a new revision was created.
    pub fn update(
        &mut self,
        template: Value,
        traffic: Vec<Target>,
        now: Instant,
        ready_delay: Duration,
        fails: bool,
    ) -> Result<bool, String> {
        validate(&traffic)?;
        let mut created = false;
        if template != self.template {
            self.template = template.clone();
            self.config_generation += 1;
            self.revisions.push(Revision {
                name: format!("{}-{:05}", self.name, self.config_generation),
                template,
                ready_at: (!fails).then(|| now + ready_delay),
            });
            created = true;
        }
        if created || traffic != self.traffic {
            self.traffic = traffic;
            self.generation += 1;
        }
        Ok(created)
    }

    fn latest_ready(&self, now: Instant, failing: &[String]) -> Option<&Revision> {
        self.revisions.iter().rev().find(|r| r.ready(now, failing))
    }

    /// Advances time: revisions becoming ready, the Route re-resolving and programming.
    pub fn tick(&mut self, now: Instant, route_delay: Duration, failing: &[String]) {
        let latest_ready = self.latest_ready(now, failing).map(|r| r.name.clone());
        let mut resolved: Vec<Resolved> = Vec::new();
        for t in &self.traffic {
            let revision = if t.latest {
                latest_ready.clone()
            } else {
                t.revision.clone()
            };
            if let Some(revision) = revision {
                resolved.push(Resolved {
                    revision,
                    percent: t.percent,
                    latest: t.latest,
                    tag: t.tag.clone(),
                });
            }
        }
        if resolved != self.resolved {
            self.resolved = resolved;
            self.programmed_at = now + route_delay;
        }
        if now >= self.programmed_at && self.programmed != self.resolved {
            self.programmed = self.resolved.clone();
        }
    }

    /// The split the data plane serves now.
    pub fn serving(&self) -> &[Resolved] {
        &self.programmed
    }

    /// Whether the service is waiting on time (a revision or the ingress).
    pub fn pending(&self, now: Instant) -> bool {
        now < self.programmed_at
            || self
                .revisions
                .iter()
                .any(|r| r.ready_at.is_some_and(|t| t > now))
    }

    /// The Service's status now.
    pub fn status(&self, now: Instant, failing: &[String]) -> Status {
        let latest_created = self.revisions.last();
        let latest_ready = self.latest_ready(now, failing).map(|r| r.name.clone());
        let configurations_ready = match latest_created {
            Some(r) if r.failed(failing) => Condition::new(
                Cond::False,
                "RevisionFailed",
                &format!(
                    "Revision \"{}\" failed with message: the container exited.",
                    r.name
                ),
            ),
            Some(r) if Some(&r.name) == latest_ready.as_ref() => Condition::new(Cond::True, "", ""),
            _ => Condition::new(Cond::Unknown, "", ""),
        };
        let routes_ready = if self.resolved.len() < self.traffic.len() {
            // A latestRevision target with no ready revision yet.
            if latest_created.is_some_and(|r| r.failed(failing)) && latest_ready.is_none() {
                Condition::new(
                    Cond::False,
                    "RevisionMissing",
                    "Configuration has no ready revision.",
                )
            } else {
                Condition::new(
                    Cond::Unknown,
                    "RevisionMissing",
                    "Configuration is waiting for a Revision to become ready.",
                )
            }
        } else if now < self.programmed_at {
            Condition::new(
                Cond::Unknown,
                "IngressNotConfigured",
                "Ingress has not yet been reconciled.",
            )
        } else {
            Condition::new(Cond::True, "", "")
        };
        let ready = [&configurations_ready, &routes_ready]
            .into_iter()
            .find(|c| c.status == Cond::False)
            .or_else(|| {
                [&configurations_ready, &routes_ready]
                    .into_iter()
                    .find(|c| c.status == Cond::Unknown)
            })
            .cloned()
            .unwrap_or_else(|| Condition::new(Cond::True, "", ""));
        Status {
            observed_generation: self.generation,
            latest_created: latest_created.map(|r| r.name.clone()).unwrap_or_default(),
            latest_ready,
            traffic: self.resolved.clone(),
            ready,
            configurations_ready,
            routes_ready,
        }
    }
}

/// `status.traffic` entries as KServe copies them into the InferenceService.
pub fn traffic_json(t: &[Resolved], service: &str, ns: &str, domain: &str) -> Vec<Value> {
    t.iter()
        .map(|r| {
            let mut v = json!({"latestRevision": r.latest, "percent": r.percent, "revisionName": r.revision});
            if let Some(tag) = &r.tag {
                v["tag"] = json!(tag);
                v["url"] = json!(format!("http://{tag}-{service}.{ns}.{domain}"));
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(p: i64, prev: &str) -> Vec<Target> {
        vec![
            Target {
                latest: true,
                revision: None,
                percent: p,
                tag: None,
            },
            Target {
                latest: false,
                revision: Some(prev.into()),
                percent: 100 - p,
                tag: Some("prev".into()),
            },
        ]
    }

    #[test]
    fn generations_revisions_and_route_programming() {
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        let mut s = Service::new("m-predictor", t0);
        let all = vec![Target {
            latest: true,
            revision: None,
            percent: 100,
            tag: None,
        }];
        assert_eq!(
            s.update(json!({"a": 1}), all.clone(), t0, d, false),
            Ok(true)
        );
        s.tick(t0, d, &[]);
        let st = s.status(t0, &[]);
        assert_eq!(
            (st.observed_generation, st.latest_created.as_str()),
            (1, "m-predictor-00001")
        );
        assert_eq!(
            st.ready.status,
            Cond::Unknown,
            "not ready yet is Unknown, not False"
        );
        let t1 = t0 + Duration::from_millis(150);
        s.tick(t1, d, &[]);
        assert_eq!(
            s.status(t1, &[]).routes_ready.status,
            Cond::Unknown,
            "programming"
        );
        let t2 = t1 + Duration::from_millis(150);
        s.tick(t2, d, &[]);
        assert_eq!(s.status(t2, &[]).ready.status, Cond::True);
        assert_eq!(s.serving()[0].revision, "m-predictor-00001");
        // A traffic-only change: a new generation, no revision.
        assert_eq!(
            s.update(
                json!({"a": 1}),
                split(10, "m-predictor-00001"),
                t2,
                d,
                false
            ),
            Ok(false)
        );
        assert_eq!(s.generation, 2);
        // Out of range: rejected, nothing changes.
        assert!(
            s.update(json!({"a": 2}), split(150, "x"), t2, d, false)
                .is_err()
        );
        assert_eq!((s.generation, s.config_generation), (2, 1));
    }
}
