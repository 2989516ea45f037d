//! The runner: applies a compiled rollout policy to a live InferenceService.
//!
//! This crate's one job is IO around the engine. Each tick it reads the InferenceService, queries
//! Prometheus for what the machine asks, feeds the machine, and carries out its commands with a
//! JSON merge patch guarded by the resourceVersion it decided on (a 409 means: re-read and let the
//! machine decide again, never re-apply). The machine's state lives in the InferenceService's
//! annotations, so a restarted runner resumes exactly where it was; a Lease keeps one runner per
//! InferenceService. It never decides anything itself.

pub mod cluster;
pub mod metrics;
pub mod replay;
pub mod secret;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use kube::Client;
use rollout_engine::{Command, Decision, Input, Machine, Observations, Outcome, State};
use rollout_policy::model::Policy;
use serde_json::{Value, json};

use crate::cluster::{
    COMMANDS_SEEN, Isvc, LeaseLock, LeaseResult, POLICY_HASH, STATE, annotation, conflict,
    transient,
};
use crate::metrics::{Prom, PromAuth};

/// The time as the runner sees it (ms since the epoch).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stable hash of the policy text (FNV-1a, 64 bits), stored with the state.
pub fn policy_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The machine reached an end.
    Outcome(Outcome),
    /// The run could not start or continue: preflight refused, the cluster or Prometheus is
    /// unusable, the Lease is held by another runner.
    Refused(String),
}

