//! The `ModelRollout` custom resource (`modelrollouts.rolloutctl.io/v1alpha1`).
//!
//! This crate's one job is the resource's shape: the Rust types (kube's `CustomResource` derive,
//! schemars for the schema) from which `deploy/crd.yaml` is generated. A ModelRollout holds one
//! rollout policy for one InferenceService (same name and namespace, with an ownerReference to
//! it), the operator's intents as declarative fields of its `spec`, and in its `status` the
//! engine's state, the last decision, conditions and a bounded history of past rollouts. All of
//! rolloutctl's state lives here, so the only thing it ever writes to an InferenceService is
//! traffic.
//!
//! Intents name the canary revision they are meant for, so an intent given for one rollout can
//! never act on the next one, and they are ordered by the object's own versioning (the API
//! server's `metadata.generation`), never by a client's clock.

use std::borrow::Cow;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "rolloutctl.io";
/// The version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "ModelRollout";
/// The plural resource name.
pub const PLURAL: &str = "modelrollouts";
/// The short name (`kubectl get mro`); Argo Rollouts uses `ro`.
pub const SHORT_NAME: &str = "mro";
/// How many past rollouts `status.history` keeps.
pub const HISTORY_LIMIT: usize = 20;

/// The desired rollout: the policy, and the operator's intents.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rolloutctl.io",
    version = "v1alpha1",
    kind = "ModelRollout",
    plural = "modelrollouts",
    namespaced,
    status = "ModelRolloutStatus",
    shortname = "mro",
    category = "kserve",
    doc = "A canary rollout of one InferenceService (same name and namespace), driven by a `.rollout` policy.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.stepProgress"}"#,
    printcolumn = r#"{"name":"Traffic","type":"integer","jsonPath":".status.traffic"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canaryRevision"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Decision","type":"string","jsonPath":".status.lastDecision.message","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutSpec {
    /// The rollout policy: the text of a `.rollout` file. It is checked on every read; an
    /// invalid policy is reported in the `PolicyValid` condition and stops all decisions.
    #[schemars(length(max = 1048576))]
    pub policy: String,
    /// Hold every rollout of this ModelRollout where it is (`rolloutctl pause`); `false`
    /// resumes a pause made this way.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Resume the pause identified here (a pause by a rule, a policy change or a revision
    /// change; `rolloutctl resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeIntent>,
    /// Roll the rollout of this canary revision back now (`rolloutctl abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<RevisionIntent>,
    /// Promote this canary revision now, skipping the remaining steps (`rolloutctl promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<RevisionIntent>,
    /// Approval gates passed (`rolloutctl approve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Roll out a canary revision again that was rolled back or aborted (`rolloutctl retry`),
    /// or restart a paused rollout from its first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryIntent>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An intent for the rollout of one canary revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionIntent {
    /// The canary revision (as in `status.canaryRevision`).
    pub revision: String,
}

/// An approval of one gate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The canary revision.
    pub revision: String,
    /// The attempt of that revision's rollout (as in `status.attempt`).
    pub attempt: u32,
    /// The approval step, 1-based (as in `status.step`).
    pub step: u32,
}

/// A resume of one pause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeIntent {
    /// The canary revision.
    pub revision: String,
    /// When the pause began (`status.pausedAt`): identifies the pause, so a resume can never
    /// end a later one.
    pub paused_at: String,
}

/// A new attempt at rolling out a canary revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryIntent {
    /// The canary revision.
    pub revision: String,
    /// The attempt this retry allows (the last attempt of the revision plus one).
    pub attempt: u32,
}

/// What rolloutctl reports about a ModelRollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRolloutStatus {
    /// The `metadata.generation` whose spec (policy and intents) this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The engine's phase: `starting`, `shifting_traffic`, `holding`, `awaiting_approval`,
    /// `paused`, `promoting`, `promoted`, `rolling_back`, `rolled_back`, `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The current step, 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The number of steps of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// `3/7`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_progress: Option<String>,
    /// The current step in words, such as `traffic 25%` or `hold 5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// Percent of traffic on the canary as last requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<u32>,
    /// The canary revision being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The stable revision it is judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The canary's model (`storageUri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_model_uri: Option<String>,
    /// Which attempt at rolling out this canary revision (1 unless retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When this rollout's first step began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// When the current pause began (RFC 3339); `rolloutctl resume` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// The last decision that changed something, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<LastDecision>,
    /// Each rule's latest verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleStatus>,
    /// The policy the state belongs to, by meaning (formatting and comments do not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyFingerprint>,
    /// Kubernetes-style conditions: `PolicyValid`, `Progressing`, `Paused`, `Preflight`,
    /// `TargetFound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The engine's state (versioned JSON), from which a restarted runner resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub state: Option<StateText>,
    /// A digest of `state` and this object's uid: a state edited by hand, corrupted, or copied
    /// from another ModelRollout does not match it and is never acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_digest: Option<String>,
    /// When `state` was last written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<String>,
    /// The Lease term (`leaseTransitions`) of the driver that wrote this status: a driver
    /// that took the Lease back after another held it reads the object again before deciding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_term: Option<i64>,
    /// Past rollouts of this InferenceService, newest last (at most 20): the version history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// A decision in words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDecision {
    /// When (RFC 3339).
    pub time: String,
    /// What the engine did, in a word: `shift`, `evaluate`, `advance`, `pause`, `rollback`, ...
    pub action: String,
    /// Why, in a sentence.
    pub message: String,
}

