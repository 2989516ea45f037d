//! The operator verbs: `status` reads the ModelRollout and its Lease; `approve`, `pause`,
//! `resume`, `abort`, `promote` and `retry` write an intent into its spec (a read-modify-write
//! guarded by its resourceVersion, retried on 409) for whatever drives it. `abort` with no
//! live driver performs the rollback itself, through the same reconcile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use rollout_api::{
    Approval, ModelRollout, ModelRolloutSpec, ResumeIntent, RetryIntent, RevisionIntent,
};
use serde_json::json;

use crate::error::Error;
use crate::isvc;
use crate::lease::{LeaseLock, LeaseResult};
use crate::reconcile::{self, Context, End};

/// The field manager of intents.
pub const MANAGER: &str = "rolloutctl";

/// An operator's intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Pass the approval gate the rollout waits at (or the given 1-based step).
    Approve(Option<u32>),
    /// Hold the rollout where it is.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Roll back now.
    Abort,
    /// Promote now.
    Promote,
    /// Roll out a rolled-back, aborted or failed canary again, or restart a paused one.
    Retry,
}

/// A ModelRollout and who drives it.
#[derive(Clone, Debug)]
pub struct Report {
    /// The object.
    pub rollout: ModelRollout,
    /// The live Lease holder, if any.
    pub holder: Option<String>,
}

/// Reads a ModelRollout and its Lease.
pub async fn report(client: &Client, ns: &str, name: &str) -> Result<Report, Error> {
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns);
    let rollout = api.get(name).await.map_err(|e| {
        if isvc::not_found(&e) {
            Error::Refused(format!(
                "no ModelRollout {ns}/{name}: `rolloutctl run <policy>` (or `kubectl apply`) creates it"
            ))
        } else {
            Error::kube(format!("reading ModelRollout {ns}/{name}"), e)
        }
    })?;
    let holder = LeaseLock::new(client.clone(), ns, name, "", Duration::from_secs(15))
        .holder()
        .await
        .map_err(|e| Error::kube("reading the Lease", e))?;
    Ok(Report { rollout, holder })
}

/// The spec after the verb, and what it means in words; `Err` when the verb does not apply.
pub fn apply_verb(mr: &ModelRollout, verb: Verb) -> Result<(ModelRolloutSpec, String), String> {
    let mut spec = mr.spec.clone();
    let status = mr.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "not started".into());
    let canary = status.canary_revision.clone();
    let need = |what: &str| {
        canary
            .clone()
            .ok_or_else(|| format!("there is no rollout to {what} yet (phase: {phase})"))
    };
    let attempt = status.attempt.unwrap_or(1);
    let said = match verb {
        Verb::Approve(step) => {
            let revision = need("approve")?;
            let step = match step {
                Some(s) => s,
                None if phase == "awaiting_approval" => status.step.unwrap_or(1),
                None => {
                    return Err(format!(
                        "the rollout is not waiting for approval (phase {phase} at step {}); give `--step N` to approve a later gate",
                        status.step.unwrap_or(0)
                    ));
                }
            };
            let a = Approval {
                revision: revision.clone(),
                attempt,
                step,
            };
            if !spec.approvals.contains(&a) {
                spec.approvals.push(a);
            }
            format!("approved step {step} of `{revision}`")
        }
        Verb::Pause => {
            spec.paused = true;
            "paused".to_string()
        }
        Verb::Resume => {
            spec.paused = false;
            match (phase.as_str(), &status.paused_at) {
                ("paused", Some(at)) => {
                    let revision = need("resume")?;
                    spec.resume = Some(ResumeIntent {
                        revision,
                        paused_at: at.clone(),
                    });
                    format!("resumed the pause that began at {at}")
                }
                _ => "resumed (it was not paused)".to_string(),
            }
        }
        Verb::Abort => {
            let revision = need("abort")?;
            spec.abort = Some(RevisionIntent {
                revision: revision.clone(),
            });
            format!("abort of `{revision}`")
        }
        Verb::Promote => {
            let revision = need("promote")?;
            spec.promote = Some(RevisionIntent {
                revision: revision.clone(),
            });
            format!("promotion of `{revision}`")
        }
        Verb::Retry => {
            let revision = need("retry")?;
            let last = status
                .history
                .iter()
                .filter(|h| h.canary_revision == revision)
                .map(|h| h.attempt)
                .max()
                .unwrap_or(attempt)
                .max(attempt);
            spec.retry = Some(RetryIntent {
                revision: revision.clone(),
                attempt: last + 1,
            });
            if spec.abort.as_ref().is_some_and(|a| a.revision == revision) {
                spec.abort = None;
            }
            if spec
                .promote
                .as_ref()
                .is_some_and(|a| a.revision == revision)
            {
                spec.promote = None;
            }
            format!("retry of `{revision}` (attempt {})", last + 1)
        }
    };
    Ok((spec, said))
}

