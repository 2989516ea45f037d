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

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt as _};
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::{
    Command, Input, Machine, Observations, Operator, Outcome, Phase, Sample, State,
};

pub use crate::context::{Context, End, Sink, error_policy};
use crate::context::{Memo, truncate_bytes};
use crate::error::Error;
use crate::isvc::{self, Isvc};
use crate::policy::{self, Edit};
use crate::status::{self, CHECKPOINT_MS, View, set_condition};
use crate::{intents, lifecycle, now_ms, preflight, standard};
use crate::{metrics, share};

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
    // Fencing: decide only on the object as the API server has it now when the watch's copy
    // may be stale (first sight, a 409, the Lease taken back after another runner held it).
    let fresh;
    let mr = if ctx.cache_trusted(&key) && ctx.newest_written(&key, mr) {
        mr
    } else {
        let api: Api<ModelRollout> =
            Api::namespaced(ctx.client.clone(), &mr.namespace().unwrap_or_default());
        match api.get_opt(&mr.name_any()).await {
            Ok(Some(o)) => {
                ctx.read_fresh(&key);
                fresh = o;
                &fresh
            }
            Ok(None) => {
                let gone = Error::RolloutGone {
                    rollout: key.clone(),
                };
                ctx.set_end(&key, End::TargetGone(gone.to_string()));
                return Ok(None);
            }
            Err(e) => return Err(Error::kube(format!("reading ModelRollout {key}"), e)),
        }
    };
    let result = reconcile_one(mr, ctx, &key).await;
    match &result {
        Ok(_) => ctx.with_memo(&key, |m| {
            if let Some(m) = m {
                m.failures = 0;
            }
        }),
        Err(e @ (Error::TargetNotFound { .. } | Error::RolloutGone { .. })) => {
            ctx.set_end(&key, End::TargetGone(e.to_string()));
        }
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
    let mut status = status.clone();
    status.lease_term = ctx.term();
    next.status = Some(status);
    match api
        .replace_status(&mr.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(written) => {
            ctx.wrote_rollout(key, written.resource_version());
            Ok(())
        }
        Err(e) if isvc::conflict(&e) => {
            ctx.distrust(key);
            Err(Error::Conflict(format!("ModelRollout {key}")))
        }
        Err(e) if isvc::not_found(&e) => Err(Error::RolloutGone {
            rollout: key.to_string(),
        }),
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

/// Stops on a stored state that cannot be driven, saying how to recover.
async fn invalid_state(
    ctx: &Context,
    mr: &ModelRollout,
    key: &str,
    status: ModelRolloutStatus,
    original: &ModelRolloutStatus,
    detail: String,
) -> Result<Option<Duration>, Error> {
    let msg = format!(
        "the stored state is invalid: {detail}; nothing is decided and traffic is left where it is; `rolloutctl retry {}` starts the rollout over",
        mr.name_any()
    );
    let err = Error::InvalidState {
        rollout: key.to_string(),
        detail,
    };
    stop_with(
        ctx,
        mr,
        key,
        status,
        original,
        ("Progressing", "InvalidState", &msg),
        err,
    )
    .await
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

    // The policy, checked on every read of a new text (a text already checked is not parsed
    // again: its checked form, fingerprint and machine are remembered with its hash).
    let source = ctx.source_hash(&mr.spec.policy);
    let known = ctx.with_memo(key, |m| {
        m.and_then(|m| m.checked.as_ref().filter(|c| c.0 == source).cloned())
    });
    let (machine, fp) = match known {
        Some((_, machine, fp)) => (machine, fp),
        None => {
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
            let fp = policy::fingerprint(&policy);
            let machine = ctx
                .with_memo(key, |m| {
                    m.and_then(|m| {
                        m.checked
                            .as_ref()
                            .filter(|c| c.2.hash == fp.hash)
                            .map(|c| c.1.clone())
                    })
                })
                .unwrap_or_else(|| Machine::compile(policy));
            (machine, fp)
        }
    };
    let policy = machine.policy();
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

    // The target.
    if !ctx.dry_run {
        ctx.may_write()?;
    }
    let target = Isvc::new(ctx.client.clone(), &ns, &name);
    let (mut obj, cached) = match ctx.read_target(key, &target).await {
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
    let mode = isvc::mode(&obj);
    if let Some(msg) = standard_refusal(&obj, mode, component, key) {
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
        &format!(
            "InferenceService {key}, {} mode, component {component}",
            isvc::deployment_mode(&obj)
        ),
        now,
        generation,
    );
    let (latest_created, rolled_out, model_uri) = match mode {
        isvc::Mode::Knative => {
            let comp = &obj.data["status"]["components"][component];
            (
                comp["latestCreatedRevision"].as_str().map(str::to_string),
                comp["latestRolledoutRevision"].as_str().map(str::to_string),
                isvc::storage_uri(&obj, component),
            )
        }
        isvc::Mode::Standard => {
            let (candidate, stable) = standard::revisions(&obj);
            (Some(candidate), Some(stable), standard::model_uri(&obj))
        }
    };

    // The state: this context's copy while the object still holds what it wrote, else the
    // object's; it must fit the policy.
    // A state that cannot be read or does not fit the policy is never acted on, and never
    // silently replaced: only `rolloutctl retry` (the next attempt) starts over.
    let retry_now = mr.spec.retry.as_ref().is_some_and(|r| {
        latest_created.as_deref() == Some(r.revision.as_str())
            && r.attempt == status.attempt.unwrap_or(1) + 1
    });
    if let Some(stored) = &status.state
        && status.state_digest.as_deref() != Some(status::digest(&uid, &stored.value()).as_str())
        && !retry_now
    {
        let detail = "it does not match its digest (edited by hand, corrupted, or copied from another ModelRollout)".to_string();
        return invalid_state(ctx, mr, key, status, &original, detail).await;
    }
    let from_object = match status
        .state
        .as_ref()
        .map(|t| serde_json::from_str::<State>(t.as_str()))
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) if retry_now => None,
        Some(Err(e)) => {
            let detail = format!("it cannot be read ({e})");
            return invalid_state(ctx, mr, key, status, &original, detail).await;
        }
    };
    let memo_state = ctx.with_memo(key, |m| {
        m.filter(|m| m.uid == uid && !m.superseded && m.persisted == status.state)
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
        if retry_now {
            state = None;
        } else {
            return invalid_state(ctx, mr, key, status, &original, detail).await;
        }
    }
    if restarted && let Some(st) = state.as_mut() {
        status::after_restart(st, &machine, now);
    }

    // A new rollout, the same one, or nothing to do.
    let which = lifecycle::which(
        &lifecycle::Facts {
            spec: &mr.spec,
            name: &name,
            state,
            latest_created: latest_created.as_deref(),
            rolled_out: rolled_out.as_deref(),
            model_uri,
            now,
            generation,
        },
        &mut status,
    );
    let (mut state, attempt) = match which {
        lifecycle::Which::Drive {
            state,
            attempt,
            fresh,
            event,
        } => {
            if fresh {
                written_at = 0;
                state_is_new(&mut pending_events, event);
            }
            (
                state.map_or_else(|| machine.initial_state(), |s| *s),
                attempt,
            )
        }
        lifecycle::Which::Done(end) => {
            if status != original {
                write_status(ctx, mr, key, &status).await?;
            }
            ctx.set_end(key, end);
            return Ok(None);
        }
    };
    status.policy = Some(fp.clone());
    status.attempt = Some(attempt);
    let candidate = latest_created.clone();

    // Traffic someone else set (kubectl, a GitOps sync): never leave the canary at more (or
    // other) traffic than this step allows; restore it at once and say who changed it.
    if !ctx.dry_run
        && let Some((expected, accepted)) = expected_traffic(&state, mode)
    {
        let mut traffic = traffic_set(&obj, mode, component, &accepted);
        // The watch's copy has no managedFields and may lag this driver's own last write:
        // what does not fit is confirmed on the API server's copy before it is acted on.
        if !traffic.1 && cached {
            obj = match target.get().await {
                Ok(o) => Arc::new(o),
                Err(e) => return Err(Error::kube(format!("reading InferenceService {key}"), e)),
            };
            traffic = traffic_set(&obj, mode, component, &accepted);
        }
        let (spec, fits) = traffic;
        let by = field_owner(&obj, mode, component);
        let field = traffic_field(mode, component);
        // A Standard-mode canary entry that is gone cannot be given traffic back: the engine
        // sees the stable serving everything and pauses on the changed revision.
        let restorable = mode == isvc::Mode::Knative || spec.is_some();
        if !fits && restorable && by.as_deref() != Some(isvc::FIELD_MANAGER) {
            ctx.may_write()?;
            let rv = obj.metadata.resource_version.clone().unwrap_or_default();
            let who = by.unwrap_or_else(|| "an unknown writer".into());
            let was = spec.map_or_else(|| "removed".to_string(), |p| format!("set to {p}%"));
            match target
                .write(mode, component, &rv, isvc::Traffic::Set(expected))
                .await
            {
                Ok(_) => {
                    ctx.wrote(key);
                    tracing::warn!(rollout = %key, %who, "{field} was {was} out of band; restored to {expected}%");
                    pending_events.push(Command::Event {
                        warning: true,
                        reason: "OutOfBandTraffic".into(),
                        message: format!(
                            "{field} was {was} by {who}, not by rolloutctl; restored to {expected}% (step {} of the rollout); if a GitOps tool owns the InferenceService, let it ignore this field",
                            state.step + 1
                        ),
                    });
                }
                Err(e) if isvc::conflict(&e) => return Ok(Some(ctx.conflicted(key))),
                Err(e) => {
                    return Err(Error::kube(
                        format!("restoring {field} of InferenceService {key}"),
                        e,
                    ));
                }
            }
        }
    }

    let cluster = match mode {
        isvc::Mode::Knative => isvc::observe(&obj, component),
        isvc::Mode::Standard => standard::observe(&obj, Some(&state)),
    };

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
        let routed = match mode {
            isvc::Mode::Knative => Ok(None),
            isvc::Mode::Standard => {
                standard::routed(&ctx.client, &ns, &name, &cluster.canary_revision)
                    .await
                    .map(Some)
            }
        };
        let checked = match (routed, ctx.prom(policy)) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(route), Ok(p)) => preflight::check(&machine, &p, mode, &stable, now)
                .await
                .map(|m| route.map_or(m.clone(), |r| format!("{r}; {m}")))
                .map_err(|problem| problem.to_string()),
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
    let revisions = (
        state.canary_revision.clone().unwrap_or_default(),
        state.stable_revision.clone().unwrap_or_default(),
    );
    let interval = u64::try_from(policy.evaluation.interval.as_millis()).unwrap_or(u64::MAX);
    // A decision dropped by a 409 is made again on the measurements already taken for it
    // (within one evaluation interval), so a conflict storm does not multiply queries.
    let observations = match ctx.reuse(key, &keys, &revisions, now, interval) {
        Some(obs) => obs,
        None => {
            let obs = measure(ctx, policy, key, &keys, &revisions, mode, now).await;
            if !keys.is_empty() {
                ctx.remember(key, keys.clone(), revisions.clone(), now, obs.clone());
            }
            obs
        }
    };
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
            uid: &uid,
        },
    );
    if state.phase.is_terminal() {
        status::archive(&mut status, &state);
    }
    let traffic = out.commands.iter().rev().find_map(|c| match c {
        Command::SetTraffic { percent } => Some(isvc::Traffic::Set(*percent)),
        Command::Promote => Some(isvc::Traffic::Promote),
        Command::Rollback => Some(isvc::Traffic::Rollback),
        _ => None,
    });
    let persisted_state: Option<State> = original
        .state
        .as_ref()
        .and_then(|t| serde_json::from_str(t.as_str()).ok());
    let skeleton_changed = persisted_state
        .as_ref()
        .is_none_or(|p| status::skeleton(p) != status::skeleton(&state));
    let strip = |s: &ModelRolloutStatus| {
        let mut s = s.clone();
        s.state = None;
        s.state_digest = None;
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
        let machine_entry = (source, machine.clone(), fp.clone());
        if let Ok(mut m) = ctx.memo.lock() {
            let e = m.entry(key.to_string()).or_insert_with(|| Memo {
                uid: uid.clone(),
                persisted: None,
                state: state.clone(),
                written_at,
                checked: None,
                failures: 0,
                superseded: false,
                dry: None,
            });
            e.uid = uid.clone();
            e.persisted = persisted;
            e.superseded = false;
            e.state = state.clone();
            e.written_at = written_at;
            e.checked = Some(machine_entry);
            if ctx.dry_run {
                e.dry = Some(status.clone());
            }
        }
    }
    // The decision stands; its measurements are not re-used for the next one.
    ctx.forget(key);

    // Traffic, the one write to the InferenceService.
    let mut soon = None;
    if let Some(t) = traffic {
        let field = traffic_field(mode, component);
        let p = t.percent();
        if ctx.dry_run {
            tracing::info!(rollout = %key, traffic = p, "dry run: would set {field}");
        } else {
            ctx.may_write()?;
            let rv = obj.metadata.resource_version.clone().unwrap_or_default();
            match target.write(mode, component, &rv, t).await {
                Ok(true) => {
                    ctx.wrote(key);
                    tracing::info!(rollout = %key, traffic = p, "set {field}")
                }
                Ok(false) => {
                    tracing::info!(rollout = %key, "the InferenceService has no spec.canary[] entry any more; nothing to write");
                }
                Err(e) if isvc::conflict(&e) => {
                    let delay = ctx.conflicted(key);
                    tracing::info!(rollout = %key, retry_in_ms = delay.as_millis(), "the InferenceService changed since it was read (409); the traffic write is made again");
                    soon = Some(delay);
                }
                Err(e) => {
                    return Err(Error::kube(
                        format!("setting {field} of InferenceService {key} to {p}%"),
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
    if let Some(delay) = soon {
        return Ok(Some(delay));
    }
    let delay = match wake {
        Some(at) => at.saturating_sub(now_ms()),
        None => 1000,
    };
    Ok(Some(Duration::from_millis(delay.clamp(50, 300_000))))
}

fn state_is_new(events: &mut Vec<Command>, event: Option<(String, String)>) {
    if let Some((reason, message)) = event {
        events.push(Command::Event {
            warning: false,
            reason,
            message,
        });
    }
}

/// Why a Standard-mode InferenceService cannot be driven, if it cannot.
fn standard_refusal(
    obj: &kube::api::DynamicObject,
    mode: isvc::Mode,
    component: &str,
    key: &str,
) -> Option<String> {
    if mode != isvc::Mode::Standard {
        return None;
    }
    if component != "predictor" {
        return Some(format!(
            "InferenceService {key} is in Standard mode, where KServe's canaries (spec.canary[]) are predictors only; the policy targets the {component}"
        ));
    }
    let n = standard::canary_count(obj);
    (n > 1).then(|| {
        format!(
            "InferenceService {key} has {n} spec.canary[] entries; rolloutctl judges one canary against the stable predictor at a time (remove all but one)"
        )
    })
}

/// The field a traffic write sets, for messages.
fn traffic_field(mode: isvc::Mode, component: &str) -> String {
    match mode {
        isvc::Mode::Knative => format!("spec.{component}.canaryTrafficPercent"),
        isvc::Mode::Standard => "spec.canary[0].trafficPercent".into(),
    }
}

/// The traffic to restore if someone else changed it, and the values the state accounts for
/// (a requested change may not have been written yet); none while the rollout is starting or
/// over, nor in Standard mode while it promotes or rolls back (those writes remove the entry,
/// and the engine repeats them itself).
fn expected_traffic(state: &State, mode: isvc::Mode) -> Option<(u8, Vec<u8>)> {
    let was = state.traffic;
    match &state.phase {
        Phase::Holding { .. } | Phase::AwaitingApproval { .. } | Phase::Paused { .. } => {
            Some((was, vec![was]))
        }
        Phase::ShiftingTraffic { target, .. } => Some((*target, vec![was, *target])),
        Phase::Promoting { .. } if mode == isvc::Mode::Knative => Some((100, vec![was, 100])),
        Phase::RollingBack { .. } if mode == isvc::Mode::Knative => Some((0, vec![was, 0])),
        _ => None,
    }
}

/// The canary's traffic in the spec and whether it is one the step accepts.
fn traffic_set(
    obj: &kube::api::DynamicObject,
    mode: isvc::Mode,
    component: &str,
    accepted: &[u8],
) -> (Option<i64>, bool) {
    let spec = match mode {
        isvc::Mode::Knative => obj
            .data
            .pointer(&format!("/spec/{component}/canaryTrafficPercent"))
            .and_then(serde_json::Value::as_i64),
        isvc::Mode::Standard => standard::spec_percent(obj),
    };
    let fits = spec.is_some_and(|p| accepted.iter().any(|a| i64::from(*a) == p));
    (spec, fits)
}

/// The field manager that last set the canary's traffic (`managedFields`; Standard mode's
/// `spec.canary` list is owned whole).
fn field_owner(
    obj: &kube::api::DynamicObject,
    mode: isvc::Mode,
    component: &str,
) -> Option<String> {
    obj.metadata.managed_fields.as_ref()?.iter().find_map(|e| {
        let set = &e.fields_v1.as_ref()?.0;
        let spec = set.get("f:spec")?;
        match mode {
            isvc::Mode::Knative => spec
                .get(format!("f:{component}"))?
                .get("f:canaryTrafficPercent")?,
            isvc::Mode::Standard => spec.get("f:canary")?,
        };
        e.manager.clone()
    })
}

/// One instant query per key, in parallel.
async fn measure(
    ctx: &Context,
    policy: &rollout_policy::Policy,
    key: &str,
    keys: &[rollout_engine::QueryKey],
    revisions: &(String, String),
    mode: isvc::Mode,
    now: crate::Millis,
) -> Observations {
    let mut observations = Observations::default();
    if keys.is_empty() {
        return observations;
    }
    let (canary, stable) = revisions;
    match ctx.prom(policy) {
        Ok(prom) => {
            let queries = keys.iter().map(|k| {
                let prom = prom.clone();
                let telemetry = ctx.telemetry.clone();
                // Shared with other rollouts when the controller shares queries and the query
                // keeps revisions apart; otherwise this rollout's own query.
                let shared = ctx.fanout.as_ref().and_then(|f| {
                    let rendered =
                        metrics::render(policy, k, mode, share::SENTINEL, share::SENTINEL)?;
                    let plan = f.plan(&rendered).ok()?;
                    let revision = if k.arm == rollout_policy::model::Arm::Canary {
                        canary.clone()
                    } else {
                        stable.clone()
                    };
                    Some((
                        f.clone(),
                        plan,
                        revision,
                        f.max_age(policy.evaluation.interval),
                    ))
                });
                let q = shared
                    .is_none()
                    .then(|| metrics::render(policy, k, mode, canary, stable))
                    .flatten();
                async move {
                    if let Some((fanout, plan, revision, max_age)) = shared {
                        return fanout
                            .sample(&prom, &plan, &revision, now, max_age, telemetry.as_ref())
                            .await;
                    }
                    match q {
                        Some(q) => {
                            let started = std::time::Instant::now();
                            let s = prom.query(&q, now).await;
                            if let Some(t) = telemetry {
                                t.query(
                                    started.elapsed().as_secs_f64(),
                                    matches!(s, Sample::Error { .. }),
                                );
                            }
                            s
                        }
                        None => Sample::NoData,
                    }
                }
            });
            let samples = futures_util::future::join_all(queries).await;
            for (k, s) in keys.iter().zip(samples) {
                if let Sample::Error { message } = &s {
                    tracing::warn!(rollout = %key, %message, "query failed");
                }
                observations.push(*k, s);
            }
        }
        Err(message) => {
            for k in keys {
                observations.push(
                    *k,
                    Sample::Error {
                        message: message.clone(),
                    },
                );
            }
        }
    }
    observations
}
