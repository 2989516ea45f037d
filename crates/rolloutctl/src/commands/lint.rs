use rollout_diagnostics::{Diagnostic, Severity};

use super::Exit;
use crate::cli::{LintArgs, LintFormat};
use crate::files::{self, Read};
use crate::render;

pub fn run(args: &LintArgs) -> Exit {
    let paths = match files::collect(&args.paths) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    if paths.is_empty() {
        eprintln!("error: no .rollout files found in the given paths");
        return Exit::Usage;
    }
    let mut all: Vec<(String, Vec<Diagnostic>)> = Vec::new();
    let mut unreadable = false;
    for path in &paths {
        let name = path.display().to_string();
        match files::read(path) {
            Read::Ok(src) => {
                let checked = rollout_policy::check_source(&src);
                all.push((name, checked.diagnostics));
            }
            Read::Invalid(d) => all.push((name, vec![*d])),
            Read::Failed(msg) => {
                eprintln!("error: {msg}");
                unreadable = true;
            }
        }
    }
    let errors = count(&all, Severity::Error);
    let warnings = count(&all, Severity::Warning);
    let out = match args.format {
        LintFormat::Human => render::human(&all, paths.len()),
        LintFormat::Json => render::json(&all, paths.len()),
        LintFormat::Sarif => render::sarif(&all),
        LintFormat::Github => render::github(&all),
    };
    print!("{out}");
    if unreadable {
        Exit::Usage
    } else if errors > 0 || (args.deny_warnings && warnings > 0) {
        Exit::Problems
    } else {
        Exit::Ok
    }
}

fn count(all: &[(String, Vec<Diagnostic>)], sev: Severity) -> usize {
    all.iter()
        .flat_map(|(_, ds)| ds)
        .filter(|d| d.severity() == sev)
        .count()
}
