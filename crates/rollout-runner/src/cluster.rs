//! The InferenceService as the runner sees and changes it: reading the canary/stable split,
//! guarded traffic patches, state annotations, operator commands, the Lease, Events.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource as _};
use rollout_engine::Cluster;
use serde_json::{Value, json};

/// Annotation prefix of everything rolloutctl writes.
pub const PREFIX: &str = "rolloutctl.io/";
/// The machine state (JSON).
pub const STATE: &str = "rolloutctl.io/state";
/// Hash of the policy the state belongs to.
pub const POLICY_HASH: &str = "rolloutctl.io/policy-hash";
/// Operator commands, a JSON list `[{"at": ms, "command": "approve"}]`.
pub const COMMANDS: &str = "rolloutctl.io/commands";
/// The newest operator command the runner has taken (ms).
pub const COMMANDS_SEEN: &str = "rolloutctl.io/commands-seen";

/// Access to one InferenceService.
#[derive(Clone)]
pub struct Isvc {
    /// The namespaced API.
    pub api: Api<DynamicObject>,
    /// Its resource description.
    pub ar: ApiResource,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    client: Client,
}

impl std::fmt::Debug for Isvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Isvc({}/{})", self.namespace, self.name)
    }
}

/// Whether a kube error is worth retrying (transport, 5xx, 429).
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

/// Whether a kube error is a 409 Conflict.
pub fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Isvc {
    /// Access to `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Isvc {
        let gvk = GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "inferenceservices");
        Isvc {
            api: Api::namespaced_with(client.clone(), namespace, &ar),
            ar,
            name: name.to_string(),
            namespace: namespace.to_string(),
            client,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads the object, retrying transient errors with backoff (at most `tries` times).
    pub async fn get(&self, tries: u32) -> Result<DynamicObject, kube::Error> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            match self.api.get(&self.name).await {
                Ok(o) => return Ok(o),
                Err(e) if transient(&e) && attempt + 1 < tries => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A JSON merge patch guarded by `resource_version` (409 if the object changed since).
    pub async fn patch_guarded(
        &self,
        resource_version: &str,
        mut patch: Value,
    ) -> Result<DynamicObject, kube::Error> {
        patch["metadata"]["resourceVersion"] = json!(resource_version);
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    }

    /// Publishes an Event about the InferenceService (best effort).
    pub async fn event(
        &self,
        obj: &DynamicObject,
        instance: &str,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "rolloutctl".into(),
                instance: Some(instance.to_string()),
            },
        );
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&self.ar)).await {
            tracing::warn!(error = %e, "could not record an event");
        }
    }
}

/// An annotation of an object.
pub fn annotation<'a>(obj: &'a DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The deployment mode from the status or the annotation.
pub fn deployment_mode(obj: &DynamicObject) -> String {
    obj.data
        .pointer("/status/deploymentMode")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| annotation(obj, "serving.kserve.io/deploymentMode").map(str::to_string))
        .unwrap_or_else(|| "Knative".into())
}

/// What the engine needs to know about the cluster, for `component`.
pub fn observe(obj: &DynamicObject, component: &str) -> Cluster {
    let status = &obj.data["status"];
    let comp = &status["components"][component];
    let traffic = comp["traffic"].as_array().cloned().unwrap_or_default();
    let latest = traffic.iter().find(|t| t["latestRevision"] == true);
    let prev = traffic.iter().find(|t| t["tag"] == "prev");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    let latest_ready = comp["latestReadyRevision"].as_str();
    let latest_created = comp["latestCreatedRevision"].as_str();
    let generation = obj.metadata.generation.unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(-1) >= generation;
    Cluster {
        canary_percent: latest
            .and_then(|t| t["percent"].as_u64())
            .map_or(0, |p| p.min(100) as u8),
        canary_revision: latest
            .and_then(|t| t["revisionName"].as_str())
            .unwrap_or("")
            .to_string(),
        stable_revision: prev
            .and_then(|t| t["revisionName"].as_str())
            .map(str::to_string),
        // Judge only a settled cluster: Ready, and the latest created revision is the ready one.
        ready: ready && latest_ready.is_some() && latest_ready == latest_created,
        observed,
    }
}

