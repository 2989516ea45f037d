use std::time::Duration;

use rollout_runner::operate::{self, Verb};
use rollout_runner::reconcile::End;

use super::Exit;
use crate::cli::{OperatorArgs, OperatorVerb};

pub fn run(verb: OperatorVerb, args: &OperatorArgs, step: Option<u32>, timeout_s: u64) -> Exit {
    super::on_cluster(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        "rolloutctl",
        async |client| {
            let ns = match &args.namespace {
                Some(n) => n.clone(),
                None => client.default_namespace().to_string(),
            };
            let name = args.name.as_str();
            let v = match verb {
                OperatorVerb::Status => return status(&client, &ns, name).await,
                OperatorVerb::Approve => Verb::Approve(step),
                OperatorVerb::Pause => Verb::Pause,
                OperatorVerb::Resume => Verb::Resume,
                OperatorVerb::Abort => Verb::Abort,
                OperatorVerb::Promote => Verb::Promote,
                OperatorVerb::Retry => Verb::Retry,
            };
            let said = match operate::send(&client, &ns, name, v).await {
                Ok((_, said)) => said,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Failed;
                }
            };
            let holder = match operate::report(&client, &ns, name).await {
                Ok(r) => r.holder,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Failed;
                }
            };
            match (&holder, v) {
                (Some(h), _) => {
                    println!(
                        "{said}: written to ModelRollout {ns}/{name}; the runner holding its Lease ({h}) acts on it now"
                    );
                    Exit::Ok
                }
                (None, Verb::Abort) => {
                    println!(
                        "{said}: written to ModelRollout {ns}/{name}; no runner holds its Lease, so rolloutctl rolls back itself"
                    );
                    let holder = format!("{}-abort", super::run::default_holder());
                    match operate::abort_without_runner(
                        &client,
                        &ns,
                        name,
                        &holder,
                        None,
                        Duration::from_secs(timeout_s.max(1)),
                    )
                    .await
                    {
                        Ok(End::Finished(o, msg)) => {
                            println!(
                                "rolled back by this command: {msg} (recorded as {} in the ModelRollout's status)",
                                o.as_str()
                            );
                            Exit::Ok
                        }
                        Ok(End::Stopped(msg) | End::TargetGone(msg)) => {
                            eprintln!("error: {msg}");
                            Exit::Failed
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            Exit::Failed
                        }
                    }
                }
                (None, Verb::Retry) => {
                    println!(
                        "{said}: written to ModelRollout {ns}/{name}; the next `rolloutctl run` rolls it out"
                    );
                    Exit::Ok
                }
                (None, _) => {
                    println!(
                        "{said}: written to ModelRollout {ns}/{name}; no runner holds its Lease, so it takes effect when `rolloutctl run` (or a controller) drives the rollout"
                    );
                    Exit::Ok
                }
            }
        },
    )
}

async fn status(client: &kube::Client, ns: &str, name: &str) -> Exit {
    let r = match operate::report(client, ns, name).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failed;
        }
    };
    let st = r.rollout.status.clone().unwrap_or_default();
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let policy = st
        .policy
        .as_ref()
        .map_or("-".to_string(), |p| p.name.clone());
    println!("ModelRollout {ns}/{name} (policy `{policy}`)");
    match &r.holder {
        Some(h) => println!("  runner          {h} holds the Lease rolloutctl-{name}"),
        None => println!(
            "  runner          none: no runner holds the Lease (intents wait for `rolloutctl run`; `abort` acts itself)"
        ),
    }
    println!("  phase           {}", or(&st.phase));
    println!(
        "  step            {} {}",
        or(&st.step_progress),
        or(&st.step_name)
    );
    println!(
        "  traffic         {}",
        st.traffic.map_or("-".into(), |t| format!("{t}%"))
    );
    println!(
        "  canary          {} (model {}, attempt {})",
        or(&st.canary_revision),
        or(&st.canary_model_uri),
        st.attempt.unwrap_or(1)
    );
    println!("  stable          {}", or(&st.stable_revision));
    println!("  started         {}", or(&st.start_time));
    if let Some(end) = &st.end_time {
        println!("  ended           {end}");
    }
    if let Some(d) = &st.last_decision {
        println!("  last decision   {} {}: {}", d.time, d.action, d.message);
    }
    for (i, r) in st.rules.iter().enumerate() {
        let head = if i == 0 {
            "  rules          "
        } else {
            "                 "
        };
        println!("{head} {} {} (since {})", r.name, r.verdict, r.since);
    }
    for (i, c) in st.conditions.iter().enumerate() {
        let head = if i == 0 {
            "  conditions     "
        } else {
            "                 "
        };
        let msg = c.message.lines().next().unwrap_or("");
        println!("{head} {} {} {}: {msg}", c.type_, c.status, c.reason);
    }
    for (i, h) in st.history.iter().enumerate() {
        let head = if i == 0 {
            "  history        "
        } else {
            "                 "
        };
        println!(
            "{head} {} attempt {} {} ({} → {}): {}",
            h.canary_revision,
            h.attempt,
            h.outcome,
            h.start_time.clone().unwrap_or_default(),
            h.end_time.clone().unwrap_or_default(),
            h.reason
        );
    }
    Exit::Ok
}
