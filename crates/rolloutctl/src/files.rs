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
