//! A pre-pass over the raw text, run before the grammar: it enforces the input-size and
//! nesting-depth limits (so the recursive pest parser can never overflow the stack), reports
//! unterminated strings precisely, and collects comments for the formatter.

use rollout_diagnostics::{Code, Diagnostic, Span};

use crate::ast::Comment;

/// Largest accepted policy file, in bytes.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Deepest accepted nesting of parentheses and prefix operators in an expression.
pub const MAX_DEPTH: usize = 64;

pub(crate) struct Scan {
    pub comments: Vec<Comment>,
    pub errors: Vec<Diagnostic>,
}

pub(crate) fn scan(text: &str) -> Scan {
    let mut comments = Vec::new();
    let mut errors = Vec::new();
    if text.len() > MAX_INPUT_BYTES {
        errors.push(Diagnostic::new(
            Code::InputTooLarge,
            format!(
                "policy is {} bytes, more than the limit of {} bytes",
                text.len(),
                MAX_INPUT_BYTES
            ),
            Span::new(MAX_INPUT_BYTES, text.len()),
            "everything from here on is over the limit",
        ));
        return Scan { comments, errors };
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut depth_reported = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => i = comment(text, i, &mut comments),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = comment(text, i, &mut comments),
            b'"' if text[i..].starts_with("\"\"\"") => match text[i + 3..].find("\"\"\"") {
                Some(end) => i = i + 3 + end + 3,
                None => {
                    errors.push(Diagnostic::new(
                        Code::UnterminatedString,
                        "raw string is never closed",
                        Span::new(i, i + 3),
                        "this `\"\"\"` has no closing `\"\"\"`",
                    ));
                    return Scan { comments, errors };
                }
            },
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\n') | None => {
                            errors.push(
                                Diagnostic::new(
                                    Code::UnterminatedString,
                                    "string is not closed on its line",
                                    Span::new(start, (start + 1).min(text.len())),
                                    "this string has no closing `\"`",
                                )
                                .with_label(Span::new(i, i), "line ends here"),
                            );
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'(' => {
                depth += 1;
                if depth > MAX_DEPTH && !depth_reported {
                    depth_reported = true;
                    errors.push(nesting_error(Span::new(i, i + 1)));
                }
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Scan { comments, errors }
}

pub(crate) fn nesting_error(span: Span) -> Diagnostic {
    Diagnostic::new(
        Code::NestingTooDeep,
        format!("expression is nested more than {MAX_DEPTH} levels deep"),
        span,
        "too deep from here",
    )
}

fn comment(text: &str, start: usize, out: &mut Vec<Comment>) -> usize {
    let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
    let raw = &text[start..end];
    let trimmed = raw.trim_end();
    out.push(Comment {
        text: trimmed.to_string(),
        span: Span::new(start, start + trimmed.len()),
    });
    end
}

/// The text with every comment replaced by spaces (same length, same offsets).
pub(crate) fn blank_comments(text: &str, comments: &[Comment]) -> String {
    if comments.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for c in comments {
        out.push_str(&text[at..c.span.start]);
        // One space per byte keeps offsets (comments may contain multi-byte characters).
        out.extend(std::iter::repeat_n(' ', c.span.len()));
        at = c.span.end;
    }
    out.push_str(&text[at..]);
    out
}
