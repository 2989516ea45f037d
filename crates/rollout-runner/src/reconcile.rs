//! The one reconcile function: a ModelRollout and a [`Context`] in, an [`Action`] (when to
//! look again) out. Everything it knows comes from the ModelRollout (spec and status), the
//! InferenceService and Prometheus; what it keeps between calls lives in the context, keyed
//! by object, so one context serves one rollout (`rolloutctl run`) or many (a controller).
//!
//! Order of effects, so that a crash or a lost race at any point is safe:
//! 1. decide on the state read from the status (or this context's newer copy of it);
//! 2. write the status, guarded by the ModelRollout's resourceVersion: a 409 means another
//!    writer, and the decision is dropped before anything else happened;
//! 3. only then set `canaryTrafficPercent`, guarded by the InferenceService's resourceVersion
//!    (a lost write is re-issued by the engine, which waits for the traffic it asked for);
//! 4. record Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource as _, ResourceExt as _};
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::{
    Command, Decision, Input, Machine, Observations, Operator, Outcome, Phase, Sample, State,
};
use rollout_policy::Policy;

use crate::error::Error;
use crate::isvc::{self, Isvc};
use crate::lease::LeaseHandle;
use crate::metrics::{self, Prom};
use crate::policy::{self, Edit};
use crate::status::{self, CHECKPOINT_MS, View, set_condition};
use crate::{Millis, intents, now_ms, preflight};

/// How a rollout ended, for whoever drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// It reached (or had reached) an outcome.
    Finished(Outcome, String),
    /// It cannot go on; the message says why and what to do.
    Stopped(String),
}

/// Receives every decision record with its rollout (`namespace/name`).
pub type Sink = Box<dyn FnMut(&str, &Decision) + Send>;

/// What the context remembers of one rollout between reconciles.
struct Memo {
    uid: String,
    /// `status.state` as last written or read: the context's copy is used only while the
    /// object still holds exactly this.
    persisted: Option<serde_json::Value>,
    state: State,
    written_at: Millis,
    /// The policy hash and its compiled machine.
    machine: Option<(String, Machine)>,
    /// Consecutive failed reconciles (for the backoff).
    failures: u32,
    /// In a dry run: the status that would have been written.
    dry: Option<ModelRolloutStatus>,
}

/// Everything a reconcile needs besides the object.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// This driver's identity (Event `reportingInstance`, Lease holder).
    pub holder: String,
    /// A Prometheus URL overriding the policies'.
    pub prometheus_url: Option<String>,
    /// Evaluate and report; write nothing to the cluster.
    pub dry_run: bool,
    /// The Lease this driver must hold to write (none in a dry run).
    pub lease: Option<LeaseHandle>,
    sink: Mutex<Sink>,
    memo: Mutex<HashMap<String, Memo>>,
    proms: Mutex<HashMap<String, Prom>>,
    recorder: Recorder,
    ends: Mutex<HashMap<String, End>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("holder", &self.holder)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

impl Context {
    /// A context. `on_decision` gets every decision record with its rollout (`ns/name`).
    pub fn new(
        client: Client,
        holder: &str,
        prometheus_url: Option<String>,
        dry_run: bool,
        lease: Option<LeaseHandle>,
        on_decision: Sink,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "rolloutctl".into(),
                instance: Some(holder.chars().take(128).collect()),
            },
        );
        Context {
            client,
            holder: holder.to_string(),
            prometheus_url,
            dry_run,
            lease,
            sink: Mutex::new(on_decision),
            memo: Mutex::new(HashMap::new()),
            proms: Mutex::new(HashMap::new()),
            recorder,
            ends: Mutex::new(HashMap::new()),
        }
    }

    /// How the rollout `ns/name` ended, once it has.
    pub fn end(&self, key: &str) -> Option<End> {
        self.ends.lock().ok().and_then(|e| e.get(key).cloned())
    }

    fn set_end(&self, key: &str, end: End) {
        if let Ok(mut e) = self.ends.lock() {
            e.insert(key.to_string(), end);
        }
    }

    fn prom(&self, p: &Policy) -> Result<Prom, String> {
        let url = self
            .prometheus_url
            .clone()
            .unwrap_or_else(|| p.prometheus.url.clone());
        let key = format!(
            "{url}|{:?}|{:?}",
            p.prometheus.auth.token_file, p.prometheus.auth.basic_auth_file
        );
        if let Some(c) = self.proms.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let c = Prom::for_policy(p, Some(&url))?;
        if let Ok(mut m) = self.proms.lock() {
            m.insert(key, c.clone());
        }
        Ok(c)
    }

    fn may_write(&self) -> Result<(), Error> {
        match &self.lease {
            Some(l) if !l.held() => Err(Error::LeaseLost {
                lease: l.lock.name.clone(),
                holder: l.lost_to(),
            }),
            _ => Ok(()),
        }
    }

    fn with_memo<T>(&self, key: &str, f: impl FnOnce(Option<&mut Memo>) -> T) -> T {
        match self.memo.lock() {
            Ok(mut m) => f(m.get_mut(key)),
            Err(_) => f(None),
        }
    }
}

fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The retry delay after a failed reconcile: bounded, jittered, doubling.
pub fn error_policy(mr: Arc<ModelRollout>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", mr.namespace().unwrap_or_default(), mr.name_any());
    let failures = ctx.with_memo(&key, |m| {
        m.map_or(1, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
    });
    let base: u64 = if matches!(err, Error::Conflict(_)) {
        100
    } else {
        500
    };
    let ms = (base << failures.min(6)).min(30_000);
    let jitter = fastrand::u64(..=ms / 4);
    tracing::warn!(rollout = %key, error = %err, retry_in_ms = ms + jitter, "reconcile failed");
    Action::requeue(Duration::from_millis(ms + jitter))
}

/// Reconciles one ModelRollout.
pub async fn reconcile(mr: Arc<ModelRollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    Ok(match reconcile_once(&mr, &ctx).await? {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Reconciles one ModelRollout once, for drivers without a `Controller` (dry runs, `abort`
/// with no runner): `Some(delay)` until the next reconcile is due, `None` when only a change
/// can make one useful.
pub async fn reconcile_once(mr: &ModelRollout, ctx: &Context) -> Result<Option<Duration>, Error> {
    let key = format!("{}/{}", mr.namespace().unwrap_or_default(), mr.name_any());
    let result = reconcile_one(mr, ctx, &key).await;
    match &result {
        Ok(_) => ctx.with_memo(&key, |m| {
            if let Some(m) = m {
                m.failures = 0;
            }
        }),
        Err(e) if !e.transient() => ctx.set_end(&key, End::Stopped(e.to_string())),
        Err(_) => {}
    }
    result
}

/// Writes the status (guarded), unless this is a dry run.
async fn write_status(
    ctx: &Context,
    mr: &ModelRollout,
    key: &str,
    status: &ModelRolloutStatus,
) -> Result<(), Error> {
    if ctx.dry_run {
        ctx.with_memo(key, |m| {
            if let Some(m) = m {
                m.dry = Some(status.clone());
            }
        });
        return Ok(());
    }
    ctx.may_write()?;
    let api: Api<ModelRollout> =
        Api::namespaced(ctx.client.clone(), &mr.namespace().unwrap_or_default());
    let mut next = mr.clone();
    next.status = Some(status.clone());
    match api
        .replace_status(&mr.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if isvc::conflict(&e) => Err(Error::Conflict(format!("ModelRollout {key}"))),
        Err(e) => Err(Error::kube(
            format!("writing the status of ModelRollout {key}"),
            e,
        )),
    }
}

/// Records a condition-only change (no engine step), then returns `err`.
async fn stop_with(
    ctx: &Context,
    mr: &ModelRollout,
    key: &str,
    mut status: ModelRolloutStatus,
    original: &ModelRolloutStatus,
    cond: (&str, &str, &str),
    err: Error,
) -> Result<Option<Duration>, Error> {
    set_condition(
        &mut status.conditions,
        cond.0,
        "False",
        cond.1,
        cond.2,
        now_ms(),
        mr.metadata.generation,
    );
    if status != *original {
        write_status(ctx, mr, key, &status).await?;
    }
    Err(err)
}

async fn reconcile_one(
    mr: &ModelRollout,
    ctx: &Context,
    key: &str,
) -> Result<Option<Duration>, Error> {
    let now = now_ms();
    let name = mr.name_any();
    let ns = mr.namespace().unwrap_or_default();
    let uid = mr.uid().unwrap_or_default();
    let generation = mr.metadata.generation;
    let stored = mr.status.clone().unwrap_or_default();
    let mut status = if ctx.dry_run {
        ctx.with_memo(key, |m| m.and_then(|m| m.dry.clone()))
            .unwrap_or(stored)
    } else {
        stored
    };
    let original = status.clone();

    // The policy, checked on every read.
    let policy = match policy::check(&format!("ModelRollout {key}"), &mr.spec.policy) {
        Ok(p) => p,
        Err(diagnostics) => {
            let err = Error::InvalidPolicy {
                rollout: key.to_string(),
                diagnostics: diagnostics.clone(),
            };
            let msg = format!(
                "{diagnostics}\nno decision is made until the policy is fixed; traffic stays where it is"
            );
            return stop_with(
                ctx,
                mr,
                key,
                status,
                &original,
                ("PolicyValid", "InvalidPolicy", &msg),
                err,
            )
            .await;
        }
    };
    if policy.target.name != name || policy.target.namespace != ns {
        let msg = format!(
            "the policy targets InferenceService {}/{}; a ModelRollout drives the InferenceService of its own name and namespace ({key})",
            policy.target.namespace, policy.target.name
        );
        return stop_with(
            ctx,
            mr,
            key,
            status,
            &original,
            ("PolicyValid", "TargetMismatch", &msg),
            Error::Refused(msg.clone()),
        )
        .await;
    }
    set_condition(
        &mut status.conditions,
        "PolicyValid",
        "True",
        "Checked",
        &format!(
            "policy `{}`: {} steps, {} rules",
            policy.name,
            policy.steps.len(),
            policy.rules.len()
        ),
        now,
        generation,
    );
    let fp = policy::fingerprint(&policy);
    let machine = ctx
        .with_memo(key, |m| {
            m.and_then(|m| {
                m.machine
                    .as_ref()
                    .filter(|(h, _)| *h == fp.hash)
                    .map(|(_, mc)| mc.clone())
            })
        })
        .unwrap_or_else(|| Machine::compile(policy.clone()));

    // The target.
    if !ctx.dry_run {
        ctx.may_write()?;
    }
    let target = Isvc::new(ctx.client.clone(), &ns, &name);
    let obj = match target.get().await {
        Ok(o) => o,
        Err(e) if isvc::not_found(&e) => {
            let msg =
                format!("InferenceService {key} does not exist (deleted?); nothing to roll out");
            return stop_with(
                ctx,
                mr,
                key,
                status,
                &original,
                ("TargetFound", "NotFound", &msg),
                Error::TargetNotFound {
                    target: key.to_string(),
                },
            )
            .await;
        }
        Err(e) => return Err(Error::kube(format!("reading InferenceService {key}"), e)),
    };
    let component = policy.target.component.as_str();
    let mode = isvc::deployment_mode(&obj);
    if matches!(mode.as_str(), "Standard" | "RawDeployment") {
        let msg = format!(
            "InferenceService {key} is in Standard mode, where KServe ignores canaryTrafficPercent; rolloutctl drives canaries in Knative mode (KServe's webhook refuses to change the mode of an existing InferenceService: create it with `serving.kserve.io/deploymentMode: Knative`)"
        );
        return stop_with(
            ctx,
            mr,
            key,
            status,
            &original,
            ("TargetFound", "StandardMode", &msg),
            Error::Refused(msg.clone()),
        )
        .await;
    }
    if !isvc::has_component(&obj, component) {
        let msg = format!(
            "InferenceService {key} has no `spec.{component}`, the component the policy targets (`target.component`); nothing is written"
        );
        return stop_with(
            ctx,
            mr,
            key,
            status,
            &original,
            ("TargetFound", "NoComponent", &msg),
            Error::Refused(msg.clone()),
        )
        .await;
    }
    set_condition(
        &mut status.conditions,
        "TargetFound",
        "True",
        "Found",
        &format!("InferenceService {key}, {mode} mode, component {component}"),
        now,
        generation,
    );
    let cluster = isvc::observe(&obj, component);
    let comp = &obj.data["status"]["components"][component];
    let latest_created = comp["latestCreatedRevision"].as_str().map(str::to_string);
    let rolled_out = comp["latestRolledoutRevision"].as_str().map(str::to_string);

    // The state: this context's copy while the object still holds what it wrote, else the
    // object's; it must fit the policy.
    let from_object = match status.state.clone() {
        None => None,
        Some(v) => match serde_json::from_value::<State>(v) {
            Ok(s) => Some(s),
            Err(e) => {
                let detail = format!("it cannot be read ({e})");
                let msg = format!(
                    "{detail}; traffic is left where it is; `rolloutctl retry {name}` starts the rollout over"
                );
                return stop_with(
                    ctx,
                    mr,
                    key,
                    status,
                    &original,
                    ("Progressing", "InvalidState", &msg),
                    Error::InvalidState {
                        rollout: key.to_string(),
                        detail,
                    },
                )
                .await;
            }
        },
    };
    let memo_state = ctx.with_memo(key, |m| {
        m.filter(|m| m.uid == uid && m.persisted == status.state)
            .map(|m| (m.state.clone(), m.written_at))
    });
    let restarted = memo_state.is_none() && from_object.is_some();
    let (mut state, mut written_at) = match memo_state {
        Some((s, w)) => (Some(s), w),
        None => (from_object, 0),
    };
    let mut pending_events: Vec<Command> = Vec::new();
    if let (Some(st), Some(old)) = (state.as_mut(), status.policy.clone())
        && !st.phase.is_terminal()
    {
        match policy::compare(&old, &fp, st.step) {
            Edit::Same => {}
            Edit::Keeps(detail) => {
                machine.remap_rules(st, &old.rules);
                pending_events.push(Command::Event {
                    warning: false,
                    reason: "PolicyChanged".into(),
                    message: detail,
                });
            }
            Edit::Pauses(detail) => {
                machine.remap_rules(st, &old.rules);
                let out = machine.pause_for_policy_change(st, now, detail);
                pending_events.extend(
                    out.commands
                        .into_iter()
                        .filter(|c| matches!(c, Command::Event { .. })),
                );
            }
        }
    }
    if let Some(st) = &state
        && let Err(detail) = machine.check_state(st)
    {
        let msg = format!(
            "{detail}; traffic is left where it is; `rolloutctl retry {name}` starts the rollout over"
        );
        return stop_with(
            ctx,
            mr,
            key,
            status,
            &original,
            ("Progressing", "InvalidState", &msg),
            Error::InvalidState {
                rollout: key.to_string(),
                detail,
            },
        )
        .await;
    }
    if restarted && let Some(st) = state.as_mut() {
        status::after_restart(st, &machine, now);
    }

    // A new rollout, the same one, or nothing to do.
    let mut attempt = status.attempt.unwrap_or(1);
    let retry_for = |rev: &str, last_attempt: u32| {
        mr.spec
            .retry
            .as_ref()
            .is_some_and(|r| r.revision == rev && r.attempt == last_attempt + 1)
    };
    let mut state = match state {
        Some(st) if !st.phase.is_terminal() => st,
        prev => {
            let prev = prev.filter(|p| p.canary_revision.is_some());
            let candidate = latest_created.clone().unwrap_or_default();
            let same = prev
                .as_ref()
                .is_some_and(|p| p.canary_revision.as_deref() == Some(candidate.as_str()));
            let blocked = status::last_outcome(&status, &candidate)
                .filter(|h| matches!(h.outcome.as_str(), "rolled_back" | "aborted"))
                .map(|h| (h.outcome.clone(), h.attempt, h.reason.clone()));
            if let Some(p) = prev
                .as_ref()
                .filter(|_| same && !retry_for(&candidate, attempt))
            {
                let outcome = Outcome::of(p);
                let msg = match outcome {
                    Outcome::Promoted => format!("the rollout of `{candidate}` was promoted"),
                    _ => format!(
                        "the rollout of `{candidate}` ended {}; it is not rolled out again unless `rolloutctl retry {name}`",
                        outcome.as_str().replace('_', " ")
                    ),
                };
                if status != original {
                    write_status(ctx, mr, key, &status).await?;
                }
                ctx.set_end(key, End::Finished(outcome, msg));
                return Ok(None);
            }
            if let Some((outcome, last_attempt, reason)) = blocked.filter(|_| !same)
                && !retry_for(&candidate, last_attempt)
            {
                let msg = format!(
                    "canary revision `{candidate}` was {} before ({reason}); it is not rolled out again unless `rolloutctl retry {name}`",
                    outcome.replace('_', " ")
                );
                set_condition(
                    &mut status.conditions,
                    "Progressing",
                    "False",
                    "Blocked",
                    &msg,
                    now,
                    generation,
                );
                if status != original {
                    write_status(ctx, mr, key, &status).await?;
                }
                let o = if outcome == "aborted" {
                    Outcome::Aborted
                } else {
                    Outcome::RolledBack
                };
                ctx.set_end(key, End::Finished(o, msg));
                return Ok(None);
            }
            if latest_created.is_none() || latest_created == rolled_out {
                let msg = format!(
                    "no canary: `{}` already serves all traffic; deploy a new model revision (with `canaryTrafficPercent`) first",
                    latest_created.clone().unwrap_or_default()
                );
                set_condition(
                    &mut status.conditions,
                    "Progressing",
                    "False",
                    "NoCanary",
                    &msg,
                    now,
                    generation,
                );
                if status != original {
                    write_status(ctx, mr, key, &status).await?;
                }
                ctx.set_end(key, End::Stopped(msg));
                return Ok(None);
            }
            // A new rollout (a new canary revision, or a retry of this one).
            if let Some(p) = &prev {
                status::archive(&mut status, p);
            }
            attempt = match &mr.spec.retry {
                Some(r) if r.revision == candidate => r.attempt,
                _ => {
                    1 + status
                        .history
                        .iter()
                        .filter(|h| h.canary_revision == candidate)
                        .map(|h| h.attempt)
                        .max()
                        .unwrap_or(0)
                }
            };
            status.attempt = Some(attempt);
            status.start_time = None;
            status.end_time = None;
            status.rules.clear();
            status.conditions.retain(|c| c.type_ != "Preflight");
            status.canary_model_uri = isvc::storage_uri(&obj, component);
            written_at = 0;
            machine.initial_state()
        }
    };
    status.policy = Some(fp.clone());
    status.attempt = Some(attempt);
    let candidate = latest_created.clone();

    // Intents, measurements, one engine step.
    let ops = intents::operators(&mr.spec, &state, candidate.as_deref(), attempt);
    // Preflight, before the first traffic change.
    if matches!(state.phase, Phase::Starting { .. })
        && !ops.contains(&Operator::Abort)
        && cluster.ready
        && cluster.stable_revision.is_some()
        && status
            .condition("Preflight")
            .is_none_or(|c| c.status != "True")
    {
        let stable = cluster.stable_revision.clone().unwrap_or_default();
        let checked = match ctx.prom(&policy) {
            Ok(p) => preflight::check(&machine, &p, &stable, now).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(msg) => set_condition(
                &mut status.conditions,
                "Preflight",
                "True",
                "Passed",
                &msg,
                now,
                generation,
            ),
            Err(msg) => {
                return stop_with(
                    ctx,
                    mr,
                    key,
                    status,
                    &original,
                    ("Preflight", "MetricsMissing", &msg),
                    Error::Preflight(msg.clone()),
                )
                .await;
            }
        }
    }

    let keys = if ops.contains(&Operator::Abort) {
        Vec::new()
    } else {
        machine.queries(&state, now)
    };
    let mut observations = Observations::default();
    if !keys.is_empty() {
        let (canary, stable) = (
            state.canary_revision.clone().unwrap_or_default(),
            state.stable_revision.clone().unwrap_or_default(),
        );
        match ctx.prom(&policy) {
            Ok(prom) => {
                let queries = keys.iter().map(|k| {
                    let q = metrics::render(&policy, k, &canary, &stable);
                    let prom = prom.clone();
                    async move {
                        match q {
                            Some(q) => prom.query(&q, now).await,
                            None => Sample::NoData,
                        }
                    }
                });
                let samples = futures_util::future::join_all(queries).await;
                for (k, s) in keys.into_iter().zip(samples) {
                    if let Sample::Error { message } = &s {
                        tracing::warn!(rollout = %key, %message, "query failed");
                    }
                    observations.push(k, s);
                }
            }
            Err(message) => {
                for k in keys {
                    observations.push(
                        k,
                        Sample::Error {
                            message: message.clone(),
                        },
                    );
                }
            }
        }
    }
    let before = state.clone();
    let out = machine.step(
        &mut state,
        &Input {
            now,
            cluster: Some(cluster),
            observations,
            operator: ops,
        },
    );
    if let Ok(mut sink) = ctx.sink.lock() {
        sink(key, &out.decision);
    }

    // The status, written when something worth keeping changed.
    status::fill(
        &mut status,
        &View {
            machine: &machine,
            state: &state,
            decision: &out.decision,
            name: &name,
            candidate: candidate.as_deref(),
            now,
            generation,
        },
    );
    if state.phase.is_terminal() {
        status::archive(&mut status, &state);
    }
    let traffic = out.commands.iter().rev().find_map(|c| match c {
        Command::SetTraffic { percent } => Some(*percent),
        Command::Promote => Some(100),
        Command::Rollback => Some(0),
        _ => None,
    });
    let persisted_state: Option<State> = original
        .state
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let skeleton_changed = persisted_state
        .as_ref()
        .is_none_or(|p| status::skeleton(p) != status::skeleton(&state));
    let strip = |s: &ModelRolloutStatus| {
        let mut s = s.clone();
        s.state = None;
        s.state_time = None;
        s.last_decision = None;
        s
    };
    let significant = skeleton_changed
        || strip(&status) != strip(&original)
        || traffic.is_some()
        || !pending_events.is_empty()
        || (state != before && now.saturating_sub(written_at) >= CHECKPOINT_MS);
    if significant {
        write_status(ctx, mr, key, &status).await?;
        written_at = now;
    }
    let persisted = if significant {
        status.state.clone()
    } else {
        original.state.clone()
    };
    {
        let machine_entry = (fp.hash.clone(), machine.clone());
        if let Ok(mut m) = ctx.memo.lock() {
            let e = m.entry(key.to_string()).or_insert_with(|| Memo {
                uid: uid.clone(),
                persisted: None,
                state: state.clone(),
                written_at,
                machine: None,
                failures: 0,
                dry: None,
            });
            e.uid = uid.clone();
            e.persisted = persisted;
            e.state = state.clone();
            e.written_at = written_at;
            e.machine = Some(machine_entry);
            if ctx.dry_run {
                e.dry = Some(status.clone());
            }
        }
    }

    // Traffic, the one write to the InferenceService.
    let mut soon = false;
    if let Some(p) = traffic {
        if ctx.dry_run {
            tracing::info!(rollout = %key, traffic = p, "dry run: would set canaryTrafficPercent");
        } else {
            ctx.may_write()?;
            let rv = obj.metadata.resource_version.clone().unwrap_or_default();
            match target.set_traffic(component, &rv, p).await {
                Ok(_) => {
                    tracing::info!(rollout = %key, traffic = p, "set spec.{component}.canaryTrafficPercent")
                }
                Err(e) if isvc::conflict(&e) => {
                    tracing::info!(rollout = %key, "the InferenceService changed since it was read (409); the traffic write is made again");
                    soon = true;
                }
                Err(e) => {
                    return Err(Error::kube(
                        format!(
                            "setting spec.{component}.canaryTrafficPercent of InferenceService {key} to {p}"
                        ),
                        e,
                    ));
                }
            }
        }
    }

    // Events.
    if !ctx.dry_run {
        let reference = mr.object_ref(&());
        for c in pending_events.iter().chain(out.commands.iter()) {
            if let Command::Event {
                warning,
                reason,
                message,
            } = c
            {
                let ev = Event {
                    type_: if *warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.clone(),
                    note: Some(truncate_bytes(message, 1024)),
                    action: "Rollout".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
                    tracing::warn!(error = %e, "could not record an event");
                }
            }
        }
    }

    if state.phase.is_terminal() {
        let outcome = Outcome::of(&state);
        ctx.set_end(key, End::Finished(outcome, out.decision.reason.clone()));
        return Ok(None);
    }
    let wake = out.commands.iter().find_map(|c| match c {
        Command::WaitUntil { at } => Some(*at),
        _ => None,
    });
    let delay = match (soon, wake) {
        (true, _) => 200,
        (false, Some(at)) => at.saturating_sub(now_ms()),
        (false, None) => 1000,
    };
    Ok(Some(Duration::from_millis(delay.clamp(50, 300_000))))
}
