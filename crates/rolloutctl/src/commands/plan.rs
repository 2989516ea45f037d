use rollout_engine::plan::Plan;

use super::Exit;
use crate::cli::{PlanArgs, PlanFormat};
use crate::files;

pub fn run(args: &PlanArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let plan = Plan::of(&machine);
    match args.format {
        PlanFormat::Text => print!("{}", plan.text(&machine)),
        PlanFormat::Mermaid => print!("{}", plan.mermaid(&machine)),
        PlanFormat::Json => match serde_json::to_string_pretty(&plan) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        },
    }
    Exit::Ok
}
