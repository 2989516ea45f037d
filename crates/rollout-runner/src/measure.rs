//! Measurements: one instant query per key, in parallel, each shared with other rollouts when
//! the controller shares queries ([`crate::share`]) and this rollout's own otherwise.

use rollout_engine::{Observations, Sample};

use crate::context::Context;
use crate::{isvc, metrics, share};

/// One instant query per key, in parallel.
pub(crate) async fn measure(
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
