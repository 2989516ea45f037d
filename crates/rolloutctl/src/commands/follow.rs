//! `rolloutctl run --watch` on a rollout the controller drives: follows the ModelRollout's
//! status to the rollout's end and exits with its outcome, writing nothing.

use std::io::IsTerminal as _;
use std::time::Duration;

use kube::api::Api;
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::Outcome;
use rollout_runner::signals::Signals;

use super::Exit;
use crate::cli::RunOutput;

/// What a follower prints a line for when it changes.
fn view(st: &ModelRolloutStatus) -> (Option<String>, Option<String>, Option<i64>, Option<String>) {
    (
        st.phase.clone(),
        st.step_progress.clone(),
        st.traffic.map(i64::from),
        st.last_decision.as_ref().map(|d| d.time.clone()),
    )
}

/// The outcome of a rollout that ended: the history entry of its canary, else its phase.
fn outcome(st: &ModelRolloutStatus) -> Option<Outcome> {
    st.end_time.as_ref()?;
    let word = st
        .history
        .iter()
        .rev()
        .find(|h| Some(&h.canary_revision) == st.canary_revision.as_ref())
        .map(|h| h.outcome.clone())
        .or_else(|| st.phase.clone())?;
    Outcome::from_name(&word)
}

/// Follows `ns/name` until it ends (its outcome's exit status), is deleted (exit 7), or a
/// signal stops the follower (143 / 130; the rollout goes on).
pub async fn follow(client: &kube::Client, ns: &str, name: &str, output: RunOutput) -> Exit {
    let json = match output {
        RunOutput::Json => true,
        RunOutput::Live => false,
        RunOutput::Auto => !std::io::stdout().is_terminal(),
    };
    let mut signals = Signals::new();
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns);
    let mut last = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(mr)) => {
                let st = mr.status.unwrap_or_default();
                let now = view(&st);
                if last.as_ref() != Some(&now) {
                    print_change(&st, json);
                    last = Some(now);
                }
                if let Some(o) = outcome(&st) {
                    let why = st
                        .last_decision
                        .as_ref()
                        .map_or(String::new(), |d| format!(": {}", d.message));
                    eprintln!("rollout {}{why}", o.as_str().replace('_', " "));
                    return o.into();
                }
            }
            Ok(None) => {
                eprintln!("error: ModelRollout {ns}/{name} was deleted");
                return Exit::TargetGone;
            }
            Err(e) => eprintln!("warning: cannot read ModelRollout {ns}/{name}: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            sig = signals.recv() => {
                let (name, exit) = if sig == 15 {
                    ("SIGTERM", Exit::Terminated)
                } else {
                    ("SIGINT", Exit::Interrupted)
                };
                eprintln!("stopped following ({name}); the controller goes on with the rollout");
                return exit;
            }
        }
    }
}

fn print_change(st: &ModelRolloutStatus, json: bool) {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    if json {
        let v = serde_json::json!({
            "phase": st.phase,
            "step": st.step_progress,
            "traffic": st.traffic,
            "canary": st.canary_revision,
            "stable": st.stable_revision,
            "decision": st.last_decision.as_ref().map(|d| serde_json::json!({
                "time": d.time, "action": d.action, "message": d.message,
            })),
        });
        println!("{v}");
        return;
    }
    let decision = st.last_decision.as_ref().map_or(String::new(), |d| {
        format!("  {} {}: {}", d.time, d.action, d.message)
    });
    println!(
        "{:<18} step {:<6} traffic {:>4}{decision}",
        or(&st.phase),
        or(&st.step_progress),
        st.traffic.map_or("-".into(), |t| format!("{t}%")),
    );
}