/// Writes a verb's intent; returns the object as written and what it means.
pub async fn send(
    client: &Client,
    ns: &str,
    name: &str,
    verb: Verb,
) -> Result<(ModelRollout, String), Error> {
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns);
    for _ in 0..10 {
        let mr = report(client, ns, name).await?.rollout;
        let (spec, said) = apply_verb(&mr, verb).map_err(Error::Refused)?;
        let patch = json!({
            "metadata": {"resourceVersion": mr.metadata.resource_version},
            "spec": {
                "paused": spec.paused,
                "resume": spec.resume,
                "abort": spec.abort,
                "promote": spec.promote,
                "approvals": spec.approvals,
                "retry": spec.retry,
            },
        });
        match api
            .patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(patch))
            .await
        {
            Ok(written) => return Ok((written, said)),
            Err(e) if isvc::conflict(&e) => continue,
            Err(e) => {
                return Err(Error::kube(
                    format!("writing the intent to ModelRollout {ns}/{name}"),
                    e,
                ));
            }
        }
    }
    Err(Error::Conflict(format!(
        "ModelRollout {ns}/{name} kept changing"
    )))
}

/// With no live driver: takes the Lease and reconciles the ModelRollout until its rollback is
/// confirmed (or `timeout`), then releases the Lease. Returns how it ended.
pub async fn abort_without_runner(
    client: &Client,
    ns: &str,
    name: &str,
    holder: &str,
    prometheus_url: Option<String>,
    timeout: Duration,
) -> Result<End, Error> {
    let lock = LeaseLock::new(client.clone(), ns, name, holder, Duration::from_secs(15));
    let term = match lock
        .acquire()
        .await
        .map_err(|e| Error::kube("taking the Lease", e))?
    {
        LeaseResult::Held(term) => term,
        LeaseResult::HeldBy(h) => {
            return Ok(End::Stopped(format!(
                "{h} took the Lease first; it performs the abort"
            )));
        }
    };
    let lease = lock.keep(term);
    let ctx = Arc::new(Context::new(
        client.clone(),
        holder,
        prometheus_url,
        false,
        Some(lease.clone()),
        Box::new(|_, _| {}),
    ));
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns);
    let key = format!("{ns}/{name}");
    let deadline = Instant::now() + timeout;
    let end = loop {
        let mr = api
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading ModelRollout {key}"), e))?;
        let next = reconcile::reconcile_once(&mr, &ctx).await;
        if let Some(end) = ctx.end(&key) {
            break end;
        }
        match next {
            Err(e) if !e.transient() => break End::Stopped(e.to_string()),
            _ if Instant::now() > deadline => {
                break End::Stopped(format!(
                    "the rollback was written but not confirmed by KServe within {}s; `rolloutctl status {name}` shows where it is",
                    timeout.as_secs()
                ));
            }
            Ok(d) => {
                tokio::time::sleep(
                    d.unwrap_or(Duration::from_millis(500))
                        .min(Duration::from_millis(500)),
                )
                .await
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    lease.release().await;
    Ok(end)
}