/// Settings of a run.
pub struct RunConfig {
    /// The checked policy.
    pub policy: Policy,
    /// The policy's text hash ([`policy_hash`]).
    pub policy_hash: String,
    /// Prometheus URL overriding the policy's.
    pub prometheus_url: Option<String>,
    /// Evaluate and log, change nothing.
    pub dry_run: bool,
    /// This runner's identity (Lease holder, Event instance).
    pub holder: String,
    /// Wait for the Lease instead of exiting when another runner holds it.
    pub wait_for_lease: bool,
    /// Called with every decision record.
    pub on_decision: Box<dyn FnMut(&Decision) + Send>,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("policy", &self.policy.name)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// The traffic a command sets.
fn traffic_of(c: &Command) -> Option<u8> {
    match c {
        Command::SetTraffic { percent } => Some(*percent),
        Command::Promote => Some(100),
        Command::Rollback => Some(0),
        _ => None,
    }
}

fn summary(d: &Decision) -> String {
    format!(
        "{} {} step {} ({}) traffic {}%: {}",
        d.at,
        d.to,
        d.step + 1,
        d.step_label,
        d.traffic,
        d.reason
    )
}

/// Runs the policy to its end.
pub async fn run(client: Client, mut cfg: RunConfig) -> RunEnd {
    let policy = cfg.policy.clone();
    let machine = Machine::compile(policy.clone());
    let isvc = Isvc::new(
        client.clone(),
        &policy.target.namespace,
        &policy.target.name,
    );
    let component = policy.target.component.as_str();
    // Prometheus.
    let url = cfg
        .prometheus_url
        .clone()
        .unwrap_or_else(|| policy.prometheus.url.clone());
    let auth = match PromAuth::from_policy(&policy) {
        Ok(a) => a,
        Err(e) => return RunEnd::Refused(e),
    };
    let prom = match Prom::new(&url, auth, policy.prometheus.timeout) {
        Ok(p) => p,
        Err(e) => return RunEnd::Refused(e),
    };
    // Preflight.
    let obj = match isvc.get(5).await {
        Ok(o) => o,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return RunEnd::Refused(format!(
                "InferenceService {}/{} not found",
                isvc.namespace, isvc.name
            ));
        }
        Err(e) => {
            return RunEnd::Refused(format!(
                "cannot read InferenceService {}/{}: {e}",
                isvc.namespace, isvc.name
            ));
        }
    };
    let mode = cluster::deployment_mode(&obj);
    if matches!(mode.as_str(), "Standard" | "RawDeployment") {
        return RunEnd::Refused(format!(
            "InferenceService {}/{} is in {mode} mode, where KServe silently ignores canaryTrafficPercent; canary rollouts need Serverless/Knative mode (annotation serving.kserve.io/deploymentMode: Serverless)",
            isvc.namespace, isvc.name
        ));
    }
    // One runner per InferenceService.
    let lease = LeaseLock::new(
        client.clone(),
        &isvc.namespace,
        &isvc.name,
        &cfg.holder,
        Duration::from_secs(15),
    );
    if !cfg.dry_run {
        loop {
            match lease.acquire().await {
                Ok(LeaseResult::Held) => break,
                Ok(LeaseResult::HeldBy(h)) if cfg.wait_for_lease => {
                    tracing::info!(holder = %h, "another runner holds the lease; waiting");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Ok(LeaseResult::HeldBy(h)) => {
                    return RunEnd::Refused(format!(
                        "another rolloutctl run ({h}) is running this rollout (Lease {}); stop it or wait",
                        lease.name
                    ));
                }
                Err(e) if transient(&e) => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => {
                    return RunEnd::Refused(format!("cannot take the Lease {}: {e}", lease.name));
                }
            }
        }
    }
    // Resume from the annotations when they belong to this policy.
    let mut state: State = match (annotation(&obj, STATE), annotation(&obj, POLICY_HASH)) {
        (Some(s), Some(h)) if h == cfg.policy_hash => match serde_json::from_str::<State>(s) {
            Ok(st)
                if st.version == rollout_engine::STATE_VERSION
                    && st.rules.len() == policy.rules.len() =>
            {
                tracing::info!(
                    phase = st.phase.name(),
                    step = st.step + 1,
                    "resuming from the InferenceService's annotations"
                );
                st
            }
            _ => machine.initial_state(),
        },
        _ => machine.initial_state(),
    };
    if state.phase.is_terminal() {
        // A finished rollout of this policy: a new run starts afresh for a new canary.
        state = machine.initial_state();
    }
    let mut seen: u64 = annotation(&obj, COMMANDS_SEEN)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut persisted = serde_json::to_string(&state).unwrap_or_default();
    let mut watch = Box::pin(kube::runtime::watcher(
        isvc.api.clone(),
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={}", isvc.name)),
    ));
    let mut last_renew = now_ms();
    let mut failures = 0u32;
    loop {
        if !cfg.dry_run && now_ms().saturating_sub(last_renew) > 5_000 {
            match lease.acquire().await {
                Ok(LeaseResult::Held) => last_renew = now_ms(),
                Ok(LeaseResult::HeldBy(h)) => {
                    return RunEnd::Refused(format!("lost the Lease to {h}"));
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the lease"),
            }
        }
        let now = now_ms();
        let read = isvc.get(3).await;
        let (obj, cluster) = match read {
            Ok(o) => {
                let c = cluster::observe(&o, component);
                (Some(o), Some(c))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the InferenceService");
                (None, None)
            }
        };
        let ops: Vec<(u64, rollout_engine::Operator)> = obj
            .as_ref()
            .map(|o| cluster::pending_commands(o, seen))
            .unwrap_or_default();
        let new_seen = ops.iter().map(|(at, _)| *at).max().unwrap_or(seen);
        // Measure what the machine asks for, on the revisions it is judging.
        let mut observations = Observations::default();
        let keys = machine.queries(&state, now);
        if !keys.is_empty() {
            let canary = state.canary_revision.clone().unwrap_or_default();
            let stable = state.stable_revision.clone().unwrap_or_default();
            let queries: Vec<_> = keys
                .iter()
                .map(|k| {
                    let promql = metrics::render(&policy, k, &canary, &stable);
                    let prom = prom.clone();
                    async move {
                        match promql {
                            Some(q) => prom.query(&q, now).await,
                            None => rollout_engine::Sample::NoData,
                        }
                    }
                })
                .collect();
            let samples = futures_util::future::join_all(queries).await;
            for (k, s) in keys.into_iter().zip(samples) {
                if let rollout_engine::Sample::Error { message } = &s {
                    tracing::warn!(%message, "query failed");
                }
                observations.push(k, s);
            }
        }
        let before = state.clone();
        let out = machine.step(
            &mut state,
            &Input {
                now,
                cluster,
                observations,
                operator: ops.iter().map(|(_, o)| *o).collect(),
            },
        );
        (cfg.on_decision)(&out.decision);
        let traffic = out.commands.iter().rev().find_map(traffic_of);
        let state_json = serde_json::to_string(&state).unwrap_or_default();
        let changed = state_json != persisted || traffic.is_some() || new_seen != seen;
        if changed && !cfg.dry_run {
            let Some(obj) = &obj else {
                state = before;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let mut annotations = json!({
                STATE: state_json,
                POLICY_HASH: cfg.policy_hash,
                "rolloutctl.io/policy": policy.name,
                "rolloutctl.io/phase": state.phase.name(),
                "rolloutctl.io/step": format!("{}/{} {}", state.step + 1, policy.steps.len(), machine.step_label(state.step)),
                "rolloutctl.io/last-decision": summary(&out.decision),
                COMMANDS_SEEN: new_seen.to_string(),
            });
            if let Some(c) = &state.canary_revision {
                annotations["rolloutctl.io/canary-revision"] = json!(c);
            }
            if let Some(s) = &state.stable_revision {
                annotations["rolloutctl.io/stable-revision"] = json!(s);
            }
            if let Some(uri) = obj
                .data
                .pointer(&format!("/spec/{component}/model/storageUri"))
                .and_then(Value::as_str)
            {
                annotations["rolloutctl.io/canary-model-uri"] = json!(uri);
            }
            let mut patch = json!({"metadata": {"annotations": annotations}});
            if let Some(p) = traffic {
                patch["spec"] = json!({component: {"canaryTrafficPercent": p}});
            }
            let rv = obj.metadata.resource_version.clone().unwrap_or_default();
            match isvc.patch_guarded(&rv, patch).await {
                Ok(_) => {
                    failures = 0;
                    persisted = serde_json::to_string(&state).unwrap_or_default();
                    seen = new_seen;
                    for c in &out.commands {
                        if let Command::Event {
                            warning,
                            reason,
                            message,
                        } = c
                        {
                            isvc.event(obj, &cfg.holder, *warning, reason, message)
                                .await;
                        }
                    }
                }
                Err(e) if conflict(&e) => {
                    // The object changed after we read it: decide again on what is there now.
                    tracing::info!("409 Conflict: re-reading and deciding again");
                    state = before;
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, "patch failed; deciding again after a pause");
                    state = before;
                    let backoff = Duration::from_millis((200u64 << failures.min(5)).min(5_000));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        } else if cfg.dry_run {
            if let Some(p) = traffic {
                tracing::info!(traffic = p, "dry run: would set canaryTrafficPercent");
            }
            persisted = state_json;
            seen = new_seen;
        }
        if state.phase.is_terminal() {
            if !cfg.dry_run {
                lease.release().await;
            }
            return RunEnd::Outcome(Outcome::of(&state));
        }
        // Wait for the machine's next time, or a change to the InferenceService (watch).
        let wake = out
            .commands
            .iter()
            .find_map(|c| match c {
                Command::WaitUntil { at } => Some(*at),
                _ => None,
            })
            .unwrap_or(now + 1000);
        let delay = Duration::from_millis(wake.saturating_sub(now_ms()).clamp(50, 30_000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = watch.next() => {}
        }
    }
}

/// A Kubernetes client by the usual rules: an explicit kubeconfig (and context), else
/// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<Client, String> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| e.to_string())?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| e.to_string())?,
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}