/// Operator commands newer than `seen` (ms), oldest first.
pub fn pending_commands(obj: &DynamicObject, seen: u64) -> Vec<(u64, rollout_engine::Operator)> {
    let list: Vec<Value> = annotation(obj, COMMANDS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut out: Vec<(u64, rollout_engine::Operator)> = list
        .iter()
        .filter_map(|c| {
            let at = c["at"].as_u64()?;
            let op: rollout_engine::Operator = serde_json::from_value(c["command"].clone()).ok()?;
            (at > seen).then_some((at, op))
        })
        .collect();
    out.sort_by_key(|(at, _)| *at);
    out
}

/// Appends an operator command to the InferenceService (read-modify-write, retried on 409).
pub async fn send_command(
    isvc: &Isvc,
    op: rollout_engine::Operator,
    now_ms: u64,
) -> Result<(), kube::Error> {
    for _ in 0..10 {
        let obj = isvc.get(5).await?;
        let mut list: Vec<Value> = annotation(&obj, COMMANDS)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        // Keep the list short: the runner has taken the old ones.
        let seen: u64 = annotation(&obj, COMMANDS_SEEN)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        list.retain(|c| c["at"].as_u64().is_some_and(|a| a > seen));
        let at = list
            .iter()
            .filter_map(|c| c["at"].as_u64())
            .max()
            .map_or(now_ms, |m| m.max(now_ms - 1) + 1)
            .max(now_ms);
        list.push(json!({"at": at, "command": op}));
        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
        match isvc
            .patch_guarded(&rv, json!({"metadata": {"annotations": {COMMANDS: Value::String(Value::Array(list).to_string())}}}))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(Box::new(
        kube::core::Status::failure("the InferenceService kept changing; try again", "Conflict")
            .with_code(409),
    )))
}

/// A Lease held by one runner per InferenceService.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    /// The Lease's name.
    pub name: String,
    /// Who holds it (this runner).
    pub holder: String,
    /// How long it is valid without renewal.
    pub duration: Duration,
}

/// The outcome of trying to take the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    /// Taken (or renewed).
    Held,
    /// Someone else holds it.
    HeldBy(String),
}

fn micro_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaseLock {
    /// A lock named `rolloutctl-<isvc>` in the InferenceService's namespace.
    pub fn new(
        client: Client,
        namespace: &str,
        isvc: &str,
        holder: &str,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: format!("rolloutctl-{isvc}"),
            holder: holder.to_string(),
            duration,
        }
    }

    /// Takes or renews the Lease: create (409 AlreadyExists = held), else replace with the read
    /// resourceVersion when it is ours or expired (409 Conflict = lost the race).
    pub async fn acquire(&self) -> Result<LeaseResult, kube::Error> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: Some(micro_now()),
            renew_time: Some(micro_now()),
            ..Default::default()
        };
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(spec.clone()),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(LeaseResult::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        let current = self.api.get(&self.name).await?;
        let cur_spec = current.spec.clone().unwrap_or_default();
        let holder = cur_spec.holder_identity.clone().unwrap_or_default();
        let expired = cur_spec.renew_time.as_ref().is_none_or(|t| {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            let limit = i64::from(cur_spec.lease_duration_seconds.unwrap_or(15));
            age.as_secs() > limit
        });
        if holder != self.holder && !holder.is_empty() && !expired {
            return Ok(LeaseResult::HeldBy(holder));
        }
        let mut next = current.clone();
        let transitions =
            cur_spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.holder);
        next.spec = Some(LeaseSpec {
            lease_transitions: Some(transitions),
            acquire_time: if holder == self.holder {
                cur_spec.acquire_time
            } else {
                Some(micro_now())
            },
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(LeaseResult::Held),
            Err(e) if conflict(&e) => {
                Ok(LeaseResult::HeldBy("another runner (lost the race)".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the Lease if we hold it (best effort).
    pub async fn release(&self) {
        if let Ok(current) = self.api.get(&self.name).await
            && current
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.holder.as_str())
        {
            let mut next = current.clone();
            if let Some(s) = next.spec.as_mut() {
                s.holder_identity = None;
                s.renew_time = None;
            }
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &next)
                .await;
        }
    }
}
