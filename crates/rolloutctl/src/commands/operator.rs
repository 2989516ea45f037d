use rollout_engine::Operator;
use rollout_runner::cluster::{self, Isvc};

use super::Exit;
use crate::cli::{OperatorArgs, OperatorVerb};

pub fn run(verb: OperatorVerb, args: &OperatorArgs) -> Exit {
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
        let ns = match &args.namespace {
            Some(n) => n.clone(),
            None => client.default_namespace().to_string(),
        };
        let isvc = Isvc::new(client, &ns, &args.isvc);
        let op = match verb {
            OperatorVerb::Status => return status(&isvc).await,
            OperatorVerb::Approve => Operator::Approve,
            OperatorVerb::Pause => Operator::Pause,
            OperatorVerb::Resume => Operator::Resume,
            OperatorVerb::Abort => Operator::Abort,
            OperatorVerb::Promote => Operator::PromoteNow,
        };
        match cluster::send_command(&isvc, op, rollout_runner::now_ms()).await {
            Ok(()) => {
                println!(
                    "{} sent to {}/{}; the running `rolloutctl run` takes it at its next tick",
                    serde_json::to_string(&op)
                        .unwrap_or_default()
                        .trim_matches('"'),
                    ns,
                    args.isvc
                );
                Exit::Ok
            }
            Err(e) => {
                eprintln!("error: cannot send the command: {e}");
                Exit::Failed
            }
        }
    })
}

async fn status(isvc: &Isvc) -> Exit {
    let obj = match isvc.get(3).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: cannot read {}/{}: {e}", isvc.namespace, isvc.name);
            return Exit::Failed;
        }
    };
    let a = |k: &str| cluster::annotation(&obj, k).unwrap_or("-").to_string();
    let c = cluster::observe(&obj, "predictor");
    println!("InferenceService {}/{}", isvc.namespace, isvc.name);
    println!("  policy           {}", a("rolloutctl.io/policy"));
    println!("  phase            {}", a("rolloutctl.io/phase"));
    println!("  step             {}", a("rolloutctl.io/step"));
    println!(
        "  canary           {} ({}%)",
        a("rolloutctl.io/canary-revision"),
        c.canary_percent
    );
    println!("  stable           {}", a("rolloutctl.io/stable-revision"));
    println!("  canary model     {}", a("rolloutctl.io/canary-model-uri"));
    println!("  last decision    {}", a("rolloutctl.io/last-decision"));
    let pending = cluster::pending_commands(
        &obj,
        cluster::annotation(&obj, cluster::COMMANDS_SEEN)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    );
    if !pending.is_empty() {
        println!(
            "  pending commands {}",
            pending
                .iter()
                .map(|(_, o)| serde_json::to_string(o).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Exit::Ok
}
