//! The ModelRollout's status from the engine's state: phase, step, traffic, revisions, the last
//! decision in words, each rule's verdict, Kubernetes-style conditions, the state itself and
//! the history of past rollouts; and the rule for when a status write is worth making.

use rollout_api::{Condition, HistoryEntry, LastDecision, ModelRolloutStatus, RuleStatus};
use rollout_engine::{Decision, Machine, Outcome, Phase, Reason, State, Verdict};
use serde_json::Value;

use crate::Millis;

/// How long the state may differ only in counters before it is written anyway (a restarted
/// runner loses at most this much of a hold's passing evaluations).
pub const CHECKPOINT_MS: Millis = 60_000;

/// RFC 3339 with milliseconds (UTC).
pub fn rfc3339(ms: Millis) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "1970-01-01T00:00:00Z".into(), |t| t.to_string())
}

/// Sets a condition; `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Millis,
    generation: Option<i64>,
) {
    let time = match conditions.iter().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => rfc3339(now),
    };
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(4000).collect(),
        last_transition_time: time,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|x| x.type_ == type_) {
        Some(x) => *x = c,
        None => conditions.push(c),
    }
}

/// A verdict as the language spells it.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Inconclusive => "inconclusive",
        Verdict::NoData => "no_data",
        Verdict::StaleData => "stale_data",
        Verdict::QueryError => "query_error",
    }
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The reason name of a pause or an end.
fn reason_name(r: &Reason) -> &'static str {
    match r {
        Reason::Rule { .. } => "Rule",
        Reason::Measurement { .. } => "Measurement",
        Reason::HoldLimit => "HoldLimit",
        Reason::ApprovalLimit => "ApprovalLimit",
        Reason::Deadline => "Deadline",
        Reason::SettleTimeout => "SettleTimeout",
        Reason::RevisionChanged { .. } => "RevisionChanged",
        Reason::Aborted => "Aborted",
        Reason::Operator => "Operator",
        Reason::Preflight { .. } => "Preflight",
        Reason::Unconfirmed { .. } => "Unconfirmed",
        Reason::PolicyChanged { .. } => "PolicyChanged",
    }
}

/// How to continue from a pause, in words.
fn how_to_continue(r: &Reason, name: &str) -> String {
    match r {
        Reason::Operator => format!("`rolloutctl resume {name}` continues"),
        Reason::RevisionChanged { .. } => format!(
            "the new revision has not been measured: `rolloutctl resume {name}` judges it from this step, `rolloutctl retry {name}` starts over at step 1, `rolloutctl abort {name}` rolls back"
        ),
        Reason::PolicyChanged { .. } => format!(
            "`rolloutctl resume {name}` continues at this step number of the new policy, `rolloutctl retry {name}` starts over at step 1, `rolloutctl abort {name}` rolls back"
        ),
        _ => format!("`rolloutctl resume {name}` continues, `rolloutctl abort {name}` rolls back"),
    }
}

/// The outcome name of a finished state.
pub fn outcome_name(state: &State) -> &'static str {
    Outcome::of(state).as_str()
}

/// The state without what changes at every evaluation (counters, times of the last
/// evaluation): when this differs from what was written, the status is written now.
pub fn skeleton(state: &State) -> Value {
    let mut v = serde_json::to_value(state).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in ["passes", "last_eval", "evaluations"] {
            m.remove(k);
        }
    }
    if let Some(rules) = v.get_mut("rules").and_then(Value::as_array_mut) {
        for r in rules {
            if let Some(m) = r.as_object_mut() {
                m.remove("looks");
                m.remove("last_look_n");
            }
        }
    }
    v
}

/// After a restart the stored state may be up to [`CHECKPOINT_MS`] behind: assume every
/// evaluation interval since its last evaluation took a statistical look, so a test's error
/// budget is never spent twice.
pub fn after_restart(state: &mut State, machine: &Machine, now: Millis) {
    let interval = u64::try_from(machine.policy().evaluation.interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    if let Some(last) = state.last_eval {
        let missed = u32::try_from(now.saturating_sub(last) / interval).unwrap_or(u32::MAX);
        for (r, rs) in machine.policy().rules.iter().zip(state.rules.iter_mut()) {
            if r.statistical.is_some() {
                rs.looks = rs.looks.saturating_add(missed);
            }
        }
    }
}

/// What the status says about the rollout now.
#[derive(Debug)]
pub struct View<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// The state.
    pub state: &'a State,
    /// The decision just made.
    pub decision: &'a Decision,
    /// The ModelRollout's name (for the hints).
    pub name: &'a str,
    /// The canary being considered when the state has none yet.
    pub candidate: Option<&'a str>,
    /// The time.
    pub now: Millis,
    /// The generation acted on.
    pub generation: Option<i64>,
}

