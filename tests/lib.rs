//! Shared helpers for the workspace-level tests: locating files, running the front end, and
//! rendering diagnostics deterministically.

use std::path::{Path, PathBuf};

use rollout_diagnostics::{Code, Diagnostic, SourceFile};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `*.rollout` file below `dir` (relative to the root), sorted.
pub fn rollout_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rollout") {
            out.push(p);
        }
    }
}

/// Reads a file as a source named by its path relative to the root.
pub fn source(path: &Path) -> SourceFile {
    let name = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
        .replace("../", "");
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    SourceFile::new(name, text)
}

/// Parses and checks; returns all diagnostics.
pub fn lint(src: &SourceFile) -> Vec<Diagnostic> {
    rollout_policy::check_source(src).diagnostics
}

/// The distinct codes of some diagnostics.
pub fn codes(ds: &[Diagnostic]) -> Vec<Code> {
    let mut c: Vec<Code> = ds.iter().map(Diagnostic::code).collect();
    c.sort();
    c.dedup();
    c
}

/// Renders diagnostics as a person sees them, without colour, at a fixed width.
pub fn render(ds: &[Diagnostic]) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
    let mut out = String::new();
    for d in ds {
        let _ = handler.render_report(&mut out, d);
        out.push('\n');
    }
    out
}

/// A one-line summary per diagnostic, for assertion messages.
pub fn summary(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| format!("{} {}", d.code(), d.message()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fenced code blocks of a Markdown text: (info string, body, 1-based line of the fence).
pub fn code_blocks(markdown: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String, usize)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    current = Some((info.trim().to_string(), String::new(), i + 1));
                }
            }
            Some((_, body, _)) => {
                if trimmed.starts_with("```") {
                    if let Some(block) = current.take() {
                        out.push(block);
                    }
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    out
}
