//! Finding and reading policy files.

use std::path::{Path, PathBuf};

use rollout_diagnostics::{Diagnostic, SourceFile};

/// Expands files and directories (recursively, `*.rollout`, sorted) into a file list.
/// Returns an error message for a path that does not exist.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| format!("cannot read directory {}: {e}", p.display()))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rollout") {
            out.push(p);
        }
    }
    Ok(())
}

/// What reading a policy file gave.
pub enum Read {
    /// The text.
    Ok(SourceFile),
    /// Not UTF-8: a diagnostic.
    Invalid(Box<Diagnostic>),
    /// Could not read: a message.
    Failed(String),
}

/// Reads one policy file.
pub fn read(path: &Path) -> Read {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match rollout_syntax::decode(&name, bytes) {
            Ok(src) => Read::Ok(src),
            Err(d) => Read::Invalid(d),
        },
        Err(e) => Read::Failed(format!("cannot read {name}: {e}")),
    }
}

/// Reads and checks a policy; prints its diagnostics to standard error. `Err` is the exit status
/// when it cannot be used (unreadable: 2; invalid: 1).
pub fn load_policy(path: &Path) -> Result<rollout_engine::Machine, crate::commands::Exit> {
    load_policy_text(path).map(|(m, _)| m)
}

/// [`load_policy`], with the text that was checked.
pub fn load_policy_text(
    path: &Path,
) -> Result<(rollout_engine::Machine, String), crate::commands::Exit> {
    use crate::commands::Exit;
    let src = match read(path) {
        Read::Ok(src) => src,
        Read::Invalid(d) => {
            eprint!("{}", crate::render::human_one(&d));
            return Err(Exit::Problems);
        }
        Read::Failed(msg) => {
            eprintln!("error: {msg}");
            return Err(Exit::Usage);
        }
    };
    let checked = rollout_policy::check_source(&src);
    for d in &checked.diagnostics {
        eprint!("{}", crate::render::human_one(d));
    }
    match checked.policy {
        Some(p) => Ok((rollout_engine::Machine::compile(p), src.text().to_string())),
        None => {
            eprintln!(
                "error: {} has errors; fix them first (`rolloutctl lint {}`)",
                path.display(),
                path.display()
            );
            Err(Exit::Problems)
        }
    }
}

/// Expands files and directories (recursively, files ending in `suffix`, sorted).
pub fn collect_suffix(paths: &[PathBuf], suffix: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk_suffix(p, suffix, &mut out)
                .map_err(|e| format!("cannot read directory {}: {e}", p.display()))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn walk_suffix(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk_suffix(&p, suffix, out)?;
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    Ok(())
}
