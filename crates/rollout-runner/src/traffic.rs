//! The canary's traffic as the spec holds it, in either deployment mode: which field that is,
//! whether a value is one the current step accepts, who last wrote it, and restoring it when
//! someone else (kubectl, a GitOps sync) changed it.

use std::sync::Arc;
use std::time::Duration;

use kube::api::DynamicObject;
use rollout_engine::{Command, Phase, State};

use crate::context::Context;
use crate::error::Error;
use crate::isvc::{self, Isvc};
use crate::standard;

/// Restores the traffic the state expects if someone else changed it, recording an Event in
/// `events`; `Some(delay)`: the InferenceService changed under the write (409), decide again
/// after `delay`. `obj` is replaced by the API server's copy when the cached one did not fit.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore(
    ctx: &Context,
    key: &str,
    target: &Isvc,
    obj: &mut Arc<DynamicObject>,
    cached: bool,
    (mode, component): (isvc::Mode, &str),
    state: &State,
    events: &mut Vec<Command>,
) -> Result<Option<Duration>, Error> {
    let Some((expected, accepted)) = expected(state, mode) else {
        return Ok(None);
    };
    let mut traffic = set(obj, mode, component, &accepted);
    // The watch's copy has no managedFields and may lag this driver's own last write: what
    // does not fit is confirmed on the API server's copy before it is acted on.
    if !traffic.1 && cached {
        *obj = match target.get().await {
            Ok(o) => Arc::new(o),
            Err(e) => return Err(Error::kube(format!("reading InferenceService {key}"), e)),
        };
        traffic = set(obj, mode, component, &accepted);
    }
    let (spec, fits) = traffic;
    let by = owner(obj, mode, component);
    let field = field(mode, component);
    // A Standard-mode canary entry that is gone cannot be given traffic back: the engine sees
    // the stable serving everything and pauses on the changed revision.
    let restorable = mode == isvc::Mode::Knative || spec.is_some();
    if fits || !restorable || by.as_deref() == Some(isvc::FIELD_MANAGER) {
        return Ok(None);
    }
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
            events.push(Command::Event {
                warning: true,
                reason: "OutOfBandTraffic".into(),
                message: format!(
                    "{field} was {was} by {who}, not by rolloutctl; restored to {expected}% (step {} of the rollout); if a GitOps tool owns the InferenceService, let it ignore this field",
                    state.step + 1
                ),
            });
            Ok(None)
        }
        Err(e) if isvc::conflict(&e) => Ok(Some(ctx.conflicted(key))),
        Err(e) => Err(Error::kube(
            format!("restoring {field} of InferenceService {key}"),
            e,
        )),
    }
}

/// Why a Standard-mode InferenceService cannot be driven, if it cannot.
pub(crate) fn standard_refusal(
    obj: &DynamicObject,
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
pub(crate) fn field(mode: isvc::Mode, component: &str) -> String {
    match mode {
        isvc::Mode::Knative => format!("spec.{component}.canaryTrafficPercent"),
        isvc::Mode::Standard => "spec.canary[0].trafficPercent".into(),
    }
}

/// The traffic to restore if someone else changed it, and the values the state accounts for
/// (a requested change may not have been written yet); none while the rollout is starting or
/// over, nor in Standard mode while it promotes or rolls back (those writes remove the entry,
/// and the engine repeats them itself).
fn expected(state: &State, mode: isvc::Mode) -> Option<(u8, Vec<u8>)> {
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
fn set(
    obj: &DynamicObject,
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
fn owner(obj: &DynamicObject, mode: isvc::Mode, component: &str) -> Option<String> {
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