/// One rule's latest verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    /// The rule's name.
    pub name: String,
    /// `pass`, `fail`, `inconclusive`, `no_data`, `stale_data` or `query_error`.
    pub verdict: String,
    /// When the verdict last changed (RFC 3339).
    pub since: String,
}

/// A policy by meaning: what a policy edit is compared against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFingerprint {
    /// The policy's name.
    pub name: String,
    /// A hash of the whole checked policy, without source positions.
    pub hash: String,
    /// One hash per step.
    pub steps: Vec<String>,
    /// The rules' names, in order (the state's per-rule evidence is matched by name).
    pub rules: Vec<String>,
}

/// A Kubernetes-style condition (`metav1.Condition`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `PolicyValid`, `Progressing`, `Paused`, `Preflight`, `TargetFound`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What it means and, where something is wrong, how to continue.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation it was set at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One past rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The canary revision.
    pub canary_revision: String,
    /// The stable revision it was judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The canary's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// Which attempt.
    pub attempt: u32,
    /// `promoted`, `rolled_back`, `aborted`, `failed` or `superseded`.
    pub outcome: String,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Why it ended.
    #[serde(default)]
    pub reason: String,
}

/// `status.state`, held as its compact JSON text (object keys sorted, so two equal states have
/// equal texts). On the wire it is the JSON object itself. In memory a text costs its length,
/// where a `serde_json::Value` tree of the same small objects costs several times that; a
/// controller holds one per ModelRollout in its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateText(String);

impl StateText {
    /// The text of `value`.
    pub fn new(value: &serde_json::Value) -> StateText {
        StateText(value.to_string())
    }

    /// The state as a JSON value.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for StateText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for StateText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StateText, D::Error> {
        // Through a `Value`, whose maps are sorted: the text is canonical whatever the order
        // the API server sent.
        serde_json::Value::deserialize(d).map(|v| StateText::new(&v))
    }
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

impl ModelRolloutStatus {
    /// A condition by type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CustomResourceDefinition, as `deploy/crd.yaml` holds it.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    <ModelRollout as kube::CustomResourceExt>::crd()
}

/// The CustomResourceDefinition as JSON (for API servers that take JSON, such as the sandbox).
pub fn crd_json() -> serde_json::Value {
    serde_json::to_value(crd()).unwrap_or_default()
}

/// The name of the CRD.
pub fn crd_name() -> Cow<'static, str> {
    Cow::Owned(format!("{PLURAL}.{GROUP}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_text_is_the_json_object_on_the_wire_and_canonical_in_memory() {
        let a: ModelRolloutStatus =
            serde_json::from_str(r#"{"state":{"v":1,"phase":{"holding":{"since":5}},"step":0}}"#)
                .expect("status");
        let b: ModelRolloutStatus =
            serde_json::from_str(r#"{"state":{"step":0,"phase":{"holding":{"since":5}},"v":1}}"#)
                .expect("status");
        assert_eq!(a, b, "the order of keys does not make two states differ");
        let text = a.state.as_ref().map(StateText::as_str);
        assert_eq!(
            text,
            Some(r#"{"phase":{"holding":{"since":5}},"step":0,"v":1}"#)
        );
        let wire = serde_json::to_value(&a).expect("serialize");
        assert_eq!(
            wire["state"]["phase"]["holding"]["since"], 5,
            "an object, not a string"
        );
        let back: ModelRolloutStatus = serde_json::from_value(wire).expect("from a Value too");
        assert_eq!(back, a);
        let changed: ModelRolloutStatus =
            serde_json::from_str(r#"{"state":{"v":1,"phase":{"holding":{"since":6}},"step":0}}"#)
                .expect("status");
        assert_ne!(changed, a);
    }
}
