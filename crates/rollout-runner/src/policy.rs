//! A ModelRollout's policy: checked from the text in its spec on every read, and compared with
//! the policy its state belongs to by meaning (the checked policy without source positions),
//! so reformatting or a comment changes nothing and a real edit is seen for what it is.

use rollout_api::PolicyFingerprint;
use rollout_diagnostics::{Severity, SourceFile};
use rollout_policy::Policy;
use serde_json::Value;

/// How many diagnostics a condition message carries at most.
const MAX_DIAGNOSTICS: usize = 20;

/// Checks policy text; `Err` holds the diagnostics, one line each (`line:col code message`).
pub fn check(name: &str, text: &str) -> Result<Policy, String> {
    let src = SourceFile::new(name, text);
    let checked = rollout_policy::check_source(&src);
    match checked.policy {
        Some(p) if !checked.has_errors() => Ok(p),
        _ => {
            let lines: Vec<String> = checked
                .diagnostics
                .iter()
                .filter(|d| d.severity() == Severity::Error)
                .take(MAX_DIAGNOSTICS)
                .map(|d| {
                    let lc = src.line_col(d.span().start);
                    format!(
                        "{}:{}:{} {} {}",
                        name,
                        lc.line,
                        lc.column,
                        d.code().as_str(),
                        d.message()
                    )
                })
                .collect();
            Err(lines.join("\n"))
        }
    }
}

/// Drops source positions from a serialised policy, leaving its meaning.
fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !matches!(k.as_str(), "span" | "location" | "line"));
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// FNV-1a, 64 bits, as 16 hex digits.
fn hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn meaning<T: serde::Serialize>(x: &T) -> String {
    let mut v = serde_json::to_value(x).unwrap_or(Value::Null);
    strip(&mut v);
    hash(&v.to_string())
}

/// The fingerprint of a checked policy.
pub fn fingerprint(p: &Policy) -> PolicyFingerprint {
    PolicyFingerprint {
        name: p.name.clone(),
        hash: meaning(p),
        steps: p.steps.iter().map(meaning).collect(),
        rules: p.rules.iter().map(|r| r.name.clone()).collect(),
    }
}

/// What a policy edit means for a rollout at `step` (0-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// The same meaning.
    Same,
    /// The steps up to and including the current one are unchanged (rules, thresholds or
    /// later steps changed): the rollout keeps its place.
    Keeps(String),
    /// An earlier or the current step changed: the rollout pauses.
    Pauses(String),
}

/// Compares the fingerprint a state belongs to with the current policy's.
pub fn compare(old: &PolicyFingerprint, new: &PolicyFingerprint, step: usize) -> Edit {
    if old.hash == new.hash {
        return Edit::Same;
    }
    let upto = (step + 1).min(old.steps.len().max(new.steps.len()));
    if let Some(i) = (0..upto).find(|&i| old.steps.get(i) != new.steps.get(i)) {
        return Edit::Pauses(format!(
            "step {} changed while the rollout is at step {}",
            i + 1,
            step + 1
        ));
    }
    let mut what = Vec::new();
    if old.rules != new.rules {
        what.push(format!("rules {:?} → {:?}", old.rules, new.rules));
    } else {
        what.push("rule or setting values".to_string());
    }
    if old.steps.len() != new.steps.len()
        || old.steps[upto..] != new.steps[upto.min(new.steps.len())..]
    {
        what.push(format!("steps after step {}", step + 1));
    }
    Edit::Keeps(format!(
        "{} changed; the rollout stays at step {}",
        what.join(" and "),
        step + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = include_str!("../../../policies/sklearn-iris-canary.rollout");

    #[test]
    fn formatting_and_comments_change_nothing_and_edits_are_placed() {
        let a = fingerprint(&check("a", P).expect("checks"));
        let reformatted = format!("# a comment\n\n{}", P.replace("    ", "  "));
        let b = fingerprint(&check("b", &reformatted).expect("checks"));
        assert_eq!(compare(&a, &b, 3), Edit::Same);
        let later = P.replacen("hold 10m until", "hold 20m until", 1);
        let c = fingerprint(&check("c", &later).expect("checks"));
        assert!(
            matches!(compare(&a, &c, 1), Edit::Keeps(_)),
            "{:?}",
            compare(&a, &c, 1)
        );
        assert!(matches!(compare(&a, &c, 5), Edit::Pauses(_)));
        let threshold = P.replacen("1.5 * stable.error_rate", "1.25 * stable.error_rate", 1);
        let d = fingerprint(&check("d", &threshold).expect("checks"));
        assert!(matches!(compare(&a, &d, 4), Edit::Keeps(_)));
        assert!(check("e", "rollout {").is_err());
    }
}
