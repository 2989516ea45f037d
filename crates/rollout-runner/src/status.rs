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
        Reason::Undecided { .. } => "Undecided",
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
        Reason::Undecided { .. } => format!(
            "nothing shows the canary worse, nor yet that it is not: `rolloutctl resume {name}` holds on for another `max`, `rolloutctl promote {name}` accepts it unmeasured, `rolloutctl abort {name}` rolls back"
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
                // Sequential evidence grows at every look; it is checkpointed with the rest
                // (a restart re-adds what arrived since from the counts of the period).
                m.remove("evidence");
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
    /// The ModelRollout's uid (part of the state's digest).
    pub uid: &'a str,
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
    let value = serde_json::to_value(state).ok();
    status.state_digest = value.as_ref().map(|s| digest(v.uid, s));
    status.state = value.as_ref().map(rollout_api::StateText::new);
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

/// JSON with every object's keys sorted (the API server may reorder them).
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The digest of a stored state for one object: FNV-1a (64 bits) of its uid and the canonical
/// JSON. It detects corruption and hand edits, not a writer who recomputes it.
pub fn digest(uid: &str, state: &Value) -> String {
    let mut text = String::from(uid);
    text.push('|');
    canonical(state, &mut text);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stored() -> Value {
        serde_json::json!({"version": 1, "phase": {"phase": "holding", "since": 1_700_000_000_000u64}, "step": 1,
            "started_at": 1_699_999_990_000u64, "canary_revision": "r2", "stable_revision": "r1", "traffic": 10,
            "rules": [{"consecutive": 0, "total": 0, "breach_since": null, "looks": 0, "last_look_n": 0}],
            "failing_since": [null, null, null, null], "passes": 1, "last_eval": 1_700_000_005_000u64,
            "unready_since": null, "evaluations": 3})
    }

    /// Replaces one scalar somewhere in the value (chosen by `pick`) with `with`.
    fn corrupt(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
        match v {
            Value::Object(m) => m.values_mut().any(|x| corrupt(x, pick, with)),
            Value::Array(a) => a.iter_mut().any(|x| corrupt(x, pick, with)),
            leaf => {
                if *pick == 0 {
                    if leaf != with {
                        *leaf = with.clone();
                        return true;
                    }
                    return false;
                }
                *pick -= 1;
                false
            }
        }
    }

    #[test]
    fn the_digest_ignores_key_order_and_depends_on_the_object() {
        let s = stored();
        let reordered: Value = serde_json::from_str(&s.to_string()).expect("json");
        assert_eq!(digest("u", &s), digest("u", &reordered));
        assert_ne!(
            digest("u", &s),
            digest("v", &s),
            "a state copied from another object does not fit"
        );
    }

    proptest! {
        /// Any change to any value of a stored state is detected, so a corrupted state is never
        /// acted on (and can never raise traffic).
        #[test]
        fn random_corruptions_never_match_the_digest(pick in 0usize..40, with in prop_oneof![
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "\\PC{0,12}".prop_map(Value::String),
            Just(Value::Null), Just(serde_json::json!(true)), Just(serde_json::json!(99)),
        ]) {
            let s = stored();
            let d = digest("uid-1", &s);
            let mut c = s.clone();
            let mut p = pick;
            if corrupt(&mut c, &mut p, &with) {
                prop_assert_ne!(digest("uid-1", &c), d);
            }
        }
    }
}
