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

/// The most a YAML file (scenario, policy test) may hold.
pub const MAX_YAML_BYTES: u64 = 4 * 1024 * 1024;

/// Reads at most `cap` bytes of a file that must be a regular file (a FIFO, a device or a
/// directory is refused before it is opened); a larger file is an error, detected before more
/// than `cap + 1` bytes are in memory.
pub fn read_bounded(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!("{name} is larger than the limit of {cap} bytes"));
    }
    Ok(bytes)
}

/// [`read_bounded`] for YAML text.
pub fn read_yaml(path: &Path) -> Result<String, String> {
    let bytes = read_bounded(path, MAX_YAML_BYTES)?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not valid UTF-8", path.display()))
}

/// Reads one policy file (a regular file of at most [`rollout_syntax::MAX_INPUT_BYTES`]).
pub fn read(path: &Path) -> Read {
    let name = path.display().to_string();
    let cap = rollout_syntax::MAX_INPUT_BYTES as u64;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > cap => {
            // The limit as a diagnostic (R0005), without reading the file.
            let d = rollout_diagnostics::Diagnostic::new(
                rollout_diagnostics::Code::InputTooLarge,
                format!(
                    "policy is {} bytes, more than the limit of {cap} bytes",
                    m.len()
                ),
                rollout_diagnostics::Span::new(0, 0),
                "the file is over the limit",
            )
            .with_source(SourceFile::new(&name, ""));
            return Read::Invalid(Box::new(d));
        }
        _ => {}
    }
    match read_bounded(path, cap) {
        Ok(bytes) => match rollout_syntax::decode(&name, bytes) {
            Ok(src) => Read::Ok(src),
            Err(d) => Read::Invalid(d),
        },
        Err(e) => Read::Failed(e),
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
