//! Policy checking: a parsed `.rollout` file in, a checked [`Policy`] and diagnostics out.
//!
//! This crate's one job is meaning. It resolves names (metrics, presets, rules), checks units,
//! validates PromQL templates (with the maintained `promql-parser` crate), runs the lint rules,
//! and produces the [`model::Policy`] the engine compiles. It performs no IO.
//!
//! ```
//! use rollout_diagnostics::SourceFile;
//!
//! let src = SourceFile::new("p.rollout", std::fs::read_to_string(
//!     concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/sklearn-iris-canary.rollout")).unwrap());
//! let checked = rollout_policy::check_source(&src);
//! assert!(checked.diagnostics.is_empty());
//! let policy = checked.policy.expect("clean policy");
//! assert_eq!(policy.target.namespace, "mlops");
//! ```

mod check;
mod lints;
pub mod model;
pub mod presets;
mod suggest;
pub mod template;

use rollout_diagnostics::{Diagnostic, Severity, SourceFile};
use rollout_syntax::ast;

pub use check::human as human_duration;
pub use model::Policy;

/// The result of checking: the policy (when there is no error) and every diagnostic, errors and
/// warnings, in source order.
#[derive(Debug)]
pub struct Checked {
    /// The checked policy; `None` if any error was found.
    pub policy: Option<Policy>,
    /// All diagnostics, with the source attached.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity() == Severity::Error)
    }
}

/// Checks a parsed file.
pub fn check(file: &ast::File, source: &SourceFile) -> Checked {
    let mut c = check::Checker {
        src: source,
        diags: Vec::new(),
    };
    let policy = c.check(file);
    let mut diagnostics: Vec<Diagnostic> = c
        .diags
        .into_iter()
        .map(|d| d.with_source(source.clone()))
        .collect();
    diagnostics.sort_by_key(|d| (d.span().start, d.code()));
    Checked {
        policy,
        diagnostics,
    }
}

/// Parses and checks source text: the whole front end in one call.
pub fn check_source(source: &SourceFile) -> Checked {
    match rollout_syntax::parse(source) {
        Ok(file) => check(&file, source),
        Err(diagnostics) => Checked {
            policy: None,
            diagnostics,
        },
    }
}
