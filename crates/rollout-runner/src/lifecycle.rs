//! Which rollout a ModelRollout is on: the one in its state, a new one for a new canary
//! revision (or a `retry`), or none — the last one ended and stays ended, the canary was rolled
//! back before and is not rolled out again, or there is no canary at all.

use rollout_api::{ModelRolloutSpec, ModelRolloutStatus};
use rollout_engine::{Outcome, State};

use crate::Millis;
use crate::context::End;
use crate::status::{self, set_condition};

/// What is known when deciding.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The spec (its `retry` intent).
    pub spec: &'a ModelRolloutSpec,
    /// The ModelRollout's name (for hints).
    pub name: &'a str,
    /// The stored state, checked against the policy.
    pub state: Option<State>,
    /// The component's `latestCreatedRevision`: the candidate canary.
    pub latest_created: Option<&'a str>,
    /// Its `latestRolledoutRevision`.
    pub rolled_out: Option<&'a str>,
    /// The component's model URI.
    pub model_uri: Option<String>,
    /// The time.
    pub now: Millis,
    /// The generation acted on.
    pub generation: Option<i64>,
}

/// The decision.
#[derive(Debug)]
pub enum Which {
    /// Drive this state (`None`: a new rollout from the initial state) at this attempt.
    Drive {
        /// The state, or `None` for a fresh one.
        state: Option<Box<State>>,
        /// The attempt.
        attempt: u32,
        /// Whether a new rollout begins (the status was reset for it).
        fresh: bool,
        /// An Event to record (reason, message).
        event: Option<(String, String)>,
    },
    /// Nothing to drive: how it ended (the status already says so).
    Done(End),
}

/// Decides, updating `status` (history, attempt, conditions) for what it decided.
pub fn which(f: &Facts<'_>, status: &mut ModelRolloutStatus) -> Which {
    let attempt = status.attempt.unwrap_or(1);
    let retry_for = |rev: &str, last_attempt: u32| {
        f.spec
            .retry
            .as_ref()
            .is_some_and(|r| r.revision == rev && r.attempt == last_attempt + 1)
    };
    let candidate = f.latest_created.unwrap_or_default().to_string();
    match &f.state {
        Some(st) if !st.phase.is_terminal() => {
            // `retry` of a rollout that has not ended (paused, say): it starts over at step 1.
            let restart = f.spec.retry.as_ref().is_some_and(|r| {
                r.attempt == attempt + 1
                    && (st.canary_revision.as_ref() == Some(&r.revision) || candidate == r.revision)
            });
            if !restart {
                return Which::Drive {
                    state: f.state.clone().map(Box::new),
                    attempt,
                    fresh: false,
                    event: None,
                };
            }
            status::archive(status, st);
            let attempt = begin(status, f.spec, &candidate, f.model_uri.clone());
            return Which::Drive {
                state: None,
                attempt,
                fresh: true,
                event: Some((
                    "Retried".into(),
                    format!(
                        "`rolloutctl retry`: the rollout of `{candidate}` starts over at step 1 (attempt {attempt})"
                    ),
                )),
            };
        }
        _ => {}
    }
    let prev = f.state.clone().filter(|p| p.canary_revision.is_some());
    // The same canary: the same revision running the same model. (A Standard-mode canary is
    // named by its Deployment, which a new model under the same `name` keeps.)
    let same_model = |recorded: Option<&str>| {
        recorded.is_none() || f.model_uri.is_none() || recorded == f.model_uri.as_deref()
    };
    let same = prev
        .as_ref()
        .is_some_and(|p| p.canary_revision.as_deref() == Some(candidate.as_str()))
        && same_model(status.canary_model_uri.as_deref());
    if let Some(p) = prev
        .as_ref()
        .filter(|_| same && !retry_for(&candidate, attempt))
    {
        let outcome = Outcome::of(p);
        let msg = match outcome {
            Outcome::Promoted => format!("the rollout of `{candidate}` was promoted"),
            _ => format!(
                "the rollout of `{candidate}` ended {}; it is not rolled out again unless `rolloutctl retry {}`",
                outcome.as_str().replace('_', " "),
                f.name
            ),
        };
        return Which::Done(End::Finished(outcome, msg));
    }
    let blocked = status::last_outcome(status, &candidate)
        .filter(|h| matches!(h.outcome.as_str(), "rolled_back" | "aborted"))
        .filter(|h| same_model(h.model_uri.as_deref()))
        .map(|h| (h.outcome.clone(), h.attempt, h.reason.clone()));
    if let Some((outcome, last_attempt, reason)) = blocked.filter(|_| !same)
        && !retry_for(&candidate, last_attempt)
    {
        let msg = format!(
            "canary revision `{candidate}` was {} before ({reason}); it is not rolled out again unless `rolloutctl retry {}`",
            outcome.replace('_', " "),
            f.name
        );
        set_condition(
            &mut status.conditions,
            "Progressing",
            "False",
            "Blocked",
            &msg,
            f.now,
            f.generation,
        );
        let o = if outcome == "aborted" {
            Outcome::Aborted
        } else {
            Outcome::RolledBack
        };
        return Which::Done(End::Finished(o, msg));
    }
    if let Some(p) = prev.as_ref().filter(|_| f.latest_created == f.rolled_out) {
        // The last rollout ended and nothing new is deployed (a Standard-mode rollback removed
        // the canary entry): it stays ended.
        let outcome = Outcome::of(p);
        let msg = format!(
            "the rollout of `{}` ended {}; there is no canary now",
            p.canary_revision.clone().unwrap_or_default(),
            outcome.as_str().replace('_', " ")
        );
        return Which::Done(End::Finished(outcome, msg));
    }
    if f.latest_created.is_none() || f.latest_created == f.rolled_out {
        let msg = format!(
            "no canary: `{candidate}` already serves all traffic; deploy a new model first (Knative mode: a new `spec.predictor` with `canaryTrafficPercent`; Standard mode: a `spec.canary[]` entry)"
        );
        set_condition(
            &mut status.conditions,
            "Progressing",
            "False",
            "NoCanary",
            &msg,
            f.now,
            f.generation,
        );
        return Which::Done(End::Stopped(msg));
    }
    // A new rollout: a new canary revision, or a retry of this one.
    if let Some(p) = &prev {
        status::archive(status, p);
    }
    let attempt = begin(status, f.spec, &candidate, f.model_uri.clone());
    Which::Drive {
        state: None,
        attempt,
        fresh: true,
        event: None,
    }
}

