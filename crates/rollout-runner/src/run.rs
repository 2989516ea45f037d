//! `rolloutctl run`: creates or updates the ModelRollout for a policy's target, takes its
//! Lease, and reconciles it in this process with kube-runtime's `Controller` (watching the
//! ModelRollout and its InferenceService, requeueing at the engine's next time, backing off on
//! errors) until the rollout ends, a signal arrives, or it cannot go on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use rollout_api::{ModelRollout, ModelRolloutSpec};
use rollout_engine::{Decision, Outcome};
use rollout_policy::Policy;
use serde_json::json;

use crate::error::Error;
use crate::isvc::{self, Isvc};
use crate::lease::{LeaseHandle, LeaseLock, LeaseResult};
use crate::reconcile::{self, Context, End};

/// The field manager of what `run` writes to the ModelRollout's spec.
pub const RUN_MANAGER: &str = "rolloutctl-run";

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The rollout reached (or had reached) an outcome.
    Outcome(Outcome, String),
    /// The run could not start or continue: the message says why.
    Refused(String),
    /// A signal stopped it (the number), after releasing the Lease.
    Interrupted(i32),
    /// The InferenceService (or its ModelRollout) was deleted.
    TargetGone(String),
    /// The rolloutctl controller drives this rollout; nothing was written (the message says
    /// how to follow or steer it).
    DrivenByController(String),
}

/// Settings of a run.
pub struct RunConfig {
    /// The policy text (stored in the ModelRollout).
    pub text: String,
    /// The checked policy.
    pub policy: Policy,
    /// Prometheus URL overriding the policy's.
    pub prometheus_url: Option<String>,
    /// Evaluate and report; change nothing.
    pub dry_run: bool,
    /// This runner's identity (Lease holder, Event instance).
    pub holder: String,
    /// Wait for the Lease instead of refusing when another runner holds it.
    pub wait_for_lease: bool,
    /// The Lease's duration (renewed every third of it).
    pub lease_duration: Duration,
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

/// The ModelRollout `run` and `apply` write: the policy text, owned by the InferenceService.
pub fn desired(policy: &Policy, text: &str, owner: &DynamicObject) -> serde_json::Value {
    json!({
        "apiVersion": format!("{}/{}", rollout_api::GROUP, rollout_api::VERSION),
        "kind": rollout_api::KIND,
        "metadata": {
            "name": policy.target.name,
            "namespace": policy.target.namespace,
            "ownerReferences": [{
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "name": owner.name_any(),
                "uid": owner.uid().unwrap_or_default(),
            }],
        },
        "spec": {"policy": text},
    })
}

/// Takes the Lease (waiting if asked), then keeps it renewed; else how the run ends.
async fn take_lease(lock: LeaseLock, wait: bool) -> Result<LeaseHandle, RunEnd> {
    loop {
        match lock.acquire().await {
            Ok(LeaseResult::Held(term)) => return Ok(lock.keep(term)),
            Ok(LeaseResult::HeldBy(h)) if wait => {
                tracing::info!(holder = %h, "another runner holds the Lease; waiting");
                tokio::time::sleep(Duration::from_millis(1500 + fastrand::u64(..1000))).await;
            }
            Ok(LeaseResult::HeldBy(h)) if h.starts_with("the rolloutctl controller") => {
                return Err(RunEnd::DrivenByController(format!(
                    "{h} drives this rollout (Lease {}); follow it with `rolloutctl run --watch` or `rolloutctl status`, steer it with `pause`, `resume`, `approve` or `abort`, or apply a new policy with `rolloutctl apply`",
                    lock.name
                )));
            }
            Ok(LeaseResult::HeldBy(h)) => {
                return Err(RunEnd::Refused(format!(
                    "another rolloutctl ({h}) is driving this rollout (Lease {}); stop it, or wait with `--wait`",
                    lock.name
                )));
            }
            Err(e) if isvc::transient(&e) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                return Err(RunEnd::Refused(format!(
                    "cannot take the Lease {}: {e}",
                    lock.name
                )));
            }
        }
    }
}

