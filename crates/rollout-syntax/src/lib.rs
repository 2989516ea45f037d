//! The syntax of `.rollout` policies: text in, [`ast::File`] out, and back to canonical text.
//!
//! This crate's one job is syntax. It owns the pest parser (generated from
//! `grammar/rollout.pest`; no pest type leaves this crate), the AST with spans, the syntax
//! diagnostics (`R0xxx`) and the formatter. Names, units and meaning are checked by
//! `rollout-policy`.
//!
//! ```
//! use rollout_syntax::{parse, format};
//! use rollout_diagnostics::SourceFile;
//!
//! let src = SourceFile::new("p.rollout", r#"rollout "demo" { steps { traffic 10% hold 5m promote } }"#);
//! let file = parse(&src).expect("valid syntax");
//! assert_eq!(file.rollout.name.value, "demo");
//! assert!(format(&file, src.text()).starts_with("rollout \"demo\" {\n"));
//! ```

pub mod ast;
mod format;
mod lower;
mod parser;
mod scan;

use pest::Parser as _;
use rollout_diagnostics::{Code, Diagnostic, SourceFile, Span};

pub use format::format;
pub use scan::{MAX_DEPTH, MAX_INPUT_BYTES};

use crate::parser::{RolloutParser, Rule};

/// Decodes file bytes as UTF-8, or reports `R0008` at the first invalid byte.
pub fn decode(name: &str, bytes: Vec<u8>) -> Result<SourceFile, Box<Diagnostic>> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let src = SourceFile::new(name, lossy);
            Err(Box::new(
                Diagnostic::new(
                    Code::NotUtf8,
                    "file is not valid UTF-8",
                    Span::new(at, at + 1),
                    "invalid byte here",
                )
                .with_source(src),
            ))
        }
    }
}

/// Parses a policy file. On failure returns every syntax diagnostic found (at least one), each
/// with the source attached.
pub fn parse(source: &SourceFile) -> Result<ast::File, Vec<Diagnostic>> {
    let attach = |ds: Vec<Diagnostic>| -> Vec<Diagnostic> {
        ds.into_iter()
            .map(|d| d.with_source(source.clone()))
            .collect()
    };
    let text = source.text();
    let scanned = scan::scan(text);
    if !scanned.errors.is_empty() {
        return Err(attach(scanned.errors));
    }
    // The grammar sees comments as spaces (same byte offsets, so spans stay exact).
    let blanked = scan::blank_comments(text, &scanned.comments);
    let pairs = match RolloutParser::parse(Rule::file, &blanked) {
        Ok(pairs) => pairs,
        Err(e) => return Err(attach(vec![syntax_error(text, &e)])),
    };
    let mut lowerer = lower::Lowerer {
        errors: Vec::new(),
        text,
        comment_ends: scanned
            .comments
            .iter()
            .map(|c| (c.span.end, c.span.start))
            .collect(),
    };
    let rollout = pairs.into_iter().next().and_then(|file| lowerer.file(file));
    match rollout {
        Some(rollout) if lowerer.errors.is_empty() => Ok(ast::File {
            rollout,
            comments: scanned.comments,
        }),
        _ => {
            if lowerer.errors.is_empty() {
                lowerer.errors.push(Diagnostic::new(
                    Code::Syntax,
                    "expected `rollout \"<name>\" { ... }`",
                    Span::new(0, 0),
                    "here",
                ));
            }
            Err(attach(lowerer.errors))
        }
    }
}

fn syntax_error(text: &str, e: &pest::error::Error<Rule>) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let found = describe_found(text, pos);
    let (expected, unexpected) = match &e.variant {
        pest::error::ErrorVariant::ParsingError {
            positives,
            negatives,
        } => (names(positives), names(negatives)),
        pest::error::ErrorVariant::CustomError { message } => (vec![message.clone()], vec![]),
    };
    let message = if !expected.is_empty() {
        format!("expected {}, found {}", join_or(&expected), found.0)
    } else if !unexpected.is_empty() {
        format!("unexpected {}", join_or(&unexpected))
    } else {
        format!("unexpected {}", found.0)
    };
    let label = if expected.is_empty() {
        "not expected here".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    let mut d = Diagnostic::new(Code::Syntax, message, Span::new(pos, pos + found.1), label);
    if let Some(help) = hint(text, pos, &expected) {
        d = d.with_help(help);
    }
    d
}

fn names(rules: &[Rule]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rules {
        if let Some(n) = r.display()
            && !out.iter().any(|o| o == n)
        {
            out.push(n.to_string());
        }
    }
    out
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// The token at `pos`, as shown to the user, and its length in bytes.
fn describe_found(text: &str, pos: usize) -> (String, usize) {
    let rest = text.get(pos..).unwrap_or("");
    let Some(first) = rest.chars().next() else {
        return ("end of file".to_string(), 0);
    };
    if first == '\n' {
        return ("end of line".to_string(), 0);
    }
    let word_len: usize = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i);
    if word_len > 0 {
        let w = &rest[..word_len.min(40)];
        (format!("`{w}`"), word_len)
    } else {
        (format!("`{first}`"), first.len_utf8())
    }
}

fn hint(text: &str, pos: usize, expected: &[String]) -> Option<String> {
    let rest = text.get(pos..).unwrap_or("");
    let before = text.get(..pos).unwrap_or("").trim_end();
    if rest.starts_with('}') && expected.iter().any(|e| e.contains("number")) {
        return Some("a value is missing before `}`".into());
    }
    if before.ends_with("traffic") {
        return Some("write the canary's share as a percentage, e.g. `traffic 10%`".into());
    }
    if before.ends_with("until") || expected.iter().any(|e| e == "`max`") {
        return Some(
            "a traffic condition needs a time limit: `hold until canary.requests >= 2000 max 30m`"
                .into(),
        );
    }
    if rest.starts_with('{') && before.ends_with(|c: char| c.is_alphanumeric()) {
        return Some(
            "blocks open after a keyword: `target { ... }`, `rule Name { ... }`, `steps { ... }`"
                .into(),
        );
    }
    None
}