/// Resets the status for a new rollout of `candidate`; returns its attempt.
fn begin(
    status: &mut ModelRolloutStatus,
    spec: &ModelRolloutSpec,
    candidate: &str,
    model_uri: Option<String>,
) -> u32 {
    let attempt = match &spec.retry {
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
    status.canary_model_uri = model_uri;
    attempt
}

#[cfg(test)]
mod tests {
    use rollout_api::{HistoryEntry, RetryIntent};
    use rollout_engine::{Phase, Reason};

    use super::*;

    fn state(canary: &str, phase: Phase) -> State {
        crate::testing::state(phase, 1, (canary, "r1"), 10)
    }

    fn facts<'a>(spec: &'a ModelRolloutSpec, state: Option<State>, created: &'a str) -> Facts<'a> {
        Facts {
            spec,
            name: "m",
            state,
            latest_created: Some(created),
            rolled_out: Some("r1"),
            model_uri: None,
            now: 5,
            generation: Some(1),
        }
    }

    fn rolled_back() -> Phase {
        Phase::RolledBack {
            reason: Reason::Aborted,
        }
    }

    #[test]
    fn a_standard_mode_canary_is_the_same_only_with_the_same_model_and_its_removal_ends_nothing() {
        let spec = ModelRolloutSpec::default();
        let mut status = ModelRolloutStatus {
            canary_model_uri: Some("gs://m/2".into()),
            ..ModelRolloutStatus::default()
        };
        // Rolled back: the entry removed, the stable Deployment serves all. The rollout stays
        // ended as it ended, it does not become "no canary".
        let w = which(
            &facts(&spec, Some(state("d-v2", rolled_back())), "r1"),
            &mut status,
        );
        assert!(
            matches!(w, Which::Done(End::Finished(Outcome::Aborted, _))),
            "{w:?}"
        );
        assert!(status.condition("Progressing").is_none(), "{status:?}");
        // The same canary name (the same Deployment) with the same model: still the last one.
        let mut f = facts(&spec, Some(state("d-v2", rolled_back())), "d-v2");
        f.model_uri = Some("gs://m/2".into());
        assert!(matches!(which(&f, &mut status), Which::Done(_)));
        // ... with another model: a new rollout.
        f.model_uri = Some("gs://m/3".into());
        let w = which(&f, &mut status);
        assert!(
            matches!(
                w,
                Which::Drive {
                    state: None,
                    fresh: true,
                    ..
                }
            ),
            "{w:?}"
        );
        assert_eq!(status.canary_model_uri.as_deref(), Some("gs://m/3"));
    }

    #[test]
    fn a_finished_rollout_stays_finished_and_a_rolled_back_canary_needs_retry() {
        let spec = ModelRolloutSpec::default();
        let mut status = ModelRolloutStatus::default();
        // The same canary, finished: its outcome, nothing new.
        let w = which(
            &facts(&spec, Some(state("r2", Phase::Promoted)), "r2"),
            &mut status,
        );
        assert!(matches!(
            w,
            Which::Done(End::Finished(Outcome::Promoted, _))
        ));
        // A new canary: a new rollout, the last one archived.
        let w = which(
            &facts(&spec, Some(state("r2", rolled_back())), "r3"),
            &mut status,
        );
        assert!(matches!(
            w,
            Which::Drive {
                state: None,
                attempt: 1,
                fresh: true,
                ..
            }
        ));
        assert_eq!(
            status.history.last().map(|h| h.outcome.as_str()),
            Some("aborted")
        );
        // Back to the aborted canary later: blocked, unless retried.
        let w = which(
            &facts(&spec, Some(state("r3", Phase::Promoted)), "r2"),
            &mut status,
        );
        assert!(
            matches!(w, Which::Done(End::Finished(Outcome::Aborted, _))),
            "{w:?}"
        );
        assert_eq!(
            status.condition("Progressing").map(|c| c.reason.as_str()),
            Some("Blocked")
        );
        let retry = ModelRolloutSpec {
            retry: Some(RetryIntent {
                revision: "r2".into(),
                attempt: 2,
            }),
            ..Default::default()
        };
        let w = which(
            &facts(&retry, Some(state("r3", Phase::Promoted)), "r2"),
            &mut status,
        );
        assert!(
            matches!(
                w,
                Which::Drive {
                    state: None,
                    attempt: 2,
                    fresh: true,
                    ..
                }
            ),
            "{w:?}"
        );
        // A retry is taken once: with attempt 2 recorded, the same intent does not restart it.
        status.history.push(HistoryEntry {
            canary_revision: "r2".into(),
            attempt: 2,
            outcome: "rolled_back".into(),
            ..Default::default()
        });
        let w = which(
            &facts(&retry, Some(state("r2", rolled_back())), "r2"),
            &mut status,
        );
        assert!(matches!(w, Which::Done(_)), "{w:?}");
    }

    #[test]
    fn retry_restarts_a_paused_rollout_and_nothing_to_roll_out_is_said() {
        let mut status = ModelRolloutStatus::default();
        let paused = state(
            "r2",
            Phase::Paused {
                since: 1,
                reason: Reason::Operator,
                resume: Box::new(Phase::Holding { since: 1 }),
            },
        );
        let none = ModelRolloutSpec::default();
        let w = which(&facts(&none, Some(paused.clone()), "r2"), &mut status);
        assert!(matches!(
            w,
            Which::Drive {
                state: Some(_),
                fresh: false,
                ..
            }
        ));
        let retry = ModelRolloutSpec {
            retry: Some(RetryIntent {
                revision: "r2".into(),
                attempt: 2,
            }),
            ..Default::default()
        };
        let w = which(&facts(&retry, Some(paused), "r2"), &mut status);
        assert!(
            matches!(
                w,
                Which::Drive {
                    state: None,
                    attempt: 2,
                    fresh: true,
                    event: Some(_)
                }
            ),
            "{w:?}"
        );
        assert_eq!(
            status.history.last().map(|h| h.outcome.as_str()),
            Some("superseded")
        );
        // Nothing but the rolled-out revision: no canary, said so.
        let mut status = ModelRolloutStatus::default();
        let w = which(&facts(&none, None, "r1"), &mut status);
        assert!(matches!(w, Which::Done(End::Stopped(ref m)) if m.contains("no canary")));
    }
}
