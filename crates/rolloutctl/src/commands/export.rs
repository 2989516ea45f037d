use rollout_export::{self as export, Revisions};

use super::Exit;
use crate::cli::{ExportArgs, ExportWhat, RulesFormat};
use crate::files;

pub fn run(args: &ExportArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let p = machine.policy();
    let out = match args.what {
        ExportWhat::PrometheusRules => {
            let (Some(canary), Some(stable)) = (&args.canary, &args.stable) else {
                eprintln!(
                    "error: an alert has no runner to find the revisions: give `--canary <revision> --stable <revision>` (see docs/alerts-and-dashboards.md)"
                );
                return Exit::Usage;
            };
            let revs = Revisions {
                canary: canary.clone(),
                stable: stable.clone(),
            };
            let doc = match args.format {
                RulesFormat::PrometheusRule => export::prometheus_rule(p, &revs),
                RulesFormat::RuleFile => export::rule_groups(p, &revs),
            };
            match rollout_engine::yaml::to_string_of(&doc) {
                Ok(y) => y,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Usage;
                }
            }
        }
        ExportWhat::Grafana => format!(
            "{}\n",
            serde_json::to_string_pretty(&export::grafana(p)).unwrap_or_default()
        ),
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, out) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return Exit::Usage;
            }
        }
        None => print!("{out}"),
    }
    Exit::Ok
}
