use std::time::Duration;

use rollout_runner::{RunConfig, RunEnd};

use super::Exit;
use crate::cli::RunArgs;
use crate::{files, live};

pub fn run(args: &RunArgs) -> Exit {
    let (machine, text) = match files::load_policy_text(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    super::on_cluster(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        "rolloutctl-run",
        async |client| {
            let cfg = RunConfig {
                text,
                policy: machine.policy().clone(),
                prometheus_url: args.prometheus_url.clone(),
                dry_run: args.dry_run,
                holder: args.holder.clone().unwrap_or_else(default_holder),
                wait_for_lease: args.wait,
                lease_duration: Duration::from_secs(args.lease_duration.clamp(3, 3600)),
                on_decision: live::sink(args.output),
            };
            let end = rollout_runner::run::run(client.clone(), cfg).await;
            if let (RunEnd::DrivenByController(why), true) = (&end, args.watch) {
                let (ns, name) = (
                    &machine.policy().target.namespace,
                    &machine.policy().target.name,
                );
                eprintln!(
                    "{}; following it (`--watch`)",
                    why.split(';').next().unwrap_or(why)
                );
                return super::follow::follow(&client, ns, name, args.output).await;
            }
            finish(&end)
        },
    )
}

/// Prints how a run ended and returns its exit status.
pub fn finish(end: &RunEnd) -> Exit {
    match end {
        RunEnd::Outcome(o, msg) => {
            eprintln!("rollout {}: {msg}", o.as_str().replace('_', " "));
            (*o).into()
        }
        RunEnd::Refused(why) => {
            eprintln!("error: {why}");
            Exit::Failed
        }
        RunEnd::DrivenByController(why) => {
            eprintln!("error: {why}");
            Exit::Failed
        }
        RunEnd::TargetGone(why) => {
            eprintln!("error: {why}");
            Exit::TargetGone
        }
        RunEnd::Interrupted(sig) => {
            eprintln!(
                "stopped by {}: the Lease is released and the rollout stays where it is; `rolloutctl run` again resumes it",
                if *sig == 15 { "SIGTERM" } else { "SIGINT" }
            );
            if *sig == 15 {
                Exit::Terminated
            } else {
                Exit::Interrupted
            }
        }
    }
}

/// This host's name and process id.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "rolloutctl".into());
    format!("{host}-{}", std::process::id())
}
