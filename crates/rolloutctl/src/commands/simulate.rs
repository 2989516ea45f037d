use rollout_engine::scenario::Scenario;
use rollout_engine::sim::{self, Simulation};

use super::Exit;
use crate::cli::{SimFormat, SimulateArgs};
use crate::{files, render};

pub fn run(args: &SimulateArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let text = match files::read_yaml(&args.scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let mut scenario = match Scenario::from_yaml(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}: {e}", args.scenario.display());
            return Exit::Usage;
        }
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(runs) = args.runs {
        let s = sim::run_batch(&machine, &scenario, runs.max(1));
        print!("{}", render::batch(&s));
        return Exit::Ok;
    }
    let r = Simulation::new(&machine, &scenario, 0, true).run();
    match args.format {
        SimFormat::Text => print!("{}", render::timeline(&r)),
        SimFormat::Jsonl => {
            for d in &r.decisions {
                println!("{}", serde_json::to_string(d).unwrap_or_default());
            }
            let summary = serde_json::json!({
                "outcome": r.outcome.as_str(),
                "end_s": r.end as f64 / 1000.0,
                "reason": r.end_reason,
                "rollback_at_s": r.rollback_at.map(|t| t as f64 / 1000.0),
                "detection_s": r.detection().map(|t| t as f64 / 1000.0),
                "max_traffic": r.max_traffic,
            });
            println!("{summary}");
        }
    }
    r.outcome.into()
}
