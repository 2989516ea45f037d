use std::path::Path;

use rollout_engine::policytest::{self, TestFile};

use super::Exit;
use crate::files;

pub fn run(args: &super::super::cli::TestArgs) -> Exit {
    let paths = match files::collect_suffix(&args.paths, ".test.yaml") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    if paths.is_empty() {
        eprintln!("error: no *.test.yaml files found in the given paths");
        return Exit::Usage;
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut exit = Exit::Ok;
    for path in &paths {
        match run_file(path) {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                exit = Exit::Usage;
            }
        }
    }
    println!("\npolicy tests: {passed} passed, {failed} failed");
    if failed > 0 { Exit::Problems } else { exit }
}

fn run_file(path: &Path) -> Result<(usize, usize), String> {
    let text = files::read_yaml(path)?;
    let file = TestFile::from_yaml(&text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let machine = files::load_policy(&dir.join(&file.policy))
        .map_err(|_| format!("policy {} is not usable", file.policy))?;
    let read = |rel: &str| files::read_yaml(&dir.join(rel));
    println!("{} ({})", path.display(), file.policy);
    let (mut passed, mut failed) = (0, 0);
    for case in &file.tests {
        let scenario = case.scenario.load(&read)?;
        let r = policytest::run_case(&machine, case, &scenario);
        if r.failures.is_empty() {
            passed += 1;
            println!(
                "  ok    {}{}",
                r.name,
                if r.runs > 1 {
                    format!(" ({} runs)", r.runs)
                } else {
                    String::new()
                }
            );
        } else {
            failed += 1;
            println!("  FAIL  {}", r.name);
            for f in &r.failures {
                println!("        {f}");
            }
            if let Some(d) = &r.diff {
                println!("        timeline (- expected, + actual):");
                for line in d.lines() {
                    println!("          {line}");
                }
            }
            println!("        what happened:");
            for line in &r.timeline {
                println!("          {line}");
            }
        }
    }
    Ok((passed, failed))
}
