//! The one reconcile function: a ModelRollout and a [`Context`] in, an [`Action`] (when to
//! look again) out. Everything it knows comes from the ModelRollout (spec and status), the
//! InferenceService and Prometheus; what it keeps between calls lives in the context, keyed
//! by object, so one context serves one rollout (`rolloutctl run`) or many (a controller).
//!
//! Order of effects, so that a crash or a lost race at any point is safe:
//! 1. decide on the state read from the status (or this context's newer copy of it);
//! 2. write the status, guarded by the ModelRollout's resourceVersion: a 409 means another
//!    writer, and the decision is dropped before anything else happened;
//! 3. only then write the traffic (`canaryTrafficPercent`, or Standard mode's `spec.canary`
//!    entry: [`crate::traffic`], [`crate::standard`]), guarded by the InferenceService's
//!    resourceVersion (a lost write is re-issued by the engine, which waits for the traffic it
//!    asked for);
//! 4. record Events ([`crate::record`]).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::controller::Action;
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::{Command, Input, Machine, Operator, Outcome, Phase, State};

use crate::context::Memo;
pub use crate::context::{Context, End, Sink, error_policy};
use crate::error::Error;
use crate::isvc::{self, Isvc};
use crate::policy::{self, Edit};
use crate::record::{invalid_state, stop_with, write_status};
use crate::status::{self, CHECKPOINT_MS, View, set_condition};
use crate::{intents, lifecycle, measure, now_ms, preflight, record, standard, traffic};

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
    if let Some(msg) = traffic::standard_refusal(&obj, mode, component, key) {
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
        && let Some(delay) = traffic::restore(
            ctx,
            key,
            &target,
            &mut obj,
            cached,
            (mode, component),
            &state,
            &mut pending_events,
        )
        .await?
    {
        return Ok(Some(delay));
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
            let obs = measure::measure(ctx, policy, key, &keys, &revisions, mode, now).await;
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
        let field = traffic::field(mode, component);
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
        record::events(ctx, mr, pending_events.iter().chain(out.commands.iter())).await;
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