/// Runs the policy's rollout to its end.
pub async fn run(client: Client, cfg: RunConfig) -> RunEnd {
    let RunConfig {
        text,
        policy,
        prometheus_url,
        dry_run,
        holder,
        wait_for_lease,
        lease_duration,
        mut on_decision,
    } = cfg;
    let mut signals = crate::signals::Signals::new();
    let (ns, name) = (policy.target.namespace.clone(), policy.target.name.clone());
    let key = format!("{ns}/{name}");
    let target = Isvc::new(client.clone(), &ns, &name);
    let owner = match target.get().await {
        Ok(o) => o,
        Err(e) if isvc::not_found(&e) => {
            return RunEnd::Refused(format!("InferenceService {key} not found"));
        }
        Err(e) => return RunEnd::Refused(format!("cannot read InferenceService {key}: {e}")),
    };
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), &ns);
    let sink: reconcile::Sink = Box::new(move |_, d| on_decision(d));
    if dry_run {
        // Nothing is written: the ModelRollout as it is (or would be) is reconciled in memory.
        let mut mr = match api.get_opt(&name).await {
            Ok(Some(mr)) => mr,
            Ok(None) => {
                let mut mr = ModelRollout::new(&name, ModelRolloutSpec::default());
                mr.metadata.namespace = Some(ns.clone());
                mr
            }
            Err(e) => return RunEnd::Refused(format!("cannot read ModelRollout {key}: {e}")),
        };
        mr.spec.policy = text;
        let ctx = Arc::new(Context::new(
            client,
            &holder,
            prometheus_url,
            true,
            None,
            sink,
        ));
        loop {
            let next = tokio::select! {
                r = reconcile::reconcile_once(&mr, &ctx) => r,
                s = signals.recv() => return RunEnd::Interrupted(s),
            };
            if let Some(end) = ctx.end(&key) {
                return finish(end);
            }
            let delay = match next {
                Ok(d) => d.unwrap_or(Duration::from_secs(1)),
                Err(e) if e.transient() => Duration::from_millis(500),
                Err(e) => return RunEnd::Refused(e.to_string()),
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                s = signals.recv() => return RunEnd::Interrupted(s),
            }
        }
    }
    // The Lease first: one process drives one rollout.
    let taken = tokio::select! {
        l = take_lease(
            LeaseLock::new(client.clone(), &ns, &name, &holder, lease_duration),
            wait_for_lease,
        ) => l,
        s = signals.recv() => return RunEnd::Interrupted(s),
    };
    let lease = match taken {
        Ok(l) => l,
        Err(end) => return end,
    };
    // Then the ModelRollout: create or update its policy (server-side apply, forced: `run`
    // says which policy drives this rollout; intents set by others are left alone). Only the
    // Lease's holder writes it: a refused or waiting runner changes nothing.
    let (params, patch) = (
        PatchParams::apply(RUN_MANAGER).force(),
        Patch::Apply(desired(&policy, &text, &owner)),
    );
    let mut tries = 0;
    loop {
        let applied = tokio::select! {
            r = api.patch(&name, &params, &patch) => r,
            s = signals.recv() => {
                lease.release().await;
                return RunEnd::Interrupted(s);
            }
        };
        match applied {
            Ok(_) => break,
            Err(e) if isvc::transient(&e) && tries < 6 => {
                tries += 1;
                tracing::info!(error = %e, "could not apply the ModelRollout yet; retrying");
                tokio::time::sleep(Duration::from_millis((200 << tries) + fastrand::u64(..200)))
                    .await;
            }
            Err(e) => {
                let hint = if isvc::not_found(&e) {
                    " (is the ModelRollout CRD installed? `kubectl apply -f deploy/crd.yaml` or `rolloutctl crd | kubectl apply -f -`)"
                } else {
                    ""
                };
                lease.release().await;
                return RunEnd::Refused(format!(
                    "cannot create or update ModelRollout {key}: {e}{hint}"
                ));
            }
        }
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        &holder,
        prometheus_url,
        false,
        Some(lease.clone()),
        sink,
    ));
    let isvc_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &isvc::resource());
    let (n2, ns2) = (name.clone(), ns.clone());
    let controller = Controller::new(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .watches_with(
        isvc_api,
        isvc::resource(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
        move |_| Some(ObjectRef::<ModelRollout>::new(&n2).within(&ns2)),
    )
    .run(reconcile::reconcile, reconcile::error_policy, ctx.clone());
    tokio::pin!(controller);
    let end = loop {
        tokio::select! {
            item = controller.next() => {
                match item {
                    None => break RunEnd::Refused("the controller stopped".into()),
                    Some(Err(controller::Error::ReconcilerFailed(e, _))) if !e.transient() => {
                        break ctx.end(&key).map_or_else(|| RunEnd::Refused(e.to_string()), finish);
                    }
                    Some(Err(controller::Error::ObjectNotFound(_))) => {
                        break RunEnd::TargetGone(format!(
                            "ModelRollout {key} was deleted (garbage-collected with its InferenceService?); nothing to roll out"
                        ));
                    }
                    Some(_) => {}
                }
                if let Some(end) = ctx.end(&key) {
                    break finish(end);
                }
            }
            s = signals.recv() => break RunEnd::Interrupted(s),
        }
    };
    lease.release().await;
    end
}

fn finish(end: End) -> RunEnd {
    match end {
        End::Finished(o, msg) => RunEnd::Outcome(o, msg),
        End::Stopped(msg) => RunEnd::Refused(msg),
        End::TargetGone(msg) => RunEnd::TargetGone(msg),
    }
}

/// Whether a reconcile error ends `run` (anything that waiting does not fix).
pub fn fatal(e: &Error) -> bool {
    !e.transient()
}
