//! Spans, source files and the one registry of diagnostic codes shared by every stage of rolloutctl.
//!
//! Every problem rolloutctl reports about a policy is a [`Diagnostic`]: a stable [`Code`] from the
//! registry below, a severity, a one-line message, a labelled [`Span`] in a [`SourceFile`] and help
//! text that says how to fix it. The syntax and policy stages create them; the CLI renders them
//! (miette for people, JSON, SARIF and GitHub annotations for machines).
//!
//! Codes are stable: a retired code is never reused. `R0xxx` are syntax errors, `R1xxx` semantic
//! errors, `R2xxx` lint warnings. Each code has a page in `docs/diagnostics/<CODE>.md`.

mod code;
mod diagnostic;
mod source;

pub use code::{Code, Severity};
pub use diagnostic::{Diagnostic, Label};
pub use source::{LineCol, SourceFile, Span};
