//! `rolloutctl doctor POLICY`: every preflight check at once, and what to change.

use rollout_runner::doctor::{self, Inputs, Verdict};

use super::Exit;
use crate::cli::DoctorArgs;
use crate::files;

pub fn run(args: &DoctorArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let mut manifests = Vec::new();
    for path in &args.manifest {
        let text = match files::read_yaml(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Exit::Usage;
            }
        };
        match rollout_engine::yaml::documents::<serde_json::Value>(&text) {
            Ok(docs) => {
                for (i, d) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
                    manifests.push((format!("{} (document {})", path.display(), i + 1), d));
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return Exit::Usage;
            }
        }
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let client = rollout_runner::client(args.kubeconfig.as_deref(), None)
            .await
            .map_err(|e| e.to_string());
        let checks = doctor::run(Inputs {
            machine: &machine,
            client,
            prometheus_url: args.prometheus_url.as_deref(),
            manifests: &manifests,
            now: rollout_runner::now_ms(),
        })
        .await;
        let mut failed = 0;
        let mut warned = 0;
        for c in &checks {
            let mark = match c.verdict {
                Verdict::Pass => "ok     ",
                Verdict::Warn => {
                    warned += 1;
                    "warning"
                }
                Verdict::Fail => {
                    failed += 1;
                    "error  "
                }
            };
            let mut lines = c.detail.lines();
            println!("{mark} {}: {}", c.subject, lines.next().unwrap_or(""));
            for l in lines {
                println!("        {}", l.trim_start());
            }
        }
        println!(
            "\n{} checks: {} passed, {warned} warnings, {failed} errors",
            checks.len(),
            checks.len() - failed - warned
        );
        if failed > 0 { Exit::Problems } else { Exit::Ok }
    })
}
