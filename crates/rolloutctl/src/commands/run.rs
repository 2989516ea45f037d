use rollout_runner::{RunConfig, RunEnd};

use super::Exit;
use crate::cli::RunArgs;
use crate::{files, live};

pub fn run(args: &RunArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let text = std::fs::read_to_string(&args.policy).unwrap_or_default();
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let client = match super::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await
        {
            Ok(c) => c,
            Err(e) => return e,
        };
        let on_decision = live::sink(args.output);
        let cfg = RunConfig {
            policy: machine.policy().clone(),
            policy_hash: rollout_runner::policy_hash(&text),
            prometheus_url: args.prometheus_url.clone(),
            dry_run: args.dry_run,
            holder: args.holder.clone().unwrap_or_else(default_holder),
            wait_for_lease: args.wait,
            on_decision,
        };
        let end = rollout_runner::run(client, cfg).await;
        finish(&end)
    })
}

/// Prints how a run ended and returns its exit status.
pub fn finish(end: &RunEnd) -> Exit {
    match end {
        RunEnd::Outcome(o) => {
            eprintln!("rollout {}", o.as_str().replace('_', " "));
            (*o).into()
        }
        RunEnd::Refused(why) => {
            eprintln!("error: {why}");
            Exit::Failed
        }
    }
}

fn default_holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "rolloutctl".into());
    format!("{host}-{}", std::process::id())
}