/// Writes the rollout's fields, rules, conditions and state into `status`.
pub fn fill(status: &mut ModelRolloutStatus, v: &View<'_>) {
    let state = v.state;
    let steps = v.machine.policy().steps.len();
    let step = (state.step + 1).min(steps.max(1));
    status.observed_generation = v.generation;
    status.phase = Some(state.phase.name().to_string());
    status.step = u32::try_from(step).ok();
    status.steps = u32::try_from(steps).ok();
    status.step_progress = Some(format!("{step}/{steps}"));
    status.step_name = Some(v.machine.step_label(state.step));
    status.traffic = Some(u32::from(state.traffic));
    status.canary_revision = state
        .canary_revision
        .clone()
        .or_else(|| v.candidate.map(str::to_string));
    status.stable_revision = state.stable_revision.clone();
    status.start_time = state.started_at.map(rfc3339);
    status.paused_at = match &state.phase {
        Phase::Paused { since, .. } => Some(rfc3339(*since)),
        _ => None,
    };
    status.last_decision = Some(LastDecision {
        time: rfc3339(v.decision.at),
        action: v.decision.action.clone(),
        message: v.decision.reason.clone(),
    });
    if v.decision.evaluated {
        for r in &v.decision.rules {
            let verdict = verdict_name(r.verdict).to_string();
            match status.rules.iter_mut().find(|x| x.name == r.rule) {
                Some(x) if x.verdict == verdict => {}
                Some(x) => {
                    x.verdict = verdict;
                    x.since = rfc3339(v.now);
                }
                None => status.rules.push(RuleStatus {
                    name: r.rule.clone(),
                    verdict,
                    since: rfc3339(v.now),
                }),
            }
        }
    }
    let names: Vec<&str> = v
        .machine
        .policy()
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    status.rules.retain(|r| names.contains(&r.name.as_str()));
    let (progress, reason, message) = match &state.phase {
        Phase::Promoted => (
            "False",
            "Promoted".to_string(),
            format!(
                "`{}` serves all traffic",
                status.canary_revision.clone().unwrap_or_default()
            ),
        ),
        Phase::RolledBack { reason } => (
            "False",
            if matches!(reason, Reason::Aborted) {
                "Aborted".into()
            } else {
                "RolledBack".to_string()
            },
            format!(
                "{}; this revision is not rolled out again unless `rolloutctl retry {}`",
                reason.describe(),
                v.name
            ),
        ),
        Phase::Failed { reason } => ("False", "Failed".into(), reason.describe()),
        other => (
            "True",
            camel(other.name()),
            format!("step {step}/{steps}: {}", v.machine.step_label(state.step)),
        ),
    };
    set_condition(
        &mut status.conditions,
        "Progressing",
        progress,
        &reason,
        &message,
        v.now,
        v.generation,
    );
    match &state.phase {
        Phase::Paused { reason, .. } => set_condition(
            &mut status.conditions,
            "Paused",
            "True",
            reason_name(reason),
            &format!("{}; {}", reason.describe(), how_to_continue(reason, v.name)),
            v.now,
            v.generation,
        ),
        _ => set_condition(
            &mut status.conditions,
            "Paused",
            "False",
            "NotPaused",
            "",
            v.now,
            v.generation,
        ),
    }
    if state.phase.is_terminal() && status.end_time.is_none() {
        status.end_time = Some(rfc3339(v.now));
    }
    status.state = serde_json::to_value(state).ok();
    status.state_time = Some(rfc3339(v.now));
}

/// Appends the finished rollout in `status` to its history (once), keeping the newest.
pub fn archive(status: &mut ModelRolloutStatus, state: &State) {
    let Some(canary) = state.canary_revision.clone() else {
        return;
    };
    if state.started_at.is_none() {
        return;
    }
    let attempt = status.attempt.unwrap_or(1);
    let start_time = state.started_at.map(rfc3339);
    if status
        .history
        .iter()
        .any(|h| h.canary_revision == canary && h.attempt == attempt && h.start_time == start_time)
    {
        return;
    }
    let reason = match &state.phase {
        Phase::RolledBack { reason } | Phase::Failed { reason } => reason.describe(),
        Phase::Promoted => "promoted through every step".into(),
        _ => "superseded before it ended".into(),
    };
    status.history.push(HistoryEntry {
        canary_revision: canary,
        stable_revision: state.stable_revision.clone(),
        model_uri: status.canary_model_uri.clone(),
        attempt,
        outcome: if state.phase.is_terminal() {
            outcome_name(state).to_string()
        } else {
            "superseded".into()
        },
        start_time,
        end_time: status.end_time.clone(),
        reason,
    });
    let extra = status
        .history
        .len()
        .saturating_sub(rollout_api::HISTORY_LIMIT);
    status.history.drain(..extra);
}

/// The last recorded outcome of a canary revision, with its attempt.
pub fn last_outcome<'a>(
    status: &'a ModelRolloutStatus,
    revision: &str,
) -> Option<&'a HistoryEntry> {
    status
        .history
        .iter()
        .rev()
        .find(|h| h.canary_revision == revision)
}
