//! The operator's intents, declared in the ModelRollout's spec, as the engine's operator
//! commands. Each intent names the canary revision (and, where it matters, the attempt, the
//! step or the pause) it is meant for, so it can never act on another rollout; each is
//! compared with the state on every reconcile, so none is lost and none is taken twice; and
//! their order is the API server's (the spec as it stands), never a client's clock.

use rollout_api::ModelRolloutSpec;
use rollout_engine::{Operator, Phase, State};

use crate::status::rfc3339;

/// The canary an intent must name: the state's, or the candidate when the rollout has none yet.
fn canary<'a>(state: &'a State, candidate: Option<&'a str>) -> Option<&'a str> {
    state.canary_revision.as_deref().or(candidate)
}

/// The operator commands the spec asks for now.
pub fn operators(
    spec: &ModelRolloutSpec,
    state: &State,
    candidate: Option<&str>,
    attempt: u32,
) -> Vec<Operator> {
    let mut ops = Vec::new();
    let Some(canary) = canary(state, candidate) else {
        return ops;
    };
    if state.phase.is_terminal() {
        return ops;
    }
    if spec.abort.as_ref().is_some_and(|a| a.revision == canary)
        && !matches!(state.phase, Phase::RollingBack { .. })
    {
        ops.push(Operator::Abort);
        return ops;
    }
    if spec.promote.as_ref().is_some_and(|p| p.revision == canary)
        && !matches!(
            state.phase,
            Phase::Promoting { .. } | Phase::RollingBack { .. }
        )
    {
        ops.push(Operator::PromoteNow);
        return ops;
    }
    match &state.phase {
        Phase::Paused { since, reason, .. } => {
            let named = spec
                .resume
                .as_ref()
                .is_some_and(|r| r.revision == canary && r.paused_at == rfc3339(*since));
            let by_operator = matches!(reason, rollout_engine::Reason::Operator);
            // An operator's pause lasts while `paused` is set; any pause ends when named.
            let resume = if by_operator { !spec.paused } else { named };
            if resume {
                ops.push(Operator::Resume);
            }
        }
        _ if spec.paused => ops.push(Operator::Pause),
        Phase::AwaitingApproval { .. } => {
            let step = u32::try_from(state.step + 1).unwrap_or(u32::MAX);
            if spec
                .approvals
                .iter()
                .any(|a| a.revision == canary && a.attempt == attempt && a.step == step)
            {
                ops.push(Operator::Approve);
            }
        }
        _ => {}
    }
    ops
}

#[cfg(test)]
mod tests {
    use rollout_api::{Approval, ResumeIntent, RevisionIntent};
    use rollout_engine::Reason;

    use super::*;

    fn state(phase: Phase) -> State {
        crate::testing::state(phase, 2, ("r2", "r1"), 25)
    }

    #[test]
    fn intents_act_only_on_the_rollout_they_name() {
        let holding = state(Phase::Holding { since: 5 });
        let mut spec = ModelRolloutSpec {
            abort: Some(RevisionIntent {
                revision: "r1".into(),
            }),
            ..Default::default()
        };
        assert!(
            operators(&spec, &holding, None, 1).is_empty(),
            "abort for another revision"
        );
        spec.abort = Some(RevisionIntent {
            revision: "r2".into(),
        });
        assert_eq!(operators(&spec, &holding, None, 1), vec![Operator::Abort]);
        let gate = state(Phase::AwaitingApproval { since: 5 });
        let spec = ModelRolloutSpec {
            approvals: vec![Approval {
                revision: "r2".into(),
                attempt: 1,
                step: 3,
            }],
            ..Default::default()
        };
        assert_eq!(operators(&spec, &gate, None, 1), vec![Operator::Approve]);
        assert!(
            operators(&spec, &gate, None, 2).is_empty(),
            "an approval of attempt 1 is not one of attempt 2"
        );
        let paused = state(Phase::Paused {
            since: 1_700_000_000_000,
            reason: Reason::Rule {
                rule: "X".into(),
                line: 3,
            },
            resume: Box::new(Phase::Holding { since: 5 }),
        });
        let mut spec = ModelRolloutSpec {
            resume: Some(ResumeIntent {
                revision: "r2".into(),
                paused_at: "2023-11-14T22:13:19Z".into(),
            }),
            ..Default::default()
        };
        assert!(
            operators(&spec, &paused, None, 1).is_empty(),
            "a resume of another pause"
        );
        spec.resume = Some(ResumeIntent {
            revision: "r2".into(),
            paused_at: rfc3339(1_700_000_000_000),
        });
        assert_eq!(operators(&spec, &paused, None, 1), vec![Operator::Resume]);
        let spec = ModelRolloutSpec {
            paused: true,
            ..Default::default()
        };
        assert_eq!(operators(&spec, &holding, None, 1), vec![Operator::Pause]);
        let done = state(Phase::Promoted);
        assert!(operators(&spec, &done, None, 1).is_empty());
    }
}
