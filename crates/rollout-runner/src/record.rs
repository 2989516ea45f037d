//! What the reconcile records on the ModelRollout: the status, written guarded by the
//! resourceVersion it was decided on; the condition-only stops; and the Events.

use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt as _};
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::Command;

use crate::context::{Context, truncate_bytes};
use crate::error::Error;
use crate::isvc;
use crate::now_ms;
use crate::status::set_condition;

/// Writes the status (guarded), unless this is a dry run.
pub(crate) async fn write_status(
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
pub(crate) async fn stop_with(
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
pub(crate) async fn invalid_state(
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

/// Publishes the `Event` commands among `commands` on the ModelRollout (a failure to record one
/// is logged, never fatal).
pub(crate) async fn events(
    ctx: &Context,
    mr: &ModelRollout,
    commands: impl Iterator<Item = &Command>,
) {
    let reference = mr.object_ref(&());
    for c in commands {
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
